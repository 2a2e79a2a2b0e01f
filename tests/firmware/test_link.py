"""The board's MQTT link (firmware/link.py, cloud/orrery/sim/paho_link.py) against a real Mosquitto.

Every behaviour test runs on both implementations: ``paho`` (PahoLink) and ``umqtt``
(UmqttLink over tests/support/umqtt_standin.py, because the real umqtt.simple is not
installable on CPython: see that module).
"""

from __future__ import annotations

import random
import signal
import socket
import statistics
import sys
import threading
import time
import types
import uuid
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import pytest

from cloud.orrery.sim.paho_link import PahoLink
from firmware.backoff import Backoff
from firmware.link import UmqttLink
from tests.support import umqtt_standin
from tests.support.broker import free_port

KINDS = ("paho", "umqtt")


@pytest.fixture(scope="module", autouse=True)
def umqtt_module():
    """``umqtt.simple`` for UmqttLink.connect(): the stand-in, only while this module runs."""
    saved = {k: sys.modules.get(k) for k in ("umqtt", "umqtt.simple")}
    pkg = types.ModuleType("umqtt")
    pkg.simple = umqtt_standin
    sys.modules["umqtt"] = pkg
    sys.modules["umqtt.simple"] = umqtt_standin
    yield
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


def make(kind, port, timeout_ms=1000, client_id=None, **kw):
    cls = PahoLink if kind == "paho" else UmqttLink
    return cls(
        client_id or f"t-{kind}-{uuid.uuid4().hex[:10]}",
        "127.0.0.1",
        port,
        timeout_ms=timeout_ms,
        **kw,
    )


def topic(name):
    return f"orrery/test/{uuid.uuid4().hex[:10]}/{name}"


class Sub:
    """A cloud-side paho client that records what it receives on one topic."""

    def __init__(self, port, t, qos=1):
        self.msgs: list[mqtt.MQTTMessage] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex}")
        subscribed = threading.Event()
        self.c.on_message = lambda c, u, m: self.msgs.append(m)
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe(t, qos)
        assert subscribed.wait(3), "test subscriber got no SUBACK"

    def wait(self, n, timeout=3.0):
        wait_until(lambda: len(self.msgs) >= n, timeout)
        return self.msgs

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def wait_until(cond, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def cloud_publish(port, t, payloads):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cloud-{uuid.uuid4().hex}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    for p in payloads:
        c.publish(t, p, qos=1).wait_for_publish(3)
    c.disconnect()
    c.loop_stop()


def timed(fn, *args):
    t0 = time.monotonic()
    r = fn(*args)
    return r, time.monotonic() - t0


@contextmanager
def silent_server(script=b"", connack=False):
    """A TCP listener that accepts and then never answers (a black-holed broker); with
    ``connack`` it answers CONNECT with a CONNACK, sends ``script`` and then goes silent."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def serve():
        srv.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conns.append(conn)
            if connack:
                conn.recv(1024)
                conn.sendall(b"\x20\x02\x00\x00" + script)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        th.join()
        for c in conns:
            c.close()
        srv.close()


@pytest.fixture
def saving_broker():
    """A Mosquitto of this test's own whose persistence really works.

    Started as root, Mosquitto drops to the ``mosquitto`` user, which cannot write into
    tests/support/broker.py's root-owned 0700 directory: no mosquitto.db (and no log) is saved,
    silently. ``user root`` keeps it root; the line is ignored when not started as root.
    """
    from tests.support.broker import Broker

    b = Broker(extra_conf="user root").start()
    yield b
    b.close()


@contextmanager
def frozen(broker):
    """SIGSTOP the broker: connections stay open, nothing is ever answered."""
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        broker.proc.send_signal(signal.SIGCONT)


# --- publish, will, persistent session -------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_qos1_publish_true_after_puback_and_delivered(broker, kind):
    t = topic("up/readings")
    sub = Sub(broker.port, t)
    link = make(kind, broker.port)
    try:
        assert link.connect(), link.last_error
        assert link.connected and link.last_error is None
        assert link.publish(t, b"\x00\x01batch", qos=1) is True
        assert link.publish(t, "text", qos=0) is True
        assert link.publish(t, b"x" * 4634, qos=1, retain=False) is True  # a full readings batch
        msgs = sub.wait(3)
        assert [m.payload for m in msgs] == [b"\x00\x01batch", b"text", b"x" * 4634]
        assert msgs[0].qos == 1 and msgs[1].qos == 0
        with pytest.raises(ValueError):
            link.publish(t, b"", qos=2)
    finally:
        link.disconnect()
        sub.close()
    assert not link.connected
    assert link.publish(t, b"late") is False


@pytest.mark.parametrize("kind", KINDS)
def test_will_published_retained_when_link_dies(broker, kind):
    t = topic("up/state")
    link = make(kind, broker.port, will=(t, b'{"v":1,"online":false}', True, 1))
    assert link.connect(), link.last_error
    link.close()  # no DISCONNECT: to the broker the board died
    sub = Sub(broker.port, t)  # subscribes afterwards: only a retained will can arrive
    try:
        msgs = sub.wait(1)
        assert [m.payload for m in msgs] == [b'{"v":1,"online":false}']
        assert msgs[0].retain
    finally:
        sub.close()


@pytest.mark.parametrize("kind", KINDS)
def test_disconnect_discards_will(broker, kind):
    t = topic("up/state")
    sub = Sub(broker.port, t)
    link = make(kind, broker.port, will=(t, b"offline", False, 1))
    try:
        assert link.connect(), link.last_error
        link.disconnect()
        time.sleep(0.3)
        assert sub.msgs == []
    finally:
        sub.close()


@pytest.mark.parametrize("kind", KINDS)
def test_commands_sent_while_offline_arrive_after_reconnect(broker, kind):
    cmd = topic("down/cmd")
    got = []
    link = make(kind, broker.port)
    link.on_message = lambda t, p: got.append((t, p))
    assert link.connect(), link.last_error
    assert link.subscribe(cmd, 1) is True
    link.close()
    cloud_publish(broker.port, cmd, [b"cmd-1", b"cmd-2", b"cmd-3"])
    try:
        assert link.connect(), link.last_error
        assert link.session_present
        assert wait_until(lambda: link.poll() or len(got) >= 3, 3)
        assert got == [(cmd, b"cmd-1"), (cmd, b"cmd-2"), (cmd, b"cmd-3")]
        assert all(type(t) is str and type(p) is bytes for t, p in got)
        # messages that arrive while connected, too
        cloud_publish(broker.port, cmd, [b"cmd-4"])
        assert wait_until(lambda: link.poll() or len(got) >= 4, 3)
        assert got[-1] == (cmd, b"cmd-4")
    finally:
        link.disconnect()


@pytest.mark.parametrize("kind", KINDS)
def test_commands_beyond_the_budget_while_publishing_cost_no_drop_nor_a_message(
    broker, kind, tmp_path
):
    # The node has room for about one command; four arrive at once and the board publishes a
    # reading while the rest wait: one of them then stands in front of the PUBACK. The link
    # keeps the connection, hands over each command once, in order, as room frees, and the
    # broker has none left to send again after a reconnect.
    cmd = topic("down/cmd")
    up = topic("up/readings")
    sub = Sub(broker.port, up)
    held = [0]
    got = []

    def take(t, p):
        got.append(p)
        held[0] += len(p)

    link = make(kind, broker.port, client_id=f"t-{kind}-{uuid.uuid4().hex[:10]}")
    link.budget = 100
    link.held = lambda: held[0]
    link.spool = str(tmp_path / "inbox.spool")
    link.on_message = take
    sent = [bytes([65 + i]) * 60 for i in range(4)]
    try:
        assert link.connect() and link.subscribe(cmd, 1), link.last_error
        cloud_publish(broker.port, cmd, sent)
        assert wait_until(lambda: link.poll() or got, 3)
        time.sleep(0.2)  # the other three are in the socket by now
        link.poll()
        assert got == sent[:1]
        assert link.publish(up, b"reading", qos=1) is True, link.last_error
        assert link.connected and sub.wait(1)[0].payload == b"reading"
        while len(got) < 4:
            n = len(got)
            held[0] = 0  # the node handled what it held
            assert wait_until(lambda n=n: link.poll() or len(got) > n, 3), got
        assert got == sent and link.connected
        # a round trip: the broker handles a connection's packets in order, so once this
        # PUBACK is back it has every PUBACK sent before (a power cut may lose one still on
        # its way, and then QoS 1 rightly sends that message again: not what this test is about)
        assert link.publish(up, b"sync", qos=1) is True, link.last_error
        link.close()  # no DISCONNECT; the session stays
        assert link.connect() and link.session_present, link.last_error
        held[0] = 0
        time.sleep(0.3)
        link.poll()
        assert got == sent, "a message acknowledged was sent again"
    finally:
        link.disconnect()
        sub.close()


@pytest.mark.parametrize("kind", KINDS)
def test_lost_session_subscribes_again(kind):
    from tests.support.broker import Broker

    b = Broker(persistence=False).start()  # a restart forgets every session
    cmd = topic("down/cmd")
    got = []
    link = make(kind, b.port)
    link.on_message = lambda t, p: got.append(p)
    try:
        assert link.connect() and link.subscribe(cmd)
        b.restart()
        assert wait_until(lambda: link.connect(), 3), link.last_error
        assert not link.session_present
        cloud_publish(b.port, cmd, [b"after"])
        assert wait_until(lambda: link.poll() or got, 3)
        assert got == [b"after"]
    finally:
        link.close()
        b.close()


@pytest.mark.parametrize("kind", KINDS)
def test_poll_does_not_wait(broker, kind):
    link = make(kind, broker.port, timeout_ms=2000)
    try:
        assert link.connect(), link.last_error
        _, took = timed(link.poll)
        assert took < 0.1
    finally:
        link.disconnect()


# --- broker restart, down, black-holed, frozen ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_broker_restart_publish_false_then_backoff_reconnects(saving_broker, kind):
    own_broker = saving_broker
    t = topic("up/readings")
    link = make(kind, own_broker.port)
    rng = random.Random(5)
    backoff = Backoff(base_ms=20, cap_ms=200, rand=lambda: rng.getrandbits(30))
    assert link.connect(), link.last_error
    assert link.subscribe(topic("down/cmd"))
    assert link.publish(t, b"before")
    own_broker.stop()
    ok, took = timed(link.publish, t, b"while down")
    assert ok is False and took < 2.0
    assert not link.connected and link.last_error
    failures = 0
    for _ in range(3):  # still down: each attempt fails fast
        ok, took = timed(link.connect)
        assert ok is False and took < 2.0
        failures += 1
        time.sleep(backoff.next_delay_ms() / 1000)
    own_broker.start()
    deadline = time.monotonic() + 5
    while not link.connect():
        assert time.monotonic() < deadline, link.last_error
        time.sleep(backoff.next_delay_ms() / 1000)
    backoff.reset()
    assert failures == 3 and link.connected
    assert link.session_present  # Mosquitto saved the session on its graceful stop
    try:
        assert link.publish(t, b"after") is True
    finally:
        link.disconnect()


@pytest.mark.parametrize("kind", KINDS)
def test_connect_to_down_broker_false_and_bounded(kind):
    link = make(kind, free_port(), timeout_ms=1000)
    ok, took = timed(link.connect)
    assert ok is False and took < 2.0
    assert link.last_error and not link.connected
    ok, took = timed(link.publish, "orrery/f/d/up/readings", b"x")
    assert ok is False and took < 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_connect_refused_by_broker_false(kind):
    from tests.support.broker import Broker

    b = Broker(extra_conf="allow_anonymous false").start()
    try:
        link = make(kind, b.port)
        ok, took = timed(link.connect)
        assert ok is False and took < 2.0
        assert not link.connected
        assert link.last_error in ("refused Not authorized", "MQTTException 5"), link.last_error
    finally:
        b.close()


@pytest.mark.parametrize("kind", KINDS)
def test_connect_to_black_holed_broker_false_within_timeout(kind):
    with silent_server() as port:
        link = make(kind, port, timeout_ms=1000)
        ok, took = timed(link.connect)
        assert ok is False
        assert 0.9 < took < 2.0, took
        assert link.last_error and not link.connected
        ok, took = timed(link.publish, "orrery/f/d/up/readings", b"x")
        assert ok is False and took < 0.1
        assert link.subscribe("orrery/f/d/down/cmd") is False
        link.close()


@pytest.mark.parametrize("kind", KINDS)
def test_publish_to_frozen_broker_false_within_timeout(own_broker, kind):
    t = topic("up/readings")
    link = make(kind, own_broker.port, timeout_ms=1000)
    assert link.connect(), link.last_error
    with frozen(own_broker):
        ok, took = timed(link.publish, t, b"x" * 1000)
        assert ok is False
        assert 0.9 < took < 2.0, took
        assert not link.connected and link.last_error
        ok, took = timed(link.connect)  # TCP accepted by the kernel, no CONNACK
        assert ok is False and took < 2.0
    assert link.connect(), link.last_error
    link.disconnect()


@pytest.mark.parametrize("kind", KINDS)
def test_poll_notices_a_dead_link_through_keepalive(own_broker, kind):
    link = make(kind, own_broker.port, timeout_ms=1000, keepalive=1)
    assert link.connect(), link.last_error
    with frozen(own_broker):
        t0 = time.monotonic()
        assert wait_until(lambda: link.poll() or not link.connected, 5)
        assert time.monotonic() - t0 < 5
    link.close()


def test_umqtt_link_drops_a_stalled_packet():
    # A PUBLISH that starts and never finishes: umqtt's own wait_msg() would block forever.
    with silent_server(script=b"\x32\x20\x00", connack=True) as port:
        link = make("umqtt", port, timeout_ms=500)
        assert link.connect(), link.last_error
        time.sleep(0.1)
        _, took = timed(link.poll)
        assert took < 1.5
        assert not link.connected and link.last_error


def test_umqtt_link_refuses_oversized_packet():
    # remaining length 100000 announced: dropped before reading (or allocating) the body
    with silent_server(script=b"\x30\xa0\x8d\x06", connack=True) as port:
        link = make("umqtt", port, timeout_ms=500)
        assert link.connect(), link.last_error
        assert wait_until(lambda: link.poll() or not link.connected, 2)
        assert link.last_error == "OSError packet too big"


def test_umqtt_link_needs_umqtt_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "umqtt.simple", None)
    with pytest.raises(ImportError):
        UmqttLink("x", "127.0.0.1", free_port()).connect()


# --- backoff distribution (CPython; bounds, cap and reset also run on MicroPython) -------


def test_backoff_full_jitter_distribution():
    rng = random.Random(1234)
    samples: dict[int, list[int]] = {}
    for _ in range(2000):
        b = Backoff(base_ms=100, cap_ms=3200, rand=lambda: rng.getrandbits(30))
        for attempt in range(8):
            samples.setdefault(attempt, []).append(b.next_delay_ms())
    for attempt, ds in samples.items():
        ceiling = min(3200, 100 * 2**attempt)
        assert 0 <= min(ds) and max(ds) <= ceiling
        # uniform on [0, ceiling]: mean ceiling/2, quartiles at ceiling/4 and 3*ceiling/4
        assert abs(statistics.fmean(ds) - ceiling / 2) < 0.05 * ceiling
        q1, _, q3 = statistics.quantiles(ds, n=4)
        assert abs(q1 - ceiling / 4) < 0.05 * ceiling and abs(q3 - 3 * ceiling / 4) < 0.05 * ceiling
    means = [statistics.fmean(samples[a]) for a in range(6)]
    assert means == sorted(means)  # grows until the cap
