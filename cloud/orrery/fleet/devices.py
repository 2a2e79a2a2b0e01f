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
    """Insert the devices (insert-or-ignore); return the names that were new, in order."""
    now = now_ms()
    unique = list(dict.fromkeys(names))
    if not unique:
        return []
    rows = [{"name": n, "fleet": fleet, "profile": profile, "created_ms": now} for n in unique]
    with engine.begin() as conn:
        # RETURNING lists the rows actually inserted (a rowcount is -1 for a batch on PostgreSQL)
        stmt = insert_ignore(conn, DEVICES).returning(DEVICES.c.name)
        inserted = set(conn.execute(stmt, rows).scalars())
    return [n for n in unique if n in inserted]


def device_id(conn: Connection, name: str) -> int | None:
    """The id of device ``name``, or None if it is not registered."""
    return conn.execute(sa.select(DEVICES.c.id).where(DEVICES.c.name == name)).scalar()


def _offset_s(ms: int | None) -> int | None:
    return None if ms is None else round(ms / 1000)


def device_rows(conn: Connection, name: str | None = None) -> list[dict]:
    """Every device (or just ``name``) as plain data, by name: registry fields, versions,
    counters, the seqs pending in gaps or permanently lost, and ``clock_offset_s``: how far
    its current boot's clock is off the companion's (board minus companion, estimated from
    live batches, ``cloud.orrery.ingest.skew``; None while unknown)."""
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
    offsets = dict(
        conn.execute(
            sa.select(SESSIONS.c.device_id, SESSIONS.c.clock_offset_ms)
            .join(
                DEVICES,
                (DEVICES.c.id == SESSIONS.c.device_id) & (DEVICES.c.boot == SESSIONS.c.boot),
            )
            .where(SESSIONS.c.clock_offset_ms.is_not(None))
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
                "clock_offset_s": _offset_s(offsets.get(r.id)),
                "received": r.received,
                "duplicates": r.duplicates,
                "historical": r.historical,
                "pending_gap": int(gaps.get(r.id) or 0),
                "permanent_loss": int(lost.get(r.id) or 0),
            }
        )
    return out


def sessions(conn: Connection, device: int) -> list[dict]:
    """A device's boots, oldest first: when each was seen, its seqs, its time anchor and the
    estimate of its clock's offset (``clock_offset_s``, None while unknown)."""
    return [
        {
            "boot": s.boot,
            "first_seen": iso(s.first_seen_ms),
            "last_seen": iso(s.last_seen_ms),
            "seqs": None if s.first_seq is None else [s.first_seq, s.last_seq],
            "anchor": None
            if s.anchor_up_ms is None
            else {"up_ms": s.anchor_up_ms, "unix": iso(s.anchor_unix_ms)},
            "clock_offset_s": _offset_s(s.clock_offset_ms),
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
