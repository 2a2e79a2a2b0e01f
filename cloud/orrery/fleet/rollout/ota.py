"""Delivering an app bundle to the members of a bundle rollout: the chunk protocol, driven by
the boards' acks, over the signed, queued, pulled-on-reconnect command path.

The protocol (the board's side is ``firmware/bundle.py``):

- ``install_bundle`` {version, sha256, size, chunk_size, chunks} opens (or resumes) a download;
  the board acks IN_PROGRESS ``"next K/N"``: K is the chunk it expects next, above 0 when it
  kept part of the download on flash (it was offline, or its power was cut).
- ``bundle_chunk`` {version, index, data (base64)}: OK ``"next K+1/N"`` once stored, OK
  ``"chunk i already stored"`` for a repeat, REJECTED ``"next K/N"`` for a gap (the sender
  sends again from K).
- After the last chunk the board checks and unpacks the bundle, reboots into its trial slot,
  and later answers the install_bundle's id: OK ``"running bundle V"`` or FAILED
  ``"rolled back: why"``. The orchestrator reads that answer (``orchestrator._sync``).

The sender keeps at most ``WINDOW`` chunks in flight per board (a board admits
``CMD_BUDGET``, 4 KiB, of envelopes to its inbox; a ``CHUNK_SIZE`` chunk is a 2.3 KB envelope):
the next chunk is queued when a chunk's ack comes in. A gap starts a new round of chunk ids
from the chunk the board names (a chunk sent again needs a new id: the board's replay table
answers a known id with its stored ack). A download that stops moving for ``STALL_MS`` (its
chunks expired while the board was away, or its power was cut and the chunks it got were
refused) on a board that is online is opened again with a fresh ``install_bundle``: the board
names the chunk it needs next and only the missing chunks are sent.

State per member (``rollout_devices.dl_*``, migration 0011): ``dl_chunks`` N, ``dl_next`` the
chunk the board said it expects next (None until its install_bundle is answered),
``dl_sent`` the chunks queued in this round, ``dl_round`` the round of chunk ids in force,
``dl_ms`` when the download last moved. Everything is re-derived from the database: a
restarted companion goes on where the last one stopped (an ack read twice changes nothing).
A tick reads the acks of the chunks in flight by their ids (at most ``WINDOW`` a board), never
a scan of the commands table.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import defaultdict

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import BUNDLES, COMMANDS, DEVICES, ROLLOUT_DEVICES
from cloud.orrery.fleet import commands
from shared.wire import codec

CHUNK_SIZE = 1536  # raw bytes a chunk: a 2.3 KB signed envelope, well within CMD_BUDGET
WINDOW = 3  # chunks in flight per board
CHUNK_TTL_S = 60  # a chunk lives a minute: the board's replay table forgets it soon after
STALL_MS = 3 * CHUNK_TTL_S * 1000  # a download that did not move for this long is reopened
KIND_INSTALL = "install_bundle"
KIND_CHUNK = "bundle_chunk"

_NEXT = re.compile(r"next (\d+)/(\d+)")
# what the first board firmware said instead: "send N chunks" (install), "chunk K of N" (a
# stored chunk: K are stored), "expected chunk K" (a gap)
_OLD = re.compile(r"send (\d+) chunks|chunk (\d+) of (\d+)|expected chunk (\d+)")
_STORED = re.compile(r"chunk (\d+) already stored")

# chunk bytes by bundle id: bundles are immutable, a running companion reads each one once
_DATA: dict[int, bytes] = {}


def chunk_count(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """How many chunks a bundle of ``size`` bytes is sent in."""
    return max(1, -(-size // chunk_size))


def install_args(bundle) -> dict:
    """The ``install_bundle`` args for a bundle registry row (with version, sha256, size)."""
    return {
        "version": bundle.version,
        "sha256": bundle.sha256,
        "size": int(bundle.size),
        "chunk_size": CHUNK_SIZE,
        "chunks": chunk_count(int(bundle.size)),
    }


def source(rid: int) -> str:
    """The ``commands.source`` of a rollout's chunk commands."""
    return f"bundle:{rid}"


def chunk_id(rid: int, device_id: int, attempt: int, rnd: int, index: int) -> str:
    """A chunk command's id: rollout, device, attempt, round and index."""
    return f"rollout:{rid}:{device_id}:{attempt}:{rnd}.{index}"


def reopen_id(rid: int, device_id: int, attempt: int, rnd: int) -> str:
    """The id of an install_bundle sent again to resume a download (round ``rnd``)."""
    return f"rollout:{rid}:{device_id}:{attempt}.r{rnd}"


def parse_next(detail: str | None) -> tuple[int, int] | None:
    """``(K, N)`` from an ack detail that says ``next K/N``; None if it does not."""
    m = _NEXT.search(detail or "")
    if m:
        return int(m.group(1)), int(m.group(2))
    m = _OLD.search(detail or "")
    if m is None:
        return None
    if m.group(1):
        return 0, int(m.group(1))
    if m.group(2):
        return int(m.group(2)), int(m.group(3))
    return int(m.group(4)), 0


def progress(next_: int | None, chunks: int | None) -> str | None:
    """``"chunk K/N"`` for a member that is downloading, else None."""
    if chunks is None or next_ is None:
        return None
    return f"chunk {next_}/{chunks}"


def _data(conn: Connection, bundle_id: int) -> bytes:
    data = _DATA.get(bundle_id)
    if data is None:
        data = conn.execute(sa.select(BUNDLES.c.data).where(BUNDLES.c.id == bundle_id)).scalar_one()
        _DATA[bundle_id] = data
    return data


def chunk_args(conn: Connection, bundle, index: int) -> dict:
    """The ``bundle_chunk`` args of chunk ``index`` of a bundle row."""
    data = _data(conn, bundle.id)
    piece = data[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]
    return {"version": bundle.version, "index": index, "data": base64.b64encode(piece).decode()}


def _parse_chunk_id(cmd_id: str) -> tuple[int, int, int, int] | None:
    # (device id, attempt, round, index) of a chunk command id
    try:
        _, _, did, attempt, tail = cmd_id.split(":")
        rnd, index = tail.split(".")
        return int(did), int(attempt), int(rnd), int(index)
    except ValueError:
        return None


class Delivery:
    """Drives the downloads of every bundle rollout; one per orchestrator. ``step`` is one
    tick's work for one rollout."""

    def __init__(self, secret: bytes | None) -> None:
        self.secret = secret
        # rollout id -> whether a member's download was under way at its last step: the
        # service then ticks more often (each round trip of a chunk waits for a tick)
        self.active: dict[int, bool] = {}

    def step(self, conn: Connection, r, bundle, now: int) -> list[commands.Outgoing]:
        """Read the chunk acks that came in, move each member's download on, reopen stalled
        ones, and queue the chunks each board may have in flight; returns them to publish."""
        if self.secret is None:
            return []
        members = self._members(conn, r.id)
        self.active[r.id] = bool(members)
        if not members:
            return []
        out: list[commands.Outgoing] = []
        reopen: list = []
        self._read_installs(conn, r, members, now)
        self._read_chunk_acks(conn, r, members, now, reopen)
        for m in members.values():
            if (
                m["state"] == "acked"
                and m["online"]
                and now - (m["dl_ms"] or 0) > STALL_MS
                and (m["dl_next"] is None or m["dl_next"] < (m["dl_chunks"] or 0))
                and m["id"] not in {x["id"] for x in reopen}
            ):
                reopen.append(m)
        if reopen:
            out += self._reopen(conn, r, bundle, reopen, now)
        out += self._fill(conn, r, bundle, members, now)
        self._save(conn, r.id, members)
        return out

    # --- reading -----------------------------------------------------------------------------

    def _members(self, conn: Connection, rid: int) -> dict[int, dict]:
        # the members whose download may move: their install command is acked (IN_PROGRESS)
        rows = conn.execute(
            sa.select(
                ROLLOUT_DEVICES.c.device_id, ROLLOUT_DEVICES.c.state, ROLLOUT_DEVICES.c.attempt,
                ROLLOUT_DEVICES.c.command_id, ROLLOUT_DEVICES.c.dl_chunks, ROLLOUT_DEVICES.c.dl_next,
                ROLLOUT_DEVICES.c.dl_sent, ROLLOUT_DEVICES.c.dl_round, ROLLOUT_DEVICES.c.dl_ms,
                DEVICES.c.name, DEVICES.c.fleet, DEVICES.c.online,
                COMMANDS.c.status, COMMANDS.c.ack_detail,
            )
            .join(DEVICES, DEVICES.c.id == ROLLOUT_DEVICES.c.device_id)
            .join(COMMANDS, COMMANDS.c.id == ROLLOUT_DEVICES.c.command_id)
            .where(
                ROLLOUT_DEVICES.c.rollout_id == rid,
                ROLLOUT_DEVICES.c.state.in_(("sent", "acked", "offline-pending")),
                COMMANDS.c.status == "acked",
            )
        ).all()  # fmt: skip
        out = {}
        for x in rows:
            m = dict(x._mapping)
            m["id"] = x.device_id
            m["dirty"] = False
            if m["state"] != "acked":
                m["state"] = "acked"  # _sync moves it there on this tick's next pass
            out[x.device_id] = m
        return out

    def _read_installs(self, conn: Connection, r, members: dict[int, dict], now: int) -> None:
        # an install_bundle answered "next K/N" that no round has started from yet
        for m in members.values():
            if m["dl_next"] is not None:
                continue
            kn = parse_next(m["ack_detail"])
            if kn is None:
                continue
            k, n = kn
            m.update(dl_chunks=n, dl_next=k, dl_sent=k, dl_round=(m["dl_round"] or 0) + 1,
                     dl_ms=now, dirty=True)  # fmt: skip

    def _read_chunk_acks(
        self, conn: Connection, r, members: dict[int, dict], now: int, reopen: list
    ) -> None:
        # the answered ones among each member's chunks in flight (this round's, from the chunk
        # it expects next to the last one queued): looked up by id, a few per board
        ids = [
            chunk_id(r.id, m["id"], m["attempt"], m["dl_round"], i)
            for m in members.values()
            if m["dl_next"] is not None
            for i in range(m["dl_next"], m["dl_sent"] or 0)
        ]
        rows = []
        for i in range(0, len(ids), commands.CHUNK):
            rows += conn.execute(
                sa.select(COMMANDS.c.id, COMMANDS.c.device_id, COMMANDS.c.status,
                          COMMANDS.c.ack_code, COMMANDS.c.ack_detail)
                .where(COMMANDS.c.id.in_(ids[i : i + commands.CHUNK]),
                       COMMANDS.c.status.in_(("done", "failed")))
            ).all()  # fmt: skip
        rows.sort(key=lambda c: _parse_chunk_id(c.id) or (0, 0, 0, 0))
        for c in rows:
            m = members.get(c.device_id)
            parsed = _parse_chunk_id(c.id)
            if m is None or parsed is None or m["dl_next"] is None:
                continue
            _, _, rnd, index = parsed
            kn = parse_next(c.ack_detail)
            if c.status == "done":
                got = kn[0] if kn else None
                if got is None:
                    s = _STORED.search(c.ack_detail or "")
                    # a stored repeat says chunk i is there; the last chunk's OK, all of them
                    got = int(s.group(1)) + 1 if s else index + 1
                if got > m["dl_next"]:
                    m.update(dl_next=min(got, m["dl_chunks"]), dl_ms=now, dirty=True)
                    m["dl_sent"] = max(m["dl_sent"] or 0, m["dl_next"])
            elif rnd != m["dl_round"]:
                continue  # a refusal of a round already replaced (earlier in this loop)
            elif c.ack_code == codec.REJECTED and kn is not None:
                # a gap: send again from the chunk the board expects, under new ids
                m.update(dl_next=kn[0], dl_sent=kn[0], dl_round=rnd + 1, dl_ms=now, dirty=True)
            elif c.ack_code == codec.REJECTED:
                # the board has no download open (its power was cut): open it again
                if all(x["id"] != m["id"] for x in reopen):
                    reopen.append(m)
            # BUSY, a clock refusal, FAILED (the board fails the install itself): the stall
            # timer reopens the download if it does not move on

    # --- sending -----------------------------------------------------------------------------

    def _reopen(self, conn: Connection, r, bundle, members: list, now: int) -> list:
        # a fresh install_bundle: the board answers with the chunk it needs next
        targets, ttl = [], max(60, min(r.timeout_s, codec.MAX_LIFETIME))
        for m in members:
            rnd = (m["dl_round"] or 0) + 1
            cid = reopen_id(r.id, m["id"], m["attempt"], rnd)
            m.update(command_id=cid, dl_next=None, dl_sent=None, dl_round=rnd, dl_ms=now,
                     dirty=True)  # fmt: skip
            targets.append((m["id"], m["name"], m["fleet"], cid))
        self._cancel_chunks(conn, r.id, [m["id"] for m in members])
        got = commands.queue_many(conn, self.secret, targets, kind=KIND_INSTALL,
                                  args=install_args(bundle), source=f"rollout:{r.id}",
                                  now_ms=now, ttl_s=ttl, sent_by=r.created_by)  # fmt: skip
        return [o for o, m in zip(got, members, strict=True) if o is not None and m["online"]]

    def _fill(self, conn: Connection, r, bundle, members: dict[int, dict], now: int) -> list:
        # queue chunks up to WINDOW ahead of what each board has stored; one signing and
        # insert per chunk index for every board that needs it
        by_index: dict[int, list] = defaultdict(list)
        for m in members.values():
            if m["dl_next"] is None or m["state"] != "acked":
                continue
            upto = min(m["dl_chunks"], m["dl_next"] + WINDOW)
            for i in range(m["dl_sent"], upto):
                cid = chunk_id(r.id, m["id"], m["attempt"], m["dl_round"], i)
                by_index[i].append((m, cid))
            if upto > m["dl_sent"]:
                m.update(dl_sent=upto, dirty=True)
        out = []
        for i in sorted(by_index):
            group = by_index[i]
            got = commands.queue_many(
                conn, self.secret, [(m["id"], m["name"], m["fleet"], cid) for m, cid in group],
                kind=KIND_CHUNK, args=chunk_args(conn, bundle, i), source=source(r.id),
                now_ms=now, ttl_s=CHUNK_TTL_S, sent_by=r.created_by,
            )  # fmt: skip
            out += [o for o, (m, _) in zip(got, group, strict=True) if o is not None and m["online"]]
        return out

    def _cancel_chunks(self, conn: Connection, rid: int, device_ids: list[int]) -> None:
        # chunks of an earlier round that were not sent yet are not sent any more
        if device_ids:
            conn.execute(
                sa.update(COMMANDS)
                .where(COMMANDS.c.source == source(rid), COMMANDS.c.device_id.in_(device_ids),
                       COMMANDS.c.status.in_(commands.WAITING))
                .values(status="canceled")
            )  # fmt: skip

    def _save(self, conn: Connection, rid: int, members: dict[int, dict]) -> None:
        rows = [m for m in members.values() if m["dirty"]]
        if rows:
            conn.execute(
                sa.update(ROLLOUT_DEVICES)
                .where(ROLLOUT_DEVICES.c.rollout_id == rid,
                       ROLLOUT_DEVICES.c.device_id == sa.bindparam("m_id"))
                .values(command_id=sa.bindparam("m_cmd"), dl_chunks=sa.bindparam("m_n"),
                        dl_next=sa.bindparam("m_next"), dl_sent=sa.bindparam("m_sent"),
                        dl_round=sa.bindparam("m_round"), dl_ms=sa.bindparam("m_ms")),
                [{"m_id": m["id"], "m_cmd": m["command_id"], "m_n": m["dl_chunks"],
                  "m_next": m["dl_next"], "m_sent": m["dl_sent"], "m_round": m["dl_round"],
                  "m_ms": m["dl_ms"]} for m in rows],
            )  # fmt: skip


def cancel_chunks(conn: Connection, rid: int, device_ids: list[int] | None = None) -> None:
    """Cancel a rollout's chunk commands not answered yet (of ``device_ids``, or all)."""
    q = sa.update(COMMANDS).where(
        COMMANDS.c.source == source(rid), COMMANDS.c.status.in_(commands.WAITING)
    )
    if device_ids is not None:
        q = q.where(COMMANDS.c.device_id.in_(device_ids))
    conn.execute(q.values(status="canceled"))


def sha256(data: bytes) -> str:
    """Hex SHA-256 (of a bundle's bytes)."""
    return hashlib.sha256(data).hexdigest()
