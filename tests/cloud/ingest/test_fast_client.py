"""``service.FastClient``'s way in for plain PUBLISH packets gives the same messages as paho's
own decoding, whatever the flags, topic and payload sizes, with or without MQTT v5 properties,
and however the bytes are split across reads (a real socket pair carries them)."""

from __future__ import annotations

import random
import socket

import paho.mqtt.client as mqtt
from paho.mqtt import _packet
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.orrery.db.engine import engine_for
from cloud.orrery.ingest.service import FastClient, _ReadBuffer


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (128 if n else 0))
        if not n:
            return bytes(out)


def _publish(rnd: random.Random, mid: int) -> tuple[bytes, bool]:
    """A PUBLISH packet (QoS 0 or 1, random dup/retain, topic, payload, maybe properties) and
    whether it carries properties."""
    qos = rnd.choice((0, 1))
    header = 0x30 | (qos << 1) | rnd.choice((0, 8)) | rnd.choice((0, 1))
    topic = "orrery/f/" + "d" * rnd.randint(0, 300) + "/up/readings"
    body = len(topic).to_bytes(2, "big") + topic.encode()
    if qos:
        body += mid.to_bytes(2, "big")
    with_props = rnd.random() < 0.2
    if with_props:
        p = Properties(PacketTypes.PUBLISH)
        p.MessageExpiryInterval = rnd.randint(1, 1000)
        body += p.pack()
    else:
        body += b"\x00"
    body += rnd.randbytes(rnd.choice((0, 1, 26 * 9, 20000)))
    return bytes([header]) + _length(len(body)) + body, with_props


def _client(sock: socket.socket, got: list) -> FastClient:
    c = FastClient(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id="t",
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )
    c.sink = got.append
    c.on_message = lambda client, userdata, m: got.append(m)  # paho's path (properties)
    sock.setblocking(False)
    c._sock = _ReadBuffer(sock)
    return c


def _fields(m: mqtt.MQTTMessage) -> tuple:
    return (m.mid, m.topic, m.qos, m.dup, m.retain, bytes(m.payload))


def test_the_fast_path_decodes_as_paho_does():
    rnd = random.Random(7)
    packets = [_publish(rnd, mid) for mid in range(1, 400)]
    stream = b"".join(p for p, _ in packets)
    want = []
    for p, _ in packets:
        n = 1
        while p[n] & 128:
            n += 1
        want.append(_fields_of(_packet.decode_publish(p[0], p[n + 1 :], mqtt.MQTTv5)))
    a, b = socket.socketpair()
    got: list = []
    c = _client(b, got)
    try:
        pos = 0
        while pos < len(stream) or len(got) < len(packets):
            if pos < len(stream):
                k = rnd.choice((1, 7, 1000, 70000))  # packets split anywhere, or many in a read
                a.sendall(stream[pos : pos + k])
                pos += k
            assert c.loop_read() == mqtt.MQTT_ERR_SUCCESS
        assert [_fields(m) for m in got] == want
        # those with properties took paho's path, most plain ones the fast path (no Properties
        # object; one split across reads takes paho's)
        fast = [m.properties is None for m in got]
        assert not any(f for f, (_, props) in zip(fast, packets, strict=True) if props)
        assert sum(fast) > sum(not props for _, props in packets) / 2
    finally:
        a.close()
        b.close()


def _fields_of(p) -> tuple:
    return (p.mid, p.topic.decode(), p.qos, p.dup, p.retain, bytes(p.payload))


def test_acks_of_many_messages_go_out_as_one_packet_write():
    a, b = socket.socketpair()
    c = _client(b, [])
    try:
        c.ack_many([1, 2, 65535])
        assert c._packet_write() == mqtt.MQTT_ERR_SUCCESS
        assert a.recv(100) == b"\x40\x02\x00\x01\x40\x02\x00\x02\x40\x02\xff\xff"
    finally:
        a.close()
        b.close()


def test_a_group_counts_the_readings_of_batches_and_any_other_message_as_one():
    """A group (``Service._collect``) holds at most ``max_rows`` readings (a batch's payload
    counted at 9 bytes a reading), and other messages one each: the commands serve receives
    between a wave's acks (11 KB each) no longer cut a group every few dozen messages."""
    from cloud.orrery.ingest.handler import Ingest
    from cloud.orrery.ingest.service import BrokerAddress, Service

    svc = Service(Ingest(engine_for("sqlite://")), BrokerAddress(), client_id="t", max_rows=1000)

    def msg(kind: str, size: int) -> mqtt.MQTTMessage:
        m = mqtt.MQTTMessage(1, f"orrery/f/d1/{kind}".encode())
        m.payload = b"x" * size
        return m

    for _ in range(600):  # a command of 11 KB, then its ack
        svc.inbox.put(msg("down/cmd", 11_000))
        svc.inbox.put(msg("up/acks", 40))
    assert len(svc._collect(drain_only=True)) == 1000
    assert len(svc._collect(drain_only=True)) == 200
    for _ in range(5):
        svc.inbox.put(msg("up/readings", 9 * 300))
    assert len(svc._collect(drain_only=True)) == 4  # 1,200 readings: the fourth batch ends it
    assert len(svc._collect(drain_only=True)) == 1
