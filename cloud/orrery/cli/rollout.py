"""``orrery rollout create|preview|start|pause|resume|cancel|retry|rollback|list|status|log``:
staged fleet rollouts of workflow versions, and their previews (issue 18)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from cloud.orrery.cli.common import (
    DbOpt,
    JsonOpt,
    SinceOpt,
    console,
    err_console,
    fail,
    open_db,
    os_user,
)
from cloud.orrery.clock import iso, now_ms
from cloud.orrery.fleet import keys, timeline
from cloud.orrery.fleet.preview import stored
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
# the exit code of a preview whose gate broke or that strands devices (create still created)
PREVIEW_REFUSED = 3

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
    preview: Annotated[
        bool,
        typer.Option(
            help="Preview it: replay each target's readings through the version it runs and "
            "this one, and print what changes (stored with the rollout; with --dry-run only "
            "printed)."
        ),
    ] = False,
    preview_since: Annotated[
        str,
        typer.Option(help="--preview: from when (a duration back from now, ISO 8601 or unix s)."),
    ] = stored.DEFAULT_SINCE,
    preview_gate: Annotated[
        str | None,
        typer.Option(
            help='Bounds its preview must keep to before it may start, e.g. "events.fault_raised'
            '<=+10%,outputs.fan.on_s<=+20%" (PATH OP LIMIT joined by ",": see the README).'
        ),
    ] = None,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan a rollout of a workflow or an app bundle (a draft; `orrery rollout start ID` runs
    it, within its schedule). With --preview, preview it too: a broken --preview-gate or
    stranded devices exit 3 (the draft is created all the same; `start` refuses a broken
    gate)."""
    o = _orch(db_url)
    pwin = _window(preview_since, None, "--preview-since") if preview else None
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
            preview_gate,
        )
    except ROLLOUT_ERRORS as exc:
        fail(str(exc))
    rep = None
    if pwin is not None:
        try:
            with _progress() as step:
                if plan.rollout_id is None:
                    rep = stored.preview_plan(o.engine, plan, *pwin, gate=preview_gate,
                                              progress=step)  # fmt: skip
                else:
                    rep = stored.preview(o.engine, plan.rollout_id, *pwin, progress=step,
                                         actor=o.actor)  # fmt: skip
        except ROLLOUT_ERRORS as exc:
            created = f"rollout {plan.rollout_id} was created (a draft), but " if plan.rollout_id else ""
            fail(f"{created}its preview failed: {exc}")
    if as_json:
        print(json.dumps({**plan.__dict__, **({"preview": rep} if rep is not None else {})}))
        _preview_exit(rep)
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
    if rep is not None:
        _show_preview(rep, TOP)
    if plan.rollout_id is None:
        console.print("[yellow]dry run: nothing was created[/]")
    elif rep is not None and stored.passed(rep) is False:
        console.print(
            f"created rollout [bold]{plan.rollout_id}[/] of {plan.workflow} (draft): its preview "
            f"broke its gate, so `orrery rollout start {plan.rollout_id}` refuses it"
        )
    else:
        console.print(
            f"created rollout [bold]{plan.rollout_id}[/] of {'bundle ' if plan.kind == 'bundle' else ''}"
            f"{plan.workflow} (draft): `orrery rollout start {plan.rollout_id}`"
            + (f"; its preview gate {escape(preview_gate)!r} is checked then" if preview_gate and rep is None else "")
        )
    _preview_exit(rep)


TOP = 10  # devices the preview's table shows unless told (the report's own top holds 10)


def _window(since: str, until: str | None, name: str = "--since") -> tuple[int, int]:
    """``--since``/``--until`` as unix ms (until: now when not given); fails on bad text."""
    now = now_ms()
    try:
        until_ms = now if until is None else timeline.parse_since(until, now, "--until")
        return timeline.parse_since(since, now, name), until_ms
    except timeline.TimelineError as exc:
        fail(str(exc))


class _progress:
    """A progress bar on stderr while a preview replays (only on a terminal); ``step`` is the
    engine's ``progress(done, total)``."""

    def __init__(self) -> None:
        self.bar = None
        if err_console.is_terminal:
            self.bar = Progress(TextColumn("replaying"), BarColumn(), TextColumn("{task.completed}/{task.total} devices"),
                                console=err_console, transient=True)  # fmt: skip
            self.task = self.bar.add_task("", total=None)

    def __enter__(self):
        if self.bar is None:
            return None
        self.bar.start()
        return self.step

    def step(self, done: int, total: int) -> None:
        assert self.bar is not None
        self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _refused(rep: dict | None) -> bool:
    """Whether a preview says no: its gate broke, or it strands devices."""
    return rep is not None and (stored.passed(rep) is False or bool(rep.get("stranded")))


def _preview_exit(rep: dict | None) -> None:
    if _refused(rep):
        raise typer.Exit(PREVIEW_REFUSED)


def _delta(a: float | int | None, b: float | int | None) -> str:
    fa = "-" if a is None else f"{a:g}"
    return fa if a == b else f"{fa}→{b:g}" if b is not None else f"{fa}→-"


def _divergence(d: dict) -> str:
    # where the two versions part first: when (the board's clock), the input, what each did
    v = d.get("divergence")
    if not v:
        return ""
    t = v.get("t_ms")
    at = (iso(t) or "")[5:19].replace("T", " ") if t is not None else f"boot {v['boot']} +{v['up_ms'] / 1000:g}s"
    inp = f" at {v['input']['name']}={v['input']['value']}" if v.get("input") else ""
    if v.get("inputs"):
        inp = " (timer or hold; " + " ".join(f"{k}={x}" for k, x in v["inputs"].items()) + ")"
    sides = [f"{k}: {x['what']}" for k in ("running", "new") if (x := v.get(k))]
    return f"{at}{inp}: " + "; ".join(sides)


def _show_preview(rep: dict, top: int) -> None:
    """The ten-second summary, then the stranded devices (red) and the most changed ones:
    before→after and where the two versions part first."""
    for line in rep.get("summary") or []:
        console.print(escape(line), soft_wrap=True)
    t = Table("device", "transitions", "events", "alerts", "final state", "first divergence",
              title=f"most changed devices ({rep.get('to')})")  # fmt: skip
    for s in rep.get("stranded") or []:
        why = f"stranded: {s['why']}"
        t.add_row(*(f"[red]{escape(x)}[/]" for x in (s["device"], "-", "-", "-", s["state"], why)))
    by_name = {d["device"]: d for d in rep.get("per_device") or []}
    order = list(rep.get("top") or [])
    order += [d["device"] for d in sorted(by_name.values(), key=lambda d: (-d["score"], d["device"]))
              if d["score"] > 0 and d["device"] not in order]  # fmt: skip
    for name in order[:top]:
        d = by_name.get(name)
        if d is None:
            continue
        run, new = d.get("running") or {}, d["new"]
        t.add_row(escape(name), _delta(run.get("transitions"), new["transitions"]),
                  _delta(run.get("events_total"), new["events_total"]),
                  _delta(run.get("alerts"), new["alerts"]),
                  escape(_delta_text(run.get("final_state"), new["final_state"])),
                  escape(_divergence(d)))  # fmt: skip
    if t.row_count:
        console.print(t)
    if rep.get("verdict"):
        style = "red" if _refused(rep) else "green" if stored.passed(rep) else ""
        console.print(f"[{style}]{escape(rep['verdict'])}[/]" if style else escape(rep["verdict"]),
                      soft_wrap=True)  # fmt: skip


def _delta_text(a: str | None, b: str | None) -> str:
    return (a or "-") if a == b else f"{a or '-'}→{b or '-'}"


@app.command("preview")
def rollout_preview(
    rollout_id: int,
    since: SinceOpt = stored.DEFAULT_SINCE,
    until: Annotated[
        str | None,
        typer.Option(help="Up to: like --since (default: now)."),
    ] = None,
    rollback: Annotated[
        bool,
        typer.Option(
            help="Preview its rollback instead: the devices on its version back to the version "
            "each ran before (not stored)."
        ),
    ] = False,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Processes that replay (default: one per CPU).")
    ] = None,
    alert: Annotated[
        list[str] | None,
        typer.Option(
            help="An alert rule CHANNEL>LEVEL or CHANNEL<LEVEL (as `orrery serve --alert`) "
            "counted on the replayed readings; repeat for more."
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Show this many of the most changed devices.")] = TOP,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay each target device's stored readings over a window through the version it runs
    and the rollout's, each from its own state at the window's start, and say what would
    change: transitions, events, outputs, alerts, time per state, where the two part first,
    and the devices whose current state has no place in the new version (stranded). Stored
    with the rollout and judged against its --preview-gate (not with --rollback); a broken
    gate or stranded devices exit 3."""
    from cloud.orrery.ingest.alerts import AlertRule

    window = _window(since or stored.DEFAULT_SINCE, until)
    rules = []
    for a in alert or []:
        try:
            rules.append(AlertRule.parse(a))
        except ValueError as exc:
            fail(f"--alert: {exc}")
    engine = open_db(db_url)
    try:
        with _progress() as step:
            rep = stored.preview(engine, rollout_id, *window, rollback=rollback, workers=workers,
                                 alert_rules=rules, progress=step, actor=os_user())  # fmt: skip
    except ROLLOUT_ERRORS as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(rep))
    else:
        _show_preview(rep, top)
        console.print(
            "[yellow]a rollback's preview is not stored[/]" if rollback else
            f"stored with rollout {rollout_id}: `orrery rollout status {rollout_id}` shows it"
        )  # fmt: skip
    _preview_exit(rep)


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
    lines += _preview_lines(s)
    if not lines:
        return t
    g = Table.grid()
    g.add_row(t)
    for line in lines:
        g.add_row(line)
    return g


def _preview_lines(s: dict) -> list[str]:
    # the gate and the stored preview's verdict (and its summary) in `rollout status`
    out = []
    if s.get("preview_gate"):
        out.append(f"preview gate: {escape(s['preview_gate'])}")
    p = s.get("preview")
    if p is None:
        if s.get("preview_gate"):
            out.append(f"no preview yet: `orrery rollout preview {s['id']}` (start runs one)")
        return out
    style = {True: "green", False: "red"}.get(p["passed"])
    verdict = escape(p["verdict"])
    out.append(f"preview of {p['at']}: " + (f"[{style}]{verdict}[/]" if style else verdict))
    out += [f"  {escape(x)}" for x in p["summary"]]
    return out


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
