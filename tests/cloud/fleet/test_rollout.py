"""The rollout orchestrator's logic on a real database, without boards.

The boards' side is the wire: their state messages (online, offline, the version they run,
reboots) and their acks go through the real ingest (``Ingest.handle``) in the board's own
format, exactly as ``orrery serve`` stores them; time is the orchestrator's and the ingest's
injectable clock. Scenarios with real firmware boards are in test_rollout_e2e.py.
"""

from __future__ import annotations

import base64
import json
import math
from fractions import Fraction
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES, ROLLOUTS, TAGS
from cloud.orrery.fleet import commands, keys, registry
from cloud.orrery.fleet.rollout.health import binomial_tail
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.fleet.rollout.plan import (
    RolloutError,
    Term,
    matches,
    parse_duration,
    parse_pct,
    parse_rate,
    parse_target,
    parse_waves,
    wave_sizes,
)
from cloud.orrery.ingest.handler import Ingest, Message
from cloud.orrery.sim import workflows
from shared.wire import codec
from shared.workflow import compiler

WF = workflows.DIR
V1 = compiler.compile((WF / "greenhouse_v1.json").read_bytes())
V2 = compiler.compile((WF / "greenhouse.json").read_bytes())
# greenhouse@3: v2's states (idle, cooling, watering, fault, off) under a new version; v1 (idle,
# cool, alarm, manual) has no migrate map, so only "idle" of v3 has a place in v1
V3_JSON = json.dumps({**json.loads((WF / "greenhouse.json").read_bytes()), "version": 3}).encode()
V3 = compiler.compile(V3_JSON)
SECRET = b"unit-test-fleet-secret-0123456789"
T0 = 1_790_000_000_000  # unix ms


# --- parsing -------------------------------------------------------------------------------


def refused(fn, *args) -> str:
    with pytest.raises(RolloutError) as exc:
        fn(*args)
    return str(exc.value)


def test_parse_waves():
    assert parse_waves("5,10%,50%,100%") == ["5", "10%", "50%", "100%"]
    assert parse_waves(" 1 , 2.5% ,100%") == ["1", "2.5%", "100%"]
    assert parse_waves("100%") == ["100%"]
    assert refused(parse_waves, "") == "--waves: give at least one wave, e.g. 5,10%,50%,100%"
    assert refused(parse_waves, " , ") == "--waves: give at least one wave, e.g. 5,10%,50%,100%"
    for bad in ("0", "0%", "150%", "1.5", "ten", "-5", "5%%"):
        assert refused(parse_waves, f"{bad},100%") == (
            f"--waves: {bad!r} is neither a device count nor a percentage in (0, 100]"
        )
    assert refused(parse_waves, "5,50%") == (
        "--waves: the last wave must be 100% so every target device is covered"
    )
    assert refused(parse_waves, "5,10") == (
        "--waves: the last wave must be 100% so every target device is covered"
    )


def test_wave_sizes_are_cumulative_and_capped():
    waves = parse_waves("5,10%,50%,100%")
    assert wave_sizes(waves, 1000) == [5, 100, 500, 1000]
    assert wave_sizes(waves, 100_000) == [5, 10_000, 50_000, 100_000]
    # 5 devices are more than 3: the first wave takes them all, the others add nothing
    assert wave_sizes(waves, 3) == [3, 3, 3, 3]
    assert wave_sizes(parse_waves("1,50%,100%"), 3) == [1, 2, 3]  # 50% of 3 rounds up
    assert wave_sizes(parse_waves("1%,100%"), 7) == [1, 7]  # never an empty first wave
    assert wave_sizes(parse_waves("50%,10%,100%"), 10) == [5, 5, 10]  # never decreasing
    assert wave_sizes(waves, 0) == [0, 0, 0, 0]


def test_parse_rate_duration_and_percentages():
    assert parse_rate("100/min") == 100
    assert parse_rate("100 / m") == 100
    assert parse_rate("5/s") == 300
    assert parse_rate("2/sec") == 120
    assert parse_rate("1000/h") == 16
    assert parse_rate("30/hour") == 1  # at least one a minute
    for bad in ("0/min", "fast", "5/day", "100", "-1/s", "1.5/s"):
        assert refused(parse_rate, bad) == (
            f"--rate: {bad!r} is not a rate like 100/min, 5/s or 1000/h"
        )
    assert [parse_duration(x, "--soak") for x in ("90s", "10m", "24h", "7d", "45", " 0s ")] == [
        90, 600, 86400, 604800, 45, 0,
    ]  # fmt: skip
    for bad in ("1.5h", "10 min", "-5s", "soon", "5w"):
        assert refused(parse_duration, bad, "--soak") == (
            f"--soak: {bad!r} is not a duration like 90s, 10m, 24h or 7d"
        )
    assert parse_pct("95%", "--success") == 95.0 and parse_pct("2.5", "--max-failures") == 2.5
    assert refused(parse_pct, "120%", "--success") == "--success: '120%' is outside 0..100%"
    assert refused(parse_pct, "most", "--success") == "--success: 'most' is not a percentage"


def dev(name, fleet="f1", profile="esp32-devkitc", fw="1.2.0", wf="greenhouse", wf_ver=1):
    return SimpleNamespace(name=name, fleet=fleet, profile=profile, fw=fw, wf=wf, wf_ver=wf_ver)


def test_parse_target():
    assert parse_target("all") == [] and parse_target(" * ") == []
    assert parse_target("fleet=f1, tag.site != north,wf=greenhouse@1") == [
        Term("fleet", "=", "f1"),
        Term("tag.site", "!=", "north"),
        Term("wf", "=", "greenhouse@1"),
    ]
    assert refused(parse_target, "color=red") == (
        "--target: unknown field 'color' (use fleet, profile, fw, wf, device or tag.KEY)"
    )
    assert refused(parse_target, "tag.=x").startswith("--target: unknown field 'tag.'")
    assert refused(parse_target, "fleet") == "--target: 'fleet' is not FIELD=VALUE or FIELD!=VALUE"
    assert refused(parse_target, "fleet=f1,") == "--target: '' is not FIELD=VALUE or FIELD!=VALUE"


def test_matches():
    a = dev("site-a-01")
    b = dev("site-b-02", fleet="f2", profile="other", fw="2.0.1", wf="lab", wf_ver=3)
    bare = dev("bare", fw=None, wf=None, wf_ver=None)
    tags = {"site-a-01": {"site": "north", "tier": "canary"}, "site-b-02": {"site": "south"}}

    def sel(expr):
        terms = parse_target(expr)
        return [d.name for d in (a, b, bare) if matches(terms, d, tags.get(d.name, {}))]

    assert sel("all") == ["site-a-01", "site-b-02", "bare"]
    assert sel("fleet=f1") == ["site-a-01", "bare"]
    assert sel("fleet=f*") == ["site-a-01", "site-b-02", "bare"]
    assert sel("fleet!=f1") == ["site-b-02"]
    assert sel("profile=esp32-*") == ["site-a-01", "bare"]
    assert sel("profile!=esp32-devkitc") == ["site-b-02"]
    assert sel("fw=2.*") == ["site-b-02"]
    assert sel("fw!=2.*") == ["site-a-01", "bare"]  # no firmware reported: not 2.*
    assert sel("wf=greenhouse") == ["site-a-01"]
    assert sel("wf=greenhouse@1") == ["site-a-01"]
    assert sel("wf=greenhouse@2") == []
    assert sel("wf=lab@3") == ["site-b-02"]
    assert sel("wf=none") == ["bare"]
    assert sel("wf!=none") == ["site-a-01", "site-b-02"]
    assert sel("wf!=greenhouse@1") == ["site-b-02", "bare"]
    assert sel("device=site-*") == ["site-a-01", "site-b-02"]
    assert sel("device=site-?-0[12]") == ["site-a-01", "site-b-02"]
    assert sel("device!=site-a-*") == ["site-b-02", "bare"]
    assert sel("tag.site=north") == ["site-a-01"]
    assert sel("tag.site=*") == ["site-a-01", "site-b-02"]  # only devices with the tag
    assert sel("tag.site!=north") == ["site-b-02", "bare"]  # no tag: not north
    assert sel("tag.tier=canary,fleet=f1") == ["site-a-01"]  # terms are ANDed
    assert sel("tag.tier=canary,fleet=f2") == []
    assert sel("device=SITE-*") == []  # case-sensitive


# --- the orchestrator, on a real database -------------------------------------------------


class Env:
    """A registry with greenhouse@1 and @2, devices ``d00``… on fleet f1, online on @1,
    fed through the real ingest on a virtual clock."""

    def __init__(self, url: str, n: int) -> None:
        self.engine = engine_for(url)
        self.now = T0
        self.ingest = Ingest(self.engine, secret=SECRET, reorder_window_ms=0, clock=self.clock)
        self.boots: dict[str, int] = {}
        self.events: dict[str, int] = {}
        with self.engine.begin() as c:
            registry.push(c, (WF / "greenhouse_v1.json").read_bytes(), None, 0)
            registry.push(c, (WF / "greenhouse.json").read_bytes(), None, 0)
        self.add(*[f"d{i:02d}" for i in range(n)])

    def clock(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms

    def orch(self, owner: str = "o1", **kw) -> Orchestrator:
        return Orchestrator(self.engine, SECRET, owner=owner, clock=self.clock, **kw)

    def add(self, *names: str, fleet: str = "f1", ver: int | None = 1, online: bool = True):
        with self.engine.begin() as c:
            c.execute(
                sa.insert(DEVICES),
                [{"name": n, "fleet": fleet, "profile": "esp32-devkitc", "created_ms": 0} for n in names],
            )  # fmt: skip
        for n in names:
            self.boots[n] = 1
        if online:
            self.state(*names, ver=ver)

    def fleet_of(self, name: str) -> str:
        with self.engine.connect() as c:
            return c.execute(sa.select(DEVICES.c.fleet).where(DEVICES.c.name == name)).scalar_one()

    def send(self, msgs: list[Message]):
        out = self.ingest.handle(msgs)
        assert out.dead == 0, self.rows("SELECT reason FROM dead_letters")
        return out

    def state_msg(self, name: str, ver: int | None = 1, online: bool = True) -> Message:
        t = codec.topic(self.fleet_of(name), name, codec.STATE)
        if not online:
            return Message(t, codec.encode_will(self.boots[name]))
        wf = {
            None: (None, None, None),
            1: ("greenhouse", 1, V1.hash),
            2: ("greenhouse", 2, V2.hash),
            3: ("greenhouse", 3, V3.hash),
        }[ver]
        return Message(t, codec.encode_state(True, "1.2.0", *wf, self.boots[name], 0, False, None, None))  # fmt: skip

    def state(self, *names: str, ver: int | None = 1, online: bool = True) -> None:
        self.send([self.state_msg(n, ver, online) for n in names])

    def event(self, name: str, state: str, event: str = "status") -> None:
        """The board reports a workflow event in ``state`` (its last reported state)."""
        self.events[name] = self.events.get(name, 0) + 1
        t = codec.topic(self.fleet_of(name), name, codec.EVENTS)
        self.send([Message(t, codec.encode_event(self.boots[name], self.events[name], 100, 0, state, event, None))])

    def reboot(self, name: str, ver: int = 2, times: int = 1) -> None:
        for _ in range(times):
            self.boots[name] += 1
            self.state(name, ver=ver)

    def ack(self, cmd_id: str, code: int, detail: str = "") -> None:
        name = self.device_of(cmd_id)
        self.send(
            [
                Message(
                    codec.topic(self.fleet_of(name), name, codec.ACKS), codec.encode_ack(cmd_id, code, detail)
                )
            ]
        )

    def device_of(self, cmd_id: str) -> str:
        with self.engine.connect() as c:
            return c.execute(
                sa.text("SELECT d.name FROM commands c JOIN devices d ON d.id = c.device_id WHERE c.id = :i"),
                {"i": cmd_id},
            ).scalar_one()  # fmt: skip

    def board(self, out: list[commands.Outgoing], code: int = codec.OK) -> list[str]:
        """Each addressed board checks its command like a board does, acks IN_PROGRESS, runs
        the new version and acks ``code`` (after a failure it is back on version 1)."""
        done = []
        for o in out:
            name = o.topic.split("/")[2]
            res, cmd, detail = codec.Verifier(keys.device_key(SECRET, name), name).check(
                o.payload, self.now // 1000
            )
            assert (res, detail) == (codec.OK, ""), (name, detail)
            assert cmd["id"] == o.command_id and cmd["kind"] == "install_workflow"
            self.ack(o.command_id, codec.IN_PROGRESS, "health window")
            self.state(name, ver=2)
            self.ack(o.command_id, code, "" if code == codec.OK else "health window failed")
            if code != codec.OK:
                self.state(name, ver=1)
            done.append(name)
        return done

    def rows(self, sql: str, **kw) -> list:
        with self.engine.connect() as c:
            return c.execute(sa.text(sql), kw).all()

    def members(self, rid: int) -> dict[str, str]:
        return dict(self.rows(
            "SELECT d.name, m.state FROM rollout_devices m JOIN devices d ON d.id = m.device_id"
            " WHERE m.rollout_id = :r ORDER BY d.name", r=rid))  # fmt: skip

    def by_state(self, rid: int) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for n, s in self.members(rid).items():
            out.setdefault(s, []).append(n)
        return out

    def rollout(self, rid: int) -> tuple:
        return tuple(self.rows("SELECT state, reason, wave FROM rollouts WHERE id = :r", r=rid)[0])

    def log(self, rid: int) -> list[tuple]:
        return [tuple(r) for r in self.rows(
            "SELECT d.name, l.event, l.detail FROM rollout_log l LEFT JOIN devices d ON d.id = l.device_id"
            " WHERE l.rollout_id = :r ORDER BY l.id", r=rid)]  # fmt: skip

    def summary(self, o: Orchestrator, rid: int) -> dict:
        with self.engine.connect() as c:
            return o.summary(c, rid)


FAST = dict(success="100%", max_failures="100%", min_devices=1, soak="0s", timeout="1h",
            rate="1000/min", health="5s")  # fmt: skip


def start(env: Env, o: Orchestrator, target="fleet=f1", waves="100%", **kw) -> int:
    plan = o.create("greenhouse@2", target, waves, **{**FAST, **kw})
    o.start(plan.rollout_id)
    return plan.rollout_id


@pytest.fixture
def env(tmp_path):
    e = Env(f"sqlite:///{tmp_path / 'cloud.db'}", 10)
    yield e
    e.engine.dispose()


def test_create_plans_waves_and_dry_run_creates_nothing(env):
    o = env.orch()
    env.state("d08", "d09", online=False)
    dry = o.create("greenhouse@2", "fleet=f1", "2,50%,100%", dry_run=True)
    assert dry.rollout_id is None and dry.workflow == "greenhouse@2"
    assert [(w["wave"], w["size"], w["count"]) for w in dry.waves] == [
        (1, "2", 2), (2, "50%", 3), (3, "100%", 5),
    ]  # fmt: skip
    names = [n for w in dry.waves for n in w["devices"]]
    assert sorted(names) == [f"d{i:02d}" for i in range(10)]  # each device once
    assert sum(w["offline"] for w in dry.waves) == 2
    for w in dry.waves:
        assert w["count"] == len(w["devices"])
        assert w["offline"] == len({"d08", "d09"} & set(w["devices"]))
    assert dry.excluded == {}
    assert env.rows("SELECT count(*) FROM rollouts")[0][0] == 0
    assert env.rows("SELECT count(*) FROM rollout_devices")[0][0] == 0
    assert env.rows("SELECT count(*) FROM rollout_log")[0][0] == 0
    # the real thing: a draft with the members in their waves, and a log line
    plan = o.create("greenhouse@2", "fleet=f1", "2,50%,100%", rate="10/s", soak="5m")
    assert plan.rollout_id == 1
    r = env.rows("SELECT state, waves, rate_per_min, soak_s, success_pct, wave FROM rollouts")[0]
    assert tuple(r) == ("draft", json.dumps(["2", "50%", "100%"]), 600, 300, 95.0, 0)
    got = env.rows(
        "SELECT d.name, m.wave, m.state, m.prev_wf, m.prev_ver FROM rollout_devices m"
        " JOIN devices d ON d.id = m.device_id"
    )
    assert {(n, w, s, pw, pv) for n, w, s, pw, pv in got} == {
        (n, w["wave"] - 1, "queued", "greenhouse", 1) for w in plan.waves for n in w["devices"]
    }
    assert env.log(1) == [(None, "created", "greenhouse@2 to 10 device(s) in 3 wave(s)")]
    assert env.orch().tick() == []  # a draft sends nothing


def test_create_excludes_devices_on_the_version_and_busy_ones(env):
    o = env.orch()
    env.state("d00", "d01", ver=2)
    plan = o.create("greenhouse@2", "fleet=f1", "100%", dry_run=True)
    assert plan.excluded == {"already running this version": ["d00", "d01"]}
    assert plan.waves[0]["count"] == 8
    first = start(env, o, target="device=d0[2-4]")
    plan = o.create("greenhouse@2", "all", "1,100%", dry_run=True)
    assert plan.excluded == {
        "busy in rollout 1": ["d02", "d03", "d04"],
        "already running this version": ["d00", "d01"],
    }
    assert sorted(n for w in plan.waves for n in w["devices"]) == [
        f"d{i:02d}" for i in range(5, 10)
    ]
    assert first == 1
    # nothing left: a clear error naming what was excluded
    msg = refused(o.create, "greenhouse@2", "device=d0[0-4]", "100%")
    assert msg == (
        "--target 'device=d0[0-4]' selects no device that needs greenhouse@2 "
        "(excluded: busy in rollout 1: 3, already running this version: 2)"
    )
    assert refused(o.create, "greenhouse@2", "fleet=nope", "100%") == (
        "--target 'fleet=nope' selects no device that needs greenhouse@2"
    )


def test_create_refuses_bad_requests(env):
    o = env.orch()
    assert refused(o.create, "greenhouse@7", "all") == (
        "no workflow 'greenhouse@7' in the registry (known: greenhouse@1, greenhouse@2)"
    )
    assert refused(o.create, "greenhouse@2", "colour=red").startswith("--target: unknown field")
    assert refused(o.create, "greenhouse@2", "all", "5,50%").startswith("--waves: the last wave")
    assert refused(lambda: o.create("greenhouse@2", "all", min_devices=0)) == (
        "--min-devices must be at least 1"
    )
    assert refused(lambda: o.create("greenhouse@2", "all", health="0s")) == (
        "--health must be between 1s and 1d"
    )
    assert refused(lambda: o.create("greenhouse@2", "all", success="101%")) == (
        "--success: '101%' is outside 0..100%"
    )
    assert refused(lambda: o.create("greenhouse@2", "all", rate="lots")).startswith("--rate: ")
    assert env.rows("SELECT count(*) FROM rollouts")[0][0] == 0


def test_tags_select_devices(env):
    with env.engine.begin() as c:
        c.execute(sa.insert(TAGS), [
            {"device_id": 1, "key": "site", "value": "north"},
            {"device_id": 2, "key": "site", "value": "north"},
            {"device_id": 3, "key": "site", "value": "south"},
        ])  # fmt: skip
    o = env.orch()
    plan = o.create("greenhouse@2", "tag.site=north", "100%", dry_run=True)
    assert sorted(plan.waves[0]["devices"]) == ["d00", "d01"]
    plan = o.create("greenhouse@2", "tag.site!=north,device=d0[0-4]", "100%", dry_run=True)
    assert sorted(plan.waves[0]["devices"]) == ["d02", "d03", "d04"]


def test_dispatch_signs_commands_and_respects_the_rate(env):
    o = env.orch()
    rid = start(env, o, rate="4/min")
    out = o.tick()
    assert len(out) == 4
    assert len({x.command_id for x in out}) == 4
    assert o.tick() == []  # the minute's budget is spent
    env.advance(30_000)
    assert o.tick() == []
    env.advance(31_000)
    later = o.tick()
    assert len(later) == 4 and not {x.command_id for x in later} & {x.command_id for x in out}
    # each command is the board's: signed with its own key, for it alone, carrying v2's blob
    for x in out:
        name = x.topic.split("/")[2]
        assert x.topic == f"orrery/f1/{name}/down/cmd"
        did = env.rows("SELECT id FROM devices WHERE name = :n", n=name)[0][0]
        assert x.command_id == f"rollout:{rid}:{did}:1"
        code, cmd, _ = codec.Verifier(keys.device_key(SECRET, name), name).check(
            x.payload, env.now // 1000
        )
        assert code == codec.OK
        assert cmd["args"]["sha256"] == V2.hash and cmd["args"]["health_s"] == 5
        assert base64.b64decode(cmd["args"]["blob"]) == V2.blob
        assert cmd["exp"] - cmd["iat"] == 3600  # the rollout's timeout
        other = "d00" if name != "d00" else "d01"
        assert codec.Verifier(keys.device_key(SECRET, other), other).check(x.payload, env.now // 1000)[0] in (
            codec.BAD_SIGNATURE, codec.MALFORMED)  # fmt: skip
        env_ = json.loads(x.payload)
        body = json.loads(env_["b"])
        body["args"]["health_s"] = 0
        tampered = json.dumps({**env_, "b": json.dumps(body)}).encode()
        assert (
            codec.Verifier(keys.device_key(SECRET, name), name).check(tampered, env.now // 1000)[0]
            == codec.BAD_SIGNATURE
        )
    assert set(env.by_state(rid)) == {"sent", "queued"}
    assert len(env.by_state(rid)["sent"]) == 8
    # what a publisher hands to the broker is the stored envelope
    with env.engine.connect() as c:
        stored = dict(c.execute(sa.text("SELECT id, envelope FROM command_bodies")).all())
    assert all(stored[x.command_id].encode() == x.payload for x in out + later)


def test_install_commands_are_signed_in_each_boards_time(env):
    # d00's clock is a year fast and d01's an hour slow: their live batches say so
    t = env.now // 1000
    for name, off in (("d00", 365 * 86400), ("d01", -3600)):
        batch = codec.encode_batch(env.boots[name], 1, [(100, 0, 1, 0)], codec.SYNCED, (100, 0, t + off, 0))
        env.send([Message(codec.topic("f1", name, codec.READINGS), batch)])
    o = env.orch()
    start(env, o, target="device=d0[01]")
    out = {x.topic.split("/")[2]: x for x in o.tick()}
    for name, off in (("d00", 365 * 86400), ("d01", -3600)):
        body = json.loads(json.loads(out[name].payload)["b"])
        assert body["skew"] == off
        board = codec.Verifier(keys.device_key(SECRET, name), name)
        assert board.check(out[name].payload, t + off)[0] == codec.OK  # on the board's clock
        unskewed = codec.sign_command(keys.device_key(SECRET, name), "x", name, "install_workflow",
                                      body["args"], body["iat"], body["exp"])  # fmt: skip
        assert board.check(unskewed, t + off)[0] == codec.EXPIRED  # what it was before


def test_offline_devices_never_block_and_get_their_command_on_pull(env):
    env.state("d07", "d08", "d09", online=False)
    o = env.orch()
    rid = start(env, o, waves="3,100%")
    out = o.tick()
    assert out and not {x.topic.split("/")[2] for x in out} & {"d07", "d08", "d09"}
    for _ in range(6):
        env.board(out)
        env.advance(1000)
        out = o.tick()
    assert env.rollout(rid)[0] == "finished"
    assert env.by_state(rid) == {"offline-pending": ["d07", "d08", "d09"],
                                 "succeeded": [f"d{i:02d}" for i in range(7)]}  # fmt: skip
    s = env.summary(o, rid)
    assert s["converged_text"] == "converged 70%, 3 offline pending"
    assert (s["converged_pct"], s["offline_pending"]) == (70.0, 3)
    # d08 comes back and pulls its pending command: the same one, signed when it was queued
    env.state("d08")
    pulled = env.send([Message(codec.topic("f1", "d08", codec.PULL), codec.encode_pull(1))]).outgoing
    assert [x.command_id for x in pulled] == [f"rollout:{rid}:9:1"]
    o.tick()
    assert env.members(rid)["d08"] == "sent"
    env.board(pulled)
    o.tick()
    assert env.members(rid)["d08"] == "succeeded"
    assert env.summary(o, rid)["converged_text"] == "converged 80%, 2 offline pending"
    assert env.rows("SELECT count(*) FROM commands")[0][0] == 10  # one each, never twice


def test_an_expired_command_of_an_offline_device_is_queued_again(env):
    env.state("d09", online=False)
    o = env.orch()
    rid = start(env, o, target="device=d09", timeout="1m")
    assert o.tick() == []  # offline: nothing to publish, the command waits for its pull
    assert env.members(rid) == {"d09": "offline-pending"}
    env.advance(61_000)
    env.ingest.reconcile()  # expires commands past their exp
    assert env.rows("SELECT status FROM commands")[0][0] == "expired"
    o.tick()
    assert env.rows("SELECT id, status FROM commands ORDER BY id") == [
        (f"rollout:{rid}:10:1", "expired"), (f"rollout:{rid}:10:2", "queued"),
    ]  # fmt: skip
    assert env.members(rid) == {"d09": "offline-pending"}
    env.state("d09")
    pulled = env.send([Message(codec.topic("f1", "d09", codec.PULL), codec.encode_pull(1))]).outgoing
    assert [x.command_id for x in pulled] == [f"rollout:{rid}:10:2"]


def test_an_online_device_without_a_result_times_out(env):
    o = env.orch()
    rid = start(env, o, target="device=d0[01]", timeout="10m", success="0%")
    out = o.tick()
    env.ack(out[0].command_id, codec.IN_PROGRESS)
    env.advance(599_000)
    o.tick()
    assert sorted(env.members(rid).values()) == ["acked", "sent"]
    env.advance(2_000)
    o.tick()
    assert sorted(env.members(rid).values()) == ["acked", "timed-out"]
    assert [d for _, e, d in env.log(rid) if e == "timed-out"] == ["no result within 600s"]


def test_a_device_joining_the_target_is_added_to_the_current_wave(env):
    o = env.orch()
    rid = start(env, o, waves="2,100%", success="100%")
    env.board(o.tick())
    o.tick()
    assert env.rollout(rid)[2] == 0  # still wave 1 (0-based), met and soaking
    env.add("late1")  # on v1: joins
    env.add("late2", ver=2)  # already on v2: nothing to do
    env.add("other", fleet="f2")  # not in the target
    env.advance(5_000)  # the orchestrator looks for joiners every 5 s
    joined = o.tick()
    assert [x.topic for x in joined] == ["orrery/f1/late1/down/cmd"]
    env.board(joined)
    m = env.members(rid)
    assert "late1" in m and "late2" not in m and "other" not in m
    wave = env.rows("SELECT m.wave FROM rollout_devices m JOIN devices d ON d.id = m.device_id"
                    " WHERE d.name = 'late1'")[0][0]  # fmt: skip
    assert wave == env.rollout(rid)[2]
    assert ("late1", "joined", f"late1 joined the target; added to wave {wave + 1}") in env.log(rid)
    for _ in range(8):
        env.board(o.tick())
        env.advance(1000)
    assert env.rollout(rid)[0] == "finished"
    assert set(env.members(rid).values()) == {"succeeded"} and len(env.members(rid)) == 11


def test_failure_threshold_waits_for_the_minimum_sample_then_pauses(env):
    o = env.orch()
    rid = start(env, o, max_failures="20%", min_devices=5, success="50%", rate="4/min")
    out = o.tick()
    env.board(out[:2])
    env.board(out[2:], code=codec.FAILED)
    o.tick()
    # 2 of 4 decided failed (50% > 20%), but 4 is below the minimum sample of 5
    assert env.rollout(rid)[0] == "running"
    env.advance(61_000)
    out = o.tick()  # the next 4
    env.ack(out[0].command_id, codec.BAD_SIGNATURE, "signature mismatch")
    o.tick()
    state, reason, _ = env.rollout(rid)
    assert state == "paused"
    assert reason == "failure threshold: 3 of 5 decided devices failed (60.0% > 20%)"
    assert "auto-paused" in [e for _, e, _ in env.log(rid)]
    assert sorted(env.by_state(rid)) == ["failed", "queued", "rejected", "sent", "succeeded"]
    assert env.by_state(rid)["rejected"] == [env.device_of(out[0].command_id)]
    env.advance(61_000)
    assert o.tick() == []  # paused: nothing new is sent
    # in-flight devices still report while paused
    env.board(out[1:2])
    o.tick()
    assert len(env.by_state(rid)["succeeded"]) == 3


def test_a_wave_ending_below_the_success_threshold_pauses(env):
    o = env.orch()
    rid = start(env, o, waves="4,100%", success="100%")
    out = o.tick()
    assert len(out) == 4
    env.board(out[:3])
    env.board(out[3:], code=codec.FAILED)
    o.tick()
    assert env.rollout(rid)[:2] == (
        "paused",
        "wave 1 ended below the success threshold: 3 of 4 (75.0% < 100%)",
    )
    # the operator resumes: the failure is still there, so it pauses again
    o.resume(rid)
    assert env.rollout(rid)[:2] == ("running", None)
    o.tick()
    assert env.rollout(rid)[0] == "paused"


def test_cancel_cancels_queued_at_once_and_lets_in_flight_finish(env):
    o = env.orch()
    rid = start(env, o, rate="4/min")
    out = o.tick()
    a, b, c, d = out
    env.ack(a.command_id, codec.IN_PROGRESS)
    env.state(env.device_of(a.command_id), ver=2)  # installing
    env.ack(b.command_id, codec.IN_PROGRESS)
    o.tick()
    assert o.cancel(rid) == {"canceled_devices": 6}
    assert env.rollout(rid)[:2] == ("canceled", "canceled by operator")
    assert sorted(env.members(rid).values()) == ["acked", "canceled", "canceled", "canceled",
        "canceled", "canceled", "canceled", "installing", "sent", "sent"]  # fmt: skip
    env.advance(61_000)
    assert o.tick() == []  # nothing new after a cancel
    env.ack(a.command_id, codec.OK)
    env.ack(b.command_id, codec.FAILED, "health window failed")
    o.tick()
    got = env.members(rid)
    assert got[env.device_of(a.command_id)] == "succeeded"
    assert got[env.device_of(b.command_id)] == "failed"
    # c and d never answer: they time out, the rollout is never stuck on them
    env.advance(3_600_000)
    o.tick()
    assert {got_state for got_state in env.members(rid).values()} <= {
        "succeeded", "failed", "timed-out", "canceled",
    }  # fmt: skip
    assert env.members(rid)[env.device_of(c.command_id)] == "timed-out"
    assert refused(o.cancel, rid) == f"rollout {rid} is already canceled"
    assert [e for _, e, _ in env.log(rid) if e == "canceled"][:1] == ["canceled"]


def test_cancel_force_cancels_in_flight_devices_and_their_commands(env):
    o = env.orch()
    rid = start(env, o, rate="4/min")
    out = o.tick()
    env.ingest.mark_sent([out[0].command_id])
    env.ack(out[1].command_id, codec.IN_PROGRESS)
    o.tick()
    assert o.cancel(rid, force=True) == {"canceled_devices": 10}
    assert set(env.members(rid).values()) == {"canceled"}
    st = dict(env.rows("SELECT id, status FROM commands"))
    # queued and sent commands are withdrawn (a pull no longer returns them); the one the
    # board already accepted can only finish
    assert st == {out[0].command_id: "canceled", out[1].command_id: "acked",
                  out[2].command_id: "canceled", out[3].command_id: "canceled"}  # fmt: skip
    name = env.device_of(out[2].command_id)
    assert env.send([Message(codec.topic("f1", name, codec.PULL), codec.encode_pull(1))]).outgoing == []
    env.ack(out[1].command_id, codec.OK)
    o.tick()
    assert set(env.members(rid).values()) == {"canceled"}


def test_retry_failed_requeues_only_the_failures_with_a_new_command_id(env):
    o = env.orch()
    rid = start(env, o, max_failures="10%", min_devices=3)
    out = o.tick()
    bad = env.board(out[:3], code=codec.FAILED)
    env.board(out[3:5])
    env.ack(out[5].command_id, codec.REJECTED, "validation failed")
    o.tick()
    assert env.rollout(rid)[0] == "paused"
    assert sorted(env.by_state(rid)["failed"]) == sorted(bad)
    first_ids = {x.command_id for x in out}
    assert o.retry_failed(rid) == 4  # 3 failed + 1 rejected
    retried = sorted(bad + [env.device_of(out[5].command_id)])
    assert env.by_state(rid)["queued"] == retried
    assert o.tick() == []  # still paused: the operator resumes
    o.resume(rid)
    again = o.tick()
    assert sorted(x.topic.split("/")[2] for x in again) == retried
    for x in again:
        assert x.command_id.endswith(":2") and x.command_id not in first_ids
        assert x.command_id.rsplit(":", 1)[0] + ":1" in first_ids
    assert "retry" in [e for _, e, _ in env.log(rid)]
    env.board(again)
    env.board(out[6:])
    for _ in range(3):
        env.board(o.tick())
        env.advance(1000)
    assert env.rollout(rid)[0] == "finished"
    assert set(env.members(rid).values()) == {"succeeded"}
    # nothing failed: a retry changes nothing
    assert o.retry_failed(rid) == 0
    assert env.rollout(rid)[0] == "finished"


def test_retry_of_a_partial_rollout_runs_it_again(env):
    o = env.orch()
    rid = start(env, o, target="device=d0[0-3]", success="50%")
    out = o.tick()
    env.board(out[:3])
    env.board(out[3:], code=codec.FAILED)
    for _ in range(2):
        o.tick()
    # the threshold was met, but a device failed: partial, with the reason, not finished
    assert env.rollout(rid)[:2] == (
        "partial", "1 of 4 device(s) did not take greenhouse@2 (1 failed): FAILED: health window failed"
    )  # fmt: skip
    failed = env.by_state(rid)["failed"]
    assert o.retry_failed(rid) == 1
    assert env.rollout(rid) == ("running", None, 0)
    again = o.tick()
    assert [x.topic.split("/")[2] for x in again] == failed
    assert again[0].command_id.endswith(":2")
    # the thresholds are still met, but the retried device is online and has no result yet
    assert env.rollout(rid)[0] == "running"
    env.board(again)
    o.tick()
    assert env.rollout(rid)[:2] == ("finished", None)
    assert env.summary(o, rid)["converged_text"] == "converged 100%, 0 offline pending"


def test_retry_of_a_canceled_rollout_is_refused(env):
    o = env.orch()
    rid = start(env, o)
    o.cancel(rid)
    assert refused(o.retry_failed, rid) == f"rollout {rid} is canceled; create a new one"


def test_rollback_puts_changed_devices_back_on_their_previous_version(env):
    env.add("fresh", ver=None)  # runs no workflow: nothing to go back to
    o = env.orch()
    rid = start(env, o, target="device=d0[0-3],device!=d03", success="100%")
    o2 = start(env, o, target="device=fresh")
    assert o2 != rid
    out = o.tick()
    env.board([x for x in out if x.topic.split("/")[2] in ("d00", "d01")])
    o.tick()
    assert env.by_state(rid) == {"sent": ["d02"], "succeeded": ["d00", "d01"]}
    made = o.rollback(rid)
    assert len(made) == 1
    back = made[0]
    assert env.rollout(rid)[0] == "canceled"
    assert env.rollout(back)[0] == "running"
    assert env.rows("SELECT w.name, w.version, r.target FROM rollouts r JOIN workflows w ON w.id = r.workflow_id WHERE r.id = :r", r=back)[0] == (
        "greenhouse", 1, f"rollback of rollout {rid}")  # fmt: skip
    assert env.members(back) == {"d00": "queued", "d01": "queued"}
    assert (
        None,
        "rolled-back",
        f"rollout {back} puts 2 device(s) back on greenhouse@1",
    ) in env.log(rid)
    cmds = [x for x in o.tick() if x.command_id.startswith(f"rollout:{back}:")]
    assert sorted(x.topic.split("/")[2] for x in cmds) == ["d00", "d01"]
    for x in cmds:
        name = x.topic.split("/")[2]
        _, cmd, _ = codec.Verifier(keys.device_key(SECRET, name), name).check(
            x.payload, env.now // 1000
        )
        assert cmd["args"]["sha256"] == V1.hash and base64.b64decode(cmd["args"]["blob"]) == V1.blob
    # a device that ran nothing before is not "rolled back" to nothing
    env.board([x for x in out if x.topic.split("/")[2] == "fresh"])
    o.tick()
    assert o.rollback(o2) == []


def test_start_refuses_a_rollout_whose_devices_another_one_is_changing(env):
    o = env.orch()
    a = o.create("greenhouse@2", "device=d0[0-4]", "100%", **FAST).rollout_id
    b = o.create("greenhouse@2", "device=d0[3-7]", "100%", **FAST).rollout_id  # drafts overlap
    o.start(a)
    assert refused(o.start, b) == (
        f"rollout {b} cannot start: 2 of its devices are being changed by rollout {a} "
        f"(d03, d04); start it once rollout {a} is done, or cancel one of them"
    )
    assert env.rollout(b)[0] == "draft"
    o.cancel(a)
    o.start(b)
    assert env.rollout(b)[0] == "running"
    assert refused(o.start, b) == f"rollout {b} is running; started needs it draft"


def test_health_gate_pauses_on_a_significant_regression(db_url):
    env = Env(db_url, 10)
    env.add(*[f"e{i:02d}" for i in range(30)])
    o = env.orch()
    rid = start(env, o, waves="10,100%", soak="10m")
    env.board(o.tick())
    o.tick()
    assert "wave-met" in [e for _, e, _ in env.log(rid)]
    up = env.by_state(rid)["succeeded"]
    assert len(up) == 10
    # the upgraded boards reboot again and again during the soak; the others barely
    for name in up:
        env.reboot(name, times=3)
    env.reboot(env.by_state(rid)["queued"][0], ver=1)
    env.advance(599_000)
    o.tick()
    assert env.rollout(rid)[0] == "running"  # still soaking
    env.advance(2_000)
    o.tick()
    state, reason, wave = env.rollout(rid)
    assert (state, wave) == ("paused", 0)
    assert reason.startswith("health gate: reboots: 30 on 10 upgraded vs 1 on 30 not upgraded (p=")
    with env.engine.connect() as c:
        ev = o.health_gate(c, c.execute(sa.select(ROLLOUTS)).first())
    assert (ev["upgraded"], ev["control"]) == (10, 30)
    assert ev["metrics"]["reboots"]["upgraded"] == 30 and ev["metrics"]["reboots"]["p"] < 0.01
    assert ev["metrics"]["link_drops"] == {"upgraded": 0, "control": 0, "p": 1.0}
    # the snapshot taken when the wave was met: every member's counters as they were
    base = env.rows("SELECT baseline FROM rollout_devices")
    assert len(base) == 40
    assert all(
        json.loads(b) == {"reboots": 0, "link_drops": 0, "invalid": 0, "alarms": 0} for (b,) in base
    )
    env.engine.dispose()


def test_health_gate_ignores_noise(env):
    env.add(*[f"e{i:02d}" for i in range(30)])
    o = env.orch()
    rid = start(env, o, waves="10,100%", soak="10m")
    env.board(o.tick())
    o.tick()
    up = env.by_state(rid)["succeeded"]
    ctl = env.by_state(rid)["queued"]
    # a reboot on two upgraded boards, and on five of the others: nothing significant
    for name in up[:2]:
        env.reboot(name)
    for name in ctl[:5]:
        env.reboot(name, ver=1)
    env.advance(601_000)
    o.tick()
    state, reason, wave = env.rollout(rid)
    assert (state, reason, wave) == ("running", None, 1)
    assert (None, "wave-advanced", "wave 2 of 2 starts") in env.log(rid)


def test_binomial_tail_is_exact_and_does_not_overflow():
    def exact(k, n, p: Fraction) -> float:
        a, b = p.numerator, p.denominator  # in integers: sum C(n,i) a^i (b-a)^(n-i) / b^n
        hits = sum(math.comb(n, i) * a**i * (b - a) ** (n - i) for i in range(max(k, 0), n + 1))
        return float(Fraction(hits, b**n))

    for n in (0, 1, 7, 40):
        for k in range(-1, n + 2):
            for p in (Fraction(1, 100), Fraction(1, 4), Fraction(1, 2), Fraction(9, 10)):
                want = exact(k, n, p)
                assert binomial_tail(k, n, float(p)) == pytest.approx(want, rel=1e-9, abs=1e-15)
    # counts of a large fleet (math.comb(n, i) * p**i overflows a float here)
    tenth = Fraction(1, 10)
    assert binomial_tail(400, 3000, 0.1) == pytest.approx(exact(400, 3000, tenth), rel=1e-9)
    assert binomial_tail(300, 3000, 0.1) == pytest.approx(exact(300, 3000, tenth), rel=1e-9)
    assert binomial_tail(1_000_000, 2_000_000, 0.5) == pytest.approx(0.5, abs=1e-3)


@pytest.fixture
def dbenv(db_url):
    e = Env(db_url, 6)
    yield e
    e.engine.dispose()


def test_two_orchestrators_never_send_a_command_twice(dbenv):
    env = dbenv
    a, b = env.orch("a", lease_ms=30_000), env.orch("b", lease_ms=30_000)
    rid = start(env, a)
    sent = a.tick()
    assert len(sent) == 6
    assert b.tick() == []  # a holds the rollout's lease
    env.advance(31_000)  # a is gone: its lease runs out
    assert b.tick() == []  # b takes over, and finds nothing left to send
    assert a.tick() == []  # now b holds the lease
    assert env.rows("SELECT lease_owner FROM rollouts WHERE id = :r", r=rid)[0][0] == "b"
    # a restarted orchestrator (same owner, new instance) re-derives everything from the database
    assert env.orch("b").tick() == []
    env.board(sent)
    env.advance(31_000)
    for _ in range(3):
        assert b.tick() == [] and a.tick() == []
    assert env.rollout(rid)[0] == "finished"
    assert env.rows("SELECT count(*), count(DISTINCT device_id) FROM commands")[0] == (6, 6)
    # the command ids are the idempotency check: queueing one again inserts nothing
    with env.engine.begin() as c:
        assert commands.queue(c, SECRET, device_id=1, device="d00", fleet="f1", cmd_id=f"rollout:{rid}:1:1",
                       kind="install_workflow", args={}, source="x", now_ms=env.now) is None  # fmt: skip


def test_audit_log_and_summary(dbenv):
    env = dbenv
    o = env.orch()
    rid = start(env, o, waves="2,100%")
    accepted: list[commands.Outgoing] = []
    installing: list[commands.Outgoing] = []
    for _ in range(10):
        # a tick between each step: boards accept and install, then report success
        for x in installing:
            env.ack(x.command_id, codec.OK)
        for x in accepted:
            env.ack(x.command_id, codec.IN_PROGRESS, "health window")
            env.state(x.topic.split("/")[2], ver=2)
        installing, accepted = accepted, o.tick()
        env.advance(1000)
    s = env.summary(o, rid)
    assert (s["state"], s["workflow"], s["devices"], s["converged_pct"]) == (
        "finished", "greenhouse@2", 6, 100.0)  # fmt: skip
    assert [(w["wave"], w["size"], w["total"], w["states"]) for w in s["waves"]] == [
        (1, "2", 2, {"succeeded": 2}), (2, "100%", 4, {"succeeded": 4}),
    ]  # fmt: skip
    events = [e for _, e, _ in env.log(rid)]
    assert events[:2] == ["created", "started"]
    assert events[-1] == "finished"
    assert events.count("wave-met") == 2 and events.count("wave-advanced") == 1
    # every device went sent -> installing -> succeeded, each step logged
    per = {}
    for name, e, _ in env.log(rid):
        if name:
            per.setdefault(name, []).append(e)
    assert all(v == ["sent", "installing", "succeeded"] for v in per.values()), per
    details = [d for n, e, d in env.log(rid) if n == "d00"]
    assert details[0] == f"rollout:{rid}:1:1" and details[2] == "health window passed"
    assert len(per) == 6
    assert refused(o.pause, rid) == f"rollout {rid} is finished; paused needs it running"
    assert refused(o.start, 99) == "no rollout 99 (see `orrery rollout list`)"


# --- migration compatibility, partial rollouts, idempotent pause and resume -----------------


def on_v3(env: Env, o: Orchestrator, names: list[str]) -> int:
    """Roll greenhouse@3 out to ``names`` (on v1); every board takes it. Returns the rollout."""
    with env.engine.begin() as c:
        registry.push(c, V3_JSON, None, 0)
    plan = o.create("greenhouse@3", "device=" + ("d*" if len(names) == len(env.boots) else names[0]),
                    "100%", **FAST)  # fmt: skip
    o.start(plan.rollout_id)
    for x in o.tick():
        env.ack(x.command_id, codec.IN_PROGRESS, "health window")
        env.state(x.topic.split("/")[2], ver=3)
        env.ack(x.command_id, codec.OK)
    o.tick()
    o.tick()
    assert env.rollout(plan.rollout_id)[0] == "finished"
    return plan.rollout_id


def test_rollback_is_refused_when_devices_would_reject_their_previous_version(tmp_path):
    # the report: `rollout rollback` said it worked while 19 of 28 boards rejected v1 ("state
    # 'cooling' of greenhouse v3 has no place in v1")
    env = Env(f"sqlite:///{tmp_path / 'o.db'}", 28)
    o = env.orch()
    names = sorted(env.boots)
    rid = on_v3(env, o, names)
    cooling = names[:19]
    for n in cooling:
        env.event(n, "cooling", "cooling_started")
    for n in names[19:]:
        env.event(n, "cooling", "cooling_started")
        env.event(n, "idle")  # it left "cooling" again: idle has a place in v1
    want = (
        "19 device(s) would reject greenhouse@1: the state they last reported has no place in "
        "it: " + ", ".join(f"{n} (state 'cooling' of greenhouse v3 has no place in v1)" for n in cooling[:8])
        + " … (+11); push a version whose migrate map places that state, or wait until they "
        "have left it"
    )  # fmt: skip
    assert refused(o.rollback_plan, rid) == want  # what `rollback --dry-run` shows
    assert refused(o.rollback, rid) == want
    assert env.rows("SELECT id, state FROM rollouts") == [(rid, "finished")]  # nothing changed
    # a new rollout of v1 is refused the same way, dry run or not
    assert refused(lambda: o.create("greenhouse@1", "all", dry_run=True)) == want
    # once they have left "cooling", the rollback goes ahead
    for n in cooling:
        env.event(n, "idle")
    assert o.rollback_plan(rid) == [("greenhouse", 1, names)]
    [back] = o.rollback(rid)
    assert env.rollout(back)[0] == "running"


def test_a_rollout_with_rejections_ends_partial_with_the_reason(tmp_path):
    # the companion could not know (no events): the boards reject on install
    env = Env(f"sqlite:///{tmp_path / 'o.db'}", 28)
    o = env.orch()
    names = sorted(env.boots)
    rid = on_v3(env, o, names)
    [back] = o.rollback(rid)
    why = "migration: state 'cooling' of greenhouse v3 has no place in v1: no migrate entry and no state of that name"
    out = o.tick()
    assert len(out) == 28
    for i, x in enumerate(out):
        if i < 19:
            env.ack(x.command_id, codec.REJECTED, why)
        else:
            env.ack(x.command_id, codec.IN_PROGRESS, "health window")
    o.tick()
    o.tick()
    assert env.rollout(back)[0] == "running"  # 9 boards are still in their health window
    for x in out[19:]:
        env.state(x.topic.split("/")[2], ver=1)
        env.ack(x.command_id, codec.OK)
    o.tick()
    o.tick()
    assert env.rollout(back)[:2] == (
        "partial",
        f"19 of 28 device(s) did not take greenhouse@1 (19 rejected): REJECTED: {why}",
    )
    assert env.log(back)[-1] == (
        None, "partial", f"converged 32%, 0 offline pending; 19 of 28 device(s) did not take "
        f"greenhouse@1 (19 rejected): REJECTED: {why}",
    )  # fmt: skip


def test_a_finished_rollout_becomes_partial_when_a_late_device_fails(env):
    env.state("d09", online=False)
    o = env.orch()
    rid = start(env, o, success="90%")
    out = o.tick()
    env.board(out)
    o.tick()
    o.tick()
    assert env.rollout(rid)[:2] == ("finished", None)  # d09 is offline-pending
    env.state("d09")
    [late] = env.send([Message(codec.topic("f1", "d09", codec.PULL), codec.encode_pull(1))]).outgoing
    env.ack(late.command_id, codec.REJECTED, "board has no channel 'adc7'")
    o.tick()
    assert env.rollout(rid)[:2] == (
        "partial",
        "1 of 10 device(s) did not take greenhouse@2 (1 rejected): REJECTED: board has no channel 'adc7'",
    )


def test_pause_and_resume_are_idempotent(env):
    o = env.orch()
    rid = start(env, o)
    assert o.pause(rid) is True
    assert o.pause(rid) is False  # already paused: no error, nothing logged
    assert o.resume(rid) is True
    assert o.resume(rid) is False
    assert [e for _, e, _ in env.log(rid)] == ["created", "started", "paused", "resumed"]
    o.cancel(rid)
    assert refused(o.pause, rid) == f"rollout {rid} is canceled; paused needs it running"


def test_members_reference_their_rollout_and_devices(dbenv):
    """rollout_devices has no foreign keys (migration 0005): planning, joining and retrying
    insert only members of an existing rollout and registered devices."""
    env = dbenv
    o = env.orch(join_every_ms=0)
    rid = start(env, o, waves="2,100%")
    env.add("late1", "late2")
    env.board(o.tick())
    o.tick()
    assert env.rows("SELECT count(*) FROM rollout_devices WHERE rollout_id = :r", r=rid)[0][0] == 8
    orphans = env.rows(
        "SELECT m.rollout_id, m.device_id FROM rollout_devices m"
        " LEFT JOIN devices d ON d.id = m.device_id LEFT JOIN rollouts r ON r.id = m.rollout_id"
        " WHERE d.id IS NULL OR r.id IS NULL"
    )
    assert orphans == []


def _command_rows(env) -> list[tuple]:
    return [tuple(r) for r in env.rows(
        "SELECT id, status, acked_ms, ack_code, ack_detail FROM commands ORDER BY id")]  # fmt: skip


def test_a_group_of_acks_gives_the_rows_of_the_acks_one_by_one(dbenv):
    """Ingest applies a group's acks together (commands.apply_acks): the same command rows,
    dead letters and device touches as one message at a time, whatever the order."""
    env = dbenv
    o = env.orch()
    start(env, o)
    sent = {x.topic.split("/")[2]: x.command_id for x in o.tick()}
    assert len(sent) == 6

    def ack(dev: str, cmd_id: str, code: int, detail: str = "") -> Message:
        return Message(codec.topic("f1", dev, codec.ACKS), codec.encode_ack(cmd_id, code, detail))

    group = [
        ack("d00", sent["d00"], codec.IN_PROGRESS, "health window"),
        ack("d00", sent["d00"], codec.OK),
        ack("d01", sent["d01"], codec.OK),
        ack("d01", sent["d01"], codec.IN_PROGRESS, "late"),  # never turns done back
        ack("d02", sent["d02"], codec.DUPLICATE),
        ack("d03", sent["d03"], codec.FAILED, "no room"),
        ack("d03", sent["d03"], codec.DUPLICATE),  # never replaces a result
        Message(codec.topic("f1", "d04", codec.PULL), codec.encode_pull(env.boots["d04"])),
        ack("d04", sent["d05"], codec.OK),  # another device's command
        ack("d04", "no-such-command", codec.OK),
        ack("d05", sent["d05"], codec.EXPIRED, "issued in the future"),
    ]
    before = _command_rows(env)
    ing = Ingest(env.engine, clock=env.clock)
    together = ing.handle(group)
    rows_together = _command_rows(env)
    dead_together = env.rows("SELECT device, reason FROM dead_letters ORDER BY id")
    with env.engine.begin() as c:  # back to the commands as they were, and again one by one
        for cmd_id, status, acked_ms, code, detail in before:
            c.execute(
                sa.text("UPDATE commands SET status = :s, acked_ms = :a, ack_code = :c,"
                        " ack_detail = :d WHERE id = :i"),
                {"s": status, "a": acked_ms, "c": code, "d": detail, "i": cmd_id},
            )  # fmt: skip
        c.execute(sa.text("DELETE FROM dead_letters"))
    one_by_one = [Ingest(env.engine, clock=env.clock).handle([m]) for m in group]
    assert _command_rows(env) == rows_together != before
    assert env.rows("SELECT device, reason FROM dead_letters ORDER BY id") == dead_together
    assert [r[1] for r in dead_together] == [
        f"ack for unknown command: {sent['d05']!r}",
        "ack for unknown command: 'no-such-command'",
    ]
    assert together.dead == sum(x.dead for x in one_by_one) == 2
    assert [x.command_id for x in together.outgoing] == [
        x.command_id for o1 in one_by_one for x in o1.outgoing
    ]
    statuses = {r[0]: r[1] for r in rows_together}
    assert [statuses[sent[d]] for d in ("d00", "d01", "d02", "d03", "d05")] == [
        "done", "done", "done", "failed", "refused",
    ]  # fmt: skip


def test_a_broker_restart_during_the_soak_starts_it_over(db_url):
    # The broker went down mid-soak: its wills reached the companion for the boards it closed
    # first, the first wave's. Without a new soak the gate blames the upgrade for them.
    env = Env(db_url, 10)
    env.add(*[f"e{i:02d}" for i in range(30)])
    o = env.orch()
    rid = start(env, o, waves="10,100%", soak="10m")
    env.board(o.tick())
    o.tick()
    up = env.by_state(rid)["succeeded"]
    env.advance(300_000)
    for name in up:  # the will, then the board is back
        env.state(name, ver=2, online=False)
        env.state(name, ver=2)

    def regressed():
        with env.engine.connect() as c:
            r = c.execute(sa.select(ROLLOUTS).where(ROLLOUTS.c.id == rid)).first()
            return o.health_gate(c, r)["regressed"]

    assert regressed() == [
        "link_drops: 10 on 10 upgraded vs 0 on 30 not upgraded (p=" + regressed()[0].split("p=")[1]
    ]
    assert o.broker_restarted() == [rid]
    assert regressed() == []
    env.advance(301_000)
    o.tick()
    assert env.rollout(rid)[0] == "running"  # soaking again: 5 min of the 10 are done
    env.advance(300_000)
    o.tick()
    events = [e for _, e, _ in env.log(rid)]
    assert "soak-restarted" in events and "wave-advanced" in events
    assert env.rollout(rid)[:2] == ("running", None)
    env.engine.dispose()


def test_acks_interleaved_with_the_commands_they_answer_give_the_rows_of_one_by_one(
    dbenv, caplog
):
    """orrery serve receives every command it publishes (down/cmd, audited) between the acks:
    those stay one group (one read and one UPDATE per result, on the driver's cursor), with the
    command rows, device touches, refused-by-clock log lines and dead letters (in the order of
    the messages) of applying each message alone."""
    env = dbenv
    o = env.orch()
    start(env, o)
    out = o.tick()
    sent = {x.topic.split("/")[2]: x.command_id for x in out}
    forged = codec.sign_command(b"k" * 32, "forged", "d00", "reboot", {}, 1, 100)

    def ack(dev: str, cmd_id: str, code: int, detail: str = "") -> Message:
        return Message(codec.topic("f1", dev, codec.ACKS), codec.encode_ack(cmd_id, code, detail))

    group = [Message(x.topic, x.payload) for x in out[:3]]  # the audit of the commands sent
    group += [
        ack("d00", sent["d00"], codec.OK),
        ack("d04", "no-such-command", codec.OK),
        ack("ghost", sent["d01"], codec.OK),  # an unknown device
        Message(codec.topic("f1", "d00", codec.CMD), forged),  # bad signature
        ack("d01", sent["d01"], codec.EXPIRED, "issued in the future"),
        Message(out[3].topic, out[3].payload),
        ack("d01", sent["d01"], codec.EXPIRED, "expired"),  # refused again: logged again
        ack("d02", sent["d02"], codec.OK),
        ack("d03", sent["d03"], codec.OK),
        ack("d02", sent["d02"], codec.DUPLICATE),  # never replaces a result
        ack("d05", sent["d05"], codec.EXPIRED, "issued in the future"),
        ack("d05", sent["d05"], codec.OK),  # a later result replaces the refusal
        Message(out[4].topic, out[4].payload),
    ]

    def run(groups: list[list[Message]]) -> tuple:
        with env.engine.begin() as c:  # every command sent, no dead letter, no device seen
            c.execute(sa.text("UPDATE commands SET status = 'sent', acked_ms = NULL,"
                              " ack_code = NULL, ack_detail = NULL"))  # fmt: skip
            c.execute(sa.text("DELETE FROM dead_letters"))
            c.execute(sa.text("UPDATE devices SET last_seen_ms = NULL"))
        caplog.clear()
        ing = Ingest(env.engine, secret=SECRET, clock=env.clock)
        dead = sum(ing.handle(g).dead for g in groups)
        refusals = [r.message for r in caplog.records if "command_refused_by_clock" in r.message]
        return (
            _command_rows(env),
            env.rows("SELECT device, reason FROM dead_letters ORDER BY id"),
            env.rows("SELECT name, last_seen_ms FROM devices ORDER BY name"),
            refusals,
            dead,
        )

    with caplog.at_level("INFO", logger="orrery.ingest"):
        together = run([group])
        one_by_one = run([[m] for m in group])
    assert together == one_by_one
    rows, dead, seen, refusals, n_dead = together
    assert [(d, r.split(":")[0]) for d, r in dead] == [
        ("d04", "ack for unknown command"), (None, "unknown device"), ("d00", "bad signature"),
    ]  # fmt: skip
    assert n_dead == 3
    statuses = {r[0]: r[1] for r in rows}
    assert [statuses[sent[d]] for d in ("d00", "d01", "d02", "d03", "d04", "d05")] == [
        "done", "refused", "done", "done", "sent", "done",
    ]  # fmt: skip
    assert [json.loads(r)["detail"] for r in refusals] == [
        "issued in the future", "expired", "issued in the future",
    ]  # fmt: skip
    assert [n for n, t in seen if t is not None] == ["d00", "d01", "d02", "d03", "d05"]


WAITING = "waiting for a safe state (in running; up to 600 s)"


def test_boards_waiting_for_a_safe_state_are_shown_and_unsafe_counts_as_a_failure(env):
    o = env.orch()
    rid = start(env, o, max_failures="5%", min_devices=1, timeout="60s")
    out = o.tick()
    assert len(out) == 10
    waiting = [o_.command_id for o_ in out[:2]]
    for cmd_id in waiting:  # their workflows are outside their safe_states
        env.ack(cmd_id, codec.IN_PROGRESS, WAITING)
    s = env.summary(o, rid)
    assert s["waiting_safe"] == 2
    assert sorted(w["device"] for w in s["waiting_safe_devices"]) == sorted(
        env.device_of(c) for c in waiting
    )
    assert {w["detail"] for w in s["waiting_safe_devices"]} == {WAITING}
    env.board(out[2:])
    # a member waiting longer than --timeout is not timed out: it answered, and its board
    # bounds the wait itself (safe_wait_s)
    env.advance(120_000)
    o.tick()
    assert env.by_state(rid)["acked"] == sorted(env.device_of(c) for c in waiting)
    assert env.summary(o, rid)["waiting_safe"] == 2
    # one gets its safe state and installs; the other's wait runs out: UNSAFE, a failure
    env.ack(waiting[0], codec.IN_PROGRESS, "health window 5 s")
    env.state(env.device_of(waiting[0]), ver=2)
    env.ack(waiting[0], codec.OK, "healthy")
    env.ack(waiting[1], codec.UNSAFE, "no safe state within 600 s (in running)")
    o.tick()
    unsafe = env.device_of(waiting[1])
    assert env.members(rid)[unsafe] == "failed"
    detail = env.rows("SELECT detail FROM rollout_devices WHERE command_id = :c", c=waiting[1])
    assert detail[0][0] == "UNSAFE: no safe state within 600 s (in running)"
    state, reason, _ = env.rollout(rid)
    assert (state, reason) == ("paused", "failure threshold: 1 of 10 decided devices failed (10.0% > 5%)")
    assert env.summary(o, rid)["waiting_safe"] == 0
    # retry: it gets a new command, and installs this time
    assert o.retry_failed(rid) == 1
    o.resume(rid)
    out = o.tick()
    assert [env.device_of(x.command_id) for x in out] == [unsafe]
    env.board(out)
    o.tick()
    assert set(env.members(rid).values()) == {"succeeded"}
