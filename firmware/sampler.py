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
from firmware.files import mkdir, remove, write_atomic
from shared import const

# Copied from firmware/clock.py by python -m tools.dev.consts: edit them there.
_HALF = const(0x20000000)
# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_FAILED = const(9)  # ran and failed (e.g. the health window)
_OK = const(0)
# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_EV_LINK_DOWN = const(2)
_EV_LINK_UP = const(1)

_MAX_OUTBOX = const(16)
_MAX_EVENTS = const(32)  # workflow events waiting for the uplink (the oldest is dropped)
_MAX_INVALID_PCT = const(50)  # a health window fails when more sensor reads failed


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
        print("orrery: workflow fault:", why)
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

    def stored_ack(self, cmd_id):
        """``(code, detail)`` of the newest ack remembered for command ``cmd_id``, or None."""
        t = self.acks
        i = t.rfind("\n" + cmd_id + " ")
        if i < 0:
            return None
        i += len(cmd_id) + 2
        j = t.find(" ", i)
        return int(t[i:j]), t[j + 1 : t.find("\n", j)]

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
        with self.lock:
            if len(self.outbox) >= _MAX_OUTBOX:
                self.outbox.pop(0)
            self.outbox.append((cmd_id, code, detail))
