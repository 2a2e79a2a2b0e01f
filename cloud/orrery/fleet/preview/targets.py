"""Which devices a preview replays, and through which versions: a rollout's members (or, for a
rollback, the members it changed), or the devices of a plan not yet created (``create
--dry-run --preview``)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import BUNDLES, DEVICES, ROLLOUT_DEVICES, ROLLOUTS, WORKFLOWS
from cloud.orrery.fleet.commands import CHUNK
from cloud.orrery.fleet.preview.model import Target
from cloud.orrery.fleet.rollout.plan import Plan, RolloutError

#: the ``to`` label of a rollback's preview (model.py): each member goes back to its own version
PREVIOUS = "previous versions"


def _running(wf: str | None, ver: int | None) -> str | None:
    return None if wf is None or ver is None else f"{wf}@{ver}"


def subject(conn: Connection, rid: int) -> tuple[str, int]:
    """``(name, version)`` of the workflow rollout ``rid`` rolls out. RolloutError (one line)
    for no such rollout, and for a bundle rollout: a preview replays workflows."""
    r = conn.execute(
        sa.select(ROLLOUTS.c.workflow_id, ROLLOUTS.c.bundle_id).where(ROLLOUTS.c.id == rid)
    ).first()
    if r is None:
        raise RolloutError(f"no rollout {rid} (see `orrery rollout list`)")
    if r.workflow_id is None:
        b = conn.execute(
            sa.select(BUNDLES.c.name, BUNDLES.c.version).where(BUNDLES.c.id == r.bundle_id)
        ).first()
        what = f"app bundle {b.name}@{b.version}" if b else "an app bundle"
        raise RolloutError(
            f"rollout {rid} rolls out {what}: a preview replays workflows, not app bundles"
        )
    wf = conn.execute(
        sa.select(WORKFLOWS.c.name, WORKFLOWS.c.version).where(WORKFLOWS.c.id == r.workflow_id)
    ).one()
    return wf.name, wf.version


def of_rollout(conn: Connection, rid: int, rollback: bool = False) -> tuple[list[Target], str]:
    """The targets of rollout ``rid`` and the ``to`` label of their preview.

    Forward: its members not yet succeeded, each from the version its device runs now to the
    rollout's. ``rollback``: its members whose device runs the rollout's version, each back to
    the version it ran before (members that ran no workflow before are left out, as
    ``rollout rollback`` leaves them). By device name."""
    name, version = subject(conn, rid)
    m = ROLLOUT_DEVICES.c
    q = (
        sa.select(DEVICES.c.id, DEVICES.c.name, DEVICES.c.profile, DEVICES.c.wf, DEVICES.c.wf_ver,
                  m.prev_wf, m.prev_ver)
        .join(DEVICES, DEVICES.c.id == m.device_id)
        .where(m.rollout_id == rid)
        .order_by(DEVICES.c.name)
    )  # fmt: skip
    if rollback:
        q = q.where(DEVICES.c.wf == name, DEVICES.c.wf_ver == version, m.prev_wf.is_not(None),
                    m.prev_ver.is_not(None))  # fmt: skip
    else:
        q = q.where(m.state != "succeeded")
    ref = f"{name}@{version}"
    out = []
    for d in conn.execute(q):
        new = f"{d.prev_wf}@{d.prev_ver}" if rollback else ref
        out.append(Target(d.id, d.name, d.profile, _running(d.wf, d.wf_ver), new))
    return out, PREVIOUS if rollback else ref


def of_plan(conn: Connection, plan: Plan) -> list[Target]:
    """The targets of a workflow plan (``create(..., dry_run=True)``: no rollout row), each from
    the version its device runs now to the plan's. By device name."""
    if plan.kind != "workflow":
        raise RolloutError(
            f"app bundle {plan.workflow}: a preview replays workflows, not app bundles"
        )
    names = sorted(n for w in plan.waves for n in w["devices"])
    out = []
    for i in range(0, len(names), CHUNK):
        rows = conn.execute(
            sa.select(DEVICES.c.id, DEVICES.c.name, DEVICES.c.profile, DEVICES.c.wf,
                      DEVICES.c.wf_ver)
            .where(DEVICES.c.name.in_(names[i : i + CHUNK]))
            .order_by(DEVICES.c.name)
        )  # fmt: skip
        out += [
            Target(d.id, d.name, d.profile, _running(d.wf, d.wf_ver), plan.workflow) for d in rows
        ]
    return out
