"""The node's main thread: sample each input on its period, through its filter chain into the
executor; append every reading the chain emits to the flash store (a reading counts as taken
once it is there); run the commands the uplink queued (one step per pass: ``firmware.gate``
verifies, ``firmware.commands`` runs); persist the executor's state; judge
health windows. It never touches the network, so a dead broker never delays a sample.

``Workflows`` is the running workflow: its executor and program, how its inputs and outputs map
to the board's, the snapshot it persists after every change, and its health window (booting,
installing, rolling back and canceling are ``firmware.installer``'s, imported when needed).
``Sampler`` is a part of ``firmware.node.Node``: the executor's host (``output``, ``publish``,
``set_period``, allocation-free), ``step_main`` and the queues it fills for the uplink (acks,
events). The rare paths it runs (commands, bundle confirmation) are imported when needed and
dropped again.
"""

from array import array

from firmware import RARE, drop
from firmware.clock import TICKS_MASK, is_due
from firmware.files import mkdir, write_atomic
from shared import const
from shared.wire.message import put30

# Copied from firmware/clock.py by python -m tools.dev.consts: edit them there.
_HALF = const(0x20000000)
# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_DUPLICATE = const(1)  # already done: the stored ack is sent again
_FAILED = const(9)  # ran and failed (e.g. the health window)
_IN_PROGRESS = const(2)  # accepted and running (e.g. an install's health window)
_LOG_BOOT = const(1)  # info: the app started (a, b: 0)
_LOG_FAILED = const(6)  # error: a command ran and failed (an install rolled back, a bad bundle)
_LOG_FAULT = const(7)  # error: the workflow raised (it keeps running, or a trial rolls back)
_LOG_LINES = const(16)  # lines a board holds (a fixed ring: the oldest goes)
_LOG_RECORD_SIZE = const(11)  # up_s u32, up_ms u16, code u8, a i16, b i16
_LOG_REFUSED = const(5)  # warning: a command was refused; a: its ack code
_LOG_STATE = const(2)  # info: the workflow entered state a (index); b: transitions since the last
_OK = const(0)
# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_EV_LINK_DOWN = const(2)
_EV_LINK_UP = const(1)

_MAX_OUTBOX = const(16)
_MAX_EVENTS = const(32)  # workflow events waiting for the uplink (the oldest is dropped)


class Workflows:
    """The node's running workflow: what the main loop needs of it all the time.

    Booting, installing, rolling back and canceling are ``firmware.installer``'s, imported
    when needed. Files are under ``<root>/wf/`` (``firmware/installer.py`` lists them).
    """

    def __init__(self, root, node):
        self.dir = root + "/wf"
        mkdir(self.dir)
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
            drop(RARE)

    def check_health(self):
        """Main loop hook: deliver link events, log transitions, end health windows.
        Allocates nothing unless a health window ends (the frame stays on the C stack)."""
        ex = self.ex
        if ex is not None:
            if self.link_ev:
                ex.step(_EV_LINK_UP if self.link_ev == 1 else _EV_LINK_DOWN, 0)
                self.link_ev = 0
            if ex.transitions != self.transitions:
                self.node.log(_LOG_STATE, ex.state, ex.transitions - self.transitions)
                self.transitions = ex.transitions
                self.dirty = True
        if self.trial is not None and self.node.up.s >= self.trial["deadline_s"]:
            from firmware import installer

            installer.end_trial(self)  # no try/finally here: its handler would need a frame
            drop(RARE)  # on the heap every pass (should it raise, the next rare path drops it)

    def fault(self, why):
        """An exception from the executor: roll back a trial, else keep running and log."""
        print("orrery: workflow fault:", why)
        self.node.log(_LOG_FAULT, 0, 0)
        if self.trial is not None:
            self.rollback(self.trial["id"], why)

    def rollback(self, cmd_id, why):
        """Go back to the previous workflow (or none) and ack ``cmd_id`` FAILED."""
        from firmware import installer

        try:
            installer.rollback(self, cmd_id, why)
        finally:
            drop(RARE)

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


class Sampler:
    """The main thread's half of a Node (see the module doc)."""

    def __init__(self):
        # command envelopes the uplink received, for the main thread (the head may be a verified
        # command, a dict, that the next pass runs: firmware.gate, firmware.commands), and
        # their bytes
        self.inbox = []
        self.inbox_bytes = 0
        self.outbox = []  # acks to publish: (cmd_id, code, detail)
        # what a duplicate gets again: one str, "\n" then "<id> <code> <detail>\n" per ack of
        # the 64 newest (a line costs its text, a dict entry of a tuple and two strs 90 B)
        self.acks = "\n"
        self.n_acks = 0
        self.resends = []  # (first, last, cmd_id)
        # workflow events waiting for the uplink: a preallocated ring, filled without allocating
        self.ev = array("i", bytes(4 * 5 * _MAX_EVENTS))  # event, value, up_s, up_ms, state
        self.ev_head = 0
        self.ev_count = 0
        self.events_dropped = 0
        # lines for up/log: a preallocated ring of LOG_LINES fixed records (see ``log``)
        self.log_ring = bytearray(_LOG_LINES * _LOG_RECORD_SIZE)
        self.log_seq = 0  # lines written this boot; line i is record i % LOG_LINES
        self.log(_LOG_BOOT, 0, 0)
        self.current_cmd = None
        # a command that runs over several passes (a generator, e.g. firmware.installer's
        # install): resumed once a pass, before any other command; and its id
        self.job = None
        self.job_id = None
        self.bundle = None  # an app bundle download in progress
        self.reboot_requested = False
        self.confirm_due = False
        self.wf = Workflows(self.root, self)

    def output(self, index, value):
        """Drive output ``index`` of the installed workflow (mapped to the board's output)."""
        self.hal.set_output(self.wf.out_map[index], value)
        self.wf.dirty = True

    def publish(self, event, value):
        """Queue a workflow event for the uplink (the oldest is dropped past MAX_EVENTS).
        Allocates nothing (acquire/release, not ``with``: see ``log``)."""
        ev = self.ev
        self.lock.acquire()
        if self.ev_count == _MAX_EVENTS:
            self.ev_head = (self.ev_head + 1) % _MAX_EVENTS
            self.ev_count -= 1
            self.events_dropped += 1
        o = 5 * ((self.ev_head + self.ev_count) % _MAX_EVENTS)
        ev[o] = event
        ev[o + 1] = value
        ev[o + 2] = self.up.s
        ev[o + 3] = self.up.ms
        ev[o + 4] = self.wf.ex.state
        self.ev_count += 1
        self.lock.release()

    def log(self, code, a, b):
        """Keep a line for ``up/log``: ``code`` and its small ints ``a``, ``b`` (S16; codes
        and their meaning in shared/wire/constants.py), at this uptime, in the fixed ring (the
        oldest line goes). Either thread; allocates nothing."""
        # acquire/release, not ``with``: its exit handler would make the frame too large for
        # the C stack, and a frame on the heap is an allocation
        self.lock.acquire()
        o = self.log_seq % _LOG_LINES * _LOG_RECORD_SIZE
        _stamp(self.log_ring, o, self.up, code)
        _put16(self.log_ring, o + 7, a)
        _put16(self.log_ring, o + 9, b)
        self.log_seq += 1
        self.lock.release()

    def set_period(self, index, ms):
        """Change input ``index``'s sample period."""
        self.wf.period[index] = ms

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
                if is_due(now, due[i]):
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
                    if is_due(now, d) and ((now - d) & TICKS_MASK) >= period[i]:
                        # more than a period behind: skip ahead, never burst
                        d = (now + period[i]) & TICKS_MASK
                        self.stats["missed"] += 1
                    due[i] = d
            ex.tick()
        if self.job is not None:  # one step per pass: the heap is collected between passes
            self.step_job()
        elif self.inbox:
            self.step_inbox()
        if self.confirm_due:
            from firmware import bundle

            self.confirm_due = False
            try:
                bundle.confirm(self)
            finally:
                drop(RARE)
        wf.check_health()
        if wf.dirty:
            wf.save_state()

    def step_inbox(self):
        """Verify the command at the head of the inbox, or run it if verified in the pass before."""
        try:
            if isinstance(self.inbox[0], dict):
                from firmware import commands

                commands.run(self)
            else:
                from firmware import gate

                gate.verify(self)
        finally:
            drop(RARE)

    def step_job(self):
        """Run the next step of ``job``; once it returns (or raises), queue its ack. A step that
        yields True waits (for a safe state, ``firmware.safe``): the inbox goes on meanwhile."""
        try:
            try:
                if next(self.job) and self.inbox:
                    self.step_inbox()
                return
            except StopIteration as e:
                code, detail = e.value
            except Exception as e:  # a command must never take the node down
                code, detail = _FAILED, "{}: {}".format(type(e).__name__, e)
            self.job = None
            self.ack_later(self.job_id, code, detail)
        finally:
            drop(RARE)

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

    def ack_later(self, cmd_id, code, detail, remember=True):
        """Queue the ack of a command (also of one that finished after its first IN_PROGRESS
        ack: installs, resends); remembered for a duplicate unless ``remember`` is False."""
        if remember and cmd_id is not None:
            if "\n" in detail:
                detail = detail.replace("\n", " ")
            self.acks += "{} {} {}\n".format(cmd_id, code, detail)
            self.n_acks += 1
            if self.n_acks > 64:  # the oldest goes
                self.acks = self.acks[self.acks.find("\n", 1) :]
                self.n_acks -= 1
        if code != _OK and code != _DUPLICATE and code != _IN_PROGRESS:
            self.log(_LOG_FAILED if code == _FAILED else _LOG_REFUSED, code, 0)
        with self.lock:
            if len(self.outbox) >= _MAX_OUTBOX:
                self.outbox.pop(0)
            self.outbox.append((cmd_id, code, detail))


def _stamp(buf, o, up, code):
    # a log record's uptime and code (firmware.sampler.Sampler.log)
    put30(buf, o, up.s)
    _put16(buf, o + 4, up.ms)
    buf[o + 6] = code


def _put16(buf, o, v):
    # v (-32768..65535) as 16 bits little-endian at buf[o:o + 2]
    buf[o] = v & 0xFF
    buf[o + 1] = (v >> 8) & 0xFF
