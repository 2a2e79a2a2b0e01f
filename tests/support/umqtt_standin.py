"""A stand-in for micropython-lib's ``umqtt.simple``, so ``firmware.link.UmqttLink`` can be tested
on CPython against the real Mosquitto.

The real module cannot be had here: PyPI only carries a 2017 sdist (1.3.4, no ``timeout``
argument, no setup.py, so pip cannot even download it) and the current one comes from the
MicroPython package index through mip, on a board. ``UmqttLink`` uses exactly this much of it:
``MQTTClient(client_id, server, port, user, password, keepalive, ssl)``, ``set_last_will``,
``connect(clean_session, timeout)`` returning the session-present flag, and ``.sock``, which
this stand-in gives MicroPython's stream API (``read``/``write``/``settimeout``) over a real
CPython socket, with MicroPython's semantics: ``read(n)`` reads until ``n`` bytes or EOF,
a timeout raises OSError(ETIMEDOUT).

Written for this project from the MQTT 3.1.1 specification, not copied from umqtt.
"""

from __future__ import annotations

import errno
import socket
import struct


class MQTTException(Exception):
    pass


class MpSocket:
    """A CPython socket with the MicroPython socket methods UmqttLink calls."""

    def __init__(self, sock: socket.socket) -> None:
        self._s = sock

    def fileno(self) -> int:
        return self._s.fileno()

    def settimeout(self, t: float | None) -> None:
        self._s.settimeout(t)

    def setblocking(self, flag: bool) -> None:
        self._s.setblocking(flag)

    def read(self, n: int) -> bytes:
        out = b""
        try:
            while len(out) < n:
                chunk = self._s.recv(n - len(out))
                if not chunk:
                    break
                out += chunk
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "ETIMEDOUT") from None
        return out

    def write(self, buf, n: int | None = None) -> int:
        data = memoryview(buf)[: len(buf) if n is None else n]
        try:
            self._s.sendall(data)
        except TimeoutError:
            raise OSError(errno.ETIMEDOUT, "ETIMEDOUT") from None
        return len(data)

    def close(self) -> None:
        self._s.close()


def _str(b) -> bytes:
    b = b.encode() if isinstance(b, str) else bytes(b)
    return struct.pack("!H", len(b)) + b


class MQTTClient:
    def __init__(
        self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None
    ) -> None:
        if ssl is not None:
            raise NotImplementedError("the stand-in speaks plain TCP only")
        self.client_id = client_id
        self.server = server
        self.port = port or 1883
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.sock: MpSocket | None = None
        self.lw = None

    def set_last_will(self, topic, msg, retain=False, qos=0) -> None:
        self.lw = (topic, msg, retain, qos)

    def connect(self, clean_session=True, timeout=None) -> int:
        raw = socket.socket()
        raw.settimeout(timeout)
        self.sock = MpSocket(raw)
        raw.connect(socket.getaddrinfo(self.server, self.port)[0][-1])
        flags = 0x02 if clean_session else 0
        payload = _str(self.client_id)
        if self.lw:
            topic, msg, retain, qos = self.lw
            flags |= 0x04 | qos << 3 | (0x20 if retain else 0)
            payload += _str(topic) + _str(msg)
        if self.user:
            flags |= 0xC0
            payload += _str(self.user) + _str(self.pswd)
        var = b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack("!H", self.keepalive)
        n = len(var) + len(payload)
        head = bytearray([0x10])
        while True:
            head.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                break
        self.sock.write(bytes(head) + var + payload)
        resp = self.sock.read(4)
        if len(resp) != 4 or resp[0] != 0x20 or resp[1] != 0x02:
            raise OSError(errno.ECONNRESET, "bad CONNACK")
        if resp[3]:
            raise MQTTException(resp[3])
        return resp[2] & 1

    def disconnect(self) -> None:
        self.sock.write(b"\xe0\x00")
        self.sock.close()
