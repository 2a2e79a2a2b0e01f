"""Migration compatibility: which devices would refuse a workflow version because the state
their running workflow is in has no place in it.

A board migrates its executor's state on install with ``shared.workflow.snapshot``: the state
maps through the new version's ``migrate`` map for the old version, else to the state of the
same name, else the board rejects the install (``migrated_state``). The companion knows what a
device runs (its retained state message: ``wf``, ``wf_ver``) and the state it last reported
(its latest workflow event's state, or its latest "state" log line, ``reported_states``), so
it applies the same rule (``strands``) before a rollout, a rollback or a preview is created,
instead of learning it from a wave of rejections.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import DEVICE_LOGS, DEVICES, EVENTS, WORKFLOWS
from shared.wire import codec
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


def strands(old: Program, new: Program, state: str | None) -> str | None:
    """Why a device running ``old`` and last reported in ``state`` would reject ``new`` (the
    board's reason), or None if it would not (or its state is unknown)."""
    if state is None or old.hash == new.hash:
        return None
    return homeless_states(old, new).get(state)


def state_name(program: Program, reported: str | int | None) -> str | None:
    """A reported state's name in ``program`` (a log line reports the state's index)."""
    if isinstance(reported, int):
        names = program.state_names
        return names[reported] if 0 <= reported < len(names) else None
    return reported


def stranded(
    conn: Connection, target_blob: bytes, running: set[tuple[str, int]]
) -> dict[int, tuple[str, str]]:
    """Devices that would reject ``target_blob``: ``{device id: (name, why)}``, among the
    devices running one of the ``running`` versions (``(name, version)``).

    A device is stranded when the version it runs (from the registry) has a state with no
    place in the target, and the last state it reported is that state (``strands``). A
    device that runs nothing, runs a version the registry does not hold, or never reported a
    state, cannot be judged and is not listed.
    """
    new = Program(target_blob)
    out: dict[int, tuple[str, str]] = {}
    for name, version in sorted(running):
        blob = conn.execute(
            sa.select(WORKFLOWS.c.blob).where(
                WORKFLOWS.c.name == name, WORKFLOWS.c.version == version
            )
        ).scalar()
        if blob is None:
            continue
        old = Program(blob)
        if old.hash == new.hash or not homeless_states(old, new):
            continue
        devices = dict(
            conn.execute(
                sa.select(DEVICES.c.id, DEVICES.c.name).where(
                    DEVICES.c.wf == name, DEVICES.c.wf_ver == version
                )
            ).all()
        )
        reported = reported_states(conn, list(devices))
        for did in sorted(reported, key=lambda d: devices[d]):
            why = strands(old, new, state_name(old, reported[did][0]))
            if why is not None:
                out[did] = (devices[did], why)
    return out


def reported_states(
    conn: Connection, device_ids: list[int], at_ms: int | None = None
) -> dict[int, tuple[str | int, int, int]]:
    """The state each device last reported (at or before ``at_ms``, by its event time, else
    the time it arrived; None: ever): ``{device id: (state, boot, up_ms)}``, the state a name
    (a workflow event's) or an index (a "state" log line's, ``state_name`` resolves it); the
    later of the two by (boot, uptime). Devices that never reported one are not listed."""
    out: dict[int, tuple[str | int, int, int]] = {}
    for table, col, extra in (
        (EVENTS, EVENTS.c.state, ()),
        (DEVICE_LOGS, DEVICE_LOGS.c.a, (DEVICE_LOGS.c.code == codec.LOG_STATE,)),
    ):
        c = table.c
        for i in range(0, len(device_ids), 500):
            ids = device_ids[i : i + 500]
            latest = sa.func.row_number().over(
                partition_by=c.device_id, order_by=(c.boot.desc(), c.up_ms.desc(), c.seq.desc())
            )
            where = [c.device_id.in_(ids), *extra]
            if at_ms is not None:
                where.append(sa.func.coalesce(c.event_ms, c.received_ms) <= at_ms)
            ranked = (
                sa.select(c.device_id, col.label("state"), c.boot, c.up_ms, latest.label("n"))
                .where(*where)
                .subquery()
            )
            q = sa.select(ranked.c.device_id, ranked.c.state, ranked.c.boot, ranked.c.up_ms)
            for did, state, boot, up in conn.execute(q.where(ranked.c.n == 1)):
                if did not in out or (boot, up) > out[did][1:]:
                    out[did] = (state, boot, up)
    return out


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
