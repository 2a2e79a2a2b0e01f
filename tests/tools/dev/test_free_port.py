"""The test brokers' ports: a broker restarted on its own port must find it free again."""

import socket

from tools.dev.mosquitto import Broker, ephemeral_ports, free_port


def test_free_ports_are_outside_the_ephemeral_range():
    # an outgoing connection anywhere on the machine may take a free ephemeral port while a
    # broker is stopped for a restart; then the restart fails with "Address already in use"
    lo, hi = ephemeral_ports()
    ports = {free_port() for _ in range(50)}
    assert all(not lo <= p <= hi for p in ports), sorted(ports)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))


def test_a_broker_restarts_on_its_port():
    b = Broker().start()
    try:
        port = b.port
        b.restart()
        assert b.port == port
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        b.close()
