"""The error texts of ``shared.protocol``'s checks.

``shared.protocol`` imports this module only to raise an error (``_bad``), so its strings do
not stay in a board's RAM; the firmware drops it again with its other rare paths
(``firmware.node.drop_rare``). The indexes are ``shared.protocol``'s private ``_E_*``
constants (tests/dual/test_protocol.py checks every message).
"""

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

# The names of the anchor's fields, which shared.protocol's _rng gets as indexes (0..3).
ANCHOR = ("anchor up_s", "anchor up_ms", "anchor unix_s", "anchor unix_ms")


def text(i, args):
    """Message ``i`` (an index into MSGS) formatted with ``args``."""
    args = list(args)
    if i == 0:  # _id: the name, whether ":" is allowed, the value
        args[1] = ":" if args[1] else ""
    elif i == 2 and type(args[0]) is int:
        args[0] = ANCHOR[args[0]]
    elif i == 8:  # the value that cannot be encoded: name its type
        args[0] = type(args[0]).__name__
    return MSGS[i].format(*args)
