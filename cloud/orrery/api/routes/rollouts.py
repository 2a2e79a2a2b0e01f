"""``/rollouts``: staged fleet rollouts (``orrery rollout create|preview|start|pause|resume|
cancel|retry|rollback|status|log|list``). Every change records the token's name as its actor."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from cloud.orrery.api.auth import CallerDep, role
from cloud.orrery.api.deps import Engine, Page, PagingDep, ReadConn, page
from cloud.orrery.api.errors import ApiError, fleet_error
from cloud.orrery.clock import iso, now_ms
from cloud.orrery.fleet import keys, timeline
from cloud.orrery.fleet.preview import stored
from cloud.orrery.fleet.registry import RegistryError
from cloud.orrery.fleet.rollout.members import members
from cloud.orrery.fleet.rollout.orchestrator import (
    GATE_MAX,
    Orchestrator,
    audit_log,
    rollout_ids,
)
from cloud.orrery.fleet.rollout.plan import RolloutError
from cloud.orrery.fleet.tokens import Caller
from cloud.orrery.ingest.alerts import AlertRule

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
    preview_gate: str | None = Field(
        default=None, min_length=1, max_length=GATE_MAX,
        description='Bounds its preview must keep to before it may start: PATH OP LIMIT joined '
        'by ",", e.g. "events.fault_raised<=+10%,outputs.fan.on_s<=+20%".',
    )  # fmt: skip
    preview: bool = Field(
        default=False,
        description="Preview it too (stored with it; with dry_run only returned).",
    )
    preview_since: str = Field(
        default=stored.DEFAULT_SINCE, min_length=1, max_length=64,
        description="preview: from when, a duration back from now (24h), ISO 8601 or unix s.",
    )  # fmt: skip


class PreviewIn(BaseModel):
    """A preview to run (the options of ``orrery rollout preview``)."""

    since: str = Field(
        default=stored.DEFAULT_SINCE, min_length=1, max_length=64,
        description="From: a duration back from now (90s, 10m, 24h, 7d), ISO 8601 or unix s.",
    )  # fmt: skip
    until: str | None = Field(
        default=None, min_length=1, max_length=64, description="Up to: like since (null: now)."
    )
    rollback: bool = Field(
        default=False,
        description="Preview its rollback: the devices on its version back to the version "
        "each ran before (not stored).",
    )
    alerts: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=list, max_length=20,
        description="Alert rules CHANNEL>LEVEL or CHANNEL<LEVEL counted on the replayed readings.",
    )  # fmt: skip


class Preview(BaseModel):
    """A preview's report (``fleet/preview/model.py`` documents each key): per device only
    the most changed and the gate-breaking devices; ``summary`` (a few lines) and ``verdict``
    (one line); ``at``: when it was stored (null: not stored, a rollback's)."""

    model_config = {"extra": "allow"}

    rollout: int | None
    at: str | None
    to: str
    window: dict[str, Any]
    devices: int
    replayed: int
    readings: int
    changed: int
    skipped: dict[str, Any]
    stranded: list[dict[str, Any]]
    totals: dict[str, Any]
    top: list[str]
    per_device: list[dict[str, Any]]
    gate: dict[str, Any] | None
    summary: list[str]
    verdict: str


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
    preview: Preview | None = None


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
    preview_gate: str | None = None
    preview: dict[str, Any] | None = Field(
        default=None,
        description="The stored preview: at, to, summary (lines), verdict (one line), passed "
        "(the gate's verdict; null: no gate). GET /rollouts/{id}/preview has all of it.",
    )


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


def _window(since: str, until: str | None) -> tuple[int, int]:
    """A preview's window as unix ms; 400 naming the bad part."""
    now = now_ms()
    until_ms = now if until is None else timeline.parse_since(until, now, "until")
    since_ms = timeline.parse_since(since, now, "since")
    try:
        stored.check_window(since_ms, until_ms)
    except RolloutError as exc:
        raise ApiError(400, str(exc).replace("--since", "since").replace("--until", "until")) from None
    return since_ms, until_ms


def _preview_out(rep: dict, rid: int | None, at_ms: int | None) -> Preview:
    return Preview(**{**stored.compact(rep), "rollout": rid, "at": iso(at_ms)})


@router.post("/rollouts", openapi_extra=role("operator"))
def create_rollout(body: RolloutIn, engine: Engine, caller: CallerDep) -> Plan:
    """Plan a rollout of a workflow version or an app bundle (one of the two; a draft: ``POST
    /rollouts/{id}/start`` runs it) or, with ``dry_run``, show the waves' members and counts
    and change nothing. With ``preview``, preview it too (``preview`` in the answer; a broken
    ``preview_gate`` still creates the draft, which ``start`` then refuses)."""
    o = orchestrator(engine, caller)
    window = _window(body.preview_since, None) if body.preview else None
    try:
        p = o.create(
            body.workflow, body.target, body.waves, body.success, body.max_failures,
            body.min_devices, body.soak, body.timeout, body.rate, body.health, body.dry_run,
            body.start_at, body.window, body.window_tz, body.bundle, body.preview_gate,
        )  # fmt: skip
    except ROLLOUT_ERRORS as exc:
        raise fleet_error(exc) from None
    out = Plan(**p.__dict__)
    if window is None:
        return out
    try:
        if p.rollout_id is None:
            rep = stored.preview_plan(engine, p, *window, gate=body.preview_gate)
            out.preview = _preview_out(rep, None, None)
        else:
            stored.preview(engine, p.rollout_id, *window, actor=caller.name)
            out.preview = _stored_preview(engine, p.rollout_id)
    except ROLLOUT_ERRORS as exc:
        created = f"rollout {p.rollout_id} was created (a draft), but " if p.rollout_id else ""
        raise ApiError(409, f"{created}its preview failed: {exc}") from None
    return out


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


@router.post("/rollouts/{rollout_id}/preview", openapi_extra=role("operator"))
def preview_rollout(
    rollout_id: IdPath, body: PreviewIn, engine: Engine, caller: CallerDep
) -> Preview:
    """Replay each target device's readings over the window through the version it runs and
    the rollout's (with ``rollback``: back to the version each ran before), judge it against
    the rollout's preview gate and store it (not a rollback's): ``orrery rollout preview``.
    409 for an app bundle rollout (a preview replays workflows) or nothing to preview."""
    window = _window(body.since, body.until)
    try:
        rules = [AlertRule.parse(a) for a in body.alerts]
    except ValueError as exc:
        raise ApiError(400, f"alerts: {exc}") from None
    try:
        rep = stored.preview(engine, rollout_id, *window, rollback=body.rollback,
                             alert_rules=rules, actor=caller.name)  # fmt: skip
    except ROLLOUT_ERRORS as exc:
        raise fleet_error(exc, 409) from None
    if body.rollback:
        return _preview_out(rep, rollout_id, None)
    return _stored_preview(engine, rollout_id)


def _stored_preview(engine: Any, rid: int) -> Preview:
    with engine.connect() as conn:
        try:
            got = stored.stored(conn, rid)
        except RolloutError as exc:
            raise fleet_error(exc) from None
    if got is None:
        raise ApiError(
            404, f"rollout {rid} has no stored preview (POST /rollouts/{rid}/preview runs one)"
        )
    rep, at = got
    return Preview(**{**rep, "rollout": rid, "at": iso(at)})


@router.get("/rollouts/{rollout_id}/preview", openapi_extra=role("viewer"))
def rollout_preview(rollout_id: IdPath, engine: Engine, caller: CallerDep) -> Preview:
    """The stored preview (404 when there is none): what ``rollout status`` summarizes."""
    return _stored_preview(engine, rollout_id)


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
