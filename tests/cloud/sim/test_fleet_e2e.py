"""The fleet scenario end to end: 200 virtual boards running the real firmware, a real Mosquitto,
the companion in its own process, a rollout while 30% of the fleet is offline, power cuts in the
middle of flash writes, a broker restart, and a failing version.

The scenario runs once (module fixture, ~25 virtual minutes, about a minute of real time); each
test checks one promise. Boards and timeline are seeded (``cloud.orrery.sim``); only network
timing varies between runs, and no assertion depends on it.

Power cuts are injected when the board is quiet: not inside a health window (a cut there is an
install failure by design, rolled back by the board: tests/firmware/test_node.py) and not holding an
ack in RAM.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest

from cloud.orrery.sim.board import SMALL_FLASH
from cloud.orrery.sim.fleet import Accounting, VirtualFleet
from cloud.orrery.sim.workflows import GREENHOUSE

pytestmark = pytest.mark.slow

N = 200
OFFLINE = 0.30
REBOOTING = 0.10
MIN = 60_000


def failing_v3() -> bytes:
    """greenhouse@3: v2 plus CO2, light and leaf probes on adc1..adc3, which the virtual boards
    do not have (every read fails, so every board fails its health window)."""
    d = json.loads(GREENHOUSE.read_text())
    d["version"] = 3
    d["description"] = "v2 with CO2, light and leaf-wetness probes on adc1..adc3"
    for name, ch in (("co2", "adc1"), ("light", "adc2"), ("leaf", "adc3")):
        d["inputs"].append({"name": name, "channel": ch, "period_ms": 1000, "filters": []})
    return json.dumps(d).encode()


@dataclass
class Outcome:
    away: list[str]
    small: list[str]
    rebooted: list[str]
    v2: int = 0
    v2_finished: bool = False
    v2_state: tuple = ()  # (state, reason, wave) when the wait for "finished" ended
    v2_at_finish: dict = field(default_factory=dict)
    v2_summary_at_finish: dict = field(default_factory=dict)
    v2_converged: bool = False
    v2_summary: dict = field(default_factory=dict)
    v2_commands: tuple = ()
    versions: dict = field(default_factory=dict)
    v3: int = 0
    v3_paused: bool = False
    v3_state: tuple = ()
    v3_members: dict = field(default_factory=dict)
    v3_commands: int = 0
    drained: str | None = "not drained"
    acc: Accounting = field(default_factory=Accounting)
    faults: dict = field(default_factory=dict)
    pending_actions: int = 0
    log: str = ""
    garbage: list = field(default_factory=list)  # per garbage-record cut: what it left


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Outcome:
    tmp = tmp_path_factory.mktemp("fleet")
    f = VirtualFleet(
        N, f"sqlite:///{tmp / 'cloud.db'}", seed=7, clockless=0.05, small_flash=0.02,
        health_window_s=30,
    )  # fmt: skip
    try:
        yield run(f)
    finally:
        f.close()


def run(f: VirtualFleet) -> Outcome:
    rng = random.Random(7)
    f.start_companion()
    names = list(f.boards)
    assert f.wait(lambda: f.online_count() == N, 5 * MIN), (
        "every board came online",
        f.rows("SELECT name FROM devices WHERE NOT online"),
        {n: b.link.last_error for n, b in f.boards.items() if not b.link.connected},
    )
    small = [b.name for b in f.boards.values() if b.flash == SMALL_FLASH]
    away = small + rng.sample([n for n in names if n not in small], round(OFFLINE * N) - len(small))
    rebooted = rng.sample(names, round(REBOOTING * N))
    out = Outcome(away=away, small=small, rebooted=rebooted)
    for n in away:  # outages start over the next minute
        f.at(rng.randrange(0, MIN), lambda n=n: f.go_away(n))
    for n in rebooted:  # power cuts over the next 15 minutes, offline boards included
        f.power_cut_later(n, rng.randrange(0, 15 * MIN))
    f.run(90_000)

    # v2 in three waves while 30% of the fleet is away; the broker restarts mid-rollout
    rid = out.v2 = f.rollout(
        "greenhouse@2", waves="10%,40%,100%", success="95%", max_failures="10%",
        min_devices=5, soak="30s", timeout="1h", rate="1000/min", health="30s",
    )  # fmt: skip
    f.at(100_000, f.restart_broker)  # the boards wait for the companion to subscribe again
    out.v2_finished = f.wait(lambda: f.rollout_state(rid)[0] == "finished", 30 * MIN)
    out.v2_state = f.rollout_state(rid)
    out.v2_at_finish = f.member_states(rid)
    out.v2_summary_at_finish = f.summary(rid)

    # the offline boards come back over 5 minutes; the small-flash ones after 18 minutes away,
    # long enough to fill their flash (204 readings, one every 4 s while the link is down)
    for n in away:
        if n not in small:
            f.at(rng.randrange(0, 5 * MIN), lambda n=n: f.come_back(n))
    f.run(max(0, 19 * MIN - f.elapsed_ms))
    for n in small:
        f.come_back(n)
    out.v2_converged = f.wait(lambda: set(f.member_states(rid).values()) == {"succeeded"}, 20 * MIN)
    out.v2_summary = f.summary(rid)
    out.v2_commands = tuple(f.rows(
        "SELECT count(*), count(DISTINCT device_id) FROM commands WHERE kind = 'install_workflow'"
    )[0])  # fmt: skip
    out.versions = {n: b.version for n, b in f.boards.items()}

    # a failing v3 pauses itself in its first wave
    ref = f.push(failing_v3())
    rid3 = out.v3 = f.rollout(
        ref, waves="10,100%", success="95%", max_failures="20%", min_devices=5, soak="0s",
        timeout="1h", rate="1000/min", health="30s",
    )  # fmt: skip
    out.v3_paused = f.wait(lambda: f.rollout_state(rid3)[0] == "paused", 10 * MIN)
    f.run(2 * MIN)  # a paused rollout sends nothing more
    out.v3_state = f.rollout_state(rid3)
    out.v3_members = {
        n: (s, f.boards[n].version) for n, s in f.member_states(rid3).items()
    }  # fmt: skip
    out.v3_commands = f.rows(
        "SELECT count(*) FROM commands WHERE source = :s", s=f"rollout:{rid3}"
    )[0][0]

    # the sensors go quiet; everything the boards hold reaches the database
    f.run(max(0, 16 * MIN - f.elapsed_ms))  # every scheduled power cut has happened
    f.freeze()
    out.drained = None if f.drain(20 * MIN) else f.unsettled()
    out.acc = f.account()
    out.faults = dict(f.faults)
    out.pending_actions = f.pending_actions()
    ids = dict(f.rows("SELECT name, id FROM devices"))
    out.garbage = [
        (n, getattr(b, "cut_info", None), b.node.store.last_seq,
         f.rows('SELECT "first", "last", reason FROM losses WHERE device_id = :d', d=ids[n]))
        for n, b in f.boards.items() if b.stats.power_cuts["garbage_record"]
    ]  # fmt: skip
    out.log = f.companion_tail(4000)
    return out


def test_every_accepted_reading_is_stored_once_or_lost_with_its_reason(scenario):
    o = scenario
    assert o.drained is None, (o.drained, o.log[-2000:])
    acc = o.acc
    assert acc.ok, acc.problems()
    assert acc.accepted > 200_000
    assert acc.stored + sum(acc.lost.values()) == acc.accepted
    assert acc.duplicate_rows == 0
    # each garbage record a power cut left is one corrupt seq, reported by the board
    assert acc.lost["corrupt"] == o.faults["power_cut:garbage_record"] > 0, o.garbage
    # the small-flash boards overflowed during their outage and reported the exact ranges
    assert acc.lost["store_full"] > 0
    assert set(acc.lost) <= {"corrupt", "store_full", "not_held"}
    # boards whose clock was never set: stored all the same, without an event time
    assert acc.without_time > 0


def test_faults_happened(scenario):
    o = scenario
    assert o.pending_actions == 0
    assert o.faults["outages"] == round(OFFLINE * N)
    assert o.faults["power_cuts"] == round(REBOOTING * N)
    assert o.faults["broker_restarts"] == 1
    for kind in ("torn_record", "garbage_record", "torn_cursor"):
        assert o.faults[f"power_cut:{kind}"] > 0, kind


def test_rollout_finishes_with_the_offline_boards_pending(scenario):
    o = scenario
    assert o.v2_finished, (o.v2_state, o.v2_at_finish, o.log[-1500:])
    pending = sorted(n for n, s in o.v2_at_finish.items() if s == "offline-pending")
    assert pending == sorted(o.away)
    assert all(s == "succeeded" for n, s in o.v2_at_finish.items() if n not in o.away)
    s = o.v2_summary_at_finish
    assert s["converged_text"] == f"converged 70%, {len(o.away)} offline pending"
    assert [w["total"] for w in s["waves"]] == [20, 60, 120]


def test_every_board_converges_to_v2(scenario):
    o = scenario
    assert o.v2_converged, o.v2_summary
    assert o.v2_summary["converged_text"] == "converged 100%, 0 offline pending"
    assert o.versions == {n: 2 for n in o.versions}, "the boards themselves run v2"
    assert o.v2_commands == (N, N), "one install command per board, never a second"


def test_failing_v3_auto_pauses_in_its_first_wave(scenario):
    o = scenario
    assert o.v3_paused
    state, reason, wave = o.v3_state
    assert (state, wave) == ("paused", 1)
    assert reason.startswith("failure threshold:"), reason
    first = {n: v for n, v in o.v3_members.items() if v[0] != "queued"}
    assert len(first) == 10 and all(s == "failed" for s, _ in first.values()), first
    assert all(ver == 2 for _, ver in first.values()), "failed boards rolled back to v2"
    assert sum(s == "queued" for s, _ in o.v3_members.values()) == N - 10
    assert o.v3_commands == 10, "nothing was sent beyond the first wave"
