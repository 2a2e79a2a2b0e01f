"""The test broker is a real Mosquitto that can be restarted and killed."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def _roundtrip(port: int, topic: str) -> bytes:
    got: list[bytes] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{topic}")
    c.on_message = lambda cl, ud, msg: (got.append(msg.payload), done.set())
    c.connect("127.0.0.1", port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    try:
        c.publish(topic, b"ping", qos=1).wait_for_publish(5)
        assert done.wait(5), "no message came back through the broker"
    finally:
        c.loop_stop()
        c.disconnect()
    return got[0]


def test_broker_round_trip(broker) -> None:
    assert _roundtrip(broker.port, "orrery/test/a") == b"ping"


def test_broker_restart_and_kill(own_broker) -> None:
    own_broker.restart()
    assert _roundtrip(own_broker.port, "orrery/test/b") == b"ping"
    own_broker.kill()
    assert own_broker.proc is None
    own_broker.start()
    assert _roundtrip(own_broker.port, "orrery/test/c") == b"ping"
