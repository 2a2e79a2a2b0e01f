"""What a board builds when it starts: its topics, its boot id, and the last-will and pull
payloads (both fixed for a boot).

``firmware.node`` imports this module while it is built, keeps the strings and bytes it makes
(data is cheaper than code) and drops the module again with its other rare paths
(``firmware.drop``). ``shared.wire.codec`` re-exports the public names for the
companion.
"""

from shared import const
from shared.wire import message
from shared.wire.message import _bad, _emit, _id, _isid, _rng

# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_SEQ_MAX = const(0x3FFFFFFF)  # 2**30 - 1, the largest small int on a 32-bit MicroPython
# Copied from shared/wire/errors.py by python -m tools.dev.consts: edit them there.
_E_KIND = const(1)
_E_RAND = const(6)

PREFIX = "orrery"
TOPIC_KINDS = (
    message.STATE,
    message.READINGS,
    message.EVENTS,
    message.ACKS,
    message.LOSS,
    message.LOG,
    message.PULL,
    message.CMD,
)


def is_id(v):
    """True if ``v`` is a valid fleet, device or name id: 1..64 chars of [A-Za-z0-9_.-]."""
    return _isid(v)


def topic(fleet, device, kind):
    """Return ``orrery/<fleet>/<device>/<kind>``; ``kind`` is one of TOPIC_KINDS."""
    if kind not in TOPIC_KINDS:
        _bad(_E_KIND, kind)
    return PREFIX + "/" + _id("fleet", fleet) + "/" + _id("device", device) + "/" + kind


def new_boot_id(rand_bytes):
    """Return a boot id in [1, 2**30) from 4 random bytes (the firmware passes os.urandom(4))."""
    if not isinstance(rand_bytes, (bytes, bytearray)) or len(rand_bytes) != 4:
        _bad(_E_RAND)
    b = rand_bytes
    return (b[0] | b[1] << 8 | b[2] << 16 | (b[3] & 0x3F) << 24) or 1


def encode_will(boot_id):
    """Encode the MQTT last-will payload: an offline state for ``boot_id`` (publish retained)."""
    return _emit(("online", "boot"), (False, _rng("boot", boot_id, 1, _SEQ_MAX)))


def _check_pull(d):
    return {"boot": _rng("boot", d.get("boot"), 1, _SEQ_MAX)}


def encode_pull(boot_id):
    """Encode the board's request for its pending commands (sent on connect)."""
    return _emit(("boot",), (_rng("boot", boot_id, 1, _SEQ_MAX),))
