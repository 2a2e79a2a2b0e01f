"""The devices registry: registering boards, and what the CLI shows of them (rows, boots, tags)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.clock import iso, now_ms
from cloud.orrery.db.tables import (
    DEVICES,
    GAP_ANOMALY,
    GAPS,
    LOSSES,
    SESSIONS,
    TAGS,
    insert_ignore,
)


def register(engine: sa.Engine, fleet: str, profile: str | None, names: list[str]) -> list[str]:
    """Insert the devices (insert-or-ignore); return the names that were new."""
    now = now_ms()
    new = []
    with engine.begin() as conn:
        for name in dict.fromkeys(names):
            row = {"name": name, "fleet": fleet, "profile": profile, "created_ms": now}
            if conn.execute(insert_ignore(conn, DEVICES), [row]).rowcount:
                new.append(name)
    return new


def device_id(conn: Connection, name: str) -> int | None:
    """The id of device ``name``, or None if it is not registered."""
    return conn.execute(sa.select(DEVICES.c.id).where(DEVICES.c.name == name)).scalar()


def device_rows(conn: Connection, name: str | None = None) -> list[dict]:
    """Every device (or just ``name``) as plain data, by name: registry fields, versions,
    counters, and the seqs pending in gaps or permanently lost."""
    q = sa.select(DEVICES).order_by(DEVICES.c.name)
    if name is not None:
        q = q.where(DEVICES.c.name == name)
    gaps = dict(  # gaps that may still arrive: not those too large to be true (anomalies)
        conn.execute(
            sa.select(GAPS.c.device_id, sa.func.sum(GAPS.c.last - GAPS.c.first + 1))
            .where(GAPS.c.status != GAP_ANOMALY)
            .group_by(GAPS.c.device_id)
        ).all()
    )
    lost = dict(
        conn.execute(
            sa.select(LOSSES.c.device_id, sa.func.sum(LOSSES.c.last - LOSSES.c.first + 1)).group_by(
                LOSSES.c.device_id
            )
        ).all()
    )
    out = []
    for r in conn.execute(q):
        out.append(
            {
                "device": r.name,
                "fleet": r.fleet,
                "profile": r.profile,
                "online": r.online,
                "last_seen": iso(r.last_seen_ms),
                "boot": r.boot,
                "fw": r.fw,
                "workflow": None if r.wf is None else f"{r.wf}@{r.wf_ver}",
                "wf_hash": r.wf_hash,
                "backlog": r.backlog,
                "last_seq": r.last_seq,
                "time_synced": r.synced,
                "received": r.received,
                "duplicates": r.duplicates,
                "historical": r.historical,
                "pending_gap": int(gaps.get(r.id) or 0),
                "permanent_loss": int(lost.get(r.id) or 0),
            }
        )
    return out


def sessions(conn: Connection, device: int) -> list[dict]:
    """A device's boots, oldest first: when each was seen, its seqs and its time anchor."""
    return [
        {
            "boot": s.boot,
            "first_seen": iso(s.first_seen_ms),
            "last_seen": iso(s.last_seen_ms),
            "seqs": None if s.first_seq is None else [s.first_seq, s.last_seq],
            "anchor": None
            if s.anchor_up_ms is None
            else {"up_ms": s.anchor_up_ms, "unix": iso(s.anchor_unix_ms)},
        }
        for s in conn.execute(
            sa.select(SESSIONS)
            .where(SESSIONS.c.device_id == device)
            .order_by(SESSIONS.c.first_seen_ms)
        )
    ]


def set_tags(conn: Connection, device: int, tags: list[tuple[str, str]]) -> dict[str, str]:
    """Set each ``(key, value)`` tag of a device, removing those with an empty value; return
    the device's tags now."""
    for key, value in tags:
        conn.execute(sa.delete(TAGS).where(TAGS.c.device_id == device, TAGS.c.key == key))
        if value:
            conn.execute(sa.insert(TAGS), [{"device_id": device, "key": key, "value": value}])
    return dict(
        conn.execute(sa.select(TAGS.c.key, TAGS.c.value).where(TAGS.c.device_id == device)).all()
    )
