"""Every table's Core handle, defined once, and the dialect helpers the queries share."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db import models

DEVICES: sa.Table = models.Device.__table__  # type: ignore[assignment]
TAGS: sa.Table = models.DeviceTag.__table__  # type: ignore[assignment]
READINGS: sa.Table = models.Reading.__table__  # type: ignore[assignment]
CONFLICTS: sa.Table = models.ReadingConflict.__table__  # type: ignore[assignment]
TIME_FAULTS: sa.Table = models.TimeFault.__table__  # type: ignore[assignment]
SESSIONS: sa.Table = models.Session.__table__  # type: ignore[assignment]
RANGES: sa.Table = models.ReceivedRange.__table__  # type: ignore[assignment]
GAPS: sa.Table = models.Gap.__table__  # type: ignore[assignment]
LOSSES: sa.Table = models.Loss.__table__  # type: ignore[assignment]
DEAD_LETTERS: sa.Table = models.DeadLetter.__table__  # type: ignore[assignment]
COMMANDS: sa.Table = models.Command.__table__  # type: ignore[assignment]
COMMAND_BODIES: sa.Table = models.CommandBody.__table__  # type: ignore[assignment]
EVENTS: sa.Table = models.Event.__table__  # type: ignore[assignment]
DEVICE_LOGS: sa.Table = models.DeviceLog.__table__  # type: ignore[assignment]
ALERTS: sa.Table = models.Alert.__table__  # type: ignore[assignment]
WORKFLOWS: sa.Table = models.Workflow.__table__  # type: ignore[assignment]
BUNDLES: sa.Table = models.Bundle.__table__  # type: ignore[assignment]
ROLLOUTS: sa.Table = models.Rollout.__table__  # type: ignore[assignment]
ROLLOUT_DEVICES: sa.Table = models.RolloutDevice.__table__  # type: ignore[assignment]
ROLLOUT_LOG: sa.Table = models.RolloutLog.__table__  # type: ignore[assignment]
API_TOKENS: sa.Table = models.ApiToken.__table__  # type: ignore[assignment]

# The status of a gap too large to be true (``ingest.reconcile``): never requested, not pending.
GAP_ANOMALY = "anomaly"

# The readings columns in the order the ingest writes rows (its bulk insert and COPY).
READING_COLS = (
    "device_id",
    "boot",
    "seq",
    "channel",
    "value",
    "up_ms",
    "event_ms",
    "historical",
    "received_ms",
)


def insert_ignore(conn: Connection, table: sa.Table):
    """``INSERT ... ON CONFLICT DO NOTHING`` for this connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()


def insert_new(conn: Connection, table: sa.Table, rows: list[dict], chunk: int = 500) -> int:
    """Insert ``rows``, ignoring those whose key is already there; return how many were new.

    Counted from ``RETURNING`` (one statement per ``chunk`` rows): a driver's rowcount is not
    exact for every form of insert on PostgreSQL.
    """
    key = list(table.primary_key.columns)[0]
    n = 0
    for i in range(0, len(rows), chunk):
        stmt = insert_ignore(conn, table).values(rows[i : i + chunk]).returning(key)
        n += len(conn.execute(stmt).all())
    return n
