"""The companion's view of the wire protocol (the formats are documented in
``shared/wire/__init__.py``).

Every public name of the protocol is here: the constants and ack codes of
``shared.wire.constants``, the board-side encoders of ``message``, ``connect``, ``report`` and
``verifier``, and what only the companion needs: the decoders (``decode_batch``,
``decode_state``, ``decode_event``, ``decode_ack``, ``decode_loss``, ``decode_pull``,
``decode_log``), ``parse_topic``, ``encode_batch``, ``record_into`` and ``encode_log``, ``event_time_ms``, ``Seq``,
``sign_command`` and ``verify_envelope``. A board never imports this module, so none of it
costs the board RAM. Runs unchanged on both runtimes (dual-tested).

The JSON decoders refuse text that a database cannot store (U+0000, lone surrogates) anywhere
in what they return, naming the field, as they refuse any other malformed message.
"""

import binascii
import struct

try:  # CPython: C-escaped strings and HMAC for the fast path (see ``_fast``)
    import hmac as _hmac  # type: ignore
    import re as _re
    from json.encoder import encode_basestring as _jstr  # type: ignore

    _CTRL = _re.compile("[\x00-\x1f]")
    _ID = _re.compile("[A-Za-z0-9_.-]{1,64}\\Z")
    _CMD_ID = _re.compile("[A-Za-z0-9_.:-]{1,64}\\Z")
except ImportError:  # MicroPython: the fixed-layout writer of shared.wire.message alone
    _jstr = None

from shared.wire import verifier as _verifier
from shared.wire.connect import (
    PREFIX,
    TOPIC_KINDS,
    _check_pull,
    encode_pull,
    encode_will,
    is_id,
    new_boot_id,
    topic,
)
from shared.wire.constants import (
    ACK_NAMES,
    ANCHOR_SIZE,
    BAD_SIGNATURE,
    BUSY,
    CLOCK_SKEW,
    DUPLICATE,
    EXPIRED,
    FAILED,
    HEADER_SIZE,
    HISTORICAL,
    IN_PROGRESS,
    LOG_BOOT,
    LOG_CODES,
    LOG_EVERY_MS,
    LOG_FAILED,
    LOG_FAULT,
    LOG_INBOX_FULL,
    LOG_LEVELS,
    LOG_LINES,
    LOG_LINK_DOWN,
    LOG_LINK_UP,
    LOG_LOSS,
    LOG_RECORD_SIZE,
    LOG_REFUSED,
    LOG_STATE,
    LOSS_REASONS,
    MALFORMED,
    MAX_BATCH,
    MAX_BATCH_BYTES,
    MAX_LIFETIME,
    OK,
    RECORD_SIZE,
    REJECTED,
    REPLAYED,
    SEQ_MAX,
    SYNCED,
    U32_MAX,
    UNKNOWN_KIND,
    UNSAFE,
    VERSION,
)
from shared.wire.hmac256 import hmac_sha256
from shared.wire.message import (
    ACKS,
    CMD,
    EVENTS,
    LOG,
    LOSS,
    PULL,
    READINGS,
    STATE,
    _anchor,
    _check_event,
    _emit,
    _isid,
    _json,
    _rng,
    _room,
    batch_header_into,
    encode_event,
    put30,
)
from shared.wire.report import (
    _check_ack,
    _check_loss,
    _check_state,
    encode_ack,
    encode_loss,
    encode_state,
)
from shared.wire.verifier import KINDS, _check_body, _key, _load, _open

__all__ = [
    "ACKS",
    "ACK_NAMES",
    "ANCHOR_SIZE",
    "BAD_SIGNATURE",
    "BUSY",
    "Batch",
    "CLOCK_SKEW",
    "CMD",
    "DUPLICATE",
    "EVENTS",
    "EXPIRED",
    "FAILED",
    "HEADER_SIZE",
    "HISTORICAL",
    "IN_PROGRESS",
    "KINDS",
    "LOG",
    "LOG_BOOT",
    "LOG_CODES",
    "LOG_EVERY_MS",
    "LOG_FAILED",
    "LOG_FAULT",
    "LOG_INBOX_FULL",
    "LOG_LEVELS",
    "LOG_LINES",
    "LOG_LINK_DOWN",
    "LOG_LINK_UP",
    "LOG_LOSS",
    "LOG_RECORD_SIZE",
    "LOG_REFUSED",
    "LOG_STATE",
    "LOSS",
    "LOSS_REASONS",
    "MALFORMED",
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "MAX_LIFETIME",
    "OK",
    "PREFIX",
    "PULL",
    "READINGS",
    "RECORD_SIZE",
    "REJECTED",
    "REPLAYED",
    "SEQ_MAX",
    "STATE",
    "SYNCED",
    "Seq",
    "TOPIC_KINDS",
    "U32_MAX",
    "UNKNOWN_KIND",
    "UNSAFE",
    "VERSION",
    "Verifier",
    "batch_header_into",
    "decode_ack",
    "decode_batch",
    "decode_event",
    "decode_log",
    "decode_loss",
    "decode_pull",
    "decode_state",
    "encode_ack",
    "encode_batch",
    "encode_event",
    "encode_log",
    "encode_loss",
    "encode_pull",
    "encode_state",
    "encode_will",
    "event_time_ms",
    "is_id",
    "new_boot_id",
    "parse_topic",
    "record_into",
    "sign_command",
    "sign_commands",
    "topic",
    "verify_envelope",
]

_HDR = "<2sBBIIH"
_ANC = "<IHIH"
_REC = "<IHhB"


# --- topics ---------------------------------------------------------------------------------


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
    if not _isid(p[1]):
        return None, "invalid fleet id"
    if not _isid(p[2]):
        return None, "invalid device id"
    kind = p[3] + "/" + p[4]
    if kind not in TOPIC_KINDS:
        return None, "unknown topic kind"
    return (p[1], p[2], kind), None


# --- readings batches -----------------------------------------------------------------------


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
    put30(buf, offset, up_s)
    _put16(buf, offset + 4, up_ms)
    _put16(buf, offset + 6, value & 0xFFFF)
    buf[offset + 8] = channel
    return RECORD_SIZE


def _put16(buf, o, v):
    buf[o] = v & 0xFF
    buf[o + 1] = (v >> 8) & 0xFF


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
    """A decoded batch: boot_id, first_seq, count, flags, historical, anchor (tuple or None),
    records, a list of (seq, up_s, up_ms, value, channel), and up_min, up_max: the lowest and
    highest up_s of its records (the cloud checks their event times against both)."""

    def __init__(self, boot_id, first_seq, flags, anchor, records, up_min, up_max):
        self.boot_id = boot_id
        self.first_seq = first_seq
        self.count = len(records)
        self.flags = flags
        self.historical = bool(flags & HISTORICAL)
        self.anchor = anchor
        self.records = records
        self.up_min = up_min
        self.up_max = up_max


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
    # every record in one unpack, checked column by column (the cloud's hot path)
    v = struct.unpack_from("<" + _REC[1:] * count, data, off)
    try:
        ups, ums, vals, chs = v[0::4], v[1::4], v[2::4], v[3::4]
    except NotImplementedError:  # a MicroPython built without slice steps
        n = len(v)
        ups, ums = [v[i] for i in range(0, n, 4)], [v[i] for i in range(1, n, 4)]
        vals, chs = [v[i] for i in range(2, n, 4)], [v[i] for i in range(3, n, 4)]
    up_max = max(ups)
    if up_max > SEQ_MAX or max(ums) > 999 or min(vals) < -32767:
        for i in range(count):
            try:
                _rng("up_s", ups[i], 0, SEQ_MAX)
                _rng("up_ms", ums[i], 0, 999)
                _rng("value", vals[i], -32767, 32767)
            except ValueError as e:
                return None, "record {}: {}".format(i, e)
    records = list(zip(range(first_seq, first_seq + count), ups, ums, vals, chs))  # noqa: B905 (MicroPython zip has no strict)
    return Batch(boot_id, first_seq, flags, anchor, records, min(ups), up_max), None


# --- log lines (up/log) ----------------------------------------------------------------------

_LOG_REC = "<IHBhh"


def encode_log(boot_id, first_seq, lines):
    """Return an ``up/log`` message as bytes (what a board's ring sends); ``lines`` is a list
    of (up_s, up_ms, code, a, b), the first one numbered ``first_seq``."""
    n = len(lines)
    buf = bytearray(HEADER_SIZE + LOG_RECORD_SIZE * n)
    off = batch_header_into(buf, 0, 0, boot_id, first_seq, n, None)
    for i in range(n):
        up_s, up_ms, code, a, b = lines[i]
        _rng("up_s", up_s, 0, SEQ_MAX)
        _rng("up_ms", up_ms, 0, 999)
        _rng("code", code, 0, 255)
        struct.pack_into(
            _LOG_REC,
            buf,
            off,
            up_s,
            up_ms,
            code,
            _rng("a", a, -32768, 32767),
            _rng("b", b, -32768, 32767),
        )
        off += LOG_RECORD_SIZE
    return bytes(buf)


def decode_log(data):
    """Decode an ``up/log`` message: ``({"boot", "first", "lines"}, None)`` or ``(None,
    reason)``, never raises; ``lines`` is a list of (seq, up_s, up_ms, code, a, b). A code
    this side does not know is kept (``LOG_CODES`` names the known ones)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None, "log must be bytes"
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        return None, "log shorter than its header"
    if data[:2] != b"OR":
        return None, "bad magic"
    _, version, flags, boot_id, first, count = struct.unpack_from(_HDR, data, 0)
    if version != VERSION:
        return None, "unsupported log version {}".format(version)
    if flags:
        return None, "unknown flags 0x{:02x}".format(flags)
    try:
        _rng("boot_id", boot_id, 1, SEQ_MAX)
        _rng("count", count, 1, MAX_BATCH)
        _rng("first_seq", first, 0, SEQ_MAX - count + 1)
        if len(data) != HEADER_SIZE + count * LOG_RECORD_SIZE:
            return None, "{} bytes, expected {}".format(
                len(data), HEADER_SIZE + count * LOG_RECORD_SIZE
            )
        lines = []
        for i in range(count):
            r = struct.unpack_from(_LOG_REC, data, HEADER_SIZE + i * LOG_RECORD_SIZE)
            _rng("up_s", r[0], 0, SEQ_MAX)
            _rng("up_ms", r[1], 0, 999)
            lines.append((first + i,) + r)
    except ValueError as e:
        return None, str(e)
    return {"boot": boot_id, "first": first, "lines": lines}, None


def event_time_ms(anchor, up_s, up_ms):
    """Unix time in ms of a reading taken at uptime (up_s, up_ms) in the boot of ``anchor``.

    Right for readings taken before the anchor (before time sync) too. Cloud-side: the
    result is a big int.
    """
    _anchor(anchor)
    _rng("up_s", up_s, 0, SEQ_MAX)
    _rng("up_ms", up_ms, 0, 999)
    return anchor[2] * 1000 + anchor[3] + (up_s - anchor[0]) * 1000 + up_ms - anchor[1]


# --- sequence numbers -----------------------------------------------------------------------


class Seq:
    """Per-device monotonic sequence counter.

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


# --- JSON messages --------------------------------------------------------------------------


def _decode(check, data):
    d, err = _load(data)
    if err:
        return None, err
    try:
        d = check(d)
    except ValueError as e:
        return None, str(e)
    err = _unstorable(d, "")
    return (None, err) if err else (d, None)


_isascii = getattr(str, "isascii", None)  # CPython's (O(1)); MicroPython has none


def _unstorable(v, name):
    # Why a database cannot store the text in ``v`` (a decoded message, walked whole), or None.
    # PostgreSQL's text holds no U+0000 and no lone surrogate (UTF-16 halves, which JSON's
    # "\ud800" escapes produce and UTF-8 cannot encode); refusing them here, with the field's
    # name, treats both databases alike.
    if isinstance(v, str):
        if _isascii is not None and _isascii(v) and "\x00" not in v:
            return None  # CPython: an ASCII string is flagged as such, and holds no surrogate
        for c in v:
            o = ord(c)
            if o == 0 or 0xD800 <= o <= 0xDFFF:
                return "{} holds U+{:04X}, which a database cannot store".format(name or "text", o)
    elif isinstance(v, dict):
        for k in v:
            err = _unstorable(k, name + " key" if name else "key") or _unstorable(
                v[k], name + "." + k if name else k
            )
            if err:
                return err
    elif isinstance(v, (list, tuple)):
        for x in v:
            err = _unstorable(x, name)
            if err:
                return err
    return None


def decode_state(data):
    """Decode a state message, or the will (its missing fields are None); never raises."""
    return _decode(_check_state, data)


def decode_event(data):
    """Decode a workflow event; never raises."""
    return _decode(_check_event, data)


def decode_ack(data):
    """Decode a command ack; never raises."""
    return _decode(_check_ack, data)


def decode_loss(data):
    """Decode a loss report; never raises."""
    return _decode(_check_loss, data)


def decode_pull(data):
    """Decode a pull request; never raises."""
    return _decode(_check_pull, data)


# --- signed commands -------------------------------------------------------------------------


def sign_command(key, cmd_id, device, kind, args, iat, exp, skew=0):
    """Return the signed envelope (bytes) of a command for ``device``.

    ``args`` is a dict of None/bool/int/str/list/dict (no floats); iat < exp are unix seconds
    on the signer's clock; ``skew`` is the signer's estimate, in seconds, of the board's clock
    minus its own (the board checks the window against its clock minus ``skew``; left out of
    the body when 0). Kinds outside KINDS are signed too: a board answers UNKNOWN_KIND.
    """
    c = {"id": cmd_id, "dev": device, "kind": kind, "args": args, "iat": iat, "exp": exp}
    if skew:
        c["skew"] = skew
    _check_body(c)
    if _jstr is None:
        body = _json(c)
        sig = binascii.hexlify(hmac_sha256(_key(key), body.encode())).decode()
        return _emit(("b", "s"), {"b": body, "s": sig})
    body = _fast(c)
    sig = _hmac.digest(_key(key), body.encode(), "sha256").hex()
    return ('{"v":1,"b":' + _jstr(body) + ',"s":"' + sig + '"}').encode()


def sign_commands(kind, args, iat, exp, cmds):
    """Sign a batch of commands of one ``kind`` with the same ``args`` and window: one
    envelope per ``(key, cmd_id, device, skew)`` of ``cmds``, in order, each byte for byte what
    ``sign_command`` returns for it (and raising what it raises).

    The args' JSON text, and its escaped copy in the envelope, are written once for all.
    """
    if _jstr is None:
        return [sign_command(k, i, d, kind, args, iat, exp, s) for k, i, d, s in cmds]
    if not cmds:
        return []
    try:  # kind, args and the window: the same for every command
        _check_body({"id": "x", "dev": "x", "kind": kind, "args": args, "iat": iat, "exp": exp})
        head = '{"args":' + _fast(args)
        head_b = head.encode()
    except ValueError:  # refused: the first command raises what sign_command raises for it
        return [sign_command(k, i, d, kind, args, iat, exp, s) for k, i, d, s in cmds]
    esc_head = '{"v":1,"b":' + _jstr(head)[:-1]
    window = ',"exp":' + str(exp) + ',"iat":' + str(iat) + ',"id":"'
    kind_s = '","kind":"' + kind + '"'
    out = []
    for key, cmd_id, device, skew in cmds:
        if (
            type(cmd_id) is not str
            or type(device) is not str
            or _CMD_ID.match(cmd_id) is None
            or _ID.match(device) is None
            or (skew and (type(skew) is not int or not -0xFFFFFFFF <= skew <= 0xFFFFFFFF))
        ):
            out.append(sign_command(key, cmd_id, device, kind, args, iat, exp, skew))
            continue  # the slow path says why it is refused
        # ids hold no character JSON escapes, so the tail's escaped copy only escapes quotes
        tail = ',"dev":"' + device + '"' + window + cmd_id + kind_s
        if skew:
            tail += ',"skew":' + str(skew)
        tail += "}"
        sig = _hmac.digest(_key(key), head_b + tail.encode(), "sha256").hex()
        out.append((esc_head + tail.replace('"', '\\"') + '","s":"' + sig + '"}').encode())
    return out


def _fast(v):
    # _json's text, byte for byte (the property tests check it), on CPython's C string
    # escaper: a str without control characters needs only its quotes and backslashes
    # escaped, which encode_basestring does. Anything else goes to _json.
    t = type(v)
    if t is str:
        return _jstr(v) if _CTRL.search(v) is None else _json(v)
    if t is int:
        return str(v)
    if t is dict:
        for k in v:
            if type(k) is not str:
                return _json(v)
        return "{" + ",".join([_fast(k) + ":" + _fast(v[k]) for k in sorted(v)]) + "}"
    if t is list or t is tuple:
        return "[" + ",".join([_fast(x) for x in v]) + "]"
    return _json(v)


def verify_envelope(key, envelope):
    """Check an envelope's signature and body: ``(cmd_dict, None)`` or ``(None, reason)``.

    Does not check device, time or replays (the Verifier does); a bad key raises ValueError.
    """
    code, c, detail, _ = _open(_key(key), envelope)
    return (c, None) if code == OK else (None, ACK_NAMES[code] + ": " + detail)


class Verifier(_verifier.Verifier):
    """The board's command gate (``shared.wire.verifier.Verifier``), with its replay table as
    a JSON-able dict too (``state``; ``load`` reads it), for the companion and the tests."""

    def state(self):
        """Return the replay table as a JSON-able dict, for ``load``: ``{"v": 1, "hi": ...,
        "ids": [[id, digest, exp], ...]}`` (ids in order)."""
        self.dirty = False
        t = self._t + self._add
        ids = []
        i = 1
        while i < len(t):
            e = t.find("\n", i)
            a = t.find(" ", i)
            ids.append([t[i:a], t[a + 1 : a + 33], int(t[a + 34 : e])])
            i = e + 1
        return {"v": 1, "hi": self._hi, "ids": sorted(ids)}
