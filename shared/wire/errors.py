"""The error texts of the wire protocol's checks, and their indexes.

The checks (``shared.wire.message``, ``connect`` and ``report``) raise by index and import this
module only to raise, so its strings do not stay in a board's RAM; the firmware drops it again
with its other rare paths (``firmware.drop``). The ``_E_*`` indexes below are the
source of the copies those modules hold (``python -m tools.dev.consts``).
"""

from shared import const

_E_ID = const(0)
_E_KIND = const(1)
_E_RNG = const(2)
_E_ROOM = const(3)
_E_ANCHOR = const(4)
_E_FLAGS = const(5)
_E_RAND = const(6)
_E_KEY = const(7)
_E_TYPE = const(8)
_E_ONLINE = const(9)
_E_EXTRA = const(10)
_E_EXTRA_VALUE = const(11)
_E_FW = const(12)
_E_WF = const(13)
_E_SYNCED = const(14)
_E_NO_ID = const(15)
_E_DETAIL = const(16)
_E_REASON = const(17)

MSGS = (
    "{} must be 1..64 chars of [A-Za-z0-9_.{}-], got {!r}",
    "unknown topic kind {!r}",
    "{} must be an int in [{}, {}], got {!r}",
    "no room for {} bytes at offset {!r}",
    "anchor must be (up_s, up_ms, unix_s, unix_ms)",
    "flags may hold HISTORICAL, and SYNCED only with an anchor",
    "rand_bytes must be 4 bytes",
    "dict keys must be str, got {!r}",
    "cannot encode a {} (only None, bool, int, str, list, dict)",
    "online must be a bool, got {!r}",
    "extra must be a dict",
    "extra[{!r}] must be None, bool, int or str",
    "fw must be 1..64 printable chars",
    "wf_ver and wf_hash need wf",
    "synced must be true exactly when there is an anchor",
    "missing id",
    "detail must be a str of at most 200 chars",
    "reason must be store_full or corrupt, got {!r}",
)

# The names of the anchor's fields, which shared.wire.message's _rng gets as indexes (0..3).
ANCHOR = ("anchor up_s", "anchor up_ms", "anchor unix_s", "anchor unix_ms")


def text(i, args):
    """Message ``i`` (an index into MSGS) formatted with ``args``."""
    args = list(args)
    if i == _E_ID:  # _id: the name, whether ":" is allowed, the value
        args[1] = ":" if args[1] else ""
    elif i == _E_RNG and type(args[0]) is int:
        args[0] = ANCHOR[args[0]]
    elif i == _E_TYPE:  # the value that cannot be encoded: name its type
        args[0] = type(args[0]).__name__
    return MSGS[i].format(*args)
