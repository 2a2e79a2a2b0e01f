"""micropython-lib's ``umqtt.simple``, the MQTT client a board's UmqttLink opens its sessions
with, for ``orrery bench device`` to measure what it costs a board.

It is never copied into this repository (firmware/README.md: the deploy tool installs it with
mip). The bench fetches it once from PyPI, pinned by version and sha256, and keeps it under
``build/umqtt/``. PyPI's newest release is 1.3.4, an sdist pip cannot install (it has no
setup.py), so the file is read straight from PyPI's file host and checked against the pinned
digest. A board gets a newer release through mip (one with ``connect(clean_session,
timeout)``); the two differ by a few lines of ``connect``.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "umqtt"
VERSION = "1.3.4"
URL = (
    "https://files.pythonhosted.org/packages/bd/cf/"
    "697e3418b2f44222b3e848078b1e33ee76aedca9b6c2430ca1b1aec1ce1d/"
    "micropython-umqtt.simple-1.3.4.tar.gz"
)
SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
MEMBER = "micropython-umqtt.simple-1.3.4/umqtt/simple.py"


class UmqttUnavailable(Exception):
    """The library could not be fetched or did not match its pinned digest."""


def source(cache: Path = CACHE, timeout_s: float = 30) -> Path:
    """The path of ``umqtt/simple.py`` (fetched and checked on first use, then cached)."""
    dst = cache / VERSION / "umqtt" / "simple.py"
    if dst.is_file():
        return dst
    try:
        with urllib.request.urlopen(URL, timeout=timeout_s) as resp:
            data = resp.read()
    except OSError as exc:
        raise UmqttUnavailable(
            f"cannot fetch micropython-umqtt.simple {VERSION} from PyPI ({exc})"
        ) from None
    got = hashlib.sha256(data).hexdigest()
    if got != SHA256:
        raise UmqttUnavailable(
            f"micropython-umqtt.simple {VERSION} from PyPI has sha256 {got}, not {SHA256}"
        )
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            raise UmqttUnavailable(f"micropython-umqtt.simple {VERSION}: no {MEMBER}")
        text = member.read()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(text)
    tmp.replace(dst)
    return dst
