"""A rollout's preview in the fleet layer, on real rows (SQLite and PostgreSQL): its targets,
the gate checked at create, the preview stored with the rollout and in its audit log, and
``start`` refusing a rollout whose preview broke its gate (issue 18). The replay itself is
``fleet.preview.engine``'s and tested with it."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from alembic import command

from cloud.orrery.db.engine import alembic_config, engine_for, upgrade
from cloud.orrery.db.tables import ROLLOUT_DEVICES, ROLLOUTS
from cloud.orrery.fleet.preview import stored, targets
from cloud.orrery.fleet.preview.model import Target
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.fleet.rollout.plan import RolloutError
from tests.support.preview_rows import BROKEN_GATE, LOOSE_GATE, NAMES, WARM, PreviewDb

FAST = dict(success="100%", max_failures="100%", min_devices=1, soak="0s", timeout="1h",
            rate="1000/min", health="5s")  # fmt: skip


@pytest.fixture
def pdb(db_url):
    d = PreviewDb(db_url)
    yield d
    d.close()


def orch(pdb: PreviewDb, actor: str = "alice") -> Orchestrator:
    return Orchestrator(pdb.engine, b"preview-test-secret-0123456789ab", owner="t", actor=actor)


def create(pdb: PreviewDb, gate: str | None = None, ref: str = "greenhouse@3", **kw) -> int:
    rid = orch(pdb).create(ref, "fleet=f1", "100%", **{**FAST, **kw}, preview_gate=gate).rollout_id
    assert rid is not None
    return rid


def refused(fn, *args, **kw) -> str:
    with pytest.raises(RolloutError) as exc:
        fn(*args, **kw)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def log(pdb: PreviewDb, rid: int) -> list[tuple]:
    return [tuple(r) for r in pdb.rows(
        "SELECT event, detail, actor FROM rollout_log WHERE rollout_id = :r ORDER BY id", r=rid)]  # fmt: skip


def state(pdb: PreviewDb, rid: int) -> str:
    return pdb.rows("SELECT state FROM rollouts WHERE id = :r", r=rid)[0][0]


# --- the schema ------------------------------------------------------------------------------


def test_migration_0014_up_and_down(db_url):
    engine = engine_for(db_url, migrate=False)
    upgrade(engine, "0013")
    cols = {c["name"] for c in sa.inspect(engine).get_columns("rollouts")}
    assert not cols & {"preview_gate", "preview", "preview_ms"}
    upgrade(engine)
    big = json.dumps({"to": "greenhouse@3", "per_device": ["x" * 100] * 2000})  # 200 KB of JSON
    with engine.begin() as c:
        c.execute(
            sa.insert(ROLLOUTS),
            [{"workflow_id": None, "target": "all", "waves": '["100%"]', "success_pct": 95.0,
              "max_fail_pct": 2.0, "min_devices": 1, "soak_s": 0, "timeout_s": 60,
              "rate_per_min": 100, "health_s": 60, "state": "draft", "created_ms": 0,
              "preview_gate": "g" * 500, "preview": big, "preview_ms": 2**40}],
        )  # fmt: skip
        row = c.execute(sa.select(ROLLOUTS.c.preview, ROLLOUTS.c.preview_ms)).one()
        assert (row.preview, row.preview_ms) == (big, 2**40)
    with engine.begin() as c:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = c
        command.downgrade(cfg, "0013")
    cols = {c["name"] for c in sa.inspect(engine).get_columns("rollouts")}
    assert not cols & {"preview_gate", "preview", "preview_ms"} and "window_tz" in cols
    upgrade(engine)
    with engine.connect() as c:
        assert c.execute(sa.select(ROLLOUTS.c.state, ROLLOUTS.c.preview)).all() == [("draft", None)]
    engine.dispose()


# --- targets -------------------------------------------------------------------------------


def test_targets_of_a_rollout_its_rollback_and_a_plan(pdb):
    rid = create(pdb)
    with pdb.engine.connect() as c:
        found, to = targets.of_rollout(c, rid)
    assert to == "greenhouse@3"
    assert found[0] == Target(
        found[0].device_id, "p00", "esp32-devkitc", "greenhouse@2", "greenhouse@3"
    )
    assert [t.device for t in found] == NAMES
    # p00 succeeded: it is no target any more; p01 runs @3 (installing): still one
    with pdb.engine.begin() as c:
        c.execute(sa.update(ROLLOUT_DEVICES).where(ROLLOUT_DEVICES.c.device_id == found[0].device_id)
                  .values(state="succeeded"))  # fmt: skip
    pdb.runs(["p00", "p01"], 3)
    with pdb.engine.connect() as c:
        found, _ = targets.of_rollout(c, rid)
        assert [t.device for t in found] == NAMES[1:]
        assert found[0].running == "greenhouse@3"
        # its rollback: the members on @3 back to what each ran before
        back, to = targets.of_rollout(c, rid, rollback=True)
    assert to == targets.PREVIOUS
    assert [(t.device, t.running, t.new) for t in back] == [
        ("p00", "greenhouse@3", "greenhouse@2"), ("p01", "greenhouse@3", "greenhouse@2"),
    ]  # fmt: skip
    plan = orch(pdb).create("greenhouse@3", "device=p0[45]", "100%", dry_run=True)
    with pdb.engine.connect() as c:
        got = targets.of_plan(c, plan)
    assert [(t.device, t.running, t.new) for t in got] == [
        ("p04", "greenhouse@2", "greenhouse@3"), ("p05", "greenhouse@2", "greenhouse@3"),
    ]  # fmt: skip


def test_bundle_rollouts_and_unknown_rollouts_are_refused_in_one_line(pdb):
    bid = pdb.bundle_rollout()
    with pdb.engine.connect() as c:
        assert refused(targets.of_rollout, c, bid) == (
            f"rollout {bid} rolls out app bundle app@2.0: a preview replays workflows, not app bundles"
        )
        assert refused(targets.of_rollout, c, 99) == "no rollout 99 (see `orrery rollout list`)"
    assert refused(stored.preview, pdb.engine, bid).endswith("not app bundles")
    assert refused(stored.preview, pdb.engine, 99) == "no rollout 99 (see `orrery rollout list`)"
    o = orch(pdb)
    assert refused(o.create, None, "all", bundle="app@2.0", preview_gate=LOOSE_GATE) == (
        "--preview-gate: a preview replays workflows, not app bundles"
    )


def test_nothing_to_preview_and_an_empty_window_are_refused(pdb):
    rid = create(pdb)
    assert refused(stored.preview, pdb.engine, rid, rollback=True) == (
        f"rollout {rid}: no member runs greenhouse@3 to roll back from"
    )
    msg = refused(stored.preview, pdb.engine, rid, pdb.end_ms, pdb.end_ms - 1)
    assert msg.startswith("--since ") and msg.endswith(": an empty window")
    with pdb.engine.begin() as c:
        c.execute(sa.update(ROLLOUT_DEVICES).values(state="succeeded"))
    assert refused(stored.preview, pdb.engine, rid) == (
        f"rollout {rid}: every member has succeeded already, nothing to preview"
    )
    assert pdb.rows("SELECT preview_ms FROM rollouts WHERE id = :r", r=rid) == [(None,)]


# --- the gate at create ----------------------------------------------------------------------


def test_the_gate_is_checked_at_create_and_stored(pdb):
    o = orch(pdb)
    for bad in ("events.cooling_started<=", "nonsense", "events.cooling_started=>+10%"):
        assert refused(o.create, "greenhouse@3", "all", preview_gate=bad).startswith(
            "--preview-gate: "
        )
    assert refused(o.create, "greenhouse@3", "all", preview_gate="events.alarm<=+10%") == (
        "--preview-gate: bound 'events.alarm<=+10%': greenhouse@3 has no event 'alarm' (its events: "
        "cooling_started, watering_done, fault_raised, status)"
    )
    assert "has no output 'pump'" in refused(o.create, "greenhouse@3", "all",
                                            preview_gate="outputs.pump.on_s<=+20%")  # fmt: skip
    assert refused(o.create, "greenhouse@3", "all", preview_gate="  ") == (
        "--preview-gate: give at least one bound, e.g. events.fault_raised<=+10%"
    )
    assert "longer than 500" in refused(o.create, "greenhouse@3", "all", preview_gate="x" * 501)
    assert pdb.rows("SELECT count(*) FROM rollouts") == [(0,)]  # nothing was created
    rid = create(pdb, f" {BROKEN_GATE} ")
    assert pdb.rows("SELECT preview_gate, preview FROM rollouts WHERE id = :r", r=rid) == [
        (BROKEN_GATE, None)
    ]


# --- start and the gate ----------------------------------------------------------------------


def test_start_runs_the_preview_of_a_gated_draft_and_refuses_a_broken_gate(pdb):
    rid = create(pdb, BROKEN_GATE)
    o = orch(pdb, "bob")
    msg = refused(o.start, rid)
    assert msg.startswith(f"rollout {rid} cannot start: its preview of ")
    assert f"broke its gate '{BROKEN_GATE}': {BROKEN_GATE} on 2 device(s) (p00, p01)" in msg
    assert f"or run `orrery rollout preview {rid}` again" in msg
    assert state(pdb, rid) == "draft"
    # the preview start ran is stored, and in the audit log by who started it
    (event, detail, actor), = [e for e in log(pdb, rid) if e[0] != "created"]  # fmt: skip
    assert (event, actor) == ("preview", "bob")
    assert (
        detail.startswith("greenhouse@3 over ") and "6 of 6 device(s) replayed, 2 change" in detail
    )
    assert detail.endswith(f"; gate broken: {BROKEN_GATE} on 2 device(s) (p00, p01)")
    # refused again from the stored preview, without running another
    assert refused(o.start, rid) == msg
    assert [e[0] for e in log(pdb, rid)] == ["created", "preview"]
    with pdb.engine.connect() as c:
        s = o.summary(c, rid)
    assert s["preview_gate"] == BROKEN_GATE
    assert s["preview"]["passed"] is False and s["preview"]["verdict"] == detail
    assert s["preview"]["to"] == "greenhouse@3" and s["preview"]["summary"]


def test_start_goes_on_when_the_gate_passes(pdb):
    # without a gate no preview runs at start
    plain = create(pdb)
    orch(pdb).start(plain)
    assert [e[0] for e in log(pdb, plain)] == ["created", "started"]
    orch(pdb).cancel(plain)
    rid = create(pdb, LOOSE_GATE)
    orch(pdb, "bob").start(rid)
    assert state(pdb, rid) == "running"
    (_, detail, by), started = log(pdb, rid)[1:]  # fmt: skip
    assert by == "bob" and detail.endswith(f"; gate passed ({LOOSE_GATE})")
    assert started[0] == "started"


def test_a_preview_run_again_over_another_window_lets_it_start(pdb):
    rid = create(pdb, BROKEN_GATE)
    rep = stored.preview(pdb.engine, rid, actor="carol")
    assert rep["gate"]["passed"] is False and len(rep["per_device"]) == 6
    assert refused(orch(pdb).start, rid).startswith(f"rollout {rid} cannot start")
    # an hour before these readings nothing happened on either version
    early = pdb.end_ms - 3 * 3_600_000
    again = stored.preview(pdb.engine, rid, early, early + 3_600_000, actor="carol")
    assert again["gate"]["passed"] is True and again["replayed"] == 0
    orch(pdb).start(rid)
    assert state(pdb, rid) == "running"
    assert [(e, a) for e, _, a in log(pdb, rid)] == [
        ("created", "alice"), ("preview", "carol"), ("preview", "carol"), ("started", "alice"),
    ]  # fmt: skip


def test_the_stored_preview_keeps_the_top_and_the_breaking_devices_only(pdb):
    rid = create(pdb, BROKEN_GATE)
    rep = stored.preview(pdb.engine, rid)
    with pdb.engine.connect() as c:
        kept, at = stored.stored(c, rid)
    assert at is not None
    assert {k: v for k, v in kept.items() if k not in ("per_device", "per_device_kept")} == {
        k: v for k, v in rep.items() if k != "per_device"
    }
    breaking = set(rep["gate"]["breaches"][0]["devices"])
    assert breaking == set(WARM)
    assert {d["device"] for d in kept["per_device"]} == set(rep["top"]) | breaking
    assert kept["summary"] == rep["summary"] and kept["verdict"] == rep["verdict"]


def test_a_rollback_preview_reports_stranded_boards_and_is_not_stored(pdb):
    # boards on greenhouse@1 take @3; now they cool, a state @1 has no place for
    pdb.add(["r00", "r01"], 1, "idle", warm=["r00", "r01"])
    rid = orch(pdb).create("greenhouse@3", "device=r*", "100%", **FAST).rollout_id
    pdb.runs(["r00", "r01"], 3, "cooling")
    rep = stored.preview(pdb.engine, rid, rollback=True)
    assert rep["to"] == targets.PREVIOUS
    assert [(s["device"], s["version"], s["state"]) for s in rep["stranded"]] == [
        ("r00", "greenhouse@3", "cooling"), ("r01", "greenhouse@3", "cooling"),
    ]  # fmt: skip
    assert "2 stranded (r00, r01)" in rep["verdict"]
    assert pdb.rows("SELECT preview, preview_ms FROM rollouts WHERE id = :r", r=rid) == [
        (None, None)
    ]
    assert [e[0] for e in log(pdb, rid)] == ["created"]
