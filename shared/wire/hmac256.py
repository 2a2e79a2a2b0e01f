"""HMAC-SHA256 (RFC 2104) on ``hashlib.sha256``, for MicroPython, which has no ``hmac`` module.

Runs unchanged on CPython, where it gives the same digests as ``hmac.new(key, msg, "sha256")``.
"""

import hashlib

BLOCK_SIZE = 64
DIGEST_SIZE = 32


def _bytes(x, what):
    if isinstance(x, bytes):
        return x
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    raise TypeError(what + " must be bytes, bytearray or memoryview, not " + type(x).__name__)


def hmac_sha256(key, msg):
    """Return the 32-byte HMAC-SHA256 of ``msg`` under ``key`` (keys over 64 bytes are hashed first)."""
    key = _bytes(key, "key")
    msg = _bytes(msg, "msg")
    if len(key) > BLOCK_SIZE:
        key = hashlib.sha256(key).digest()
    ipad = bytearray(BLOCK_SIZE)
    opad = bytearray(BLOCK_SIZE)
    n = len(key)
    for i in range(BLOCK_SIZE):
        k = key[i] if i < n else 0
        ipad[i] = k ^ 0x36
        opad[i] = k ^ 0x5C
    inner = hashlib.sha256(ipad)
    inner.update(msg)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


def compare_digest(a, b):
    """True if the byte strings ``a`` and ``b`` are equal, in time independent of their contents.

    Lengths are not secret: unequal lengths return False at once.
    """
    a = _bytes(a, "a")
    b = _bytes(b, "b")
    if len(a) != len(b):
        return False
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0
