"""Run a compiled workflow (``shared.workflow.program.Program``): one ``step`` per event.

Time comes from an injected ``clock()`` returning ms ticks in [0, 2**30) that wrap, like
MicroPython's ``time.ticks_ms()``. Durations are below 2**29 ms, so a wrapped difference
is exact as long as ``tick()`` runs at least once every 2**29 ms (about 6 days).

``feed``, ``step``, ``tick``, ``next_deadline_ms`` and ``snapshot_into`` allocate nothing
on MicroPython: no containers, floats, big ints or bound methods, and every function on
those paths keeps its locals plus stack within 11 words (larger call frames go on the
heap). State lives in preallocated ``array('i')``: ``vars``, ``outputs`` and ``last`` (the
last filtered value of each input, ``form.NO_VALUE`` before the first) are public, read-only.

Semantics
---------
- A transition fires if its trigger matches the event and its guard (comparisons ANDed)
  holds; the first such transition of the current state, in document order, fires.
  External: exit actions, transition actions, then the target's entry actions.
  Internal (no target): transition actions only.
- above / below: the filtered value is strictly past the level. With ``for_ms`` it must be
  past the level on every sample for ``for_ms`` ms; the hold restarts when a sample is
  not, when the state is entered, and when the transition fires (an internal one fires
  again only after another full hold). ``tick()`` fires holds that have lasted long
  enough. crosses: the previous value was on the other side or equal, the current one is
  strictly past the level.
- Comparisons with an input that has no value yet are false. Actions whose operand is
  such an input do nothing, except publish, which passes NO_VALUE (as it does for a
  publish without a value). Outputs are clamped to S16; add_var saturates at +-VAR_MAX.
- Counters ``transitions`` and ``events`` wrap to 0 after 2**30 - 1.

The snapshot layout is ``shared.workflow.form``'s; building an executor, starting it and
restoring or migrating a snapshot are ``shared.workflow.start`` and ``shared.workflow.snapshot``,
which a board imports only then.
"""

from shared import const

# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_ACT_ADD_VAR = const(5)
_ACT_CANCEL_TIMER = const(3)
_ACT_PUBLISH = const(6)
_ACT_SET_OUTPUT = const(1)
_ACT_SET_PERIOD = const(7)
_ACT_START_TIMER = const(2)
_AW = const(4)
_C_ABOVE = const(1)
_C_BELOW = const(2)
_C_DOWN = const(4)
_C_UP = const(3)
_DURATION_MAX = const(536870911)  # ms; half the 2**30 tick range, so tick diffs are exact
_EV_BOOT = const(0)
_EV_COMMAND = const(4)
_EV_LINK_DOWN = const(2)
_EV_LINK_UP = const(1)
_EV_SAMPLE = const(5)
_EV_TIMER = const(3)
_GW = const(5)
_NO_VALUE = const(-536870912)  # -2**29: an input with no value yet; outside every range
_OP_EQ = const(4)
_OP_GE = const(3)
_OP_GT = const(2)
_OP_LE = const(1)
_OP_LT = const(0)
_O_CONST = const(0)
_O_INPUT = const(1)
_O_VAR = const(2)
_PERIOD_MIN = const(10)  # ms
_S16_MAX = const(32767)
_SNAP_FORMAT = const(1)
_SNAP_HEADER = const(16)  # bytes before the int32 words
_SW = const(7)
_S_ENTRY = const(2)
_S_EXIT = const(4)
_TICKS_MAX = const(1073741823)  # 2**30 - 1: ticks wrap to 0 after this
_TW = const(10)
_T_ACT = const(7)
_T_COND = const(2)
_T_EVENT = const(0)
_T_FOR = const(4)
_T_GUARD = const(5)
_T_LEVEL = const(3)
_T_TARGET = const(9)
_VAR_MAX = const(536870911)  # 2**29 - 1

_HALF = const(536870912)  # 2**29
_OFF = const(-1)  # a timer that is not running; a for_ms hold not started
_MET = const(-2)  # a for_ms hold that has lasted long enough


def elapsed(now, then):
    """``now - then`` in ms for wrapping ticks in [0, 2**30); exact within +-2**29."""
    d = now - then
    if d >= _HALF:
        d = d - _TICKS_MAX - 1
    elif d < -_HALF:
        d = d + _TICKS_MAX + 1
    return d


def ticks_add(t, ms):
    """``t + ms`` wrapped to [0, 2**30), for ms in [0, 2**29)."""
    room = _TICKS_MAX - t
    if ms > room:
        return ms - room - 1
    return t + ms


def _put_all(buf, off, arr):
    i = 0
    while i < len(arr):
        _put(buf, off, arr[i])
        off += 4
        i += 1
    return off


def _put(buf, off, v):
    # One little-endian int32 into buf at off.
    buf[off] = v & 255
    buf[off + 1] = (v >> 8) & 255
    buf[off + 2] = (v >> 16) & 255
    buf[off + 3] = (v >> 24) & 255


class Executor:
    """Runs ``program``; calls ``host.output(i, v)``, ``host.publish(i, v)`` and
    ``host.set_period(i, ms)``; reads time from ``clock()`` (wrapping ms ticks)."""

    def __init__(self, program, host, clock):
        from shared.workflow import start  # once per activation: its code is not kept in RAM

        start.init(self, program, host, clock)

    # Board-facing API.

    def start(self):
        """Enter the initial state (or, after ``restore``, re-apply the saved outputs and
        periods through the host), then deliver the boot event."""
        from shared.workflow import start

        start.start(self)

    def feed(self, i, raw):
        """Run raw sample ``raw`` (int or None) of input ``i`` through its filters; if a
        value comes out, record it and deliver it as a sample event. Returns that value
        or None."""
        v = self._chains[i].update(raw)
        if v is not None:
            self.step(_EV_SAMPLE, i, v)
        return v

    def step(self, kind, arg, value=0):
        """Deliver one event (an EV_* kind; ``arg`` the timer, command or input index;
        ``value`` a sample's filtered value). Returns 1 if a transition fired, else 0."""
        n = self.events
        self.events = n + 1 if n < _TICKS_MAX else 0
        self._now = self._clock()
        if kind == _EV_SAMPLE:
            self._prev = self.last[arg]
            self.last[arg] = value
            n = self._scan_samples(arg)
        else:
            n = self._scan(kind, arg)
        if n < 0:
            return 0
        self._fire(n)
        return 1

    def tick(self):
        """Fire due timers (in timer order), then a for_ms hold that has lasted long
        enough. Returns the number of transitions fired."""
        self._now = self._clock()
        fired = 0
        t = 0
        while t < self._ntimers:
            d = self._deadline[t]
            if d >= 0 and elapsed(self._now, d) >= 0:
                self._deadline[t] = _OFF
                fired += self.step(_EV_TIMER, t)
            t += 1
        t = self._first(self._st[self.state * _SW])
        if t >= 0:
            self._fire(t)
            fired += 1
        return fired

    def next_deadline_ms(self):
        """ms until the next timer or for_ms deadline (0 if one is due), or -1 if none."""
        now = self._clock()
        best = -1
        t = 0
        while t < self._ntimers:
            if self._deadline[t] >= 0:
                ms = elapsed(self._deadline[t], now)
                if ms < 0:
                    ms = 0
                if best < 0 or ms < best:
                    best = ms
            t += 1
        t = self._st[self.state * _SW]
        while t < self._st[self.state * _SW + 1]:
            if self._hold[t] >= 0:
                ms = self._tr[t * _TW + _T_FOR] - elapsed(now, self._hold[t])
                if ms < 0:
                    ms = 0
                if best < 0 or ms < best:
                    best = ms
            t += 1
        return best

    def invalid(self):
        """Raw samples refused by the filter chains (None or out of S16), all inputs."""
        n = 0
        for c in self._chains:
            n += c.invalid
        return n

    def state_name(self):
        """The current state's name."""
        return self.program.state_names[self.state]

    def command_index(self, name):
        """The index of command ``name``, or -1 if the workflow has no such command."""
        names = self.program.command_names
        for i in range(len(names)):
            if names[i] == name:
                return i
        return -1

    # Transitions.

    def _scan(self, kind, arg):
        # First transition of the current state for this event whose guard holds, or -1.
        t = self._st[self.state * _SW]
        end = self._st[self.state * _SW + 1]
        while t < end:
            k = t * _TW
            if self._tr[k + _T_EVENT] == kind and self._tr[k + 1] == arg and self._guard(k):
                return t
            t += 1
        return -1

    def _scan_samples(self, i):
        # Every sample transition on input i updates its hold; the first that is
        # satisfied and whose guard holds is returned (-1 if none).
        t = self._st[self.state * _SW]
        end = self._st[self.state * _SW + 1]
        hit = -1
        while t < end:
            if self._cond(t, i) and hit < 0 and self._guard(t * _TW):
                hit = t
            t += 1
        return hit

    def _cond(self, t, i):
        # Does transition t react to input i's sample, and is its condition met now?
        k = t * _TW
        if self._tr[k + _T_EVENT] != _EV_SAMPLE or self._tr[k + 1] != i:
            return False
        v = self.last[i]
        if self._tr[k + _T_COND] > _C_BELOW:
            return self._crossed(k, v)
        if self._tr[k + _T_FOR]:
            return self._held(t, k, v)
        return self._past(k, v)

    def _past(self, k, v):
        if self._tr[k + _T_COND] == _C_ABOVE:
            return v > self._tr[k + _T_LEVEL]
        return v < self._tr[k + _T_LEVEL]

    def _crossed(self, k, v):
        p = self._prev
        if p == _NO_VALUE:
            return False
        level = self._tr[k + _T_LEVEL]
        c = self._tr[k + _T_COND]
        if c != _C_DOWN and p <= level and v > level:
            return True
        return c != _C_UP and p >= level and v < level

    def _held(self, t, k, v):
        if not self._past(k, v):
            self._hold[t] = _OFF
            return False
        if self._hold[t] == _OFF:
            self._hold[t] = self._now
        return self._due(t)

    def _due(self, t):
        # True if transition t's hold has lasted its for_ms (then remembered as _MET).
        h = self._hold[t]
        if h == _MET:
            return True
        if h < 0 or elapsed(self._now, h) < self._tr[t * _TW + _T_FOR]:
            return False
        self._hold[t] = _MET
        return True

    def _first(self, t):
        # From transition t on, in the current state: the first for_ms hold that is due
        # and whose guard holds, or -1.
        end = self._st[self.state * _SW + 1]
        while t < end:
            if self._tr[t * _TW + _T_FOR] and self._due(t) and self._guard(t * _TW):
                return t
            t += 1
        return -1

    def _guard(self, k):
        g = self._tr[k + _T_GUARD]
        end = self._tr[k + _T_GUARD + 1]
        while g < end:
            if not self._compare(g * _GW):
                return False
            g += 1
        return True

    def _compare(self, b):
        gd = self._gd
        x = self._operand(gd, b)
        y = self._operand(gd, b + 3)
        if x == _NO_VALUE or y == _NO_VALUE:
            return False
        b = gd[b + 2]  # the operator
        if b == _OP_LT:
            return x < y
        if b == _OP_LE:
            return x <= y
        if b == _OP_GT:
            return x > y
        if b == _OP_GE:
            return x >= y
        if b == _OP_EQ:
            return x == y
        return x != y

    def _operand(self, arr, b):
        k = arr[b]
        if k == _O_CONST:
            return arr[b + 1]
        if k == _O_VAR:
            return self.vars[arr[b + 1]]
        if k == _O_INPUT:
            return self.last[arr[b + 1]]
        return _NO_VALUE

    def _fire(self, t):
        n = self.transitions
        self.transitions = n + 1 if n < _TICKS_MAX else 0
        k = t * _TW
        n = self._tr[k + _T_TARGET]
        if n < 0:
            self._hold[t] = _OFF
            self._run(self._tr, k + _T_ACT)
            return
        self._run(self._st, self.state * _SW + _S_EXIT)
        self._run(self._tr, k + _T_ACT)
        self._enter(n)

    def _enter(self, s):
        self.state = s
        b = s * _SW
        t = self._st[b]
        while t < self._st[b + 1]:
            self._hold[t] = _OFF
            t += 1
        self._run(self._st, b + _S_ENTRY)

    def _run(self, arr, i):
        # Run actions [arr[i], arr[i + 1]).
        a = arr[i]
        end = arr[i + 1]
        while a < end:
            self._act(a * _AW)
            a += 1

    def _act(self, b):
        ac = self._ac
        k = ac[b]
        x = ac[b + 1]
        v = ac[b + 3]
        if k == _ACT_START_TIMER:  # _arm inlined: this is the per-event path
            self._deadline[x] = ticks_add(self._now, v)
        elif k == _ACT_CANCEL_TIMER:
            self._deadline[x] = _OFF
        elif k == _ACT_SET_PERIOD:
            self._period[x] = v
            self._host.set_period(x, v)
        else:
            v = self._operand(ac, b + 2)
            if k == _ACT_PUBLISH:
                self._host.publish(x, v)
            elif v != _NO_VALUE:
                self._apply(k, x, v)

    def _arm(self, t, ms):
        # Start timer t to fire ms from now, or stop it if ms < 0 (a restored snapshot's).
        self._deadline[t] = _OFF if ms < 0 else ticks_add(self._now, ms)

    def _apply(self, k, x, v):
        if k == _ACT_SET_OUTPUT:
            if v > _S16_MAX:
                v = _S16_MAX
            elif v < -_S16_MAX:
                v = -_S16_MAX
            self.outputs[x] = v
            self._host.output(x, v)
            return
        if k == _ACT_ADD_VAR:
            v += self.vars[x]
            if v > _VAR_MAX:
                v = _VAR_MAX
            elif v < -_VAR_MAX:
                v = -_VAR_MAX
        self.vars[x] = v

    # Snapshots.

    def snapshot_size(self):
        """Bytes of this program's snapshots."""
        return self._snap_size

    def snapshot_into(self, buf):
        """Write a snapshot into bytearray ``buf`` (at least ``snapshot_size()`` bytes);
        return its length. Timers are saved as remaining ms (0 if already due)."""
        if len(buf) < self._snap_size:
            raise ValueError("snapshot buffer: %d bytes, need %d" % (len(buf), self._snap_size))
        h = self.program._h  # the sha256 digest: hash_prefix is its first 8 bytes
        i = 0
        while i < 8:
            buf[i] = h[i]
            i += 1
        buf[8] = _SNAP_FORMAT
        buf[9] = self.state
        buf[10] = len(self.vars)
        buf[11] = len(self.outputs)
        buf[12] = self._ntimers
        buf[13] = len(self._period)
        buf[14] = 0
        buf[15] = 0
        i = _put_all(buf, _SNAP_HEADER, self.vars)
        i = _put_all(buf, i, self.outputs)
        i = self._put_timers(buf, i)
        return _put_all(buf, i, self._period)

    def _put_timers(self, buf, off):
        now = self._clock()
        t = 0
        while t < self._ntimers:
            d = self._deadline[t]
            if d >= 0:
                d = elapsed(d, now)
                if d < 0:
                    d = 0
            _put(buf, off, d)
            off += 4
            t += 1
        return off

    def snapshot(self):
        """A snapshot as bytes (allocates; see ``snapshot_into``)."""
        buf = bytearray(self._snap_size)
        self.snapshot_into(buf)
        return bytes(buf)

    def restore(self, snap):
        """Load a snapshot of this program: state, vars, outputs, timers (restarted with
        their remaining time), periods. ``start()`` then re-applies outputs and periods.
        Raises ValueError, changing nothing, for a malformed snapshot or another
        program's."""
        from shared.workflow import snapshot

        snapshot.restore(self, snap)
