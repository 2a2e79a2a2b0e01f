"""Orrery wire protocol: MQTT topics, readings batches, JSON messages, sequence numbers and
HMAC-SHA256 signed command envelopes. Runs unchanged on the board and in the cloud.

Topics
------
``orrery/<fleet>/<device>/<dir>/<name>``; ids are 1..64 chars of ``[A-Za-z0-9_.-]``.
The board publishes under ``up/`` and subscribes under ``down/``, so broker ACLs are two
patterns: ``pattern write orrery/+/%u/up/#`` and ``pattern read orrery/+/%u/down/#``.

- ``up/state``    retained state (birth) message; the MQTT last will puts an offline state here
- ``up/readings`` readings batches (binary, below)
- ``up/events``   workflow events (JSON)
- ``up/acks``     command acks (JSON)
- ``up/loss``     dropped-range reports (JSON): the store dropped a segment or a corrupt record
- ``up/pull``     on connect the board asks for its pending commands (JSON)
- ``down/cmd``    signed command envelopes (JSON)

Readings batch (little-endian; a contiguous run of sequence numbers from one boot)
----------------------------------------------------------------------------------
header, 14 bytes: ``"OR"``, version u8 (=1), flags u8 (bit0 HISTORICAL: backlog replayed after
being offline; bit1 SYNCED: an anchor follows), boot_id u32 (1 .. 2**30-1), first_seq u32,
count u16 (1 .. MAX_BATCH).
anchor, 12 bytes, only if SYNCED: anchor_up_s u32, anchor_up_ms u16, anchor_unix_s u32,
anchor_unix_ms u16: the uptime at which the device learned wall time, and that wall time.
then ``count`` records of 9 bytes: up_s u32 (< 2**30), up_ms u16 (0..999), value i16 (S16,
-32767..32767), channel u8. Record i has seq ``first_seq + i``; the last seq is < 2**30.
Sequence numbers stay below 2**30 so the board never makes a big int: at 4 readings/s that
lasts about 8.5 years.

JSON messages (``"v": 1``; unknown keys are ignored, any other ``v`` is refused)
--------------------------------------------------------------------------------
- state: ``online fw wf wf_ver wf_hash boot backlog synced anchor last_seq [extra]``;
  the last will is ``{"v":1,"online":false,"boot":N}`` (decoded with the other keys None).
- event: ``boot seq up_s up_ms state event value``
- ack:   ``id code detail`` (``id`` null when the command's id could not be trusted)
- loss:  ``boot first last reason`` (reason ``store_full`` or ``corrupt``)
- pull:  ``boot``
Names (state, event, wf, extra keys) are ids as above; command ids and wf_hash may also hold
``:``. Encoders
write ``v`` and the keys in the order listed, nested dicts sorted, no spaces and non-ASCII
text as raw UTF-8, so both runtimes write the same bytes (MicroPython's json.dumps orders keys
by hash and spaces them). Decoders return a dict of the listed keys, the anchor as a tuple.

Command envelope
----------------
``{"v":1,"b":BODY,"s":HEX}``: BODY is the JSON text of ``{"args","dev","exp","iat","id","kind"}``
and HEX the HMAC-SHA256 of BODY's UTF-8 bytes under the device's key. The signature covers those
exact bytes, so no canonical JSON is needed (but text beyond U+FFFF must stay raw UTF-8 in the
envelope: MicroPython's json does not join escaped surrogate pairs). iat/exp are unix seconds
(big ints on the board: command handling is not a per-sample path).
"""

import binascii
import json
import struct

from shared.hmac256 import compare_digest, hmac_sha256

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


VERSION = const(1)

# --- topics ---------------------------------------------------------------------------------

PREFIX = "orrery"
STATE = "up/state"
READINGS = "up/readings"
EVENTS = "up/events"
ACKS = "up/acks"
LOSS = "up/loss"
PULL = "up/pull"
CMD = "down/cmd"
TOPIC_KINDS = (STATE, READINGS, EVENTS, ACKS, LOSS, PULL, CMD)

_IDC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
_CMDC = _IDC + ":"


def _isid(v, chars):
    if not isinstance(v, str) or not 0 < len(v) <= 64:
        return False
    for c in v:
        if c not in chars:
            return False
    return True


def _id(name, v, chars=_IDC):
    if not _isid(v, chars):
        raise ValueError(
            "{} must be 1..64 chars of [A-Za-z0-9_.{}-], got {!r}".format(
                name, ":" if chars is _CMDC else "", v
            )
        )
    return v


def is_id(v):
    """True if ``v`` is a valid fleet, device or name id: 1..64 chars of [A-Za-z0-9_.-]."""
    return _isid(v, _IDC)


def topic(fleet, device, kind):
    """Return ``orrery/<fleet>/<device>/<kind>``; ``kind`` is one of TOPIC_KINDS."""
    if kind not in TOPIC_KINDS:
        raise ValueError("unknown topic kind {!r}".format(kind))
    return PREFIX + "/" + _id("fleet", fleet) + "/" + _id("device", device) + "/" + kind


def parse_topic(t):
    """Split a topic into ``((fleet, device, kind), None)``, or ``(None, reason)``; never raises."""
    if isinstance(t, (bytes, bytearray, memoryview)):
        try:
            t = str(bytes(t), "utf-8")
        except Exception:
            return None, "topic is not UTF-8"
    if not isinstance(t, str):
        return None, "topic must be str or bytes"
    p = t.split("/")
    if len(p) != 5 or p[0] != PREFIX:
        return None, "topic is not orrery/<fleet>/<device>/<dir>/<kind>"
    if not _isid(p[1], _IDC):
        return None, "invalid fleet id"
    if not _isid(p[2], _IDC):
        return None, "invalid device id"
    kind = p[3] + "/" + p[4]
    if kind not in TOPIC_KINDS:
        return None, "unknown topic kind"
    return (p[1], p[2], kind), None


# --- readings batches -----------------------------------------------------------------------

HISTORICAL = const(1)
SYNCED = const(2)
MAX_BATCH = const(512)
SEQ_MAX = const(0x3FFFFFFF)  # 2**30 - 1, the largest small int on a 32-bit MicroPython
HEADER_SIZE = const(14)
ANCHOR_SIZE = const(12)
RECORD_SIZE = const(9)
MAX_BATCH_BYTES = const(4634)  # HEADER_SIZE + ANCHOR_SIZE + MAX_BATCH * RECORD_SIZE
U32_MAX = 0xFFFFFFFF

_HDR = "<2sBBIIH"
_ANC = "<IHIH"
_REC = "<IHhB"


def _rng(name, v, lo, hi):
    # type(), not isinstance(): refuses bools (and floats); allocates nothing unless it raises
    if type(v) is not int or v < lo or v > hi:
        raise ValueError("{} must be an int in [{}, {}], got {!r}".format(name, lo, hi, v))
    return v


def _room(buf, offset, n):
    if type(offset) is not int or offset < 0 or offset + n > len(buf):
        raise ValueError("no room for {} bytes at offset {!r}".format(n, offset))


def _anchor(a):
    # two isinstance calls: isinstance(a, (tuple, list)) allocates a tuple on MicroPython
    if not (isinstance(a, tuple) or isinstance(a, list)) or len(a) != 4:
        raise ValueError("anchor must be (up_s, up_ms, unix_s, unix_ms)")
    _rng("anchor up_s", a[0], 0, SEQ_MAX)
    _rng("anchor up_ms", a[1], 0, 999)
    _rng("anchor unix_s", a[2], 0, U32_MAX)
    _rng("anchor unix_ms", a[3], 0, 999)
    return a


def batch_header_into(buf, offset, flags, boot_id, first_seq, count, anchor):
    """Write a batch header, and the anchor unless it is None, into ``buf`` at ``offset``.

    ``flags`` may hold HISTORICAL; SYNCED is added when there is an anchor. Returns the bytes
    written: 14, or 26 with an anchor. Allocates nothing.
    """
    # No locals and calls of at most three arguments: the seven parameters leave room for
    # four words of stack in a frame of 11 (a larger frame is a heap allocation, see
    # record_into).
    if type(flags) is not int or flags & ~3 or (flags & SYNCED and anchor is None):
        raise ValueError("flags may hold HISTORICAL, and SYNCED only with an anchor")
    _check_header(boot_id, first_seq, count)
    _header_room(buf, offset, anchor)
    buf[offset] = 0x4F  # "OR"
    buf[offset + 1] = 0x52
    buf[offset + 2] = VERSION
    buf[offset + 3] = flags if anchor is None else flags | SYNCED
    _put30(buf, offset + 4, boot_id)
    _put30(buf, offset + 8, first_seq)
    _put16(buf, offset + 12, count)
    if anchor is None:
        return HEADER_SIZE
    _put_anchor(buf, offset + HEADER_SIZE, anchor)
    return HEADER_SIZE + ANCHOR_SIZE


def _check_header(boot_id, first_seq, count):
    _rng("boot_id", boot_id, 1, SEQ_MAX)
    _rng("count", count, 1, MAX_BATCH)
    _rng("first_seq", first_seq, 0, SEQ_MAX - count + 1)  # not SEQ_MAX + 1: a big int


def _header_room(buf, offset, anchor):
    # checks the anchor, if any, and then the room for the header (and anchor)
    if anchor is None:
        _room(buf, offset, HEADER_SIZE)
    else:
        _anchor(anchor)
        _room(buf, offset, HEADER_SIZE + ANCHOR_SIZE)


def _put_anchor(buf, o, a):
    # struct, not byte by byte: unix_s is a big int on the board (pack_into reads it in place)
    struct.pack_into("<IH", buf, o, a[0], a[1])
    struct.pack_into("<IH", buf, o + 6, a[2], a[3])


def _put16(buf, o, v):
    buf[o] = v & 0xFF
    buf[o + 1] = (v >> 8) & 0xFF


def _put30(buf, o, v):
    # a u32 field holding a small int (< 2**30): no big int on the way
    _put16(buf, o, v & 0xFFFF)
    _put16(buf, o + 2, v >> 16)


def _check_record(up_s, up_ms, value, channel):
    _rng("up_s", up_s, 0, SEQ_MAX)
    _rng("up_ms", up_ms, 0, 999)
    _rng("value", value, -32767, 32767)
    _rng("channel", channel, 0, 255)


def record_into(buf, offset, up_s, up_ms, value, channel):
    """Write one record into ``buf`` at ``offset``; return RECORD_SIZE. Allocates nothing.

    Written byte by byte through small helpers: a call frame larger than 11 words (locals
    plus stack, as ``struct.pack_into`` with seven arguments needs) is itself a heap
    allocation on MicroPython.
    """
    _check_record(up_s, up_ms, value, channel)
    _room(buf, offset, RECORD_SIZE)
    _put30(buf, offset, up_s)
    _put16(buf, offset + 4, up_ms)
    _put16(buf, offset + 6, value & 0xFFFF)
    buf[offset + 8] = channel
    return RECORD_SIZE


def encode_batch(boot_id, first_seq, records, flags=0, anchor=None):
    """Return a batch as bytes; ``records`` is a list of (up_s, up_ms, value, channel)."""
    if not isinstance(records, (list, tuple)):
        raise ValueError("records must be a list")
    n = len(records)
    buf = bytearray(HEADER_SIZE + (0 if anchor is None else ANCHOR_SIZE) + RECORD_SIZE * n)
    off = batch_header_into(buf, 0, flags, boot_id, first_seq, n, anchor)
    for i in range(n):
        r = records[i]
        try:
            if not isinstance(r, (list, tuple)) or len(r) != 4:
                raise ValueError("must be (up_s, up_ms, value, channel)")
            off += record_into(buf, off, r[0], r[1], r[2], r[3])
        except ValueError as e:
            raise ValueError("record {}: {}".format(i, e)) from None
    return bytes(buf)


class Batch:
    """A decoded batch: boot_id, first_seq, count, flags, historical, anchor (tuple or None)
    and records, a list of (seq, up_s, up_ms, value, channel)."""

    def __init__(self, boot_id, first_seq, flags, anchor, records):
        self.boot_id = boot_id
        self.first_seq = first_seq
        self.count = len(records)
        self.flags = flags
        self.historical = bool(flags & HISTORICAL)
        self.anchor = anchor
        self.records = records


def decode_batch(data):
    """Decode a readings batch: ``(Batch, None)`` or ``(None, reason)``; never raises."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None, "batch must be bytes"
    data = bytes(data)
    n = len(data)
    if n < HEADER_SIZE:
        return None, "batch shorter than its header"
    if data[:2] != b"OR":
        return None, "bad magic"
    _, version, flags, boot_id, first_seq, count = struct.unpack_from(_HDR, data, 0)
    if version != VERSION:
        return None, "unsupported batch version {}".format(version)
    if flags & ~3:
        return None, "unknown flags 0x{:02x}".format(flags)
    off = HEADER_SIZE + (ANCHOR_SIZE if flags & SYNCED else 0)
    anchor = None
    try:
        _rng("boot_id", boot_id, 1, SEQ_MAX)
        _rng("count", count, 1, MAX_BATCH)
        _rng("first_seq", first_seq, 0, SEQ_MAX - count + 1)
        if n != off + count * RECORD_SIZE:
            return None, "{} bytes, expected {}".format(n, off + count * RECORD_SIZE)
        if flags & SYNCED:
            anchor = _anchor(struct.unpack_from(_ANC, data, HEADER_SIZE))
    except ValueError as e:
        return None, str(e)
    records = []
    for i in range(count):
        up_s, up_ms, value, channel = struct.unpack_from(_REC, data, off)
        try:
            _rng("up_s", up_s, 0, SEQ_MAX)
            _rng("up_ms", up_ms, 0, 999)
            _rng("value", value, -32767, 32767)
        except ValueError as e:
            return None, "record {}: {}".format(i, e)
        records.append((first_seq + i, up_s, up_ms, value, channel))
        off += RECORD_SIZE
    return Batch(boot_id, first_seq, flags, anchor, records), None


def event_time_ms(anchor, up_s, up_ms):
    """Unix time in ms of a reading taken at uptime (up_s, up_ms) in the boot of ``anchor``.

    Right for readings taken before the anchor (before time sync) too. Cloud-side: the
    result is a big int.
    """
    _anchor(anchor)
    _rng("up_s", up_s, 0, SEQ_MAX)
    _rng("up_ms", up_ms, 0, 999)
    return anchor[2] * 1000 + anchor[3] + (up_s - anchor[0]) * 1000 + up_ms - anchor[1]


# --- sequence numbers and boot ids ---------------------------------------------------------


class Seq:
    """Per-device monotonic sequence counter; the firmware persists ``value``.

    ``value`` is the number ``next()`` returns next. It never goes past 2**30-1, so the last
    number issued is 2**30-2; after that ``next()`` raises ValueError.
    """

    def __init__(self, start=0):
        self.value = _rng("start", start, 0, SEQ_MAX)

    def next(self):
        """Return the next sequence number. Allocates nothing."""
        v = self.value
        if v >= SEQ_MAX:
            raise ValueError("sequence numbers exhausted")
        self.value = v + 1
        return v


def new_boot_id(rand_bytes):
    """Return a boot id in [1, 2**30) from 4 random bytes (the firmware passes os.urandom(4))."""
    if not isinstance(rand_bytes, (bytes, bytearray)) or len(rand_bytes) != 4:
        raise ValueError("rand_bytes must be 4 bytes")
    b = rand_bytes
    return (b[0] | b[1] << 8 | b[2] << 16 | (b[3] & 0x3F) << 24) or 1


# --- JSON -----------------------------------------------------------------------------------


def _json(v):
    # Fixed layout: no spaces, dict keys sorted, non-ASCII as raw UTF-8, so both runtimes
    # write the same bytes (MicroPython's json.dumps orders keys by hash).
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if type(v) is int:
        return str(v)
    if isinstance(v, str):
        out = ['"']
        for c in v:
            if c == '"' or c == "\\":
                c = "\\" + c
            elif c < " ":
                c = "\\u{:04x}".format(ord(c))
            out.append(c)
        out.append('"')
        return "".join(out)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join([_json(x) for x in v]) + "]"
    if isinstance(v, dict):
        for k in v:
            if not isinstance(k, str):
                raise ValueError("dict keys must be str, got {!r}".format(k))
        return "{" + ",".join([_json(k) + ":" + _json(v[k]) for k in sorted(v)]) + "}"
    raise ValueError(
        "cannot encode a {} (only None, bool, int, str, list, dict)".format(type(v).__name__)
    )


def _emit(keys, d):
    return ('{"v":1' + "".join([',"' + k + '":' + _json(d[k]) for k in keys]) + "}").encode()


def _load(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = str(bytes(data), "utf-8")
        except Exception:
            return None, "payload is not UTF-8"
    if not isinstance(data, str):
        return None, "payload must be bytes or str"
    try:
        d = json.loads(data)
    except Exception:
        return None, "payload is not JSON"
    if not isinstance(d, dict):
        return None, "payload is not a JSON object"
    if d.get("v") != VERSION or type(d["v"]) is not int:
        return None, "unsupported version {!r}".format(d.get("v"))
    return d, None


def _decode(check, data):
    d, err = _load(data)
    if err:
        return None, err
    try:
        return check(d), None
    except ValueError as e:
        return None, str(e)


def _pick(keys, d):
    out = {}
    for k in keys:
        out[k] = d.get(k)
    return out


def _opt(name, v, lo, hi):
    return None if v is None else _rng(name, v, lo, hi)


# state: the will carries only online (false) and boot

_STATE = (
    "online",
    "fw",
    "wf",
    "wf_ver",
    "wf_hash",
    "boot",
    "backlog",
    "synced",
    "anchor",
    "last_seq",
)


def _check_state(d):
    s = _pick(_STATE, d)
    if s["online"] is not True and s["online"] is not False:
        raise ValueError("online must be a bool, got {!r}".format(s["online"]))
    _rng("boot", s["boot"], 1, SEQ_MAX)
    x = d.get("extra")
    if x is not None:
        if not isinstance(x, dict):
            raise ValueError("extra must be a dict")
        for k in x:
            _id("extra key", k)
            if not (x[k] is None or x[k] is True or x[k] is False or type(x[k]) in (int, str)):
                raise ValueError("extra[{!r}] must be None, bool, int or str".format(k))
    s["extra"] = x
    if not s["online"] and "fw" not in d:
        return s
    fw = s["fw"]
    if not isinstance(fw, str) or not 0 < len(fw) <= 64 or min(fw) < " ":
        raise ValueError("fw must be 1..64 printable chars")
    if s["wf"] is None:
        if s["wf_ver"] is not None or s["wf_hash"] is not None:
            raise ValueError("wf_ver and wf_hash need wf")
    else:
        _id("wf", s["wf"])
        _rng("wf_ver", s["wf_ver"], 0, SEQ_MAX)
        _id("wf_hash", s["wf_hash"], _CMDC)
    _rng("backlog", s["backlog"], 0, SEQ_MAX)
    if s["synced"] is not (s["anchor"] is not None):
        raise ValueError("synced must be true exactly when there is an anchor")
    if s["anchor"] is not None:
        s["anchor"] = tuple(_anchor(s["anchor"]))
    _opt("last_seq", s["last_seq"], 0, SEQ_MAX)
    return s


def encode_state(
    online, fw, wf_name, wf_version, wf_hash, boot_id, backlog, synced, anchor, last_seq, extra=None
):
    """Encode the retained state (birth) message.

    ``wf_*`` are all None when no workflow is installed; ``anchor`` is the time anchor
    (up_s, up_ms, unix_s, unix_ms) or None, and ``synced`` says whether there is one;
    ``last_seq`` is the last sequence number issued, or None; ``extra`` is a flat dict of
    id -> None/bool/int/str, or None.
    """
    v = (online, fw, wf_name, wf_version, wf_hash, boot_id, backlog, synced, anchor, last_seq)
    d = {"extra": extra}
    for i in range(len(_STATE)):
        d[_STATE[i]] = v[i]
    _check_state(d)
    return _emit(_STATE if extra is None else _STATE + ("extra",), d)


def encode_will(boot_id):
    """Encode the MQTT last-will payload: an offline state for ``boot_id`` (publish retained)."""
    return _emit(("online", "boot"), {"online": False, "boot": _rng("boot", boot_id, 1, SEQ_MAX)})


def decode_state(data):
    """Decode a state message, or the will (its missing fields are None); never raises."""
    return _decode(_check_state, data)


_EVENT = ("boot", "seq", "up_s", "up_ms", "state", "event", "value")


def _check_event(d):
    _rng("boot", d.get("boot"), 1, SEQ_MAX)
    _rng("seq", d.get("seq"), 0, SEQ_MAX)
    _rng("up_s", d.get("up_s"), 0, SEQ_MAX)
    _rng("up_ms", d.get("up_ms"), 0, 999)
    _id("state", d.get("state"))
    _id("event", d.get("event"))
    _opt("value", d.get("value"), -32767, 32767)
    return _pick(_EVENT, d)


def encode_event(boot_id, seq, up_s, up_ms, state, event, value):
    """Encode a workflow event: ``event`` happened in ``state``; ``value`` is an S16 or None."""
    v = (boot_id, seq, up_s, up_ms, state, event, value)
    d = {}
    for i in range(len(_EVENT)):
        d[_EVENT[i]] = v[i]
    return _emit(_EVENT, _check_event(d))


def decode_event(data):
    """Decode a workflow event; never raises."""
    return _decode(_check_event, data)


# acks: the board's answer to each command

OK = const(0)
DUPLICATE = const(1)  # already done: the stored ack is sent again
IN_PROGRESS = const(2)  # accepted and running (e.g. an install's health window)
BAD_SIGNATURE = const(3)
EXPIRED = const(4)
REPLAYED = const(5)
MALFORMED = const(6)
UNKNOWN_KIND = const(7)
REJECTED = const(8)  # valid but refused (e.g. a workflow failed validation)
FAILED = const(9)  # ran and failed (e.g. the health window)
BUSY = const(10)
ACK_NAMES = {
    OK: "OK",
    DUPLICATE: "DUPLICATE",
    IN_PROGRESS: "IN_PROGRESS",
    BAD_SIGNATURE: "BAD_SIGNATURE",
    EXPIRED: "EXPIRED",
    REPLAYED: "REPLAYED",
    MALFORMED: "MALFORMED",
    UNKNOWN_KIND: "UNKNOWN_KIND",
    REJECTED: "REJECTED",
    FAILED: "FAILED",
    BUSY: "BUSY",
}
_ACK = ("id", "code", "detail")


def _check_ack(d):
    if "id" not in d:
        raise ValueError("missing id")
    if d["id"] is not None:
        _id("id", d["id"], _CMDC)
    _rng("code", d.get("code"), OK, BUSY)
    if not isinstance(d.get("detail"), str) or len(d["detail"]) > 200:
        raise ValueError("detail must be a str of at most 200 chars")
    return _pick(_ACK, d)


def encode_ack(cmd_id, code, detail=""):
    """Encode a command ack; ``cmd_id`` is None when the command's id cannot be trusted."""
    return _emit(_ACK, _check_ack({"id": cmd_id, "code": code, "detail": detail}))


def decode_ack(data):
    """Decode a command ack; never raises."""
    return _decode(_check_ack, data)


LOSS_REASONS = ("store_full", "corrupt")
_LOSS = ("boot", "first", "last", "reason")


def _check_loss(d):
    _rng("boot", d.get("boot"), 1, SEQ_MAX)
    _rng("last", d.get("last"), _rng("first", d.get("first"), 0, SEQ_MAX), SEQ_MAX)
    if d.get("reason") not in LOSS_REASONS:
        raise ValueError("reason must be store_full or corrupt, got {!r}".format(d.get("reason")))
    return _pick(_LOSS, d)


def encode_loss(boot_id, first_seq, last_seq, reason):
    """Encode a report that readings first_seq..last_seq (inclusive) were lost, and why."""
    d = {"boot": boot_id, "first": first_seq, "last": last_seq, "reason": reason}
    return _emit(_LOSS, _check_loss(d))


def decode_loss(data):
    """Decode a loss report; never raises."""
    return _decode(_check_loss, data)


def _check_pull(d):
    return {"boot": _rng("boot", d.get("boot"), 1, SEQ_MAX)}


def encode_pull(boot_id):
    """Encode the board's request for its pending commands (sent on connect)."""
    return _emit(("boot",), _check_pull({"boot": boot_id}))


def decode_pull(data):
    """Decode a pull request; never raises."""
    return _decode(_check_pull, data)


# --- signed commands -------------------------------------------------------------------------

KINDS = (
    "install_workflow",
    "set_config",
    "resend",
    "reboot",
    "install_bundle",
    "bundle_chunk",
    "cancel",
    "run_command",
)
MAX_LIFETIME = const(604800)  # 7 days
CLOCK_SKEW = const(300)


def _key(key):
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise ValueError("key must be at least 16 bytes")
    return bytes(key)


def _check_body(c):
    _id("id", c["id"], _CMDC)
    _id("dev", c["dev"])
    _id("kind", c["kind"])
    if not isinstance(c["args"], dict):
        raise ValueError("args must be a dict")
    _rng("exp", c["exp"], _rng("iat", c["iat"], 0, U32_MAX) + 1, U32_MAX)


def sign_command(key, cmd_id, device, kind, args, iat, exp):
    """Return the signed envelope (bytes) of a command for ``device``.

    ``args`` is a dict of None/bool/int/str/list/dict (no floats); iat < exp are unix seconds.
    Kinds outside KINDS are signed too: a board answers UNKNOWN_KIND.
    """
    c = {"id": cmd_id, "dev": device, "kind": kind, "args": args, "iat": iat, "exp": exp}
    _check_body(c)
    body = _json(c)
    sig = binascii.hexlify(hmac_sha256(_key(key), body.encode())).decode()
    return _emit(("b", "s"), {"b": body, "s": sig})


def _open(key, envelope):
    # -> (code, cmd, detail, mac); code is OK, MALFORMED or BAD_SIGNATURE
    d, err = _load(envelope)
    if err:
        return MALFORMED, None, err, None
    body = d.get("b")
    if not isinstance(body, str):
        return MALFORMED, None, "b must be a string", None
    if "s" not in d:
        return BAD_SIGNATURE, None, "unsigned", None
    try:
        sig = binascii.unhexlify(d["s"])
    except Exception:
        return BAD_SIGNATURE, None, "signature is not hex", None
    try:
        mac = hmac_sha256(key, body.encode())
    except Exception:
        return MALFORMED, None, "b is not valid text", None
    if not compare_digest(mac, sig):
        return BAD_SIGNATURE, None, "signature mismatch", None
    try:
        b = json.loads(body)
        if not isinstance(b, dict):
            raise ValueError("not a JSON object")
        c = _pick(("id", "dev", "kind", "args", "iat", "exp"), b)
        _check_body(c)
    except Exception as e:
        return MALFORMED, None, "body: {}".format(e), None
    return OK, c, "", mac


def verify_envelope(key, envelope):
    """Check an envelope's signature and body: ``(cmd_dict, None)`` or ``(None, reason)``.

    Does not check device, time or replays (the Verifier does); a bad key raises ValueError.
    """
    code, c, detail, _ = _open(_key(key), envelope)
    return (c, None) if code == OK else (None, ACK_NAMES[code] + ": " + detail)


class Verifier:
    """A board's gate for command envelopes: signature, device, time window and replays.

    Accepted ids are remembered with a digest of their body and their exp until that exp has
    passed, in a table of ``capacity`` entries, so a replay is either recognised or refused as
    EXPIRED; when the table is full of unexpired ids a new command gets BUSY. Time never runs
    backwards for the verifier: the highest iat accepted is a lower bound of the time, and
    stands in for ``now`` when that is None (no wall time yet; a future iat then cannot be
    refused). Persist ``state()`` after each OK and ``load()`` it at boot.
    """

    def __init__(self, key, device, capacity=64):
        self._key = _key(key)
        self.device = _id("device", device)
        self.capacity = _rng("capacity", capacity, 1, 4096)
        self._seen = {}  # cmd id -> (hex of the first 16 bytes of the body HMAC, exp)
        self._hi = 0

    def check(self, envelope, now):
        """Return ``(code, cmd, detail)``; ``now`` is unix seconds, or None without wall time.

        ``cmd`` is the body dict, or None for MALFORMED and BAD_SIGNATURE. On OK the id is
        recorded; on DUPLICATE the caller re-sends the ack it stored.
        """
        if now is not None:
            _rng("now", now, 0, U32_MAX)
        code, c, detail, mac = _open(self._key, envelope)
        if code != OK:
            return code, None, detail
        if c["dev"] != self.device:
            return MALFORMED, None, "wrong device"
        iat = c["iat"]
        exp = c["exp"]
        if exp - iat > MAX_LIFETIME:
            return EXPIRED, c, "lifetime over 7 days"
        if now is not None and iat > now + CLOCK_SKEW:
            return EXPIRED, c, "issued in the future"
        t = self._hi if now is None or now < self._hi else now
        for k in [k for k in self._seen if self._seen[k][1] < t]:
            del self._seen[k]
        if t > exp:
            return EXPIRED, c, "expired"
        if c["kind"] not in KINDS:
            return UNKNOWN_KIND, c, "unknown kind"
        digest = binascii.hexlify(mac[:16]).decode()
        seen = self._seen.get(c["id"])
        if seen:
            if seen[0] == digest:
                return DUPLICATE, c, "already accepted"
            return REPLAYED, c, "id reused with another body"
        if len(self._seen) >= self.capacity:
            return BUSY, c, "replay table full"
        self._seen[c["id"]] = (digest, exp)
        self._hi = max(self._hi, iat)
        return OK, c, ""

    def state(self):
        """Return the replay table as a JSON-able dict, for ``load`` after a reboot."""
        return {
            "v": 1,
            "hi": self._hi,
            "ids": [[k] + list(self._seen[k]) for k in sorted(self._seen)],
        }

    def load(self, state):
        """Restore a table saved by ``state()``; raises ValueError naming what is wrong."""
        if (
            not isinstance(state, dict)
            or state.get("v") != 1
            or "hi" not in state
            or "ids" not in state
        ):
            raise ValueError("verifier state must be a dict with v=1, hi and ids")
        try:
            if len(state["ids"]) > self.capacity:
                raise ValueError("more ids than capacity")
            seen = {}
            for k, digest, exp in state["ids"]:
                _id("id", k, _CMDC)
                if len(binascii.unhexlify(digest)) != 16:
                    raise ValueError("digest must be 32 hex chars")
                seen[k] = (digest, _rng("exp", exp, 0, U32_MAX))
            hi = _rng("hi", state["hi"], 0, U32_MAX)
        except (TypeError, ValueError) as e:
            raise ValueError("bad verifier state: {}".format(e)) from None
        self._seen = seen
        self._hi = hi
