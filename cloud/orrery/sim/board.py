"""One virtual board: the firmware node on the simulation HAL with its flash in a directory and a
``SimLink``, and the greenhouse its sensors see."""

from __future__ import annotations

import binascii
import functools
import random
import struct
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cloud.orrery.sim.hal import SimHal, VirtualClock
from cloud.orrery.sim.link import SimLink
from firmware import slots
from firmware.node import Node
from firmware.records import RECORD_SIZE, crc16
from firmware.store import Store
from tools.board import profiles

PROFILE_NAME = "esp32-devkitc"
PROFILE = profiles.load(PROFILE_NAME)
FLEET = "sim"  # the fleet id of the virtual boards: "sim-<run id>" (see VirtualFleet)
POWER_CUTS = ("torn_record", "garbage_record", "torn_cursor")  # what a random cut tears
TORN_CHUNK = "torn_chunk"  # a cut while an app bundle chunk is written (asked for by name)
SMALL_FLASH = (51, 4)  # readings per segment, segments: a board with a tiny flash partition
UNWIRED = ("adc1", "adc2", "adc3")  # no sensor on these channels of the virtual boards


def climate(hal: SimHal, rng: random.Random) -> dict:
    """Give one board's sensors a plausible greenhouse of their own; returns what was chosen.

    Temperature (centi-degrees C): a mean between 19 and 29 °C, a daily swing compressed to a
    period of 40 min to 3 h so that a demo of a virtual hour or two shows it, noise of
    0.03–0.1 °C, a slow random-walk drift of up to ±1.5 °C, and rare spikes. Humidity follows
    the temperature inverted. The soil probe (adc0) dries and is watered around its level.
    Nothing is wired to adc1..adc3: every read there fails (a workflow that needs them fails
    its health window).
    Spikes and dropouts keep SimHal's per-board rates (set when the HAL is made).
    """
    period = rng.choice((2400, 3600, 5400, 7200, 10800))
    temp = {
        "base": rng.randrange(1900, 2900),
        "amplitude": rng.randrange(250, 900),
        "period_s": period,
        "noise": rng.randrange(3, 10),
        "drift": rng.randrange(30, 150),
        "spike": rng.randrange(800, 2500),
    }
    hal.configure("temp", **temp)
    hal.configure(
        "humidity",
        base=rng.randrange(4500, 7000),
        amplitude=-rng.randrange(400, 1500),
        period_s=period,
        noise=rng.randrange(8, 25),
    )
    hal.configure("adc0", base=rng.randrange(900, 2600), amplitude=rng.randrange(100, 400))
    for ch in UNWIRED:
        hal.configure(ch, dropout_ppm=1_000_000)
    return temp


@functools.cache
def mpy_version() -> str | None:
    """The ``.mpy`` version mpy-cross writes ("6.3"), which a virtual board reports it loads
    (the bundles it is sent are built with that mpy-cross); None without an mpy-cross."""
    from tools.board.deploy import DeployError, mpy_cross_version

    try:
        _, major, sub = mpy_cross_version()
    except (DeployError, OSError):
        return None
    return f"{major}.{sub}"


# --- one board ---------------------------------------------------------------------------------


@dataclass
class BoardStats:
    """What happened to one board over a run (beyond its store and link counters)."""

    boots: int = 1
    trial_crashes: int = 0  # trial boots of a new app bundle that crashed (``trial_crash``)
    power_cuts: Counter = field(default_factory=Counter)
    outages: int = 0
    away_ms: int = 0
    sent: Counter = field(default_factory=Counter)  # the link counters of earlier boots
    published: int = 0  # messages the links of earlier boots delivered


class VirtualBoard:
    """One board: the firmware node on the simulation HAL, flash in ``root``, a SimLink.

    ``clock`` is the fleet's virtual clock; ``synced`` False makes a board whose clock is never
    set (``wall_ms`` returns None); ``skew_ms`` one whose clock is set that far off the true time
    (a wrong NTP server or RTC), read at each boot's first connect: change it, then ``reboot``,
    to correct it. ``flash`` sizes the flash log as (readings per segment,
    segments), (204, 64) by default as on a DevKitC; a small one fills during a long outage.
    ``record`` keeps raw samples and state changes for a plot.

    Sensors (``climate``): noise and drift everywhere, spikes at ``spike_ppm`` on every
    channel, dropouts at ``dropout_ppm`` on the temperature sensor only. (The rollout health
    gate compares failed reads per device between upgraded and not-yet-upgraded boards, so
    dropouts on channels that only the new version reads would look like a regression.)

    App bundles: each boot chooses its slot as ``/boot.py`` does (``firmware.slots.
    select_slot`` on the board's flash), so ``app.json`` decides the version the board
    reports, its trial boot and the fall back to the previous slot; the code that runs is
    the repository's whatever the slot. ``trial_crash`` makes the trial boot of a new bundle
    crash before it confirms itself: the board boots again at once, back into its previous
    slot, and acks the install FAILED "rolled back: ...". ``mpy`` is the ``.mpy`` version it
    reports (``mpy_version()`` by default).
    """

    def __init__(
        self,
        name: str,
        root: Path,
        clock: VirtualClock,
        host: str,
        port: int,
        key: bytes,
        *,
        seed: int = 1,
        fleet: str = FLEET,
        label: str | None = None,
        synced: bool = True,
        skew_ms: int = 0,
        flash: tuple[int, int] | None = None,
        spike_ppm: int = 1000,
        dropout_ppm: int = 1000,
        health_window_s: int = 60,
        record: bool = False,
        trial_crash: bool = False,
        mpy: str | None = None,
    ) -> None:
        self.name = name
        self.root = root
        self.clock = clock
        self.host = host
        self.port = port
        self.synced = synced
        self.skew_ms = skew_ms
        self.flash = flash
        self.rng = random.Random(f"{seed}:{label or name}")  # label: the same climate every run
        self.cfg = {
            "device_id": name,
            "fleet": fleet,
            "broker": {"host": host, "port": port, "tls": False},
            "hmac_key": key.hex(),
            "board": PROFILE_NAME,
            "health_window_s": health_window_s,
        }
        self.mpy = mpy or mpy_version()
        self.trial_crash = trial_crash
        # no output log: nothing of the fleet reads it (``record`` keeps what a plot needs)
        self.hal = SimHal(
            PROFILE, seed, clock.ticks_ms, dropout_ppm=0, spike_ppm=spike_ppm, log_limit=0
        )
        self.climate = climate(self.hal, self.rng)
        self.hal.configure("temp", dropout_ppm=dropout_ppm)
        self.record = False
        self.raw: list[tuple[int, int, int | None]] = []  # (unix ms, channel, sample) recorded
        self.states: list[tuple[int, str, int | None]] = []  # (unix ms, state, version)
        if record:
            self.start_recording()
        self.stats = BoardStats()
        self.away = False
        self.away_since = 0
        self.dead_port = 0
        self.resets = 0  # resets the firmware asked for (a reboot command)
        self.reset_due = False
        # the last power cut's write: (segment file, its size after, seq written, acked then)
        self.cut_info: tuple[str, int, int, int] | None = None
        # with a lag probe: the real time (seconds since the fleet's lag_t0) at which each seq
        # was first held (see bench.fleet.lags)
        self.lag_seq: array | None = None
        self.lag_t: array | None = None
        self.lag_last = 0
        self.link: SimLink
        self.node: Node
        self._boot()

    def _wall_ms(self) -> int | None:
        t = self.clock.unix_ms()
        return t + self.skew_ms if self.synced and t is not None else None

    def _boot(self) -> None:
        slots.select_slot(str(self.root))  # /boot.py
        if self.trial_crash and slots.load_app(str(self.root)).get("trial_booted"):
            # the new bundle's trial boot crashes before it confirms itself: the board
            # resets, and this boot goes back to the previous slot
            self.stats.trial_crashes += 1
            self.stats.boots += 1
            slots.select_slot(str(self.root))
        self.link = SimLink(self.name, self.host, self.port, timeout_ms=3000)
        self.node = Node(
            self.cfg,
            self.hal,
            str(self.root),
            self.link,
            self.clock.ticks_ms,
            wall_ms=self._wall_ms,
            reset=self._reset,
            rand4=lambda: self.rng.randbytes(4),
        )
        self.node.mpy = self.mpy  # CPython has no sys.implementation._mpy; reported on connect
        if self.flash is not None:
            self.node.store.close()
            self.node.store = Store(
                str(self.root / "store"), seg_records=self.flash[0], max_segments=self.flash[1]
            )
        self.link.will = self.node.will()
        self.node.wf.boot()
        self._state: str | None = None
        self._version: int | None = None

    def _reset(self) -> None:
        # machine.reset() from the link thread: the board reboots once this link turn is over
        self.resets += 1
        self.reset_due = True

    def start_recording(self) -> None:
        """Keep every raw sample (before the filters: ``raw``, as ``(unix ms, channel index,
        value or None)``) and every change of workflow state or version (``states``, as
        ``(unix ms, state, version)``) from now on, for a plot; ``stop_recording`` ends it."""
        if self.record:
            return
        self.record = True
        read, raw, clock = self.hal.read, self.raw, self.clock

        def recording_read(index):
            v = read(index)
            raw.append((clock.unix_ms() or 0, index, v))
            return v

        self.hal.read = recording_read  # type: ignore[method-assign]

    @property
    def boot_id(self) -> int:
        return self.node.boot_id

    @property
    def version(self) -> int | None:
        """The running workflow's version (None without one)."""
        p = self.node.wf.prog
        return p.version if p else None

    @property
    def fw(self) -> str:
        """The app bundle version it runs and reports (``app.json``; the firmware's own
        version when none was installed)."""
        return self.node.fw

    def step(self) -> None:
        """One pass of the board's main loop (sampling, executor, store, commands)."""
        self.node.step_main()
        if self.record:
            ex = self.node.wf.ex
            s = ex.state_name() if ex is not None else None
            v = self.version
            if s != self._state or v != self._version:
                self._state, self._version = s, v
                self.states.append((self.clock.unix_ms() or 0, s or "-", v))

    def stop_recording(self) -> None:
        """Stop keeping raw samples (what was recorded stays)."""
        if self.record:
            self.record = False
            del self.hal.read  # the class's read again

    def link_turn(self, max_ops: int = 64) -> int:
        """Let the link thread run until it has nothing to do (at most ``max_ops`` messages)."""
        n = 0
        node = self.node
        while n < max_ops:
            try:
                if not node.step_link():
                    break
            except Exception as e:  # as the board's link loop: survive anything the network does
                self.link.last_error = repr(e)
                self.link.close()
                break
            n += 1
        self.link.flush()
        # The store reopens its reader for the next batch anyway (the newest segment has grown
        # by then): on CPython an open reader holds a descriptor and a 4 KiB buffer per board.
        self.node.store._close_reader()
        if self.reset_due:
            self.reset_due = False
            self.reboot()
        return n

    # --- faults -----------------------------------------------------------------------------

    def go_away(self, dead_port: int) -> None:
        """Cut the board's network: the socket drops (the broker publishes the will) and every
        reconnect is refused until ``come_back``."""
        self.dead_port = dead_port
        if not self.away:
            self.away = True
            self.away_since = self.clock.unix_ms() or 0
            self.stats.outages += 1
        self.link.port = dead_port
        self.link.close()

    def come_back(self) -> None:
        """Restore the network: the board reconnects at its next backoff retry."""
        if self.away:
            self.stats.away_ms += (self.clock.unix_ms() or 0) - self.away_since
        self.away = False
        self.link.port = self.port

    def reboot(self) -> None:
        """A clean reset: RAM is lost, flash is kept; the node boots again with a new boot id."""
        self.stats.sent.update(self.link.sent)
        self.stats.published += self.link.published
        self.link.close()  # the broker sees the connection drop and publishes the will
        self.node.store.close()
        self._boot()
        if self.away:
            self.link.port = self.dead_port
        self.stats.boots += 1

    def power_cut(self, kind: str | None = None) -> str:
        """Cut the power in the middle of a flash write, then boot again.

        ``kind``: ``torn_record`` (the next reading's record, cut at a random byte: it was
        never accepted, recovery ignores it), ``garbage_record`` (a full-length record whose
        bytes are wrong: recovery cannot tell it from a sent one, so its seq is reported
        lost as "corrupt"), or ``torn_cursor`` (the newest ack-cursor entry cut short:
        recovery falls back to the entry before, and the board sends those readings again,
        which the companion drops as duplicates), or ``torn_chunk`` (never chosen at random:
        the app bundle chunk being appended to ``bundle.part`` is cut short, which the board
        cuts off when the download resumes). Random if None. The flash (the board's
        directory, an app bundle download on it too) is kept.
        """
        kind = kind or self.rng.choice(POWER_CUTS)
        if kind == TORN_CHUNK:
            part = self.root / "bundle.part"
            if part.exists():
                with open(part, "ab") as f:
                    f.write(self.rng.randbytes(self.rng.randrange(1, 200)))
            self.stats.power_cuts[kind] += 1
            self.reboot()
            return kind
        store = self.node.store
        store_dir = self.root / "store"
        rec = self._next_record(store)
        store.close()
        if kind == "torn_cursor":
            # the cut came while the newest ack entry was being written: it is torn, so the
            # board falls back to the entry before and sends those readings again
            path = store_dir / "cursor.log"
            data = path.read_bytes() if path.exists() else b""
            if len(data) >= 7:
                path.write_bytes(data[: len(data) - 7 + self.rng.randrange(1, 7)])
        else:
            segs = sorted(store_dir.glob("*.seg"))
            last = segs[-1] if segs else None
            if last is None or last.stat().st_size >= store._segrec * RECORD_SIZE:
                num = int(last.name[:8]) + 1 if last else 1
                last = store_dir / f"{num:08d}.seg"
            if kind == "torn_record":
                data = rec[: self.rng.randrange(1, RECORD_SIZE)]
            else:
                data = bytearray(rec)
                i = self.rng.randrange(5, RECORD_SIZE)  # the seq stays readable: a torn program
                data[i] ^= 1 << self.rng.randrange(8)
            with open(last, "ab") as f:
                f.write(bytes(data))
            self.cut_info = (last.name, last.stat().st_size, store.last_seq + 1, store.acked)
        self.stats.power_cuts[kind] += 1
        self.reboot()
        return kind

    def _next_record(self, store: Store) -> bytes:
        """The 20 bytes the store would write for its next reading."""
        up = self.node.up
        r = bytearray(RECORD_SIZE)
        r[0] = 0xA7
        struct.pack_into(
            "<IIIHhB", r, 1, store.last_seq + 1, self.node.boot_id, up.s, up.ms, 1234, 0
        )
        c = crc16(r, 0, 18)
        r[18] = c & 0xFF
        r[19] = c >> 8
        return bytes(r)

    def sent(self) -> Counter:
        """Messages this board's links delivered (all boots), by topic kind, and ``records``:
        readings in delivered batches (repeats included)."""
        return self.stats.sent + self.link.sent

    @property
    def published(self) -> int:
        """Messages this board's links delivered (all boots)."""
        return self.stats.published + self.link.published

    def held(self) -> dict[int, tuple[int, int, int, int]]:
        """The valid readings on its flash: ``seq -> (boot, up_ms, value, channel)``.

        Decoded from the segment files directly (magic, CRC-16/CCITT-FALSE via
        ``binascii.crc_hqx``), independently of the store's own reader.
        """
        out: dict[int, tuple[int, int, int, int]] = {}
        for seg in sorted((self.root / "store").glob("*.seg")):
            data = seg.read_bytes()
            data = data[: len(data) - len(data) % RECORD_SIZE]
            for i, (magic, seq, boot, up_s, up_ms, value, ch, crc) in enumerate(
                struct.iter_unpack("<BIIIHhBH", data)
            ):
                o = i * RECORD_SIZE
                if magic == 0xA7 and binascii.crc_hqx(data[o : o + 18], 0xFFFF) == crc:
                    out[seq] = (boot, up_s * 1000 + up_ms, value, ch)
        return out

    def close(self) -> None:
        self.link.close()
        self.node.store.close()
