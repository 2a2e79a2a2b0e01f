"""``orrery demo``, ``orrery sim`` and ``orrery readings plot``: the virtual fleet for people.

``demo`` is the one-command tour (README command one): its own Mosquitto (or
``$ORRERY_BROKER``), SQLite in a temporary directory, the companion, 50 virtual boards
running the firmware, workflow v1 and v2 pushed, v2 rolled out in waves while a third of the
fleet is offline, the offline boards brought back, and a final report with a PNG plot.
``sim`` runs a fleet with random faults for a while and reports the same way. The fleet is
``cloud.orrery.sim``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cloud.orrery.fleetcli import DbOpt, JsonOpt, fail, open_db, parse_time

console = Console()

# --- the plot ------------------------------------------------------------------------------------

_UNITS = {"cdegC": (0.01, "°C"), "c%RH": (0.01, "%RH"), "mV": (1.0, "mV")}


def channel_info(profile: str | None) -> dict[int, tuple[str, float, str]]:
    """Channel index -> (name, scale, unit) from a board profile in ``hw/boards``."""
    from firmware.profile import parse_profile

    path = Path(__file__).resolve().parents[2] / "hw" / "boards" / f"{profile}.json"
    try:
        channels, _ = parse_profile(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}
    out = {}
    for i, (name, _kind, spec) in enumerate(channels):
        scale, unit = _UNITS.get(spec.get("unit", ""), (1.0, spec.get("unit", "")))
        out[i] = (name, scale, unit)
    return out


def plot_device(
    engine: sa.Engine,
    device: str,
    output: Path,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    raw: dict | None = None,
) -> dict:
    """Plot one device's readings to a PNG: per channel, the stored (filtered) values, the raw
    samples when ``raw`` has them, and the workflow's state changes.

    The cloud stores what a board's filter chain emitted, never the raw samples. ``raw`` is
    what the simulator recorded for this board (``{"samples": [[unix ms, channel, value or
    null], …], "states": [[unix ms, state], …]}``); without it, state changes are the states
    in which the board published its workflow events. Returns what was plotted.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    from cloud.orrery.db.tables import DEVICES, EVENTS, READINGS

    with engine.connect() as conn:
        dev = conn.execute(
            sa.select(DEVICES.c.id, DEVICES.c.profile).where(DEVICES.c.name == device)
        ).first()
        if dev is None:
            raise LookupError(f"unknown device {device!r} (see `orrery devices list`)")
        q = sa.select(READINGS.c.event_ms, READINGS.c.channel, READINGS.c.value).where(
            READINGS.c.device_id == dev.id, READINGS.c.event_ms.is_not(None)
        )
        qe = sa.select(EVENTS.c.event_ms, EVENTS.c.state, EVENTS.c.event).where(
            EVENTS.c.device_id == dev.id, EVENTS.c.event_ms.is_not(None)
        )
        if since_ms is not None:
            q, qe = (
                q.where(READINGS.c.event_ms >= since_ms),
                qe.where(EVENTS.c.event_ms >= since_ms),
            )
        if until_ms is not None:
            q, qe = q.where(READINGS.c.event_ms < until_ms), qe.where(EVENTS.c.event_ms < until_ms)
        readings = conn.execute(q.order_by(READINGS.c.event_ms)).all()
        events = conn.execute(qe.order_by(EVENTS.c.event_ms)).all()
    info = channel_info(dev.profile)
    samples = [s for s in (raw or {}).get("samples", []) if _within(s[0], since_ms, until_ms)]
    chans = sorted({r.channel for r in readings} | {s[1] for s in samples if s[2] is not None})
    if not chans:
        raise LookupError(f"{device} has no readings with an event time to plot")

    def when(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC)

    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(len(chans), 1, figsize=(12, 2.9 * len(chans) + 1.0), sharex=True)
    axes = list(axes) if len(chans) > 1 else [axes]
    states = [s for s in (raw or {}).get("states") or [] if _within(s[0], since_ms, until_ms)]
    palette = ["#dbe9f8", "#fde2c8", "#d5f0db", "#eedaf3", "#f9f3c4", "#e6e6e6", "#f6d5d5"]
    colors: dict[str, str] = {}
    for ax, ch in zip(axes, chans, strict=True):
        name, scale, unit = info.get(ch, (f"channel {ch}", 1.0, ""))
        fs = [(when(r.event_ms), r.value * scale) for r in readings if r.channel == ch]
        if fs:
            ax.plot(
                *zip(*fs, strict=True), color="#1f5fa8", lw=1.4, label="stored (after the filters)"
            )
        rs = [(when(s[0]), s[2] * scale) for s in samples if s[1] == ch and s[2] is not None]
        if rs:
            ax.plot(*zip(*rs, strict=True), ".", color="#4d4d4d", ms=1.6, alpha=0.6,
                    label="raw samples (simulator)")  # fmt: skip
        drops = [when(s[0]) for s in samples if s[1] == ch and s[2] is None]
        if drops:
            lo = min((v for _, v in fs + rs), default=0)
            ax.plot(drops, [lo] * len(drops), "x", color="#c0392b", ms=5, label="dropout")
        ax.set_ylabel(f"{name} ({unit})" if unit else name)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, framealpha=0.85, markerscale=4)
    handles: list = []
    if states:
        end = max([when(r.event_ms) for r in readings] + [when(s[0]) for s in samples])
        nxt = [when(s[0]) for s in states[1:]] + [end]
        version = None
        for (t0, st, ver, *_), b in zip((tuple(s) + (None,) for s in states), nxt, strict=True):
            key = f"{st}" if ver is None else f"{st} (v{ver})"
            c = colors.setdefault(key, palette[len(colors) % len(palette)])
            for ax in axes:
                ax.axvspan(when(t0), b, color=c, lw=0)
            if version is not None and ver != version:
                for ax in axes:
                    ax.axvline(when(t0), color="#111111", lw=1.6)
                axes[0].annotate(
                    f"workflow v{ver} installed", (when(t0), 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, 3), textcoords="offset points", fontsize=8, fontweight="bold",
                )  # fmt: skip
            version = ver
        handles = [Patch(color=c, label=k) for k, c in colors.items()]
    if events:
        for ax in axes:
            ax.plot([when(e.event_ms) for e in events], [1.0] * len(events), "v",
                    color="#d35400", ms=6, transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
        names = sorted({e.event for e in events})
        handles.append(Line2D([], [], marker="v", ls="", color="#d35400",
                              label="event: " + ", ".join(names)))  # fmt: skip
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8,
                   title="workflow state (shading)" if states else None, title_fontsize=8,
                   frameon=False)  # fmt: skip
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))
    axes[-1].set_xlabel("event time (UTC)")
    what = "raw samples and stored readings" if samples else "stored readings"
    fig.suptitle(f"{device}: {what}, with the workflow's state changes", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return {
        "device": device,
        "png": str(output),
        "channels": [info.get(c, (str(c),))[0] for c in chans],
        "readings": len(readings),
        "raw_samples": len(samples),
        "state_changes": len(states),
        "events": len(events),
    }


def _within(ms: int, lo: int | None, hi: int | None) -> bool:
    return (lo is None or ms >= lo) and (hi is None or ms < hi)


def readings_plot(
    device: Annotated[str, typer.Argument(help="Device id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG file to write.")] = Path(
        "readings.png"
    ),
    since: Annotated[
        str | None, typer.Option(help="From this event time (ISO 8601 or unix s).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Before this event time.")] = None,
    raw: Annotated[
        Path | None,
        typer.Option(help="Raw samples and state changes recorded by `orrery sim`/`demo`."),
    ] = None,
    db_url: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plot one device's readings (PNG): stored values per channel, workflow events, and with
    --raw the simulator's raw samples and state changes."""
    lo, hi = parse_time(since, "--since"), parse_time(until, "--until")
    raw_data = None
    if raw is not None:
        try:
            raw_data = json.loads(raw.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            fail(f"--raw {raw}: {exc}")
        if raw_data.get("device") not in (None, device):
            fail(f"--raw {raw} holds {raw_data.get('device')}, not {device}")
    try:
        info = plot_device(open_db(db_url), device, output, since_ms=lo, until_ms=hi, raw=raw_data)
    except LookupError as exc:
        fail(str(exc).strip("'\""))
    if as_json:
        print(json.dumps(info))
    else:
        console.print(
            f"wrote {output}: {info['readings']} stored readings on {', '.join(info['channels'])}"
            + (f", {info['raw_samples']} raw samples" if info["raw_samples"] else "")
            + (f", {info['state_changes']} state changes" if info["state_changes"] else "")
            + f", {info['events']} events"
        )


# --- reports -------------------------------------------------------------------------------------


@dataclass
class Report:
    """What a demo or sim run did, for people (``render``) and scripts (``as_dict``)."""

    devices: int
    virtual_ms: int
    wall_s: float
    waves: list[dict] = field(default_factory=list)
    rollout: dict = field(default_factory=dict)
    readings: dict = field(default_factory=dict)
    loss: list[dict] = field(default_factory=list)
    converged: dict = field(default_factory=dict)
    faults: dict = field(default_factory=dict)
    plot: dict | None = None
    db_url: str = ""
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def collect_report(fleet, wall_s: float, rid: int | None, at_finish: dict | None) -> Report:
    """Count everything once the fleet has drained: readings, losses, rollout, versions."""
    from cloud.orrery.sim.board import FLEET

    acc = fleet.account()
    sent = Counter()
    for b in fleet.boards.values():
        sent.update(b.sent())
    rep = Report(
        devices=len(fleet.boards), virtual_ms=fleet.elapsed_ms, wall_s=round(wall_s, 1),
        db_url=fleet.db_url,
    )  # fmt: skip
    rep.readings = {
        "taken": acc.accepted,
        "sent": sent["records"],
        "stored": acc.stored,
        "duplicates_dropped": acc.duplicates_dropped,
        "lost": sum(acc.lost.values()),
        "on_boards_offline": acc.on_boards,
        "unaccounted": sum(b - a + 1 for r in acc.missing.values() for a, b in r),
        "without_event_time": acc.without_time,
    }
    reasons = {
        "store_full": "a board's flash filled while it was offline; the oldest unsent readings "
        "were dropped and reported",
        "corrupt": "a power cut left a damaged record in flash; the board reported its seq",
        "not_held": "the companion asked for a resend and the board no longer held them",
    }
    for reason, n in sorted(acc.lost.items()):
        devs = fleet.rows(
            'SELECT count(DISTINCT device_id), count(*) FROM losses l JOIN devices d ON d.id = '
            "l.device_id WHERE l.reason = :r AND d.fleet = :f", r=reason, f=FLEET,
        )[0]  # fmt: skip
        ranges = fleet.rows(
            'SELECT d.name, l."first", l."last" FROM losses l JOIN devices d ON d.id = '
            'l.device_id WHERE l.reason = :r AND d.fleet = :f ORDER BY d.name, l."first" LIMIT 3',
            r=reason, f=FLEET,
        )  # fmt: skip
        rep.loss.append({
            "reason": reason, "readings": n, "devices": devs[0], "ranges": devs[1],
            "why": reasons.get(reason, reason),
            "examples": [f"{d} {a}..{z}" for d, a, z in ranges],
        })  # fmt: skip
    rep.problems = acc.problems()
    rep.ok = acc.ok
    versions = Counter(b.version for b in fleet.boards.values())
    db_versions = dict(fleet.rows("SELECT wf_ver, count(*) FROM devices GROUP BY wf_ver"))
    rep.converged = {
        "boards": dict(versions),
        "registry": {str(k): v for k, v in db_versions.items()},
        "online": fleet.online_count(),
    }
    if rid is not None:
        s = fleet.summary(rid)
        rep.rollout = {
            "id": rid, "workflow": s["workflow"], "state": s["state"],
            "converged": s["converged_text"],
            "at_finish": (at_finish or {}).get("converged_text"),
        }  # fmt: skip
        for w, w0 in zip(s["waves"], (at_finish or s)["waves"], strict=True):
            rep.waves.append({
                "wave": w["wave"], "size": w["size"], "devices": w["total"],
                "at_finish": w0["states"], "final": w["states"],
            })  # fmt: skip
    rep.faults = {k: v for k, v in sorted(fleet.faults.items())}
    rep.faults["clocks_never_set"] = sum(not b.synced for b in fleet.boards.values())
    return rep


def _states_text(states: dict) -> str:
    order = ("succeeded", "offline-pending", "installing", "acked", "sent", "queued", "failed")
    keys = sorted(states, key=lambda k: (order.index(k) if k in order else 99, k))
    return ", ".join(f"{states[k]} {k}" for k in keys) or "-"


def render(rep: Report, con: Console) -> None:
    """Print a report."""
    from cloud.orrery.sim.fleet import fmt_ms

    con.rule("[bold]Orrery fleet report")
    con.print(
        f"{rep.devices} virtual boards, {fmt_ms(rep.virtual_ms)} of virtual time in "
        f"{rep.wall_s:.0f} s of real time."
    )
    if rep.rollout:
        r = rep.rollout
        t = Table(title=f"Rollout {r['id']}: {r['workflow']} in waves", title_justify="left")
        t.add_column("wave")
        t.add_column("size")
        t.add_column("devices", justify="right")
        t.add_column("when the rollout finished")
        t.add_column("after the offline boards came back")
        for w in rep.waves:
            t.add_row(
                str(w["wave"]), w["size"], str(w["devices"]), _states_text(w["at_finish"]),
                _states_text(w["final"]),
            )  # fmt: skip
        con.print(t)
        con.print(
            f"rollout {r['state']}: at the finish {r['at_finish'] or r['converged']}; "
            f"now {r['converged']}"
        )
    rd = rep.readings
    t = Table(title="Readings", title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("count", justify="right")
    t.add_row("taken by the boards (accepted into flash)", f"{rd['taken']:,}")
    t.add_row("sent (records in delivered batches, repeats included)", f"{rd['sent']:,}")
    t.add_row("stored in the database, each exactly once", f"{rd['stored']:,}")
    t.add_row("duplicates recognised and dropped", f"{rd['duplicates_dropped']:,}")
    t.add_row("permanent loss, accounted with its reason", f"{rd['lost']:,}")
    if rd["on_boards_offline"]:
        t.add_row("still on boards that are offline", f"{rd['on_boards_offline']:,}")
    t.add_row(
        "unaccounted for",
        f"[bold {'green' if rd['unaccounted'] == 0 else 'red'}]{rd['unaccounted']:,}[/]",
    )
    t.add_row("stored without event time (clock never set)", f"{rd['without_event_time']:,}")
    con.print(t)
    if rep.loss:
        t = Table(title="Permanent loss by reason", title_justify="left")
        for c in ("reason", "readings", "devices", "why", "e.g. (device seqs)"):
            t.add_column(c)
        for x in rep.loss:
            t.add_row(
                x["reason"], f"{x['readings']:,}", str(x["devices"]), x["why"],
                ", ".join(x["examples"]),
            )  # fmt: skip
        con.print(t)
    c = rep.converged
    vers = ", ".join(
        f"{n} on v{v}" if v is not None else f"{n} without a workflow"
        for v, n in sorted(c["boards"].items(), key=lambda kv: -(kv[0] or 0))
    )
    con.print(f"[bold]Devices:[/] {vers} (the boards themselves); {c['online']} online")
    if rep.faults:
        f = rep.faults
        parts = [f"{v} {k.replace('_', ' ')}" for k, v in f.items() if ":" not in k]
        cuts = [f"{v} {k.split(':')[1].replace('_', ' ')}" for k, v in f.items() if ":" in k]
        con.print(
            "[bold]Faults injected:[/] "
            + ", ".join(parts)
            + (f" (power cuts: {', '.join(cuts)})" if cuts else "")
        )
    if rep.plot:
        p = rep.plot
        con.print(
            f"[bold]Plot:[/] {p['png']} ({p['device']}: {p['raw_samples']:,} raw samples, "
            f"{p['readings']:,} stored readings, {p['state_changes']} state changes)"
        )
    for n in rep.notes:
        con.print(n)
    if rep.ok:
        con.print("[bold green]Every reading a board took is stored exactly once or accounted for.")
    else:
        con.print("[bold red]Accounting problems:[/] " + "; ".join(rep.problems[:10]))


# --- running a fleet with a live display ---------------------------------------------------------


class Display:
    """A rich live view of a running fleet: a progress bar over the scenario and its numbers."""

    def __init__(self, fleet, total_ms: int, con: Console, enabled: bool = True) -> None:
        self.fleet = fleet
        self.total_ms = total_ms
        self.con = con
        self.enabled = enabled
        self.phase = "starting"
        self.rid: int | None = None
        self._last = 0.0
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[vt]}"),
            TimeElapsedColumn(), console=con,
        )  # fmt: skip
        self.task = self.progress.add_task("starting", total=total_ms, vt="")
        self.live = Live(self._view(), console=con, refresh_per_second=4, redirect_stdout=False)

    def __enter__(self) -> Display:
        if self.enabled:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.update(force=True)
            self.live.__exit__(*exc)
            self.con.print()

    def set(self, phase: str, rid: int | None = None) -> None:
        self.phase = phase
        if rid is not None:
            self.rid = rid
        self.update(force=True)

    def update(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.3:
            return
        self._last = now
        self.live.update(self._view())

    def _view(self):
        from cloud.orrery.sim.fleet import fmt_ms

        f = self.fleet
        el = f.elapsed_ms
        self.progress.update(
            self.task, description=self.phase, completed=min(el, self.total_ms),
            vt=f"virtual {fmt_ms(el)}",
        )  # fmt: skip
        t = Table.grid(padding=(0, 2))
        away = sum(b.away for b in f.boards.values())
        taken = sum(b.node.store.last_seq for b in f.boards.values())
        try:
            stored = f.stored()
            online = f.online_count()
        except sa.exc.OperationalError:
            stored = online = 0
        t.add_row(
            "boards", f"{len(f.boards)} ({away} offline now, {online} online to the companion)"
        )
        t.add_row("readings", f"{taken:,} taken, {stored:,} stored")
        if self.rid is not None:
            try:
                s = f.summary(self.rid)
                t.add_row(
                    "rollout",
                    f"{s['workflow']} {s['state']}, wave {s['wave']}: {s['converged_text']}",
                )
            except sa.exc.OperationalError:
                pass
        if f.faults:
            t.add_row(
                "faults",
                ", ".join(
                    f"{v} {k.replace('_', ' ')}" for k, v in f.faults.items() if ":" not in k
                ),
            )
        return Group(self.progress, t)


@contextlib.contextmanager
def _board_output(path: Path):
    """The firmware prints its log (``orrery: …``) on stdout: into ``path`` while it runs."""
    with open(path, "a") as log, contextlib.redirect_stdout(log):
        yield


def _broker_from_env(broker: str | None) -> tuple[str, int] | None:
    from cloud.orrery.sim.fleet import parse_broker_url

    url = broker or os.environ.get("ORRERY_BROKER")
    if not url:
        return None
    try:
        return parse_broker_url(url)
    except ValueError as exc:
        fail(str(exc))
    return None


def _pick_plotted(fleet, avoid: set[str]) -> str:
    """The board whose greenhouse runs warmest (it will change state), among the online ones."""
    cands = [b for b in fleet.boards.values() if b.name not in avoid and b.synced]
    return max(cands, key=lambda b: b.climate["base"] + b.climate["amplitude"]).name


def _finish(fleet, out_dir: Path, rid: int | None, at_finish: dict | None, plotted: str | None,
            t0: float, display: Display) -> Report:  # fmt: skip
    display.set("delivering the last readings")
    until = fleet.now_ms
    if plotted:
        fleet.boards[plotted].stop_recording()
    fleet.freeze()
    drained = fleet.drain(15 * 60_000, on_pass=display.update)
    display.set("counting")
    rep = collect_report(fleet, time.monotonic() - t0, rid, at_finish)
    if not drained:
        rep.notes.append(f"[yellow]not everything was delivered: {fleet.unsettled()}[/]")
    if plotted:
        b = fleet.boards[plotted]
        raw = {"device": plotted, "samples": b.raw, "states": b.states}
        raw_path = out_dir / f"{plotted}-raw.json"
        raw_path.write_text(json.dumps(raw))
        display.set("plotting")
        rep.plot = plot_device(
            fleet.engine, plotted, out_dir / f"{plotted}.png", raw=raw, until_ms=until
        )
        rep.plot["raw_file"] = str(raw_path)
    return rep


# --- orrery demo -------------------------------------------------------------------------------


def demo(
    devices: Annotated[int, typer.Option(min=6, max=500, help="Virtual boards.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of sensors, faults and timing.")] = 1,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Directory for the database, plot and logs (default: a new temporary one)."
        ),
    ] = None,
    broker: Annotated[
        str | None,
        typer.Option(
            help="Use this broker (mqtt://HOST:PORT) instead of starting one; default $ORRERY_BROKER."
        ),
    ] = None,
    speed: Annotated[
        float, typer.Option(min=1, help="Virtual seconds per real second, at most.")
    ] = 40.0,
    as_json: JsonOpt = False,
) -> None:
    """The one-command demo: a broker, the companion, 50 virtual boards running the firmware,
    workflow v1 and v2, a staged rollout of v2 while a third of the fleet is offline, then the
    offline boards come back; ends with a report and a PNG plot."""
    from cloud.orrery.sim.fleet import VirtualFleet

    t0 = time.monotonic()
    con = Console(stderr=True) if as_json else console
    addr = _broker_from_env(broker)
    out_dir = out or Path(tempfile.mkdtemp(prefix="orrery-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{out_dir / 'orrery.db'}"
    if (out_dir / "orrery.db").exists():
        fail(f"{out_dir / 'orrery.db'} exists: give an empty --out directory")
    rng = random.Random(seed)
    con.print(
        f"[bold]Orrery demo[/]: {devices} virtual boards, "
        + (f"broker {addr[0]}:{addr[1]}" if addr else "a local Mosquitto")
        + f", SQLite in {out_dir}"
    )
    with _board_output(out_dir / "boards.log"):
        fleet = VirtualFleet(
            devices, db_url, broker=addr, seed=seed, uplink_ms=20_000, speed=speed,
            clockless=0.04, small_flash=0.04, health_window_s=30,
        )  # fmt: skip
    offline_n = math.ceil(devices / 3)
    small = [n for n, b in fleet.boards.items() if b.flash]
    others = [n for n in fleet.boards if n not in small]
    away = small + rng.sample(others, offline_n - len(small))
    plotted = _pick_plotted(fleet, set(away))
    fleet.boards[plotted].start_recording()
    total = 26 * 60_000
    rid = None
    at_finish = None
    try:
        with (
            Display(fleet, total, con, enabled=not as_json) as d,
            _board_output(out_dir / "boards.log"),
        ):
            d.set("starting the companion")
            fleet.start_companion()
            d.set("boards connecting (workflow v1 and v2 pushed; boards run v1)")
            fleet.wait(lambda: fleet.online_count() == devices, 3 * 60_000, on_pass=d.update)
            fleet.run(60_000, d.update)
            d.set(f"{offline_n} boards ({offline_n * 100 // devices}%) go offline")
            for n in away:
                fleet.at(rng.randrange(0, 30_000), lambda n=n: fleet.go_away(n))
            cuts = rng.sample([n for n in others if n != plotted], 3)
            for n, kind in zip(cuts, ("garbage_record", "torn_record", "torn_cursor"), strict=True):
                fleet.power_cut_later(n, rng.randrange(60_000, 8 * 60_000), kind)
            fleet.run(60_000, d.update)
            rid = fleet.rollout(
                "greenhouse@2", waves="10%,50%,100%", success="95%", max_failures="10%",
                min_devices=3, soak="30s", timeout="1h", rate="1000/min", health="30s",
            )  # fmt: skip
            d.set("rolling out greenhouse@2 in waves", rid)
            if fleet.broker_proc is not None:
                fleet.at(90_000, fleet.restart_broker)
            fleet.wait(lambda: fleet.rollout_state(rid)[0] in ("finished", "paused"), 20 * 60_000,
                       on_pass=d.update)  # fmt: skip
            at_finish = fleet.summary(rid)
            d.set("the offline boards come back")
            for n in away:
                if n not in small:
                    fleet.come_back(n)
            # the small-flash boards stay away until their flash has overflowed (~14 min)
            left = max(0, 16 * 60_000 - fleet.elapsed_ms + 2 * 60_000)
            fleet.run(left, d.update)
            for n in small:
                fleet.come_back(n)
            fleet.wait(lambda: set(fleet.member_states(rid).values()) <= {"succeeded", "failed"},
                       10 * 60_000, on_pass=d.update)  # fmt: skip
            d.total_ms = fleet.elapsed_ms + 60_000
            rep = _finish(fleet, out_dir, rid, at_finish, plotted, t0, d)
    finally:
        with _board_output(out_dir / "boards.log"):
            fleet.close()
    rep.wall_s = round(time.monotonic() - t0, 1)
    rep.notes.append(
        f"Explore: orrery rollout status {rid} --db {db_url} | orrery readings gaps --db {db_url}"
        f" | orrery readings plot {plotted} --db {db_url} --raw {rep.plot['raw_file'] if rep.plot else ''}"
    )
    if as_json:
        print(json.dumps(rep.as_dict(), default=str))
    else:
        render(rep, con)
    if not rep.ok:
        raise typer.Exit(1)


# --- orrery sim --------------------------------------------------------------------------------


def sim(
    devices: Annotated[
        int, typer.Option("--devices", min=1, max=5000, help="Virtual boards.")
    ] = 50,
    broker: Annotated[
        str | None,
        typer.Option(
            help="Broker mqtt://HOST:PORT (default $ORRERY_BROKER, else a local Mosquitto of its own)."
        ),
    ] = None,
    speed: Annotated[
        float,
        typer.Option(
            min=0, help="Virtual seconds per real second at most (0: as fast as it goes)."
        ),
    ] = 60.0,
    offline_rate: Annotated[
        float,
        typer.Option(
            min=0,
            help="Link outages per board per virtual hour; each lasts 2 min to 2 days (log-uniform).",
        ),
    ] = 0.2,
    reboot_rate: Annotated[
        float,
        typer.Option(
            min=0, help="Power cuts mid-write (then a reboot) per board per virtual hour."
        ),
    ] = 0.05,
    clockless: Annotated[
        float, typer.Option(min=0, max=1, help="Share of boards whose clock is never set.")
    ] = 0.05,
    broker_restarts: Annotated[
        int, typer.Option(min=0, help="Restarts of our own broker, spread over the run.")
    ] = 1,
    duration: Annotated[str, typer.Option(help="Virtual time to run: 90s, 30m, 2h, 1d.")] = "30m",
    seed: Annotated[int, typer.Option(help="Seed of sensors, faults and timing.")] = 1,
    db_url: DbOpt = None,
    plot: Annotated[
        str | None, typer.Option(help="Record this board's raw samples and plot it at the end.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Directory for the plot and logs (default: a temporary one)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run N virtual boards (the firmware on simulated sensors) against a real broker and the
    companion, on accelerated virtual time, with outages, power cuts, unset clocks and broker
    restarts; report what was taken, stored and lost."""
    from cloud.orrery.fleet.rollout.plan import RolloutError, parse_duration
    from cloud.orrery.sim.fleet import VirtualFleet

    try:
        total = parse_duration(duration, "--duration") * 1000
    except RolloutError as exc:
        fail(str(exc))
    if total < 60_000:
        fail("--duration must be at least 60s")
    t0 = time.monotonic()
    con = Console(stderr=True) if as_json else console
    addr = _broker_from_env(broker)
    out_dir = out or Path(tempfile.mkdtemp(prefix="orrery-sim-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    url = db_url or f"sqlite:///{out_dir / 'orrery.db'}"
    rng = random.Random(seed)
    with _board_output(out_dir / "boards.log"):
        try:
            fleet = VirtualFleet(devices, url, broker=addr, seed=seed, speed=speed or None,
                                 clockless=clockless)  # fmt: skip
        except sa.exc.IntegrityError:
            fail(f"{url} already holds these devices: give a fresh --db")
    names = list(fleet.boards)
    plotted = plot if plot in fleet.boards else None
    if plot is not None and plotted is None:
        fail(f"--plot {plot!r}: the boards are {names[0]} … {names[-1]}")
    if plotted:
        fleet.boards[plotted].start_recording()
    hours = total / 3_600_000
    for n in names:
        for _ in range(_poisson(rng, offline_rate * hours)):
            start = rng.randrange(0, total)
            length = int(math.exp(rng.uniform(math.log(120_000), math.log(2 * 86_400_000))))
            fleet.at(start, lambda n=n, length=length: fleet.go_away(n, length))
        for _ in range(_poisson(rng, reboot_rate * hours)):
            fleet.power_cut_later(n, rng.randrange(0, total))
    if fleet.broker_proc is not None:
        for k in range(broker_restarts):
            fleet.at(total * (k + 1) // (broker_restarts + 1), fleet.restart_broker)
    try:
        with (
            Display(fleet, total, con, enabled=not as_json) as d,
            _board_output(out_dir / "boards.log"),
        ):
            d.set("starting the companion")
            fleet.start_companion()
            d.set("running")
            fleet.run(total, d.update)
            rep = _finish(fleet, out_dir, None, None, plotted, t0, d)
    finally:
        with _board_output(out_dir / "boards.log"):
            fleet.close()
    rep.wall_s = round(time.monotonic() - t0, 1)
    rep.notes.append(f"Database: {url}")
    if as_json:
        print(json.dumps(rep.as_dict(), default=str))
    else:
        render(rep, con)
    if not rep.ok:
        raise typer.Exit(1)


def _poisson(rng: random.Random, lam: float) -> int:
    """A Poisson-distributed count with mean ``lam`` (Knuth; lam is small here)."""
    if lam <= 0:
        return 0
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


if __name__ == "__main__":  # python -m cloud.orrery.simcli demo|sim|plot …
    _app = typer.Typer(add_completion=False)
    _app.command("demo")(demo)
    _app.command("sim")(sim)
    _app.command("plot")(readings_plot)
    sys.exit(_app())
