"""Open a board's serial port, or say plainly why it can't be opened.

Ports are pyserial URLs: a device (``/dev/ttyUSB0``, ``COM3``), or ``socket://HOST:PORT``
(a virtual board, or a serial-over-TCP bridge), or ``rfc2217://HOST:PORT``.
"""

from __future__ import annotations

import errno
import os

import serial
import serial.tools.list_ports


class PortError(Exception):
    """The port is missing, busy or unusable; the message says which and what to do."""


def available() -> list[str]:
    """Serial devices present on this machine (for error messages)."""
    return sorted(p.device for p in serial.tools.list_ports.comports())


def _hint() -> str:
    ports = available()
    return f" (serial ports here: {', '.join(ports)})" if ports else " (no serial ports found)"


def explain(port: str, exc: BaseException) -> PortError:
    """Turn pyserial's exception for ``port`` into a PortError a person can act on."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    if port.startswith(("socket://", "rfc2217://")):
        if isinstance(exc, ConnectionRefusedError) or "refused" in text.lower():
            return PortError(f"{port}: nothing is listening there (is the virtual board running?)")
        return PortError(f"{port}: cannot connect: {text}")
    if (
        code == errno.ENOENT
        or "No such file" in text
        or "could not open port" in text
        and (not os.path.exists(port))
    ):
        return PortError(f"no such port: {port}{_hint()}")
    if "exclusively lock" in text or code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
        return PortError(
            f"port {port} is busy: another program has it open "
            "(a serial monitor, mpremote, esptool, screen?); close it and retry"
        )
    if code == errno.EACCES or "Permission denied" in text:
        return PortError(
            f"no permission to open {port}: add yourself to the port's group "
            "(dialout on Debian/Ubuntu, uucp on Arch) and log in again"
        )
    return PortError(f"cannot open {port}: {text}")


def open_port(port: str, baud: int = 115200, timeout: float = 1.0) -> serial.SerialBase:
    """Open ``port`` exclusively; PortError if it is missing, busy or refused."""
    if not port.startswith(("socket://", "rfc2217://", "loop://")) and not os.path.exists(port):
        raise PortError(f"no such port: {port}{_hint()}")
    try:
        return serial.serial_for_url(port, baudrate=baud, timeout=timeout, exclusive=True)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise explain(port, exc) from None


def check(port: str, baud: int = 115200) -> None:
    """Open and close ``port`` once, raising PortError with the reason if that fails."""
    open_port(port, baud).close()
