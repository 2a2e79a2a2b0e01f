"""Migration compatibility: which devices would refuse a workflow version because the state
their running workflow is in has no place in it.

A board migrates its executor's state on install with ``shared.workflow.snapshot``: the state
maps through the new version's ``migrate`` map for the old version, else to the state of the
same name, else the board rejects the install (``migrated_state``). The companion knows what a
device runs (its retained state message: ``wf``, ``wf_ver``) and the state it last reported
(the state of its latest workflow event), so it applies the same rule before a rollout or a
rollback is created, instead of learning it from a wave of rejections.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import DEVICES, EVENTS, WORKFLOWS
from shared.workflow.program import Program
from shared.workflow.snapshot import migrated_state


def homeless_states(old: Program, new: Program) -> dict[str, str]:
    """``old``'s states that have no place in ``new``, each with the board's reason."""
    out = {}
    for name in old.state_names:
        try:
            migrated_state(old, name, new)
        except ValueError as exc:
            out[name] = str(exc)
    return out


def stranded(
    conn: Connection, target_blob: bytes, running: set[tuple[str, int]]
) -> dict[int, tuple[str, str]]:
    """Devices that would reject ``target_blob``: ``{device id: (name, why)}``, among the
    devices running one of the ``running`` versions (``(name, version)``).

    A device is stranded when the version it runs (from the registry) has a state with no
    place in the target, and the last state it reported is that state. A device that runs
    nothing, runs a version the registry does not hold, or never reported a state, cannot be
    judged and is not listed.
    """
    new = Program(target_blob)
    out: dict[int, tuple[str, str]] = {}
    for name, version in sorted(running):
        blob = conn.execute(
            sa.select(WORKFLOWS.c.blob).where(WORKFLOWS.c.name == name, WORKFLOWS.c.version == version)
        ).scalar()
        if blob is None:
            continue
        old = Program(blob)
        if old.hash == new.hash:
            continue
        homeless = homeless_states(old, new)
        if not homeless:
            continue
        for did, device, state in last_states(conn, name, version, list(homeless)):
            out[did] = (device, homeless[state])
    return out


def last_states(
    conn: Connection, name: str, version: int, states: list[str]
) -> list[tuple[int, str, str]]:
    """``(device id, name, state)`` of the devices running ``name@version`` whose latest
    workflow event (by arrival, then sequence) was reported in one of ``states``."""
    latest = sa.func.row_number().over(
        partition_by=EVENTS.c.device_id,
        order_by=(EVENTS.c.received_ms.desc(), EVENTS.c.seq.desc()),
    )
    ranked = (
        sa.select(EVENTS.c.device_id, DEVICES.c.name, EVENTS.c.state, latest.label("n"))
        .join(DEVICES, DEVICES.c.id == EVENTS.c.device_id)
        .where(DEVICES.c.wf == name, DEVICES.c.wf_ver == version)
        .subquery()
    )
    q = sa.select(ranked.c.device_id, ranked.c.name, ranked.c.state).where(
        ranked.c.n == 1, ranked.c.state.in_(states)
    )
    return [tuple(r) for r in conn.execute(q.order_by(ranked.c.name))]


def refusal(workflow: str, stranded_devices: list[tuple[str, str]]) -> str:
    """The error that names the devices a version would strand and why."""
    names = sorted(stranded_devices)
    shown = ", ".join(f"{n} ({why.split(':')[0]})" for n, why in names[:8])
    more = f" … (+{len(names) - 8})" if len(names) > 8 else ""
    return (
        f"{len(names)} device(s) would reject {workflow}: the state they last reported has no "
        f"place in it: {shown}{more}; push a version whose migrate map places that state, or "
        "wait until they have left it"
    )
