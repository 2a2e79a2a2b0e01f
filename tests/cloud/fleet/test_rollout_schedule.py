"""Scheduled rollouts (``--start-at``, ``--window``, ``--window-tz``) in the orchestrator, on
real SQLite and PostgreSQL databases with the orchestrator's injectable clock; the boards' side
is the real ingest (tests/cloud/fleet/test_rollout.py's Env). The window logic alone:
test_schedule.py."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from cloud.orrery.clock import iso
from cloud.orrery.db.tables import DEVICES, TAGS
from cloud.orrery.fleet import commands
from cloud.orrery.fleet.rollout.plan import RolloutError
from tests.cloud.fleet.test_rollout import FAST, T0, Env

MIN = 60_000
HOUR = 60 * MIN
# T0 is Monday 2026-09-21 14:13:20 UTC: 16:13 in Berlin (CEST), 10:13 in New York (EDT)


@pytest.fixture
def env(db_url):  # SQLite and PostgreSQL
    e = Env(db_url, 10)
    yield e
    e.engine.dispose()


def create(env: Env, o, **kw) -> int:
    plan = o.create("greenhouse@2", "fleet=f1", kw.pop("waves", "100%"), **{**FAST, **kw})
    o.start(plan.rollout_id)
    return plan.rollout_id


def tag(env: Env, key: str, **values: str) -> None:
    with env.engine.begin() as c:
        ids = dict(c.execute(sa.select(DEVICES.c.name, DEVICES.c.id)).all())
        c.execute(sa.insert(TAGS), [{"device_id": ids[n], "key": key, "value": v} for n, v in values.items()])  # fmt: skip


def sent(out) -> list[str]:
    return sorted(o.topic.split("/")[2] for o in out)


def schedule_of(env: Env, o, rid: int) -> dict:
    return env.summary(o, rid)["schedule"]


def test_nothing_is_sent_before_the_start_time(env):
    o = env.orch(actor="alice")
    rid = create(env, o, start_at=iso(T0 + HOUR))
    assert o.tick() == []
    s = schedule_of(env, o, rid)
    assert (s["start_at"], s["started"], s["open"], s["next_open"], s["waiting"]) == (
        iso(T0 + HOUR), False, False, iso(T0 + HOUR), 10)  # fmt: skip
    assert s["window"] is None and s["groups"][0]["tz"] == "UTC"
    env.advance(HOUR - 1000)
    assert o.tick() == [] and set(env.by_state(rid)) == {"queued"}
    env.advance(1000)
    assert len(o.tick()) == 10
    assert [(e, d) for _, e, d in env.log(rid)][-12:-10] == [
        ("schedule-held", f"before its start time: 10 device(s) wait; next opening {iso(T0 + HOUR)}"),
        ("schedule-open", "sending"),
    ], "the start time's hold and its end, once each"  # fmt: skip
    s = schedule_of(env, o, rid)
    assert (s["started"], s["open"], s["next_open"], s["waiting"]) == (True, True, None, 0)
    created = env.rows("SELECT detail, actor FROM rollout_log WHERE event = 'created'")[0]
    assert created == (f"greenhouse@2 to 10 device(s) in 1 wave(s); starts at {iso(T0 + HOUR)}", "alice")  # fmt: skip


def test_a_wave_stops_sending_when_its_window_closes_and_goes_on_at_the_next(env):
    o = env.orch()
    # Monday 14:20-14:23 UTC: opens 6m40s after T0, closes three minutes later
    rid = create(env, o, window="mon 14:20-14:23", rate="4/min", timeout="24h")
    assert o.tick() == []
    s = schedule_of(env, o, rid)
    assert (s["window"], s["window_tz"], s["open"], s["next_open"], s["waiting"]) == (
        "Mon 14:20-14:23", "UTC", False, iso(T0 + 400_000), 10)  # fmt: skip
    env.advance(400_000 - 1000)
    assert o.tick() == []
    env.advance(1000)
    first = o.tick()
    assert len(first) == 4  # the rate limit
    s = schedule_of(env, o, rid)
    assert s["open"] and s["groups"][0]["closes"] == iso(T0 + 400_000 + 3 * MIN)
    env.board(first)  # these boards install and report success
    env.advance(MIN)
    second = o.tick()
    assert len(second) == 4
    env.advance(2 * MIN)  # 14:23: closed; the rate would allow 4 more
    assert o.tick() == []
    assert len(env.by_state(rid)["queued"]) == 2
    env.board(second)  # sent before the window closed: their results still count
    o.tick()
    assert len(env.by_state(rid)["succeeded"]) == 8
    s = schedule_of(env, o, rid)
    assert (s["open"], s["next_open"], s["waiting"]) == (False, iso(T0 + 400_000 + 7 * 86_400_000), 2)  # fmt: skip
    assert env.rollout(rid)[0] == "running", "the wave waits for its last two devices"
    env.advance(7 * 86_400_000 - 3 * MIN)  # next Monday 14:20
    third = o.tick()
    assert len(third) == 2
    env.board(third)
    o.tick()  # the wave met its threshold
    o.tick()  # and soaked (0 s)
    assert env.rollout(rid)[0] == "finished"
    changes = [(e, d) for _, e, d in env.log(rid) if e.startswith("schedule-")]
    assert changes == [
        ("schedule-held", f"outside its window: 10 device(s) wait; next opening {iso(T0 + 400_000)}"),
        ("schedule-open", "sending (window Mon 14:20-14:23)"),
        ("schedule-held", f"outside its window: 2 device(s) wait; next opening {iso(T0 + 400_000 + 7 * 86_400_000)}"),
        ("schedule-open", "sending (window Mon 14:20-14:23)"),
    ]  # fmt: skip


def test_each_device_follows_the_window_in_its_own_time_zone(env):
    tag(env, "tz", d00="Europe/Berlin", d01="Europe/Berlin", d02="Europe/Berlin",
        d03="America/New_York", d04="America/New_York", d05="Mars/Olympus_Mons")  # fmt: skip
    o = env.orch()
    plan = o.create("greenhouse@2", "fleet=f1", "100%", window="Mon 16:30-17:00", window_tz="tag.tz", **FAST)  # fmt: skip
    assert plan.without_zone == ["d05", "d06", "d07", "d08", "d09"]
    assert plan.schedule == {"start_at": None, "window": "Mon 16:30-17:00", "window_tz": "tag.tz"}
    rid = plan.rollout_id
    o.start(rid)
    assert o.tick() == []
    s = schedule_of(env, o, rid)
    groups = {g["tz"]: g for g in s["groups"]}
    assert set(groups) == {"Europe/Berlin", "America/New_York", "UTC"}
    berlin, ny, utc = groups["Europe/Berlin"], groups["America/New_York"], groups["UTC"]
    assert (berlin["devices"], berlin["next_open"], berlin["next_open_local"], berlin["waiting"]) == (
        3, "2026-09-21T14:30:00.000Z", "Mon 16:30", 3)  # fmt: skip
    assert (ny["devices"], ny["next_open"], ny["waiting"]) == (2, "2026-09-21T20:30:00.000Z", 2)
    assert (utc["devices"], utc["without_zone"], utc["next_open"]) == (5, 5, "2026-09-21T16:30:00.000Z")  # fmt: skip
    assert (s["open"], s["next_open"], s["waiting"], s["without_zone"]) == (
        False, "2026-09-21T14:30:00.000Z", 10, 5)  # fmt: skip
    env.advance(17 * MIN)  # 14:30 UTC: 16:30 in Berlin
    assert sent(o.tick()) == ["d00", "d01", "d02"]
    assert [(e, d) for _, e, d in env.log(rid) if e.startswith("schedule-")][-1] == (
        "schedule-open", "sending to the devices whose window is open (window Mon 16:30-17:00)")  # fmt: skip
    s = schedule_of(env, o, rid)
    assert s["open"] and s["waiting"] == 7
    env.advance(2 * HOUR)  # 16:30 UTC: the devices without a zone
    assert sent(o.tick()) == ["d05", "d06", "d07", "d08", "d09"]
    env.advance(4 * HOUR)  # 20:30 UTC: 16:30 in New York
    assert sent(o.tick()) == ["d03", "d04"]
    log = env.rows("SELECT detail FROM rollout_log WHERE event = 'created'")[0][0]
    assert log.endswith("; window Mon 16:30-17:00 (each device's tag.tz; UTC without one)")


def test_a_zone_for_all_devices(env):
    o = env.orch()
    rid = create(env, o, window="Mon 16:30-17:00", window_tz="Europe/Berlin")
    assert o.tick() == []
    assert schedule_of(env, o, rid)["next_open"] == "2026-09-21T14:30:00.000Z"
    env.advance(17 * MIN)
    assert len(o.tick()) == 10


def test_create_refuses_a_bad_schedule_and_creates_nothing(env):
    o = env.orch()
    cases = {
        (iso(T0 - 1000), None, None): f"--start-at: '{iso(T0 - 1000)}' is in the past (now is 2026-09-21T14:13:20Z)",
        ("2026-09-22T01:00", None, None): "--start-at: '2026-09-22T01:00' has no time zone",
        (None, "Mon-Fry 01:00-05:00", None): "--window: 'Fry' in 'Mon-Fry 01:00-05:00' is not a day",
        (None, None, "tag.tz"): "--window-tz needs --window",
        (None, "Mon 01:00-02:00", "Berlin"): "--window-tz: 'Berlin' is neither a time zone",
    }  # fmt: skip
    for (start_at, window, tz), msg in cases.items():
        with pytest.raises(RolloutError) as e:
            o.create("greenhouse@2", "fleet=f1", start_at=start_at, window=window, window_tz=tz)
        assert str(e.value).startswith(msg), str(e.value)
    assert env.rows("SELECT count(*) FROM rollouts")[0][0] == 0


def test_an_offline_boards_command_ends_with_its_window(env):
    env.state("d08", "d09", online=False)
    o = env.orch()
    rid = create(env, o, window="Mon 14:20-14:30", timeout="1h")  # T0 + 400 s to T0 + 1000 s
    env.advance(400_000)
    out = o.tick()
    assert len(out) == 8 and env.by_state(rid)["offline-pending"] == ["d08", "d09"]
    exp = dict(env.rows("SELECT d.name, c.exp - c.iat FROM commands c JOIN devices d ON d.id = c.device_id"))
    assert exp.pop("d08") == exp.pop("d09") == 600, "an offline board's command ends with the window"
    assert set(exp.values()) == {3600}, "an online board's lives the rollout's timeout"
    d09 = env.rows("SELECT id FROM devices WHERE name = 'd09'")[0][0]
    env.advance(600_000 - 1000)
    with env.engine.connect() as c:
        assert [x.command_id for x in commands.pending_for(c, d09, env.now)] == [f"rollout:{rid}:{d09}:1"]
    env.advance(1000)  # 14:30: closed
    with env.engine.connect() as c:
        assert commands.pending_for(c, d09, env.now) == [], "its pull outside the window finds nothing"
    env.state("d09")  # d09 is back (outside the window) before the orchestrator saw the expiry
    env.ingest.reconcile()  # expires both
    o.tick()
    assert env.by_state(rid)["queued"] == ["d08", "d09"], "queued again, not timed out"
    assert [x for x in env.log(rid) if x[0]][-2:] == [(n, "queued", "command expired while offline; sending again")
                                 for n in ("d08", "d09")]  # fmt: skip
    env.advance(MIN)
    assert o.tick() == []
    env.advance(7 * 86_400_000 - 11 * MIN)  # next Monday 14:20
    d08 = env.rows("SELECT id FROM devices WHERE name = 'd08'")[0][0]
    assert sorted(x.command_id for x in o.tick()) == [f"rollout:{rid}:{d09}:2"], "d09 is online"
    assert env.by_state(rid)["offline-pending"] == ["d08"]
    assert env.rows("SELECT command_id FROM rollout_devices WHERE device_id = :d", d=d08)[0][0] == (
        f"rollout:{rid}:{d08}:2")  # fmt: skip
