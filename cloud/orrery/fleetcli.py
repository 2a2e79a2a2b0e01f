"""``orrery serve``, ``orrery devices …`` and ``orrery readings …``: rich tables for people,
``--json`` for scripts."""

from __future__ import annotations

import csv
import json
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from cloud.orrery.clock import iso, now_ms
from cloud.orrery.db.engine import describe, engine_for, url_from
from cloud.orrery.db.tables import (
    DEAD_LETTERS,
    DEVICES,
    GAPS,
    LOSSES,
    READINGS,
    SESSIONS,
    insert_ignore,
)

devices_app = typer.Typer(help="The devices registry.", no_args_is_help=True)
readings_app = typer.Typer(help="Stored readings, gaps and statistics.", no_args_is_help=True)
console = Console()
err = Console(stderr=True, soft_wrap=True)

DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: $ORRERY_DB_URL, else sqlite:///orrery.db)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def fail(message: str, code: int = 1) -> None:
    """Print an error for a person and exit non-zero."""
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def open_db(url: str | None) -> sa.Engine:
    """The engine for ``--db``, migrated; a clear error if it can't be opened."""
    try:
        return engine_for(url)
    except ValueError as exc:
        fail(str(exc))
    except sa.exc.OperationalError as exc:
        fail(f"cannot open database {describe(url_from(url))}: {exc.orig}")
    raise AssertionError


def parse_time(text: str | None, name: str) -> int | None:
    """ISO 8601 (naive = UTC) or unix seconds -> unix ms."""
    if text is None:
        return None
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{name}: {text!r} is neither ISO 8601 (2026-11-21T10:00:00) nor unix seconds")
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def _device_id(conn, name: str) -> int:
    row = conn.execute(sa.select(DEVICES.c.id).where(DEVICES.c.name == name)).first()
    if row is None:
        fail(f"unknown device {name!r} (see `orrery devices list`)")
    return row.id


# --- serve -----------------------------------------------------------------------------------


def serve(
    db_url: DbOpt = None,
    host: Annotated[str, typer.Option(help="MQTT broker host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="MQTT broker port.")] = 1883,
    username: Annotated[str | None, typer.Option(help="MQTT username.")] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="File holding the MQTT password.")
    ] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA certificate: connect with TLS.")] = None,
    client_id: Annotated[
        str | None,
        typer.Option(help="Stable client id of this worker (default orrery-ingest-HOST)."),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            help="Shared-subscription group (default: derived from the fleet secret, so a board "
            "cannot join it and take a share of other boards' messages)."
        ),
    ] = None,
    fleet: Annotated[str, typer.Option(help="Fleet to serve ('+' for all).")] = "+",
    secret_file: Annotated[
        Path | None, typer.Option(help="Fleet secret (else $ORRERY_SECRET / $ORRERY_SECRET_FILE).")
    ] = None,
    auto_register: Annotated[
        bool, typer.Option(help="Admit unknown devices on first message.")
    ] = False,
    alert: Annotated[
        list[str] | None,
        typer.Option(help="Live alert rule CHANNEL>LEVEL or CHANNEL<LEVEL (repeatable)."),
    ] = None,
    reorder_window: Annotated[
        float, typer.Option(min=0, help="Seconds a hole may stay open before it is a gap.")
    ] = 10.0,
    reconcile_every: Annotated[
        float, typer.Option(min=0.1, help="Seconds between reconciliation passes.")
    ] = 2.0,
    rollouts: Annotated[
        bool, typer.Option(help="Drive running rollouts (needs the fleet secret).")
    ] = True,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the ingest service: store readings exactly once, reconcile gaps, answer pulls."""
    from cloud.orrery.fleet import keys
    from cloud.orrery.ingest.alerts import AlertRule
    from cloud.orrery.ingest.handler import Ingest
    from cloud.orrery.ingest.service import BrokerAddress, Service
    from cloud.orrery.jsonlog import configure_logging, jlog

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"--log-level {log_level!r}: expected DEBUG, INFO, WARNING or ERROR")
    configure_logging(log_level)
    try:
        rules = [AlertRule.parse(a) for a in alert or []]
    except ValueError as exc:
        fail(str(exc))
    try:
        secret = keys.load_secret(secret_file)
    except keys.SecretError as exc:
        if secret_file is not None:
            fail(str(exc))
        secret = None
        jlog("no_fleet_secret", 30, detail=f"{exc}; gaps will be reported but no resend is signed")
    password = None
    if password_file is not None:
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            fail(f"--password-file {password_file}: {exc.strerror}")
    if ca_file is not None and not ca_file.exists():
        fail(f"--ca-file {ca_file}: no such file")
    engine = open_db(db_url)
    ingest = Ingest(
        engine,
        secret=secret,
        auto_register=auto_register,
        alert_rules=rules,
        reorder_window_ms=int(reorder_window * 1000),
    )
    from cloud.orrery.fleet.rollout.orchestrator import Orchestrator

    cid = client_id or f"orrery-ingest-{socket.gethostname()}"
    if group is None:
        group = (
            "orrery-ingest"
            if secret is None
            else "orrery-"
            + keys.mqtt_password(secret, "$share-group")[:16].replace("-", "x").replace("_", "y")
        )
    orchestrator = (
        None if secret is None or not rollouts else Orchestrator(engine, secret, owner=cid)
    )
    service = Service(
        ingest,
        BrokerAddress(host, port, username, password, str(ca_file) if ca_file else None),
        client_id=cid,
        group=group,
        fleet=fleet,
        reconcile_every_s=reconcile_every,
        orchestrator=orchestrator,
    )
    service.install_signals()
    service.run()


# --- devices ---------------------------------------------------------------------------------


@devices_app.command("add")
def devices_add(
    names: Annotated[list[str], typer.Argument(help="Device ids.")],
    fleet: Annotated[str, typer.Option(help="Fleet id.")] = "default",
    profile: Annotated[str | None, typer.Option(help="Board profile name.")] = None,
    db_url: DbOpt = None,
) -> None:
    """Register devices (provisioning); the ingest dead-letters devices it does not know."""
    from shared.codec import is_id

    for n in [fleet, *names]:
        if not is_id(n):
            fail(f"{n!r} is not a valid id: 1..64 chars of [A-Za-z0-9_.-]")
    engine = open_db(db_url)

    with engine.begin() as conn:
        added = conn.execute(
            insert_ignore(conn, DEVICES),
            [
                {"name": n, "fleet": fleet, "profile": profile, "created_ms": now_ms()}
                for n in dict.fromkeys(names)
            ],
        ).rowcount
    console.print(f"registered {added} new device(s); {len(set(names)) - added} already known")


def _device_rows(conn, name: str | None = None) -> list[dict]:
    q = sa.select(DEVICES).order_by(DEVICES.c.name)
    if name is not None:
        q = q.where(DEVICES.c.name == name)
    gaps = dict(
        conn.execute(
            sa.select(GAPS.c.device_id, sa.func.sum(GAPS.c.last - GAPS.c.first + 1)).group_by(
                GAPS.c.device_id
            )
        ).all()
    )
    lost = dict(
        conn.execute(
            sa.select(LOSSES.c.device_id, sa.func.sum(LOSSES.c.last - LOSSES.c.first + 1)).group_by(
                LOSSES.c.device_id
            )
        ).all()
    )
    out = []
    for r in conn.execute(q):
        out.append(
            {
                "device": r.name,
                "fleet": r.fleet,
                "profile": r.profile,
                "online": r.online,
                "last_seen": iso(r.last_seen_ms),
                "boot": r.boot,
                "fw": r.fw,
                "workflow": None if r.wf is None else f"{r.wf}@{r.wf_ver}",
                "wf_hash": r.wf_hash,
                "backlog": r.backlog,
                "last_seq": r.last_seq,
                "time_synced": r.synced,
                "received": r.received,
                "duplicates": r.duplicates,
                "historical": r.historical,
                "pending_gap": int(gaps.get(r.id) or 0),
                "permanent_loss": int(lost.get(r.id) or 0),
            }
        )
    return out


@devices_app.command("list")
def devices_list(db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Every device: online state, last seen, versions, backlog."""
    with open_db(db_url).connect() as conn:
        rows = _device_rows(conn)
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("device", "fleet", "online", "last seen", "fw", "workflow", "backlog", "received")
    for r in rows:
        t.add_row(
            r["device"],
            r["fleet"],
            "[green]yes[/]" if r["online"] else "[red]no[/]",
            r["last_seen"] or "never",
            r["fw"] or "-",
            r["workflow"] or "-",
            "-" if r["backlog"] is None else str(r["backlog"]),
            str(r["received"]),
        )
    console.print(t)
    console.print(f"{len(rows)} device(s), {sum(r['online'] for r in rows)} online")


@devices_app.command("show")
def devices_show(name: str, db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """One device in full, with its boots (sessions) and time anchors."""
    with open_db(db_url).connect() as conn:
        rows = _device_rows(conn, name)
        if not rows:
            fail(f"unknown device {name!r} (see `orrery devices list`)")
        did = _device_id(conn, name)
        S = SESSIONS
        sessions = [
            {
                "boot": s.boot,
                "first_seen": iso(s.first_seen_ms),
                "last_seen": iso(s.last_seen_ms),
                "seqs": None if s.first_seq is None else [s.first_seq, s.last_seq],
                "anchor": None
                if s.anchor_up_ms is None
                else {"up_ms": s.anchor_up_ms, "unix": iso(s.anchor_unix_ms)},
            }
            for s in conn.execute(
                sa.select(S).where(S.c.device_id == did).order_by(S.c.first_seen_ms)
            )
        ]
    info = {**rows[0], "sessions": sessions}
    if as_json:
        print(json.dumps(info))
        return
    t = Table(show_header=False)
    for k, v in info.items():
        if k != "sessions":
            t.add_row(k, "-" if v is None else str(v))
    console.print(t)
    st = Table("boot", "first seen", "last seen", "seqs", "time anchor")
    for s in sessions:
        st.add_row(
            str(s["boot"]),
            s["first_seen"],
            s["last_seen"],
            "-" if s["seqs"] is None else f"{s['seqs'][0]}..{s['seqs'][1]}",
            "not synced"
            if s["anchor"] is None
            else f"up {s['anchor']['up_ms']} ms = {s['anchor']['unix']}",
        )
    console.print(st)


# --- readings --------------------------------------------------------------------------------


@readings_app.command("export")
def readings_export(
    device: str,
    since: Annotated[
        str | None, typer.Option(help="From this event time (ISO 8601 or unix s).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Before this event time.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "csv",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here (default stdout).")
    ] = None,
    db_url: DbOpt = None,
) -> None:
    """Export one device's readings in event-time order (readings without a time anchor last)."""
    if fmt not in ("csv", "jsonl"):
        fail(f"--format {fmt!r}: expected csv or jsonl")
    lo, hi = parse_time(since, "--since"), parse_time(until, "--until")
    engine = open_db(db_url)
    cols = ("seq", "boot", "channel", "value", "event_time", "event_ms", "up_ms", "historical")
    out = open(output, "w", newline="") if output else sys.stdout  # noqa: SIM115
    n = 0
    try:
        with engine.connect() as conn:
            did = _device_id(conn, device)
            q = sa.select(READINGS).where(READINGS.c.device_id == did)
            if lo is not None:
                q = q.where(READINGS.c.event_ms >= lo)
            if hi is not None:
                q = q.where(READINGS.c.event_ms < hi)
            q = q.order_by(READINGS.c.event_ms.is_(None), READINGS.c.event_ms, READINGS.c.seq)
            w = csv.writer(out) if fmt == "csv" else None
            if w:
                w.writerow(cols)
            for r in conn.execution_options(stream_results=True, yield_per=5000).execute(q):
                row = (
                    r.seq,
                    r.boot,
                    r.channel,
                    r.value,
                    iso(r.event_ms),
                    r.event_ms,
                    r.up_ms,
                    bool(r.historical),
                )
                if w:
                    w.writerow(row)
                else:
                    out.write(json.dumps(dict(zip(cols, row, strict=True))) + "\n")
                n += 1
    finally:
        if output:
            out.close()
    if output:
        console.print(f"wrote {n} reading(s) to {output}")


@readings_app.command("gaps")
def readings_gaps(
    device: Annotated[str | None, typer.Option(help="Only this device.")] = None,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open gaps (may still arrive) and permanent losses, each with its reason."""
    with open_db(db_url).connect() as conn:
        names = dict(conn.execute(sa.select(DEVICES.c.id, DEVICES.c.name)).all())
        cond_g = [] if device is None else [GAPS.c.device_id == _device_id(conn, device)]
        cond_l = [] if device is None else [LOSSES.c.device_id == _device_id(conn, device)]
        rows = [
            {
                "device": names.get(g.device_id),
                "first": g.first,
                "last": g.last,
                "count": g.last - g.first + 1,
                "kind": "gap",
                "status": g.status,
                "reason": g.reason,
                "since": iso(g.detected_ms),
            }
            for g in conn.execute(
                sa.select(GAPS).where(*cond_g).order_by(GAPS.c.device_id, GAPS.c.first)
            )
        ] + [
            {
                "device": names.get(x.device_id),
                "first": x.first,
                "last": x.last,
                "count": x.last - x.first + 1,
                "kind": "lost",
                "status": "permanent",
                "reason": x.reason,
                "since": iso(x.reported_ms),
            }
            for x in conn.execute(
                sa.select(LOSSES).where(*cond_l).order_by(LOSSES.c.device_id, LOSSES.c.first)
            )
        ]
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("device", "seqs", "count", "kind", "status", "reason", "since")
    for r in rows:
        t.add_row(
            r["device"],
            f"{r['first']}..{r['last']}",
            str(r["count"]),
            r["kind"],
            r["status"],
            r["reason"],
            r["since"],
        )
    console.print(t if rows else "no gaps and no losses")


@readings_app.command("stats")
def readings_stats(db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Per device: received, duplicates dropped, historical, pending gaps, permanent loss;
    plus dead letters by reason."""
    with open_db(db_url).connect() as conn:
        rows = [
            {
                k: r[k]
                for k in (
                    "device",
                    "received",
                    "duplicates",
                    "historical",
                    "pending_gap",
                    "permanent_loss",
                )
            }
            for r in _device_rows(conn)
        ]
        dead: dict[str, int] = {}
        for reason, n in conn.execute(
            sa.select(DEAD_LETTERS.c.reason, sa.func.count()).group_by(DEAD_LETTERS.c.reason)
        ):
            kind = reason.split(":")[0]  # "oversize: 5000 bytes > 4634" counts as "oversize"
            dead[kind] = dead.get(kind, 0) + n
    totals = {
        k: sum(r[k] for r in rows)
        for k in ("received", "duplicates", "historical", "pending_gap", "permanent_loss")
    }
    if as_json:
        print(json.dumps({"devices": rows, "totals": totals, "dead_letters": dead}))
        return
    t = Table("device", "received", "duplicates", "historical", "pending gap", "permanent loss")
    for r in rows:
        t.add_row(
            *(
                str(r[k])
                for k in (
                    "device",
                    "received",
                    "duplicates",
                    "historical",
                    "pending_gap",
                    "permanent_loss",
                )
            )
        )
    t.add_row(*(["[bold]total[/]"] + [f"[bold]{totals[k]}[/]" for k in list(totals)]))
    console.print(t)
    if dead:
        d = Table("dead-letter reason", "count")
        for reason, n in dead.items():
            d.add_row(reason, str(n))
        console.print(d)
