"""The node: one board's work, in two threads that share the flash store.

Main thread (``step_main``), never touching the network: sample each input on its period,
through its filter chain into the executor; append every emitted reading to the flash store
(a reading counts as taken once it is there); execute commands; persist the executor's state;
judge health windows.

Link thread (``step_link``): connect with exponential backoff and full jitter; on connect,
subscribe to commands, publish the retained state and ask for pending commands; then publish
acks, loss reports, resends, readings batches (QoS 1; the store's ack cursor moves only after
the PUBACK), events and a periodic state. The link never blocks the main thread: a hanging
DNS lookup or a socket timeout costs the link thread time, not a sample.

On CPython both run as threads (``start``/``stop``); on a board ``run`` is the entry point.
Nothing here reboots because the cloud is unreachable.

Memory: this module holds what runs all the time. The rare paths are modules imported when
needed and dropped again (``drop_rare``), so their code does not stay in RAM: commands
(``firmware.commands``, with ``shared.wire.verifier``), the workflow's boot, install and rollback
(``firmware.installer``, with ``shared.workflow.load``, ``start`` and ``snapshot``), set_config and
app bundles. Only the main thread imports and drops them (the link thread leaves the bundle
confirmation to it), so an import never races a drop. The link thread likewise loads and
drops the encoders of its occasional reports (state, acks, loss: ``shared.wire.report``).
See firmware/README.md, "Memory".
"""

import gc
import json
import os
import sys
from array import array

from firmware.backoff import Backoff
from firmware.clock import TICKS_MASK, Uptime, WallClock
from firmware.store import Store
from shared import const
from shared.wire import message

try:
    import _thread  # MicroPython's on the ESP32; CPython has the same module
except ImportError:  # a build without threads (the WASI test runtime): everything in one thread
    _thread = None  # type: ignore[assignment]


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _lock():
    return _thread.allocate_lock() if _thread else _NoLock()


def _spawn(fn):
    if _thread is None:
        raise RuntimeError("no threads here: call step_link() from the main loop instead")
    _thread.start_new_thread(fn, ())


FW_VERSION = "0.1.0"
_HALF = const(0x20000000)
_BATCH = const(64)  # records per readings batch
_MAX_INBOX = const(8)
_MAX_OUTBOX = const(16)
_MAX_EVENTS = const(32)
_STATE_EVERY_MS = const(60000)
_HISTORICAL_AFTER_S = const(30)  # a batch whose newest reading is older than this is backlog
_MAX_INVALID_PCT = const(50)  # a health window fails when more sensor reads failed
# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_OK = const(0)
_HISTORICAL = const(1)  # flag: backlog replayed after being offline
_HEADER_SIZE = const(14)
_ANCHOR_SIZE = const(12)
_RECORD_SIZE = const(9)  # up_s u32, up_ms u16, value i16, channel u8
# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_NO_VALUE = const(-536870912)  # -2**29: an input with no value yet; outside every range
_EV_LINK_UP = const(1)
_EV_LINK_DOWN = const(2)

_OFF = const(_HEADER_SIZE + _ANCHOR_SIZE)  # records start here in the batch buffer

# The rare paths, imported on demand (see the module doc). Not firmware.config: main.py
# keeps it imported on a board, so dropping it would only make set_config load a second copy.
RARE = (
    "firmware.commands",
    "firmware.installer",
    "firmware.recover",
    "firmware.profile",
    "firmware.bundle",
    "firmware.launcher",
    "shared.wire.verifier",
    "shared.wire.errors",
    "shared.wire.connect",
    "shared.wire.hmac256",
    "shared.workflow.load",
    "shared.workflow.start",
    "shared.workflow.snapshot",
    "shared.filters.catalog",
    "shared.bundle",
)

# The link thread's reports (state, acks, loss): loaded per report and dropped by that thread.
REPORTS = ("shared.wire.report",)


def drop_rare():
    """Forget the rare-path modules, so the next collection frees their code (MicroPython;
    their interned names stay). A no-op on CPython, where memory is not short, and while
    automatic collection is off (the WASI test runtime): nothing would free them, and each
    import would only add garbage. tools/bench/heap_guest.py drops the same list."""
    if sys.implementation.name == "micropython" and gc.isenabled():
        forget(RARE)


def _reports():
    # The link thread's encoders for the state, acks and loss reports, loaded per report and
    # dropped after it (drop_reports): this thread alone imports and drops the module.
    from shared.wire import report

    return report


def drop_reports():
    """Forget ``shared.wire.report`` as ``drop_rare`` forgets the rare paths (link thread)."""
    if sys.implementation.name == "micropython" and gc.isenabled():
        forget(REPORTS)


def forget(names):
    """Remove modules ``names`` ("pkg.mod", "pkg.sub.mod") from sys.modules and from their package; the next
    import loads them again."""
    m = sys.modules
    for name in names:
        if name in m:
            del m[name]
            pkg, _, attr = name.rpartition(".")
            try:
                delattr(m[pkg], attr)
            except AttributeError:
                pass


def _due(now, then):
    # True when tick ``then`` is not in the future of ``now`` (wrap-safe, small ints only)
    return ((now - then) & TICKS_MASK) < _HALF


def _log(*parts):
    print("orrery:", *parts)


def _mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass


def write_atomic(path, data):
    """Replace file ``path`` with ``data`` (str or bytes): write a temp file, then rename."""
    if isinstance(data, str):
        data = data.encode()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    replace(tmp, path)


def replace(src, dst):
    """Rename ``src`` over ``dst``."""
    try:
        os.rename(src, dst)
    except OSError:  # FAT will not rename over a file
        remove(dst)
        os.rename(src, dst)


def remove(path):
    """Remove file ``path`` if it exists."""
    try:
        os.remove(path)
    except OSError:
        pass


class Workflows:
    """The node's running workflow: what the main loop needs of it all the time.

    Booting, installing, rolling back and canceling are ``firmware.installer``'s, imported
    when needed. Files are under ``<root>/wf/`` (see firmware/installer.py).
    """

    def __init__(self, root, node):
        self.dir = root + "/wf"
        _mkdir(self.dir)
        self.node = node
        self.prog = None
        self.ex = None
        self.chan = array("i")
        self.out_map = array("i")
        self.due = array("i")
        self.period = array("i")
        self.snap = bytearray(0)  # sized to the running program's snapshot on activation
        self.dirty = False
        self.trial = None  # {"id", "deadline_s", "samples", "invalid"} during a health window
        self.samples = 0
        self.invalid = 0
        self.link_ev = 0
        self.transitions = 0

    def boot(self):
        """Load the installed workflow, finishing or undoing an interrupted install."""
        from firmware import installer

        try:
            return installer.boot(self)
        finally:
            drop_rare()

    def check_health(self):
        """Main loop hook: deliver link events, notice transitions, end health windows."""
        ex = self.ex
        if ex is not None:
            if self.link_ev:
                ex.step(_EV_LINK_UP if self.link_ev == 1 else _EV_LINK_DOWN, 0)
                self.link_ev = 0
            if ex.transitions != self.transitions:
                self.transitions = ex.transitions
                self.dirty = True
        t = self.trial
        if t is None or self.node.up.s < t["deadline_s"]:
            return
        samples = self.samples - t["samples"]
        invalid = self.invalid - t["invalid"]
        if samples and invalid * 100 > samples * _MAX_INVALID_PCT:
            self.rollback(t["id"], "{} of {} sensor reads failed".format(invalid, samples))
            return
        self.trial = None
        remove(self.dir + "/trial.json")
        self.node.ack_later(t["id"], _OK, "healthy: {} reads, {} failed".format(samples, invalid))

    def fault(self, why):
        """An exception from the executor: roll back a trial, else keep running and log."""
        _log("workflow fault:", why)
        if self.trial is not None:
            self.rollback(self.trial["id"], why)

    def rollback(self, cmd_id, why):
        """Go back to the previous workflow (or none) and ack ``cmd_id`` FAILED."""
        from firmware import installer

        try:
            installer.rollback(self, cmd_id, why)
        finally:
            drop_rare()

    def link_event(self, up):
        """Link thread hook: remember a link change for the main thread to deliver."""
        self.link_ev = 1 if up else 2

    def save_state(self):
        """Persist the executor snapshot (write + rename, only after a change)."""
        self.dirty = False
        if self.ex is None:
            return
        n = self.ex.snapshot_into(self.snap)
        write_atomic(self.dir + "/state.bin", memoryview(self.snap)[:n])


class Node:
    """One board. ``link`` has firmware.link's interface; ``ticks_ms`` wraps at 2**30.

    ``wall_ms`` returns unix ms or None (the board's NTP result, or the simulation's clock);
    ``reset`` reboots the board; ``rand4`` returns 4 random bytes.
    """

    def __init__(self, cfg, hal, root, link, ticks_ms, wall_ms=None, reset=None, rand4=None):
        self.cfg = cfg
        self.hal = hal
        self.root = root
        self.link = link
        self.ticks = ticks_ms
        self.wall_ms = wall_ms
        self.reset = reset
        self.device = cfg["device_id"]
        self.fleet = cfg["fleet"]
        self.key = bytes.fromhex(cfg["hmac_key"])
        self.health_s = cfg.get("health_window_s", 120)
        rand4 = rand4 or (lambda: os.urandom(4))
        # the start-up parts of the protocol: what they make is kept, the module dropped
        from shared.wire import connect

        self.boot_id = connect.new_boot_id(rand4())
        self.up = Uptime(ticks_ms)
        self.wall = WallClock()
        self.lock = _lock()
        _mkdir(root)
        self.store = Store(root + "/store")
        self.backoff = Backoff(rand=None)
        self.retry_at = ticks_ms()
        self.state_at = ticks_ms()
        self.topics = {}
        for k in connect.TOPIC_KINDS:
            self.topics[k] = connect.topic(self.fleet, self.device, k)
        self.will_payload = connect.encode_will(self.boot_id)
        self.pull_payload = connect.encode_pull(self.boot_id)
        del connect  # dropped with the other rare paths below
        link.on_message = self._on_message
        self.inbox = []
        self.outbox = []  # acks to publish: (cmd_id, code, detail)
        self.acks = {}  # cmd_id -> (code, detail): what a duplicate gets again
        self.resends = []  # (first, last, cmd_id)
        # workflow events waiting for the uplink: a preallocated ring, filled without allocating
        self.ev = array("i", bytes(4 * 5 * _MAX_EVENTS))  # event, value, up_s, up_ms, state
        self.ev_head = 0
        self.ev_count = 0
        self.events_dropped = 0
        self.event_seq = 0
        self.batch = bytearray(_OFF + _BATCH * _RECORD_SIZE)
        self.batch_mv = memoryview(self.batch)
        from firmware import installer

        self.anchors = installer.load_anchors(root)
        drop_rare()
        self.wf = Workflows(root, self)
        self.state_dirty = True
        self.running = False
        self.current_cmd = None
        self.bundle = None  # an app bundle download in progress
        self.reboot_requested = False
        self.confirmed = False  # a trial app bundle was confirmed (or there was none)
        self.confirm_due = False
        self.confirm_after_s = cfg.get("confirm_after_s", 30)
        self.stats = {"missed": 0, "link_drops": 0, "commands": 0}

    # --- executor host: called by the executor, allocation-free ---------------------------

    def output(self, index, value):
        """Drive output ``index`` of the installed workflow (mapped to the board's output)."""
        self.hal.set_output(self.wf.out_map[index], value)
        self.wf.dirty = True

    def publish(self, event, value):
        """Queue a workflow event for the uplink (the oldest is dropped past MAX_EVENTS)."""
        up = self.up
        ev = self.ev
        with self.lock:
            if self.ev_count == _MAX_EVENTS:
                self.ev_head = (self.ev_head + 1) % _MAX_EVENTS
                self.ev_count -= 1
                self.events_dropped += 1
            o = 5 * ((self.ev_head + self.ev_count) % _MAX_EVENTS)
            ev[o] = event
            ev[o + 1] = value
            ev[o + 2] = up.s
            ev[o + 3] = up.ms
            ev[o + 4] = self.wf.ex.state
            self.ev_count += 1

    def set_period(self, index, ms):
        """Change input ``index``'s sample period."""
        self.wf.period[index] = ms

    # --- main thread ---------------------------------------------------------------------

    def step_main(self):
        """One pass of the main loop: sample what is due, tick timers, run commands."""
        now = self.ticks()
        up = self.up
        up.update()
        wf = self.wf
        ex = wf.ex
        if ex is not None:
            due = wf.due
            period = wf.period
            chan = wf.chan
            for i in range(len(due)):
                if _due(now, due[i]):
                    raw = self.hal.read(chan[i])
                    wf.samples += 1
                    if raw is None:
                        wf.invalid += 1
                    try:
                        v = ex.feed(i, raw)
                    except Exception as e:  # a workflow bug must not take the node down
                        wf.fault("{}: {}".format(type(e).__name__, e))
                        return
                    if v is not None:
                        with self.lock:
                            self.store.append(self.boot_id, up.s, up.ms, v, chan[i])
                    d = (due[i] + period[i]) & TICKS_MASK
                    if _due(now, d) and ((now - d) & TICKS_MASK) >= period[i]:
                        # more than a period behind: skip ahead, never burst
                        d = (now + period[i]) & TICKS_MASK
                        self.stats["missed"] += 1
                    due[i] = d
            ex.tick()
        if self.inbox:
            from firmware import commands

            try:
                commands.run(self)
            finally:
                drop_rare()
        if self.confirm_due:
            from firmware import bundle

            self.confirm_due = False
            try:
                bundle.confirm(self)
            finally:
                drop_rare()
        wf.check_health()
        if wf.dirty:
            wf.save_state()

    def next_wait_ms(self):
        """How long the main loop may sleep before something is due (at most 50 ms)."""
        wf = self.wf
        wait = 50
        if wf.ex is not None:
            now = self.ticks()
            for d in wf.due:
                left = (d - now) & TICKS_MASK
                if left >= _HALF:
                    return 0
                if left < wait:
                    wait = left
        return wait

    # --- commands (main thread: firmware.commands) ----------------------------------------

    def _on_message(self, topic, payload):
        # link thread: only queue; the main thread owns the executor and the store
        if topic != self.topics[message.CMD]:
            return
        if len(self.inbox) >= _MAX_INBOX:
            _log("inbox full, dropping a command (it is pulled again on reconnect)")
            return
        self.inbox.append(payload)

    def ack_later(self, cmd_id, code, detail, remember=True):
        """Queue the ack of a command (also of one that finished after its first IN_PROGRESS
        ack: installs, resends); remembered for a duplicate unless ``remember`` is False."""
        if remember and cmd_id is not None:
            self.acks[cmd_id] = (code, detail)
            while len(self.acks) > 64:
                del self.acks[next(iter(self.acks))]
        with self.lock:
            if len(self.outbox) >= _MAX_OUTBOX:
                self.outbox.pop(0)
            self.outbox.append((cmd_id, code, detail))

    # --- link thread ---------------------------------------------------------------------

    def step_link(self):
        """One pass of the link loop. Returns True if it did network work."""
        link = self.link
        now = self.ticks()
        if not link.connected:
            if not _due(now, self.retry_at):
                return False
            if link.connect():
                self.backoff.reset()
                self._on_connect()
            else:
                self.stats["link_drops"] += 1
                self.retry_at = (now + self.backoff.next_delay_ms()) & TICKS_MASK
                self.wf.link_event(False)
                return False
        link.poll()
        if not link.connected:
            return False
        if not self.confirmed and self.up.s >= self.confirm_after_s:
            self.confirmed = True  # the app reached the broker and stayed up:
            self.confirm_due = True  # the main thread confirms a trial bundle
        return (
            self._send_acks()
            or self._send_losses()
            or self._send_resend()
            or self._send_batch()
            or self._send_events()
            or self._send_state(False)
        )

    def _on_connect(self):
        link = self.link
        link.subscribe(self.topics[message.CMD], 1)
        if not self.wall.synced and self.wall_ms is not None:
            ms = self.wall_ms()
            if ms is not None:
                self.wall.sync(ms // 1000, ms % 1000, self.up)
                self._save_anchor(self.boot_id, self.wall.anchor())
        self._send_state(True)
        link.publish(self.topics[message.PULL], self.pull_payload, 1)
        self.wf.link_event(True)

    def _save_anchor(self, boot_id, anchor):
        # remember this boot's anchor, so a later boot can send its backlog with correct times
        a = self.anchors
        a[boot_id] = anchor
        while len(a) > 8:
            del a[min(a)]
        data = {}
        for k in a:
            data[str(k)] = list(a[k])
        write_atomic(self.root + "/anchors.json", json.dumps(data))

    def _send_acks(self):
        if not self.outbox:
            return False
        cmd_id, code, detail = self.outbox[0]
        payload = _reports().encode_ack(cmd_id, code, detail)
        drop_reports()
        if self.link.publish(self.topics[message.ACKS], payload, 1):
            with self.lock:
                self.outbox.pop(0)
            if code == _OK and self.reboot_requested:
                self.link.disconnect()
                if self.reset:
                    self.reset()
        return True

    def _send_losses(self):
        with self.lock:
            losses = self.store.losses()
        if not losses:
            return False
        first, last, reason = losses[0]
        payload = _reports().encode_loss(self.boot_id, first, last, reason)
        drop_reports()
        if self.link.publish(self.topics[message.LOSS], payload, 1):
            with self.lock:
                self.store.losses_reported(1)
        return True

    def _send_resend(self):
        if not self.resends:
            return False
        first, last, cmd_id = self.resends[0]
        with self.lock:
            count, boot, start = self.store.read_range(
                self.batch_mv[_OFF:], first, min(last, first + _BATCH - 1)
            )
        if count == 0:
            self.resends.pop(0)
            self.ack_later(
                cmd_id, _OK, "resent up to {}; {}..{} not held".format(first - 1, first, last)
            )
            return True
        if self._publish_batch(count, boot, start, _HISTORICAL):
            nxt = start + count
            if nxt > last:
                self.resends.pop(0)
                gone = "" if start == first else "; {}..{} not held".format(first, start - 1)
                self.ack_later(cmd_id, _OK, "resent {}..{}{}".format(start, last, gone))
            else:
                self.resends[0] = (nxt, last, cmd_id)
        return True

    def _send_batch(self):
        with self.lock:
            count, boot, first = self.store.read_batch(self.batch_mv[_OFF:], _BATCH)
        if count == 0:
            return False
        flags = 0
        if (
            boot != self.boot_id
            or self.up.s - _rec_up_s(self.batch, _OFF, count) > _HISTORICAL_AFTER_S
        ):
            flags = _HISTORICAL
        if self._publish_batch(count, boot, first, flags):
            with self.lock:
                self.store.ack(first + count - 1)
            self.state_dirty = True
        return True

    def _publish_batch(self, count, boot, first, flags):
        anchor = self.wall.anchor() if boot == self.boot_id else self.anchors.get(boot)
        start = _OFF - _HEADER_SIZE - (_ANCHOR_SIZE if anchor else 0)
        message.batch_header_into(self.batch, start, flags, boot, first, count, anchor)
        end = _OFF + count * _RECORD_SIZE
        return self.link.publish(self.topics[message.READINGS], self.batch_mv[start:end], 1)

    def _send_events(self):
        if not self.ev_count:
            return False
        with self.lock:
            o = 5 * self.ev_head
            event, value, up_s, up_ms, state = self.ev[o : o + 5]
        wf = self.wf
        # events carry S16 values: an input without a value yet is None, a variable is clamped
        if value == _NO_VALUE:
            value = None
        elif value > 32767:
            value = 32767
        elif value < -32767:
            value = -32767
        payload = message.encode_event(
            self.boot_id,
            self.event_seq,
            up_s,
            up_ms,
            wf.prog.state_names[state],
            wf.prog.event_names[event],
            value,
        )
        if self.link.publish(self.topics[message.EVENTS], payload, 1):
            with self.lock:
                self.ev_head = (self.ev_head + 1) % _MAX_EVENTS
                self.ev_count -= 1
            self.event_seq += 1
        return True

    def _send_state(self, force):
        now = self.ticks()
        if (
            not force
            and not self.state_dirty
            and not _due(now, (self.state_at + _STATE_EVERY_MS) & TICKS_MASK)
        ):
            return False
        wf = self.wf
        p = wf.prog
        with self.lock:
            backlog = self.store.backlog()
            last_seq = self.store.last_seq
        extra = {
            "board": self.cfg.get("board", ""),
            "invalid": wf.ex.invalid() if wf.ex else 0,
            "events_dropped": self.events_dropped,
            "missed": self.stats["missed"],
        }
        payload = _reports().encode_state(
            True,
            FW_VERSION,
            p.name if p else None,
            p.version if p else None,
            p.hash if p else None,
            self.boot_id,
            backlog,
            self.wall.synced,
            self.wall.anchor(),
            last_seq or None,
            extra,
        )
        drop_reports()
        if self.link.publish(self.topics[message.STATE], payload, 1, True):
            self.state_at = now
            self.state_dirty = False
        return True

    def will(self):
        """The MQTT last will: (topic, payload, retain, qos)."""
        return (self.topics[message.STATE], self.will_payload, True, 1)

    # --- running --------------------------------------------------------------------------

    def start(self):
        """Boot the workflow and run the link in a background thread (CPython and boards)."""
        self.wf.boot()
        self.running = True
        _spawn(self._link_loop)

    def stop(self):
        """Stop the link thread; the store stays consistent."""
        self.running = False
        self.link.close()

    def _link_loop(self):
        from firmware.clock import sleep_ms

        while self.running:
            try:
                if not self.step_link():
                    sleep_ms(20)
            except Exception as e:  # the link thread must survive anything the network does
                _log("link error:", type(e).__name__, e)
                self.link.close()
                sleep_ms(200)


def _rec_up_s(buf, off, count):
    # up_s of the newest record in the batch buffer (u32 little-endian, < 2**30)
    o = off + (count - 1) * _RECORD_SIZE
    return buf[o] | (buf[o + 1] << 8) | (buf[o + 2] << 16) | (buf[o + 3] << 24)


def run(cfg, hal, feed, root="/data"):
    """Board entry point (called by main.py): run forever, feeding the watchdog."""
    import time

    import machine

    from firmware.link import UmqttLink

    _wifi(cfg.get("wifi"))
    b = cfg["broker"]
    link = UmqttLink(
        cfg["device_id"],
        b["host"],
        b["port"],
        cfg.get("username"),
        cfg.get("password"),
        ssl=_ssl_context(b) if b.get("tls") else None,
    )
    node = Node(cfg, hal, root, link, time.ticks_ms, wall_ms=_ntp_ms(cfg), reset=machine.reset)
    link.will = node.will()
    node.start()
    while True:
        node.step_main()
        feed()
        time.sleep_ms(node.next_wait_ms())


def _wifi(w):
    """Start joining the configured Wi-Fi without waiting: the link's connects fail (and back
    off) until it is up, and the station keeps reconnecting by itself after a drop."""
    if not w:
        return
    try:
        import network

        sta = network.WLAN(network.STA_IF)
        sta.active(True)
        try:
            sta.config(reconnects=-1)  # ESP32: retry forever after a drop
        except Exception:
            pass
        if not sta.isconnected():
            sta.connect(w["ssid"], w.get("password", ""))
    except Exception as e:  # no radio, bad credentials: the node still runs offline
        _log("wifi:", e)


def _ntp_ms(cfg):
    def wall_ms():
        try:
            import time

            import ntptime

            ntptime.host = cfg.get("ntp_host", "pool.ntp.org")
            ntptime.settime()
            return (
                (time.time() + 946684800) * 1000
                if time.gmtime(0)[0] == 2000
                else time.time() * 1000
            )
        except Exception:
            return None

    return wall_ms


def _ssl_context(broker):
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if broker.get("ca"):
        ctx.load_verify_locations(cafile=broker["ca"])
    return ctx
