"""``PahoLink``: the board's link interface (firmware/link.py) on CPython, built on paho-mqtt 2.x.

It stands in for ``firmware.link.UmqttLink`` in the simulator and the tests, with the same arguments,
methods and guarantees (see firmware/link.py). Boards never use it; it imports paho, ``socket`` and
``threading`` lazily so that it still compiles with mpy-cross and loads on MicroPython.

paho's network thread (``loop_start``) does the I/O and keepalive; messages it receives are
queued and handed to ``on_message`` by ``poll()`` in the caller's thread. Each ``connect()``
uses a fresh paho client with paho's own reconnecting turned off: reconnecting (with
``backoff.Backoff``) is the caller's job, as on the board, and no stale in-flight message of
an old connection is sent again behind the caller's back.
"""

import time

from firmware.link import Link, check_qos, error_text


class PahoLink(Link):
    """The link on paho-mqtt (MQTT 3.1.1, persistent session)."""

    def __init__(self, *args, **kw):
        import collections
        import threading

        Link.__init__(self, *args, **kw)
        self._client = None
        self._cv = threading.Condition()
        self._state = None  # None while waiting for CONNACK, then "up" or why it failed
        self._subacks = {}  # mid -> reason codes
        self._inbox = collections.deque()

    # paho's thread: callbacks about a client that is no longer ours change nothing, but a
    # message is always kept (paho acknowledges it when the callback returns).

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._cv:
            if client is self._client:
                if reason_code.is_failure:
                    self._state = "refused " + str(reason_code)
                else:
                    self._state = "up"
                    self.session_present = bool(flags.session_present)
                    self.connected = True
                self._cv.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._cv:
            if client is self._client:
                self.connected = False
                if self._state is None:
                    self._state = "closed"
                self.last_error = "disconnected " + str(reason_code)
                self._cv.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cv:
            if client is self._client:
                self._subacks[mid] = reason_codes
                self._cv.notify_all()

    def _on_message(self, client, userdata, msg):
        self._inbox.append((msg.topic, msg.payload))

    # the caller's thread

    def connect(self):
        """Open a new connection (closing any old one); True once the broker accepted it."""
        from paho.mqtt import client as mqtt

        self.close()
        t = self.timeout_ms / 1000
        deadline = time.monotonic() + t
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        c.connect_timeout = t  # TCP connect and TLS handshake
        if self.user is not None:
            c.username_pw_set(self.user, self.password)
        if self.will:
            topic, payload, retain, qos = self.will
            c.will_set(topic, payload, qos, retain)
        if self.ssl is not None:
            c.tls_set_context(self.ssl)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        with self._cv:
            self._state = None
            self._subacks.clear()
            self._client = c
        try:
            c.connect(self.host, self.port, self.keepalive)
        except Exception as e:  # OSError, ssl.SSLError, ValueError (bad host)
            self._fail(error_text(e))
            return False
        c.loop_start()
        with self._cv:
            self._cv.wait_for(lambda: self._state is not None, deadline - time.monotonic())
            state = self._state
        if state != "up":
            self._fail(state or "connack timeout")
            return False
        return self._resume()

    def publish(self, topic, payload, qos=1, retain=False):
        """Send one message; True once written (QoS 0) or acknowledged (QoS 1) in time."""
        check_qos(qos)
        c = self._client
        if not self.connected or c is None:
            return False
        deadline = time.monotonic() + self.timeout_ms / 1000
        if isinstance(payload, memoryview):
            payload = bytes(payload)  # paho takes bytes; the board sends the buffer as is
        try:
            info = c.publish(topic, payload, qos, retain)
            if info.rc:
                return False
            while not info.is_published():
                left = deadline - time.monotonic()
                if left <= 0 or not self.connected:
                    break
                info.wait_for_publish(min(left, 0.05))
            else:
                return True
        except (ValueError, RuntimeError) as e:  # paho: queue full, or the connection was lost
            self._fail(error_text(e))
            return False
        if self.connected:
            self._fail("puback timeout")
        return False

    def subscribe(self, topic, qos=1):
        """Subscribe now if connected (True once granted) and again after a lost session."""
        if (topic, qos) not in self._subs:
            self._subs.append((topic, qos))
        c = self._client
        return self.connected and c is not None and self._subscribe(topic, qos)

    def poll(self):
        """Hand each message received so far to on_message, in the caller's thread, while the
        consumer has room in ``budget`` (paho has read and acknowledged them already: the rest
        waits here for a later poll)."""
        inbox = self._inbox
        while inbox:
            if self.budget is not None and self.held is not None:
                held = self.held()
                if held and held + len(inbox[0][1]) > self.budget:
                    break
            topic, payload = inbox.popleft()
            if self.on_message:
                self.on_message(topic, payload)

    def disconnect(self):
        """Say goodbye (the broker discards the will and keeps the session), then close."""
        c = self._client
        if c is not None and self.connected:
            c.disconnect()
            with self._cv:
                self._cv.wait_for(lambda: not self.connected, self.timeout_ms / 1000)
        self.close()

    def close(self):
        """Close the socket without DISCONNECT (the broker publishes the will); stop paho's thread."""
        import socket

        with self._cv:
            c = self._client
            self._client = None
            self.connected = False
        if c is None:
            return
        sock = c.socket()
        if sock is not None:
            try:
                # Wakes paho's thread out of select(); it sees EOF and ends.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        c.loop_stop()
        if sock is not None:
            sock.close()

    def _fail(self, reason):
        self.last_error = reason
        self.close()

    def _subscribe(self, topic, qos):
        c = self._client
        if c is None:
            return False
        rc, mid = c.subscribe(topic, qos)
        if rc:
            self.last_error = "subscribe " + str(rc)
            return False
        with self._cv:
            self._cv.wait_for(
                lambda: mid in self._subacks or not self.connected, self.timeout_ms / 1000
            )
            codes = self._subacks.pop(mid, None)
        if codes is None:
            if self.connected:
                self._fail("suback timeout")
            return False
        if codes[0].is_failure:
            self.last_error = "subscribe refused"
            return False
        return True
