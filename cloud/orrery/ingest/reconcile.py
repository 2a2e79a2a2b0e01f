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
from collections import defaultdict
from collections.abc import Sequence
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


CHUNK = 500  # devices whose rows are read with one query per table (and IN lists at most this long)


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
    """Reconcile one device in ``conn``'s transaction (``reconcile_devices`` for one)."""
    return reconcile_devices(
        conn, [dev], now, secret=secret, reorder_window_ms=reorder_window_ms,
        resend_ttl_s=resend_ttl_s, pg=pg, retry=retry, max_gap=max_gap,
    )  # fmt: skip


def reconcile_devices(
    conn: Connection,
    devs: Sequence[DeviceRef],
    now: int,
    *,
    secret: bytes | None,
    reorder_window_ms: int,
    resend_ttl_s: int,
    pg: bool,
    retry: commands.RetryPolicy = commands.DEFAULT_RETRY,
    max_gap: int = MAX_GAP,
) -> list[commands.Outgoing]:
    """Reconcile devices in ``conn``'s transaction; return the resend commands to publish.

    For each device: merges its received ranges; turns holes older than ``reorder_window_ms``
    into requested resends (signed with ``secret``), a resend the board answered without the
    readings into a ``not_held`` loss, and drops what arrived after all from its gaps and
    losses. A hole larger than ``max_gap`` is an anomaly, never requested. Each device is
    reconciled on its own rows only; the rows of all of them are read with one query per table
    (``CHUNK`` devices at a time) and what changed is written in bulk. On PostgreSQL a device
    another companion is reconciling right now is skipped (it stays due).
    """
    outgoing: list[commands.Outgoing] = []
    for i in range(0, len(devs), CHUNK):
        outgoing += _reconcile_chunk(
            conn, devs[i : i + CHUNK], now, secret=secret, reorder_window_ms=reorder_window_ms,
            resend_ttl_s=resend_ttl_s, pg=pg, retry=retry, max_gap=max_gap,
        )  # fmt: skip
    return outgoing


def _by_device(rows) -> dict[int, list]:
    out: dict[int, list] = defaultdict(list)
    for r in rows:
        out[r.device_id].append(r)
    return out


def _reconcile_chunk(
    conn: Connection,
    devs: Sequence[DeviceRef],
    now: int,
    *,
    secret: bytes | None,
    reorder_window_ms: int,
    resend_ttl_s: int,
    pg: bool,
    retry: commands.RetryPolicy,
    max_gap: int,
) -> list[commands.Outgoing]:
    ids = [d.id for d in devs]
    if pg:
        # one reconciler per device at a time, whatever the number of companions
        got = set(
            conn.execute(
                sa.text(
                    "SELECT d FROM unnest(CAST(:ids AS int[])) AS d"
                    " WHERE pg_try_advisory_xact_lock(7316002, d)"
                ),
                {"ids": ids},
            ).scalars()
        )
        devs = [d for d in devs if d.id in got]
        ids = [d.id for d in devs]
    if not ids:
        return []
    state = {
        r.id: r
        for r in conn.execute(
            sa.select(DEVICES.c.id, DEVICES.c.last_seq, DEVICES.c.backlog).where(
                DEVICES.c.id.in_(ids)
            )
        )
    }
    conn.execute(sa.update(DEVICES).where(DEVICES.c.id.in_(ids)).values(dirty=False))
    all_ranges = _by_device(
        conn.execute(
            sa.select(RANGES.c.id, RANGES.c.device_id, RANGES.c.first, RANGES.c.last).where(
                RANGES.c.device_id.in_(ids)
            )
        )
    )
    all_losses = _by_device(
        conn.execute(
            sa.select(
                LOSSES.c.id,
                LOSSES.c.device_id,
                LOSSES.c.first,
                LOSSES.c.last,
                LOSSES.c.reason,
                LOSSES.c.source,
                LOSSES.c.boot,
                LOSSES.c.reported_ms,
            )
            .where(LOSSES.c.device_id.in_(ids))
            .order_by(LOSSES.c.device_id, LOSSES.c.id)
        )
    )
    all_gaps = _by_device(
        conn.execute(
            sa.select(GAPS)
            .where(GAPS.c.device_id.in_(ids))
            .order_by(GAPS.c.device_id, GAPS.c.first)
        )
    )
    cmd_ids = [g.command_id for gs in all_gaps.values() for g in gs if g.command_id]
    cmd_status = {}
    for i in range(0, len(cmd_ids), CHUNK):
        cmd_status.update(
            (r.id, r)
            for r in conn.execute(
                sa.select(
                    commands.COMMANDS.c.id,
                    commands.COMMANDS.c.status,
                    commands.COMMANDS.c.acked_ms,
                    commands.COMMANDS.c.ack_code,
                    commands.COMMANDS.c.ack_detail,
                    commands.COMMANDS.c.skew_s,
                    commands.COMMANDS.c.skew_boot,
                ).where(commands.COMMANDS.c.id.in_(cmd_ids[i : i + CHUNK]))
            )
        )
    w = _Writes()
    outgoing: list[commands.Outgoing] = []
    for dev in devs:
        d = state.get(dev.id)
        if d is None:
            continue  # deleted since it was found due
        outgoing += _reconcile_one(
            conn, dev, d, all_ranges.get(dev.id, []), all_losses.get(dev.id, []),
            all_gaps.get(dev.id, []), cmd_status, now, w, secret=secret,
            reorder_window_ms=reorder_window_ms, resend_ttl_s=resend_ttl_s, retry=retry,
            max_gap=max_gap,
        )  # fmt: skip
    w.flush(conn)
    return outgoing


class _Writes:
    """What a chunk of devices changed, written in bulk: for each table, the rows of the
    devices (or the range ids) to delete, then the rows to insert, in the devices' order."""

    def __init__(self) -> None:
        self.ranges_out: list[int] = []
        self.ranges_in: list[dict] = []
        self.losses_out: list[int] = []  # device ids
        self.losses_in: list[dict] = []
        self.gaps_out: list[int] = []  # device ids
        self.gaps_in: list[dict] = []

    def flush(self, conn: Connection) -> None:
        for table, col, out, rows in (
            (RANGES, RANGES.c.id, self.ranges_out, self.ranges_in),
            (LOSSES, LOSSES.c.device_id, self.losses_out, self.losses_in),
            (GAPS, GAPS.c.device_id, self.gaps_out, self.gaps_in),
        ):
            for i in range(0, len(out), CHUNK):
                conn.execute(sa.delete(table).where(col.in_(out[i : i + CHUNK])))
            if rows:
                conn.execute(sa.insert(table), rows)


def _reconcile_one(
    conn: Connection,
    dev: DeviceRef,
    d,
    rows: list,
    lrows: list,
    grows: list,
    cmd_status: dict,
    now: int,
    w: _Writes,
    *,
    secret: bytes | None,
    reorder_window_ms: int,
    resend_ttl_s: int,
    retry: commands.RetryPolicy,
    max_gap: int,
) -> list[commands.Outgoing]:
    # one device, from its rows (``d``: its last_seq and backlog); its changes go to ``w``
    received = merge((r.first, r.last) for r in rows)
    if len(received) != len(rows):
        w.ranges_out += [r.id for r in rows]
        w.ranges_in += [{"device_id": dev.id, "first": a, "last": b} for a, b in received]
    # the board counts everything up to its ack cursor (last_seq - backlog) as delivered
    frontier = received[-1][1] if received else 0
    if d.last_seq is not None and d.backlog is not None:
        frontier = max(frontier, d.last_seq - d.backlog)
    holes = subtract([(1, frontier)], received) if frontier else []

    # permanent loss: what the board reported dropped, minus anything that arrived after all
    kept = []
    for r in lrows:
        for a, b in subtract([(r.first, r.last)], received):
            kept.append((a, b, r.reason, r.source, r.boot, r.reported_ms))
    losses_changed = kept != [
        (r.first, r.last, r.reason, r.source, r.boot, r.reported_ms) for r in lrows
    ]
    if losses_changed:
        w.losses_out.append(dev.id)
        w.losses_in += [
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
        ]
    lost = merge((k[0], k[1]) for k in kept)
    want = subtract(holes, lost)

    old = {(g.first, g.last): g for g in grows}
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
        w.gaps_out.append(dev.id)
        w.gaps_in += new_gaps
    if new_losses:
        w.losses_in += [
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
        ]
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
