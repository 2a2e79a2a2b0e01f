"""``orrery devices …`` and ``orrery readings …`` on a real SQLite database."""

from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from cloud.orrery.cli import app
from cloud.orrery.clock import iso
from cloud.orrery.db.engine import engine_for
from cloud.orrery.ingest.handler import Ingest, Message
from shared.wire import codec

ANCHOR = (100, 0, 1_790_000_000, 0)
runner = CliRunner()


def run(*args: str, ok: bool = True):
    r = runner.invoke(app, list(args))
    if ok:
        assert r.exit_code == 0, r.output
    return r


@pytest.fixture
def dbfile(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    run(
        "devices", "add", "dev1", "dev2", "--fleet", "f1", "--profile", "esp32-devkitc", "--db", url
    )
    engine = engine_for(url)
    ing = Ingest(engine, reorder_window_ms=0)
    t = "orrery/f1/dev1/up/"
    recs = [(100 + i, 0, i * 10, 0) for i in range(5)]
    ing.handle(
        [
            Message(
                t + "state",
                codec.encode_state(True, "1.2.0", "greenhouse", 2, "h:1", 7, 3, True, ANCHOR, 12),
            ),
            Message(t + "readings", codec.encode_batch(7, 1, recs, codec.SYNCED, ANCHOR)),
            Message(t + "readings", codec.encode_batch(7, 1, recs, codec.SYNCED, ANCHOR)),
            Message(
                t + "readings",
                codec.encode_batch(
                    7, 8, [(107, 0, 5, 0), (108, 0, 6, 0)], codec.SYNCED | codec.HISTORICAL, ANCHOR
                ),
            ),
            Message(t + "loss", codec.encode_loss(7, 6, 6, "store_full")),
            Message("orrery/f1/ghost/up/readings", codec.encode_batch(1, 1, recs)),
        ],
        now=1_790_000_200_000,
    )
    ing.reconcile(now=1_790_000_200_001)
    engine.dispose()
    return url


def test_devices_add_validates_ids(tmp_path):
    r = run("devices", "add", "bad id!", "--db", f"sqlite:///{tmp_path / 'x.db'}", ok=False)
    assert r.exit_code == 1 and "'bad id!' is not a valid id" in r.output


def test_devices_list_and_show(dbfile):
    rows = json.loads(run("devices", "list", "--db", dbfile, "--json").stdout)
    assert [r["device"] for r in rows] == ["dev1", "dev2"]
    d1 = rows[0]
    assert (d1["online"], d1["fw"], d1["workflow"], d1["backlog"], d1["received"], d1["duplicates"]) == (
        True, "1.2.0", "greenhouse@2", 3, 7, 5)  # fmt: skip
    assert rows[1]["online"] is False and rows[1]["last_seen"] is None
    human = run("devices", "list", "--db", dbfile).stdout
    assert "dev1" in human and "2 device(s), 1 online" in human
    show = json.loads(run("devices", "show", "dev1", "--db", dbfile, "--json").stdout)
    assert show["sessions"][0]["boot"] == 7
    assert show["sessions"][0]["anchor"]["unix"] == iso(1_790_000_000_000)
    r = run("devices", "show", "nope", "--db", dbfile, ok=False)
    assert r.exit_code == 1 and "unknown device 'nope'" in r.output


def test_readings_export_csv_and_jsonl(dbfile, tmp_path):
    out = run("readings", "export", "dev1", "--db", dbfile).stdout
    table = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["seq"]) for r in table] == [1, 2, 3, 4, 5, 8, 9]
    assert table[0]["event_time"] == iso(1_790_000_000_000)  # uptime 100 s = the anchor
    assert table[-1]["historical"] == "True"
    lines = run("readings", "export", "dev1", "--db", dbfile, "--format", "jsonl",
                "--since", iso(1_790_000_002_000)[:-1], "--until", "1790000004").stdout.splitlines()  # fmt: skip
    assert [json.loads(x)["seq"] for x in lines] == [3, 4]
    f = tmp_path / "o.csv"
    run("readings", "export", "dev1", "--db", dbfile, "-o", str(f))
    assert f.read_text().count("\n") == 8
    r = run("readings", "export", "dev1", "--db", dbfile, "--format", "xml", ok=False)
    assert "--format 'xml'" in r.output
    r = run("readings", "export", "dev1", "--db", dbfile, "--since", "yesterday", ok=False)
    assert "--since: 'yesterday'" in r.output


def test_readings_gaps_and_stats(dbfile):
    gaps = json.loads(run("readings", "gaps", "--db", dbfile, "--json").stdout)
    assert [(g["kind"], g["first"], g["last"], g["reason"]) for g in gaps] == [
        ("gap", 7, 7, "missing: no fleet secret to sign a resend"),
        ("lost", 6, 6, "store_full"),
    ]
    stats = json.loads(run("readings", "stats", "--db", dbfile, "--json").stdout)
    assert stats["totals"] == {
        "received": 7,
        "duplicates": 5,
        "historical": 2,
        "pending_gap": 1,
        "permanent_loss": 1,
        "conflicts": 0,
        "bad_time": 0,
        "gap_anomalies": 0,
    }
    assert stats["dead_letters"] == {"unknown device": 1}
    human = run("readings", "stats", "--db", dbfile).stdout
    assert "unknown device" in human and "total" in human


def test_bad_database_url_is_a_clear_error():
    r = run("devices", "list", "--db", "mysql://x/y", ok=False)
    assert r.exit_code == 1 and "database" in r.output


def test_devices_add_counts_new_and_known_devices(db_url):
    # on PostgreSQL it printed "registered -1 new device(s)" (a batch's rowcount is -1 there)
    r = run("devices", "add", "a", "b", "--db", db_url)
    assert r.stdout.strip() == "registered 2 new device(s); 0 already known"
    r = run("devices", "add", "a", "c", "c", "--db", db_url)
    assert r.stdout.strip() == "registered 1 new device(s); 1 already known"
