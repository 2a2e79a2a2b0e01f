"""The companion's tables (SQLModel): devices, readings and their reconciliation, commands,
the workflow registry and rollouts.

Sequence numbers, uptimes and times are BIGINT: a reading's seq is per device (the board's store
numbers readings 1, 2, ... across boots), ``up_ms`` is the device uptime in ms, ``event_ms`` is
unix time in ms (NULL until the boot's time anchor is known).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import BigInteger, Column, Index, LargeBinary
from sqlmodel import Field, SQLModel


def _big(**kw) -> Column:
    return Column(BigInteger, **kw)


class Device(SQLModel, table=True):
    """A board: registered by provisioning (or auto-registered), fed by state messages."""

    __tablename__ = "devices"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    fleet: str = Field(max_length=64)
    profile: str | None = Field(default=None, max_length=64)
    online: bool = False
    created_ms: int = Field(sa_column=_big(nullable=False))
    last_seen_ms: int | None = Field(default=None, sa_column=_big())
    boot: int | None = Field(default=None, sa_column=_big())
    fw: str | None = Field(default=None, max_length=64)
    wf: str | None = Field(default=None, max_length=64)
    wf_ver: int | None = None
    wf_hash: str | None = Field(default=None, max_length=80)
    backlog: int | None = Field(default=None, sa_column=_big())
    last_seq: int | None = Field(default=None, sa_column=_big())
    synced: bool | None = None
    received: int = Field(default=0, sa_column=_big(nullable=False, server_default="0"))
    duplicates: int = Field(default=0, sa_column=_big(nullable=False, server_default="0"))
    historical: int = Field(default=0, sa_column=_big(nullable=False, server_default="0"))
    # readings refused because a different one is stored under their (boot, seq)
    conflicts: int = Field(default=0, sa_column=_big(nullable=False, server_default="0"))
    # readings stored without event time because the time their anchor gives cannot be true
    bad_time: int = Field(default=0, sa_column=_big(nullable=False, server_default="0"))
    dirty: bool = Field(default=False, index=True)
    # health counters, compared across a rollout's upgraded and not-yet-upgraded boards
    reboots: int = Field(default=0, sa_column=_big(nullable=False, server_default="0"))
    link_drops: int = Field(default=0, sa_column=_big(nullable=False, server_default="0"))
    invalid: int = Field(default=0, sa_column=_big(nullable=False, server_default="0"))
    invalid_boot: int | None = Field(default=None, sa_column=_big())  # the board's count this boot
    alarms: int = Field(default=0, sa_column=_big(nullable=False, server_default="0"))
    # the .mpy version its MicroPython loads ("6.3"), from its state messages (migration 0009):
    # an app bundle compiled for another one is refused before a rollout sends it
    mpy: str | None = Field(default=None, max_length=16)


class DeviceTag(SQLModel, table=True):
    """A key=value tag on a device (rollout targets select on them)."""

    __tablename__ = "device_tags"
    # the distinct values of one key in a few steps (a rollout's per-device time zones)
    __table_args__ = (Index("ix_device_tags_key_value", "key", "value"),)
    device_id: int = Field(foreign_key="devices.id", primary_key=True)
    key: str = Field(max_length=64, primary_key=True)
    value: str = Field(max_length=128)


class Reading(SQLModel, table=True):
    """One reading, exactly once: keyed by (device, boot, seq)."""

    __tablename__ = "readings"
    __table_args__ = (Index("ix_readings_device_event", "device_id", "event_ms"),)
    device_id: int = Field(primary_key=True)
    boot: int = Field(sa_column=_big(primary_key=True, autoincrement=False))
    seq: int = Field(sa_column=_big(primary_key=True, autoincrement=False))
    channel: int
    value: int
    up_ms: int = Field(sa_column=_big(nullable=False))
    event_ms: int | None = Field(default=None, sa_column=_big())
    historical: bool = False
    received_ms: int = Field(sa_column=_big(nullable=False))


class ReadingConflict(SQLModel, table=True):
    """A reading refused because another one, with different content, is stored under the same
    (device, boot, seq): the first one stored stays, this keeps each different content once."""

    __tablename__ = "reading_conflicts"
    device_id: int = Field(primary_key=True)
    boot: int = Field(sa_column=_big(primary_key=True, autoincrement=False))
    seq: int = Field(sa_column=_big(primary_key=True, autoincrement=False))
    channel: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    value: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    up_ms: int = Field(sa_column=_big(primary_key=True, autoincrement=False))
    historical: bool = False
    received_ms: int = Field(sa_column=_big(nullable=False))


class TimeFault(SQLModel, table=True):
    """A reading stored without event time because the time its boot's anchor gives cannot be
    true (before 2020, or more than a day ahead of the companion's clock), and that time."""

    __tablename__ = "time_faults"
    device_id: int = Field(primary_key=True)
    boot: int = Field(sa_column=_big(primary_key=True, autoincrement=False))
    seq: int = Field(sa_column=_big(primary_key=True, autoincrement=False))
    event_ms: int = Field(sa_column=_big(nullable=False))
    reason: str = Field(max_length=64)
    detected_ms: int = Field(sa_column=_big(nullable=False))


class Session(SQLModel, table=True):
    """One boot of a device and its time anchor (uptime ms <-> unix ms)."""

    __tablename__ = "device_sessions"
    device_id: int = Field(primary_key=True)
    boot: int = Field(sa_column=_big(primary_key=True, autoincrement=False))
    anchor_up_ms: int | None = Field(default=None, sa_column=_big())
    anchor_unix_ms: int | None = Field(default=None, sa_column=_big())
    first_seen_ms: int = Field(sa_column=_big(nullable=False))
    last_seen_ms: int = Field(sa_column=_big(nullable=False))
    first_seq: int | None = Field(default=None, sa_column=_big())
    last_seq: int | None = Field(default=None, sa_column=_big())
    # the board's clock minus the companion's, estimated from live batches (ingest/skew.py)
    clock_offset_ms: int | None = Field(default=None, sa_column=_big())


class ReceivedRange(SQLModel, table=True):
    """Sequence numbers received from a device (merged by the reconciler)."""

    __tablename__ = "received_ranges"
    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(index=True)
    first: int = Field(sa_column=_big(nullable=False))
    last: int = Field(sa_column=_big(nullable=False))


class Gap(SQLModel, table=True):
    """Missing sequence numbers that may still arrive: pending, then requested by a resend."""

    __tablename__ = "gaps"
    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(index=True)
    first: int = Field(sa_column=_big(nullable=False))
    last: int = Field(sa_column=_big(nullable=False))
    status: str = Field(max_length=16)  # pending | requested | anomaly (too large: never asked)
    reason: str = Field(max_length=200)
    detected_ms: int = Field(sa_column=_big(nullable=False))
    updated_ms: int = Field(sa_column=_big(nullable=False))
    command_id: str | None = Field(default=None, max_length=100)
    attempts: int = 0


class Loss(SQLModel, table=True):
    """Sequence numbers that will never arrive, and why."""

    __tablename__ = "losses"
    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(index=True)
    first: int = Field(sa_column=_big(nullable=False))
    last: int = Field(sa_column=_big(nullable=False))
    reason: str = Field(max_length=64)  # store_full | corrupt (from the board) | not_held
    source: str = Field(max_length=16)  # device | cloud
    boot: int | None = Field(default=None, sa_column=_big())
    reported_ms: int = Field(sa_column=_big(nullable=False))


class DeadLetter(SQLModel, table=True):
    """A message the ingest could not accept, kept with its reason."""

    __tablename__ = "dead_letters"
    id: int | None = Field(default=None, primary_key=True)
    received_ms: int = Field(sa_column=_big(nullable=False))
    topic: str = Field(max_length=512)
    device: str | None = Field(default=None, max_length=64)
    reason: str = Field(max_length=300, index=True)
    size: int
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Command(SQLModel, table=True):
    """A signed command for a device: queued, sent, acked, then done or failed."""

    __tablename__ = "commands"
    id: str = Field(primary_key=True, max_length=100)
    device_id: int = Field(index=True)
    kind: str = Field(max_length=32)
    iat: int = Field(sa_column=_big(nullable=False))
    exp: int = Field(sa_column=_big(nullable=False))
    status: str = Field(max_length=16, index=True)  # queued|sent|acked|done|failed|expired
    source: str = Field(max_length=64)
    created_ms: int = Field(sa_column=_big(nullable=False))
    sent_ms: int | None = Field(default=None, sa_column=_big())
    acked_ms: int | None = Field(default=None, sa_column=_big())
    ack_code: int | None = None
    ack_detail: str | None = Field(default=None, max_length=300)
    # delivery (fleet/commands.py): publishes so far, when it is published again without an ack,
    # the skew it was signed with and the boot that estimate came from, and re-signings
    sends: int = Field(default=0, sa_column=_big(nullable=False, server_default="0"))
    retry_ms: int | None = Field(default=None, sa_column=_big())
    skew_s: int | None = Field(default=None, sa_column=_big())
    skew_boot: int | None = Field(default=None, sa_column=_big())
    resigns: int = Field(default=0, sa_column=_big(nullable=False, server_default="0"))
    # an operator's command (fleet/device_commands.py): who sent it (the OS user of the CLI),
    # and when it may be published first (a send to many devices is spread by its rate limit)
    sent_by: str | None = Field(default=None, max_length=64)
    due_ms: int | None = Field(default=None, sa_column=_big())


class CommandBody(SQLModel, table=True):
    """A command's signed envelope (its args are in the signed body), apart from its
    ``commands`` row: it is large (a workflow install carries its blob, 11 KB) and never
    changes with a publish or an ack, while SQLite rewrites a whole row, overflow pages and
    all, whenever it changes size (an ack fills in ``acked_ms``)."""

    __tablename__ = "command_bodies"
    id: str = Field(primary_key=True, max_length=100)  # the command's id
    envelope: str


class Event(SQLModel, table=True):
    """A workflow event a board published."""

    __tablename__ = "events"
    device_id: int = Field(primary_key=True)
    boot: int = Field(sa_column=_big(primary_key=True, autoincrement=False))
    seq: int = Field(sa_column=_big(primary_key=True, autoincrement=False))
    up_ms: int = Field(sa_column=_big(nullable=False))
    event_ms: int | None = Field(default=None, sa_column=_big())
    state: str = Field(max_length=64)
    event: str = Field(max_length=64)
    value: int | None = None
    received_ms: int = Field(sa_column=_big(nullable=False))


class DeviceLog(SQLModel, table=True):
    """A line of a board's log (``up/log``), exactly once: keyed by (device, boot, seq). The
    board sends a code and two small ints; ``text`` is the line as the companion wrote it when
    it arrived (state names from the workflow the device reported then)."""

    __tablename__ = "device_logs"
    __table_args__ = (Index("ix_device_logs_device_received", "device_id", "received_ms"),)
    device_id: int = Field(primary_key=True)
    boot: int = Field(sa_column=_big(primary_key=True, autoincrement=False))
    seq: int = Field(sa_column=_big(primary_key=True, autoincrement=False))
    up_ms: int = Field(sa_column=_big(nullable=False))
    event_ms: int | None = Field(default=None, sa_column=_big())
    level: str = Field(max_length=16)  # info | warning | error
    code: int
    a: int
    b: int
    text: str = Field(max_length=300)
    received_ms: int = Field(sa_column=_big(nullable=False))


class Alert(SQLModel, table=True):
    """A live alert: a live (not backlog) reading crossed an alert rule."""

    __tablename__ = "alerts"
    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(index=True)
    rule: str = Field(max_length=64)
    boot: int = Field(sa_column=_big(nullable=False))
    seq: int = Field(sa_column=_big(nullable=False))
    value: int
    event_ms: int | None = Field(default=None, sa_column=_big())
    created_ms: int = Field(sa_column=_big(nullable=False))


class Workflow(SQLModel, table=True):
    """An immutable workflow version in the registry."""

    __tablename__ = "workflows"
    __table_args__ = (sa.UniqueConstraint("name", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    version: int
    hash: str = Field(max_length=80)
    definition: str  # the JSON as pushed
    blob: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    heap_bytes: int
    created_ms: int = Field(sa_column=_big(nullable=False))


class Bundle(SQLModel, table=True):
    """An immutable app bundle version in the registry: the board's app (``shared/`` and
    ``firmware/`` compiled by mpy-cross) packed by ``shared.bundle.pack``, with its manifest."""

    __tablename__ = "bundles"
    __table_args__ = (sa.UniqueConstraint("name", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    version: str = Field(max_length=64)
    sha256: str = Field(max_length=64)  # of ``data``, what the board checks after the download
    size: int = Field(sa_column=_big(nullable=False))
    profile: str = Field(max_length=64)  # the board profile it was built for
    mpy_version: str = Field(max_length=16)  # the .mpy version mpy-cross wrote ("6.3")
    source_hash: str = Field(max_length=64)  # sha256 over the shared/ and firmware/ sources
    manifest: str  # JSON: files (path, sha256, size), mpy version, profile, source hash, built
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_ms: int = Field(sa_column=_big(nullable=False))
    created_by: str | None = Field(default=None, max_length=64)


class Rollout(SQLModel, table=True):
    """A staged rollout of one workflow version or one app bundle: a durable state machine."""

    __tablename__ = "rollouts"
    id: int | None = Field(default=None, primary_key=True)
    # exactly one of the two is set (migration 0009 made workflow_id nullable)
    workflow_id: int | None = Field(default=None, foreign_key="workflows.id")
    bundle_id: int | None = None  # no foreign key: nothing deletes a bundle
    target: str
    waves: str  # JSON list of wave sizes as given: "5", "10%"
    success_pct: float
    max_fail_pct: float
    min_devices: int
    soak_s: int
    timeout_s: int
    rate_per_min: int
    health_s: int
    state: str = Field(max_length=16, index=True)  # draft|running|paused|finished|canceled
    wave: int = 0  # the current wave, 0-based
    wave_met_ms: int | None = Field(default=None, sa_column=_big())
    reason: str | None = None
    created_ms: int = Field(sa_column=_big(nullable=False))
    started_ms: int | None = Field(default=None, sa_column=_big())
    finished_ms: int | None = Field(default=None, sa_column=_big())
    lease_owner: str | None = Field(default=None, max_length=100)
    lease_until_ms: int | None = Field(default=None, sa_column=_big())
    created_by: str | None = Field(default=None, max_length=64)  # who created it (the OS user)
    # when it may send (migration 0007): not before start_at_ms; inside ``window`` (canonical
    # ``--window`` text, schedule.parse) in ``window_tz`` (UTC, a zone name or tag.KEY)
    start_at_ms: int | None = Field(default=None, sa_column=_big())
    window: str | None = Field(default=None, max_length=500)
    window_tz: str | None = Field(default=None, max_length=64)
    # its preview (migration 0014, ``fleet.preview.stored``): the ``--preview-gate`` bounds as
    # given, the stored preview (the report as JSON, with the entries of its most changed and
    # gate-breaking devices only) and when it ran
    preview_gate: str | None = Field(default=None, max_length=500)
    preview: str | None = None
    preview_ms: int | None = Field(default=None, sa_column=_big())


class RolloutDevice(SQLModel, table=True):
    """One device in one rollout: its wave and its state. No foreign keys (migration 0005):
    members are inserted from device rows read in the same transaction, and nothing deletes a
    device or a rollout."""

    __tablename__ = "rollout_devices"
    rollout_id: int = Field(primary_key=True)
    device_id: int = Field(primary_key=True, index=True)
    wave: int
    state: str = Field(max_length=16)  # no index of its own: queries name the rollout too
    attempt: int = 0
    command_id: str | None = Field(default=None, max_length=100)
    prev_wf: str | None = Field(default=None, max_length=64)
    prev_ver: int | None = None
    prev_fw: str | None = Field(default=None, max_length=64)  # the app it ran (bundle rollouts)
    updated_ms: int = Field(sa_column=_big(nullable=False))
    sent_ms: int | None = Field(default=None, sa_column=_big())
    detail: str | None = None
    baseline: str | None = None  # JSON health counters when its wave started
    # a bundle rollout's download (migration 0011, ``fleet.rollout.ota``): the chunk count, the
    # chunk the board expects next (None: its install_bundle is not answered yet), the chunks
    # queued in this round, the round of chunk ids in force, when the download last moved
    dl_chunks: int | None = None
    dl_next: int | None = None
    dl_sent: int | None = None
    dl_round: int | None = None
    dl_ms: int | None = Field(default=None, sa_column=_big())


class RolloutLog(SQLModel, table=True):
    """The audit log: every rollout and device state change."""

    __tablename__ = "rollout_log"
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(index=True)
    device_id: int | None = None
    at_ms: int = Field(sa_column=_big(nullable=False))
    event: str = Field(max_length=32)
    detail: str | None = None
    actor: str | None = Field(default=None, max_length=64)  # who did it; None: the orchestrator


class ApiToken(SQLModel, table=True):
    """A token of ``orrery api`` (migration 0013): its name, role and the sha256 of the token
    (the token itself is shown once, when it is created, and never stored)."""

    __tablename__ = "api_tokens"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    role: str = Field(max_length=16)  # viewer | operator | admin
    hash: str = Field(max_length=64, unique=True)
    created_ms: int = Field(sa_column=_big(nullable=False))
    created_by: str | None = Field(default=None, max_length=64)
    revoked_ms: int | None = Field(default=None, sa_column=_big())
    revoked_by: str | None = Field(default=None, max_length=64)
    last_used_ms: int | None = Field(default=None, sa_column=_big())
