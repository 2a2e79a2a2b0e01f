"""Signed commands for boards: queued in the database, published at QoS 1, re-sent on pull.

A command's id is chosen by its producer so that producing it twice (a restart, a second
companion) inserts it once: the database's primary key is the idempotency check, and the board
answers a repeated id with its stored ack. Statuses: queued -> sent -> acked (IN_PROGRESS) ->
done | failed; queued/sent past ``exp`` -> expired; canceled by its producer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import COMMANDS, DEVICES, insert_ignore
from cloud.orrery.fleet import keys
from shared.wire import codec

OPEN = ("queued", "sent")


@dataclass(frozen=True)
class Outgoing:
    """A command envelope to publish."""

    command_id: str
    topic: str
    payload: bytes


def queue(
    conn: Connection,
    secret: bytes,
    *,
    device_id: int,
    device: str,
    fleet: str,
    cmd_id: str,
    kind: str,
    args: dict,
    source: str,
    now_ms: int,
    ttl_s: int = 86400,
) -> Outgoing | None:
    """Sign and queue a command; return it to publish, or None if that id already exists."""
    iat = now_ms // 1000
    envelope = codec.sign_command(
        keys.device_key(secret, device), cmd_id, device, kind, args, iat, iat + ttl_s
    )
    row = {
        "id": cmd_id,
        "device_id": device_id,
        "kind": kind,
        "args": json.dumps(args, sort_keys=True),
        "iat": iat,
        "exp": iat + ttl_s,
        "status": "queued",
        "source": source,
        "envelope": envelope.decode(),
        "created_ms": now_ms,
    }
    # RETURNING, not rowcount: a driver may not report the rowcount of an ignored insert
    if conn.execute(insert_ignore(conn, COMMANDS).returning(COMMANDS.c.id), row).first() is None:
        return None
    return Outgoing(cmd_id, codec.topic(fleet, device, codec.CMD), envelope)


def pending_for(conn: Connection, device_id: int, now_ms: int) -> list[Outgoing]:
    """Every queued or sent, unexpired command of one device (the answer to its pull)."""
    q = (
        sa.select(COMMANDS.c.id, COMMANDS.c.envelope, DEVICES.c.name, DEVICES.c.fleet)
        .join(DEVICES, DEVICES.c.id == COMMANDS.c.device_id)
        .where(
            COMMANDS.c.device_id == device_id,
            COMMANDS.c.status.in_(OPEN),
            COMMANDS.c.exp > now_ms // 1000,
        )
        .order_by(COMMANDS.c.created_ms, COMMANDS.c.id)
    )
    return [
        Outgoing(r.id, codec.topic(r.fleet, r.name, codec.CMD), r.envelope.encode())
        for r in conn.execute(q)
    ]


def queued(conn: Connection, now_ms: int, limit: int = 1000) -> list[Outgoing]:
    """Queued, unexpired commands of every device, oldest first."""
    q = (
        sa.select(COMMANDS.c.id, COMMANDS.c.envelope, DEVICES.c.name, DEVICES.c.fleet)
        .join(DEVICES, DEVICES.c.id == COMMANDS.c.device_id)
        .where(COMMANDS.c.status == "queued", COMMANDS.c.exp > now_ms // 1000)
        .order_by(COMMANDS.c.created_ms, COMMANDS.c.id)
        .limit(limit)
    )
    return [
        Outgoing(r.id, codec.topic(r.fleet, r.name, codec.CMD), r.envelope.encode())
        for r in conn.execute(q)
    ]


def mark_sent(conn: Connection, ids: list[str], now_ms: int) -> None:
    """Record that these commands reached the broker (PUBACK)."""
    if ids:
        conn.execute(
            sa.update(COMMANDS)
            .where(COMMANDS.c.id.in_(ids), COMMANDS.c.status == "queued")
            .values(status="sent", sent_ms=now_ms)
        )


def expire(conn: Connection, now_ms: int) -> int:
    """Mark queued/sent commands past their ``exp`` expired; return how many."""
    return conn.execute(
        sa.update(COMMANDS)
        .where(COMMANDS.c.status.in_(OPEN), COMMANDS.c.exp <= now_ms // 1000)
        .values(status="expired")
    ).rowcount


def status_for(code: int) -> str:
    """The command status an ack code leads to."""
    if code in (codec.OK, codec.DUPLICATE):
        return "done"
    if code == codec.IN_PROGRESS:
        return "acked"
    return "failed"


def apply_ack(
    conn: Connection, device_id: int, cmd_id: str, code: int, detail: str, now_ms: int
) -> bool:
    """Record a board's ack; False if the command is unknown for this device.

    A final status (done, failed) is never turned back into ``acked`` by a late IN_PROGRESS.
    """
    status = status_for(code)
    cond = [COMMANDS.c.id == cmd_id, COMMANDS.c.device_id == device_id]
    if status == "acked":
        cond.append(COMMANDS.c.status.in_(("queued", "sent", "acked", "expired")))
    res = conn.execute(
        sa.update(COMMANDS)
        .where(*cond)
        .values(status=status, acked_ms=now_ms, ack_code=code, ack_detail=detail[:300])
    )
    if res.rowcount:
        return True
    return conn.execute(sa.select(COMMANDS.c.id).where(*cond[:2])).first() is not None
