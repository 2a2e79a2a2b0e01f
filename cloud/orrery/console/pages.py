"""The console's pages: one function a page, each reading through the fleet layer (the same
functions the API and the CLI call) and rendering a template of ``templates/``. Actions are
POSTs with the form's csrf token, checked for the token's role on the server; the token's name
is their actor."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from cloud.orrery.api.auth import caller_for_token
from cloud.orrery.api.errors import FLEET_ERRORS, ApiError, fleet_error
from cloud.orrery.api.routes.rollouts import orchestrator
from cloud.orrery.console import plot, session
from cloud.orrery.console.session import COOKIE, Forbidden, LoginNeeded
from cloud.orrery.fleet import bundles, devices, logs, registry, replay, timeline
from cloud.orrery.fleet.rollout.members import members
from cloud.orrery.fleet.rollout.orchestrator import audit_log, rollout_ids
from cloud.orrery.ingest import queries

HERE = Path(__file__).parent
STATIC = HERE / "static"
PAGE_SIZE = 100
MEMBERS_SHOWN = 500  # a rollout page's devices; `orrery rollout devices` lists them all
ROLLOUT_ACTIONS = ("start", "pause", "resume", "cancel", "retry", "rollback")
DONE = {
    "created": "Rollout created.",
    "start": "Rollout started.",
    "pause": "Rollout paused.",
    "resume": "Rollout resumed.",
    "cancel": "Rollout canceled.",
    "retry": "Failed devices queued again.",
    "rollback": "Rollback rollouts created.",
}
# what a browser may load on a console page: this server's files only
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, sort_keys=True)

# a registry reference, NAME or NAME@VERSION (workflows and bundles)
RefQuery = Annotated[str, Query(min_length=1, max_length=140)]
router = APIRouter(prefix=session.PATH, include_in_schema=False)


def render(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    """``template`` with ``ctx``, the caller and the form token, as a page."""
    html = env.get_template(template).render(
        caller=getattr(request.state, "caller", None),
        csrf=getattr(request.state, "csrf", ""),
        path=request.url.path,
        **ctx,
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """A page that says what was wrong, in one line."""
    return render(request, "error.html", status=status, status_code=status, message=message)


def page(fn: Callable[..., Response]) -> Callable[..., Response]:
    """A page function whose fleet-layer refusals become an error page (404 for a thing that
    does not exist, else 400)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Response:
        try:
            return fn(*args, **kw)
        except FLEET_ERRORS as exc:
            e = fleet_error(exc)
            return error_page(kw["request"], e.status, e.message)
        except ApiError as exc:
            return error_page(kw["request"], exc.status, exc.message)

    return wrapper


def install(app: FastAPI) -> None:
    """The console's answers to a missing login and a refused action."""

    @app.exception_handler(LoginNeeded)
    async def _login(request: Request, exc: LoginNeeded) -> Response:
        if request.url.path.endswith(".json"):
            return JSONResponse({"error": "log in again"}, status_code=401)
        target = request.url.path if request.method == "GET" else f"{session.PATH}/fleet"
        return RedirectResponse(f"{session.PATH}/login?next={quote(target)}", status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return error_page(request, 403, str(exc))


async def form(request: Request) -> dict[str, str]:
    """A POSTed form (``application/x-www-form-urlencoded``): each field's first value.
    Forbidden when the browser says it comes from another site (``Origin``): a login or
    logout forged by another page is refused too, though it carries no form token."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise Forbidden(f"a form sent from {origin}, not from this console: refused")
    body = (await request.body())[:64_000].decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


FormDep = Annotated[dict[str, str], Depends(form)]
Viewer = Depends(session.caller)


def _conn(request: Request):
    return request.app.state.engine.connect()


def _local(target: str | None) -> str:
    """``target`` if it is a console path (never another site), else the fleet page."""
    if target and target.startswith(session.PATH + "/") and not urlsplit(target).netloc:
        if not target.startswith("//"):
            return target
    return f"{session.PATH}/fleet"


# --- log in and out -----------------------------------------------------------------------------


@router.get("")
def root() -> RedirectResponse:
    """The console's front page is the fleet overview."""
    return RedirectResponse(f"{session.PATH}/fleet", status_code=303)


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    """The login form: a token of ``orrery tokens create``."""
    return render(request, "login.html", next=_local(next), error=None)


@router.post("/login")
async def login(request: Request, data: FormDep) -> Response:
    """Check the token; keep it in an HttpOnly, SameSite=Strict cookie and go on."""
    token = data.get("token", "").strip()
    who = (
        await run_in_threadpool(caller_for_token, request.app.state.engine, token)
        if token
        else None
    )
    if who is None:
        return render(request, "login.html", status=401, next=_local(data.get("next")),
                      error="unknown or revoked token")  # fmt: skip
    r = RedirectResponse(_local(data.get("next")), status_code=303)
    r.set_cookie(COOKIE, token, httponly=True, samesite="strict", path=session.PATH,
                 secure=request.url.scheme == "https")  # fmt: skip
    return r


@router.post("/logout")
def logout(request: Request, _form: FormDep) -> Response:
    """Forget the token (the cookie); ``_form`` refuses a logout from another site."""
    r = RedirectResponse(f"{session.PATH}/login", status_code=303)
    r.delete_cookie(COOKIE, path=session.PATH)
    return r


# --- the fleet and its devices ------------------------------------------------------------------


@router.get("/fleet", dependencies=[Viewer])
@page
def fleet_page(
    request: Request,
    tag: Annotated[list[str] | None, Query()] = None,
    profile: Annotated[str | None, Query(max_length=64)] = None,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> Response:
    """The fleet at a glance: online/offline, versions running, backlog, loss and pending
    gaps, alerts; the devices (filtered by tag and profile), the newest alerts and rollouts."""
    tags = [t for t in (tag or []) if t.strip()]
    pairs = devices.parse_tags(tags)
    if any(not v for _, v in pairs):
        raise devices.DeviceError("tag: expected KEY=VALUE with a value")
    flt = devices.Filter(profile=profile or None, tags=tuple(pairs))
    with _conn(request) as conn:
        summary = devices.fleet_summary(conn, flt)
        every = devices.fleet_summary(conn) if (tags or profile) else summary
        rows = devices.device_rows(conn, flt=flt, limit=PAGE_SIZE, offset=offset)
        total = devices.count_devices(conn, flt)
        alerts, n_alerts = queries.alerts(conn, None, 10, 0)
        o = orchestrator(request.app.state.engine, request.state.caller)
        recent = [o.summary(conn, rid) for rid in rollout_ids(conn)[:5]]
    return render(request, "fleet.html", summary=summary, profiles=sorted(every["profiles"]),
                  rows=rows, total=total, offset=offset, page_size=PAGE_SIZE, tag=" ".join(tags),
                  tags=tags, profile=profile or "", alerts=alerts, n_alerts=n_alerts,
                  rollouts=recent)  # fmt: skip


@router.get("/devices/{name}", dependencies=[Viewer])
@page
def device_page(request: Request, name: str) -> Response:
    """One device: versions, tags, workflow state, clock offset, a chart of its readings per
    channel (scaled, named), its timeline, its log lines (``devices logs``), gaps and losses,
    and the rollouts it was in."""
    with _conn(request) as conn:
        info = devices.device_detail(conn, name)
        if info is None:
            return error_page(request, 404, f"unknown device {name!r}")
        did = devices.device_id(conn, name)
        assert did is not None
        charts = plot.charts(queries.export_rows(conn, did, profile=info["profile"]))
        entries = [e.as_dict() for e in timeline.timeline(conn, name, None, 200)]
        lines = [x.as_dict() for x in logs.lines(conn, did, None, 200)]
        losses = queries.gaps_and_losses(conn, did)
    return render(request, "device.html", d=info, charts=charts, entries=entries[::-1],
                  lines=lines[::-1], losses=losses)  # fmt: skip


# --- rollouts -------------------------------------------------------------------------------------


def _rollout_view(request: Request, rid: int) -> dict:
    o = orchestrator(request.app.state.engine, request.state.caller)
    with _conn(request) as conn:
        summary = o.summary(conn, rid)
        rows, total = members(conn, rid, limit=MEMBERS_SHOWN)
        return {"summary": summary, "detail": o.detail(conn, rid), "members": rows,
                "members_total": total}  # fmt: skip


def _rollout_ctx(view: dict) -> dict:
    return {"s": view["summary"], "d": view["detail"], "members": view["members"],
            "members_total": view["members_total"]}  # fmt: skip


@router.get("/rollouts", dependencies=[Viewer])
@page
def rollouts_page(request: Request) -> Response:
    """Every rollout with its progress, and (for operators) the form that plans a new one."""
    o = orchestrator(request.app.state.engine, request.state.caller)
    with _conn(request) as conn:
        rows = [o.summary(conn, rid) for rid in rollout_ids(conn)[:200]]
        workflows = registry.versions(conn)
        apps = bundles.versions(conn)
    return render(request, "rollouts.html", rows=rows, workflows=workflows, bundles=apps,
                  error=None, values={})  # fmt: skip


@router.post("/rollouts")
@page
def create_rollout(request: Request, data: FormDep) -> Response:
    """Plan a rollout of a workflow version or (``bundle:NAME@VERSION``) an app bundle from
    the form, and start it when asked: ``orrery rollout create``."""
    who = session.check_action(request, data)
    o = orchestrator(request.app.state.engine, who)
    try:
        min_devices = int(data.get("min_devices") or 20)
    except ValueError:
        min_devices = -1
    try:
        if min_devices < 1:
            raise ValueError(f"min devices: {data.get('min_devices')!r} is not a whole number >= 1")
        subject = data.get("workflow", "")
        bundle = subject.removeprefix("bundle:") if subject.startswith("bundle:") else None
        p = o.create(
            None if bundle else subject, data.get("target", "") or "all",
            data.get("waves") or "5,10%,50%,100%", data.get("success") or "95%",
            data.get("max_failures") or "2%", min_devices, data.get("soak") or "10m",
            data.get("timeout") or "24h", data.get("rate") or "100/min",
            data.get("health") or "60s", bundle=bundle,
        )  # fmt: skip
        assert p.rollout_id is not None
        if data.get("start"):
            o.start(p.rollout_id)
    except (*FLEET_ERRORS, ValueError) as exc:
        with _conn(request) as conn:
            rows = [o.summary(conn, rid) for rid in rollout_ids(conn)[:200]]
            workflows = registry.versions(conn)
            apps = bundles.versions(conn)
        return render(request, "rollouts.html", status=400, rows=rows, workflows=workflows,
                      bundles=apps, error=fleet_error(exc).message, values=data)  # fmt: skip
    done = "start" if data.get("start") else "created"
    return RedirectResponse(f"{session.PATH}/rollouts/{p.rollout_id}?done={done}", 303)


@router.get("/rollouts/{rid}", dependencies=[Viewer])
@page
def rollout_page(request: Request, rid: int, done: str | None = None) -> Response:
    """A rollout: waves with live progress, the soak countdown, the health gate's evidence
    (upgraded vs control per metric), each device's state and reason, the audit log, and the
    actions (for operators)."""
    view = _rollout_view(request, rid)
    with _conn(request) as conn:
        log = audit_log(conn, rid) or []
    return render(request, "rollout.html", **_rollout_ctx(view), log=log[-100:],
                  done=DONE.get(done or ""), error=None)  # fmt: skip


@router.get("/rollouts/{rid}/status.json", dependencies=[Viewer])
def rollout_status(request: Request, rid: int) -> Response:
    """What the rollout page's script polls: the rollout's summary and detail."""
    try:
        return JSONResponse(_rollout_view(request, rid), headers={"Cache-Control": "no-store"})
    except FLEET_ERRORS as exc:
        e = fleet_error(exc)
        return JSONResponse({"error": e.message}, status_code=e.status)


@router.post("/rollouts/{rid}/{action}")
@page
def rollout_action(request: Request, rid: int, action: str, data: FormDep) -> Response:
    """Start, pause, resume, cancel, retry the failed devices of, or roll back a rollout:
    the orchestrator's own actions, the token's name as the actor."""
    who = session.check_action(request, data)
    if action not in ROLLOUT_ACTIONS:
        return error_page(request, 404, f"no rollout action {action!r}")
    o = orchestrator(request.app.state.engine, who, need_secret=action == "rollback")
    try:
        with _conn(request) as conn:
            o.summary(conn, rid)  # an unknown rollout: 404
        if action == "start":
            o.start(rid)
        elif action == "pause":
            o.pause(rid)
        elif action == "resume":
            o.resume(rid)
        elif action == "cancel":
            o.cancel(rid, bool(data.get("force")))
        elif action == "retry":
            o.retry_failed(rid)
        else:
            o.rollback(rid)
    except FLEET_ERRORS as exc:
        e = fleet_error(exc, 409)
        if e.status == 404:
            return error_page(request, 404, e.message)
        view = _rollout_view(request, rid)
        with _conn(request) as conn:
            log = audit_log(conn, rid) or []
        return render(request, "rollout.html", status=409, **_rollout_ctx(view),
                      log=log[-100:], done=None, error=e.message)  # fmt: skip
    return RedirectResponse(f"{session.PATH}/rollouts/{rid}?done={action}", status_code=303)


# --- workflows and bundles --------------------------------------------------------------------


@router.get("/workflows", dependencies=[Viewer])
@page
def workflows_page(request: Request) -> Response:
    """Every workflow version and how many devices run it; forms to diff two versions and to
    simulate one on a device."""
    with _conn(request) as conn:
        rows = registry.versions(conn)
        names = [r["device"] for r in devices.device_rows(conn, limit=500)]
    return render(request, "workflows.html", rows=rows, devices=names)


@router.get("/workflows/diff", dependencies=[Viewer])
@page
def workflow_diff_page(
    request: Request,
    a: RefQuery,
    b: RefQuery,
) -> Response:
    """What changed from version ``a`` to ``b``: states, transitions, parameters."""
    with _conn(request) as conn:
        ra, rb = registry.get(conn, a), registry.get(conn, b)
        d = registry.diff(registry.definition(ra), registry.definition(rb))
    return render(request, "workflow_diff.html", a=f"{ra.name}@{ra.version}",
                  b=f"{rb.name}@{rb.version}", diff=d)  # fmt: skip


@router.get("/workflows/simulate", dependencies=[Viewer])
@page
def simulate_page(
    request: Request,
    ref: RefQuery,
    device: Annotated[str, Query(min_length=1, max_length=64)],
) -> Response:
    """A version replayed on a device's stored readings, beside the running version and the
    board's own events: a preview that changes nothing."""
    with _conn(request) as conn:
        sim = replay.simulate(conn, ref, device)
    return render(request, "simulate.html", ref=ref, sim=sim)


@router.get("/workflows/{ref}", dependencies=[Viewer])
@page
def workflow_page(request: Request, ref: str) -> Response:
    """A workflow version: its definition and hash."""
    with _conn(request) as conn:
        row = registry.get(conn, ref)
        defn = registry.definition(row)
    return render(request, "workflow.html", row=row, definition=defn)


@router.get("/bundles", dependencies=[Viewer])
@page
def bundles_page(request: Request) -> Response:
    """Every app bundle version and how many devices run it; a form to diff two."""
    with _conn(request) as conn:
        rows = bundles.versions(conn)
    return render(request, "bundles.html", rows=rows)


@router.get("/bundles/diff", dependencies=[Viewer])
@page
def bundle_diff_page(
    request: Request,
    a: RefQuery,
    b: RefQuery,
) -> Response:
    """What changed from bundle version ``a`` to ``b``: files, profile, .mpy version, sources."""
    with _conn(request) as conn:
        ra = bundles.get(conn, a, with_data=False)
        rb = bundles.get(conn, b, with_data=False)
        d = bundles.diff(bundles.manifest(ra), bundles.manifest(rb))
    return render(request, "bundle_diff.html", diff=d)


# --- losses and dead letters ----------------------------------------------------------------


@router.get("/losses", dependencies=[Viewer])
@page
def losses_page(request: Request, offset: Annotated[int, Query(ge=0, le=2**31)] = 0) -> Response:
    """The loss ledger (open gaps and permanent losses, with reasons) and the dead letters."""
    with _conn(request) as conn:
        ledger = queries.gaps_and_losses(conn)
        dead, n_dead = queries.dead_letters(conn, None, None, PAGE_SIZE, offset)
    return render(request, "losses.html", ledger=ledger[:1000], n_ledger=len(ledger), dead=dead,
                  n_dead=n_dead, offset=offset, page_size=PAGE_SIZE)  # fmt: skip
