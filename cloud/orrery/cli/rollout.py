"""``orrery rollout create|start|pause|resume|cancel|retry|rollback|list|status|log``: staged
fleet rollouts of workflow versions."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from cloud.orrery.cli.common import DbOpt, JsonOpt, console, fail, open_db, os_user
from cloud.orrery.clock import now_ms
from cloud.orrery.fleet import keys
from cloud.orrery.fleet.registry import RegistryError
from cloud.orrery.fleet.rollout import gate
from cloud.orrery.fleet.rollout.orchestrator import (
    ACTIVE_ROLLOUT,
    Orchestrator,
    audit_log,
    rollout_ids,
)
from cloud.orrery.fleet.rollout.plan import RolloutError

ROLLOUT_ERRORS = (RolloutError, RegistryError)

app = typer.Typer(
    help="Staged fleet rollouts of workflow versions and app bundles.", no_args_is_help=True
)


def _orch(db_url: str | None, need_secret: bool = False) -> Orchestrator:
    engine = open_db(db_url)
    secret = None
    try:
        secret = keys.load_secret()
    except keys.SecretError as exc:
        if need_secret:
            fail(str(exc))
    return Orchestrator(engine, secret, owner="cli", actor=os_user())


@app.command("create")
def rollout_create(
    target: Annotated[
        str,
        typer.Option(
            help="all, or FIELD=VALUE terms joined by ',' (fleet, profile, fw, wf, device, tag.KEY)."
        ),
    ],
    waves: Annotated[
        str, typer.Option(help="Cumulative wave sizes: counts or percentages, ending at 100%.")
    ] = "5,10%,50%,100%",
    success: Annotated[
        str, typer.Option(help="Share of a wave's online devices that must succeed.")
    ] = "95%",
    max_failures: Annotated[
        str, typer.Option(help="Auto-pause above this failure share ...")
    ] = "2%",
    min_devices: Annotated[
        int, typer.Option(help="... once this many devices have a result.")
    ] = 20,
    soak: Annotated[
        str, typer.Option(help="Soak after a wave meets its threshold (health gate).")
    ] = "10m",
    timeout: Annotated[
        str, typer.Option(help="An online device without a result after this is timed-out.")
    ] = "24h",
    rate: Annotated[str, typer.Option(help="Command rate limit, e.g. 100/min.")] = "100/min",
    health: Annotated[
        str, typer.Option(help="Health window each board runs before it reports success.")
    ] = "60s",
    dry_run: Annotated[
        bool, typer.Option(help="Show the waves' members and counts; change nothing.")
    ] = False,
    start_at: Annotated[
        str | None,
        typer.Option(help="Send nothing before this time: ISO 8601 with Z or an offset."),
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(
            help='Send only inside these windows: "Mon-Fri 01:00-05:00", "Sat,Sun 00:00-24:00", '
            '"Mon-Fri 22:00-02:00" (to the next day); several joined by ";".'
        ),
    ] = None,
    window_tz: Annotated[
        str | None,
        typer.Option(
            help="The window's time zone: UTC (default), a zone like Europe/Berlin, or tag.KEY "
            "(each device's tag KEY; UTC for a device without a valid one)."
        ),
    ] = None,
    workflow: Annotated[
        str | None, typer.Option(help="The workflow to roll out: NAME@VERSION from the registry.")
    ] = None,
    bundle: Annotated[
        str | None,
        typer.Option(
            help="Or the app bundle (firmware OTA) to roll out: NAME@VERSION from the registry."
        ),
    ] = None,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan a rollout of a workflow or an app bundle (a draft; `orrery rollout start ID` runs
    it, within its schedule)."""
    o = _orch(db_url)
    try:
        plan = o.create(
            workflow,
            target,
            waves,
            success,
            max_failures,
            min_devices,
            soak,
            timeout,
            rate,
            health,
            dry_run,
            start_at,
            window,
            window_tz,
            bundle,
        )
    except ROLLOUT_ERRORS as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(plan.__dict__))
        return
    t = Table("wave", "size", "devices", "offline now", "members")
    for w in plan.waves:
        names = ", ".join(w["devices"][:6]) + (f" … (+{w['count'] - 6})" if w["count"] > 6 else "")
        t.add_row(str(w["wave"]), w["size"], str(w["count"]), str(w["offline"]), names)
    console.print(t)
    for why, names in plan.excluded.items():
        console.print(
            f"excluded ({why}): {len(names)}: {', '.join(names[:8])}{' …' if len(names) > 8 else ''}"
        )
    if plan.schedule:
        sch = plan.schedule
        console.print(
            "schedule: "
            + "; ".join(
                ([f"starts at {sch['start_at']}"] if sch["start_at"] else [])
                + ([f"window {sch['window']} ({sch['window_tz']})"] if sch["window"] else [])
            )
        )
    if plan.without_zone:
        n = plan.without_zone
        console.print(
            f"[yellow]{len(n)} device(s) without a valid {plan.schedule['window_tz']} tag follow "
            f"the window in UTC[/]: {', '.join(n[:8])}{' …' if len(n) > 8 else ''}"
        )
    if plan.rollout_id is None:
        console.print("[yellow]dry run: nothing was created[/]")
    else:
        console.print(
            f"created rollout [bold]{plan.rollout_id}[/] of {'bundle ' if plan.kind == 'bundle' else ''}"
            f"{plan.workflow} (draft): `orrery rollout start {plan.rollout_id}`"
        )


def _act(fn_name: str, rid: int, db_url: str | None, *args) -> object:
    o = _orch(db_url)
    try:
        return getattr(o, fn_name)(rid, *args)
    except ROLLOUT_ERRORS as exc:
        fail(str(exc))


@app.command("start")
def rollout_start(rollout_id: int, db_url: DbOpt = None) -> None:
    """Start a draft rollout (`orrery serve` drives it)."""
    _act("start", rollout_id, db_url)
    o = _orch(db_url)
    with o.engine.connect() as conn:
        held = _waiting({**o.summary(conn, rollout_id), "state": "running"})
    console.print(f"rollout {rollout_id} running" + (f"; {held}" if held else ""))


@app.command("pause")
def rollout_pause(rollout_id: int, db_url: DbOpt = None) -> None:
    """Pause: nothing new is sent; devices in flight still report. A paused rollout stays
    paused (not an error)."""
    done = _act("pause", rollout_id, db_url)
    console.print(f"rollout {rollout_id} " + ("paused" if done else "is already paused"))


@app.command("resume")
def rollout_resume(rollout_id: int, db_url: DbOpt = None) -> None:
    """Resume a paused rollout. A running rollout stays running (not an error)."""
    done = _act("resume", rollout_id, db_url)
    console.print(f"rollout {rollout_id} " + ("running" if done else "is already running"))


@app.command("cancel")
def rollout_cancel(
    rollout_id: int,
    force: Annotated[bool, typer.Option(help="Cancel in-flight devices too.")] = False,
    db_url: DbOpt = None,
) -> None:
    """Cancel: queued commands at once; in-flight devices finish and report unless --force."""
    res = _act("cancel", rollout_id, db_url, force)
    console.print(f"rollout {rollout_id} canceled; {res['canceled_devices']} device(s) canceled")


@app.command("retry")
def rollout_retry(
    rollout_id: int,
    failed: Annotated[
        bool, typer.Option("--failed", help="Re-queue the failed, rejected and timed-out devices.")
    ] = False,
    db_url: DbOpt = None,
) -> None:
    """Retry just the failures."""
    if not failed:
        fail("say what to retry: --failed")
    n = _act("retry_failed", rollout_id, db_url)
    console.print(f"rollout {rollout_id}: {n} device(s) re-queued")


@app.command("rollback")
def rollout_rollback(
    rollout_id: int,
    dry_run: Annotated[
        bool, typer.Option(help="Show which devices go back to which version; change nothing.")
    ] = False,
    db_url: DbOpt = None,
) -> None:
    """Cancel and put every device this rollout changed back on its previous version; refused,
    naming them, when a device's current state has no place in its previous version."""
    o = _orch(db_url, need_secret=not dry_run)
    try:
        if dry_run:
            groups = o.rollback_plan(rollout_id)
            for wf, ver, names in groups:
                more = f" … (+{len(names) - 8})" if len(names) > 8 else ""
                console.print(
                    f"{len(names)} device(s) would go back to {wf}@{ver}: {', '.join(names[:8])}{more}"
                )
            console.print(
                ("" if groups else "no device to roll back; ")
                + "[yellow]dry run: nothing was changed[/]"
            )
            return
        new = o.rollback(rollout_id)
    except ROLLOUT_ERRORS as exc:
        fail(str(exc))
    console.print(
        f"rollout {rollout_id} rolled back by rollout(s) {', '.join(map(str, new)) or '(none needed)'}"
        + (f": `orrery rollout status {new[0]}` shows how it ends" if new else "")
    )


@app.command("list")
def rollout_list(db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Every rollout, newest first."""
    o = _orch(db_url)
    with o.engine.connect() as conn:
        rows = [o.summary(conn, rid) for rid in rollout_ids(conn)]
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("id", "workflow", "state", "wave", "devices", "progress", "reason")
    for r in rows:
        t.add_row(str(r["id"]), r["workflow"], r["state"], f"{r['wave']}/{len(r['waves'])}", str(r["devices"]),
                  r["converged_text"], r["reason"] or _waiting(r))  # fmt: skip
    console.print(t if rows else "no rollouts")


def _waiting(r: dict) -> str:
    # a running rollout held by its schedule says so in `list`
    s = r.get("schedule")
    if r["state"] != "running" or not s or s["open"]:
        return ""
    return f"waiting for its {'window' if s['started'] else 'start'}: opens {s['next_open']}"


def _status_view(s: dict) -> Table:
    t = Table(
        title=f"rollout {s['id']}: {'bundle ' if s.get('kind') == 'bundle' else ''}"
        f"{s['workflow']} — {s['state']}"
        + (f" ({s['reason']})" if s["reason"] else "")
    )
    t.add_column("wave")
    t.add_column("progress", min_width=30)
    t.add_column("states")
    for w in s["waves"]:
        done = w["states"].get("succeeded", 0)
        p = Progress(TextColumn("{task.percentage:>3.0f}%"), BarColumn(bar_width=24))
        p.add_task("", total=max(1, w["total"]), completed=done)
        t.add_row(
            f"{w['wave']} ({w['size']})",
            p,
            ", ".join(f"{k} {v}" for k, v in sorted(w["states"].items())),
        )
    t.caption = s["converged_text"]
    lines = _safe_lines(s)
    downloads = s.get("downloads") or []
    if downloads:
        shown = ", ".join(f"{d['device']} {d['progress']}" for d in downloads[:8])
        more = f" … (+{len(downloads) - 8})" if len(downloads) > 8 else ""
        lines.append(f"downloading ({len(downloads)}): {shown}{more}")
    if s.get("schedule"):
        lines += gate.status_lines(s["schedule"], now_ms())
    if not lines:
        return t
    g = Table.grid()
    g.add_row(t)
    for line in lines:
        g.add_row(line)
    return g


def _safe_lines(s: dict) -> list[str]:
    # members whose board waits for a safe state (the workflow's safe_states) before it installs
    n = s.get("waiting_safe", 0)
    if not n:
        return []
    shown = s["waiting_safe_devices"]
    lines = [f"{n} device(s) waiting for a safe state before they install:"]
    lines += [f"  {w['device']}: {w['detail']} (since {w['since']})" for w in shown]
    if n > len(shown):
        lines.append(f"  … and {n - len(shown)} more")
    return lines


@app.command("status")
def rollout_status(
    rollout_id: int,
    watch: Annotated[
        bool, typer.Option(help="Keep updating until it ends (Ctrl-C to stop).")
    ] = False,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Progress per wave, device states, and "converged X%, Y offline pending"."""
    o = _orch(db_url)

    def get() -> dict:
        with o.engine.connect() as conn:
            try:
                return o.summary(conn, rollout_id)
            except ROLLOUT_ERRORS as exc:
                fail(str(exc))

    s = get()
    if as_json:
        print(json.dumps(s))
        return
    if not watch:
        console.print(_status_view(s))
        return
    with Live(_status_view(s), console=console, refresh_per_second=2) as live:
        while s["state"] in ACTIVE_ROLLOUT:
            time.sleep(1)
            s = get()
            live.update(_status_view(s))


@app.command("log")
def rollout_log(rollout_id: int, db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """The audit log: every rollout and device state change, and who made it (the OS user of
    the command; blank: the orchestrator)."""
    with open_db(db_url).connect() as conn:
        rows = audit_log(conn, rollout_id)
    if rows is None:
        fail(f"no rollout {rollout_id} (see `orrery rollout list`)")
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("at", "device", "event", "detail", "by")
    for r in rows:
        t.add_row(r["at"], r["device"] or "", r["event"], r["detail"] or "", r["by"] or "")
    console.print(t if rows else f"no log for rollout {rollout_id}")


@app.command("devices")
def rollout_devices(
    rollout_id: int,
    state: Annotated[str | None, typer.Option(help="Only devices in this state.")] = None,
    wave: Annotated[int | None, typer.Option(min=1, help="Only this wave's devices.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The members one by one: wave, state and reason, attempts, the version each came from."""
    from cloud.orrery.fleet.rollout.members import members

    with open_db(db_url).connect() as conn:
        try:
            rows, total = members(conn, rollout_id, state, wave, limit)
        except ROLLOUT_ERRORS as exc:
            fail(str(exc))
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("device", "wave", "state", "reason", "attempts", "from", "updated")
    for r in rows:
        t.add_row(r["device"], str(r["wave"]), r["state"], r["reason"] or "", str(r["attempts"]),
                  r["from"] or "-", r["updated"])  # fmt: skip
    console.print(t if rows else "no such members")
    if total > len(rows):
        console.print(f"{len(rows)} of {total} (--limit)")
