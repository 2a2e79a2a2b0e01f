"""``orrery devices add|list|summary|show|timeline|logs|tag|send``: the devices registry, and
commands to devices."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cloud.orrery.cli.common import (
    DbOpt,
    JsonOpt,
    SinceOpt,
    console,
    fail,
    known_device,
    open_db,
    os_user,
    output_console,
    parse_seconds,
)
from cloud.orrery.clock import iso, now_ms
from cloud.orrery.fleet import device_commands, devices, keys, logs, timeline
from cloud.orrery.ingest.skew import fmt_offset
from shared.wire.codec import CLOCK_SKEW

app = typer.Typer(help="The devices registry, and commands to devices.", no_args_is_help=True)


@app.command("add")
def devices_add(
    names: Annotated[list[str], typer.Argument(help="Device ids.")],
    fleet: Annotated[str, typer.Option(help="Fleet id.")] = "default",
    profile: Annotated[str | None, typer.Option(help="Board profile name.")] = None,
    db_url: DbOpt = None,
) -> None:
    """Register devices (provisioning); the ingest dead-letters devices it does not know."""
    try:
        devices.check_ids(fleet, names)
    except devices.DeviceError as exc:
        fail(str(exc))
    added = len(devices.register(open_db(db_url, create=True), fleet, profile, names))
    console.print(f"registered {added} new device(s); {len(set(names)) - added} already known")


TagOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--tag", help="KEY=VALUE: only devices with this tag (repeatable: all must match)."
    ),
]
ProfileOpt = Annotated[str | None, typer.Option(help="Only devices of this board profile.")]


def _filter(tag: list[str] | None, profile: str | None, online: bool | None) -> devices.Filter:
    try:
        pairs = devices.parse_tags(tag or [])
    except devices.DeviceError as exc:
        fail(str(exc).replace("tag ", "--tag ", 1))
    if any(not v for _, v in pairs):
        fail("--tag: expected KEY=VALUE with a value")
    return devices.Filter(profile=profile, online=online, tags=tuple(pairs))


@app.command("list")
def devices_list(
    tag: TagOpt = None,
    profile: ProfileOpt = None,
    online: Annotated[
        bool | None, typer.Option("--online/--offline", help="Only online (offline) devices.")
    ] = None,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every device (or those of a tag, a profile, online or not): online state, last seen,
    versions, backlog, clock offset."""
    flt = _filter(tag, profile, online)
    with open_db(db_url).connect() as conn:
        rows = devices.device_rows(conn, flt=flt)
    if as_json:
        print(json.dumps(rows))
        return
    t = Table("device", "fleet", "online", "last seen", "fw", "workflow", "backlog", "received")
    t.add_column("clock", no_wrap=True, min_width=8)
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
            _clock(r["clock_offset_s"]),
        )
    console.print(t)
    console.print(f"{len(rows)} device(s), {sum(r['online'] for r in rows)} online")
    off = [r["device"] for r in rows if _off(r["clock_offset_s"])]
    if off:
        console.print(
            f"[yellow]{len(off)} device(s) with a clock off by {CLOCK_SKEW} s or more "
            f"(commands are signed in their time): {', '.join(off[:10])}"
            + (" …" if len(off) > 10 else "")
        )


@app.command("summary")
def devices_summary(
    tag: TagOpt = None, profile: ProfileOpt = None, db_url: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """The fleet at a glance: devices online and offline, the firmware and workflow versions
    they run, by profile, backlog, pending gap, permanent loss and alerts."""
    flt = _filter(tag, profile, None)
    with open_db(db_url).connect() as conn:
        s = devices.fleet_summary(conn, flt)
    if as_json:
        print(json.dumps(s))
        return
    console.print(f"{s['devices']} device(s): {s['online']} online, {s['offline']} offline")
    for key, what in (("fw", "firmware"), ("workflows", "workflow"), ("profiles", "profile")):
        console.print(f"{what}: " + (", ".join(f"{k} {n}" for k, n in s[key].items()) or "-"))
    console.print(
        f"backlog {s['backlog']}, received {s['received']}, pending gap {s['pending_gap']}, "
        f"permanent loss {s['permanent_loss']}, alerts {s['alerts']}"
    )


def _off(offset_s: int | None) -> bool:
    return offset_s is not None and abs(offset_s) >= CLOCK_SKEW


def _clock(offset_s: int | None) -> str:
    """A clock offset for a table: ``-`` unknown, yellow when it is off by CLOCK_SKEW or more."""
    text = fmt_offset(None if offset_s is None else offset_s * 1000)
    return f"[yellow]{text}[/]" if _off(offset_s) else text


@app.command("show")
def devices_show(name: str, db_url: DbOpt = None, as_json: JsonOpt = False) -> None:
    """One device in full: registry fields, tags, the workflow state it last reported, its
    clock offset, its boots (sessions) and time anchors, and the rollouts it was in."""
    with open_db(db_url).connect() as conn:
        info = devices.device_detail(conn, name)
    if info is None:
        fail(f"unknown device {name!r} (see `orrery devices list`)")
    if as_json:
        print(json.dumps(info))
        return
    t = Table(show_header=False)
    for k, v in info.items():
        if k == "clock_offset_s":
            t.add_row(k, "-" if v is None else f"{v} ({_clock(v)}: board minus companion)")
        elif k == "tags":
            t.add_row(k, ", ".join(f"{tk}={tv}" for tk, tv in v.items()) or "-")
        elif k == "workflow_state":
            t.add_row(k, "-" if v is None else _wf_state(v))
        elif k not in ("sessions", "rollouts"):
            t.add_row(k, "-" if v is None else str(v))
    console.print(t)
    st = Table("boot", "first seen", "last seen", "seqs", "time anchor", "clock")
    for s in info["sessions"]:
        st.add_row(
            str(s["boot"]),
            s["first_seen"],
            s["last_seen"],
            "-" if s["seqs"] is None else f"{s['seqs'][0]}..{s['seqs'][1]}",
            "not synced"
            if s["anchor"] is None
            else f"up {s['anchor']['up_ms']} ms = {s['anchor']['unix']}",
            _clock(s["clock_offset_s"]),
        )
    console.print(st)
    if not info["rollouts"]:
        console.print("rollouts: none")
        return
    console.print("rollouts:")
    for r in info["rollouts"]:
        console.print(
            f"  {r['rollout']}: {r['from'] or '-'} -> {r['workflow']}, wave {r['wave']}, "
            f"{r['state']}" + (f" ({escape(r['reason'])})" if r["reason"] else "")
            + f"; rollout {r['rollout_state']}, by {r['created_by'] or '-'}, "
            f"updated {r['updated']}",
            soft_wrap=True,
        )  # fmt: skip


def _wf_state(v: dict) -> str:
    """The workflow state line of ``devices show``."""
    boot = "this boot" if v["current_boot"] else f"boot {v['boot']}, before the last reboot"
    clock = "the board's clock" if v["time_source"] == timeline.EVENT else "received"
    return escape(f"{v['state']} (its last event, {v['event']} at {v['at']} by {clock}, {boot})")


@app.command("timeline")
def devices_timeline(
    name: Annotated[str, typer.Argument(help="Device id.")],
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option(help="The newest N entries at most.")] = (
        timeline.DEFAULT_LIMIT
    ),
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A device's history in time order: boots, workflow state changes and events, commands
    (who sent them) and their acks, installs (rollout steps), losses and gaps, alerts and dead
    letters. Each time is the board's event time where it is known, else when the companion
    received or recorded it (the src column: event, received, recorded)."""
    try:
        since_ms = None if since is None else timeline.parse_since(since, now_ms())
        with open_db(db_url).connect() as conn:
            # one more than shown: whether older entries were left off
            entries = timeline.timeline(conn, name, since_ms, limit + 1 if limit > 0 else limit)
    except timeline.TimelineError as exc:
        fail(str(exc))
    more = len(entries) > limit
    entries = entries[-limit:]
    if as_json:
        print(json.dumps([e.as_dict() for e in entries]))
        return
    t = Table("time", "src", "kind", "what")
    for e in entries:
        t.add_row(iso(e.at_ms), e.time_source, e.kind, escape(e.summary))
    console.print(t)
    console.print(
        f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
        + (f" (the newest {limit}; older ones left off: --limit)" if more else "")
        + "; src: event = the board's clock, received/recorded = the companion's"
    )


_LEVEL_STYLE = {"info": "", "warning": "yellow", "error": "red"}


@app.command("logs")
def devices_logs(
    name: Annotated[str, typer.Argument(help="Device id.")],
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option(help="The newest N lines at most.")] = logs.DEFAULT_LIMIT,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float, typer.Option(help="--follow: seconds between looks at the database.")
    ] = 1.0,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The lines a board keeps in its log and sends on up/log: its warnings and errors (link
    down, refused or failed commands, workflow faults, store losses) and its workflow's state
    changes, oldest first. Each time is the board's event time where its boot's time anchor is
    known (src evt), else when the companion received the line (rcv). With --follow and
    --json: one JSON object a line."""
    if limit < 1:
        fail(f"--limit: {limit} must be at least 1")
    if interval <= 0:
        fail(f"--interval: {interval} must be more than 0")
    try:
        since_ms = None if since is None else timeline.parse_since(since, now_ms())
        engine = open_db(db_url)
        with engine.connect() as conn:
            did, name = timeline.device_ref(conn, name)
            follower = logs.Follower(conn, did, since_ms) if follow else None
            shown = logs.lines(conn, did, since_ms, limit)
    except timeline.TimelineError as exc:
        fail(str(exc))
    if not follow:
        if as_json:
            print(json.dumps([x.as_dict() for x in shown]))
            return
        for line in shown:
            _print_line(line, False)
        console.print(f"{len(shown)} line(s); src: evt = the board's clock, rcv = received")
        return
    assert follower is not None
    follower.mark(shown)
    for line in shown:
        _print_line(line, as_json)
    try:
        while True:
            time.sleep(interval)
            with engine.connect() as conn:
                for line in follower.poll(conn):
                    _print_line(line, as_json)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _print_line(line: logs.Line, as_json: bool) -> None:
    # one line per log line (JSON Lines with --follow --json), flushed: --follow is read live
    if as_json:
        print(json.dumps(line.as_dict()), flush=True)
        return
    src = "evt" if line.time_source == "event" else "rcv"
    text = escape(f"{iso(line.at_ms)} {src} {line.level:<7} {line.text}")
    style = _LEVEL_STYLE.get(line.level, "")
    console.print(f"[{style}]{text}[/]" if style else text, soft_wrap=True)
    console.file.flush()


@app.command("tag")
def devices_tag(
    name: Annotated[str, typer.Argument(help="Device id.")],
    tags: Annotated[list[str], typer.Argument(help="key=value to set, key= to remove.")],
    db_url: DbOpt = None,
) -> None:
    """Set or remove tags (rollout targets select on ``tag.KEY=VALUE``)."""
    try:
        parsed = devices.parse_tags(tags)
    except devices.DeviceError as exc:
        fail(str(exc))
    with open_db(db_url).begin() as conn:
        now = devices.set_tags(conn, known_device(conn, name), parsed)
    console.print(
        f"{name}: " + (", ".join(f"{k}={v}" for k, v in sorted(now.items())) or "no tags")
    )


@app.command("send")
def devices_send(
    target: Annotated[
        str,
        typer.Argument(
            help="A device id, or a target expression: all, or FIELD=VALUE terms joined by ',' "
            "(fleet, profile, fw, wf, device, tag.KEY), as for a rollout."
        ),
    ],
    command: Annotated[str, typer.Argument(help="run, config, reboot or cancel.")],
    params: Annotated[
        list[str] | None, typer.Argument(help="NAME for run; KEY=VALUE… for config; ID for cancel.")
    ] = None,
    rate: Annotated[
        str, typer.Option(help="Most commands published a minute, e.g. 100/min, 5/s.")
    ] = device_commands.DEFAULT_RATE,
    ttl: Annotated[str, typer.Option(help="Lifetime: expired if not delivered by then.")] = "24h",
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send a command to a device, or to every device of a target expression: `run NAME` (a
    workflow command), `config KEY=VALUE…` (checked with the board's own rules; `KEY=` removes
    a key), `reboot`, or `cancel [ID]` (an install in its health window). Signed for each
    board, spread by --rate, queued for offline boards (they get it when they reconnect),
    acked; `orrery serve` delivers them, `orrery commands list` follows them."""
    try:
        secret = keys.load_secret()
    except keys.SecretError as exc:
        fail(str(exc))
    ttl_s = parse_seconds(ttl, "--ttl")
    with open_db(db_url).begin() as conn:
        try:
            sent = device_commands.send(
                conn, secret, target, command, params or [], sent_by=os_user(), rate=rate,
                ttl_s=ttl_s,
            )  # fmt: skip
        except device_commands.CommandError as exc:
            fail(str(exc))
    if as_json:
        print(json.dumps(sent.__dict__))
    out = output_console(as_json)
    n = len(sent.ids)
    ids = sent.ids[0] if n == 1 else f"{sent.ids[0]} … {sent.ids[-1]}"
    out.print(
        f"queued {sent.kind} for {n} device(s) as {ids}, sent by {sent.sent_by}"
        + (f", due {sent.first_due} … {sent.last_due}" if n > 1 else "")
    )
    if sent.offline:
        out.print(
            f"{len(sent.offline)} of them offline ({', '.join(sent.offline[:8])}"
            f"{' …' if len(sent.offline) > 8 else ''}): delivered when they reconnect"
        )
    out.print("follow it with `orrery commands list` or `orrery commands show ID`")
