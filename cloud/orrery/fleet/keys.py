"""Per-device secrets, derived from one fleet secret.

A board holds two secrets: the HMAC key that signs its commands and its MQTT password. Both are
derived from the fleet secret with HMAC-SHA256 and the device id, so the companion stores no
per-device secret, ``orrery board deploy`` and ``orrery board provision`` hand the same values to
the tools that write a board's config, and
one leaked board reveals nothing about another.

The fleet secret comes from ``ORRERY_SECRET`` (text, at least 16 bytes) or from the file named
by ``ORRERY_SECRET_FILE`` (its bytes, stripped of surrounding whitespace).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path


class SecretError(ValueError):
    """The fleet secret is missing or unusable."""


def load_secret(path: Path | None = None) -> bytes:
    """Return the fleet secret from ``path``, ``ORRERY_SECRET`` or ``ORRERY_SECRET_FILE``."""
    if path is None and os.environ.get("ORRERY_SECRET"):
        value = os.environ["ORRERY_SECRET"].encode()
        where = "ORRERY_SECRET"
    else:
        if path is None and os.environ.get("ORRERY_SECRET_FILE"):
            path = Path(os.environ["ORRERY_SECRET_FILE"])
        if path is None:
            raise SecretError(
                "no fleet secret: set ORRERY_SECRET, or ORRERY_SECRET_FILE to a file "
                "(create one with `orrery broker secret FILE`)"
            )
        try:
            value = path.read_bytes().strip()
        except OSError as exc:
            raise SecretError(f"fleet secret file {path}: {exc.strerror}") from None
        if not _is_text(value):
            raise SecretError(
                f"fleet secret file {path}: not a secret written by `orrery broker secret` "
                "(it holds binary data, not one line of text)"
            )
        where = str(path)
    if len(value) < 16:
        raise SecretError(f"fleet secret from {where} is {len(value)} bytes; it needs at least 16")
    return value


def _is_text(value: bytes) -> bool:
    try:
        return value.decode().isprintable()
    except UnicodeDecodeError:
        return False


def new_secret() -> bytes:
    """A fresh random fleet secret (64 hex characters)."""
    return secrets.token_hex(32).encode()


def device_key(secret: bytes, device: str) -> bytes:
    """The 32-byte HMAC key that signs ``device``'s commands."""
    return hmac.digest(secret, b"orrery/cmd-key/" + device.encode(), "sha256")


def mqtt_password(secret: bytes, device: str) -> str:
    """``device``'s MQTT password (32 URL-safe characters)."""
    digest = hmac.new(secret, b"orrery/mqtt/" + device.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode()


def credentials(secret: bytes, device: str) -> dict[str, str]:
    """``device``'s entries in its board config: its command key (hex), MQTT user and password."""
    return {
        "hmac_key": device_key(secret, device).hex(),
        "username": device,
        "password": mqtt_password(secret, device),
    }


def credentials_from_env(device: str) -> dict[str, str]:
    """``credentials`` under the fleet secret of ``load_secret()``; SecretError without one."""
    return credentials(load_secret(), device)
