"""The fleet preview's engine (issue 18): the replay driver against a hand-checked timeline,
start states, stranded devices, divergence, bounds, parallel == serial, readings without
event time, and ``workflow simulate`` on the same driver. On a real database (SQLite; the
engine's run also on PostgreSQL)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import sqlalchemy as sa

from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICE_LOGS, DEVICES, EVENTS, READINGS
from cloud.orrery.fleet import devices, registry, replay
from cloud.orrery.fleet.preview import bounds, driver, engine, report
from cloud.orrery.fleet.preview.model import Target
from cloud.orrery.ingest.alerts import AlertRule, is_alarm
from cloud.orrery.sim import workflows
from firmware.profile import parse_profile
from shared.wire import codec
from shared.workflow import compiler
from tools.board import profiles

CHANNELS = [c[0] for c in parse_profile(profiles.load(profiles.DEFAULT))[0]]
TEMP = CHANNELS.index("temp")
T0 = 1_790_000_000_000  # unix ms at uptime 0 of boot 1
NO_VALUE = -(2**29)  # a publish without a value

# idle -> cooling when temp stays above 100 for 3 s; back to idle on a 10 s timer
TINY = {
    "name": "tiny",
    "version": 1,
    "inputs": [{"name": "temp", "channel": "temp", "period_ms": 1000, "filters": []}],
    "outputs": ["fan"],
    "timers": ["cool"],
    "events": ["hot", "done"],
    "initial": "idle",
    "states": [
        {
            "name": "idle",
            "on": [{"when": {"above": "temp", "level": 100, "for_ms": 3000}, "target": "cooling"}],
        },
        {
            "name": "cooling",
            "entry": [
                {"set_output": "fan", "value": 1},
                {"start_timer": "cool", "ms": 10000},
                {"publish": "hot", "value": {"input": "temp"}},
            ],
            "exit": [{"set_output": "fan", "value": 0}],
            "on": [{"when": {"timer": "cool"}, "target": "idle", "actions": [{"publish": "done"}]}],
        },
    ],
}


def tiny(version: int = 1, **change) -> dict:
    """TINY as another version; ``for_ms`` / ``level`` change idle's transition (None: drop)."""
    d = copy.deepcopy(TINY)
    d["version"] = version
    when = d["states"][0]["on"][0]["when"]
    for k, v in change.items():
        if v is None:
            when.pop(k)
        else:
            when[k] = v
    return d


def version(d: dict) -> driver.Version:
    return driver.Version(compiler.compile(json.dumps(d).encode()).blob, CHANNELS)


# (boot, up_ms, temp): worked by hand below
TIMELINE = [
    (1, 1000, 150),  # a hold starts (due 4000)
    (1, 2000, 150),
    # 4000: the hold is due between passes: ticked then: cooling (fan 1, hot=150, timer to 14000)
    (1, 6000, 150),
    # 14000: the timer, between passes: idle (fan 0, done)
    (1, 20000, 50),
    (1, 30000, 150),  # a hold starts (due 33000)
    # 33000: cooling; the board saves its snapshot then (the timer has 10 s left)
    (1, 34000, 150),  # nothing changes: no save
    # boot 2 powers on at uptime 0: restore (cooling, 10 s left: due 10000), start: fan
    # re-applied; its first reading is stored at 2000
    (2, 2000, 50),
    # 10000: the timer: idle
    (2, 13000, 50),
]


def rows(timeline=TIMELINE, event_time: bool = True) -> list[tuple]:
    return [(b, up, T0 + up if event_time else None, TEMP, v) for b, up, v in timeline]


def run_tiny(a: dict, b: dict | None = None, timeline=TIMELINE, trace=True):
    va = version(a)
    cell = driver.new_cell()
    sides = [driver.Side(va, cell, trace=trace)]
    snap = va.snapshot_in(va.initial)
    starts = [(snap, False)]
    if b is not None:
        vb = version(b)
        sides.append(driver.Side(vb, cell, trace=trace))
        starts.append((va.migrated(snap, vb), False))
    return driver.drive(rows(timeline), sides, starts), sides


def test_driver_replays_timers_holds_and_a_reboot_as_the_board_would():
    div, (side,) = run_tiny(TINY)
    assert div is None
    tr = side.trace
    assert [(x["t"] - T0, x["from"], x["to"]) for x in tr["transitions"]] == [
        (4000, "idle", "cooling"),  # the for_ms hold, at its own time between two passes
        (14000, "cooling", "idle"),  # the timer, at its own time
        (33000, "idle", "cooling"),
        (10000, "cooling", "idle"),  # boot 2: the restored timer had 10 s left at power-on
    ]
    assert [(x["t"] - T0, x["event"], x["value"]) for x in tr["events"]] == [
        (4000, "hot", 150),
        (14000, "done", NO_VALUE),
        (33000, "hot", 150),
        (10000, "done", NO_VALUE),
    ]
    # the restore re-applies the saved output (fan 1) at boot 2's power-on
    assert [(x["t"] - T0, x["value"]) for x in tr["outputs"]] == [
        (4000, 1),
        (14000, 0),
        (33000, 1),
        (0, 1),
        (10000, 0),
    ]
    m = side.as_metrics()
    assert (m["transitions"], m["state_changes"], m["events_total"]) == (4, 4, 4)
    assert m["events"] == {"hot": 2, "done": 2}
    # on: 4..14 s and 33..34 s (boot 1's last reading), 0..10 s of boot 2
    assert m["outputs"] == {"fan": {"sets": 5, "on_s": 21.0}}
    # idle: 1..4 s, 14..33 s, 10..13 s of boot 2; cooling as the fan
    assert m["states_s"] == {"idle": 25.0, "cooling": 21.0}
    assert (m["alerts"], m["final_state"]) == (0, "idle")


def test_driver_restores_the_last_snapshot_the_board_saved():
    # a reboot 5 s into cooling: the snapshot of 33000 (10 s left) is restored, not a later
    # state (the pass at 34000 changed nothing, so the board did not save again), at power-on
    _, (side,) = run_tiny(TINY, timeline=[*TIMELINE[:6], (2, 500, 50), (2, 20000, 50)])
    assert [(x["t"] - T0, x["to"]) for x in side.trace["transitions"]][-1] == (10000, "idle")


def test_readings_without_event_time_replay_in_device_order_by_uptime():
    va = version(TINY)
    side = driver.Side(va, driver.new_cell(), trace=True)
    driver.drive(rows(event_time=False), [side], [(va.snapshot_in(0), False)])
    # the trace's times are uptimes then, the same moments
    assert [(x["t"], x["to"]) for x in side.trace["transitions"]] == [
        (4000, "cooling"),
        (14000, "idle"),
        (33000, "cooling"),
        (10000, "idle"),
    ]


def test_first_divergence_names_time_state_and_what_each_version_did():
    # 5 s instead of 3: the new version enters cooling at 6000 (the pass's own sample)
    div, (a, b) = run_tiny(TINY, tiny(2, for_ms=5000))
    assert div == {
        "t_ms": T0 + 4000,
        "boot": 1,
        "up_ms": 4000,
        "input": None,  # a deadline between readings: the inputs as they were then
        "inputs": {"temp": 150},
        "running": {"state": "idle", "what": "transition idle → cooling"},
        "new": None,
    }
    assert [x["t"] - T0 for x in b.trace["transitions"]][:1] == [6000]
    # without for_ms the new version moves on the first reading: the input is named
    div, _ = run_tiny(TINY, tiny(2, for_ms=None))
    assert div is not None
    assert (div["up_ms"], div["input"]) == (1000, {"name": "temp", "value": 150})
    assert div["new"] == {"state": "idle", "what": "transition idle → cooling"}
    assert div["running"] is None
    # the same program again: no divergence
    div, _ = run_tiny(TINY, tiny(2))
    assert div is None


def test_one_alarm_predicate():
    assert is_alarm("fault_raised") and is_alarm("temp_alarm") and not is_alarm("status")


# --- the engine on a database ------------------------------------------------------------


def make_fleet(url: str, defs: list[dict], fleet: dict[str, tuple[str | None, list]]):
    """Push ``defs``; register devices ``{name: (running ref or None, readings)}``, readings
    as ``(boot, seq, up_ms, event_ms or None, value, received_ms)`` on the temp channel."""
    e = engine_for(url)
    with e.begin() as c:
        for d in defs:
            registry.push(c, json.dumps(d).encode(), None, 1)
    devices.register(e, "f1", None, list(fleet))
    with e.begin() as c:
        ids = dict(c.execute(sa.select(DEVICES.c.name, DEVICES.c.id)).all())
        for name, (ref, readings) in fleet.items():
            if ref is not None:
                wf, ver = ref.split("@")
                c.execute(
                    sa.update(DEVICES)
                    .where(DEVICES.c.id == ids[name])
                    .values(wf=wf, wf_ver=int(ver))
                )
            if readings:
                c.execute(
                    sa.insert(READINGS),
                    [
                        {"device_id": ids[name], "boot": b, "seq": s, "channel": TEMP, "value": v,
                         "up_ms": up, "event_ms": ev, "historical": False, "received_ms": rx}
                        for b, s, up, ev, v, rx in readings
                    ],
                )  # fmt: skip
    return e, ids


def timeline_readings(timeline=TIMELINE, event_time=True):
    return [
        (b, i + 1, up, T0 + up if event_time else None, v, T0 + up + 100)
        for i, (b, up, v) in enumerate(timeline)
    ]


def targets(e, new: str) -> list[Target]:
    with e.connect() as c:
        return [
            Target(r.id, r.name, r.profile, f"{r.wf}@{r.wf_ver}" if r.wf else None, new)
            for r in c.execute(sa.select(DEVICES).order_by(DEVICES.c.name))
        ]


def add_event(e, did: int, boot: int, seq: int, up: int, state: str, at: int | None):
    with e.begin() as c:
        c.execute(
            sa.insert(EVENTS).values(device_id=did, boot=boot, seq=seq, up_ms=up, event_ms=at,
                                     state=state, event="hot", value=1, received_ms=(at or T0) + 5)
        )  # fmt: skip


def add_state_log(e, did: int, boot: int, seq: int, up: int, index: int, at: int):
    with e.begin() as c:
        c.execute(
            sa.insert(DEVICE_LOGS).values(device_id=did, boot=boot, seq=seq, up_ms=up, event_ms=at,
                                          level="info", code=codec.LOG_STATE, a=index, b=1,
                                          text="state", received_ms=at + 5)
        )  # fmt: skip


WINDOW = (T0, T0 + 3_600_000)


def test_run_reports_per_device_totals_and_skipped(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    e, _ = make_fleet(
        url,
        [tiny(1), tiny(2, for_ms=5000)],
        {
            "a": ("tiny@1", timeline_readings()),
            "b": ("tiny@1", timeline_readings()[:3]),
            "quiet": ("tiny@1", []),
            "ghost": ("tiny@7", timeline_readings()),  # runs a version the registry lacks
        },
    )
    r = engine.run(e, targets(e, "tiny@2"), *WINDOW, to="tiny@2", workers=1)
    assert (r["devices"], r["replayed"], r["readings"]) == (4, 2, 11)
    assert r["skipped"] == {
        engine.UNKNOWN_RUNNING: ["ghost"],
        engine.NO_READINGS: ["quiet"],
    }
    a, b = r["per_device"]
    assert (a["device"], a["running_version"], a["new_version"]) == ("a", "tiny@1", "tiny@2")
    assert (a["start_state"], a["start_state_source"], a["note"]) == ("idle", "initial", None)
    # the running version is the hand-checked timeline
    assert a["running"]["transitions"] == 4 and a["running"]["states_s"]["cooling"] == 21.0
    # v2 waits 5 s: cooling 6..16 s (its own sample at 6000, then the timer); the hold from
    # 30000 would be due at 35000, after boot 1's last reading. Both boots count from power-on
    # (uptime 0): the window holds the device's first reading (seq 1), and boot 2's start
    assert a["new"]["transitions"] == 2
    assert a["new"]["states_s"] == {"idle": 6.0 + 34.0 - 16.0 + 13.0, "cooling": 10.0}
    assert a["divergence"]["up_ms"] == 4000
    # b: three readings, one hold each: running cools at 4000, the new version at 6000
    assert (b["running"]["transitions"], b["new"]["transitions"]) == (1, 1)
    assert r["changed"] == 2 and r["top"][0] == "a" and a["score"] > b["score"] > 0
    t = r["totals"]
    assert t["running"]["transitions"] == 5 and t["new"]["transitions"] == 3
    assert t["running"]["events"] == {"hot": 3, "done": 2}
    assert t["new"]["events"] == {"hot": 2, "done": 1}
    assert r["stranded"] == [] and r["gate"] is None and r["workers"] == 1
    assert json.loads(json.dumps(r)) == r  # plain JSON data
    e.dispose()


def test_start_state_is_the_last_one_reported_at_the_window_start(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    e, ids = make_fleet(
        url,
        [tiny(1), tiny(2)],
        {n: ("tiny@1", timeline_readings()[6:]) for n in ("ev", "log", "later", "none")},
    )
    # "ev": an event in cooling in boot 1 (before the window); the readings are boot 2's,
    # so the board rebooted since: restored and started (the fan re-applied)
    add_event(e, ids["ev"], 1, 1, 33000, "cooling", T0 - 1000)
    # "log": a state log line (index 1: cooling) beats an older event in idle
    add_event(e, ids["log"], 1, 1, 30000, "idle", T0 - 9000)
    add_state_log(e, ids["log"], 1, 1, 33000, 1, T0 - 5000)
    # "later": its report comes after the window's start: not used
    add_event(e, ids["later"], 2, 1, 1000, "cooling", T0 + 100_000)
    r = engine.run(e, targets(e, "tiny@2"), T0, T0 + 3_600_000, to="tiny@2", workers=1)
    by = {d["device"]: d for d in r["per_device"]}
    assert (by["ev"]["start_state"], by["ev"]["start_state_source"]) == ("cooling", "reported")
    assert (by["log"]["start_state"], by["log"]["start_state_source"]) == ("cooling", "reported")
    assert (by["later"]["start_state"], by["later"]["start_state_source"]) == ("idle", "initial")
    assert (by["none"]["start_state"], by["none"]["start_state_source"]) == ("idle", "initial")
    # from cooling (timer stopped: a state report says nothing of it): the boot re-applies
    # the fan (0: outputs are unknown) and it stays in cooling; from idle nothing happens
    assert by["ev"]["running"]["final_state"] == "cooling"
    assert by["ev"]["running"]["outputs"]["fan"]["sets"] == 1
    assert by["none"]["running"]["final_state"] == "idle"
    assert by["none"]["running"]["outputs"]["fan"]["sets"] == 0
    # the new version (same states) migrates the same state
    assert by["ev"]["new"]["final_state"] == "cooling"
    e.dispose()


def test_stranded_devices_and_the_new_version_from_its_initial_state(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    renamed = tiny(2)
    renamed["states"][1]["name"] = "chill"
    renamed["states"][0]["on"][0]["target"] = "chill"
    e, ids = make_fleet(
        url,
        [tiny(1), renamed],
        {"hot": ("tiny@1", timeline_readings()), "calm": ("tiny@1", timeline_readings())},
    )
    add_event(e, ids["hot"], 1, 1, 500, "cooling", T0 - 500)  # in cooling, then and now
    add_event(e, ids["calm"], 1, 1, 500, "idle", T0 - 500)
    r = engine.run(e, targets(e, "tiny@2"), T0, T0 + 3_600_000, to="tiny@2", workers=1)
    assert r["stranded"] == [
        {
            "device": "hot",
            "version": "tiny@1",
            "state": "cooling",
            "why": "state 'cooling' of tiny v1 has no place in v2: no migrate entry and no "
            "state of that name",
        }
    ]
    hot = next(d for d in r["per_device"] if d["device"] == "hot")
    assert hot["start_state"] == "cooling" and "no place in v2" in hot["note"]
    assert "initial state" in hot["note"]
    # the rollout's own check judges the same devices
    from cloud.orrery.fleet.rollout import compat

    with e.connect() as c:
        blob = registry.get(c, "tiny@2").blob
        assert compat.stranded(c, blob, {("tiny", 1)}) == {
            ids["hot"]: ("hot", r["stranded"][0]["why"])
        }
    lines = report.summary_lines(r)
    assert any(
        ln.startswith("stranded: 1 device(s)") and "hot (cooling of tiny@1)" in ln for ln in lines
    )
    e.dispose()


def test_readings_without_event_time_are_in_the_window_by_arrival(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    inside = timeline_readings(event_time=False)  # received T0 + up + 100: in the window
    late = [(3, 1, 1000, None, 150, T0 + 7_200_000)]  # received after the window: out
    early = [(0, 1, 1000, T0 - 50_000, 150, T0 + 10)]  # event time before it: out
    e, ids = make_fleet(url, [tiny(1), tiny(2)], {"n": ("tiny@1", early + inside + late)})
    r = engine.run(e, targets(e, "tiny@2"), *WINDOW, to="tiny@2", workers=1)
    (d,) = r["per_device"]
    assert d["readings"] == len(TIMELINE)
    assert d["running"]["transitions"] == 4 and d["running"]["states_s"]["cooling"] == 21.0
    with e.connect() as c:
        assert len(replay.stored_stream(c, ids["n"], *WINDOW)) == len(TIMELINE)
    e.dispose()


def test_alert_rules_and_alarm_events_count_as_alerts(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    faulty = tiny(2)
    faulty["events"] = ["hot_fault", "done"]
    faulty["states"][1]["entry"][2]["publish"] = "hot_fault"
    e, _ = make_fleet(url, [tiny(1), faulty], {"a": ("tiny@1", timeline_readings())})
    rules = [AlertRule.parse(f"{TEMP}>120")]
    r = engine.run(e, targets(e, "tiny@2"), *WINDOW, to="tiny@2", workers=1, alert_rules=rules)
    (d,) = r["per_device"]
    hot = sum(1 for _, _, v in TIMELINE if v > 120)
    assert d["running"]["alerts"] == hot  # the rule on each reading above 120
    assert d["new"]["alerts"] == hot + 2  # and the two hot_fault events
    e.dispose()


@pytest.fixture
def fleet_db(db_url):
    e, _ = make_fleet(
        db_url,
        [tiny(1), tiny(2, for_ms=5000)],
        {
            f"d{i:02d}": ("tiny@1", timeline_readings([(b, up, v + i) for b, up, v in TIMELINE]))
            for i in range(12)
        }
        | {"idle": ("tiny@1", [])},
    )
    yield e
    e.dispose()


def test_parallel_workers_give_the_serial_result(fleet_db):
    e = fleet_db
    ts = targets(e, "tiny@2")
    seen = []
    gate = "events.hot<=+0%,fleet.transitions>=-10%"
    kw = dict(to="tiny@2", bounds=bounds.parse(gate), bounds_text=gate)
    one = engine.run(e, ts, *WINDOW, workers=1, **kw)
    two = engine.run(e, ts, *WINDOW, workers=2, progress=lambda d, n: seen.append((d, n)), **kw)
    assert two["workers"] == 2 and one["workers"] == 1
    for r in (one, two):
        r.pop("seconds")
        r.pop("workers")
    assert one == two
    assert seen[0] == (0, 13) and seen[-1] == (13, 13)
    assert one["replayed"] == 12 and one["skipped"] == {engine.NO_READINGS: ["idle"]}
    assert not one["gate"]["passed"]
    assert [b["bound"] for b in one["gate"]["breaches"]] == ["fleet.transitions>=-10%"]


def test_an_unknown_new_version_or_a_bound_naming_what_it_lacks_is_an_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    e, _ = make_fleet(url, [tiny(1), tiny(2)], {"a": ("tiny@1", timeline_readings())})
    with pytest.raises(registry.RegistryError, match="no workflow 'tiny@9'"):
        engine.run(e, targets(e, "tiny@9"), *WINDOW, to="tiny@9", workers=1)
    for text, what in (
        ("events.alarm<=+10%", "tiny@2 has no event 'alarm' (its events: hot, done)"),
        ("outputs.pump.sets<=3", "tiny@2 has no output 'pump' (its outputs: fan)"),
        ("fleet.states.off.s<=3", "tiny@2 has no state 'off' (its states: idle, cooling)"),
    ):
        with pytest.raises(bounds.BoundError) as exc:
            engine.run(e, targets(e, "tiny@2"), *WINDOW, to="tiny@2", bounds=bounds.parse(text))
        assert str(exc.value) == f"bound {text!r}: {what}"
    e.dispose()


# --- bounds ------------------------------------------------------------------------------


def test_bounds_parse():
    b = bounds.parse("events.alarm<=+10%, outputs.fan.on_s < -5 ,fleet.transitions>=3,alerts>+0")
    assert [(x.path, x.op, x.limit, x.kind, x.fleet) for x in b] == [
        (("events", "alarm"), "<=", 10.0, "pct", False),
        (("outputs", "fan", "on_s"), "<", -5.0, "abs", False),
        (("transitions",), ">=", 3.0, "value", True),
        (("alerts",), ">", 0.0, "abs", False),
    ]
    assert [x.text for x in b][1] == "outputs.fan.on_s < -5"
    assert bounds.parse("states.cooling.s<=+0.5%")[0].limit == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no bounds given: expected PATH OP LIMIT, e.g. events.alarm<=+10%"),
        ("events<=1,", "an empty bound between commas"),
        ("events=1", "bound 'events=1': expected PATH OP LIMIT with OP one of <= < >= >"),
        ("events.alarm", "bound 'events.alarm': expected PATH OP LIMIT"),
        ("outputs.fan<=1", "bound 'outputs.fan<=1': unknown metric 'outputs.fan'; metrics: "),
        ("fleet.speed<=1", "unknown metric 'fleet.speed'"),
        ("states.idle<=1", "unknown metric 'states.idle'"),
        ("events<=ten", "bound 'events<=ten': limit 'ten' is not one of +N% / -N%"),
        ("events<=10%", "bound 'events<=10%': a relative limit needs its sign, +10% or -10%"),
        ("events<=+10%%", "limit '+10%%' is not one of"),
    ],
)
def test_bounds_parse_errors_say_what_is_wrong_in_one_line(text, message):
    with pytest.raises(bounds.BoundError) as exc:
        bounds.parse(text)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def m(**kw) -> dict:
    base = {
        "transitions": 0, "state_changes": 0, "events": {}, "events_total": 0, "outputs": {},
        "alerts": 0, "states_s": {}, "final_state": None,
    }  # fmt: skip
    return base | kw


def fake_report(pairs: dict[str, tuple[dict | None, dict]]) -> dict:
    per = [{"device": n, "running": a, "new": b} for n, (a, b) in pairs.items()]
    both = [d for d in per if d["running"] is not None]
    return {
        "per_device": per,
        "totals": {
            "running": engine.total([d["running"] for d in both]),
            "new": engine.total([d["new"] for d in both]),
        },
    }


def test_bounds_evaluate_per_device_and_on_the_fleet():
    rep = fake_report(
        {
            "a": (
                m(events={"alarm": 10}, events_total=10),
                m(events={"alarm": 12}, events_total=12),
            ),
            "b": (m(events={"alarm": 0}), m(events={"alarm": 1}, events_total=1)),  # 0 -> 1: +inf%
            "c": (
                m(events={"alarm": 10}, events_total=10),
                m(events={"alarm": 10}, events_total=10),
            ),
            "new": (None, m(events={"alarm": 50}, events_total=50)),  # nothing to compare with
        }
    )
    g = bounds.evaluate(bounds.parse("events.alarm<=+10%"), rep)
    assert g == {
        "bounds": "events.alarm<=+10%",
        "passed": False,
        "breaches": [
            {"bound": "events.alarm<=+10%", "devices": ["b", "a"], "count": 2, "actual": "+inf%"}
        ],
    }
    assert bounds.evaluate(bounds.parse("events.alarm<=+20%"), rep)["breaches"][0]["devices"] == [
        "b"
    ]
    # an absolute change, and the new value (devices without a running version count too)
    assert bounds.evaluate(bounds.parse("events<=+2"), rep)["passed"]
    g = bounds.evaluate(bounds.parse("events<40"), rep)
    assert g["breaches"] == [{"bound": "events<40", "devices": ["new"], "count": 1, "actual": "50"}]
    # the fleet: 20 -> 23 alarms is +15%; the devices that add to it are named
    g = bounds.evaluate(bounds.parse("fleet.events.alarm<=+10%,fleet.events<=+20%"), rep)
    assert g["breaches"] == [
        {"bound": "fleet.events.alarm<=+10%", "devices": ["a", "b"], "count": 2, "actual": "+15.0%"}
    ]
    assert bounds.evaluate(bounds.parse("fleet.transitions>=0"), rep)["passed"]
    # from 0 to 0 is no change
    assert bounds.evaluate(bounds.parse("alerts<=+0%"), rep)["passed"]
    assert math.isinf(bounds.change(bounds.parse("alerts<=+1%")[0], m(), m(alerts=1)))


# --- the summary and simulate --------------------------------------------------------------


def test_summary_lines_name_what_changed(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    e, _ = make_fleet(
        url,
        [tiny(1), tiny(2, for_ms=5000)],
        {"a": ("tiny@1", timeline_readings()), "q": ("tiny@1", [])},
    )
    gate = "events.hot<=+0%"
    r = engine.run(e, targets(e, "tiny@2"), *WINDOW, to="tiny@2", workers=1,
                   bounds=bounds.parse(gate), bounds_text=gate)  # fmt: skip
    lines = report.summary_lines(r)
    text = "\n".join(lines)
    assert lines[0].startswith("preview tiny@2 over 2026-09-21 14:13 UTC → 2026-09-21 15:13 UTC")
    assert "1 of 2 device(s) replayed, 8 reading(s)" in lines[0]
    assert "running now: tiny@1 (1)" in text
    assert "skipped: 1 no readings in the window (q)" in text
    assert "behave differently: 1 of 1 device(s) (100%); most: a" in text
    assert "transitions 4 → 2 (-50%)" in text and "events.done 2 → 1 (-50%)" in text
    assert "stranded: none" in text
    assert "gate events.hot<=+0%: passed" in text
    assert "approximate" not in text
    assert len(lines) <= 8
    e.dispose()


def test_summary_says_when_the_new_version_filters_otherwise(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    smooth = tiny(2)
    smooth["inputs"][0]["filters"] = [{"type": "ema", "alpha": 0.5}]
    e, _ = make_fleet(url, [tiny(1), smooth], {"a": ("tiny@1", timeline_readings())})
    r = engine.run(e, targets(e, "tiny@2"), *WINDOW, to="tiny@2", workers=1)
    assert driver.REFILTERED in r["per_device"][0]["note"]
    text = "\n".join(report.summary_lines(r))
    assert "approximate on 1 device(s): the new version filters its inputs otherwise" in text
    e.dispose()


def test_simulate_and_the_preview_replay_through_the_same_driver(tmp_path):
    # greenhouse: workflow simulate's trace of a device and the preview of the same device
    url = f"sqlite:///{tmp_path / 'p.db'}"
    gh = json.loads((workflows.DIR / "greenhouse.json").read_bytes())
    v3 = copy.deepcopy(gh)
    v3["version"] = 3
    v3["states"][0]["on"][0]["when"]["level"] = 2800
    temps = [2000] * 10 + [2900] * 20 + [3100] * 30 + [2000] * 60
    e, ids = make_fleet(
        url,
        [gh, v3],
        {
            "g": (
                "greenhouse@2",
                [(1, i + 1, i * 1000, T0 + i * 1000, v, T0) for i, v in enumerate(temps)],
            )
        },
    )
    with e.connect() as c:
        sim = replay.simulate(c, "greenhouse@3", "g", T0, T0 + 3_600_000)
    r = engine.run(e, targets(e, "greenhouse@3"), *WINDOW, to="greenhouse@3", workers=1)
    (d,) = r["per_device"]
    for side, key in (("preview", "new"), ("running", "running")):
        moves = sim[side]["transitions"]
        assert d[key]["state_changes"] == len(moves) and len(moves) >= 2
        assert d[key]["events_total"] == len(sim[side]["events"])
    # v3 (2800) starts cooling 10 s earlier than v2 (3000): on the first reading above 2800,
    # 5 s later (after the filters' lag)
    t2 = sim["running"]["transitions"][0]["t"]
    t3 = sim["preview"]["transitions"][0]["t"]
    assert t3 < t2
    assert d["divergence"]["t_ms"] == t3
    assert d["divergence"]["new"] == {"state": "idle", "what": "transition idle → cooling"}


# --- the driver's shortcuts change nothing ---------------------------------------------------


class _Recorder:
    """The oracle's host: every output and event with its uptime."""

    def __init__(self, prog, now):
        self.prog, self.now, self.dirty = prog, now, False
        self.trace: dict[str, list] = {"transitions": [], "events": [], "outputs": []}

    def output(self, i, v):
        self.dirty = True
        self.trace["outputs"].append(
            {"t": self.now[1], "output": self.prog.output_names[i], "value": v}
        )

    def publish(self, i, v):
        self.trace["events"].append(
            {"t": self.now[1], "event": self.prog.event_names[i], "value": v}
        )

    def set_period(self, i, ms):
        pass


def board_loop(v: driver.Version, rows_: list[tuple]) -> dict:
    """The board's main loop written out plainly (no shortcut): step each reading of a pass,
    tick, save the snapshot if anything changed, tick every deadline before the next pass;
    a later boot powers on at uptime 0, restores the last snapshot, starts, and runs its passes
    up to its first reading."""
    from shared.workflow.executor import Executor
    from shared.workflow.form import EV_SAMPLE

    now = [0, 0]
    rec = _Recorder(v.program, now)
    ex, snap, state, tr = None, None, None, 0

    def look():
        nonlocal state, tr
        if ex.transitions != tr:
            tr = ex.transitions
            rec.dirty = True
        if ex.state != state:
            rec.trace["transitions"].append(
                {"t": now[1], "from": v.state_names[state], "to": v.state_names[ex.state]}
            )
            state = ex.state

    def save():
        nonlocal snap
        if rec.dirty:
            snap, rec.dirty = ex.snapshot(), False

    def deadlines(until):
        # the passes between two readings: every deadline before ``until``, at its own time
        while True:
            d = ex.next_deadline_ms()
            if d <= 0 or now[1] + d >= until:
                break
            now[1] += d
            now[0] = now[1] & driver.MASK
            ex.tick()
            look()
            save()

    i = 0
    while i < len(rows_):
        boot, up = rows_[i][0], rows_[i][1]
        if ex is None or boot != rows_[i - 1][0]:
            t0 = up if ex is None else 0  # a later boot powers on at uptime 0
            now[0], now[1] = t0 & driver.MASK, t0
            ex = Executor(v.program, rec, lambda: now[0])
            tr = 0
            if snap is not None:
                ex.restore(snap)
            state = ex.state if state is None or snap is not None else state
            ex.start()
            look()
            rec.dirty = True
            if t0 < up:  # the board's passes before its first stored reading
                ex.tick()
                look()
                save()
                deadlines(up)
        now[0], now[1] = up & driver.MASK, up
        while i < len(rows_) and rows_[i][:2] == (boot, up):
            for k in v.inputs.get(rows_[i][3], ()):
                ex.step(EV_SAMPLE, k, rows_[i][4])
                look()
            i += 1
        ex.tick()
        look()
        save()
        if i < len(rows_) and rows_[i][0] == boot:
            deadlines(rows_[i][1])
    return rec.trace


def greenhouse(version: int, level: int, cycles: int) -> dict:
    d = json.loads((workflows.DIR / "greenhouse.json").read_bytes())
    d["version"] = version
    d["states"][0]["on"][0]["when"]["level"] = level
    # few cycles: the hold comes due with its guard false and waits, met, for the guard
    d["states"][0]["on"][0]["guard"] = [
        {"var": "cycles", "op": "<", "value": cycles},
        {"input": "humidity", "op": "<", "value": 6000},
    ]
    return d


def random_rows(seed: int, n: int = 6000) -> list[tuple]:
    import random

    rnd = random.Random(seed)
    chans = [CHANNELS.index(c) for c in ("temp", "humidity", "adc0")]
    level = {chans[0]: 2800, chans[1]: 5000, chans[2]: 2000}
    out, boot, up = [], 1, 500
    for _ in range(n):
        if rnd.random() < 0.002:
            boot, up = boot + 1, rnd.randrange(100, 3000)
        else:
            up += rnd.choice((0, 0, 250, 1000, 1000, 3000, 7000, 20000, 90000))
        c = rnd.choice(chans)
        level[c] += rnd.randrange(-300, 301)
        level[c] = max(0, min(6000, level[c]))
        out.append((boot, up, None, c, level[c]))
    # one reading per channel and pass, as a board stores them
    seen, rows_ = set(), []
    for r in out:
        if (r[0], r[1], r[3]) not in seen:
            seen.add((r[0], r[1], r[3]))
            rows_.append(r)
    return rows_


@pytest.mark.parametrize("seed", range(8))
def test_the_drivers_shortcuts_give_the_plain_board_loop(seed):
    va = version(greenhouse(2, 3000, 4))
    vb = version(greenhouse(3, 2600, 2))
    rows_ = random_rows(seed)
    cell = driver.new_cell()
    a, b = driver.Side(va, cell, trace=True), driver.Side(vb, cell, trace=True)
    driver.drive(rows_, [a, b], [(None, True), (None, True)])
    for side, v in ((a, va), (b, vb)):
        want = board_loop(v, rows_)
        assert len(want["transitions"]) >= 5
        assert side.trace == want


def test_select_rows_reads_what_the_preview_replays(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    e, ids = make_fleet(
        url,
        [tiny(1), tiny(2)],
        {"a": ("tiny@1", timeline_readings()), "b": ("tiny@1", timeline_readings()[:3])},
    )
    r = engine.run(e, targets(e, "tiny@2"), *WINDOW, to="tiny@2", workers=1)
    assert engine.select_rows(e, list(ids.values()), *WINDOW) == r["readings"] == 11
    assert engine.select_rows(e, list(ids.values()), T0 + 10**7, T0 + 10**8) == 0
    e.dispose()


def test_boots_replay_in_the_boards_order_whatever_their_ids(tmp_path):
    # boot ids are random: a reboot may get a smaller id; the board's order is its seq
    url = f"sqlite:///{tmp_path / 'p.db'}"
    swapped = [
        (9 if b == 1 else 2, s, up, ev, v, rx) for b, s, up, ev, v, rx in timeline_readings()
    ]
    e, _ = make_fleet(url, [tiny(1), tiny(2)], {"a": ("tiny@1", timeline_readings()),
                                                "b": ("tiny@1", swapped)})  # fmt: skip
    r = engine.run(e, targets(e, "tiny@2"), *WINDOW, to="tiny@2", workers=1)
    a, b = r["per_device"]
    assert b["running"] == a["running"]
    assert b["running"]["states_s"] == {"idle": 26.0, "cooling": 21.0}
    e.dispose()


def test_a_window_with_the_devices_first_reading_starts_it_afresh(tmp_path):
    # the board entered its initial state at power-on and ran its entry actions; a device that
    # reported a state before the window, or whose first reading is not in it, is restored
    greet = copy.deepcopy(TINY)
    greet["events"].append("ready")
    greet["states"][0]["entry"] = [{"publish": "ready"}]
    later = timeline_readings()[2:]
    url = f"sqlite:///{tmp_path / 'p.db'}"
    e, ids = make_fleet(url, [greet, {**greet, "version": 2}],
                        {"fresh": ("tiny@1", timeline_readings()), "later": ("tiny@1", later)})  # fmt: skip
    r = engine.run(e, targets(e, "tiny@2"), *WINDOW, to="tiny@2", workers=1)
    fresh, mid = sorted(r["per_device"], key=lambda d: d["device"])
    assert fresh["device"] == "fresh" and fresh["start_state_source"] == "initial"
    # at power-on, and again when the cooling timer ends in idle (twice)
    assert fresh["running"]["events"]["ready"] == fresh["new"]["events"]["ready"] == 3
    # restored mid-run: only the two returns from cooling (its timer at 19 s, and at 10 s of
    # boot 2), no power-on
    assert mid["running"]["events"]["ready"] == 2
    e.dispose()
