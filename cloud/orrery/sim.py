"""The virtual fleet: many boards running the real firmware in one CPython process.

Each ``VirtualBoard`` is ``firmware.node.Node`` (sampler, filters, executor, flash store,
commands, installer) on ``firmware.simhal.SimHal`` (seeded synthetic sensors), talking MQTT
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
recovers), clocks never set (``wall_ms`` returning None), and broker restarts.

``VirtualFleet.account`` checks the end-to-end promise: every reading a board accepted (seqs
1..last_seq of its store) is stored in the database exactly once, with the value and uptime
the board stored, or is covered by a permanent-loss record with its reason.
"""

from __future__ import annotations

import binascii
import contextlib
import heapq
import json
import math
import mmap
import os
import random
import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES
from cloud.orrery.fleet import keys, registry
from firmware import link as _fwlink
from firmware.link import UmqttLink
from firmware.node import Node
from firmware.simhal import SimHal, VirtualClock
from firmware.store import RECORD_SIZE, Store, crc16
from shared import workflow

REPO = Path(__file__).resolve().parents[2]
PROFILE_NAME = "esp32-devkitc"
PROFILE = json.loads((REPO / "hw" / "boards" / f"{PROFILE_NAME}.json").read_text())
WORKFLOWS = REPO / "tests" / "golden" / "workflows"
V1 = WORKFLOWS / "greenhouse_v1.json"  # greenhouse@1: what the boards are flashed with
V2 = WORKFLOWS / "greenhouse.json"  # greenhouse@2
FLEET = "sim"
POWER_CUTS = ("torn_record", "garbage_record", "torn_cursor")
SMALL_FLASH = (51, 4)  # readings per segment, segments: a board with a tiny flash partition
UNWIRED = ("adc1", "adc2", "adc3")  # no sensor on these channels of the virtual boards


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- the link: firmware.link.UmqttLink on a CPython socket -----------------------------------


class _Stream:
    """A CPython socket with the MicroPython stream calls UmqttLink makes (``read``, ``write``).

    Reads are buffered (one ``recv`` serves many small packets); writes are buffered too and
    go out when the link next waits for a packet (``_Poller.poll``), so a PUBLISH header and
    its payload leave in one segment. ``read(n)`` reads until ``n`` bytes or EOF; a timeout
    raises OSError, as on a board.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def flush(self) -> None:
        if self.wbuf:
            try:
                self.sock.sendall(self.wbuf)
            except TimeoutError:
                raise OSError(110, "ETIMEDOUT") from None
            finally:
                self.wbuf.clear()

    def read(self, n: int) -> bytes:
        self.flush()
        buf = self.rbuf
        try:
            while len(buf) < n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            raise OSError(110, "ETIMEDOUT") from None
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def write(self, data, n: int | None = None) -> int:
        mv = memoryview(data)
        if n is not None:
            mv = mv[:n]
        self.wbuf += mv
        if len(self.wbuf) > 65536:
            self.flush()
        return len(mv)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.flush()
        self.sock.close()


class _Poller:
    """``select.poll`` over a ``_Stream`` that also sees the stream's buffered bytes."""

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream
        self.p = select.poll()
        self.p.register(stream.sock, select.POLLIN)

    def poll(self, timeout_ms: int = -1) -> list:
        st = self.stream
        st.flush()
        if st.rbuf:
            return [(st.fileno(), select.POLLIN)]
        return self.p.poll(timeout_ms)


def _mqtt_str(b: str | bytes) -> bytes:
    b = b.encode() if isinstance(b, str) else bytes(b)
    return struct.pack("!H", len(b)) + b


class SimLink(UmqttLink):
    """The board's link (``firmware.link.UmqttLink``) on CPython, one socket and no thread.

    Only ``connect`` is ours: the CONNECT/CONNACK exchange that umqtt.simple does on a board
    (MQTT 3.1.1, clean_session off, the will, a bounded wait). Everything after CONNACK,
    publishing with PUBACK waits, subscriptions, incoming commands, keepalive pings, is the
    firmware's code. Counts what it delivered in ``sent`` (messages by topic kind, and
    ``readings``: records in PUBACKed readings batches).
    """

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.sent: Counter = Counter()
        self.published = 0

    def connect(self) -> bool:
        self.close()
        t = self.timeout_ms / 1000
        flags = 0  # clean_session off: a persistent session, as the board asks for
        payload = _mqtt_str(self.client_id)
        if self.will:
            topic, msg, retain, qos = self.will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _mqtt_str(topic) + _mqtt_str(msg)
        if self.user is not None:
            flags |= 0x80
            payload += _mqtt_str(self.user)
            if self.password is not None:
                flags |= 0x40
                payload += _mqtt_str(self.password)
        body = _mqtt_str("MQTT") + bytes((4, flags)) + struct.pack("!H", self.keepalive) + payload
        head = bytearray(b"\x10")
        n = len(body)
        while True:
            head.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                break
        try:
            sock = socket.create_connection((self.host, self.port), timeout=t)
        except OSError as e:
            self.last_error = _fwlink._err(e)
            return False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        st = _Stream(sock)
        try:
            st.write(bytes(head) + body)
            ack = st.read(4)
            if len(ack) != 4 or ack[0] != 0x20:
                raise OSError("no CONNACK")
            if ack[3]:
                raise OSError(f"connection refused, code {ack[3]}")
        except OSError as e:
            sock.close()
            self.last_error = _fwlink._err(e)
            return False
        self._sock = st
        self._poller = _Poller(st)
        self._tx = _fwlink.ticks_ms()
        self._ping = None
        self.connected = True
        self.session_present = bool(ack[2] & 1)
        self.last_error = None
        if not self.session_present:
            for topic, qos in self._subs:
                if not self._subscribe(topic, qos):
                    self.close()
                    return False
        return True

    def publish(self, topic, payload, qos=1, retain=False) -> bool:
        ok = super().publish(topic, payload, qos, retain)
        if ok:
            self.published += 1
            kind = topic.rsplit("/", 1)[-1]
            self.sent[kind] += 1
            if kind == "readings":
                self.sent["records"] += payload[12] | payload[13] << 8
        return ok

    @property
    def fd(self) -> int:
        """The socket's descriptor, or -1 when not connected; buffered bytes count as waiting."""
        st = self._sock
        if st is None:
            return -1
        return -2 if st.rbuf else st.fileno()

    def flush(self) -> None:
        """Send what is buffered (the PUBACK of a command read last, say)."""
        st = self._sock
        if st is not None:
            try:
                st.flush()
            except OSError as e:
                self._drop(_fwlink._err(e))


# --- time shared with a companion process ----------------------------------------------------


class SharedClock:
    """Virtual unix ms in a memory-mapped file: the fleet writes it, a companion process reads it.

    The file also carries the companion's side, so the fleet never runs ahead of it: how many
    board messages it has stored, how many it holds (received, not stored yet) and how many
    subscriptions the broker has granted it. Two copies of the time are written; a reader
    retries until they agree, so it never sees a torn value.
    """

    SIZE = 40

    def __init__(self, path: str | Path, create: bool = False, unix_ms: int = 0) -> None:
        self.path = Path(path)
        if create:
            self.path.write_bytes(struct.pack("<qqqqq", unix_ms, unix_ms, 0, 0, 0))
        self._f = open(self.path, "r+b")  # noqa: SIM115
        self._m = mmap.mmap(self._f.fileno(), self.SIZE)

    def set(self, unix_ms: int) -> None:
        struct.pack_into("<qq", self._m, 0, unix_ms, unix_ms)

    def __call__(self) -> int:
        while True:
            a, b = struct.unpack_from("<qq", self._m, 0)
            if a == b:
                return a

    def _get(self, slot: int) -> int:
        return struct.unpack_from("<q", self._m, 8 * slot)[0]

    def _put(self, slot: int, v: int) -> None:
        struct.pack_into("<q", self._m, 8 * slot, v)

    processed = property(
        lambda self: self._get(2), lambda self, v: self._put(2, v), doc="board messages stored"
    )
    subscribed = property(
        lambda self: self._get(3), lambda self, v: self._put(3, v), doc="SUBACKs received"
    )
    holding = property(
        lambda self: self._get(4), lambda self, v: self._put(4, v), doc="messages held, unstored"
    )

    def reset(self) -> None:
        """Zero the companion's counters (before a companion starts)."""
        for slot in (2, 3, 4):
            self._put(slot, 0)

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self._m.close()
        self._f.close()


# --- sensors -----------------------------------------------------------------------------------


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


# --- one board ---------------------------------------------------------------------------------


@dataclass
class BoardStats:
    """What happened to one board over a run (beyond its store and link counters)."""

    boots: int = 1
    power_cuts: Counter = field(default_factory=Counter)
    outages: int = 0
    away_ms: int = 0
    sent: Counter = field(default_factory=Counter)  # the link counters of earlier boots
    published: int = 0  # messages the links of earlier boots delivered


class VirtualBoard:
    """One board: the firmware node on the simulation HAL, flash in ``root``, a SimLink.

    ``clock`` is the fleet's virtual clock; ``synced`` False makes a board whose clock is never
    set (``wall_ms`` returns None). ``flash`` sizes the flash log as (readings per segment,
    segments), (204, 64) by default as on a DevKitC; a small one fills during a long outage.
    ``record`` keeps raw samples and state changes for a plot.

    Sensors (``climate``): noise and drift everywhere, spikes at ``spike_ppm`` on every
    channel, dropouts at ``dropout_ppm`` on the temperature sensor only. (The rollout health
    gate compares failed reads per device between upgraded and not-yet-upgraded boards, so
    dropouts on channels that only the new version reads would look like a regression.)
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
        synced: bool = True,
        flash: tuple[int, int] | None = None,
        spike_ppm: int = 1000,
        dropout_ppm: int = 1000,
        health_window_s: int = 60,
        record: bool = False,
    ) -> None:
        self.name = name
        self.root = root
        self.clock = clock
        self.host = host
        self.port = port
        self.synced = synced
        self.flash = flash
        self.rng = random.Random(f"{seed}:{name}")
        self.cfg = {
            "device_id": name,
            "fleet": fleet,
            "broker": {"host": host, "port": port, "tls": False},
            "hmac_key": key.hex(),
            "board": PROFILE_NAME,
            "health_window_s": health_window_s,
        }
        self.hal = SimHal(PROFILE, seed, clock.ticks_ms, dropout_ppm=0, spike_ppm=spike_ppm)
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
        self.resets = 0
        # the last power cut's write: (segment file, its size after, seq written, acked then)
        self.cut_info: tuple[str, int, int, int] | None = None
        # with a lag probe: the real time at which each seq was first held (see lag_stats)
        self.lag_seq: array | None = None
        self.lag_t: array | None = None
        self.lag_last = 0
        self.link: SimLink
        self.node: Node
        self._boot()

    def _wall_ms(self) -> int | None:
        return self.clock.unix_ms() if self.synced else None

    def _boot(self) -> None:
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
        self.resets += 1

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
        which the companion drops as duplicates). Random if None.
        """
        kind = kind or self.rng.choice(POWER_CUTS)
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


# --- the companion -----------------------------------------------------------------------------


def companion_command(
    db_url: str, host: str, port: int, clock_file: Path, *, client_id: str = "orrery-sim",
    reorder_window_ms: int = 120_000, reconcile_every_s: float = 1.0,
    commits_file: Path | None = None, log_level: str = "WARNING",
) -> list[str]:  # fmt: skip
    """The command line of a companion process on the fleet's virtual clock."""
    cmd = [
        sys.executable, "-m", "cloud.orrery.sim", "companion", "--db", db_url, "--host", host,
        "--port", str(port), "--clock", str(clock_file), "--client-id", client_id,
        "--reorder-window-ms", str(reorder_window_ms), "--reconcile-every", str(reconcile_every_s),
        "--log-level", log_level,
    ]  # fmt: skip
    if commits_file is not None:
        cmd += ["--commits", str(commits_file)]
    return cmd


def board_messages(msgs: list) -> int:
    """How many of these MQTT messages a board published itself: not the broker's wills (an
    offline state) nor retained copies replayed on a subscription."""
    n = 0
    for m in msgs:
        if m.retain:
            continue
        if m.topic.endswith("/up/state") and b'"online":false' in m.payload.replace(b" ", b""):
            continue
        n += 1
    return n


def build_companion(
    engine: sa.Engine,
    secret: bytes,
    host: str,
    port: int,
    shared: SharedClock,
    *,
    client_id: str = "orrery-sim",
    reorder_window_ms: int = 120_000,
    reconcile_every_s: float = 1.0,
    commits: list | None = None,
):
    """``orrery serve``'s service (ingest + rollout orchestrator) on the fleet's virtual clock.

    It reports its progress in ``shared``: subscriptions granted, board messages stored, and
    messages held. With ``commits`` a list, each stored readings batch is appended to it as
    ``(device, first seq, count, unix s of the commit)`` (for the end-to-end lag).
    """
    from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
    from cloud.orrery.ingest.handler import Ingest
    from cloud.orrery.ingest.service import BrokerAddress, Service

    class SimService(Service):
        def _client(self):
            c = super()._client()
            c.on_subscribe = self._on_subscribe
            return c

        def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
            shared.subscribed = shared.subscribed + 1

        def _collect(self, drain_only: bool) -> list:
            out = super()._collect(drain_only)
            shared.holding = self.inbox.qsize() + len(out)
            return out

        def _store(self, msgs) -> None:
            super()._store(msgs)
            shared.processed = shared.processed + board_messages(msgs)
            shared.holding = self.inbox.qsize()
            if commits is not None:
                t = time.time()
                for m in msgs:
                    p = m.payload
                    if m.topic.endswith("/up/readings") and len(p) >= 14:
                        first = struct.unpack_from("<I", p, 8)[0]
                        commits.append((m.topic.split("/")[2], first, p[12] | p[13] << 8, t))

    ingest = Ingest(engine, secret=secret, reorder_window_ms=reorder_window_ms, clock=shared)
    orch = Orchestrator(engine, secret, owner=client_id, clock=shared)
    return SimService(
        ingest,
        BrokerAddress(host=host, port=port),
        client_id=client_id,
        group="orrery-sim",
        reconcile_every_s=reconcile_every_s,
        stats_every_s=3600,
        orchestrator=orch,
    )


def _companion_main(argv: list[str]) -> int:
    """``python -m cloud.orrery.sim companion``: the companion process of a virtual fleet."""
    import argparse
    import logging

    from cloud.orrery.jsonlog import configure_logging

    ap = argparse.ArgumentParser(prog="python -m cloud.orrery.sim companion")
    ap.add_argument("--db", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clock", required=True)
    ap.add_argument("--client-id", default="orrery-sim")
    ap.add_argument("--reorder-window-ms", type=int, default=120_000)
    ap.add_argument("--reconcile-every", type=float, default=1.0)
    ap.add_argument("--commits", help="write (device, first seq, count, unix s) per stored batch")
    ap.add_argument("--log-level", default="WARNING")
    a = ap.parse_args(argv)
    configure_logging(a.log_level)
    logging.getLogger("orrery.ingest").setLevel(a.log_level)
    secret = keys.load_secret()
    shared = SharedClock(a.clock)
    engine = engine_for(a.db)
    commits: list | None = [] if a.commits else None
    svc = build_companion(
        engine, secret, a.host, a.port, shared, client_id=a.client_id,
        reorder_window_ms=a.reorder_window_ms, reconcile_every_s=a.reconcile_every,
        commits=commits,
    )  # fmt: skip

    def orphaned() -> None:
        parent = os.getppid()
        while not svc.stop_event.wait(1.0):
            if os.getppid() != parent:  # the fleet is gone: stop rather than linger
                svc.stop()

    threading.Thread(target=orphaned, daemon=True).start()
    svc.install_signals()
    svc.run()
    if a.commits and commits is not None:
        Path(a.commits).write_text("\n".join(json.dumps(c) for c in commits))
    return 0


# --- the fleet ---------------------------------------------------------------------------------


def flash_dir(prefix: str = "orrery-fleet-") -> Path:
    """A fresh directory for the boards' flash: on tmpfs (/dev/shm) when there is room."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2**30:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=shm))
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix=prefix))


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (a board holds ~4 descriptors);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://HOST:PORT`` (or ``HOST:PORT``) -> (host, port); the port defaults to 1883."""
    rest = url.split("://", 1)[1] if "://" in url else url
    rest = rest.split("/", 1)[0]
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "1883")
    if not host:
        raise ValueError(f"broker URL {url!r}: expected mqtt://HOST:PORT")
    try:
        return host, int(port)
    except ValueError:
        raise ValueError(f"broker URL {url!r}: port {port!r} is not a number") from None


def fmt_ms(ms: int) -> str:
    """``90_000`` -> ``1m30s``; days, hours, minutes and seconds as needed."""
    s = int(ms // 1000)
    parts = []
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            parts.append(f"{s // n}{unit}")
            s %= n
    if s or not parts:
        parts.append(f"{s}s")
    return "".join(parts)


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

    Boards are named ``<prefix>0000``…, registered in ``db_url`` in fleet ``sim`` and flashed
    with ``flash_workflow`` (greenhouse@1), which is also pushed to the registry. With
    ``broker`` None the fleet starts its own Mosquitto on a free port (it can then restart
    it); otherwise ``broker`` is ``(host, port)`` of one that runs already.

    ``step_ms``: virtual time per main-loop pass; ``uplink_ms``: virtual time between two link
    turns of one board. ``speed``: virtual seconds per real second at most (None: as fast as
    the machine goes). ``clockless``: share of boards whose clock is never set;
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
        small_flash: float = 0.0,
        spike_ppm: int = 1000,
        dropout_ppm: int = 1000,
        health_window_s: int = 60,
        record: str | None = None,
        secret: bytes | None = None,
        flash_workflow: Path = V1,
        push: Iterable[Path] = (V1, V2),
        max_holding: int = 400,
        lag_probe: int = 0,
    ) -> None:
        raise_fd_limit()
        self.rng = random.Random(seed)
        self.seed = seed
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
            from tools.mosquitto import Broker

            self.broker_proc = Broker(
                extra_conf="max_inflight_messages 1000\nmax_queued_messages 100000"
            ).start()
            self.host, self.port = "127.0.0.1", self.broker_proc.port
        else:
            self.host, self.port = broker
        from tools.mosquitto import free_port

        self.dead_port = free_port()
        self.clock = VirtualClock(ticks=5, unix_ms=_now_ms())
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
        blob = workflow.compile(flash_workflow.read_bytes()).blob
        with self.engine.begin() as conn:
            for f in push:
                registry.push(conn, f.read_bytes(), None, self.t0)
        names = [f"{prefix}{i:04d}" for i in range(n)]
        k_clockless = round(n * clockless)
        k_small = round(n * small_flash)
        order = names[:]
        self.rng.shuffle(order)
        clockless_set = set(order[:k_clockless])
        small_set = set(order[k_clockless : k_clockless + k_small])
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(DEVICES),
                [{"name": nm, "fleet": FLEET, "profile": PROFILE_NAME, "created_ms": self.t0}
                 for nm in names],
            )  # fmt: skip
        for i, name in enumerate(names):
            (self.root / name / "wf").mkdir(parents=True, exist_ok=True)
            (self.root / name / "wf" / "current.bin").write_bytes(blob)
            b = VirtualBoard(
                name, self.root / name, self.clock, self.host, self.port,
                keys.device_key(self.secret, name), seed=seed * 100_003 + i,
                synced=name not in clockless_set, flash=SMALL_FLASH if name in small_set else None,
                spike_ppm=spike_ppm, dropout_ppm=dropout_ppm, health_window_s=health_window_s,
                record=name == record,
            )  # fmt: skip
            if lag_probe and i % lag_probe == 0:
                b.lag_seq, b.lag_t = array("q"), array("d")
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
        client_id: str = "orrery-sim",
        timeout_s: float = 60,
        log_level: str = "WARNING",
    ) -> None:
        """Start the companion on the virtual clock: ``orrery serve``'s service (ingest and
        rollout orchestrator) in its own process (default) or in a thread of this one; return
        once it is subscribed, so it misses nothing the boards send."""
        self.shared.reset()
        if process:
            env = dict(os.environ, ORRERY_SECRET=self.secret.decode(), PYTHONUNBUFFERED="1")
            self.companion_proc = subprocess.Popen(
                companion_command(self.db_url, self.host, self.port, self.root / "clock.bin",
                                  client_id=client_id, commits_file=self.commits_file,
                                  log_level=log_level),
                env=env, stdout=subprocess.DEVNULL,
                stderr=open(self.companion_log, "ab"),  # noqa: SIM115
                cwd=str(REPO),
            )  # fmt: skip
        else:
            self.service = build_companion(
                self.engine, self.secret, self.host, self.port, self.shared, client_id=client_id
            )
            threading.Thread(target=self.service.run, daemon=True).start()
        self._wait_subscribed(0, timeout_s)
        self._base_published = self.published()

    def _wait_subscribed(self, before: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.shared.subscribed <= before:
            if self.companion_proc is not None and self.companion_proc.poll() is not None:
                raise RuntimeError(f"the companion exited: {self.companion_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the companion did not subscribe: {self.companion_tail()}")
            time.sleep(0.02)

    def companion_tail(self, n: int = 2000) -> str:
        """The end of the companion process's log."""
        try:
            return self.companion_log.read_text()[-n:]
        except OSError:
            return ""

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
            now = time.time()
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

    @staticmethod
    def quiet(b: VirtualBoard) -> bool:
        """No health window running and no command or ack held in RAM: a power cut now loses
        nothing a rollout waits for. (A cut inside a health window is an install failure by
        design, rolled back by the board; and an OK ack still in RAM would be lost.)"""
        n = b.node
        return n.wf.trial is None and not n.outbox and not n.inbox and not n.resends

    def power_cut_later(self, name: str, after_ms: int, kind: str | None = None) -> None:
        """Schedule a power cut; it waits for the board to be ``quiet``."""

        def cut() -> None:
            if self.quiet(self.boards[name]):
                self.power_cut(name, kind)
            else:
                self.at(self.step_ms, cut)

        self.at(after_ms, cut)

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

    def rollout(self, workflow_ref: str, target: str = f"fleet={FLEET}", **kw) -> int:
        """Create and start a rollout (``Orchestrator.create`` options); returns its id."""
        o = self.operator()
        plan = o.create(workflow_ref, target, **kw)
        assert plan.rollout_id is not None
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
        companion has stored it, with no gap open; at most ``max_ms`` of virtual time."""
        end = self.elapsed_ms + max_ms
        while True:
            self.catch_up()
            if self.settled():
                return True
            if self.elapsed_ms >= end:
                return False
            self.run(self.uplink_ms + self.step_ms, on_pass)

    def settled(self) -> bool:
        """Every board that is not away has delivered its backlog and acks, and the companion
        has stored every delivered reading, with no gap still open."""
        return self.unsettled() is None

    def unsettled(self) -> str | None:
        """Why the fleet is not ``settled`` yet (None if it is)."""
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
        return None

    def account(self) -> Accounting:
        """Compare every board's flash with the database (see ``Accounting``)."""
        acc = Accounting()
        ids = dict(self.rows("SELECT name, id FROM devices WHERE fleet = :f", f=FLEET))
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


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; else the peak from getrusage)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` (0..1) quantile by nearest rank, or None for no values."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


if __name__ == "__main__":
    if sys.argv[1:2] == ["companion"]:
        sys.exit(_companion_main(sys.argv[2:]))
    sys.exit("usage: python -m cloud.orrery.sim companion --db URL --port P --clock FILE")
