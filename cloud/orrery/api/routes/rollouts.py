"""``/rollouts``: staged fleet rollouts (``orrery rollout create|start|pause|resume|cancel|
retry|rollback|status|log|list``). Every change records the token's name as its actor."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from cloud.orrery.api.auth import CallerDep, role
from cloud.orrery.api.deps import Engine, Page, PagingDep, ReadConn, page
from cloud.orrery.api.errors import ApiError, fleet_error
from cloud.orrery.fleet import keys
from cloud.orrery.fleet.registry import RegistryError
from cloud.orrery.fleet.rollout.members import members
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator, audit_log, rollout_ids
from cloud.orrery.fleet.rollout.plan import RolloutError
from cloud.orrery.fleet.tokens import Caller

router = APIRouter(tags=["rollouts"])

IdPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="Rollout id.")]
ROLLOUT_ERRORS = (RolloutError, RegistryError)


class RolloutIn(BaseModel):
    """A rollout to plan (the options of ``orrery rollout create``)."""

    workflow: str | None = Field(
        default=None, min_length=1, max_length=140, description="The workflow: NAME@VERSION."
    )
    bundle: str | None = Field(
        default=None, min_length=1, max_length=140,
        description="Or the app bundle (firmware OTA): NAME@VERSION.",
    )  # fmt: skip
    target: str = Field(
        min_length=1, max_length=2000,
        description="all, or FIELD=VALUE terms joined by ',' (fleet, profile, fw, wf, device, "
        "tag.KEY).",
    )  # fmt: skip
    waves: str = Field(default="5,10%,50%,100%", max_length=200)
    success: str = Field(default="95%", max_length=20)
    max_failures: str = Field(default="2%", max_length=20)
    min_devices: int = Field(default=20, ge=1, le=10_000_000)
    soak: str = Field(default="10m", max_length=20)
    timeout: str = Field(default="24h", max_length=20)
    rate: str = Field(default="100/min", max_length=20)
    health: str = Field(default="60s", max_length=20)
    dry_run: bool = False
    start_at: str | None = Field(default=None, max_length=64)
    window: str | None = Field(default=None, max_length=500)
    window_tz: str | None = Field(default=None, max_length=64)


class PlannedWave(BaseModel):
    """A wave of a plan: its members."""

    wave: int
    size: str
    devices: list[str]
    count: int
    offline: int


class Plan(BaseModel):
    """What ``create`` decided (``rollout_id`` null: a dry run, nothing was created)."""

    model_config = {"extra": "allow"}

    rollout_id: int | None
    workflow: str
    kind: str = "workflow"
    waves: list[PlannedWave]
    excluded: dict[str, list[str]]
    schedule: dict[str, Any] | None
    without_zone: list[str] | None


class WaveProgress(BaseModel):
    """A wave's devices by state."""

    wave: int
    size: str
    total: int
    states: dict[str, int]


class RolloutStatus(BaseModel):
    """A rollout's progress: per wave, device states, converged share, offline pending and
    its schedule."""

    model_config = {"extra": "allow"}

    id: int
    workflow: str | None
    kind: str = "workflow"
    target: str
    state: str
    reason: str | None
    wave: int
    waves: list[WaveProgress]
    states: dict[str, int]
    devices: int
    converged_pct: float
    offline_pending: int
    converged_text: str
    schedule: dict[str, Any] | None


class Canceled(BaseModel):
    """A cancel's outcome."""

    status: RolloutStatus
    canceled_devices: int


class Retried(BaseModel):
    """A retry's outcome."""

    status: RolloutStatus
    requeued: int


class Changed(BaseModel):
    """A pause's or resume's outcome: ``changed`` false when it was so already."""

    status: RolloutStatus
    changed: bool


class RollbackGroup(BaseModel):
    """Devices that go back to one workflow version."""

    workflow: str
    devices: list[str]


class Rollback(BaseModel):
    """A rollback (``dry_run``: what it would do) and the rollouts it created."""

    groups: list[RollbackGroup]
    rollouts: list[int]
    dry_run: bool


class Member(BaseModel):
    """A device in a rollout: its wave, state and the reason (its last detail)."""

    model_config = {"populate_by_name": True}

    device: str
    wave: int
    state: str
    reason: str | None
    attempts: int
    from_: str | None = Field(alias="from")
    command: str | None
    online: bool
    sent: str | None
    updated: str | None


class LogEntry(BaseModel):
    """An audit log entry: a rollout or device state change, and who made it (null: the
    orchestrator)."""

    at: str | None
    device: str | None
    event: str
    detail: str | None
    by: str | None


def orchestrator(engine: Any, caller: Caller, need_secret: bool = False) -> Orchestrator:
    """An orchestrator acting for ``caller`` (its token's name is the actor in the log)."""
    secret = None
    try:
        secret = keys.load_secret()
    except keys.SecretError as exc:
        if need_secret:
            raise ApiError(409, f"the API has no fleet secret to sign with: {exc}") from None
    return Orchestrator(engine, secret, owner="api", actor=caller.name)


def _status(o: Orchestrator, rid: int) -> RolloutStatus:
    with o.engine.connect() as conn:
        return RolloutStatus(**o.summary(conn, rid))


def _act(o: Orchestrator, rid: int, name: str, *args: Any) -> Any:
    """Run one orchestrator action on an existing rollout: 404 if there is none, 409 when its
    state does not allow it."""
    _status(o, rid)  # 404 first
    try:
        return getattr(o, name)(rid, *args)
    except ROLLOUT_ERRORS as exc:
        raise fleet_error(exc, 409) from None


@router.post("/rollouts", openapi_extra=role("operator"))
def create_rollout(body: RolloutIn, engine: Engine, caller: CallerDep) -> Plan:
    """Plan a rollout of a workflow version or an app bundle (one of the two; a draft: ``POST
    /rollouts/{id}/start`` runs it) or, with ``dry_run``, show the waves' members and counts
    and change nothing."""
    o = orchestrator(engine, caller)
    try:
        p = o.create(
            body.workflow, body.target, body.waves, body.success, body.max_failures,
            body.min_devices, body.soak, body.timeout, body.rate, body.health, body.dry_run,
            body.start_at, body.window, body.window_tz, body.bundle,
        )  # fmt: skip
    except ROLLOUT_ERRORS as exc:
        raise fleet_error(exc) from None
    return Plan(**p.__dict__)


@router.get("/rollouts", openapi_extra=role("viewer"))
def list_rollouts(engine: Engine, caller: CallerDep, p: PagingDep) -> Page[RolloutStatus]:
    """Rollouts, newest first, with their progress."""
    o = orchestrator(engine, caller)
    with engine.connect() as conn:
        ids = rollout_ids(conn)
        rows = [o.summary(conn, rid) for rid in ids[p.offset : p.offset + p.limit]]
    return page(rows, len(ids), p)


@router.get("/rollouts/{rollout_id}", openapi_extra=role("viewer"))
def rollout_status(rollout_id: IdPath, engine: Engine, caller: CallerDep) -> RolloutStatus:
    """Progress per wave, device states, converged share and offline pending."""
    return _status(orchestrator(engine, caller), rollout_id)


@router.post("/rollouts/{rollout_id}/start", openapi_extra=role("operator"))
def start_rollout(rollout_id: IdPath, engine: Engine, caller: CallerDep) -> RolloutStatus:
    """Start a draft rollout (``orrery serve`` drives it, within its schedule)."""
    o = orchestrator(engine, caller)
    _act(o, rollout_id, "start")
    return _status(o, rollout_id)


@router.post("/rollouts/{rollout_id}/pause", openapi_extra=role("operator"))
def pause_rollout(rollout_id: IdPath, engine: Engine, caller: CallerDep) -> Changed:
    """Pause: nothing new is sent; devices in flight still report. Pausing a paused rollout
    changes nothing (``changed`` false)."""
    o = orchestrator(engine, caller)
    done = _act(o, rollout_id, "pause")
    return Changed(status=_status(o, rollout_id), changed=bool(done))


@router.post("/rollouts/{rollout_id}/resume", openapi_extra=role("operator"))
def resume_rollout(rollout_id: IdPath, engine: Engine, caller: CallerDep) -> Changed:
    """Resume a paused rollout; resuming a running one changes nothing."""
    o = orchestrator(engine, caller)
    done = _act(o, rollout_id, "resume")
    return Changed(status=_status(o, rollout_id), changed=bool(done))


@router.post("/rollouts/{rollout_id}/cancel", openapi_extra=role("operator"))
def cancel_rollout(
    rollout_id: IdPath,
    engine: Engine,
    caller: CallerDep,
    force: Annotated[bool, Query(description="Cancel in-flight devices too.")] = False,
) -> Canceled:
    """Cancel: queued commands at once; in-flight devices finish and report unless ``force``."""
    o = orchestrator(engine, caller)
    res = _act(o, rollout_id, "cancel", force)
    return Canceled(status=_status(o, rollout_id), canceled_devices=res["canceled_devices"])


@router.post("/rollouts/{rollout_id}/retry", openapi_extra=role("operator"))
def retry_rollout(rollout_id: IdPath, engine: Engine, caller: CallerDep) -> Retried:
    """Re-queue the failed, rejected and timed-out devices."""
    o = orchestrator(engine, caller)
    n = _act(o, rollout_id, "retry_failed")
    return Retried(status=_status(o, rollout_id), requeued=n)


@router.post("/rollouts/{rollout_id}/rollback", openapi_extra=role("operator"))
def rollback_rollout(
    rollout_id: IdPath,
    engine: Engine,
    caller: CallerDep,
    dry_run: Annotated[bool, Query(description="Only show what would go back.")] = False,
) -> Rollback:
    """Cancel and put every device this rollout changed back on its previous version (new
    rollouts); refused (409), naming them, when a device's state has no place there."""
    o = orchestrator(engine, caller, need_secret=not dry_run)
    groups = _act(o, rollout_id, "rollback_plan")
    new = [] if dry_run else _act(o, rollout_id, "rollback")
    return Rollback(
        groups=[RollbackGroup(workflow=f"{wf}@{ver}", devices=names) for wf, ver, names in groups],
        rollouts=new,
        dry_run=dry_run,
    )


@router.get("/rollouts/{rollout_id}/devices", openapi_extra=role("viewer"))
def rollout_devices(
    rollout_id: IdPath,
    conn: ReadConn,
    p: PagingDep,
    state: Annotated[str | None, Query(max_length=16, description="Only this state.")] = None,
    wave: Annotated[int | None, Query(ge=1, le=1000, description="Only this wave.")] = None,
) -> Page[Member]:
    """The members one by one, by wave and name: state, reason, attempts, where from."""
    try:
        rows, total = members(conn, rollout_id, state, wave, p.limit, p.offset)
    except RolloutError as exc:
        raise fleet_error(exc) from None
    return page(rows, total, p)


@router.get("/rollouts/{rollout_id}/log", openapi_extra=role("viewer"))
def rollout_log(rollout_id: IdPath, conn: ReadConn, p: PagingDep) -> Page[LogEntry]:
    """The audit log, oldest first: every change and who made it."""
    rows = audit_log(conn, rollout_id)
    if rows is None:
        raise ApiError(404, f"no rollout {rollout_id}")
    return page(rows[p.offset : p.offset + p.limit], len(rows), p)
