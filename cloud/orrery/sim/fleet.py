"""The virtual fleet: many boards running the real firmware in one CPython process.

Each ``VirtualBoard`` is ``firmware.node.Node`` (sampler, filters, executor, flash store,
commands, installer) on ``cloud.orrery.sim.hal.SimHal`` (seeded synthetic sensors), talking MQTT
to a real broker through ``SimLink``, which is the board's own ``firmware.link.UmqttLink``
with only the session opening (umqtt.simple's CONNECT/CONNACK) written here for CPython
sockets. No board has a thread: the fleet steps every board's main loop each virtual step
(``step_ms``, 1 s by default, the fastest sampling period of the greenhouse workflows) and
gives each board's link a turn every ``uplink_ms`` of virtual time, staggered across boards.
Each board's "flash" is a directory (on tmpfs when there is one).

Time is virtual and shared: one ``VirtualClock`` for every board, started at the real time and
run ahead of it, and the companion reads the same clock (``SharedClock``, a small memory-mapped
file that a companion process can map), so health windows, soaks, command lifetimes and the
reorder window all count in the same virtual seconds, whatever the speed-up.

Faults: link outages (``go_away``/``come_back``: the board's link points at a dead port and
its socket is dropped, so the broker publishes its will), reboots with power loss mid-write
(``power_cut``: a torn record, a full-length garbage record or a torn ack-cursor entry is
left at the end of the flash log, then the node is created again with a new boot id and
recovers; ``torn_chunk`` tears an app bundle chunk being written instead), trial boots of a
new app bundle that crash (``crash_trials``: the board falls back to its previous slot), clocks
never set (``wall_ms`` returning None), clocks set wrong (``SKEWS``: a
board's wall clock off the true time by minutes to a year; ``correct_clock`` fixes one at its
next boot), and broker restarts.

``VirtualFleet.account`` checks the end-to-end promise: every reading a board accepted (seqs
1..last_seq of its store) is stored in the database exactly once, with the value and uptime
the board stored, or is covered by a permanent-loss record with its reason.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import random
import resource
import select
import shutil
import subprocess
import tempfile
import threading
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from cloud.orrery.clock import fmt_ms, now_ms
from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES
from cloud.orrery.fleet import keys, registry
from cloud.orrery.sim import workflows
from cloud.orrery.sim.board import FLEET, PROFILE_NAME, SMALL_FLASH, VirtualBoard
from cloud.orrery.sim.clock import SharedClock
from cloud.orrery.sim.companion import build_companion, companion_command
from cloud.orrery.sim.hal import VirtualClock
from shared.workflow import compiler

REPO = Path(__file__).resolve().parents[3]
YEAR_MS = 365 * 86_400_000
# how far off a board's clock is set, when it is (a wrong NTP server, an RTC never corrected)
SKEWS = (-400_000, -3_600_000, 3_600_000, YEAR_MS, -YEAR_MS)


def flash_dir(prefix: str = "orrery-fleet-") -> Path:
    """A fresh directory for the boards' flash: on tmpfs (/dev/shm) when there is room."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2**30:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=shm))
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix=prefix))


# Open files a board holds: its socket, the segment it appends to and its ack-cursor log (the
# store's reader is closed after each link turn; the boards' other files are written and
# closed one at a time, the fleet having one thread).
FILES_PER_BOARD = 3
FILES_OF_FLEET = 256  # the fleet's own: database, broker and companion pipes, logs, clock


def files_needed(n: int) -> int:
    """Open files a fleet of ``n`` boards may hold at once."""
    return FILES_OF_FLEET + FILES_PER_BOARD * n


def raise_fd_limit(need: int = 0) -> int:
    """Raise this process's open-file limit to its hard limit, and the hard limit too up to
    ``need`` where that is allowed (root); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    want = hard if hard != inf else max(soft, 65536, need)
    if hard != inf and need > hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Accounting:
    """The end-to-end check of ``VirtualFleet.account``: every accepted reading is stored
    exactly once, or is covered by a permanent loss with its reason, or (a board still away)
    is held on its board, not delivered yet."""

    accepted: int = 0  # readings the boards accepted (sum of their last_seq)
    stored: int = 0  # of those, stored exactly once
    lost: Counter = field(default_factory=Counter)  # reason -> readings
    duplicate_rows: int = 0  # a seq stored more than once (must be 0)
    missing: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # unaccounted
    invented: dict[str, list[int]] = field(default_factory=dict)  # stored, never accepted
    mismatched: dict[str, list[int]] = field(default_factory=dict)  # stored != flash
    lost_but_stored: dict[str, list[int]] = field(default_factory=dict)
    on_boards: int = 0  # held on a board and not delivered yet (it is away): not missing
    duplicates_dropped: int = 0  # repeats the companion recognised and dropped
    without_time: int = 0  # stored readings without an event time (clock never set)
    unknown_devices: int = 0  # readings of devices that are not in the fleet (must be 0)

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.invented
            or self.mismatched
            or self.lost_but_stored
            or self.duplicate_rows
            or self.unknown_devices
        )

    def problems(self) -> list[str]:
        out = []
        for what in ("missing", "invented", "mismatched", "lost_but_stored"):
            d = getattr(self, what)
            for name, items in list(d.items())[:5]:
                out.append(f"{name}: {what} {items[:8]}")
        if self.duplicate_rows:
            out.append(f"{self.duplicate_rows} seqs stored more than once")
        if self.unknown_devices:
            out.append(f"readings of {self.unknown_devices} devices outside the fleet")
        return out


def _ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return [(a, b) for a, b in out]


class VirtualFleet:
    """``n`` virtual boards, a broker, a database and (``start_companion``) the companion.

    Each fleet draws a run id, so that two fleets on one broker never meet: its boards are
    named ``<prefix>0000-<run id>``…, registered in ``db_url`` in fleet ``sim-<run id>``
    (``fleet_id``), and its companion subscribes to that fleet alone, under a client id and a
    shared-subscription group of its own. The boards are flashed with ``flash_workflow``
    (greenhouse@1), which is also pushed to the registry; their sensors depend on ``seed``
    and their number only, not on the run id. With
    ``broker`` None the fleet starts its own Mosquitto on a free port (it can then restart
    it); otherwise ``broker`` is ``(host, port)`` of one that runs already.

    ``step_ms``: virtual time per main-loop pass; ``uplink_ms``: virtual time between two link
    turns of one board. ``speed``: virtual seconds per real second at most (None: as fast as
    the machine goes). ``clockless``: share of boards whose clock is never set; ``skewed``:
    share whose clock is set wrong (by one of ``SKEWS``, in turn); ``start_ms``: the unix ms the
    virtual clock starts at (default now; a time in the past keeps the fleet's whole run
    behind the wall clock, so an operator command's default "up to now" covers it);
    ``small_flash``: share with a tiny flash log (``SMALL_FLASH``: 204 readings, 4 segments of
    51) that an outage of a quarter of an hour fills.
    """

    def __init__(
        self,
        n: int,
        db_url: str,
        *,
        broker: tuple[str, int] | None = None,
        root: Path | None = None,
        seed: int = 1,
        prefix: str = "vb",
        step_ms: int = 1000,
        uplink_ms: int = 60_000,
        speed: float | None = None,
        clockless: float = 0.0,
        skewed: float = 0.0,
        small_flash: float = 0.0,
        spike_ppm: int = 1000,
        dropout_ppm: int = 1000,
        health_window_s: int = 60,
        record: str | None = None,
        secret: bytes | None = None,
        flash_workflow: Path = workflows.GREENHOUSE_V1,
        push: Iterable[Path] = (workflows.GREENHOUSE_V1, workflows.GREENHOUSE),
        max_holding: int = 400,
        lag_probe: int = 0,
        start_ms: int | None = None,
    ) -> None:
        raise_fd_limit(files_needed(n))
        self.rng = random.Random(seed)
        self.seed = seed
        self.run_id = os.urandom(3).hex()
        self.fleet_id = f"{FLEET}-{self.run_id}"
        self.step_ms = step_ms
        self.uplink_ms = uplink_ms
        self.speed = speed
        self.max_holding = max_holding
        self.secret = secret or f"orrery-sim-fleet-secret-{seed:08d}".encode()
        self.db_url = db_url
        self.engine = engine_for(db_url)
        self.own_root = root is None
        self.root = root or flash_dir()
        self.broker_proc = None
        if broker is None:
            from tools.dev.mosquitto import Broker

            self.broker_proc = Broker(
                extra_conf="max_inflight_messages 1000\nmax_queued_messages 100000"
            ).start()
            self.host, self.port = "127.0.0.1", self.broker_proc.port
        else:
            self.host, self.port = broker
        from tools.dev.mosquitto import free_port

        self.dead_port = free_port()
        self.clock = VirtualClock(ticks=5, unix_ms=now_ms() if start_ms is None else start_ms)
        self.t0 = self.clock.unix_ms() or 0
        self.shared = SharedClock(self.root / "clock.bin", create=True, unix_ms=self.t0)
        self.companion_proc: subprocess.Popen | None = None
        self.companion_log = self.root / "companion.log"
        self.service = None
        self.boards: dict[str, VirtualBoard] = {}
        self.passes = 0
        self.real_start = time.monotonic()
        self.step_cpu = 0.0
        self.faults: Counter = Counter()
        self.events: list[tuple[int, str]] = []  # (virtual ms since start, what happened)
        self.lag_wait_s = 0.0  # real seconds spent waiting for the companion
        self._agenda: list[tuple[int, int, Callable[[], object]]] = []  # (due ms, n, action)
        self._agenda_n = 0
        self._base_published = 0
        self.commits_file = self.root / "commits.jsonl"
        blob = compiler.compile(flash_workflow.read_bytes()).blob
        with self.engine.begin() as conn:
            for f in push:
                registry.push(conn, f.read_bytes(), None, self.t0)
        self.lag_t0 = time.time()  # the lag probes' times count from here (float32 seconds)
        self.rss_setup = rss_bytes()  # before the boards: the fleet's broker, database, registry
        labels = [f"{prefix}{i:04d}" for i in range(n)]
        names = [f"{label}-{self.run_id}" for label in labels]
        k_clockless = round(n * clockless)
        k_small = round(n * small_flash)
        order = names[:]
        self.rng.shuffle(order)
        clockless_set = set(order[:k_clockless])
        small_set = set(order[k_clockless : k_clockless + k_small])
        k_skewed = round(n * skewed)
        skew_of = {
            name: SKEWS[i % len(SKEWS)]
            for i, name in enumerate(order[k_clockless + k_small :][:k_skewed])
        }
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(DEVICES),
                [{"name": nm, "fleet": self.fleet_id, "profile": PROFILE_NAME, "created_ms": self.t0}
                 for nm in names],
            )  # fmt: skip
        for i, name in enumerate(names):
            (self.root / name / "wf").mkdir(parents=True, exist_ok=True)
            (self.root / name / "wf" / "current.bin").write_bytes(blob)
            b = VirtualBoard(
                name, self.root / name, self.clock, self.host, self.port,
                keys.device_key(self.secret, name), seed=seed * 100_003 + i, fleet=self.fleet_id,
                label=labels[i], synced=name not in clockless_set, skew_ms=skew_of.get(name, 0),
                flash=SMALL_FLASH if name in small_set else None,
                spike_ppm=spike_ppm, dropout_ppm=dropout_ppm, health_window_s=health_window_s,
                record=name == record,
            )  # fmt: skip
            if lag_probe and i % lag_probe == 0:
                b.lag_seq, b.lag_t = array("i"), array("f")  # seq, real s since lag_t0
            self.boards[name] = b
        self._order = list(self.boards.values())

    # --- time --------------------------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        """Virtual unix ms."""
        return self.clock.unix_ms() or 0

    @property
    def elapsed_ms(self) -> int:
        """Virtual ms since the fleet was made."""
        return self.now_ms - self.t0

    def log(self, what: str) -> None:
        """Note a scenario event (shown in reports)."""
        self.events.append((self.elapsed_ms, what))

    # --- the companion ---------------------------------------------------------------------

    def start_companion(
        self,
        process: bool = True,
        client_id: str | None = None,
        timeout_s: float = 60,
        log_level: str = "WARNING",
        reconcile_every_s: float = 1.0,
    ) -> None:
        """Start the companion on the virtual clock: ``orrery serve``'s service (ingest and
        rollout orchestrator) in its own process (default) or in a thread of this one; return
        once it is subscribed, so it misses nothing the boards send. It serves this fleet only,
        in a shared-subscription group of this run (``orrery-<fleet id>``, also the default
        client id); its reconciler makes a pass every ``reconcile_every_s`` of real time."""
        group = f"orrery-{self.fleet_id}"
        client_id = client_id or group
        self.shared.reset()
        if process:
            env = dict(os.environ, ORRERY_SECRET=self.secret.decode(), PYTHONUNBUFFERED="1")
            self.companion_proc = subprocess.Popen(
                companion_command(self.db_url, self.host, self.port, self.root / "clock.bin",
                                  client_id=client_id, fleet=self.fleet_id, group=group,
                                  commits_file=self.commits_file, log_level=log_level,
                                  reconcile_every_s=reconcile_every_s),
                env=env, stdout=subprocess.DEVNULL,
                stderr=open(self.companion_log, "ab"),  # noqa: SIM115
                cwd=str(REPO),
            )  # fmt: skip
        else:
            self.service = build_companion(
                self.engine, self.secret, self.host, self.port, self.shared, client_id=client_id,
                fleet=self.fleet_id, group=group, reconcile_every_s=reconcile_every_s,
            )  # fmt: skip
            threading.Thread(target=self.service.run, daemon=True).start()
        self._wait_subscribed(0, timeout_s)
        self._base_published = self.published()

    def _wait_subscribed(self, before: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.shared.subscribed <= before:
            if self.companion_proc is not None and self.companion_proc.poll() is not None:
                raise RuntimeError(f"the companion exited: {self.companion_said()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the companion did not subscribe at the broker {self.host}:{self.port} "
                    f"within {timeout_s:g} s: {self.companion_said()}"
                )
            time.sleep(0.02)

    def companion_tail(self, n: int = 2000) -> str:
        """The end of the companion process's log."""
        try:
            return self.companion_log.read_text()[-n:]
        except OSError:
            return ""

    def board_named(self, name: str) -> str | None:
        """The board called ``name``, or ``<prefix>NNNN`` without this run's id; None if none."""
        if name in self.boards:
            return name
        full = f"{name}-{self.run_id}"
        return full if full in self.boards else None

    def companion_said(self) -> str:
        """The last line of the companion process's log (its last error, if it failed), or
        where the whole log is."""
        lines = [ln for ln in self.companion_tail().splitlines() if ln.strip()]
        return lines[-1] if lines else f"nothing in its log {self.companion_log}"

    def companion_alive(self) -> bool:
        if self.companion_proc is not None:
            return self.companion_proc.poll() is None
        return self.service is not None

    def stop_companion(self) -> float | None:
        """Stop the companion (it stores and acks what it holds first); returns its CPU seconds
        when it ran as a process."""
        cpu = None
        if self.companion_proc is not None:
            cpu = process_cpu_s(self.companion_proc.pid)
            self.companion_proc.terminate()
            try:
                self.companion_proc.wait(60)
            except subprocess.TimeoutExpired:
                self.companion_proc.kill()
                self.companion_proc.wait()
            self.companion_proc = None
        if self.service is not None:
            self.service.stop()
            time.sleep(0.3)
            self.service = None
        return cpu

    def published(self) -> int:
        """Messages the boards have delivered to the broker (PUBACKed)."""
        return sum(b.published for b in self._order)

    def unprocessed(self) -> int:
        """Messages delivered to the broker that the companion has not stored yet (about: the
        broker's wills are not counted)."""
        return self.published() - self._base_published - self.shared.processed

    # --- running -----------------------------------------------------------------------------

    def run(self, ms: int, on_pass: Callable[[], None] | None = None) -> None:
        """Advance virtual time by ``ms``: every board runs its main loop each ``step_ms``.

        A board's link gets a turn every ``uplink_ms`` (its readings go out in batches then),
        and at once whenever it has something to answer: a message waiting on its socket (a
        command), an ack or a resend queued, or no connection (it retries on its own backoff).
        Paced to ``speed`` and to what the companion keeps up with.
        """
        step = self.step_ms
        every = max(1, self.uplink_ms // step)
        boards = self._order
        for _ in range(max(1, ms // step)):
            self._pace()
            t = time.process_time()
            self.clock.advance(step)
            self.shared.set(self.now_ms)
            agenda = self._agenda
            while agenda and agenda[0][0] <= self.elapsed_ms:
                heapq.heappop(agenda)[2]()
            p = self.passes
            now = time.time() - self.lag_t0
            waiting = self._readable()
            for i, b in enumerate(boards):
                b.step()
                if b.lag_seq is not None:
                    s = b.node.store.last_seq
                    if s != b.lag_last:
                        b.lag_last = s
                        b.lag_seq.append(s)
                        b.lag_t.append(now)
                n = b.node
                link = b.link
                if (
                    (p + i) % every == 0
                    or not link.connected
                    or n.outbox
                    or n.resends
                    or link.fd in waiting
                ):
                    b.link_turn()
            self.passes = p + 1
            self.step_cpu += time.process_time() - t
            if on_pass is not None:
                on_pass()

    def _readable(self) -> set[int]:
        """Descriptors of board links with bytes waiting (one poll for the whole fleet)."""
        poller = select.poll()
        n = 0
        out: set[int] = set()
        for b in self._order:
            fd = b.link.fd
            if fd >= 0:
                poller.register(fd, select.POLLIN)
                n += 1
            elif fd == -2:
                out.add(-2)  # bytes already read into the link's buffer
        if n:
            out.update(fd for fd, _ in poller.poll(0))
        return out

    def _pace(self) -> None:
        if self.speed:
            ahead = self.elapsed_ms / 1000 / self.speed - (time.monotonic() - self.real_start)
            if ahead > 0:
                time.sleep(min(ahead, 0.5))
        if self.max_holding and self.shared.holding > self.max_holding and self.companion_alive():
            t = time.monotonic()
            last, since = self.shared.processed, t
            while self.shared.holding > self.max_holding and self.companion_alive():
                time.sleep(0.01)
                now = time.monotonic()
                if self.shared.processed != last:
                    last, since = self.shared.processed, now
                elif now - since > 300:
                    raise RuntimeError(
                        f"the companion stored nothing for 5 minutes: {self.companion_tail()}"
                    )
            self.lag_wait_s += time.monotonic() - t

    def stored(self) -> int:
        """Readings the companion has stored (unique), from the database."""
        with self.engine.connect() as c:
            return int(
                c.execute(sa.text("SELECT coalesce(sum(received), 0) FROM devices")).scalar()
            )

    def wait(
        self, pred: Callable[[], bool], max_ms: int, check_every_ms: int = 5000,
        on_pass: Callable[[], None] | None = None,
    ) -> bool:  # fmt: skip
        """Run the fleet until ``pred()`` (checked every ``check_every_ms`` of virtual time) or
        ``max_ms`` of virtual time passed; returns whether ``pred`` came true."""
        end = self.elapsed_ms + max_ms
        while True:
            if pred():
                return True
            if self.elapsed_ms >= end:
                return False
            self.run(check_every_ms, on_pass)

    # --- faults ------------------------------------------------------------------------------

    def at(self, after_ms: int, action: Callable[[], object]) -> None:
        """Run ``action`` once ``after_ms`` of virtual time from now has passed (between two
        passes of the fleet)."""
        self._agenda_n += 1
        heapq.heappush(self._agenda, (self.elapsed_ms + after_ms, self._agenda_n, action))

    def pending_actions(self) -> int:
        """Scheduled actions not run yet."""
        return len(self._agenda)

    def go_away(self, name: str, for_ms: int | None = None) -> None:
        """Cut a board's network (for ``for_ms`` of virtual time, else until ``come_back``)."""
        self.boards[name].go_away(self.dead_port)
        self.faults["outages"] += 1
        self.log(f"{name} offline" + (f" for {fmt_ms(for_ms)}" if for_ms else ""))
        if for_ms is not None:
            self.at(for_ms, lambda: self.come_back(name))

    def come_back(self, name: str) -> None:
        """Restore a board's network."""
        if self.boards[name].away:
            self.boards[name].come_back()
            self.log(f"{name} back online")

    def power_cut(self, name: str, kind: str | None = None) -> str:
        """Cut a board's power mid-write and boot it again (see ``VirtualBoard.power_cut``)."""
        kind = self.boards[name].power_cut(kind)
        self.faults["power_cuts"] += 1
        self.faults[f"power_cut:{kind}"] += 1
        self.log(f"{name} power cut ({kind.replace('_', ' ')}), rebooted")
        return kind

    def crash_trials(self, names: Iterable[str]) -> None:
        """Make these boards' trial boots of a new app bundle crash before they confirm
        themselves (``VirtualBoard.trial_crash``): each falls back to its previous slot and acks
        the install FAILED "rolled back: ..."."""
        names = list(names)
        for name in names:
            self.boards[name].trial_crash = True
        self.faults["trial_crash_boards"] += len(names)
        self.log(f"{len(names)} board(s) will crash in a bundle's trial boot")

    @staticmethod
    def quiet(b: VirtualBoard) -> bool:
        """No health window running and no command or ack held in RAM, nor an install halfway
        through its passes (the node's job): a power cut now loses nothing a rollout waits for.
        (A cut inside an install or its health window is an install failure by design, answered
        FAILED by the board after it booted again; and an OK ack still in RAM would be lost.)"""
        n = b.node
        return (
            n.wf.trial is None
            and n.job is None
            and not n.outbox
            and not n.inbox
            and not n.resends
        )

    def power_cut_later(self, name: str, after_ms: int, kind: str | None = None) -> None:
        """Schedule a power cut; it waits for the board to be ``quiet``."""

        def cut() -> None:
            if self.quiet(self.boards[name]):
                self.power_cut(name, kind)
            else:
                self.at(self.step_ms, cut)

        self.at(after_ms, cut)

    def correct_clock(self, name: str) -> None:
        """Set a board's clock right: it takes the true time at its next boot (``reboot``)."""
        b = self.boards[name]
        if b.skew_ms:
            self.log(f"{name} clock corrected ({b.skew_ms / 1000:+.0f} s off until its next boot)")
        b.skew_ms = 0

    def kill_broker(self) -> bool:
        """SIGKILL our own Mosquitto (a crash: what it holds since its last save is gone) and
        start it again; False when the broker is someone else's. Nothing waits for the
        companion: it reconnects on its own backoff, and boards may come back before it."""
        if self.broker_proc is None:
            return False
        self.broker_proc.kill()
        self.broker_proc.start()
        self.faults["broker_kills"] += 1
        self.log("broker killed (-9) and started again")
        return True

    def restart_broker(self, wait_for_companion: bool = True) -> bool:
        """Restart our own Mosquitto (SIGTERM: it saves its sessions; then start it again);
        False when the broker is someone else's.

        With ``wait_for_companion`` the boards wait (real time) until the companion has
        subscribed again. Mosquitto 2.0 does not persist shared subscriptions, so until the
        companion re-subscribes, what boards publish has no subscriber and the broker acks and
        drops it: readings come back through the reconciler's resends, but a command ack, a
        loss report or a state would be gone for good (a rollout member then waits for its
        timeout). Without the wait, that race is simulated as it is.
        """
        if self.broker_proc is None:
            return False
        before = self.shared.subscribed
        self.broker_proc.restart()
        self.faults["broker_restarts"] += 1
        self.log("broker restarted")
        if wait_for_companion and self.companion_alive():
            self._wait_subscribed(before, 60)
        return True

    # --- the operator ------------------------------------------------------------------------

    def operator(self):
        """An orchestrator for operator actions (create, start, pause …) on the virtual clock."""
        from cloud.orrery.fleet.rollout.orchestrator import Orchestrator

        return Orchestrator(self.engine, self.secret, owner="operator", clock=self.clock.unix_ms)

    def push(self, definition: bytes) -> str:
        """Push a workflow version to the registry; returns ``name@version``."""
        with self.engine.begin() as conn:
            r = registry.push(conn, definition, None, self.now_ms)
        return f"{r.name}@{r.version}"

    def rollout(
        self, workflow_ref: str, target: str | None = None, preview: bool = False, **kw
    ) -> int:
        """Create and start a rollout (``Orchestrator.create`` options; the target defaults to
        this fleet); returns its id. ``preview``: first preview it over the fleet's whole run
        (stored with the rollout, as ``orrery rollout preview`` does)."""
        target = target or f"fleet={self.fleet_id}"
        o = self.operator()
        plan = o.create(workflow_ref, target, **kw)
        assert plan.rollout_id is not None
        if preview:
            from cloud.orrery.fleet.preview import stored

            rep = stored.preview(self.engine, plan.rollout_id, self.t0, self.now_ms + 1,
                                 actor="operator", clock=self.clock.unix_ms)  # fmt: skip
            self.log(f"rollout {plan.rollout_id} previewed: {rep['verdict']}")
        o.start(plan.rollout_id)
        self.log(f"rollout {plan.rollout_id} of {workflow_ref} started: "
                 + ", ".join(f"wave {w['wave']} {w['count']}" for w in plan.waves))  # fmt: skip
        return plan.rollout_id

    def rollout_state(self, rid: int) -> tuple[str, str | None, int]:
        """(state, reason, current wave 1-based) of a rollout."""
        s, r, w = self.rows("SELECT state, reason, wave FROM rollouts WHERE id = :r", r=rid)[0]
        return s, r, w + 1

    def member_states(self, rid: int) -> dict[str, str]:
        """Device name -> its state in a rollout."""
        return dict(self.rows(
            "SELECT d.name, m.state FROM rollout_devices m JOIN devices d ON d.id = m.device_id"
            " WHERE m.rollout_id = :r", r=rid))  # fmt: skip

    def summary(self, rid: int) -> dict:
        """The orchestrator's summary of a rollout (per wave, converged text)."""
        with self.engine.connect() as c:
            return self.operator().summary(c, rid)

    def online_count(self) -> int:
        """Devices the companion sees online."""
        return int(self.rows("SELECT count(*) FROM devices WHERE online")[0][0])

    def on_version(self, version: int) -> int:
        """Boards whose running workflow has this version (from the boards themselves)."""
        return sum(1 for b in self._order if b.version == version)

    def online(self) -> list[VirtualBoard]:
        return [b for b in self._order if not b.away]

    # --- the database ------------------------------------------------------------------------

    def rows(self, sql: str, **kw) -> list:
        with self.engine.connect() as c:
            return list(c.execute(sa.text(sql), kw).all())

    def catch_up(self, timeout_s: float = 60, quiet_s: float = 0.3) -> bool:
        """Wait (real time, the fleet stopped) until the companion has stored what the boards
        delivered: it holds nothing and has stored nothing more for ``quiet_s``. (Counting
        messages is not enough: the broker drops what arrives while no one is subscribed, and
        redelivers what was in flight when a connection broke.) False on timeout."""
        deadline = time.monotonic() + timeout_s
        last, since = self.shared.processed, time.monotonic()
        while True:
            now = time.monotonic()
            if now > deadline or not self.companion_alive():
                return False
            p = self.shared.processed
            if p != last or self.shared.holding:
                last, since = p, now
            elif now - since >= quiet_s:
                return True
            time.sleep(0.02)

    def freeze(self) -> None:
        """Take the sensors away (every read is a dropout): the boards keep running, answer
        commands and deliver their backlog, but accept no new reading. For a final count."""
        for b in self._order:
            for ch in range(len(b.hal.channel_names)):
                b.hal.configure(ch, dropout_ppm=1_000_000)

    def drain(self, max_ms: int = 600_000, on_pass: Callable[[], None] | None = None) -> bool:
        """Run until ``settled``: every board that is not away has delivered everything and the
        companion has stored it and reconciled it, with no gap open; at most ``max_ms`` of
        virtual time."""
        end = self.elapsed_ms + max_ms
        while True:
            self.catch_up()
            if self.unsettled(reconciled=False) is None and self.reconciled():
                if self.settled():
                    return True
            if self.elapsed_ms >= end:
                return False
            self.run(self.uplink_ms + self.step_ms, on_pass)

    def reconciled(self, timeout_s: float = 10) -> bool:
        """Wait (real time, the fleet stopped) until the companion's reconciler has looked at
        every device of this fleet since the last message it stored about it (none is
        ``dirty``); False on timeout or when no companion runs.

        Only then does "no gap open" mean that no reading is missing: a hole becomes a gap at a
        reconcile pass, once every ``reconcile_every_s`` of real time, and the fleet may run
        minutes of virtual time between two passes (``_pace`` runs it unpaced until it has
        caught up with real time, e.g. after the companion was restarted)."""
        deadline = time.monotonic() + timeout_s
        q = sa.select(sa.func.count()).where(DEVICES.c.fleet == self.fleet_id,
                                             DEVICES.c.dirty.is_(True))  # fmt: skip
        while self.companion_alive():
            with self.engine.connect() as c:
                if not c.execute(q).scalar():
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return False

    def settled(self) -> bool:
        """Every board that is not away has delivered its backlog and acks, and the companion
        has stored and reconciled every delivered reading, with no gap still open."""
        return self.unsettled() is None

    def unsettled(self, reconciled: bool = True) -> str | None:
        """Why the fleet is not ``settled`` yet (None if it is); with ``reconciled=False``,
        not counting devices the reconciler has not looked at since their last message."""
        for b in self._order:
            if b.away:
                continue
            n = b.node
            if not b.link.connected:
                return f"{b.name}: not connected ({b.link.last_error})"
            if n.store.backlog():
                return f"{b.name}: backlog {n.store.backlog()}"
            if n.outbox or n.resends or n.store.losses() or n.ev_count:
                return f"{b.name}: acks, resends, loss reports or events to send"
        if self.shared.holding:
            return f"companion: {self.shared.holding} messages to store"
        gaps = self.rows(
            'SELECT d.name, g."first", g."last", g.status FROM gaps g'
            " JOIN devices d ON d.id = g.device_id LIMIT 3"
        )
        if gaps:
            return "open gaps: " + ", ".join(f"{n} {a}..{z} {s}" for n, a, z, s in gaps)
        if reconciled:
            dirty = self.rows("SELECT name FROM devices WHERE fleet = :f AND dirty LIMIT 3",
                              f=self.fleet_id)  # fmt: skip
            if dirty:
                return "companion: not reconciled yet: " + ", ".join(r[0] for r in dirty)
        return None

    def account(self) -> Accounting:
        """Compare every board's flash with the database (see ``Accounting``)."""
        acc = Accounting()
        ids = dict(self.rows("SELECT name, id FROM devices WHERE fleet = :f", f=self.fleet_id))
        rows: dict[int, list] = defaultdict(list)
        with self.engine.connect() as c:
            for r in c.execute(
                sa.text(
                    "SELECT device_id, seq, boot, up_ms, value, channel, event_ms FROM readings"
                )
            ):
                rows[r[0]].append(r)
        losses: dict[int, list] = defaultdict(list)
        for r in self.rows('SELECT device_id, "first", "last", reason FROM losses'):
            losses[r[0]].append(r)
        for b in self._order:
            did = ids[b.name]
            last = b.node.store.last_seq
            acc.accepted += last
            seen: dict[int, tuple] = {}
            for _, seq, boot, up, value, ch, ev in rows.pop(did, ()):
                if seq in seen:
                    acc.duplicate_rows += 1
                seen[seq] = (boot, up, value, ch)
                if ev is None:
                    acc.without_time += 1
            lost: dict[int, str] = {}
            for _, a, z, why in losses.get(did, ()):
                for s in range(a, z + 1):
                    lost[s] = why
            held = b.held()
            missing, mism, both = [], [], []
            for s in range(1, last + 1):
                got = seen.get(s)
                if got is not None:
                    if s in lost:
                        both.append(s)
                    elif got != held.get(s, got):
                        mism.append(s)
                    else:
                        acc.stored += 1
                elif s in lost:
                    acc.lost[lost[s]] += 1
                elif s > b.node.store.acked and s in held:
                    acc.on_boards += 1
                else:
                    missing.append(s)
            invented = [s for s in seen if s > last or s < 1]
            if missing:
                acc.missing[b.name] = _ranges(missing)
            if invented:
                acc.invented[b.name] = sorted(invented)
            if mism:
                acc.mismatched[b.name] = mism
            if both:
                acc.lost_but_stored[b.name] = both
        acc.unknown_devices = len(rows)
        acc.duplicates_dropped = int(
            self.rows("SELECT coalesce(sum(duplicates), 0) FROM devices")[0][0]
        )
        return acc

    # --- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the companion, the boards and our broker; remove the boards' flash."""
        self.stop_companion()
        for b in self._order:
            with contextlib.suppress(Exception):
                b.close()
        if self.broker_proc is not None:
            self.broker_proc.close()
            self.broker_proc = None
        self.shared.close()
        self.engine.dispose()
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; else the peak from getrusage)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def lag_probe_bytes(boards: Iterable[VirtualBoard]) -> int:
    """Bytes the lag probes' arrays hold (the bench's instrument, not the boards')."""
    n = 0
    for b in boards:
        if b.lag_seq is not None and b.lag_t is not None:
            n += b.lag_seq.buffer_info()[1] * b.lag_seq.itemsize
            n += b.lag_t.buffer_info()[1] * b.lag_t.itemsize
    return n


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
