"""Board logs end to end: real firmware boards (``firmware.node``) log into their fixed rings and
publish ``up/log`` through a real Mosquitto to ``orrery serve`` (its own process), which stores
each line once, even when the broker delivers a message again; ``orrery devices logs`` reads
them back (tests/support/fleet.py drives the boards and the companion)."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
import pytest
from typer.testing import CliRunner

from cloud.orrery.cli import app
from shared.wire import codec
from tests.support.fleet import SECRET, Fleet

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture
def fleet(tmp_path, own_broker):
    f = Fleet(tmp_path, own_broker.port, f"sqlite:///{tmp_path / 'cloud.db'}", 3)
    yield f
    f.close()


def lines(f: Fleet, name: str) -> list[tuple]:
    return f.rows(
        "SELECT l.boot, l.seq, l.level, l.text, l.event_ms FROM device_logs l"
        " JOIN devices d ON d.id = l.device_id WHERE d.name = :n ORDER BY l.boot, l.seq",
        n=name,
    )


def texts(f: Fleet, name: str) -> list[str]:
    return [r[3] for r in lines(f, name)]


def test_boards_logs_reach_the_companion_once_each(fleet, tmp_path):
    f = fleet
    log = tmp_path / "serve.log"
    f.companion_process("c1", log)
    deadline = time.monotonic() + 30  # subscribed before the boards publish: the broker keeps
    while "broker_connected" not in (log.read_text() if log.exists() else ""):  # no message
        assert time.monotonic() < deadline, "orrery serve did not connect"  # for no one
        time.sleep(0.05)
    f.wait(lambda: f.rows("SELECT count(*) FROM devices WHERE online")[0][0] == 3)
    f.wait(lambda: all(len(lines(f, n)) >= 2 for n in f.boards))
    assert texts(f, "b00")[:2] == ["boot: the app started", "link up"]

    # a lost link: logged once, then its return with the failed connects
    f.go_away("b01")
    f.run(30_000)
    f.come_back("b01")
    f.wait(lambda: any(t.startswith("link up (") for t in texts(f, "b01")), seconds=60)
    assert texts(f, "b01").count("link down: a connect failed") == 1

    # an operator's command moves b00's workflow to manual: a state line, timed by the board
    r = runner.invoke(app, ["devices", "send", "b00", "run", "manual", "--db", f.db_url],
                      env={"ORRERY_SECRET": SECRET.decode()})  # fmt: skip
    assert r.exit_code == 0, r.output
    f.wait(lambda: "state -> manual" in texts(f, "b00"), seconds=60)
    row = next(x for x in lines(f, "b00") if x[3] == "state -> manual")
    assert row[2] == "info" and row[4] is not None

    # the broker delivers a board's message again: nothing is stored twice
    before = f.rows("SELECT count(*) FROM device_logs")[0][0]
    board = f.boards["b00"].node
    again = codec.encode_log(board.boot_id, 0, [(0, 0, codec.LOG_BOOT, 0, 0)])
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="redeliver")
    c.connect("127.0.0.1", f.port)
    c.loop_start()
    c.publish(board.topics[codec.LOG], again, qos=1).wait_for_publish(10)
    c.publish(board.topics[codec.LOG], b"OR\x01", qos=1).wait_for_publish(10)  # a bad one
    f.wait(lambda: f.rows("SELECT count(*) FROM dead_letters WHERE topic LIKE '%/up/log'")[0][0])
    c.loop_stop()
    c.disconnect()
    assert f.rows("SELECT count(*) FROM device_logs")[0][0] == before

    got = runner.invoke(app, ["devices", "logs", "b00", "--json", "--db", f.db_url])
    assert got.exit_code == 0, got.output
    shown = json.loads(got.stdout)
    assert [x["text"] for x in shown][:2] == ["boot: the app started", "link up"]
    assert "state -> manual" in [x["text"] for x in shown]
    assert [(x["boot"], x["seq"]) for x in shown] == [(r[0], r[1]) for r in lines(f, "b00")]
