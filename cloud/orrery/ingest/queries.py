"""What the ingest stored, as the CLI shows it: a device's readings to export, open gaps and
permanent losses, and per-device statistics (conflicts, readings stored without an event time
that cannot be true, gaps too large to be true) with the dead letters by reason."""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.clock import iso
from cloud.orrery.db.tables import (
    ALERTS,
    DEAD_LETTERS,
    DEVICES,
    GAP_ANOMALY,
    GAPS,
    LOSSES,
    READINGS,
)
from cloud.orrery.fleet.devices import device_rows
from cloud.orrery.ingest.channels import channel_info

EXPORT_COLUMNS = (
    "seq", "boot", "channel", "channel_name", "value", "scaled", "unit", "event_time", "event_ms",
    "up_ms", "historical",
)  # fmt: skip
EXPORT_FORMATS = ("csv", "jsonl")
FLOW_COLUMNS = ("received", "duplicates", "historical", "pending_gap", "permanent_loss")
ANOMALY_COLUMNS = ("conflicts", "bad_time", "gap_anomalies")
STAT_COLUMNS = FLOW_COLUMNS + ANOMALY_COLUMNS


def export_rows(
    conn: Connection,
    device: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    profile: str | None = None,
) -> Iterator[tuple]:
    """One device's readings (``EXPORT_COLUMNS``) in event-time order, those without a time
    anchor last; ``since_ms``/``until_ms`` bound the event time. Each raw value comes with its
    channel's name and the value scaled to its unit, from the board ``profile`` (a channel
    it does not name: ``channel N``, scale 1). Streamed."""
    info = channel_info(profile)
    q = sa.select(READINGS).where(READINGS.c.device_id == device)
    if since_ms is not None:
        q = q.where(READINGS.c.event_ms >= since_ms)
    if until_ms is not None:
        q = q.where(READINGS.c.event_ms < until_ms)
    q = q.order_by(READINGS.c.event_ms.is_(None), READINGS.c.event_ms, READINGS.c.seq)
    for r in conn.execution_options(stream_results=True, yield_per=5000).execute(q):
        name, scale, unit = info.get(r.channel, (f"channel {r.channel}", 1.0, ""))
        yield (
            r.seq,
            r.boot,
            r.channel,
            name,
            r.value,
            round(r.value * scale, 6),
            unit,
            iso(r.event_ms),
            r.event_ms,
            r.up_ms,
            bool(r.historical),
        )


def export_lines(
    conn: Connection,
    device: int,
    fmt: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    profile: str | None = None,
) -> Iterator[str]:
    """``export_rows`` as text lines (each ending in a newline): CSV with a header row, or
    JSONL (one object per reading). ValueError for another ``fmt``."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format {fmt!r}: expected csv or jsonl")
    rows = export_rows(conn, device, since_ms, until_ms, profile)
    if fmt == "jsonl":
        for row in rows:
            yield json.dumps(dict(zip(EXPORT_COLUMNS, row, strict=True)), ensure_ascii=False) + "\n"
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in itertools.chain([EXPORT_COLUMNS], rows):
        w.writerow(row)
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()


def gaps_and_losses(conn: Connection, device: int | None = None) -> list[dict]:
    """Open gaps (may still arrive), then permanent losses, each with its reason; every
    device's, or one device's."""
    names = dict(conn.execute(sa.select(DEVICES.c.id, DEVICES.c.name)).all())
    cond_g = [] if device is None else [GAPS.c.device_id == device]
    cond_l = [] if device is None else [LOSSES.c.device_id == device]
    return [
        {
            "device": names.get(g.device_id),
            "first": g.first,
            "last": g.last,
            "count": g.last - g.first + 1,
            "kind": "gap",
            "status": g.status,
            "reason": g.reason,
            "since": iso(g.detected_ms),
        }
        for g in conn.execute(
            sa.select(GAPS).where(*cond_g).order_by(GAPS.c.device_id, GAPS.c.first)
        )
    ] + [
        {
            "device": names.get(x.device_id),
            "first": x.first,
            "last": x.last,
            "count": x.last - x.first + 1,
            "kind": "lost",
            "status": "permanent",
            "reason": x.reason,
            "since": iso(x.reported_ms),
        }
        for x in conn.execute(
            sa.select(LOSSES).where(*cond_l).order_by(LOSSES.c.device_id, LOSSES.c.first)
        )
    ]


def stats(conn: Connection) -> dict:
    """Per device ``STAT_COLUMNS``, their totals, and dead letters counted by reason.

    ``conflicts``: readings refused because a different one is stored under their (boot, seq);
    ``bad_time``: readings stored without event time because theirs could not be true;
    ``gap_anomalies``: gaps too large to be true (never requested, not in ``pending_gap``).
    """
    extra = {
        r.name: {"conflicts": r.conflicts, "bad_time": r.bad_time, "gap_anomalies": 0}
        for r in conn.execute(sa.select(DEVICES.c.name, DEVICES.c.conflicts, DEVICES.c.bad_time))
    }
    for name, n in conn.execute(
        sa.select(DEVICES.c.name, sa.func.count())
        .join(GAPS, GAPS.c.device_id == DEVICES.c.id)
        .where(GAPS.c.status == GAP_ANOMALY)
        .group_by(DEVICES.c.name)
    ):
        extra[name]["gap_anomalies"] = n
    rows = [
        {k: {**r, **extra[r["device"]]}[k] for k in ("device", *STAT_COLUMNS)}
        for r in device_rows(conn)
    ]
    dead: dict[str, int] = {}
    for reason, n in conn.execute(
        sa.select(DEAD_LETTERS.c.reason, sa.func.count()).group_by(DEAD_LETTERS.c.reason)
    ):
        kind = reason.split(":")[0]  # "oversize: 5000 bytes > 4634" counts as "oversize"
        dead[kind] = dead.get(kind, 0) + n
    totals = {k: sum(r[k] for r in rows) for k in STAT_COLUMNS}
    return {"devices": rows, "totals": totals, "dead_letters": dead}


def dead_letters(
    conn: Connection,
    device: str | None = None,
    reason: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[dict], int]:
    """Messages the ingest could not accept, newest first (``limit`` from ``offset``), and how
    many there are: of one device (by name, as the topic gave it), with a reason that starts
    with ``reason``. The payload is not shown, only its size."""
    cond = []
    if device is not None:
        cond.append(DEAD_LETTERS.c.device == device)
    if reason is not None:
        cond.append(DEAD_LETTERS.c.reason.startswith(reason, autoescape=True))
    total = conn.execute(
        sa.select(sa.func.count()).select_from(DEAD_LETTERS).where(*cond)
    ).scalar_one()
    q = (
        sa.select(DEAD_LETTERS.c.id, DEAD_LETTERS.c.received_ms, DEAD_LETTERS.c.topic,
                  DEAD_LETTERS.c.device, DEAD_LETTERS.c.reason, DEAD_LETTERS.c.size)
        .where(*cond)
        .order_by(DEAD_LETTERS.c.id.desc())
        .limit(limit)
        .offset(offset)
    )  # fmt: skip
    rows = [
        {"id": r.id, "received": iso(r.received_ms), "topic": r.topic, "device": r.device,
         "reason": r.reason, "size": r.size}
        for r in conn.execute(q)
    ]  # fmt: skip
    return rows, total


def alerts(
    conn: Connection, device: int | None = None, limit: int = 100, offset: int = 0
) -> tuple[list[dict], int]:
    """Live alerts (a live reading crossed an alert rule of ``orrery serve --alert``), newest
    first (``limit`` from ``offset``), of every device or one, and how many there are."""
    cond = [] if device is None else [ALERTS.c.device_id == device]
    total = conn.execute(sa.select(sa.func.count()).select_from(ALERTS).where(*cond)).scalar_one()
    q = (
        sa.select(ALERTS, DEVICES.c.name)
        .join(DEVICES, DEVICES.c.id == ALERTS.c.device_id)
        .where(*cond)
        .order_by(ALERTS.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = [
        {"id": r.id, "device": r.name, "rule": r.rule, "boot": r.boot, "seq": r.seq,
         "value": r.value, "event_time": iso(r.event_ms), "created": iso(r.created_ms)}
        for r in conn.execute(q)
    ]  # fmt: skip
    return rows, total
