"""UmqttLink's own wire code on CPython and on MicroPython, over a scripted fake socket.

Unit level only: the MicroPython test runtime has no sockets. The behaviour against a real
Mosquitto is tested in tests/firmware/test_link.py; this proves the same code runs on a 32-bit
MicroPython and puts the exact bytes of MQTT 3.1.1 on the wire.
"""

from _util import MICROPYTHON, raises

import firmware.link


class FakeSock:
    """Records what the link writes; ``read`` serves ``rx`` (b"" once it is used up: EOF)."""

    def __init__(self, rx=b""):
        self.rx = bytearray(rx)
        self.tx = bytearray()
        self.closed = False

    def write(self, buf, n):
        self.tx += bytes(buf[:n])
        return n

    def read(self, n):
        out = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return out

    def close(self):
        self.closed = True


class FakePoller:
    def __init__(self, sock):
        self.sock = sock

    def poll(self, ms):
        return [1] if self.sock.rx else []


def ago(ms):
    """ticks_ms() of ``ms`` milliseconds ago."""
    try:
        from time import ticks_add
    except ImportError:  # CPython: firmware.link's ticks are plain ms
        return firmware.link.ticks_ms() - ms
    return ticks_add(firmware.link.ticks_ms(), -ms)


def wired(rx=b"", timeout_ms=50, keepalive=30):
    """A link that is 'connected' to a FakeSock (connect() needs umqtt and a network)."""
    link = firmware.link.UmqttLink(
        "dev-01", "127.0.0.1", 1883, keepalive=keepalive, timeout_ms=timeout_ms
    )
    sock = FakeSock(rx)
    link._sock = sock
    link._poller = FakePoller(sock)
    link._tx = firmware.link.ticks_ms()
    link.connected = True
    return link, sock


def test_publish_qos1_bytes_and_puback():
    link, sock = wired(b"\x40\x02\x00\x01")
    assert link.publish("a/b", b"hi") is True
    assert bytes(sock.tx) == b"\x32\x09\x00\x03a/b\x00\x01hi"
    assert link.connected


def test_publish_qos0_retain_long_payload_two_byte_length():
    link, sock = wired()
    assert link.publish(b"t", b"x" * 200, qos=0, retain=True) is True
    # remaining length 2 + 1 + 200 = 203 = 0xCB 0x01 as a varint
    assert bytes(sock.tx[:6]) == b"\x31\xcb\x01\x00\x01t"
    assert len(sock.tx) == 6 + 200


def test_publish_without_matching_puback_times_out_and_drops():
    link, sock = wired(b"\x40\x02\x00\x07", timeout_ms=30)  # PUBACK for another packet
    assert link.publish("a/b", b"hi") is False
    assert not link.connected and sock.closed
    assert link.last_error == "puback timeout"
    assert link.publish("a/b", b"hi") is False


def test_publish_rejects_qos2_and_long_topic():
    link, _ = wired()
    raises(ValueError, link.publish, "a", b"", 2)
    raises(ValueError, link.publish, "a" * 250, b"")


def test_packet_ids_wrap_within_16_bits():
    link, _ = wired()
    link._pid = 65534
    assert link._next_pid() == 65535
    assert link._next_pid() == 1


def test_incoming_qos1_delivered_as_str_and_bytes_and_acked():
    got = []
    # PUBLISH qos 1, topic "c/d", packet id 0x1234, payload b"cmd"
    link, sock = wired(b"\x32\x0a\x00\x03c/d\x12\x34cmd" + b"\x30\x05\x00\x01eok")
    link.on_message = lambda t, p: got.append((t, p))
    link.poll()
    assert got == [("c/d", b"cmd"), ("e", b"ok")]
    assert type(got[0][0]) is str and type(got[0][1]) is bytes
    assert bytes(sock.tx) == b"\x40\x02\x12\x34"  # PUBACK for the QoS 1 message only
    assert link.connected


def test_subscribe_bytes_granted_and_refused():
    link, sock = wired(b"\x90\x03\x00\x01\x01")
    assert link.subscribe("x/down/cmd", 1) is True
    assert bytes(sock.tx) == b"\x82\x0f\x00\x01\x00\x0ax/down/cmd\x01"
    sock.rx = bytearray(b"\x90\x03\x00\x02\x80")
    assert link.subscribe("y", 1) is False
    assert link.last_error == "subscribe refused"
    assert link._subs == [(b"x/down/cmd", 1), (b"y", 1)]


def test_idle_poll_pings_and_pingresp_clears_it():
    link, sock = wired(keepalive=30)
    link.poll()
    assert bytes(sock.tx) == b""
    link._tx = ago(15000)  # nothing sent for half the keepalive
    link.poll()
    assert bytes(sock.tx) == b"\xc0\x00"
    assert link._ping is not None
    sock.rx = bytearray(b"\xd0\x00")
    link.poll()
    assert link._ping is None and link.connected


def test_unanswered_ping_drops_after_timeout():
    link, sock = wired(keepalive=30, timeout_ms=20)
    link._tx = ago(15000)
    link.poll()
    assert link._ping is not None
    link.poll()
    assert link.connected  # not yet
    link._ping = ago(21)
    link.poll()
    assert not link.connected and link.last_error == "OSError no PINGRESP"


def test_truncated_packet_drops():
    link, sock = wired(b"\x32\x20\x00")  # 32 bytes announced, then EOF
    link.poll()
    assert not link.connected and sock.closed
    assert link.last_error == "OSError closed"


def test_oversized_packet_drops_before_reading_it():
    link, sock = wired(b"\x30\xa0\x8d\x06" + b"z" * 16)  # remaining length 100000
    link.poll()
    assert link.last_error == "OSError packet too big"
    assert len(sock.rx) == 16


def test_full_inbox_leaves_message_unacked_and_drops():
    one = b"\x32\x06\x00\x01q\x00\x05p"  # QoS 1, packet id 5
    link, sock = wired(one * (firmware.link.MAX_INBOX + 1), timeout_ms=30)
    # a publish waiting for its PUBACK reads (and queues) everything that arrives meanwhile
    assert link.publish("a", b"") is False
    assert link.last_error == "OSError inbox full"
    acks = bytes(sock.tx).count(b"\x40\x02\x00\x05")
    assert acks == firmware.link.MAX_INBOX  # the one that did not fit was not acknowledged
    got = []
    link.on_message = lambda t, p: got.append(p)
    link.poll()  # what was queued is still delivered
    assert got == [b"p"] * firmware.link.MAX_INBOX


def test_disconnect_sends_disconnect_close_does_not():
    link, sock = wired()
    link.disconnect()
    assert bytes(sock.tx) == b"\xe0\x00" and sock.closed and not link.connected
    link, sock = wired()
    link.close()
    assert bytes(sock.tx) == b"" and sock.closed and not link.connected


def _pub(pid, payload):
    # a QoS 1 PUBLISH on topic "q" with packet id ``pid``
    body = b"\x00\x01q" + bytes([pid >> 8, pid & 0xFF]) + payload
    return bytes([0x32, len(body)]) + body


def test_budget_leaves_what_does_not_fit_in_the_socket_unacked_until_there_is_room():
    held = [0]
    link, sock = wired(_pub(1, b"a" * 40) + _pub(2, b"b" * 40) + _pub(3, b"c" * 40))
    link.budget = 100
    link.held = lambda: held[0]
    got = []

    def take(t, p):
        got.append(p)
        held[0] += len(p)

    link.on_message = take
    link.poll()  # 45 + 45 bytes fit in 100; the third does not
    assert got == [b"a" * 40, b"b" * 40]
    assert bytes(sock.tx) == b"\x40\x02\x00\x01\x40\x02\x00\x02"  # the third is not acked
    assert len(sock.rx) == 47 - 2  # of its 47 bytes, only the fixed header was read
    link.poll()
    assert len(got) == 2 and link.connected
    held[0] = 0  # the consumer handled them
    link.poll()
    assert got[2] == b"c" * 40 and bytes(sock.tx).endswith(b"\x40\x02\x00\x03")


def test_budget_admits_one_message_larger_than_it_when_nothing_is_held():
    link, sock = wired(_pub(1, b"x" * 90))
    link.budget = 10
    link.held = lambda: 0
    got = []
    link.on_message = lambda t, p: got.append(p)
    link.poll()
    assert got == [b"x" * 90]


def test_budget_full_without_a_spool_leaves_the_publish_unacked_and_drops():
    # the last resort (a link without a spool file): the broker sends it again after reconnect
    link, sock = wired(_pub(1, b"x" * 40) + b"\x40\x02\x00\x01", timeout_ms=30)
    link.budget = 50
    link.held = lambda: 30
    assert link.publish("a", b"") is False
    assert link.last_error == "OSError inbox full"
    assert b"\x40\x02\x00\x01" not in bytes(sock.tx)  # the broker sends it again


_spools = [0]


def spooled(link):
    """Give ``link`` a spool file of its own (on /flash under MicroPython)."""
    _spools[0] += 1
    if MICROPYTHON:
        link.spool = "/flash/spool" + str(_spools[0])
    else:
        import tempfile

        link.spool = tempfile.mkdtemp() + "/inbox.spool"
    return link.spool


def exists(path):
    import os

    try:
        os.stat(path)
        return True
    except OSError:
        return False


def test_budget_full_while_awaiting_a_puback_spools_the_publish_and_keeps_the_link():
    # A command stands in front of the PUBACK the link waits for, and the node has no room for
    # it: the link reads it past, onto flash, acknowledges it there and gets its PUBACK.
    link, sock = wired(_pub(7, b"x" * 40) + b"\x40\x02\x00\x01", timeout_ms=30)
    path = spooled(link)
    held = [30]
    link.budget = 50
    link.held = lambda: held[0]
    got = []
    link.on_message = lambda t, p: got.append((t, p))
    assert link.publish("a", b"") is True
    assert link.connected and link.last_error is None
    assert bytes(sock.tx).endswith(b"\x40\x02\x00\x07")  # acked once on flash
    assert exists(path)
    link.poll()
    assert got == []  # still no room
    held[0] = 0
    link.poll()
    assert got == [("q", b"x" * 40)]
    assert not exists(path) and link._sp == 0


def test_spooled_messages_come_before_newer_ones_in_arrival_order():
    link, sock = wired(_pub(1, b"a" * 30) + _pub(2, b"b" * 30) + b"\x40\x02\x00\x01")
    spooled(link)
    held = [40]
    link.budget = 50
    link.held = lambda: held[0]
    got = []

    def take(t, p):
        got.append(p)
        held[0] += len(p)

    link.on_message = take
    assert link.publish("a", b"") is True
    sock.rx += _pub(3, b"c" * 30)  # a newer one, in the socket
    held[0] = 0
    link.poll()  # one fits at a time: the oldest, from the spool
    assert got == [b"a" * 30]
    for _ in range(3):
        held[0] = 0
        link.poll()
    assert got == [b"a" * 30, b"b" * 30, b"c" * 30]
    assert bytes(sock.tx).count(b"\x40\x02") == 3 and link.connected


def test_awaited_pingresp_behind_a_parked_publish_keeps_the_link():
    link, sock = wired(_pub(5, b"p" * 40), keepalive=30, timeout_ms=20)
    spooled(link)
    held = [30]
    link.budget = 50
    link.held = lambda: held[0]
    got = []
    link.on_message = lambda t, p: got.append(p)
    link.poll()  # no room: the message stays in the socket
    assert len(sock.rx) > 0 and got == []
    link._tx = ago(15000)
    link.poll()  # idle: PINGREQ
    assert link._ping is not None
    sock.rx += b"\xd0\x00"  # the PINGRESP, behind the message
    link.poll()
    assert link._ping is None and link.connected
    link._ping = None
    held[0] = 0
    link.poll()
    assert got == [b"p" * 40]


def test_full_inbox_while_awaiting_a_puback_spools_the_rest():
    one = b"\x32\x06\x00\x01q\x00\x05p"  # QoS 1, packet id 5
    n = firmware.link.MAX_INBOX + 3
    link, sock = wired(one * n + b"\x40\x02\x00\x01", timeout_ms=30)
    spooled(link)
    assert link.publish("a", b"") is True and link.connected
    assert bytes(sock.tx).count(b"\x40\x02\x00\x05") == n  # every one acknowledged
    got = []
    link.on_message = lambda t, p: got.append(p)
    link.poll()
    link.poll()
    assert got == [b"p"] * n


def test_a_full_spool_drops_unacknowledged():
    import firmware.spool

    link, sock = wired(_pub(1, b"x" * 40) + b"\x40\x02\x00\x01", timeout_ms=30)
    spooled(link)
    link.budget = 50
    link.held = lambda: 30
    link._sp_end = firmware.spool.MAX_BYTES - 20
    assert link.publish("a", b"") is False
    assert link.last_error == "OSError inbox full"
    assert b"\x40\x02\x00\x01" not in bytes(sock.tx)


def test_poll_hands_over_only_while_the_consumer_has_room():
    link, sock = wired(_pub(1, b"a" * 10) + _pub(2, b"b" * 10))
    held = [0]
    link.budget = 100
    link.held = lambda: held[0]
    got = []
    link.on_message = lambda t, p: got.append(p)
    held[0] = 100  # e.g. the node's inbox is full
    link.poll()
    assert got == [] and link.connected
    held[0] = 0
    link.poll()
    assert got == [b"a" * 10, b"b" * 10]
