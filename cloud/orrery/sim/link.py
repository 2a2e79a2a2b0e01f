"""The virtual boards' MQTT link: the firmware's own ``UmqttLink`` on a CPython socket, with
only the session opening (umqtt.simple's CONNECT/CONNACK) written here."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
from collections import Counter

from firmware import link as _fwlink
from firmware.link import UmqttLink


class _Stream:
    """A CPython socket with the MicroPython stream calls UmqttLink makes (``read``, ``write``).

    Reads are buffered (one ``recv`` serves many small packets); writes are buffered too and
    go out when the link next waits for a packet (``_Poller.poll``), so a PUBLISH header and
    its payload leave in one segment. ``read(n)`` reads until ``n`` bytes or EOF; a timeout
    raises OSError, as on a board.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def flush(self) -> None:
        if self.wbuf:
            try:
                self.sock.sendall(self.wbuf)
            except TimeoutError:
                raise OSError(110, "ETIMEDOUT") from None
            finally:
                self.wbuf.clear()

    def read(self, n: int) -> bytes:
        self.flush()
        buf = self.rbuf
        try:
            while len(buf) < n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            raise OSError(110, "ETIMEDOUT") from None
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def write(self, data, n: int | None = None) -> int:
        mv = memoryview(data)
        if n is not None:
            mv = mv[:n]
        self.wbuf += mv
        if len(self.wbuf) > 65536:
            self.flush()
        return len(mv)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.flush()
        self.sock.close()


class _Poller:
    """``select.poll`` over a ``_Stream`` that also sees the stream's buffered bytes."""

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream
        self.p = select.poll()
        self.p.register(stream.sock, select.POLLIN)

    def poll(self, timeout_ms: int = -1) -> list:
        st = self.stream
        st.flush()
        if st.rbuf:
            return [(st.fileno(), select.POLLIN)]
        return self.p.poll(timeout_ms)


def _mqtt_str(b: str | bytes) -> bytes:
    b = b.encode() if isinstance(b, str) else bytes(b)
    return struct.pack("!H", len(b)) + b


class SimLink(UmqttLink):
    """The board's link (``firmware.link.UmqttLink``) on CPython, one socket and no thread.

    Only ``connect`` is ours: the CONNECT/CONNACK exchange that umqtt.simple does on a board
    (MQTT 3.1.1, clean_session off, the will, a bounded wait; no keepalive for the broker, which
    counts real time: the board still pings on its virtual schedule). Everything after CONNACK,
    publishing with PUBACK waits, subscriptions, incoming commands, keepalive pings, is the
    firmware's code. Counts what it delivered in ``sent`` (messages by topic kind, and
    ``readings``: records in PUBACKed readings batches).
    """

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.sent: Counter = Counter()
        self.published = 0

    def connect(self) -> bool:
        self.close()
        t = self.timeout_ms / 1000
        flags = 0  # clean_session off: a persistent session, as the board asks for
        payload = _mqtt_str(self.client_id)
        if self.will:
            topic, msg, retain, qos = self.will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _mqtt_str(topic) + _mqtt_str(msg)
        if self.user is not None:
            flags |= 0x80
            payload += _mqtt_str(self.user)
            if self.password is not None:
                flags |= 0x40
                payload += _mqtt_str(self.password)
        # keepalive 0 for the broker: its timer runs on real time while the board pings on
        # virtual time, so a fleet running slower than real time (thousands of boards waiting
        # for the companion) would be cut off by the broker for silence, every board at once
        body = _mqtt_str("MQTT") + bytes((4, flags)) + struct.pack("!H", 0) + payload
        head = bytearray(b"\x10")
        n = len(body)
        while True:
            head.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                break
        try:
            sock = socket.create_connection((self.host, self.port), timeout=t)
        except OSError as e:
            self.last_error = _fwlink._err(e)
            return False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        st = _Stream(sock)
        try:
            st.write(bytes(head) + body)
            ack = st.read(4)
            if len(ack) != 4 or ack[0] != 0x20:
                raise OSError("no CONNACK")
            if ack[3]:
                raise OSError(f"connection refused, code {ack[3]}")
        except OSError as e:
            sock.close()
            self.last_error = _fwlink._err(e)
            return False
        self._sock = st
        self._poller = _Poller(st)
        self._tx = _fwlink.ticks_ms()
        self._ping = None
        self.connected = True
        self.session_present = bool(ack[2] & 1)
        self.last_error = None
        if not self.session_present:
            for topic, qos in self._subs:
                if not self._subscribe(topic, qos):
                    self.close()
                    return False
        return True

    def publish(self, topic, payload, qos=1, retain=False) -> bool:
        ok = super().publish(topic, payload, qos, retain)
        if ok:
            self.published += 1
            kind = topic.rsplit("/", 1)[-1]
            self.sent[kind] += 1
            if kind == "readings":
                self.sent["records"] += payload[12] | payload[13] << 8
        return ok

    @property
    def fd(self) -> int:
        """The socket's descriptor, or -1 when not connected; buffered bytes count as waiting."""
        st = self._sock
        if st is None:
            return -1
        return -2 if st.rbuf else st.fileno()

    def flush(self) -> None:
        """Send what is buffered (the PUBACK of a command read last, say)."""
        st = self._sock
        if st is not None:
            try:
                st.flush()
            except OSError as e:
                self._drop(_fwlink._err(e))
