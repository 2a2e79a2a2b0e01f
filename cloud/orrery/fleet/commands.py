"""Signed commands for boards: queued in the database, published at QoS 1, published again
until the board answers, and signed in the board's time.

A command's id is chosen by its producer so that producing it twice (a restart, a second
companion) inserts it once: the database's primary key is the idempotency check, and the board
answers a repeated id with its stored ack. Statuses: queued -> sent -> acked (IN_PROGRESS) ->
done | failed; refused (by the board's clock, see below); queued/sent/refused past ``exp`` ->
expired; canceled by its producer.

Delivery never waits on one message: a sent command without an ack is published again, with
the same id and envelope, ``RetryPolicy`` after its last publish (doubling each time, while its
device is online); a board's pull brings back every queued or sent command; and after the
companion (re)subscribes, every open one is published again at once, for the boards whose pull
reached the broker while no one was subscribed.

Clock: ``iat``/``exp`` are the companion's unix seconds, and the envelope carries ``skew``, the
companion's estimate of the board's clock minus its own (``board_clock``; 0 while unknown), so
a board whose clock is off checks the window on its own clock minus ``skew``
(``shared.wire.verifier``). A board that refuses a command by its clock ("issued in the future"
or "expired": it did not record it) leaves it ``refused``; ``resign`` signs it again, same id,
once the estimate has changed (a new boot, or a minute or more off the one it was signed with),
at most ``MAX_RESIGNS`` times; a command refused again with nothing changed is not re-issued.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import COMMAND_BODIES, COMMANDS, DEVICES, SESSIONS, insert_ignore
from cloud.orrery.fleet import keys
from cloud.orrery.jsonlog import jlog
from shared.wire import codec

# The detail a board acks a command IN_PROGRESS with while it waits for one of its workflow's
# safe_states (firmware/safe.py) before an install, a bundle switch or a reboot.
SAFE_WAIT = "waiting for a safe state"
OPEN = ("queued", "sent")  # what a pull brings back
WAITING = OPEN + ("refused",)  # not answered for good yet: these expire
CLOCK_REFUSALS = ("issued in the future", "expired")  # EXPIRED details: the board's clock
RESKEW_S = 60  # an estimate this far from the one a command was signed with is a new one
MAX_RESIGNS = 3


@dataclass(frozen=True)
class RetryPolicy:
    """How long a sent command may go without an ack before it is published again: ``first_s``
    after the first publish, doubling with each publish up to ``max_s``."""

    first_s: float = 120.0
    max_s: float = 1800.0

    def delay_ms(self, sends: int) -> int:
        """The wait after publish number ``sends`` (1-based)."""
        return int(min(self.first_s * 2 ** min(max(0, sends - 1), 30), self.max_s) * 1000)


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Outgoing:
    """A command envelope to publish."""

    command_id: str
    topic: str
    payload: bytes


def board_clock(conn: Connection, device_id: int) -> tuple[int, int | None]:
    """``(skew in whole seconds, the boot it was estimated for)`` to sign a command for a device
    with: the estimate of its current boot, else of its latest boot that has one (a board's
    clock tends to stay off the same way), else ``(0, None)``. Floored, so never above the
    estimate (``cloud.orrery.ingest.skew`` says how it is made)."""
    boot = conn.execute(sa.select(DEVICES.c.boot).where(DEVICES.c.id == device_id)).scalar()
    q = (
        sa.select(SESSIONS.c.boot, SESSIONS.c.clock_offset_ms)
        .where(SESSIONS.c.device_id == device_id, SESSIONS.c.clock_offset_ms.is_not(None))
        .order_by(sa.case((SESSIONS.c.boot == boot, 0), else_=1), SESSIONS.c.last_seen_ms.desc())
        .limit(1)
    )
    row = conn.execute(q).first()
    if row is None:
        return 0, None
    return row.clock_offset_ms // 1000, row.boot


def board_clocks(conn: Connection, device_ids: list[int]) -> dict[int, tuple[int, int | None]]:
    """``board_clock`` of many devices at once: two queries per ``CHUNK`` devices."""
    out: dict[int, tuple[int, int | None]] = {}
    for i in range(0, len(device_ids), CHUNK):
        chunk = device_ids[i : i + CHUNK]
        boots = {
            did: boot
            for did, boot in conn.execute(
                sa.select(DEVICES.c.id, DEVICES.c.boot).where(DEVICES.c.id.in_(chunk))
            )
        }
        best: dict[int, tuple] = {}  # device -> (its current boot's?, last seen, boot, offset)
        for did, boot, offset, seen in conn.execute(
            sa.select(
                SESSIONS.c.device_id, SESSIONS.c.boot, SESSIONS.c.clock_offset_ms,
                SESSIONS.c.last_seen_ms,
            ).where(SESSIONS.c.device_id.in_(chunk), SESSIONS.c.clock_offset_ms.is_not(None))
        ):  # fmt: skip
            rank = (boot == boots.get(did), seen, boot, offset)
            if did not in best or rank[:2] > best[did][:2]:
                best[did] = rank
        for did in chunk:
            b = best.get(did)
            out[did] = (0, None) if b is None else (b[3] // 1000, b[2])
    return out


CHUNK = 5000  # devices per IN (...) list


def _sign(secret: bytes, device: str, cmd_id: str, kind: str, args: dict, iat: int, ttl_s: int,
          skew: int) -> bytes:  # fmt: skip
    key = keys.device_key(secret, device)
    return codec.sign_command(key, cmd_id, device, kind, args, iat, iat + ttl_s, skew)


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
    """Sign (in the board's time) and queue a command; return it to publish, or None if that
    id already exists."""
    return queue_many(conn, secret, [(device_id, device, fleet, cmd_id)], kind=kind, args=args,
                      source=source, now_ms=now_ms, ttl_s=ttl_s)[0]  # fmt: skip


def queue_many(
    conn: Connection,
    secret: bytes,
    targets: list[tuple[int, str, str, str]],
    *,
    kind: str,
    args: dict,
    source: str,
    now_ms: int,
    ttl_s: int = 86400,
    sent_by: str | None = None,
    due_ms: list[int] | None = None,
) -> list[Outgoing | None]:
    """``queue`` for one command (same kind, args and lifetime) per ``(device_id, device, fleet,
    cmd_id)`` of ``targets``, signed in bulk and inserted with one statement per few hundred
    rows; returns, in order, each one to publish, or None where that id already exists.
    ``sent_by``: who asked for them (an operator); ``due_ms``: per target, when it may be
    published first (``queued`` and ``pending_for`` hold it back until then)."""
    if not targets:
        return []
    iat = now_ms // 1000
    clocks = board_clocks(conn, list(dict.fromkeys(t[0] for t in targets)))
    envelopes = codec.sign_commands(
        kind,
        args,
        iat,
        iat + ttl_s,
        [(keys.device_key(secret, dev), cmd_id, dev, clocks[did][0])
         for did, dev, _, cmd_id in targets],
    )  # fmt: skip
    dues = due_ms or [None] * len(targets)
    if conn.dialect.name == "postgresql":
        new = _insert_pg(conn, targets, envelopes, clocks, kind, source, now_ms, iat, ttl_s,
                         sent_by, dues)  # fmt: skip
    else:
        rows = [
            {"id": cmd_id, "device_id": did, "kind": kind, "iat": iat, "exp": iat + ttl_s,
             "status": "queued", "source": source, "created_ms": now_ms,
             "skew_s": clocks[did][0], "skew_boot": clocks[did][1], "sent_by": sent_by,
             "due_ms": due}
            for (did, _, _, cmd_id), due in zip(targets, dues, strict=True)
        ]  # fmt: skip
        # RETURNING, not rowcount: a driver may not report the rowcount of an ignored insert
        ins = insert_ignore(conn, COMMANDS).returning(COMMANDS.c.id)
        new = set(conn.execute(ins, rows).scalars())
        bodies = _bodies(targets, envelopes, new)
        if bodies:  # a new command's body is new: both are written in this transaction
            conn.exec_driver_sql("INSERT INTO command_bodies (id, envelope) VALUES (?, ?)", bodies)
    # signing checked every device id: the topics' fleet ids are checked once per fleet
    for fleet in {t[2] for t in targets}:
        codec.topic(fleet, targets[0][1], codec.CMD)
    return [
        Outgoing(cmd_id, f"{codec.PREFIX}/{fleet}/{dev}/{codec.CMD}", env) if cmd_id in new else None
        for (_, dev, fleet, cmd_id), env in zip(targets, envelopes, strict=True)
    ]


def _insert_pg(conn: Connection, targets, envelopes, clocks, kind: str, source: str,
               now_ms: int, iat: int, ttl_s: int, sent_by: str | None,
               dues: list) -> set[str]:  # fmt: skip
    # PostgreSQL: the commands in one INSERT ... SELECT FROM unnest(arrays) ... ON CONFLICT DO
    # NOTHING RETURNING id (no statement of thousands of placeholders for the driver to
    # parse), and the new ones' bodies by COPY
    cols = list(zip(*[(cmd_id, did, clocks[did][0], clocks[did][1], due)
                      for (did, _, _, cmd_id), due in zip(targets, dues, strict=True)],
                    strict=True))  # fmt: skip
    with conn.connection.driver_connection.cursor() as cur:  # type: ignore[union-attr]
        cur.execute(
            "INSERT INTO commands (id, device_id, kind, iat, exp, status, source, created_ms,"
            " sent_by, skew_s, skew_boot, due_ms) SELECT c.id, c.did, %s, %s, %s, 'queued', %s,"
            " %s, %s, c.skew, c.boot, c.due FROM unnest(%s::text[], %s::int[], %s::bigint[],"
            " %s::bigint[], %s::bigint[]) AS c(id, did, skew, boot, due)"
            " ON CONFLICT DO NOTHING RETURNING id",
            (kind, iat, iat + ttl_s, source, now_ms, sent_by, *map(list, cols)),
        )
        new = {r[0] for r in cur.fetchall()}
        with cur.copy("COPY command_bodies (id, envelope) FROM STDIN") as cp:
            for b in _bodies(targets, envelopes, new):
                cp.write_row(b)
    return new


def _bodies(targets, envelopes, new: set[str]) -> list[tuple[str, str]]:
    # the new commands' bodies, each once (the first of an id, as its insert kept)
    todo = set(new)
    out = []
    for (_, _, _, cmd_id), env in zip(targets, envelopes, strict=True):
        if cmd_id in todo:
            todo.discard(cmd_id)
            out.append((cmd_id, env.decode()))
    return out


def signed_args(envelope: str) -> dict:
    """The args a stored envelope was signed with (its body carries them)."""
    return json.loads(json.loads(envelope)["b"])["args"]


def _outgoing(conn: Connection, *where, limit: int | None = None) -> list[Outgoing]:
    q = (
        sa.select(COMMANDS.c.id, COMMAND_BODIES.c.envelope, DEVICES.c.name, DEVICES.c.fleet)
        .join(DEVICES, DEVICES.c.id == COMMANDS.c.device_id)
        .join(COMMAND_BODIES, COMMAND_BODIES.c.id == COMMANDS.c.id)
        .where(*where)
        .order_by(COMMANDS.c.created_ms, COMMANDS.c.id)
        .limit(limit)
    )
    return [
        Outgoing(r.id, codec.topic(r.fleet, r.name, codec.CMD), r.envelope.encode())
        for r in conn.execute(q)
    ]


def pending_for(conn: Connection, device_id: int | None, now_ms: int) -> list[Outgoing]:
    """Every queued or sent, unexpired and due command of one device (the answer to its pull),
    or of every device with ``device_id`` None (after the companion subscribed again)."""
    where = [COMMANDS.c.status.in_(OPEN), COMMANDS.c.exp > now_ms // 1000, _due(now_ms)]
    if device_id is not None:
        where.append(COMMANDS.c.device_id == device_id)
    return _outgoing(conn, *where)


def queued(conn: Connection, now_ms: int, limit: int = 1000) -> list[Outgoing]:
    """Queued, unexpired commands of every device that are due, oldest first."""
    return _outgoing(
        conn,
        COMMANDS.c.status == "queued",
        COMMANDS.c.exp > now_ms // 1000,
        _due(now_ms),
        limit=limit,
    )


def _due(now_ms: int):
    # a command held back by its rate limit (``due_ms``) is not published before then
    return sa.or_(COMMANDS.c.due_ms.is_(None), COMMANDS.c.due_ms <= now_ms)


def overdue(conn: Connection, now_ms: int, limit: int = 1000) -> list[Outgoing]:
    """Sent, unexpired commands of online devices whose ack is overdue (``retry_ms`` passed):
    to publish again, same id and envelope."""
    return _outgoing(
        conn,
        COMMANDS.c.status == "sent",
        COMMANDS.c.retry_ms <= now_ms,
        COMMANDS.c.exp > now_ms // 1000,
        DEVICES.c.online.is_(True),
        limit=limit,
    )


def mark_sent(
    conn: Connection, ids: list[str], now_ms: int, retry: RetryPolicy = DEFAULT_RETRY
) -> None:
    """Record that these commands reached the broker (PUBACK): each one's publish count, and
    when it is due again if no ack comes."""
    if not ids:
        return
    rows = conn.execute(
        sa.select(COMMANDS.c.id, COMMANDS.c.sends).where(
            COMMANDS.c.id.in_(ids), COMMANDS.c.status.in_(OPEN)
        )
    ).all()
    if rows:
        conn.execute(
            sa.update(COMMANDS)
            .where(COMMANDS.c.id == sa.bindparam("c_id"))
            .values(
                status=sa.case((COMMANDS.c.status == "queued", "sent"), else_=COMMANDS.c.status),
                sent_ms=now_ms,
                sends=sa.bindparam("c_sends"),
                retry_ms=sa.bindparam("c_retry"),
            ),
            [
                {
                    "c_id": r.id,
                    "c_sends": r.sends + 1,
                    "c_retry": now_ms + retry.delay_ms(r.sends + 1),
                }
                for r in rows
            ],
        )


def expire(conn: Connection, now_ms: int) -> int:
    """Mark queued/sent/refused commands past their ``exp`` expired; return how many."""
    return conn.execute(
        sa.update(COMMANDS)
        .where(COMMANDS.c.status.in_(WAITING), COMMANDS.c.exp <= now_ms // 1000)
        .values(status="expired")
    ).rowcount


def clock_refusal(code: int | None, detail: str | None) -> bool:
    """Whether an ack is a refusal by the board's clock: the board did not record the command,
    so a copy signed with a better estimate of its clock may run. (``resign`` keeps the
    board's detail last when it gives up: "refused by the board's clock …: expired".)"""
    return code == codec.EXPIRED and (detail or "").rsplit(": ", 1)[-1] in CLOCK_REFUSALS


def status_for(code: int, detail: str = "") -> str:
    """The command status an ack code (and its detail) leads to."""
    if code in (codec.OK, codec.DUPLICATE):
        return "done"
    if code == codec.IN_PROGRESS:
        return "acked"
    if clock_refusal(code, detail):
        return "refused"
    return "failed"


def _log_refused(conn: Connection, cmd_id: str, detail: str) -> None:
    """Log a command the board refused because of its clock, with the skew it was signed at."""
    r = conn.execute(
        sa.select(COMMANDS.c.skew_s, DEVICES.c.name)
        .join(DEVICES, DEVICES.c.id == COMMANDS.c.device_id)
        .where(COMMANDS.c.id == cmd_id)
    ).first()
    jlog("command_refused_by_clock", 30, device=r.name, id=cmd_id, detail=detail,
         signed_skew_s=r.skew_s)  # fmt: skip


def _acceptable(status: str, code: int) -> tuple[str, ...] | None:
    # the statuses an ack leading to ``status`` may replace (None: any): a final status (done,
    # failed) is never turned back into acked or refused, and a DUPLICATE that carries no
    # result (the board restarted since it ran the command) never replaces one
    if status == "acked":
        return ("queued", "sent", "acked", "refused", "expired")
    if status == "refused" or code == codec.DUPLICATE:
        return WAITING + ("expired",)
    return None


def apply_acks(
    conn: Connection, acks: list[tuple[int, str, int, str]], now_ms: int
) -> list[bool]:
    """Record boards' acks, each ``(device_id, cmd_id, code, detail)``, in order, with the
    same results and final rows as one by one: return, for each, whether its command is known
    for that device.

    A final status (done, failed) is never turned back into ``acked`` or ``refused`` by a late
    ack, a DUPLICATE that carries no result (the board restarted since it ran the command)
    never replaces one (``_acceptable``), and a repeat of the recorded ack (the board's stored
    ack, sent again for a redelivered command) is not recorded again: the ack keeps its first
    time. The commands are read once per ``CHUNK`` (locked
    until commit on PostgreSQL), the final row of each worked out in memory, and written with
    one UPDATE per distinct (status read, new status, code, detail) on the driver's cursor: a
    wave's OK acks are one statement, with nothing built per group. Each row is written only
    if its status is still the one read (it cannot change in between: the rows are locked on
    PostgreSQL, and SQLite lets one writer at a time work on the snapshot it read); a row that
    did fails the group (``RuntimeError``: the service stores it again) rather than overwrite
    a change.
    """
    if not acks:
        return []
    pg = conn.dialect.name == "postgresql"
    ids = list(dict.fromkeys([a[1] for a in acks]))
    read: dict[str, tuple[int, str, int | None, str | None]] = {}
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i : i + CHUNK]
            if pg:  # held until commit: what is read is what is written over
                cur.execute(_PG_READ, (chunk,))
            else:
                cur.execute(_SQLITE_READ.format(",".join("?" * len(chunk))), chunk)
            for cid, did, st, code, detail in cur.fetchall():
                read[cid] = (did, st, code, detail)
        # (status, code, detail) as the acks leave them
        now: dict[str, tuple] = {cid: r[1:] for cid, r in read.items()}
        final: dict[str, tuple[str, int, str]] = {}  # command -> (status, code, detail) written
        refused: list[tuple[str, str]] = []  # logged as one by one would: each time
        known = []
        for device_id, cmd_id, code, detail in acks:
            row = read.get(cmd_id)
            if row is None or row[0] != device_id:
                known.append(False)
                continue
            known.append(True)
            status = status_for(code, detail)
            allowed = _acceptable(status, code)
            if allowed is not None and now[cmd_id][0] not in allowed:
                continue
            result = (status, code, detail[:300])
            if now[cmd_id] == result:
                continue  # a repeat of the recorded ack: it keeps its first time
            now[cmd_id] = final[cmd_id] = result
            if status == "refused":
                refused.append((cmd_id, detail))
        groups: dict[tuple, list[str]] = {}  # (status read, status, code, detail) -> commands
        for cmd_id, (status, code, detail) in final.items():
            groups.setdefault((read[cmd_id][1], status, code, detail), []).append(cmd_id)
        written = 0
        for (was, status, code, detail), group in groups.items():
            for i in range(0, len(group), CHUNK):
                chunk = group[i : i + CHUNK]
                if pg:
                    cur.execute(_PG_WRITE, (status, now_ms, code, detail, was, chunk))
                else:
                    cur.execute(_SQLITE_WRITE.format(",".join("?" * len(chunk))),
                                (status, now_ms, code, detail, was, *chunk))  # fmt: skip
                written += cur.rowcount
    finally:
        cur.close()
    if written != len(final):
        raise RuntimeError(
            f"{len(final) - written} of {len(final)} commands changed between their read and"
            " their write: their acks are not applied"
        )
    for cmd_id, detail in refused:
        _log_refused(conn, cmd_id, detail)
    return known


_READ = "SELECT id, device_id, status, ack_code, ack_detail FROM commands WHERE id "
_SQLITE_READ = _READ + "IN ({})"
_PG_READ = _READ + "= ANY(%s) ORDER BY id FOR UPDATE"
_SET = "UPDATE commands SET status = {0}, acked_ms = {0}, ack_code = {0}, ack_detail = {0}"
_SQLITE_WRITE = _SET.format("?") + " WHERE status = ? AND id IN ({})"
_PG_WRITE = _SET.format("%s") + " WHERE status = %s AND id = ANY(%s)"


def same_clock(conn: Connection, device_id: int, skew_s: int | None, boot: int | None) -> bool:
    """Whether a command signed with ``(skew_s, boot)`` would be signed the same way now."""
    skew, now_boot = board_clock(conn, device_id)
    return now_boot == boot and abs(skew - (skew_s or 0)) <= RESKEW_S


def resign(conn: Connection, secret: bytes | None, now_ms: int) -> list[Outgoing]:
    """Sign again (same id, a fresh window, the current estimate of the board's clock) every
    command the board refused by its clock whose estimate has changed since; give up with
    ``failed`` after ``MAX_RESIGNS``. Returns the commands to publish."""
    if secret is None:
        return []
    rows = conn.execute(
        sa.select(COMMANDS, COMMAND_BODIES.c.envelope, DEVICES.c.name, DEVICES.c.fleet)
        .join(DEVICES, DEVICES.c.id == COMMANDS.c.device_id)
        .join(COMMAND_BODIES, COMMAND_BODIES.c.id == COMMANDS.c.id)
        .where(COMMANDS.c.status == "refused", COMMANDS.c.exp > now_ms // 1000)
        .order_by(COMMANDS.c.created_ms)
    ).all()
    out = []
    for r in rows:
        if same_clock(conn, r.device_id, r.skew_s, r.skew_boot):
            continue  # it would be refused the same way: wait for a new estimate
        skew, boot = board_clock(conn, r.device_id)
        if r.resigns >= MAX_RESIGNS:
            # given up at this estimate: a producer asking again waits for the next one
            detail = f"refused by the board's clock after {r.resigns + 1} signings: {r.ack_detail}"
            conn.execute(
                sa.update(COMMANDS)
                .where(COMMANDS.c.id == r.id)
                .values(status="failed", ack_detail=detail[:300], skew_s=skew, skew_boot=boot)
            )
            jlog("command_given_up", 30, device=r.name, id=r.id, detail=detail)
            continue
        iat = now_ms // 1000
        ttl = r.exp - r.iat
        envelope = _sign(secret, r.name, r.id, r.kind, signed_args(r.envelope), iat, ttl, skew)
        conn.execute(
            sa.update(COMMANDS)
            .where(COMMANDS.c.id == r.id)
            .values(status="queued", iat=iat, exp=iat + ttl, skew_s=skew, skew_boot=boot,
                    resigns=r.resigns + 1, retry_ms=None)
        )  # fmt: skip
        conn.execute(
            sa.update(COMMAND_BODIES)
            .where(COMMAND_BODIES.c.id == r.id)
            .values(envelope=envelope.decode())
        )
        jlog("command_resigned", device=r.name, id=r.id, skew_s=skew, was_skew_s=r.skew_s,
             boot=boot, refused=r.ack_detail)  # fmt: skip
        out.append(Outgoing(r.id, codec.topic(r.fleet, r.name, codec.CMD), envelope))
    return out
