"""A rollout's members one by one: each device's wave, state and reason (``orrery rollout
devices``, ``GET /rollouts/{id}/devices``)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.clock import iso
from cloud.orrery.db.tables import DEVICES, ROLLOUT_DEVICES, ROLLOUTS
from cloud.orrery.fleet.rollout.plan import RolloutError

RD = ROLLOUT_DEVICES


def members(
    conn: Connection,
    rid: int,
    state: str | None = None,
    wave: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[dict], int]:
    """Rollout ``rid``'s members by wave and name (``limit`` from ``offset``; of one state, of
    one wave counted from 1) and how many there are: each device's state, the reason (its last
    detail), attempts, the version it came from, its command and when it last changed.
    RolloutError if there is no such rollout."""
    if conn.execute(sa.select(ROLLOUTS.c.id).where(ROLLOUTS.c.id == rid)).first() is None:
        raise RolloutError(f"no rollout {rid} (see `orrery rollout list`)")
    cond = [RD.c.rollout_id == rid]
    if state is not None:
        cond.append(RD.c.state == state)
    if wave is not None:
        cond.append(RD.c.wave == wave - 1)
    total = conn.execute(sa.select(sa.func.count()).select_from(RD).where(*cond)).scalar_one()
    q = (
        sa.select(RD, DEVICES.c.name, DEVICES.c.online)
        .join(DEVICES, DEVICES.c.id == RD.c.device_id)
        .where(*cond)
        .order_by(RD.c.wave, DEVICES.c.name)
        .limit(limit)
        .offset(offset)
    )
    rows = [
        {"device": r.name, "wave": r.wave + 1, "state": r.state, "reason": r.detail,
         "attempts": r.attempt, "from": None if r.prev_wf is None else f"{r.prev_wf}@{r.prev_ver}",
         "command": r.command_id, "online": bool(r.online), "sent": iso(r.sent_ms),
         "updated": iso(r.updated_ms)}
        for r in conn.execute(q)
    ]  # fmt: skip
    return rows, total
