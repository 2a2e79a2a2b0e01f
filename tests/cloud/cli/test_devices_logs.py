"""A board's log lines (``up/log``) in the companion, on SQLite and PostgreSQL: stored once each
by the real ingest (a redelivery adds nothing), timed by the boot's anchor, worded with the
workflow's state names; ``orrery devices logs`` (``--since``, ``--limit``, ``--json``,
``--follow`` in a real subprocess until it is interrupted) and the lines in ``devices timeline``;
and migration 0010 up and down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cloud.orrery.cli import app
from cloud.orrery.clock import iso, now_ms
from cloud.orrery.db.engine import engine_for, upgrade
from cloud.orrery.db.tables import DEVICE_LOGS, DEVICES
from cloud.orrery.fleet import registry
from cloud.orrery.ingest.handler import Ingest, Message
from cloud.orrery.sim import workflows
from shared.wire import codec
from shared.workflow import compiler
from shared.workflow.program import Program

REPO = Path(__file__).resolve().parents[3]
V1 = compiler.compile(workflows.GREENHOUSE_V1.read_bytes())
runner = CliRunner()


def run(*args: str, ok: bool = True):
    r = runner.invoke(app, list(args))
    if ok:
        assert r.exit_code == 0, r.output
    return r


class Board:
    """dev1's side of the wire, stored by the real ingest at the virtual time ``now``."""

    def __init__(self, url: str, t0: int) -> None:
        self.engine = engine_for(url)
        self.now = t0
        self.ingest = Ingest(self.engine, reorder_window_ms=0, clock=lambda: self.now)

    def send(self, kind: str, payload: bytes, dead: int = 0) -> None:
        out = self.ingest.handle([Message(codec.topic("f1", "dev1", kind), payload)])
        assert out.dead == dead

    def log(self, boot: int, first: int, lines: list[tuple]) -> None:
        self.send(codec.LOG, codec.encode_log(boot, first, lines))


@pytest.fixture
def board(db_url):
    """dev1 running greenhouse@1, boot 7 anchored (uptime 100 s = T0), boot 8 without time."""
    t0 = (now_ms() // 1000 - 600) * 1000  # ten minutes ago
    run("devices", "add", "dev1", "dev2", "--fleet", "f1", "--db", db_url)
    b = Board(db_url, t0)
    with b.engine.begin() as c:
        registry.push(c, workflows.GREENHOUSE_V1.read_bytes(), None, 0)
    anchor = (100, 0, t0 // 1000, 0)
    b.send(codec.STATE, codec.encode_state(True, "1.2.0", "greenhouse", 1, V1.hash, 7, 0, True,
                                           anchor, None))  # fmt: skip
    b.now = t0 + 20_000
    cool = Program(V1.blob).state_names.index("cool")
    lines = [
        (101, 0, codec.LOG_LINK_UP, 3, 0),
        (105, 500, codec.LOG_STATE, cool, 1),
        (107, 0, codec.LOG_REFUSED, codec.EXPIRED, 0),
        (110, 0, codec.LOG_LOSS, 0, 12),
    ]
    b.log(7, 4, lines)
    b.log(7, 4, lines)  # QoS 1 redelivers: stored once
    b.log(7, 6, lines[2:] + [(111, 0, codec.LOG_FAILED, codec.FAILED, 0)])  # overlaps 6..7
    b.send(codec.LOG, b"OR\x01\x00", dead=1)
    b.now = t0 + 30_000
    b.send(codec.STATE, codec.encode_state(True, "1.2.0", "greenhouse", 1, V1.hash, 8, 0, False,
                                           None, None))  # fmt: skip
    b.log(8, 0, [(0, 10, codec.LOG_BOOT, 0, 0), (2, 0, codec.LOG_LINK_DOWN, 0, 0), (3, 0, 99, 1, 2)])
    b.engine.dispose()
    return db_url, t0


def test_lines_are_stored_once_timed_and_worded(board):
    url, t0 = board
    engine = engine_for(url)
    with engine.connect() as c:
        rows = c.execute(
            sa.select(DEVICE_LOGS).order_by(DEVICE_LOGS.c.boot, DEVICE_LOGS.c.seq)
        ).all()
    engine.dispose()
    assert [(r.boot, r.seq) for r in rows] == [(7, 4), (7, 5), (7, 6), (7, 7), (7, 8), (8, 0),
                                               (8, 1), (8, 2)]  # fmt: skip
    boot7 = [r for r in rows if r.boot == 7]
    assert [r.event_ms - t0 for r in boot7] == [1_000, 5_500, 7_000, 10_000, 11_000]
    assert {r.received_ms - t0 for r in boot7} == {20_000}
    assert [r.text for r in boot7] == [
        "link up (3 failed connects this boot)",
        "state -> cool",
        "command refused: EXPIRED",
        "store lost 12 reading(s): store_full",
        "command failed (acked FAILED)",
    ]
    assert [r.level for r in rows] == ["info", "info", "warning", "warning", "error", "info",
                                       "warning", "warning"]  # fmt: skip
    boot8 = [r for r in rows if r.boot == 8]
    assert [r.event_ms for r in boot8] == [None] * 3  # boot 8 has no time anchor
    assert boot8[2].text == "code 99 (1, 2)"  # a code this companion does not know is kept


def test_devices_logs_prints_them_oldest_first(board):
    url, t0 = board
    out = run("devices", "logs", "dev1", "--db", url).stdout
    assert "state -> cool" in out and "8 line(s)" in out
    assert out.index("link up") < out.index("state -> cool") < out.index("link down")
    got = json.loads(run("devices", "logs", "dev1", "--db", url, "--json").stdout)
    assert [x["text"] for x in got][:2] == ["link up (3 failed connects this boot)",
                                           "state -> cool"]  # fmt: skip
    assert got[1]["at"] == iso(t0 + 5_500) and got[1]["time_source"] == "event"
    assert got[1]["code"] == "state" and got[-1]["time_source"] == "received"
    newest = json.loads(run("devices", "logs", "dev1", "--db", url, "--json", "--limit", "2").stdout)
    assert [(x["boot"], x["seq"]) for x in newest] == [(8, 1), (8, 2)]
    since = run("devices", "logs", "dev1", "--db", url, "--json", "--since", iso(t0 + 9_000))
    assert [x["seq"] for x in json.loads(since.stdout)] == [7, 8, 0, 1, 2]


def test_devices_logs_refuses_bad_input_in_one_line(board):
    url, _ = board
    for args, want in (
        (["nosuch"], "unknown device 'nosuch'"),
        (["dev1", "--since", "yesterday"], "--since: 'yesterday'"),
        (["dev1", "--limit", "0"], "--limit: 0 must be at least 1"),
        (["dev1", "--follow", "--interval", "0"], "--interval: 0.0 must be more than 0"),
    ):
        r = run("devices", "logs", *args, "--db", url, ok=False)
        assert r.exit_code != 0 and want in r.output, r.output
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_the_timeline_shows_the_lines(board):
    url, t0 = board
    entries = json.loads(run("devices", "timeline", "dev1", "--db", url, "--json").stdout)
    mine = [e for e in entries if e["kind"] == "log"]
    assert len(mine) == 8
    assert mine[1]["summary"] == "info: state -> cool" and mine[1]["at_ms"] == t0 + 5_500
    assert mine[1]["time_source"] == "event" and mine[-1]["time_source"] == "received"
    assert [e["at_ms"] for e in entries] == sorted(e["at_ms"] for e in entries)


def test_follow_prints_new_lines_until_interrupted(board):
    url, t0 = board
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_COLOR="1", COLUMNS="200")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud.orrery.cli", "devices", "logs", "dev1", "--follow",
         "--json", "--limit", "1", "--interval", "0.1", "--db", url],  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        first = json.loads(proc.stdout.readline())
        assert (first["boot"], first["seq"]) == (8, 2)  # the newest, then what comes
        b = Board(url, now_ms())
        b.log(8, 2, [(3, 0, 99, 1, 2), (4, 0, codec.LOG_FAULT, 0, 0)])  # 8.2 again, and 8.3
        new = json.loads(proc.stdout.readline())
        assert (new["boot"], new["seq"], new["level"]) == (8, 3, "error")
        assert new["text"].startswith("workflow fault")
        b.engine.dispose()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and out == ""  # nothing more: 8.2 was not printed twice


def test_migration_0010_up_and_down(db_url):
    engine = engine_for(db_url, migrate=False)
    upgrade(engine, "0009")
    assert "device_logs" not in sa.inspect(engine).get_table_names()
    upgrade(engine)
    with engine.begin() as c:
        c.execute(sa.insert(DEVICES), [{"name": "dev1", "fleet": "f1", "created_ms": 0}])
        c.execute(sa.insert(DEVICE_LOGS), [{"device_id": 1, "boot": 7, "seq": 0, "up_ms": 0,
                  "level": "info", "code": 1, "a": 0, "b": 0, "text": "boot", "received_ms": 1}])  # fmt: skip
    from alembic import command

    from cloud.orrery.db.engine import alembic_config

    with engine.begin() as c:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = c
        command.downgrade(cfg, "0009")
    assert "device_logs" not in sa.inspect(engine).get_table_names()
    upgrade(engine)
    assert "device_logs" in sa.inspect(engine).get_table_names()
    engine.dispose()
