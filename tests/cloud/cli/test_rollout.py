"""``orrery rollout …`` and ``orrery devices tag`` with typer's CliRunner on a real SQLite file.

What boards would do (acks, states) goes through the real ingest in the board's wire format;
what ``orrery serve`` would do (drive the rollouts) is an Orchestrator ``tick``.
"""

from __future__ import annotations

import getpass
import json

import pytest

from cloud.orrery.db.engine import engine_for
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.ingest.handler import Ingest, Message
from cloud.orrery.sim import workflows
from shared.wire import codec
from shared.workflow import compiler
from tests.support.cli import flat, run

WF = workflows.DIR
V1 = compiler.compile((WF / "greenhouse_v1.json").read_bytes())
V2 = compiler.compile((WF / "greenhouse.json").read_bytes())
SECRET = "cli-test-fleet-secret-0123456789"
NAMES = [f"d{i:02d}" for i in range(10)]


def state(name: str, ver: int | None, online: bool = True) -> Message:
    t = codec.topic("f1", name, codec.STATE)
    if not online:
        return Message(t, codec.encode_will(1))
    wf = {1: ("greenhouse", 1, V1.hash), 2: ("greenhouse", 2, V2.hash)}[ver]
    return Message(t, codec.encode_state(True, "1.2.0", *wf, 1, 0, False, None, None))


class Cloud:
    """The database the CLI works on, and the boards' and the companion's sides of it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.ingest = Ingest(self.engine, reorder_window_ms=0)
        self.orch = Orchestrator(self.engine, SECRET.encode(), owner="serve")

    def send(self, *msgs: Message) -> None:
        assert self.ingest.handle(list(msgs)).dead == 0

    def ack(self, cmd_id: str, code: int) -> None:
        name = cmd_id_device(self, cmd_id)
        self.send(Message(codec.topic("f1", name, codec.ACKS), codec.encode_ack(cmd_id, code, "")))

    def cli(self, *args: str, ok: bool = True):
        return run(*args, "--db", self.url, ok=ok)


def cmd_id_device(cloud: Cloud, cmd_id: str) -> str:
    with cloud.engine.connect() as c:
        return c.exec_driver_sql(
            "SELECT d.name FROM commands c JOIN devices d ON d.id = c.device_id WHERE c.id = ?",
            (cmd_id,),
        ).scalar_one()


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    monkeypatch.setenv("ORRERY_SECRET", SECRET)
    monkeypatch.delenv("ORRERY_SECRET_FILE", raising=False)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    for f in ("greenhouse_v1.json", "greenhouse.json"):
        run("workflow", "push", str(WF / f), "--db", url)
    run("devices", "add", *NAMES, "--fleet", "f1", "--profile", "esp32-devkitc", "--db", url)
    c = Cloud(url)
    c.send(*[state(n, 1) for n in NAMES[:8]], *[state(n, 2) for n in NAMES[8:]])
    yield c
    c.engine.dispose()


def test_create_dry_run_shows_members_and_counts(cloud):
    cloud.send(state("d07", 1, online=False))
    r = cloud.cli("rollout", "create", "--workflow", "greenhouse@2", "--target", "fleet=f1",
                  "--waves", "1,50%,100%", "--dry-run")  # fmt: skip
    out = flat(r.stdout)
    assert "dry run: nothing was created" in out
    assert "excluded (already running this version): 2: d08, d09" in out
    plan = json.loads(
        cloud.cli("rollout", "create", "--workflow", "greenhouse@2", "--target", "fleet=f1",
                  "--waves", "1,50%,100%", "--dry-run", "--json").stdout
    )  # fmt: skip
    assert plan["rollout_id"] is None and plan["workflow"] == "greenhouse@2"
    assert [(w["wave"], w["size"], w["count"]) for w in plan["waves"]] == [
        (1, "1", 1), (2, "50%", 3), (3, "100%", 4),
    ]  # fmt: skip
    assert sorted(n for w in plan["waves"] for n in w["devices"]) == NAMES[:8]
    assert sum(w["offline"] for w in plan["waves"]) == 1
    assert plan["excluded"] == {"already running this version": ["d08", "d09"]}
    # the table: one row per wave with its size, count, offline count and members (each
    # plan draws its own canary order, so this one's members differ from the JSON plan's)
    rows = [[c.strip() for c in ln.split("│")[1:-1]] for ln in r.stdout.splitlines()]
    rows = [c for c in rows if c and c[0].isdigit()]
    assert [c[:3] for c in rows] == [["1", "1", "1"], ["2", "50%", "3"], ["3", "100%", "4"]]
    assert sum(int(c[3]) for c in rows) == 1
    assert all(n in out for n in NAMES[:8])
    assert json.loads(cloud.cli("rollout", "list", "--json").stdout) == []
    # more than six members are abbreviated
    big = flat(cloud.cli("rollout", "create", "--workflow", "greenhouse@2", "--target", "all",
                         "--waves", "100%", "--dry-run").stdout)  # fmt: skip
    assert "… (+2)" in big


def test_the_life_of_a_rollout(cloud):
    r = cloud.cli("rollout", "create", "--workflow", "greenhouse@2", "--target", "fleet=f1",
                  "--waves", "2,100%", "--success", "100%", "--soak", "0s", "--rate", "5/s")  # fmt: skip
    assert "created rollout 1 of greenhouse@2 (draft): `orrery rollout start 1`" in flat(r.stdout)
    s = json.loads(cloud.cli("rollout", "status", "1", "--json").stdout)
    assert (s["id"], s["state"], s["workflow"], s["target"], s["devices"]) == (
        1, "draft", "greenhouse@2", "fleet=f1", 8)  # fmt: skip
    assert [(w["wave"], w["size"], w["total"], w["states"]) for w in s["waves"]] == [
        (1, "2", 2, {"queued": 2}), (2, "100%", 6, {"queued": 6}),
    ]  # fmt: skip
    assert "rollout 1 running" in cloud.cli("rollout", "start", "1").stdout
    r = cloud.cli("rollout", "start", "1", ok=False)
    assert "rollout 1 is running; started needs it draft" in flat(r.output)
    # serve drives it: wave 1's boards install v2
    out = cloud.orch.tick()
    assert len(out) == 2
    for x in out:
        cloud.ack(x.command_id, codec.IN_PROGRESS)
        cloud.send(state(x.topic.split("/")[2], 2))
        cloud.ack(x.command_id, codec.OK)
    cloud.orch.tick()
    assert "rollout 1 paused" in cloud.cli("rollout", "pause", "1").stdout
    # pause and resume are idempotent: a second pause is no error and changes nothing
    assert cloud.cli("rollout", "pause", "1").stdout.strip() == "rollout 1 is already paused"
    assert cloud.orch.tick() == []
    s = json.loads(cloud.cli("rollout", "status", "1", "--json").stdout)
    assert (s["state"], s["reason"], s["states"]) == (
        "paused", "paused by operator", {"succeeded": 2, "queued": 6})  # fmt: skip
    assert s["converged_text"] == "converged 25%, 0 offline pending"
    human = flat(cloud.cli("rollout", "status", "1").stdout)
    assert "rollout 1: greenhouse@2 — paused (paused by operator)" in human
    assert "converged 25%, 0 offline pending" in human
    assert "succeeded 2" in human and "queued 6" in human
    assert "rollout 1 running" in cloud.cli("rollout", "resume", "1").stdout
    assert cloud.cli("rollout", "resume", "1").stdout.strip() == "rollout 1 is already running"
    rows = json.loads(cloud.cli("rollout", "list", "--json").stdout)
    assert [(r["id"], r["state"], r["wave"]) for r in rows] == [(1, "running", 1)]
    listed = flat(cloud.cli("rollout", "list").stdout)
    assert "greenhouse@2" in listed and "running" in listed and "converged 25%" in listed
    r = cloud.cli("rollout", "cancel", "1")
    assert "rollout 1 canceled; 6 device(s) canceled" in r.stdout
    r = cloud.cli("rollout", "cancel", "1", ok=False)
    assert "rollout 1 is already canceled" in flat(r.output)
    # --watch of a rollout that has ended prints once and returns
    assert "rollout 1: greenhouse@2 — canceled" in flat(
        cloud.cli("rollout", "status", "1", "--watch").stdout
    )
    log = json.loads(cloud.cli("rollout", "log", "1", "--json").stdout)
    events = [e["event"] for e in log if e["device"] is None]
    assert events == ["created", "started", "wave-met", "paused", "resumed", "canceled"]
    # who did it: the OS user of each command; the orchestrator's own steps have no one
    me = getpass.getuser()
    by = [(e["event"], e["by"]) for e in log if e["device"] is None]
    assert by == [("created", me), ("started", me), ("wave-met", None), ("paused", me),
                  ("resumed", me), ("canceled", me)]  # fmt: skip
    assert {e["by"] for e in log if e["event"] == "canceled" and e["device"]} == {me}
    assert {e["by"] for e in log if e["event"] == "succeeded"} == {None}
    # and the rollout's install commands say who sent them: who created the rollout
    listed = json.loads(cloud.cli("commands", "list", "--json").stdout)
    assert {(c["source"], c["sent_by"]) for c in listed} == {("rollout:1", me)}
    per_device = [(e["device"], e["event"]) for e in log if e["device"]]
    assert sorted(d for d, e in per_device if e == "succeeded") == sorted(
        x.topic.split("/")[2] for x in out
    )
    assert sum(1 for _, e in per_device if e == "canceled") == 6
    assert all(e["at"].endswith("Z") for e in log)
    human = flat(cloud.cli("rollout", "log", "1").stdout)
    assert "created" in human and "paused by operator" in human and "canceled" in human


def test_cancel_force_and_in_flight(cloud):
    cloud.cli("rollout", "create", "--workflow", "greenhouse@2", "--target", "all", "--waves", "100%",
              "--rate", "3/min")  # fmt: skip
    cloud.cli("rollout", "start", "1")
    assert len(cloud.orch.tick()) == 3
    r = cloud.cli("rollout", "cancel", "1", "--force")
    assert "rollout 1 canceled; 8 device(s) canceled" in r.stdout
    s = json.loads(cloud.cli("rollout", "status", "1", "--json").stdout)
    assert s["states"] == {"canceled": 8}


def test_retry_failed_and_rollback(cloud, monkeypatch):
    cloud.cli("rollout", "create", "--workflow", "greenhouse@2", "--target", "fleet=f1",
              "--waves", "100%", "--max-failures", "10%", "--min-devices", "4")  # fmt: skip
    cloud.cli("rollout", "start", "1")
    out = cloud.orch.tick()
    for i, x in enumerate(out):
        code = codec.FAILED if i < 2 else codec.OK
        cloud.ack(x.command_id, codec.IN_PROGRESS)
        if code == codec.OK:
            cloud.send(state(x.topic.split("/")[2], 2))
        cloud.ack(x.command_id, code)
    cloud.orch.tick()
    s = json.loads(cloud.cli("rollout", "status", "1", "--json").stdout)
    assert s["state"] == "paused"
    assert s["reason"] == "failure threshold: 2 of 8 decided devices failed (25.0% > 10%)"
    r = cloud.cli("rollout", "retry", "1", ok=False)
    assert "say what to retry: --failed" in flat(r.output)
    assert (
        "rollout 1: 2 device(s) re-queued" in cloud.cli("rollout", "retry", "1", "--failed").stdout
    )
    s = json.loads(cloud.cli("rollout", "status", "1", "--json").stdout)
    assert s["states"] == {"queued": 2, "succeeded": 6}
    # rollback needs the fleet secret (it signs the commands that go back)
    monkeypatch.delenv("ORRERY_SECRET")
    r = cloud.cli("rollout", "rollback", "1", ok=False)
    assert "no fleet secret" in flat(r.output)
    monkeypatch.setenv("ORRERY_SECRET", SECRET)
    r = cloud.cli("rollout", "rollback", "1")
    assert "rollout 1 rolled back by rollout(s) 2" in r.stdout
    rows = {r["id"]: r for r in json.loads(cloud.cli("rollout", "list", "--json").stdout)}
    assert (rows[1]["state"], rows[2]["state"]) == ("canceled", "running")
    assert (rows[2]["workflow"], rows[2]["target"], rows[2]["devices"]) == (
        "greenhouse@1", "rollback of rollout 1", 6)  # fmt: skip
    back = cloud.orch.tick()
    assert len(back) == 6 and all(x.command_id.startswith("rollout:2:") for x in back)


def test_devices_tag(cloud):
    r = cloud.cli("devices", "tag", "d00", "site=north", "tier=canary")
    assert "d00: site=north, tier=canary" in r.stdout
    cloud.cli("devices", "tag", "d01", "site=north")
    cloud.cli("devices", "tag", "d02", "site=south")
    assert "d00: site=north" in cloud.cli("devices", "tag", "d00", "tier=").stdout
    assert "d02: no tags" in cloud.cli("devices", "tag", "d02", "site=").stdout
    # a tag's value can be replaced, and be empty-free text with spaces
    assert "d01: site=north east" in cloud.cli("devices", "tag", "d01", "site=north east").stdout
    plan = json.loads(
        cloud.cli("rollout", "create", "--workflow", "greenhouse@2", "--target", "tag.site=north*",
                  "--waves", "100%", "--dry-run", "--json").stdout
    )  # fmt: skip
    assert sorted(plan["waves"][0]["devices"]) == ["d00", "d01"]
    for bad in ("nokey", "=x", "bad key=1", "k=" + "v" * 129, "k" * 65 + "=v"):
        r = cloud.cli("devices", "tag", "d00", bad, ok=False)
        assert "expected key=value (key: 1..64 of [A-Za-z0-9_.-], value up to 128 chars)" in flat(
            r.output
        )
        assert f"tag {bad[:20]!r}"[:-1] in flat(r.output)
    r = cloud.cli("devices", "tag", "ghost", "a=b", ok=False)
    assert "unknown device 'ghost'" in flat(r.output)
    assert "d00: site=north" in cloud.cli("devices", "tag", "d00", "tier=").stdout


def test_errors_exit_1_with_a_message(cloud):
    for cmd in (["start", "99"], ["pause", "99"], ["resume", "99"], ["cancel", "99"],
                ["retry", "99", "--failed"], ["rollback", "99"], ["status", "99"],
                ["status", "99", "--json"], ["log", "99"]):  # fmt: skip
        r = cloud.cli("rollout", *cmd, ok=False)
        assert "no rollout 99 (see `orrery rollout list`)" in flat(r.output), cmd
    create = ["rollout", "create", "--workflow", "greenhouse@2", "--target", "all"]
    cases = {
        ("--waves", "5,50%"): "--waves: the last wave must be 100% so every target device is covered",
        ("--waves", "0,100%"): "--waves: '0' is neither a device count nor a percentage in (0, 100]",
        ("--target", "colour=red"): "--target: unknown field 'colour' (use fleet, profile, fw, wf, device or tag.KEY)",
        ("--target", "fleet"): "--target: 'fleet' is not FIELD=VALUE or FIELD!=VALUE",
        ("--target", "fleet=none"): "--target 'fleet=none' selects no device that needs greenhouse@2",
        ("--rate", "lots"): "--rate: 'lots' is not a rate like 100/min, 5/s or 1000/h",
        ("--soak", "1 week"): "--soak: '1 week' is not a duration like 90s, 10m, 24h or 7d",
        ("--success", "120%"): "--success: '120%' is outside 0..100%",
        ("--min-devices", "0"): "--min-devices must be at least 1",
    }  # fmt: skip
    for extra, msg in cases.items():
        args = create + list(extra)
        if extra[0] == "--target":
            args = ["rollout", "create", "--workflow", "greenhouse@2", *extra]
        r = cloud.cli(*args, ok=False)
        assert msg in flat(r.output), (extra, r.output)
    r = cloud.cli("rollout", "create", "--workflow", "greenhouse@3", "--target", "all", ok=False)
    assert "no workflow 'greenhouse@3' in the registry (known: greenhouse@1, greenhouse@2)" in flat(
        r.output
    )
    assert json.loads(cloud.cli("rollout", "list", "--json").stdout) == []
    assert "no rollouts" in cloud.cli("rollout", "list").stdout


def test_rollback_dry_run_and_refusal_name_the_devices_that_would_reject(cloud, tmp_path):
    v3 = tmp_path / "greenhouse_v3.json"
    v3.write_text(json.dumps({**json.loads((WF / "greenhouse.json").read_text()), "version": 3}))
    cloud.cli("workflow", "push", str(v3))
    cloud.cli("rollout", "create", "--workflow", "greenhouse@3", "--target", "device=d0[0-3]",
              "--waves", "100%", "--soak", "0s")  # fmt: skip
    cloud.cli("rollout", "start", "1")
    v3_hash = compiler.compile(v3.read_bytes()).hash
    for x in cloud.orch.tick():
        name = x.topic.split("/")[2]
        cloud.ack(x.command_id, codec.IN_PROGRESS)
        cloud.send(Message(codec.topic("f1", name, codec.STATE),
                           codec.encode_state(True, "1.2.0", "greenhouse", 3, v3_hash, 1, 0, False, None, None)))  # fmt: skip
        cloud.ack(x.command_id, codec.OK)
    cloud.orch.tick()
    cloud.orch.tick()
    assert json.loads(cloud.cli("rollout", "status", "1", "--json").stdout)["state"] == "finished"

    def event(name: str, seq: int, st: str) -> None:
        cloud.send(Message(codec.topic("f1", name, codec.EVENTS),
                           codec.encode_event(1, seq, 100 + seq, 0, st, "status", None)))  # fmt: skip

    for name in ("d00", "d01"):
        event(name, 1, "cooling")
    for args in (["--dry-run"], []):
        r = cloud.cli("rollout", "rollback", "1", *args, ok=False)
        assert r.stderr.strip() == (
            "error: 2 device(s) would reject greenhouse@1: the state they last reported has no "
            "place in it: d00 (state 'cooling' of greenhouse v3 has no place in v1), d01 (state "
            "'cooling' of greenhouse v3 has no place in v1); push a version whose migrate map "
            "places that state, or wait until they have left it"
        )
    for name in ("d00", "d01"):
        event(name, 2, "idle")
    r = cloud.cli("rollout", "rollback", "1", "--dry-run")
    assert flat(r.stdout) == (
        "4 device(s) would go back to greenhouse@1: d00, d01, d02, d03 dry run: nothing was changed"
    )
    assert [x["id"] for x in json.loads(cloud.cli("rollout", "list", "--json").stdout)] == [1]


def test_a_scheduled_rollout_create_status_and_log(cloud):
    from datetime import UTC, datetime, timedelta

    start = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    cloud.cli("devices", "tag", "d00", "tz=Europe/Berlin")
    cloud.cli("devices", "tag", "d01", "tz=America/New_York")
    cloud.cli("devices", "tag", "d02", "tz=Atlantis/Capital")
    r = cloud.cli("rollout", "create", "--workflow", "greenhouse@2", "--target", "device=d0[0-3]",
                  "--waves", "1,100%", "--start-at", start.isoformat(), "--window", "mon-fri 22:00-02:00;Sat,Sun 00:00-24:00",
                  "--window-tz", "tag.tz")  # fmt: skip
    out = flat(r.stdout)
    window = "Mon-Fri 22:00-02:00; Sat,Sun 00:00-24:00"
    at = start.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert f"schedule: starts at {at}; window {window} (tag.tz)" in out
    assert "2 device(s) without a valid tag.tz tag follow the window in UTC: d02, d03" in out
    started = flat(cloud.cli("rollout", "start", "1").stdout)
    assert started.startswith("rollout 1 running; waiting for its start: opens 20"), started
    assert cloud.orch.tick() == [], "nothing is sent before the start time"
    s = json.loads(cloud.cli("rollout", "status", "1", "--json").stdout)["schedule"]
    assert (s["start_at"], s["started"], s["window"], s["window_tz"], s["open"]) == (
        at, False, window, "tag.tz", False)  # fmt: skip
    assert s["waiting"] == 1 and s["without_zone"] == 2  # wave 1: one device
    assert [(g["tz"], g["devices"], g["without_zone"]) for g in s["groups"]] == [
        ("America/New_York", 1, 0), ("Europe/Berlin", 1, 0), ("UTC", 2, 2)]  # fmt: skip
    assert all(g["next_open"] >= at for g in s["groups"]) and s["next_open"] == min(
        g["next_open"] for g in s["groups"]
    )
    text = flat(cloud.cli("rollout", "status", "1").stdout)
    assert f"start at {at} (in 1d23h59m" in text or f"start at {at} (in 2d" in text, text
    assert f"window {window} (each device's tag.tz; UTC without one)" in text
    assert "UTC: 2 device(s) (2 without a valid tag.tz tag): closed, opens" in text
    assert f"closed: 1 device(s) waiting; next opening {s['next_open']}" in text
    listed = flat(cloud.cli("rollout", "list").stdout)  # the table wraps the reason column
    assert all(w in listed for w in ("waiting", "start:", "opens", s["next_open"][:10]))
    log = json.loads(cloud.cli("rollout", "log", "1", "--json").stdout)
    assert log[0]["event"] == "created" and log[0]["by"] == getpass.getuser()
    assert log[0]["detail"].endswith(
        f"; starts at {at}; window {window} (each device's tag.tz; UTC without one)"
    )
    # a rollout without a schedule shows none
    cloud.cli("rollout", "create", "--workflow", "greenhouse@2", "--target", "device=d07")
    assert json.loads(cloud.cli("rollout", "status", "2", "--json").stdout)["schedule"] is None
    assert "window" not in flat(cloud.cli("rollout", "status", "2").stdout)
