"""The board's MQTT link: one interface, two implementations.

``UmqttLink`` (here) runs on the board on top of micropython-lib's ``umqtt.simple``;
``PahoLink`` (``cloud/orrery/sim/paho_link.py``) runs on CPython on paho-mqtt for the simulator
and the tests. Both are a ``Link``: they take the same arguments and behave the same way;
firmware/README.md says why the board side looks like this.

``Link(client_id, host, port, user=None, password=None, keepalive=30, ssl=None,
timeout_ms=5000, will=None)``; ``will`` is ``(topic, payload, retain, qos)`` or None and
``ssl`` an ``SSLContext`` of the runtime's ``ssl`` module. The session is persistent
(clean_session=False), so ``client_id`` must be stable: QoS 1 messages sent to the board while
it is offline wait on the broker (up to its ``max_queued_messages``).

- ``connect()`` -> True, or False with ``last_error`` set; never raises on network errors.
  ``session_present`` tells whether the broker still had the session; when it had not, the
  topics given to ``subscribe()`` so far are subscribed again.
- ``publish(topic, payload, qos=1, retain=False)`` -> True once written (QoS 0) or once the
  PUBACK came back (QoS 1). False when not connected, on a network error or when no PUBACK
  came within ``timeout_ms``; a failure drops the connection, so the caller keeps the data,
  reconnects with backoff and publishes again (at least once).
- ``subscribe(topic, qos=1)`` -> True once the SUBACK granted it.
- ``poll()`` reads what arrived without waiting, keeps the connection alive, then calls
  ``on_message(topic, payload)`` (``str`` topic, ``bytes`` payload) for each message in
  arrival order, in the caller's thread. A QoS 1 message is acknowledged when the link has it,
  before ``on_message`` runs.
- ``budget`` and ``held``: when ``budget`` (bytes) is set, ``held()`` returns the bytes of
  messages the consumer still holds, and ``poll()`` reads a PUBLISH only while it fits in
  ``budget`` beside them and the messages read but not handed over yet (the first one always
  fits when nothing is held); it hands a message over only while the consumer has room. One
  that does not fit stays in the socket, unacknowledged: TCP and the broker hold it (QoS 1)
  until a later ``poll()`` has room. One that stands in front of a packet the link must read
  now (the PUBACK or SUBACK it awaits, a PINGRESP) is read past into ``spool``, a file
  (``firmware.spool``): acknowledged once it is on flash, handed over in arrival order as room
  frees. So a full budget costs neither a link drop nor a message; only without ``spool``, or
  with the spool full, is such a message left unacknowledged and the connection dropped (the
  broker sends it again). The paho link reads and acknowledges in paho's thread; it applies
  the budget when it hands messages over.
- ``connected``: False after any failure, ``close()`` or ``disconnect()``.
- ``disconnect()`` sends DISCONNECT (the broker discards the will); ``close()`` only closes the
  socket (the broker publishes the will). Neither raises.

Topics and payloads may be ``str`` or ``bytes``. A link belongs to one thread: the board's
link thread, which owns every call above. Each socket operation is bounded by ``timeout_ms``
except the DNS lookup, whose bound is lwip's own.
"""

import select

from shared import const

try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython
    from time import monotonic  # type: ignore[attr-defined]  # CPython only

    def ticks_ms():
        return int(monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


_BUF = const(256)  # one PUBLISH or SUBSCRIBE header with its topic (ids make topics < 160 bytes)
MAX_PACKET = const(8192)  # a larger incoming packet drops the connection rather than the heap
MAX_INBOX = const(8)  # messages read but not yet handed to on_message

_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBACK = const(0x90)
_PINGRESP = const(0xD0)


def _b(s):
    return s.encode() if isinstance(s, str) else s


def error_text(e):
    """A short text for ``last_error``: the exception's type and first argument."""
    a = e.args
    return type(e).__name__ + (" " + str(a[0]) if a else "")


def _close(sock):
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _head(buf, op, n):
    """Write a fixed header (type byte, remaining length ``n``) into ``buf``; return its size."""
    buf[0] = op
    i = 1
    while n > 0x7F:
        buf[i] = (n & 0x7F) | 0x80
        n >>= 7
        i += 1
    buf[i] = n
    return i + 1


class Link:
    """What every link holds: its arguments (see the module doc) and its state."""

    def __init__(
        self,
        client_id,
        host,
        port,
        user=None,
        password=None,
        keepalive=30,
        ssl=None,
        timeout_ms=5000,
        will=None,
    ):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.ssl = ssl
        self.timeout_ms = timeout_ms
        self.will = will
        self.on_message = None
        self.connected = False
        self.session_present = False
        self.last_error = None
        self._subs = []  # (topic, qos) given to subscribe(), for a broker that lost the session
        # Admission by bytes (UmqttLink; see "budget" in the module doc): None, or the bytes
        # of incoming messages the consumer takes at most, and ``held()`` the bytes it holds.
        self.budget = None
        self.held = None
        self.spool = None  # a file for what must be read past without room (UmqttLink)

    def _resume(self):
        # After a CONNACK: a broker that lost the session is given the subscriptions again.
        self.last_error = None
        if not self.session_present:
            for topic, qos in self._subs:
                if not self._subscribe(topic, qos):
                    self.close()  # keeps last_error
                    return False
        return True


def check_qos(qos):
    """ValueError unless ``qos`` is 0 or 1 (the only levels a link speaks)."""
    if qos != 0 and qos != 1:
        raise ValueError("qos must be 0 or 1")


class UmqttLink(Link):
    """The link on umqtt.simple: umqtt opens the session, this class owns the socket after."""

    def __init__(self, *args, **kw):
        Link.__init__(self, *args, **kw)
        self._sock = None
        self._poller = None
        self._buf = bytearray(_BUF)
        self._puback = bytearray(b"\x40\x02\x00\x00")
        self._pid = 0
        self._acked = 0  # packet id of the last PUBACK or SUBACK read
        self._granted = 0  # return code of the last SUBACK read
        self._tx = 0  # ticks_ms of the last packet sent
        self._ping = None  # ticks_ms of an unanswered PINGREQ
        self._inbox = []
        self._in_bytes = 0  # payload bytes in _inbox
        self._op = 0  # fixed header of a PUBLISH left in the socket for lack of room (0: none)
        self._n = 0  # ... and its remaining length
        # the overflow spool (firmware.spool): the messages in it not handed over yet, and
        # where the next one starts and the last one ends in its file
        self._sp = 0
        self._sp_at = 0
        self._sp_end = 0

    def connect(self):
        """Open a new connection (closing any old one); True once the broker accepted it."""
        from umqtt.simple import MQTTClient  # installed on the board by mip; not on CPython

        self.close()
        c = MQTTClient(
            self.client_id, self.host, self.port, self.user, self.password, self.keepalive, self.ssl
        )
        if self.will:
            topic, payload, retain, qos = self.will
            c.set_last_will(_b(topic), _b(payload), retain, qos)
        t = self.timeout_ms / 1000
        try:
            present = c.connect(False, t)
            sock = c.sock
            if hasattr(sock, "settimeout"):  # a TLS socket keeps the timeout of the raw one
                sock.settimeout(t)
        # umqtt raises OSError, MQTTException (refused), or fails an assert or an index on a
        # short or garbled CONNACK.
        except Exception as e:
            _close(c.sock)
            self.last_error = error_text(e)
            return False
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._tx = ticks_ms()
        self._ping = None
        self.connected = True
        self.session_present = bool(present)
        return self._resume()

    def publish(self, topic, payload, qos=1, retain=False):
        """Send one message; True once written (QoS 0) or acknowledged (QoS 1) in time."""
        check_qos(qos)
        if not self.connected:
            return False
        start = ticks_ms()
        topic = _b(topic)
        payload = _b(payload)
        tl = len(topic)
        if tl > _BUF - 9:
            raise ValueError("topic too long")
        b = self._buf
        i = _head(b, _PUBLISH | qos << 1 | (1 if retain else 0), tl + len(payload) + 2 + 2 * qos)
        b[i] = tl >> 8
        b[i + 1] = tl & 0xFF
        i += 2
        b[i : i + tl] = topic
        i += tl
        if qos:
            pid = self._next_pid()
            b[i] = pid >> 8
            b[i + 1] = pid & 0xFF
            i += 2
        try:
            self._write(b, i)
            self._write(payload, len(payload))
            if not qos or self._wait(_PUBACK, pid, start):
                return True
            self._drop("puback timeout")
        except OSError as e:
            self._drop(error_text(e))
        return False

    def subscribe(self, topic, qos=1):
        """Subscribe now if connected (True once granted) and again after a lost session."""
        topic = _b(topic)
        if len(topic) > _BUF - 9:
            raise ValueError("topic too long")
        if (topic, qos) not in self._subs:
            self._subs.append((topic, qos))
        return self.connected and self._subscribe(topic, qos)

    def poll(self):
        """Read what arrived, ping when idle, then hand each message to on_message."""
        if self.connected:
            try:
                now = ticks_ms()
                if self._ping is not None:
                    if ticks_diff(now, self._ping) > self.timeout_ms:
                        raise OSError("no PINGRESP")
                elif self.keepalive and ticks_diff(now, self._tx) >= self.keepalive * 500:
                    self._write(b"\xc0\x00", 2)
                    self._ping = now
                if self._sp:
                    from firmware import spool

                    while self._sp and spool.take(self):
                        pass
                # Paced: a PUBLISH without room stays in the socket. Not while a PINGRESP is
                # awaited: the link reads past such a message then (into the spool).
                while self._read(0, self._ping is None):
                    pass
            except OSError as e:
                self._drop(error_text(e))
        inbox = self._inbox
        while inbox:
            topic, payload = inbox[0]
            if self.budget is not None and self.held is not None:
                held = self.held()
                if held and held + len(payload) > self.budget:
                    break  # the consumer has no room: a later poll hands it over
            inbox.pop(0)
            self._in_bytes -= len(payload)
            if self.on_message:
                self.on_message(topic, payload)

    def disconnect(self):
        """Say goodbye (the broker discards the will and keeps the session), then close."""
        if self.connected:
            try:
                self._write(b"\xe0\x00", 2)
            except OSError:
                pass
        self.close()

    def close(self):
        """Close the socket without DISCONNECT: to the broker the board died (will published)."""
        sock = self._sock
        self._sock = None
        self._poller = None
        self.connected = False
        self._op = 0
        _close(sock)

    def _drop(self, reason):
        self.last_error = reason
        self.close()

    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    def _write(self, buf, n):
        if self._sock.write(buf, n) != n:
            raise OSError("short write")
        self._tx = ticks_ms()

    def _subscribe(self, topic, qos):
        start = ticks_ms()
        tl = len(topic)
        b = self._buf
        i = _head(b, 0x82, tl + 5)
        pid = self._next_pid()
        b[i] = pid >> 8
        b[i + 1] = pid & 0xFF
        b[i + 2] = tl >> 8
        b[i + 3] = tl & 0xFF
        i += 4
        b[i : i + tl] = topic
        i += tl
        b[i] = qos
        try:
            self._write(b, i + 1)
            if self._wait(_SUBACK, pid, start):
                if self._granted != 0x80:
                    return True
                self.last_error = "subscribe refused"
                return False
            self._drop("suback timeout")
        except OSError as e:
            self._drop(error_text(e))
        return False

    def _wait(self, kind, pid, start):
        """Read packets until the ack ``kind`` for ``pid``; False once timeout_ms from start."""
        while True:
            left = self.timeout_ms - ticks_diff(ticks_ms(), start)
            if left <= 0:
                return False
            if self._read(left) == kind and self._acked == pid:
                return True

    def _byte(self):
        b = self._sock.read(1)
        if not b:
            raise OSError("closed")
        return b[0]

    def _read(self, wait_ms, pace=False):
        """Read and handle one packet if one starts within wait_ms; return its type or 0.

        Only the wait for the first byte is bounded by wait_ms: once a packet has begun, the
        rest must arrive within the socket timeout or the link is broken (OSError). With
        ``pace`` (``poll``), a PUBLISH without room in ``budget`` is left in the socket (its
        fixed header kept for the next read) and 0 returned.
        """
        op = self._op
        n = self._n
        if not op:
            if not self._poller.poll(wait_ms):
                return 0
            op = self._byte()
            n = 0
            shift = 0
            while True:
                c = self._byte()
                n |= (c & 0x7F) << shift
                if not c & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise OSError("bad length")
            if n > MAX_PACKET:
                raise OSError("packet too big")
        kind = op & 0xF0
        if kind == _PUBLISH:
            if self._sp or not self._room(n):  # behind spooled messages, or no room
                if pace:
                    self._op = op
                    self._n = n
                    return 0
                self._op = 0
                if self.spool is None:  # left unacknowledged: the broker sends it again
                    raise OSError("inbox full")
                from firmware import spool  # read past it, onto flash

                spool.put(self, op, n)
                return kind
            self._op = 0
            self._incoming(op, n)
            return kind
        self._op = 0
        body = b""
        if n:
            body = self._sock.read(n)
            if not body or len(body) != n:
                raise OSError("closed")
        if kind == _PUBACK or kind == _SUBACK:
            if n < 2:
                raise OSError("bad ack")
            self._acked = body[0] << 8 | body[1]
            if kind == _SUBACK:
                self._granted = body[2] if n > 2 else 0x80
        elif kind == _PINGRESP:
            self._ping = None
        return kind

    def _room(self, n):
        # whether a PUBLISH of remaining length n may be read now (see budget in the module doc)
        if len(self._inbox) >= MAX_INBOX:
            return False
        if self.budget is None:
            return True
        held = self._in_bytes + (self.held() if self.held else 0)
        return held == 0 or held + n <= self.budget

    def _exact(self, n):
        b = self._sock.read(n)
        if not b or len(b) != n:
            raise OSError("closed")
        return b

    def _incoming(self, op, n):
        # the topic and packet id first, then the payload in one read: the payload is the
        # only copy of the message the link makes
        qos = (op >> 1) & 3
        if qos == 2:  # never subscribed at QoS 2, so the broker never sends it
            raise OSError("qos 2")
        if n < 2:
            raise OSError("bad publish")
        b = self._exact(2)
        tl = b[0] << 8 | b[1]
        i = 2 + tl + 2 * qos
        if i > n:
            raise OSError("bad publish")
        topic = self._exact(tl).decode() if tl else ""
        if qos:
            b = self._exact(2)
        payload = self._exact(n - i) if n > i else b""
        self._inbox.append((topic, payload))
        self._in_bytes += len(payload)
        if qos:
            ack = self._puback
            ack[2] = b[0]
            ack[3] = b[1]
            self._write(ack, 4)
