"""``orrery devices timeline`` and what ``orrery devices show`` adds (tags, workflow state,
clock offset, rollout history), on SQLite and PostgreSQL.

A device's history is made through the real paths: its messages (state, readings, events, a
loss, a malformed message, acks) encoded as a board encodes them and stored by ``Ingest``, a
gap reconciled into a resend, a workflow rollout driven by the orchestrator, and an operator's
command sent with ``orrery devices send``. The ingest and the orchestrator run on a virtual
clock ten minutes in the past, so the operator's command (sent now, on the wall clock) comes
after them.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cloud.orrery.cli import app
from cloud.orrery.cli.common import os_user
from cloud.orrery.clock import iso, now_ms
from cloud.orrery.db.engine import engine_for
from cloud.orrery.fleet import device_commands, registry
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.fleet.timeline import TimelineError, parse_since
from cloud.orrery.ingest.alerts import AlertRule
from cloud.orrery.ingest.handler import Ingest, Message
from cloud.orrery.sim import workflows
from shared.wire import codec
from shared.workflow import compiler

SECRET = "timeline-test-fleet-secret-0123456789"
V1 = compiler.compile(workflows.GREENHOUSE_V1.read_bytes())
V2 = compiler.compile(workflows.GREENHOUSE.read_bytes())
runner = CliRunner()


def run(*args: str, ok: bool = True):
    r = runner.invoke(app, list(args))
    if ok:
        assert r.exit_code == 0, r.output
    return r


class Board:
    """A board's side of the wire (dev1's unless named), stored by the real ingest at the
    virtual time ``now``."""

    def __init__(self, url: str, t0: int, name: str = "dev1") -> None:
        self.name = name
        self.engine = engine_for(url)
        self.now = t0
        self.ingest = Ingest(
            self.engine,
            secret=SECRET.encode(),
            reorder_window_ms=0,
            alert_rules=[AlertRule.parse("0>3000")],
            clock=lambda: self.now,
        )

    def send(self, kind: str, payload: bytes, dead: int = 0) -> None:
        out = self.ingest.handle([Message(codec.topic("f1", self.name, kind), payload)])
        assert out.dead == dead

    def state(self, boot: int, wf, anchor) -> None:
        self.send(codec.STATE, codec.encode_state(True, "1.2.0", *wf, boot, 0, anchor is not None,
                                                  anchor, None))  # fmt: skip

    def ack(self, cmd_id: str, code: int, detail: str = "") -> None:
        self.send(codec.ACKS, codec.encode_ack(cmd_id, code, detail))


@pytest.fixture
def history(db_url, monkeypatch):
    """dev1's history; returns (db url, T0, the rollout id, the operator command id)."""
    monkeypatch.setenv("ORRERY_SECRET", SECRET)
    t0 = (now_ms() // 1000 - 600) * 1000  # whole seconds, ten minutes ago
    run("devices", "add", "dev1", "dev2", "--fleet", "f1", "--db", db_url)
    run("devices", "tag", "dev1", "site=north", "tz=Europe/Berlin", "--db", db_url)
    b = Board(db_url, t0)
    with b.engine.begin() as c:
        registry.push(c, workflows.GREENHOUSE_V1.read_bytes(), None, 0)
        registry.push(c, workflows.GREENHOUSE.read_bytes(), None, 0)
    anchor = (100, 0, t0 // 1000, 0)  # uptime 100 s is T0: boot 7 started at T0 - 100 s
    v1 = ("greenhouse", 1, V1.hash)
    b.state(7, v1, anchor)
    b.now = t0 + 6_000  # live readings taken at T0+1 s .. T0+5 s; seq 3 trips the alert
    recs = [(101 + i, 0, 3500 if i == 2 else 100 * i, 0) for i in range(5)]
    b.send(codec.READINGS, codec.encode_batch(7, 1, recs, codec.SYNCED, anchor))
    b.now = t0 + 11_000  # events at uptime 108 s and 110 s: idle, then cooling
    b.send(codec.EVENTS, codec.encode_event(7, 0, 108, 0, "idle", "status", None))
    b.send(codec.EVENTS, codec.encode_event(7, 1, 110, 0, "cooling", "too_hot", 31))
    b.now = t0 + 12_000
    b.send(codec.LOSS, codec.encode_loss(7, 6, 7, "store_full"))
    b.now = t0 + 13_000
    b.send(codec.EVENTS, b"{not json", dead=1)
    b.now = t0 + 14_000  # seqs 10..11 arrive: 8..9 are missing, reconciled into a resend
    b.send(codec.READINGS, codec.encode_batch(7, 10, [(114, 0, 1, 0), (115, 0, 2, 0)],
                                              codec.SYNCED, anchor))  # fmt: skip
    b.now = t0 + 15_000
    b.ingest.reconcile()
    # a rollout to greenhouse@2: sent, accepted, running the new version, succeeded
    b.now = t0 + 20_000
    carol = Orchestrator(b.engine, SECRET.encode(), actor="carol", clock=lambda: b.now)
    o = Orchestrator(b.engine, SECRET.encode(), clock=lambda: b.now)  # as `orrery serve` runs it
    rid = carol.create("greenhouse@2", "device=dev1", "100%", success="100%", max_failures="100%",
                   min_devices=1, soak="0s", timeout="1h", rate="1000/min", health="5s").rollout_id  # fmt: skip
    carol.start(rid)
    sent = o.tick()
    assert len(sent) == 1
    b.ingest.mark_sent([sent[0].command_id])
    b.now = t0 + 21_000
    b.ack(sent[0].command_id, codec.IN_PROGRESS, "health window")
    b.state(7, ("greenhouse", 2, V2.hash), anchor)
    b.now = t0 + 22_000
    o.tick()
    b.now = t0 + 27_000
    b.ack(sent[0].command_id, codec.OK)
    b.now = t0 + 28_000
    o.tick()
    b.now = t0 + 29_000
    o.tick()  # it ends
    # an operator reboots it, now (wall clock); it acks, and comes back as boot 8 without time
    r = run("devices", "send", "dev1", "reboot", "--db", db_url, "--json")
    op = json.loads(r.stdout)["ids"][0]
    b.now = now_ms() + 1_000
    b.ingest.queued_commands()
    b.ingest.mark_sent([op])
    b.ack(op, codec.OK)
    b.now += 1_000
    b.state(8, ("greenhouse", 2, V2.hash), None)
    b.engine.dispose()
    return db_url, t0, rid, op


def test_timeline_orders_a_devices_history(history):
    url, t0, rid, op = history
    entries = json.loads(run("devices", "timeline", "dev1", "--db", url, "--json").stdout)
    assert [e["at_ms"] for e in entries] == sorted(e["at_ms"] for e in entries)
    got = [(e["kind"], e["at_ms"] - t0, e["time_source"]) for e in entries]
    ours = [g for g in got if g[1] < 600_000]  # before the operator's command (wall clock)
    resend = [e for e in entries if e["kind"] == "command" and e["data"]["source"] == "reconcile"]
    assert len(resend) == 1
    cmd = f"rollout:{rid}:1:1"
    assert ours == [
        ("boot", -100_000, "event"),  # boot 7: its anchor, uptime 100 s = T0
        ("alert", 3_000, "event"),  # the reading taken at uptime 103 s
        ("state", 8_000, "event"),
        ("event", 8_000, "event"),
        ("state", 10_000, "event"),
        ("event", 10_000, "event"),
        ("loss", 12_000, "received"),
        ("dead-letter", 13_000, "received"),
        ("gap", 15_000, "recorded"),
        ("command", 15_000, "recorded"),  # the gap's resend
        ("command", 20_000, "recorded"),  # the install
        ("install", 20_000, "recorded"),
        ("sent", 20_000, "recorded"),
        ("install", 22_000, "recorded"),
        ("ack", 27_000, "received"),
        ("install", 28_000, "recorded"),
    ]
    by_kind = {}
    for e in entries:
        by_kind.setdefault(e["kind"], []).append(e)
    assert by_kind["boot"][0]["data"]["boot"] == 7 and by_kind["boot"][0]["at"] == iso(t0 - 100_000)
    assert [(e["data"]["state"], e["data"]["was"]) for e in by_kind["state"]] == [
        ("idle", None), ("cooling", "idle"),
    ]  # fmt: skip
    assert by_kind["event"][1]["summary"] == "event too_hot = 31 in cooling"
    assert by_kind["alert"][0]["data"] == {"rule": "0>3000", "value": 3500, "boot": 7, "seq": 3}
    assert by_kind["loss"][0]["data"]["reason"] == "store_full"
    assert (by_kind["loss"][0]["data"]["first"], by_kind["loss"][0]["data"]["last"]) == (6, 7)
    assert by_kind["dead-letter"][0]["data"]["reason"].startswith("malformed event")
    assert (by_kind["gap"][0]["data"]["first"], by_kind["gap"][0]["data"]["last"]) == (8, 9)
    assert [e["data"]["state"] for e in by_kind["install"]] == ["sent", "installing", "succeeded"]
    assert all(e["data"]["workflow"] == "greenhouse@2" for e in by_kind["install"])
    assert by_kind["install"][0]["data"]["detail"] == cmd
    assert [e["data"]["actor"] for e in by_kind["install"]] == [None] * 3  # the orchestrator's
    assert by_kind["command"][1]["data"]["sent_by"] == "carol"  # who created the rollout
    # the install's ack: the last one recorded (OK), which settled it
    install_ack = next(e for e in by_kind["ack"] if e["data"]["id"] == cmd)
    assert (install_ack["data"]["result"], install_ack["data"]["state"]) == ("OK", "done")
    # the operator's reboot: queued by whom, published, acked; then boot 8, without a time anchor
    tail = [(e["kind"], e["data"].get("id"), e["time_source"]) for e in entries[len(ours) :]]
    assert tail == [
        ("command", op, "recorded"),
        ("sent", op, "recorded"),
        ("ack", op, "received"),
        ("boot", None, "received"),
    ]
    opcmd = entries[len(ours)]
    assert (opcmd["data"]["sent_by"], opcmd["data"]["source"], opcmd["data"]["kind"]) == (
        os_user(), "operator", "reboot")  # fmt: skip
    assert f"by {os_user()}" in opcmd["summary"]
    assert entries[-1]["data"]["boot"] == 8

    # --since and --limit: a window from a time, and the newest N of it
    since = run("devices", "timeline", "dev1", "--db", url, "--json", "--since", iso(t0 + 20_000))
    assert [e["at_ms"] - t0 for e in json.loads(since.stdout)][:4] == [20_000] * 3 + [22_000]
    last = json.loads(run("devices", "timeline", "dev1", "--db", url, "--json",
                          "--limit", "2").stdout)  # fmt: skip
    assert [(e["kind"], e["data"].get("boot")) for e in last] == [("ack", None), ("boot", 8)]
    recent = json.loads(run("devices", "timeline", "dev1", "--db", url, "--json", "--since", "2m").stdout)
    assert [e["kind"] for e in recent] == ["command", "sent", "ack", "boot"]
    # text: one line per entry, with its time source
    text = run("devices", "timeline", "dev1", "--db", url).stdout
    assert "too_hot" in text and "dead-letter" in text and "recorded" in text
    assert f"{len(entries)} entries;" in text and "left off" not in text
    text = run("devices", "timeline", "dev1", "--db", url, "--limit", "3").stdout
    assert "3 entries (the newest 3; older ones left off: --limit)" in text
    text = run("devices", "timeline", "dev1", "--db", url, "--limit", str(len(entries))).stdout
    assert f"{len(entries)} entries;" in text and "left off" not in text
    # a device with no history has an empty timeline
    assert json.loads(run("devices", "timeline", "dev2", "--db", url, "--json").stdout) == []


def test_show_adds_tags_workflow_state_clock_and_rollouts(history):
    url, t0, rid, _ = history
    info = json.loads(run("devices", "show", "dev1", "--db", url, "--json").stdout)
    assert info["tags"] == {"site": "north", "tz": "Europe/Berlin"}
    assert info["workflow"] == "greenhouse@2"
    # the state of its last event, of boot 7: boot 8 has sent none yet
    assert info["workflow_state"] == {
        "state": "cooling", "event": "too_hot", "at": iso(t0 + 10_000), "time_source": "event",
        "boot": 7, "current_boot": False,
    }  # fmt: skip
    assert info["clock_offset_s"] is None  # boot 8 has no time anchor: its clock is unknown
    assert info["sessions"][0]["clock_offset_s"] is not None  # boot 7's, from its live batches
    assert info["rollouts"] == [
        {"rollout": rid, "workflow": "greenhouse@2", "from": "greenhouse@1",
         "rollout_state": "finished", "state": "succeeded", "reason": "health window passed",
         "wave": 1, "attempts": 1, "updated": iso(t0 + 28_000), "created_by": "carol"},
    ]  # fmt: skip
    text = run("devices", "show", "dev1", "--db", url).stdout
    assert "site=north, tz=Europe/Berlin" in text
    assert "cooling (its last event, too_hot at" in text and "before the last reboot" in text
    assert "health window passed" in text and "succeeded" in text
    bare = json.loads(run("devices", "show", "dev2", "--db", url, "--json").stdout)
    assert (bare["tags"], bare["workflow_state"], bare["rollouts"]) == ({}, None, [])
    assert "rollouts: none" in run("devices", "show", "dev2", "--db", url).stdout


def test_timeline_refuses_bad_inputs(history):
    url = history[0]
    for args, why in [
        (["nope"], "unknown device 'nope'"),
        (["dev1", "--since", "yesterday"], "--since: 'yesterday' is neither a duration"),
        (["dev1", "--since", "5w"], "--since: '5w'"),
        (["dev1", "--limit", "0"], "--limit: 0 must be at least 1"),
    ]:
        r = run("devices", "timeline", *args, "--db", url, ok=False)
        assert r.exit_code == 1 and r.stderr.startswith(f"error: {why}"), r.output
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_parse_since():
    now = 1_790_000_000_000
    assert parse_since("90s", now) == now - 90_000
    assert parse_since(" 10m ", now) == now - 600_000
    assert parse_since("24h", now) == now - 86_400_000
    assert parse_since("7d", now) == now - 7 * 86_400_000
    assert parse_since("1790000000", now) == now  # unix seconds
    assert parse_since("2026-11-21T10:00:00", now) == parse_since("2026-11-21T10:00:00Z", now)
    assert parse_since("2026-11-21T11:00:00+01:00", now) == parse_since("2026-11-21T10:00:00", now)
    for bad in ("yesterday", "5w", "-", "10 min", ""):
        with pytest.raises(TimelineError, match="--since"):
            parse_since(bad, now)


def test_a_failed_install_and_an_expired_command(db_url):
    t0 = 1_790_000_000_000
    run("devices", "add", "dev3", "--fleet", "f1", "--db", db_url)
    b = Board(db_url, t0, "dev3")
    with b.engine.begin() as c:
        registry.push(c, workflows.GREENHOUSE_V1.read_bytes(), None, 0)
        registry.push(c, workflows.GREENHOUSE.read_bytes(), None, 0)
    b.state(1, ("greenhouse", 1, V1.hash), None)
    o = Orchestrator(b.engine, SECRET.encode(), clock=lambda: b.now)
    rid = o.create("greenhouse@2", "device=dev3", "100%", success="100%", max_failures="100%",
                   min_devices=1, soak="0s", timeout="1h", rate="1000/min", health="5s").rollout_id  # fmt: skip
    o.start(rid)
    (sent,) = o.tick()
    b.now += 1_000
    b.ack(sent.command_id, codec.IN_PROGRESS, "health window")
    b.now += 5_000
    b.ack(sent.command_id, codec.FAILED, "health window failed")
    b.now += 1_000
    o.tick()
    o.tick()
    # the board goes away; an operator's reboot waits for it, and expires unanswered
    b.send(codec.STATE, codec.encode_will(1))
    with b.engine.begin() as c:
        op = device_commands.send(c, SECRET.encode(), "dev3", "reboot", [], sent_by="maria",
                                  ttl_s=60, now=t0 + 10_000).ids[0]  # fmt: skip
    b.now = t0 + 80_000
    b.ingest.reconcile()
    b.engine.dispose()
    info = json.loads(run("devices", "show", "dev3", "--db", db_url, "--json").stdout)
    assert [(r["rollout"], r["state"], r["reason"], r["rollout_state"]) for r in info["rollouts"]] == [
        (rid, "failed", "FAILED: health window failed", "paused"),  # below its success threshold
    ]  # fmt: skip
    assert info["workflow_state"] is None  # it never sent an event
    entries = json.loads(run("devices", "timeline", "dev3", "--db", db_url, "--json").stdout)
    got = [(e["kind"], e["at_ms"] - t0, e["data"].get("id")) for e in entries]
    assert got == [
        ("boot", 0, None),  # no time anchor: when it was received
        ("command", 0, sent.command_id),
        ("install", 0, None),
        ("ack", 6_000, sent.command_id),
        ("install", 7_000, None),
        ("command", 10_000, op),
        ("expired", 70_000, op),
    ]
    assert entries[3]["summary"] == (
        f"install_workflow acked FAILED: health window failed -> failed {sent.command_id}"
    )
    assert entries[4]["data"]["state"] == "failed"
    assert entries[4]["data"]["detail"] == "FAILED: health window failed"
    assert entries[5]["data"]["sent_by"] == "maria" and entries[6]["data"]["state"] == "expired"
