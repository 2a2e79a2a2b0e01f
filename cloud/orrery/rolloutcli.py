"""``orrery workflow push|list|show|diff|simulate``, ``orrery rollout …`` and
``orrery devices tag``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from cloud.orrery.clock import iso, now_ms
from cloud.orrery.db.tables import DEVICES, EVENTS, READINGS, ROLLOUT_LOG, ROLLOUTS, TAGS, WORKFLOWS
from cloud.orrery.fleetcli import DbOpt, JsonOpt, console, err, fail, open_db, parse_time

rollout_app = typer.Typer(help="Staged fleet rollouts of workflow versions.", no_args_is_help=True)


def _orch(db_url: str | None, need_secret: bool = False):
    from cloud.orrery.fleet import keys
    from cloud.orrery.fleet.rollout.orchestrator import Orchestrator

    engine = open_db(db_url)
    secret = None
    try:
        secret = keys.load_secret()
    except keys.SecretError as exc:
        if need_secret:
            fail(str(exc))
    return Orchestrator(engine, secret, owner="cli")


def _rollout_errors():
    from cloud.orrery.fleet.registry import RegistryError
    from cloud.orrery.fleet.rollout.plan import RolloutError

    return (RolloutError, RegistryError)


# --- workflow registry -----------------------------------------------------------------------


def workflow_push(
    file: Annotated[Path, typer.Argument(help="Workflow definition (JSON).")],
    board: Annotated[
        str | None, typer.Option(help="Board profile name or path to validate against.")
    ] = None,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Store an immutable version: identical content is a no-op, other content under an
    existing version is refused."""
    from cloud.orrery.cli import load_profile
    from cloud.orrery.fleet import registry
    from shared import workflow

    if not file.exists():
        fail(f"{file}: no such file")
    engine = open_db(db_url)
    try:
        with engine.begin() as conn:
            res = registry.push(conn, file.read_bytes(), load_profile(board), now_ms())
    except workflow.WorkflowError as exc:
        for path, reason in exc.errors:
            err.print(f"[red]{file}[/]: [bold]{path}[/]: {reason}")
        raise typer.Exit(1) from None
    except registry.RegistryError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(res.__dict__))
    elif res.created:
        console.print(f"pushed [bold]{res.name}@{res.version}[/] ({res.hash[:12]}…)")
    else:
        console.print(
            f"{res.name}@{res.version} is already in the registry with this content: nothing to do"
        )


def workflow_list(db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Every version in the registry, with how many devices run it."""
    W = WORKFLOWS
    with open_db(db_url).connect() as conn:
        running = {(n, v): c for n, v, c in conn.execute(
            sa.select(DEVICES.c.wf, DEVICES.c.wf_ver, sa.func.count()).group_by(DEVICES.c.wf, DEVICES.c.wf_ver))}  # fmt: skip
        rows = [
            {"name": r.name, "version": r.version, "hash": r.hash, "heap_bytes": r.heap_bytes,
             "created": iso(r.created_ms), "devices": running.get((r.name, r.version), 0)}
            for r in conn.execute(sa.select(W).order_by(W.c.name, W.c.version))
        ]  # fmt: skip
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("workflow", "hash", "heap", "created", "devices running it")
    for r in rows:
        t.add_row(
            f"{r['name']}@{r['version']}",
            r["hash"][:12],
            f"{r['heap_bytes']} B",
            r["created"],
            str(r["devices"]),
        )
    console.print(t if rows else "the registry is empty: `orrery workflow push FILE`")


def workflow_show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION.")], db_url: DbOpt = None
) -> None:
    """Print a version's definition (JSON) and its hash."""
    from cloud.orrery.fleet import registry

    with open_db(db_url).connect() as conn:
        try:
            row = registry.get(conn, ref)
        except registry.RegistryError as exc:
            fail(str(exc))
    print(json.dumps({"name": row.name, "version": row.version, "hash": row.hash, "heap_bytes": row.heap_bytes,
                      "definition": registry.definition(row)}, indent=2))  # fmt: skip


def workflow_diff(
    a: Annotated[str, typer.Argument(help="NAME@A")],
    b: Annotated[str, typer.Argument(help="NAME@B")],
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What changed between two versions: states, transitions, parameters."""
    from cloud.orrery.fleet import registry

    with open_db(db_url).connect() as conn:
        try:
            ra, rb = registry.get(conn, a), registry.get(conn, b)
        except registry.RegistryError as exc:
            fail(str(exc))
    d = registry.diff(registry.definition(ra), registry.definition(rb))
    if as_json:
        print(json.dumps(d))
        return
    console.print(f"[bold]{ra.name}@{ra.version}[/] → [bold]{rb.name}@{rb.version}[/]")
    for part, ch in d.items():
        for k, v in ch["added"].items():
            console.print(f"[green]+ {part[:-1]} {k}[/]: {json.dumps(v)}")
        for k, v in ch["removed"].items():
            console.print(f"[red]- {part[:-1]} {k}[/]: {json.dumps(v)}")
        for k, v in ch["changed"].items():
            console.print(
                f"[yellow]~ {part[:-1]} {k}[/]: {json.dumps(v['from'])} → {json.dumps(v['to'])}"
            )
    if not any(ch[x] for ch in d.values() for x in ch):
        console.print("no differences")


def workflow_simulate(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION to preview.")],
    device: Annotated[str, typer.Option(help="Replay this device's stored readings.")],
    since: Annotated[str | None, typer.Option(help="From (ISO 8601 or unix s).")] = None,
    until: Annotated[str | None, typer.Option(help="Until.")] = None,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay a device's stored readings through the shared executor: what this version would
    have done, side by side with what the running version did."""
    from cloud.orrery.cli import load_profile
    from cloud.orrery.fleet import registry, replay
    from firmware.profile import parse_profile

    lo, hi = parse_time(since, "--since"), parse_time(until, "--until")
    with open_db(db_url).connect() as conn:
        d = conn.execute(sa.select(DEVICES).where(DEVICES.c.name == device)).first()
        if d is None:
            fail(f"unknown device {device!r} (see `orrery devices list`)")
        try:
            new = registry.get(conn, ref)
            cur = registry.get(conn, f"{d.wf}@{d.wf_ver}") if d.wf else None
        except registry.RegistryError as exc:
            fail(str(exc))
        q = sa.select(
            READINGS.c.event_ms, READINGS.c.up_ms, READINGS.c.channel, READINGS.c.value
        ).where(READINGS.c.device_id == d.id)
        if lo is not None:
            q = q.where(READINGS.c.event_ms >= lo)
        if hi is not None:
            q = q.where(READINGS.c.event_ms < hi)
        rows = conn.execute(q.order_by(READINGS.c.seq)).all()
        E = EVENTS
        actual = [{"t": e.event_ms, "state": e.state, "event": e.event, "value": e.value}
                  for e in conn.execute(sa.select(E).where(E.c.device_id == d.id).order_by(E.c.boot, E.c.seq))]  # fmt: skip
    try:
        channel_names = [c[0] for c in parse_profile(load_profile(d.profile or "esp32-devkitc"))[0]]
    except ValueError as exc:
        fail(f"device {device}: board profile {d.profile!r}: {exc}")
    stream = [(r.up_ms if r.event_ms is None else r.event_ms, r.channel, r.value) for r in rows]
    same = cur is not None and replay.filters_of(cur.blob) == replay.filters_of(new.blob)
    preview = replay.as_dict(replay.replay(new.blob, stream, channel_names, same))
    running = (
        replay.as_dict(replay.replay(cur.blob, stream, channel_names, True)) if cur else None
    )
    result = {
        "device": device,
        "readings": len(stream),
        "preview": preview,
        "running": running,
        "board_events": actual,
    }
    if as_json:
        print(json.dumps(result))
        return
    console.print(f"replayed {len(stream)} reading(s) of {device}")
    t = Table(
        "", f"preview {preview['version']}", f"running {running['version'] if running else '-'}"
    )
    for key in ("transitions", "events", "outputs"):
        t.add_row(key, str(len(preview[key])), str(len(running[key])) if running else "-")
    t.add_row("final state", preview["final_state"], running["final_state"] if running else "-")
    t.add_row("board's own events", "", str(len(actual)))
    console.print(t)
    if preview["note"]:
        console.print(f"[yellow]note:[/] {preview['note']}")
    for tr in preview["transitions"][:20]:
        console.print(
            f"  {iso(tr['t']) if tr['t'] > 10**11 else tr['t']}: {tr['from']} → {tr['to']}"
        )


# --- devices tag -----------------------------------------------------------------------------


def devices_tag(
    name: Annotated[str, typer.Argument(help="Device id.")],
    tags: Annotated[list[str], typer.Argument(help="key=value to set, key= to remove.")],
    db_url: DbOpt = None,
) -> None:
    """Set or remove tags (rollout targets select on ``tag.KEY=VALUE``)."""
    import re

    T = TAGS
    parsed = []
    for t in tags:
        m = re.fullmatch(r"([A-Za-z0-9_.-]{1,64})=(.{0,128})", t)
        if not m:
            fail(
                f"tag {t!r}: expected key=value (key: 1..64 of [A-Za-z0-9_.-], value up to 128 chars)"
            )
        parsed.append((m.group(1), m.group(2)))
    with open_db(db_url).begin() as conn:
        did = conn.execute(sa.select(DEVICES.c.id).where(DEVICES.c.name == name)).scalar()
        if did is None:
            fail(f"unknown device {name!r} (see `orrery devices list`)")
        for k, v in parsed:
            conn.execute(sa.delete(T).where(T.c.device_id == did, T.c.key == k))
            if v:
                conn.execute(sa.insert(T), [{"device_id": did, "key": k, "value": v}])
        now = {
            k: v for k, v in conn.execute(sa.select(T.c.key, T.c.value).where(T.c.device_id == did))
        }
    console.print(
        f"{name}: " + (", ".join(f"{k}={v}" for k, v in sorted(now.items())) or "no tags")
    )


# --- rollouts --------------------------------------------------------------------------------


@rollout_app.command("create")
def rollout_create(
    workflow: Annotated[str, typer.Option(help="NAME@VERSION from the registry.")],
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
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan a rollout (a draft; `orrery rollout start ID` runs it)."""
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
        )
    except _rollout_errors() as exc:
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
    if plan.rollout_id is None:
        console.print("[yellow]dry run: nothing was created[/]")
    else:
        console.print(
            f"created rollout [bold]{plan.rollout_id}[/] of {plan.workflow} (draft): `orrery rollout start {plan.rollout_id}`"
        )


def _act(fn_name: str, rid: int, db_url: str | None, *args) -> object:
    o = _orch(db_url)
    try:
        return getattr(o, fn_name)(rid, *args)
    except _rollout_errors() as exc:
        fail(str(exc))


@rollout_app.command("start")
def rollout_start(rollout_id: int, db_url: DbOpt = None) -> None:
    """Start a draft rollout (`orrery serve` drives it)."""
    _act("start", rollout_id, db_url)
    console.print(f"rollout {rollout_id} running")


@rollout_app.command("pause")
def rollout_pause(rollout_id: int, db_url: DbOpt = None) -> None:
    """Pause: nothing new is sent; devices in flight still report."""
    _act("pause", rollout_id, db_url)
    console.print(f"rollout {rollout_id} paused")


@rollout_app.command("resume")
def rollout_resume(rollout_id: int, db_url: DbOpt = None) -> None:
    """Resume a paused rollout."""
    _act("resume", rollout_id, db_url)
    console.print(f"rollout {rollout_id} running")


@rollout_app.command("cancel")
def rollout_cancel(
    rollout_id: int,
    force: Annotated[bool, typer.Option(help="Cancel in-flight devices too.")] = False,
    db_url: DbOpt = None,
) -> None:
    """Cancel: queued commands at once; in-flight devices finish and report unless --force."""
    res = _act("cancel", rollout_id, db_url, force)
    console.print(f"rollout {rollout_id} canceled; {res['canceled_devices']} device(s) canceled")


@rollout_app.command("retry")
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


@rollout_app.command("rollback")
def rollout_rollback(rollout_id: int, db_url: DbOpt = None) -> None:
    """Cancel and put every device this rollout changed back on its previous version."""
    o = _orch(db_url, need_secret=True)
    try:
        new = o.rollback(rollout_id)
    except _rollout_errors() as exc:
        fail(str(exc))
    console.print(
        f"rollout {rollout_id} rolled back by rollout(s) {', '.join(map(str, new)) or '(none needed)'}"
    )


@rollout_app.command("list")
def rollout_list(db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Every rollout, newest first."""
    o = _orch(db_url)
    R = ROLLOUTS
    with o.engine.connect() as conn:
        rows = [
            o.summary(conn, r.id) for r in conn.execute(sa.select(R.c.id).order_by(R.c.id.desc()))
        ]
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("id", "workflow", "state", "wave", "devices", "progress", "reason")
    for r in rows:
        t.add_row(str(r["id"]), r["workflow"], r["state"], f"{r['wave']}/{len(r['waves'])}", str(r["devices"]),
                  r["converged_text"], r["reason"] or "")  # fmt: skip
    console.print(t if rows else "no rollouts")


def _status_view(s: dict) -> Table:
    t = Table(
        title=f"rollout {s['id']}: {s['workflow']} — {s['state']}"
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
    return t


@rollout_app.command("status")
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
            except _rollout_errors() as exc:
                fail(str(exc))
        raise AssertionError

    s = get()
    if as_json:
        print(json.dumps(s))
        return
    if not watch:
        console.print(_status_view(s))
        return
    with Live(_status_view(s), console=console, refresh_per_second=2) as live:
        while s["state"] in ("draft", "running", "paused"):
            time.sleep(1)
            s = get()
            live.update(_status_view(s))


@rollout_app.command("log")
def rollout_log(rollout_id: int, db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """The audit log: every rollout and device state change."""
    L = ROLLOUT_LOG
    R = ROLLOUTS
    with open_db(db_url).connect() as conn:
        if conn.execute(sa.select(R.c.id).where(R.c.id == rollout_id)).first() is None:
            fail(f"no rollout {rollout_id} (see `orrery rollout list`)")
        names = dict(conn.execute(sa.select(DEVICES.c.id, DEVICES.c.name)).all())
        rows = [{"at": iso(r.at_ms), "device": names.get(r.device_id), "event": r.event, "detail": r.detail}
                for r in conn.execute(sa.select(L).where(L.c.rollout_id == rollout_id).order_by(L.c.id))]  # fmt: skip
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("at", "device", "event", "detail")
    for r in rows:
        t.add_row(r["at"], r["device"] or "", r["event"], r["detail"] or "")
    console.print(t if rows else f"no log for rollout {rollout_id}")
