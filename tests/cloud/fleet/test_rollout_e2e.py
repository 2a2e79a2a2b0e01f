"""Rollout scenarios: real firmware boards, a real Mosquitto, the real companion.

The boards are the firmware's own node and command handler (``firmware.node``), not a fake;
see tests/support/fleet.py.
"""

from __future__ import annotations

import pytest

from tests.support.fleet import Fleet

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet(tmp_path, own_broker):
    f = Fleet(tmp_path, own_broker.port, f"sqlite:///{tmp_path / 'cloud.db'}", 10)
    yield f
    f.close()


def online_on_v1(f: Fleet, n: int) -> bool:
    return f.rows("SELECT count(*) FROM devices WHERE online AND wf_ver = 1")[0][0] == n


def test_offline_boards_never_block_and_converge_when_back(fleet):
    f = fleet
    f.companion()
    f.wait(lambda: online_on_v1(f, 10))
    away = ["b01", "b04", "b07"]
    for name in away:
        f.go_away(name)
    f.wait(lambda: f.rows("SELECT count(*) FROM devices WHERE online")[0][0] == 7)
    o = f.orchestrator()
    plan = o.create("greenhouse@2", "fleet=f1", waves="2,50%,100%", success="100%", max_failures="20%",
                    min_devices=3, soak="0s", timeout="1h", rate="1000/min", health="2s")  # fmt: skip
    assert [w["count"] for w in plan.waves] == [2, 3, 5]
    o.start(plan.rollout_id)
    f.wait(lambda: f.rows("SELECT state FROM rollouts")[0][0] == "finished", seconds=60)
    states = f.states(plan.rollout_id)
    assert sorted(n for n, s in states.items() if s == "offline-pending") == away
    assert all(s == "succeeded" for n, s in states.items() if n not in away)
    with f.engine.connect() as c:
        assert o.summary(c, plan.rollout_id)["converged_text"] == "converged 70%, 3 offline pending"
    for name in away:
        f.come_back(name)
    f.wait(lambda: all(s == "succeeded" for s in f.states(plan.rollout_id).values()), seconds=60)
    f.wait(lambda: f.rows("SELECT count(*) FROM devices WHERE wf_ver = 2")[0][0] == 10)
    assert all(b.node.wf.prog.version == 2 for b in f.boards.values())
    # every device got exactly one command
    assert f.rows(
        "SELECT count(*), count(DISTINCT device_id) FROM commands WHERE kind = 'install_workflow'"
    )[0] == (10, 10)


def create(f: Fleet, **kw) -> int:
    args = dict(waves="2,50%,100%", success="100%", max_failures="20%", min_devices=3, soak="0s",
                timeout="1h", rate="1000/min", health="2s")  # fmt: skip
    args.update(kw)
    o = f.orchestrator()
    plan = o.create(
        kw.pop("workflow", "greenhouse@2"),
        kw.pop("target", "fleet=f1"),
        **{k: v for k, v in args.items() if k not in ("workflow", "target")},
    )
    o.start(plan.rollout_id)
    return plan.rollout_id


def rollout_state(f: Fleet, rid: int) -> tuple:
    return tuple(f.rows("SELECT state, reason FROM rollouts WHERE id = :r", r=rid)[0])


def break_sensors(f: Fleet, names) -> None:
    for n in names:
        f.boards[n].hal.configure("temp", dropout_ppm=1_000_000)  # v2 reads temp and humidity
        f.boards[n].hal.configure("humidity", dropout_ppm=1_000_000)


def test_failing_health_window_auto_pauses_then_retry_the_failures(fleet):
    f = fleet
    f.companion()
    f.wait(lambda: online_on_v1(f, 10))
    break_sensors(f, f.boards)  # every board will fail v2's health window
    rid = create(f, waves="3,100%", success="95%", max_failures="20%", min_devices=3)
    f.wait(lambda: rollout_state(f, rid)[0] == "paused", seconds=60)
    state, reason = rollout_state(f, rid)
    assert reason.startswith("failure threshold: 3 of 3 decided devices failed")
    states = f.states(rid)
    assert (
        sorted(states.values()).count("failed") == 3
        and sorted(states.values()).count("queued") == 7
    )
    assert all(b.node.wf.prog.version == 1 for b in f.boards.values()), "failed boards rolled back"
    f.run(3000)
    assert sorted(f.states(rid).values()).count("queued") == 7, "a paused rollout sends nothing"
    # the operator fixes the sensors and retries just the failures
    for b in f.boards.values():
        b.hal.configure("temp", dropout_ppm=0)
        b.hal.configure("humidity", dropout_ppm=0)
    o = f.orchestrator()
    assert o.retry_failed(rid) == 3
    o.resume(rid)
    f.wait(lambda: rollout_state(f, rid)[0] == "finished", seconds=60)
    assert set(f.states(rid).values()) == {"succeeded"}
    ids = [
        i for (i,) in f.rows("SELECT id FROM commands WHERE kind = 'install_workflow' ORDER BY id")
    ]
    assert len(ids) == 13 and sum(i.endswith(":2") for i in ids) == 3, (
        "only the 3 failures were retried"
    )
    log = [e for (e,) in f.rows("SELECT event FROM rollout_log WHERE rollout_id = :r", r=rid)]
    assert "auto-paused" in log and "retry" in log and "resumed" in log and log[-1] == "finished"


def test_cancel_mid_wave_never_gets_stuck(fleet):
    f = fleet
    f.companion()
    f.wait(lambda: online_on_v1(f, 10))
    o = f.orchestrator()
    plan = o.create("greenhouse@2", "fleet=f1", waves="5,100%", success="100%", max_failures="20%",
                    min_devices=3, soak="0s", timeout="1h", rate="1000/min", health="30s")  # fmt: skip
    rid = plan.rollout_id
    away = plan.waves[0]["devices"][0]  # a wave-1 board is offline when the rollout starts
    f.go_away(away)
    f.wait(lambda: f.rows("SELECT online FROM devices WHERE name = :n", n=away)[0][0] in (False, 0))
    o.start(rid)
    # wave 1 is in its health window (30 s of virtual time)
    f.wait(
        lambda: (
            sum(s in ("installing", "acked", "offline-pending") for s in f.states(rid).values())
            == 5
        ),
        seconds=60,
    )
    res = o.cancel(rid)
    assert rollout_state(f, rid)[0] == "canceled"
    states = f.states(rid)
    # queued (wave 2) and the offline board are canceled at once; in-flight boards keep going
    assert res["canceled_devices"] == 6 and sum(s == "canceled" for s in states.values()) == 6
    assert states[away] == "canceled"
    f.wait(lambda: all(s in ("succeeded", "canceled") for s in f.states(rid).values()), seconds=60)
    assert sum(s == "succeeded" for s in f.states(rid).values()) == 4
    assert f.rows(
        "SELECT status FROM commands WHERE device_id = (SELECT id FROM devices WHERE name = :n)",
        n=away,
    ) == [("canceled",)]


def test_device_joining_mid_rollout_is_picked_up(fleet):
    f = fleet
    f.companion()
    f.wait(lambda: online_on_v1(f, 10))
    rid = create(f, waves="2,50%,100%", soak="20s")
    f.wait(lambda: "succeeded" in f.states(rid).values(), seconds=60)
    late = f.add("late-01")
    late.run(100)
    f.wait(lambda: f.rows("SELECT state FROM rollouts")[0][0] == "finished", seconds=90)
    assert f.states(rid)["late-01"] == "succeeded"
    assert f.boards["late-01"].node.wf.prog.version == 2
    log = f.rows("SELECT detail FROM rollout_log WHERE event = 'joined'")
    assert log and "late-01 joined the target" in log[0][0]


def test_orchestrator_killed_mid_wave_resumes_without_resending(tmp_path, own_broker):
    f = Fleet(tmp_path, own_broker.port, f"sqlite:///{tmp_path / 'cloud.db'}", 8)
    try:
        log = tmp_path / "serve.log"
        p = f.companion_process("c1", log)
        f.wait(lambda: online_on_v1(f, 8), seconds=60)
        rid = create(f, waves="2,4,100%", health="5s")
        f.wait(lambda: "succeeded" in f.states(rid).values(), seconds=60)
        p.kill()  # kill -9 mid-rollout
        p.wait()
        f.run(10_000)  # boards keep working; nothing drives the rollout now
        f.companion_process("c1", log)
        f.wait(lambda: f.rows("SELECT state FROM rollouts")[0][0] == "finished", seconds=90)
        assert set(f.states(rid).values()) == {"succeeded"}, log.read_text()[-3000:]
        # one command per device, never a second attempt
        ids = [i for (i,) in f.rows("SELECT id FROM commands")]
        assert len(ids) == 8 and all(i.endswith(":1") for i in ids)
        # the commands each board remembers an ack of (firmware.sampler: a line per ack)
        acked = [{x.split(" ")[0] for x in b.node.acks.split("\n") if x} for b in f.boards.values()]
        assert all(len([k for k in a if k.startswith("rollout:")]) == 1 for a in acked)
    finally:
        f.close()


def test_two_orchestrators_on_one_postgres_never_both_drive(tmp_path, own_broker, pg_url):
    f = Fleet(tmp_path, own_broker.port, pg_url, 8)
    try:
        f.companion("c1")
        f.companion("c2")
        f.wait(lambda: online_on_v1(f, 8), seconds=60)
        rid = create(f, waves="2,50%,100%")
        f.wait(lambda: f.rows("SELECT state FROM rollouts")[0][0] == "finished", seconds=90)
        assert set(f.states(rid).values()) == {"succeeded"}
        assert f.rows("SELECT count(*), count(DISTINCT device_id) FROM commands")[0] == (8, 8)
        owners = f.rows("SELECT DISTINCT lease_owner FROM rollouts")
        assert len(owners) == 1
    finally:
        f.close()
