"""``/devices`` and ``/fleet``: the devices registry, one device in full, its tags and timeline,
and the fleet at a glance (``orrery devices list|show|add|tag|timeline``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from cloud.orrery.api.auth import role
from cloud.orrery.api.deps import Engine, Page, PagingDep, ReadConn, WriteConn, page
from cloud.orrery.api.errors import ApiError, fleet_error
from cloud.orrery.clock import now_ms
from cloud.orrery.fleet import devices, logs, timeline

router = APIRouter(tags=["devices"])

NamePath = Annotated[str, Path(min_length=1, max_length=64, description="Device id.")]
SinceQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="A duration back from now (90s, 10m, 24h, 7d), ISO 8601 or unix seconds.",
    ),
]


class DeviceRow(BaseModel):
    """A device as ``devices list`` shows it."""

    device: str
    fleet: str
    profile: str | None
    online: bool
    last_seen: str | None
    boot: int | None
    fw: str | None
    workflow: str | None
    wf_hash: str | None
    backlog: int | None
    last_seq: int | None
    time_synced: bool | None
    clock_offset_s: int | None
    received: int
    duplicates: int
    historical: int
    pending_gap: int
    permanent_loss: int


class Session(BaseModel):
    """One boot of a device."""

    boot: int
    first_seen: str | None
    last_seen: str | None
    seqs: list[int] | None
    anchor: dict[str, Any] | None
    clock_offset_s: int | None


class WorkflowState(BaseModel):
    """The workflow state a device last reported."""

    state: str
    event: str
    at: str | None
    time_source: str
    boot: int
    current_boot: bool


class RolloutMembership(BaseModel):
    """A rollout a device was in, and how it went for it."""

    model_config = {"populate_by_name": True}

    rollout: int
    workflow: str
    from_: str | None = Field(alias="from")
    rollout_state: str
    state: str
    reason: str | None
    wave: int
    attempts: int
    updated: str | None
    created_by: str | None


class DeviceDetail(DeviceRow):
    """One device in full (``devices show``)."""

    tags: dict[str, str]
    workflow_state: WorkflowState | None
    sessions: list[Session]
    rollouts: list[RolloutMembership]


class FleetSummary(BaseModel):
    """The fleet at a glance: counts by firmware, workflow version and profile ("none": not
    reported), backlog, pending gap, permanent loss and alerts."""

    devices: int
    online: int
    offline: int
    fw: dict[str, int]
    workflows: dict[str, int]
    profiles: dict[str, int]
    backlog: int
    received: int
    pending_gap: int
    permanent_loss: int
    alerts: int


class Register(BaseModel):
    """Devices to register (provisioning)."""

    names: list[str] = Field(min_length=1, max_length=10_000)
    fleet: str = "default"
    profile: str | None = Field(default=None, max_length=64)


class Registered(BaseModel):
    """Which of the names were new."""

    added: list[str]
    known: int


class TagChange(BaseModel):
    """Tags to set (``set``: key -> value) and to remove (``remove``: keys)."""

    set: dict[str, str] = {}
    remove: list[str] = []


class TimelineEntry(BaseModel):
    """One thing that happened to a device."""

    at: str | None
    at_ms: int
    time_source: str
    kind: str
    summary: str
    data: dict[str, Any]


class LogLine(BaseModel):
    """A line of a board's own log."""

    at: str | None
    at_ms: int
    time_source: str
    level: str
    code: str
    text: str
    boot: int
    seq: int
    up_ms: int
    received_ms: int


class Timeline(BaseModel):
    """A device's newest timeline entries, oldest first; ``more``: older ones were left off."""

    entries: list[TimelineEntry]
    more: bool


def device_filter(
    tag: Annotated[
        list[str] | None,
        Query(description="KEY=VALUE: only devices with this tag (repeatable: all must match)."),
    ] = None,
    profile: Annotated[str | None, Query(max_length=64, description="Board profile.")] = None,
    online: Annotated[bool | None, Query(description="Only online (or offline) devices.")] = None,
) -> devices.Filter:
    """The devices filter of a listing's query."""
    pairs = devices.parse_tags(tag or [])
    if any(not v for _, v in pairs):
        raise ApiError(400, "tag: expected KEY=VALUE with a value")
    return devices.Filter(profile=profile, online=online, tags=tuple(pairs))


@router.get("/devices", openapi_extra=role("viewer"))
def list_devices(
    conn: ReadConn,
    p: PagingDep,
    flt: Annotated[devices.Filter, Depends(device_filter)],
) -> Page[DeviceRow]:
    """Devices by name: online state, last seen, versions, backlog, clock offset."""
    rows = devices.device_rows(conn, flt=flt, limit=p.limit, offset=p.offset)
    return page(rows, devices.count_devices(conn, flt), p)


@router.get("/fleet", openapi_extra=role("viewer"))
def fleet_overview(
    conn: ReadConn,
    tag: Annotated[
        list[str] | None,
        Query(description="KEY=VALUE: only devices with this tag (repeatable: all must match)."),
    ] = None,
    profile: Annotated[str | None, Query(max_length=64, description="Board profile.")] = None,
) -> FleetSummary:
    """The fleet at a glance (of the devices the filters select)."""
    return FleetSummary(**devices.fleet_summary(conn, device_filter(tag, profile, None)))


@router.post("/devices", status_code=201, openapi_extra=role("admin"))
def register_devices(body: Register, engine: Engine) -> Registered:
    """Register devices (provisioning); the ingest dead-letters devices it does not know."""
    devices.check_ids(body.fleet, body.names)
    added = devices.register(engine, body.fleet, body.profile, body.names)
    return Registered(added=added, known=len(set(body.names)) - len(added))


@router.get("/devices/{name}", openapi_extra=role("viewer"))
def show_device(name: NamePath, conn: ReadConn) -> DeviceDetail:
    """One device in full: registry fields, tags, its last workflow state, its boots and the
    rollouts it was in."""
    info = devices.device_detail(conn, name)
    if info is None:
        raise ApiError(404, f"unknown device {name!r}")
    return DeviceDetail(**info)


@router.patch("/devices/{name}/tags", openapi_extra=role("admin"))
def change_tags(name: NamePath, body: TagChange, conn: WriteConn) -> dict[str, str]:
    """Set and remove tags (rollout targets select on ``tag.KEY=VALUE``); the device's tags
    now."""
    if any(not v for v in body.set.values()):
        raise ApiError(400, "set: a tag's value may not be empty (remove it instead)")
    pairs = devices.parse_tags(
        [f"{k}={v}" for k, v in body.set.items()] + [f"{k}=" for k in body.remove]
    )
    did = devices.device_id(conn, name)
    if did is None:
        raise ApiError(404, f"unknown device {name!r}")
    return devices.set_tags(conn, did, pairs)


@router.get("/devices/{name}/timeline", openapi_extra=role("viewer"))
def device_timeline(
    name: NamePath,
    conn: ReadConn,
    since: SinceQuery = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = timeline.DEFAULT_LIMIT,
) -> Timeline:
    """A device's history in time order: boots, state changes and events, commands and acks,
    installs, losses and gaps, alerts and dead letters."""
    try:
        since_ms = None if since is None else timeline.parse_since(since, now_ms())
        entries = timeline.timeline(conn, name, since_ms, limit + 1)
    except timeline.TimelineError as exc:
        raise fleet_error(exc) from None
    more = len(entries) > limit
    return Timeline(entries=[TimelineEntry(**e.as_dict()) for e in entries[-limit:]], more=more)


@router.get("/devices/{name}/logs", openapi_extra=role("viewer"))
def device_logs(
    name: NamePath,
    conn: ReadConn,
    since: SinceQuery = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = logs.DEFAULT_LIMIT,
) -> list[LogLine]:
    """The newest lines of a board's own log (warnings, errors, its workflow's state changes),
    oldest first."""
    try:
        since_ms = None if since is None else timeline.parse_since(since, now_ms())
        did, _ = timeline.device_ref(conn, name)
    except timeline.TimelineError as exc:
        raise fleet_error(exc) from None
    return [LogLine(**x.as_dict()) for x in logs.lines(conn, did, since_ms, limit)]
