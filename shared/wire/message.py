"""What a board keeps of the wire protocol: the checks every message shares, the fixed-layout
JSON writer, the readings batch header and the workflow event message.

The other messages are built by modules a board imports only when it needs them
(``shared.wire.connect``, ``shared.wire.report``, ``shared.wire.verifier``); the formats are
documented in ``shared/wire/__init__.py``.
"""

import struct

from shared import const

# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_ANCHOR_SIZE = const(12)
_HEADER_SIZE = const(14)
_MAX_BATCH = const(512)  # records per batch
_SEQ_MAX = const(0x3FFFFFFF)  # 2**30 - 1, the largest small int on a 32-bit MicroPython
_SYNCED = const(2)  # flag: a time anchor follows the header
_VERSION = const(1)  # of batches and JSON messages
# Copied from shared/wire/errors.py by python -m tools.dev.consts: edit them there.
_E_ANCHOR = const(4)
_E_FLAGS = const(5)
_E_ID = const(0)
_E_KEY = const(7)
_E_RNG = const(2)
_E_ROOM = const(3)
_E_TYPE = const(8)


def _bad(i, *args):
    # Raise ValueError with message i; its text is shared.wire.errors', imported only here
    # (the module itself, not via the package: a concurrent drop cannot break it).
    from shared.wire.errors import text

    raise ValueError(text(i, args))


# --- topics ---------------------------------------------------------------------------------

STATE = "up/state"
READINGS = "up/readings"
EVENTS = "up/events"
ACKS = "up/acks"
LOSS = "up/loss"
LOG = "up/log"
PULL = "up/pull"
CMD = "down/cmd"


def _isid(v, cmd=False):
    # an id: 1..64 chars of [A-Za-z0-9_.-], and ":" too if cmd (compared as code points: no
    # one-character strings to intern on the board)
    if not isinstance(v, str) or not 0 < len(v) <= 64:
        return False
    for c in v:
        o = ord(c)
        if not (97 <= o <= 122 or 65 <= o <= 90 or 48 <= o <= 57 or o == 95 or o == 46 or o == 45):
            if not (cmd and o == 58):
                return False
    return True


def _id(name, v, cmd=False):
    if not _isid(v, cmd):
        _bad(_E_ID, name, cmd, v)
    return v


# --- readings batches -----------------------------------------------------------------------


def _rng(name, v, lo, hi):
    # type(), not isinstance(): refuses bools (and floats); allocates nothing unless it raises.
    # ``name`` is a str, or 0..3 for the anchor's fields (shared.wire.errors.ANCHOR).
    if type(v) is not int or v < lo or v > hi:
        _bad(_E_RNG, name, lo, hi, v)
    return v


def _room(buf, offset, n):
    if type(offset) is not int or offset < 0 or offset + n > len(buf):
        _bad(_E_ROOM, n, offset)


def _anchor(a):
    # two isinstance calls: isinstance(a, (tuple, list)) allocates a tuple on MicroPython
    if not (isinstance(a, tuple) or isinstance(a, list)) or len(a) != 4:
        _bad(_E_ANCHOR)
    _rng(0, a[0], 0, _SEQ_MAX)
    _rng(1, a[1], 0, 999)
    _rng(2, a[2], 0, 0xFFFFFFFF)
    _rng(3, a[3], 0, 999)
    return a


def batch_header_into(buf, offset, flags, boot_id, first_seq, count, anchor):
    """Write a batch header, and the anchor unless it is None, into ``buf`` at ``offset``.

    ``flags`` may hold HISTORICAL; SYNCED is added when there is an anchor. Returns the bytes
    written: 14, or 26 with an anchor. Allocates nothing.
    """
    # No locals and calls of at most three arguments: the seven parameters leave room for
    # four words of stack in a frame of 11 (a larger frame is a heap allocation).
    if type(flags) is not int or flags & ~3 or (flags & _SYNCED and anchor is None):
        _bad(_E_FLAGS)
    _check_header(boot_id, first_seq, count)
    _header_room(buf, offset, anchor)
    buf[offset] = 0x4F  # "OR"
    buf[offset + 1] = 0x52
    buf[offset + 2] = _VERSION
    buf[offset + 3] = flags if anchor is None else flags | _SYNCED
    put30(buf, offset + 4, boot_id)
    put30(buf, offset + 8, first_seq)
    buf[offset + 12] = count & 0xFF
    buf[offset + 13] = count >> 8
    if anchor is None:
        return _HEADER_SIZE
    _put_anchor(buf, offset + _HEADER_SIZE, anchor)
    return _HEADER_SIZE + _ANCHOR_SIZE


def _check_header(boot_id, first_seq, count):
    _rng("boot_id", boot_id, 1, _SEQ_MAX)
    _rng("count", count, 1, _MAX_BATCH)
    _rng("first_seq", first_seq, 0, _SEQ_MAX - count + 1)  # not SEQ_MAX + 1: a big int


def _header_room(buf, offset, anchor):
    # checks the anchor, if any, and then the room for the header (and anchor)
    if anchor is None:
        _room(buf, offset, _HEADER_SIZE)
    else:
        _anchor(anchor)
        _room(buf, offset, _HEADER_SIZE + _ANCHOR_SIZE)


def _put_anchor(buf, o, a):
    # struct, not byte by byte: unix_s is a big int on the board (pack_into reads it in place)
    struct.pack_into("<IH", buf, o, a[0], a[1])
    struct.pack_into("<IH", buf, o + 6, a[2], a[3])


def put30(buf, o, v):
    """Write ``v`` (a small int, 0 <= v < 2**30) as u32 little-endian at ``buf[o:o + 4]``;
    no big int on the way. Allocates nothing."""
    buf[o] = v & 0xFF
    buf[o + 1] = (v >> 8) & 0xFF
    buf[o + 2] = (v >> 16) & 0xFF
    buf[o + 3] = v >> 24


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
                _bad(_E_KEY, k)
        return "{" + ",".join([_json(k) + ":" + _json(v[k]) for k in sorted(v)]) + "}"
    _bad(_E_TYPE, v)


def _emit(keys, vals):
    # '{"v":1,"k1":v1,...}' as bytes: keys[i] holds vals[i] (vals a dict, or a sequence)
    out = ['{"v":1']
    for i in range(len(keys)):
        out.append(',"' + keys[i] + '":' + _json(vals[keys[i]] if type(vals) is dict else vals[i]))
    out.append("}")
    return "".join(out).encode()


def _pick(keys, d):
    out = {}
    for k in keys:
        out[k] = d.get(k)
    return out


def _opt(name, v, lo, hi):
    return None if v is None else _rng(name, v, lo, hi)


_EVENT = ("boot", "seq", "up_s", "up_ms", "state", "event", "value")


def _check_event(d):
    _rng("boot", d.get("boot"), 1, _SEQ_MAX)
    _rng("seq", d.get("seq"), 0, _SEQ_MAX)
    _rng("up_s", d.get("up_s"), 0, _SEQ_MAX)
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
