"""``orrery devices send`` and ``orrery commands list|show`` in-process on a real SQLite database:
what a send prints and records (who sent it: the OS user), and every bad input refused with one
``error:`` line naming what was wrong, a non-zero exit and no traceback, with nothing queued.
The commands' delivery to boards: tests/cloud/sim/test_device_commands_e2e.py."""

from __future__ import annotations

import getpass
import json

import pytest
from typer.testing import CliRunner

from cloud.orrery.cli import app
from cloud.orrery.sim import workflows

SECRET = "cli-commands-fleet-secret-0123456789"
runner = CliRunner()


def run(*args: str, code: int = 0):
    r = runner.invoke(app, list(args))
    assert r.exit_code == code, r.output
    return r


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("ORRERY_SECRET", SECRET)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    run("workflow", "push", str(workflows.GREENHOUSE_V1), "--db", url)
    run("devices", "add", "d00", "d01", "d02", "--fleet", "f1", "--db", url)
    for d in ("d00", "d01"):
        run("devices", "tag", d, "site=north", "--db", url)
    return url


def test_send_to_a_device_then_list_and_show(db):
    r = run("devices", "send", "d00", "reboot", "--db", db)
    out = " ".join(r.stdout.split())
    assert "queued reboot for 1 device(s) as op:" in out
    assert f"sent by {getpass.getuser()}" in out
    assert "1 of them offline (d00): delivered when they reconnect" in out
    (row,) = json.loads(run("commands", "list", "--json", "--db", db).stdout)
    assert (row["device"], row["kind"], row["state"], row["sent_by"], row["source"]) == (
        "d00", "reboot", "queued", getpass.getuser(), "operator",
    )  # fmt: skip
    shown = json.loads(run("commands", "show", row["id"], "--json", "--db", db).stdout)
    assert shown == row
    table = run("commands", "show", row["id"], "--db", db).stdout
    assert row["id"] in table and "operator" in table


def test_send_to_a_tag_as_json(db):
    r = run("devices", "send", "tag.site=north", "config", "log_level=debug",
            "health_window_s=300", "--rate", "6/min", "--json", "--db", db)  # fmt: skip
    sent = json.loads(r.stdout)
    assert sent["devices"] == ["d00", "d01"] and len(sent["ids"]) == 2
    assert sent["args"] == {"changes": {"log_level": "debug", "health_window_s": 300}}
    assert sent["first_due"] < sent["last_due"]  # 10 s apart at 6/min
    assert "queued set_config for 2 device(s)" in " ".join(r.stderr.split())
    listed = json.loads(run("commands", "list", "--device", "d01", "--json", "--db", db).stdout)
    assert [x["id"] for x in listed] == [sent["ids"][1]]
    assert json.loads(run("commands", "list", "--state", "done", "--json", "--db", db).stdout) == []


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["nope", "reboot"], "unknown device 'nope' (see `orrery devices list`)"),
        (["tag.site=south", "reboot"], "target 'tag.site=south' selects no device"),
        (["tag.site", "reboot"], "unknown device 'tag.site'"),
        (["d00", "restart"], "unknown command 'restart': use run, config, reboot, cancel"),
        (["d00", "run", "water"], "run 'water': the workflow of 1 of the 1 target device(s)"),
        (["d00", "config", "log_level:debug"], "config: 'log_level:debug' is not KEY=VALUE"),
        (["d00", "config", "loglevel=debug"], "config: loglevel: unknown key"),
        (["d00", "config", "health_window_s=ten"], "config: health_window_s: must be an int, got str"),
        (["d00", "reboot", "--rate", "fast"], "--rate: 'fast' is not a rate"),
        (["d00", "reboot", "--ttl", "soon"], "--ttl: 'soon' is not a duration"),
        (["d00", "reboot", "--ttl", "30s"], "--ttl: 30s is outside 60s..7d"),
    ],
)  # fmt: skip
def test_bad_send_is_one_line_and_queues_nothing(db, args, why):
    if args[1] == "run":  # the workflow of d00 is known once it reports it
        from cloud.orrery.db.engine import engine_for

        engine = engine_for(db)
        with engine.begin() as c:
            c.exec_driver_sql("UPDATE devices SET wf = 'greenhouse', wf_ver = 1")
        engine.dispose()
    r = run("devices", "send", *args, "--db", db, code=1)
    assert "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert why in lines[0], lines[0]
    assert json.loads(run("commands", "list", "--json", "--db", db).stdout) == []


def test_send_without_the_fleet_secret_is_refused(db, monkeypatch):
    monkeypatch.delenv("ORRERY_SECRET")
    monkeypatch.delenv("ORRERY_SECRET_FILE", raising=False)
    r = run("devices", "send", "d00", "reboot", "--db", db, code=1)
    assert r.stderr.startswith("error: no fleet secret"), r.stderr


def test_bad_list_and_show_are_one_line(db):
    for args, why in (
        (["list", "--state", "finished"], "--state 'finished': use one of queued, sent"),
        (["list", "--device", "nope"], "unknown device 'nope'"),
        (["show", "op:nope:1"], "no command 'op:nope:1' (see `orrery commands list`)"),
    ):
        r = run("commands", *args, "--db", db, code=1)
        assert r.stderr.count("\n") == 1 and why in r.stderr, r.stderr
