"""Reconciliation: a device's received ranges merged, holes turned into gaps once the reorder
window has passed, exactly those ranges asked for again (signed ``resend`` commands), and what
the board reported dropped, or no longer holds, kept as permanent losses with their reason.

A gap's resend is asked again, with a new id, when it failed, expired or was canceled, when
the board accepted it but did not finish it (it restarted: its resend queue is in RAM), or when
the board answered DUPLICATE without a result; each time after ``RetryPolicy``'s delay for the
attempt (so a failing board is asked less and less often). Not when the board refused it by its
clock and the companion's estimate of that clock has not changed since: it would be refused the
same way (``fleet.commands`` signs it again when the estimate changes). A resend that was
published but never answered is published again by the command queue itself.

A hole larger than ``max_gap`` readings cannot be true (a board's store holds 13,056): it is a
protocol anomaly (a seq or a state's last_seq far beyond the others), kept as a gap with status
``anomaly`` and logged as an error, and never requested nor turned into a loss.
"""

from __future__ import annotations

import logging
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import DEVICES, GAP_ANOMALY, GAPS, LOSSES, RANGES
from cloud.orrery.fleet import commands
from cloud.orrery.ingest.ranges import merge, subtract
from cloud.orrery.jsonlog import jlog
from shared.wire import codec

MAX_GAP = 100_000  # readings one gap or loss report may span (`orrery serve --max-gap`)


class DeviceRef(Protocol):
    """A device as reconciliation needs it."""

    id: int
    name: str
    fleet: str


def due_devices(conn: Connection) -> list:
    """Devices to reconcile (changed since their last pass, or with gaps that may still be
    asked for), by id."""
    return conn.execute(
        sa.select(DEVICES.c.id, DEVICES.c.name, DEVICES.c.fleet)
        .where(
            sa.or_(
                DEVICES.c.dirty.is_(True),
                DEVICES.c.id.in_(
                    sa.select(GAPS.c.device_id).where(GAPS.c.status != GAP_ANOMALY).distinct()
                ),
            )
        )
        .order_by(DEVICES.c.id)
    ).all()


def reconcile_device(
    conn: Connection,
    dev: DeviceRef,
    now: int,
    *,
    secret: bytes | None,
    reorder_window_ms: int,
    resend_ttl_s: int,
    pg: bool,
    retry: commands.RetryPolicy = commands.DEFAULT_RETRY,
    max_gap: int = MAX_GAP,
) -> list[commands.Outgoing]:
    """Reconcile one device in ``conn``'s transaction; return the resend commands to publish.

    Merges its received ranges; turns holes older than ``reorder_window_ms`` into requested
    resends (signed with ``secret``), a resend the board answered without the readings into a
    ``not_held`` loss, and drops what arrived after all from its gaps and losses. A hole
    larger than ``max_gap`` is an anomaly, never requested.
    """
    if pg:
        # one reconciler per device at a time, whatever the number of companions
        got = conn.execute(
            sa.text("SELECT pg_try_advisory_xact_lock(7316002, :d)"), {"d": dev.id}
        ).scalar()
        if not got:
            return []
    d = conn.execute(
        sa.select(DEVICES.c.last_seq, DEVICES.c.backlog, DEVICES.c.dirty).where(
            DEVICES.c.id == dev.id
        )
    ).first()
    conn.execute(sa.update(DEVICES).where(DEVICES.c.id == dev.id).values(dirty=False))
    rows = conn.execute(
        sa.select(RANGES.c.id, RANGES.c.first, RANGES.c.last).where(RANGES.c.device_id == dev.id)
    ).all()
    received = merge((r.first, r.last) for r in rows)
    if len(received) != len(rows):
        conn.execute(sa.delete(RANGES).where(RANGES.c.id.in_([r.id for r in rows])))
        conn.execute(
            sa.insert(RANGES),
            [{"device_id": dev.id, "first": a, "last": b} for a, b in received],
        )
    # the board counts everything up to its ack cursor (last_seq - backlog) as delivered
    frontier = received[-1][1] if received else 0
    if d.last_seq is not None and d.backlog is not None:
        frontier = max(frontier, d.last_seq - d.backlog)
    holes = subtract([(1, frontier)], received) if frontier else []

    # permanent loss: what the board reported dropped, minus anything that arrived after all
    lrows = conn.execute(
        sa.select(
            LOSSES.c.id,
            LOSSES.c.first,
            LOSSES.c.last,
            LOSSES.c.reason,
            LOSSES.c.source,
            LOSSES.c.boot,
            LOSSES.c.reported_ms,
        ).where(LOSSES.c.device_id == dev.id)
    ).all()
    kept = []
    for r in lrows:
        for a, b in subtract([(r.first, r.last)], received):
            kept.append((a, b, r.reason, r.source, r.boot, r.reported_ms))
    if kept != [(r.first, r.last, r.reason, r.source, r.boot, r.reported_ms) for r in lrows]:
        conn.execute(sa.delete(LOSSES).where(LOSSES.c.device_id == dev.id))
        if kept:
            conn.execute(
                sa.insert(LOSSES),
                [
                    {
                        "device_id": dev.id,
                        "first": a,
                        "last": b,
                        "reason": why,
                        "source": src,
                        "boot": boot,
                        "reported_ms": t,
                    }
                    for a, b, why, src, boot, t in kept
                ],
            )
    lost = merge((k[0], k[1]) for k in kept)
    want = subtract(holes, lost)

    grows = conn.execute(
        sa.select(GAPS).where(GAPS.c.device_id == dev.id).order_by(GAPS.c.first)
    ).all()
    old = {(g.first, g.last): g for g in grows}
    cmd_status = {}
    ids = [g.command_id for g in grows if g.command_id]
    if ids:
        cmd_status = {
            r.id: r
            for r in conn.execute(
                sa.select(
                    commands.COMMANDS.c.id,
                    commands.COMMANDS.c.status,
                    commands.COMMANDS.c.acked_ms,
                    commands.COMMANDS.c.ack_code,
                    commands.COMMANDS.c.ack_detail,
                    commands.COMMANDS.c.skew_s,
                    commands.COMMANDS.c.skew_boot,
                ).where(commands.COMMANDS.c.id.in_(ids))
            )
        }
    new_gaps = []
    new_losses = []
    outgoing = []
    for a, b in want:
        g = old.get((a, b))
        if g is None:
            # a hole that shrank keeps the request of the gap it came from
            g = next((x for x in grows if x.first <= a and b <= x.last), None)
        if b - a + 1 > max_gap:
            new_gaps.append(_anomaly(dev, a, b, g, now, max_gap))
            continue
        if g is not None and g.status == GAP_ANOMALY:
            g = None  # it shrank to a size that can be true: an ordinary gap from now on
        gap = {
            "device_id": dev.id,
            "first": a,
            "last": b,
            "status": g.status if g else "pending",
            "reason": g.reason if g else "missing: waiting for the reorder window",
            "detected_ms": g.detected_ms if g else now,
            "updated_ms": g.updated_ms if g else now,
            "command_id": g.command_id if g else None,
            "attempts": g.attempts if g else 0,
        }
        cmd = cmd_status.get(gap["command_id"]) if gap["command_id"] else None
        if gap["status"] == "requested" and cmd is not None:
            again = None  # why the resend is asked again, if it is
            if cmd.status == "done" and cmd.ack_code != codec.DUPLICATE:
                if cmd.acked_ms is not None and now - cmd.acked_ms >= reorder_window_ms:
                    # the board resent everything it holds and this is still missing
                    new_losses.append((a, b))
                    continue
            elif cmd.status == "done":
                again = "resend answered DUPLICATE without a result (the board restarted)"
            elif cmd.status == "acked":
                again = "resend accepted but not finished (the board restarted?)"
            elif cmd.status == "refused":
                gap["reason"] = (
                    f"missing: resend refused by the board's clock ({cmd.ack_detail}); "
                    "signed again once its clock is estimated anew"
                )
            elif cmd.status in ("failed", "expired", "canceled"):
                if commands.clock_refusal(cmd.ack_code, cmd.ack_detail) and commands.same_clock(
                    conn, dev.id, cmd.skew_s, cmd.skew_boot
                ):
                    why = (cmd.ack_detail or "").rsplit(": ", 1)[-1]
                    gap["reason"] = (
                        f"missing: resend refused by the board's clock ({why}, skew "
                        f"{cmd.skew_s} s); not asked again until its clock is estimated anew"
                    )
                else:
                    again = f"resend {cmd.status}"
            if again:
                gap["status"] = "pending"
                gap["reason"] = f"{again}; will ask again"
        if (
            gap["status"] == "pending"
            and now - gap["detected_ms"] >= reorder_window_ms
            and now - gap["updated_ms"]
            >= (retry.delay_ms(gap["attempts"]) if gap["attempts"] else 0)
        ):
            if secret is None:
                gap["reason"] = "missing: no fleet secret to sign a resend"
            else:
                attempt = gap["attempts"] + 1
                cmd_id = f"resend:{dev.id}:{a}-{b}:{attempt}"
                o = commands.queue(
                    conn,
                    secret,
                    device_id=dev.id,
                    device=dev.name,
                    fleet=dev.fleet,
                    cmd_id=cmd_id,
                    kind="resend",
                    args={"first": a, "last": b},
                    source="reconcile",
                    now_ms=now,
                    ttl_s=resend_ttl_s,
                )
                if o:
                    outgoing.append(o)
                gap.update(
                    status="requested",
                    command_id=cmd_id,
                    attempts=attempt,
                    updated_ms=now,
                    reason=f"missing: resend {a}..{b} requested",
                )
                jlog("resend_requested", device=dev.name, first=a, last=b, attempt=attempt)
        new_gaps.append(gap)
    current = [(g.first, g.last, g.status, g.command_id, g.reason) for g in grows]
    if current != [
        (g["first"], g["last"], g["status"], g["command_id"], g["reason"]) for g in new_gaps
    ]:
        conn.execute(sa.delete(GAPS).where(GAPS.c.device_id == dev.id))
        if new_gaps:
            conn.execute(sa.insert(GAPS), new_gaps)
    if new_losses:
        conn.execute(
            sa.insert(LOSSES),
            [
                {
                    "device_id": dev.id,
                    "first": a,
                    "last": b,
                    "reason": "not_held",
                    "source": "cloud",
                    "boot": None,
                    "reported_ms": now,
                }
                for a, b in new_losses
            ],
        )
        for a, b in new_losses:
            jlog("loss_not_held", device=dev.name, first=a, last=b)
    return outgoing


def _anomaly(dev: DeviceRef, a: int, b: int, g, now: int, max_gap: int) -> dict:
    """The gap row of a hole ``a..b`` too large to be true (``g``: the gap it was before)."""
    known = g is not None and g.status == GAP_ANOMALY
    if not known:
        jlog("gap_anomaly", logging.ERROR, device=dev.name, first=a, last=b, max_gap=max_gap)
    return {
        "device_id": dev.id,
        "first": a,
        "last": b,
        "status": GAP_ANOMALY,
        "reason": f"anomaly: {b - a + 1} readings missing, more than the maximum gap of"
        f" {max_gap}; not requested",
        "detected_ms": g.detected_ms if known else now,
        "updated_ms": g.updated_ms if known else now,
        "command_id": None,
        "attempts": 0,
    }
