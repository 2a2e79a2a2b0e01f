"""The board's occasional reports: the state (birth) message, command acks and loss reports
(the formats are documented in ``shared/wire/__init__.py``).

A board keeps ``shared.wire.message`` (batches and events) in RAM all the time; its link
thread imports this module for a report and drops it again (``firmware.node``), the one thread
that imports or drops it. ``shared.wire.codec`` re-exports the encoders and decodes with the
checks.
"""

from shared import const
from shared.wire.message import _anchor, _bad, _emit, _id, _opt, _pick, _rng

# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_SEQ_MAX = const(0x3FFFFFFF)  # 2**30 - 1, the largest small int on a 32-bit MicroPython
_UNSAFE = const(11)  # no safe state within safe_wait_s: the highest ack code
# Copied from shared/wire/errors.py by python -m tools.dev.consts: edit them there.
_E_DETAIL = const(16)
_E_EXTRA = const(10)
_E_EXTRA_VALUE = const(11)
_E_FW = const(12)
_E_NO_ID = const(15)
_E_ONLINE = const(9)
_E_REASON = const(17)
_E_SYNCED = const(14)
_E_WF = const(13)


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
        _bad(_E_ONLINE, s["online"])
    _rng("boot", s["boot"], 1, _SEQ_MAX)
    x = d.get("extra")
    if x is not None:
        if not isinstance(x, dict):
            _bad(_E_EXTRA)
        for k in x:
            _id("extra key", k)
            if not (x[k] is None or x[k] is True or x[k] is False or type(x[k]) in (int, str)):
                _bad(_E_EXTRA_VALUE, k)
    s["extra"] = x
    s["mpy"] = d.get("mpy")
    if not s["online"] and "fw" not in d:
        return s
    if s["mpy"] is not None:
        _id("mpy", s["mpy"])
    fw = s["fw"]
    if not isinstance(fw, str) or not 0 < len(fw) <= 64 or min(fw) < " ":
        _bad(_E_FW)
    if s["wf"] is None:
        if s["wf_ver"] is not None or s["wf_hash"] is not None:
            _bad(_E_WF)
    else:
        _id("wf", s["wf"])
        _rng("wf_ver", s["wf_ver"], 0, _SEQ_MAX)
        _id("wf_hash", s["wf_hash"], True)
    _rng("backlog", s["backlog"], 0, _SEQ_MAX)
    if s["synced"] is not (s["anchor"] is not None):
        _bad(_E_SYNCED)
    if s["anchor"] is not None:
        s["anchor"] = tuple(_anchor(s["anchor"]))
    _opt("last_seq", s["last_seq"], 0, _SEQ_MAX)
    return s


def encode_state(
    online,
    fw,
    wf_name,
    wf_version,
    wf_hash,
    boot_id,
    backlog,
    synced,
    anchor,
    last_seq,
    extra=None,
    mpy=None,
):
    """Encode the retained state (birth) message.

    ``fw`` is the version of the app bundle that runs; ``wf_*`` are all None when no workflow
    is installed; ``anchor`` is the time anchor (up_s, up_ms, unix_s, unix_ms) or None, and
    ``synced`` says whether there is one; ``last_seq`` is the last sequence number issued, or
    None; ``extra`` is a flat dict of id -> None/bool/int/str, or None; ``mpy`` the ``.mpy``
    version the board's MicroPython loads ("MAJOR.SUB", e.g. "6.3"), or None (not sent).
    """
    v = (online, fw, wf_name, wf_version, wf_hash, boot_id, backlog, synced, anchor, last_seq)
    d = {"extra": extra, "mpy": mpy}
    for i in range(len(_STATE)):
        d[_STATE[i]] = v[i]
    _check_state(d)
    keys = _STATE if mpy is None else _STATE + ("mpy",)
    return _emit(keys if extra is None else keys + ("extra",), d)


# acks: the board's answer to each command (the codes are shared.wire.constants' OK .. UNSAFE)

_ACK = ("id", "code", "detail")


def _check_ack(d):
    if "id" not in d:
        _bad(_E_NO_ID)
    if d["id"] is not None:
        _id("id", d["id"], True)
    _rng("code", d.get("code"), 0, _UNSAFE)
    if not isinstance(d.get("detail"), str) or len(d["detail"]) > 200:
        _bad(_E_DETAIL)
    return _pick(_ACK, d)


def encode_ack(cmd_id, code, detail=""):
    """Encode a command ack; ``cmd_id`` is None when the command's id cannot be trusted."""
    return _emit(_ACK, _check_ack({"id": cmd_id, "code": code, "detail": detail}))


_LOSS = ("boot", "first", "last", "reason")


def _check_loss(d):
    _rng("boot", d.get("boot"), 1, _SEQ_MAX)
    _rng("last", d.get("last"), _rng("first", d.get("first"), 0, _SEQ_MAX), _SEQ_MAX)
    if d.get("reason") not in ("store_full", "corrupt"):
        _bad(_E_REASON, d.get("reason"))
    return _pick(_LOSS, d)


def encode_loss(boot_id, first_seq, last_seq, reason):
    """Encode a report that readings first_seq..last_seq (inclusive) were lost, and why."""
    d = {"boot": boot_id, "first": first_seq, "last": last_seq, "reason": reason}
    return _emit(_LOSS, _check_loss(d))
