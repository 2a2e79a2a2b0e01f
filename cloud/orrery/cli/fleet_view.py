"""How a virtual fleet's run looks to a person (``orrery demo``, ``orrery sim``): the live
progress display while it runs, and its report at the end."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import sqlalchemy as sa
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cloud.orrery.clock import fmt_ms

if TYPE_CHECKING:
    from cloud.orrery.sim.fleet import VirtualFleet
    from cloud.orrery.sim.report import Report


def _states_text(states: dict) -> str:
    order = ("succeeded", "offline-pending", "installing", "acked", "sent", "queued", "failed",
             "rolled-back")  # fmt: skip
    keys = sorted(states, key=lambda k: (order.index(k) if k in order else 99, k))
    return ", ".join(f"{states[k]} {k}" for k in keys) or "-"


def render(rep: Report, con: Console) -> None:
    """Print a report."""
    con.rule("[bold]Orrery fleet report")
    con.print(
        f"{rep.devices} virtual boards, {fmt_ms(rep.virtual_ms)} of virtual time in "
        f"{rep.wall_s:.0f} s of real time."
    )
    if rep.rollout:
        r = rep.rollout
        if r.get("preview"):
            con.print(f"[bold]Preview of rollout {r['id']}[/] before it started (its boards' "
                      "own readings replayed through both versions):")  # fmt: skip
            for line in r["preview"]:
                con.print(f"  {line}", highlight=False)
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
    if rep.bundle:
        b = rep.bundle
        t = Table(title=f"Bundle rollout {b['id']}: {b['bundle']} over the air, in waves",
                  title_justify="left")  # fmt: skip
        t.add_column("wave")
        t.add_column("size")
        t.add_column("devices", justify="right")
        t.add_column("states")
        for w in b["waves"]:
            t.add_row(str(w["wave"]), w["size"], str(w["devices"]), _states_text(w["states"]))
        con.print(t)
        on = ", ".join(f"{n} on app {v}" for v, n in sorted(b["boards_on"].items(), key=lambda kv: -kv[1]))
        con.print(
            f"bundle rollout {b['state']}{' (' + b['reason'] + ')' if b['reason'] else ''}: "
            f"{b['converged']}; {b['chunks']:,} chunks acked; boards report {on}"
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


def show_report(rep: Report, t0: float, con: Console, as_json: bool) -> None:
    """Print a run's report (JSON on stdout, or rendered on ``con``), with the real time since
    ``t0``; exit 1 unless every reading is accounted for."""
    rep.wall_s = round(time.monotonic() - t0, 1)
    if as_json:
        print(json.dumps(rep.as_dict(), default=str))
    else:
        render(rep, con)
    if not rep.ok:
        raise typer.Exit(1)


class Display:
    """A rich live view of a running fleet: a progress bar over the scenario and its numbers."""

    def __init__(
        self, fleet: VirtualFleet, total_ms: int, con: Console, enabled: bool = True
    ) -> None:
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
        """A new phase of the scenario (and the rollout it is about)."""
        self.phase = phase
        if rid is not None:
            self.rid = rid
        self.update(force=True)

    def update(self, force: bool = False) -> None:
        """Redraw, at most about three times a second unless ``force``."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.3:
            return
        self._last = now
        self.live.update(self._view())

    def _view(self):
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
