"""The devices registry: registering boards, and what the CLI shows of them (rows, boots, tags)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.clock import iso, now_ms
from cloud.orrery.db.tables import (
    ALERTS,
    DEVICES,
    GAP_ANOMALY,
    GAPS,
    LOSSES,
    SESSIONS,
    TAGS,
    insert_ignore,
)


def check_ids(fleet: str, names: list[str]) -> None:
    """DeviceError naming the first of ``fleet`` and ``names`` that is not a valid id."""
    from shared.wire.codec import is_id

    for n in [fleet, *names]:
        if not is_id(n):
            raise DeviceError(f"{n!r} is not a valid id: 1..64 chars of [A-Za-z0-9_.-]")


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


def profile_of(conn: Connection, device: int) -> str | None:
    """The board profile device ``device`` (an id) was registered with, if any."""
    return conn.execute(sa.select(DEVICES.c.profile).where(DEVICES.c.id == device)).scalar()


def _offset_s(ms: int | None) -> int | None:
    return None if ms is None else round(ms / 1000)


class DeviceError(ValueError):
    """A bad device filter or tag; the message says why, in one line."""


_TAG = re.compile(r"([A-Za-z0-9_.-]{1,64})=(.{0,128})")


def parse_tags(texts: list[str]) -> list[tuple[str, str]]:
    """``key=value`` (set) or ``key=`` (remove) as (key, value) pairs; DeviceError naming the
    first that is neither."""
    out = []
    for t in texts:
        m = _TAG.fullmatch(t)
        if not m:
            raise DeviceError(
                f"tag {t!r}: expected key=value (key: 1..64 of [A-Za-z0-9_.-], value up to 128 chars)"
            )
        out.append((m.group(1), m.group(2)))
    return out


@dataclass(frozen=True)
class Filter:
    """Which devices a listing shows: by board profile, online state, and tags (each
    ``(key, value)`` must match)."""

    profile: str | None = None
    online: bool | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def where(self) -> list:
        """The filter's conditions on ``DEVICES``."""
        cond = []
        if self.profile is not None:
            cond.append(DEVICES.c.profile == self.profile)
        if self.online is not None:
            cond.append(DEVICES.c.online == self.online)
        for key, value in self.tags:
            cond.append(
                sa.exists().where(
                    TAGS.c.device_id == DEVICES.c.id, TAGS.c.key == key, TAGS.c.value == value
                )
            )
        return cond


def count_devices(conn: Connection, flt: Filter | None = None) -> int:
    """How many devices ``flt`` selects (all without one)."""
    q = sa.select(sa.func.count()).select_from(DEVICES)
    return conn.execute(q.where(*(flt.where() if flt else []))).scalar_one()


def device_rows(
    conn: Connection,
    name: str | None = None,
    flt: Filter | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[dict]:
    """Every device (or just ``name``, or those ``flt`` selects, ``limit`` of them from
    ``offset``) as plain data, by name: registry fields, versions, counters, the seqs pending
    in gaps or permanently lost, and ``clock_offset_s``: how far its current boot's clock is
    off the companion's (board minus companion, estimated from live batches,
    ``cloud.orrery.ingest.skew``; None while unknown)."""
    q = sa.select(DEVICES).order_by(DEVICES.c.name)
    if name is not None:
        q = q.where(DEVICES.c.name == name)
    if flt is not None:
        q = q.where(*flt.where())
    if limit is not None:
        q = q.limit(limit).offset(offset)
    devs = conn.execute(q).all()
    # a page (or one device) reads the counters of its own devices only
    few = [d.id for d in devs] if (name is not None or limit is not None) else None

    def only(col):
        return [] if few is None else [col.in_(few)]

    gaps = dict(  # gaps that may still arrive: not those too large to be true (anomalies)
        conn.execute(
            sa.select(GAPS.c.device_id, sa.func.sum(GAPS.c.last - GAPS.c.first + 1))
            .where(GAPS.c.status != GAP_ANOMALY, *only(GAPS.c.device_id))
            .group_by(GAPS.c.device_id)
        ).all()
    )
    lost = dict(
        conn.execute(
            sa.select(LOSSES.c.device_id, sa.func.sum(LOSSES.c.last - LOSSES.c.first + 1))
            .where(*only(LOSSES.c.device_id))
            .group_by(LOSSES.c.device_id)
        ).all()
    )
    offsets = dict(
        conn.execute(
            sa.select(SESSIONS.c.device_id, SESSIONS.c.clock_offset_ms)
            .join(
                DEVICES,
                (DEVICES.c.id == SESSIONS.c.device_id) & (DEVICES.c.boot == SESSIONS.c.boot),
            )
            .where(SESSIONS.c.clock_offset_ms.is_not(None), *only(SESSIONS.c.device_id))
        ).all()
    )
    out = []
    for r in devs:
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


def device_detail(conn: Connection, name: str) -> dict | None:
    """One device in full (``devices show``): its row, tags, the workflow state it last
    reported, its boots (sessions) and the rollouts it was in; None if it is not registered."""
    from cloud.orrery.fleet import timeline

    rows = device_rows(conn, name)
    if not rows:
        return None
    did = device_id(conn, name)
    assert did is not None
    return {
        **rows[0],
        "tags": timeline.tags(conn, did),
        "workflow_state": timeline.workflow_state(conn, did),
        "sessions": sessions(conn, did),
        "rollouts": timeline.rollout_history(conn, did),
    }


def fleet_summary(conn: Connection, flt: Filter | None = None) -> dict:
    """The fleet at a glance (of the devices ``flt`` selects): how many, online, the firmware
    and workflow versions they run and on how many devices each, by profile, their backlog,
    pending gap and permanent loss, and the live alerts raised."""
    cond = flt.where() if flt else []
    n, online, backlog, received = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.count().filter(DEVICES.c.online.is_(True)),
            sa.func.coalesce(sa.func.sum(DEVICES.c.backlog), 0),
            sa.func.coalesce(sa.func.sum(DEVICES.c.received), 0),
        ).where(*cond)
    ).one()

    def by(*cols) -> dict[str, int]:
        out: Counter[str] = Counter()
        for *vals, c in conn.execute(
            sa.select(*cols, sa.func.count()).where(*cond).group_by(*cols)
        ):
            key = "@".join(str(v) for v in vals) if vals[0] is not None else "none"
            out[key] += c
        return dict(sorted(out.items()))

    sel = sa.select(DEVICES.c.id).where(*cond)
    gap = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(GAPS.c.last - GAPS.c.first + 1), 0)).where(
            GAPS.c.status != GAP_ANOMALY, GAPS.c.device_id.in_(sel)
        )
    ).scalar_one()
    lost = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(LOSSES.c.last - LOSSES.c.first + 1), 0)).where(
            LOSSES.c.device_id.in_(sel)
        )
    ).scalar_one()
    alerts = conn.execute(
        sa.select(sa.func.count()).select_from(ALERTS).where(ALERTS.c.device_id.in_(sel))
    ).scalar_one()
    return {
        "devices": n,
        "online": online,
        "offline": n - online,
        "fw": by(DEVICES.c.fw),
        "workflows": by(DEVICES.c.wf, DEVICES.c.wf_ver),
        "profiles": by(DEVICES.c.profile),
        "backlog": int(backlog),
        "received": int(received),
        "pending_gap": int(gap),
        "permanent_loss": int(lost),
        "alerts": alerts,
    }
