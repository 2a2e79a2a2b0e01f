"""The companion and real firmware boards through a real Mosquitto.

Boards run the real firmware node (``firmware.node``) on the simulation HAL and a virtual
clock; the companion is the real ``orrery serve`` service (``cloud.orrery.ingest.service.Service``) on
SQLite. Nothing in between is simulated.
"""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES
from cloud.orrery.fleet import keys
from cloud.orrery.ingest.handler import Ingest
from cloud.orrery.ingest.service import BrokerAddress, Service
from shared.wire import codec
from tests.support.boards import T0, Board, Cloud, install_args, wait_for

SECRET = b"e2e-fleet-secret-0123456789abcdef"


@pytest.fixture
def companion(tmp_path, own_broker):
    engine = engine_for(f"sqlite:///{tmp_path / 'cloud.db'}")
    with engine.begin() as c:
        c.execute(
            sa.insert(DEVICES), [{"name": "dev1", "fleet": "f1", "created_ms": 0}]
        )
    started: list[Service] = []

    def start(clock) -> Service:
        ingest = Ingest(engine, secret=SECRET, reorder_window_ms=1000, clock=clock)
        svc = Service(ingest, BrokerAddress(port=own_broker.port), client_id="e2e-ingest",
                      reconcile_every_s=0.3)  # fmt: skip
        threading.Thread(target=svc.run, daemon=True).start()
        assert svc.connected.wait(10), "ingest did not connect"
        started.append(svc)
        return svc

    yield engine, start
    for svc in started:
        svc.stop()
    time.sleep(0.3)
    engine.dispose()


def rows(engine, sql: str):
    with engine.connect() as c:
        return c.execute(sa.text(sql)).all()


def test_readings_the_companion_missed_are_resent_by_the_board(tmp_path, own_broker, companion):
    engine, start = companion
    observer = Cloud(own_broker.port)  # sends the install and watches the wire
    board = Board(tmp_path, own_broker.port, key=keys.device_key(SECRET, "dev1").hex())
    try:
        board.run(1000)
        key = keys.device_key(SECRET, "dev1")
        now = board.now_s()
        install = codec.sign_command(
            key,
            "i1",
            "dev1",
            "install_workflow",
            install_args("greenhouse_v1.json"),
            now,
            now + 3600,
        )
        observer.send("dev1", install)
        wait_for(
            lambda: any(a["id"] == "i1" and a["code"] == codec.IN_PROGRESS for a in observer.acks()),
            board,
        )
        board.run(6_000)  # the health window
        wait_for(lambda: any(a["id"] == "i1" and a["code"] == codec.OK for a in observer.acks()), board)
        board.run(20_000)
        board.drain(observer)
        missed = board.node.store.last_seq
        assert missed > 10
        # only now does the companion subscribe: the broker delivered 1..missed to nobody else,
        # and the board has its PUBACKs, so only the board's flash still holds them
        svc = start(board.clock.unix_ms)  # the companion's clock agrees with the board's
        board.run(5_000)

        def reconciled() -> bool:
            last = board.node.store.last_seq
            got = rows(engine, "SELECT count(*), min(seq), max(seq) FROM readings")[0]
            return got == (last, 1, last) and not rows(engine, "SELECT 1 FROM gaps")

        wait_for(reconciled, board, seconds=60)
        last = board.node.store.last_seq
        assert sorted(s for (s,) in rows(engine, "SELECT seq FROM readings")) == list(
            range(1, last + 1)
        )
        cmds = rows(engine, "SELECT id, kind, status FROM commands")
        assert cmds == [(f"resend:1:1-{missed}:1", "resend", "done")]
        assert rows(engine, "SELECT count(*) FROM losses") == [(0,)]
        # the resent readings are backlog, and every reading has its event time from the anchor
        hist = rows(engine, f"SELECT count(*) FROM readings WHERE historical AND seq <= {missed}")[
            0
        ][0]
        assert hist == missed
        times = [t for (t,) in rows(engine, "SELECT event_ms FROM readings ORDER BY seq")]
        assert None not in times
        assert times == sorted(times)
        assert T0 <= times[0] and times[-1] <= board.clock.unix_ms()
        dev = rows(engine, "SELECT online, fw, wf, received FROM devices")[0]
        assert dev[0] is True or dev[0] == 1
        assert dev[2] == "greenhouse" and dev[3] == last
        assert board.resets == 0
        assert svc.stored > 0
    finally:
        board.close()
        observer.close()
