"""Compiled workflow programs: the compact device form, its limits, and its loader.

Boards install a workflow from this form (``Program(blob)``) instead of parsing authoring
JSON; ``shared.workflow.compile`` writes it. The constants here are shared by both sides.

Device form (all integers little-endian)
----------------------------------------
``b"ORWF"`` then a header of 18 int32 words:

    format (=FORMAT), version, initial state, and the counts of states, transitions, guard
    comparisons, actions, inputs, outputs, vars, timers, events, commands, filters, filter
    params, migrate versions, migrate entries, and string-data bytes.

Then int32 sections, each ``count * width`` words, each loaded with one slice into an
``array('i')`` (offsets below are word offsets inside a record):

    states       _SW=7   t_begin t_end  entry_begin entry_end  exit_begin exit_end  flags
    transitions  _TW=10  event arg cond level for_ms  g_begin g_end  a_begin a_end  target
    guards       _GW=5   lhs_kind lhs_index op rhs_kind rhs_value
    actions      _AW=4   kind arg operand_kind operand_value
    inputs       _IW=3   period_ms f_begin f_end
    filters      _FW=3   code p_begin p_end
    params       1      filter parameters, in order
    var_init     1      initial value of each var
    migrate      _MW=3   old_version e_begin e_end       (old_version ascending)
    migrate_to   1      new state index of each migrate entry

``[begin, end)`` are index ranges into the named section. ``target`` is -1 for an internal
transition. ``event`` is an ``EV_*`` kind; ``arg`` the timer, command or input index (0
otherwise); ``cond`` a ``C_*`` code for sample triggers (0 otherwise), ``level`` its S16
level and ``for_ms`` its hold time (0: none). Operands are ``(O_CONST, value)``,
``(O_INPUT, index)``, ``(O_VAR, index)`` or ``(O_NONE, 0)``. State flags: bit 0 final.

Last, the string table: one length byte per string, then the strings' bytes, in this
order: workflow name, state names, input names, input channels, output names, var names,
timer names, event names, command names, then the old state name of each migrate entry.
Every string is a name: 1..24 chars of ``[a-z0-9_]`` starting with a letter.
"""

import struct
import sys
from array import array

from shared.filters import filter_class

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


MAGIC = b"ORWF"
FORMAT = const(1)
_HEADER_WORDS = const(18)
_HEADER_BYTES = const(76)  # 4 + 4 * _HEADER_WORDS

# Limits, checked by the compiler and again by the loader.
MAX_STATES = const(32)
MAX_TRANSITIONS = const(128)
MAX_ACTIONS = const(256)  # entry, exit and transition actions together
MAX_GUARD_TERMS = const(8)  # comparisons ANDed in one guard
MAX_INPUTS = const(8)
MAX_FILTERS = const(8)  # per input
MAX_PARAMS = const(8)  # per filter
MAX_VARS = const(16)
MAX_TIMERS = const(8)
MAX_EVENTS = const(16)
MAX_COMMANDS = const(16)
MAX_OUTPUTS = const(16)
MAX_MIGRATE_VERSIONS = const(16)
MAX_MIGRATE_ENTRIES = const(64)
MAX_NAME = const(24)
MAX_SOURCE = const(16384)  # authoring JSON text, bytes
MAX_BLOB = const(8192)
MAX_VERSION = const(1048576)  # 2**20

# Ranges. Levels, input comparisons and output values are S16 samples; vars stay within
# +-VAR_MAX so that var + operand never leaves the small-int range before it saturates.
S16_MAX = const(32767)
VAR_MAX = const(536870911)  # 2**29 - 1
DURATION_MAX = const(536870911)  # ms; half the 2**30 tick range, so tick diffs are exact
PERIOD_MIN = const(10)  # ms
TICKS_MAX = const(1073741823)  # 2**30 - 1: ticks wrap to 0 after this
NO_VALUE = const(-536870912)  # -2**29: an input with no value yet; outside every range

# Events (transition `event` and Executor.step kinds).
EV_BOOT = const(0)
EV_LINK_UP = const(1)
EV_LINK_DOWN = const(2)
EV_TIMER = const(3)
EV_COMMAND = const(4)
EV_SAMPLE = const(5)

# Sample conditions.
C_ABOVE = const(1)
C_BELOW = const(2)
C_UP = const(3)
C_DOWN = const(4)
C_ANY = const(5)

# Guard operators: a comparison's op is its index in OPS.
OPS = ("<", "<=", ">", ">=", "==", "!=")
_OP_LT = const(0)
_OP_LE = const(1)
_OP_GT = const(2)
_OP_GE = const(3)
_OP_EQ = const(4)
_OP_NE = const(5)

# Operand kinds.
O_CONST = const(0)
O_INPUT = const(1)
O_VAR = const(2)
O_NONE = const(3)

# Action kinds.
ACT_SET_OUTPUT = const(1)
ACT_START_TIMER = const(2)
ACT_CANCEL_TIMER = const(3)
ACT_SET_VAR = const(4)
ACT_ADD_VAR = const(5)
ACT_PUBLISH = const(6)
ACT_SET_PERIOD = const(7)

# Record widths and field offsets (the executor keeps its own copies).
_SW = const(7)
_S_TRANS = const(0)
_S_ENTRY = const(2)
_S_EXIT = const(4)
_S_FLAGS = const(6)
F_FINAL = const(1)
_TW = const(10)
_T_EVENT = const(0)
_T_ARG = const(1)
_T_COND = const(2)
_T_LEVEL = const(3)
_T_FOR = const(4)
_T_GUARD = const(5)
_T_ACT = const(7)
_T_TARGET = const(9)
_GW = const(5)
_AW = const(4)
_IW = const(3)
_FW = const(3)
_MW = const(3)

# Per action kind: the index in the counts tuple of what its target indexes.
_ACTION_COUNT = (5, 7, 7, 6, 6, 8, 4)
_NAME_CHARS = b"abcdefghijklmnopqrstuvwxyz0123456789_"


def _bad(msg):
    raise ValueError(msg)


def is_name(s):
    """True if ``s`` is a str of 1..MAX_NAME chars of ``[a-z0-9_]`` starting with a letter."""
    if not isinstance(s, str) or not 0 < len(s) <= MAX_NAME or not "a" <= s[0] <= "z":
        return False
    for c in s:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "_"):
            return False
    return True


class Program:
    """A compiled workflow, decoded and checked.

    Raises ValueError with the reason for anything malformed: bad magic or format,
    truncated or trailing bytes, counts over the limits, indexes or values out of range.

    Attributes: ``name``, ``version``, ``hash`` (hex sha256 of the blob), ``hash_prefix``
    (its first 8 bytes), ``initial``; name tuples ``state_names``, ``input_names``,
    ``input_channels``, ``output_names``, ``var_names``, ``timer_names``, ``event_names``,
    ``command_names``; ``period_ms`` and ``var_init`` (tuples of ints); and the record
    arrays ``states``, ``trans``, ``guards``, ``acts`` laid out as the module doc says.
    """

    def __init__(self, blob):
        if not isinstance(blob, (bytes, bytearray)):
            _bad("blob: expected bytes, got " + type(blob).__name__)
        blob = bytes(blob)
        size = len(blob)
        if size > MAX_BLOB:
            _bad("blob: %d bytes, over the %d-byte limit" % (size, MAX_BLOB))
        if size < _HEADER_BYTES or blob[:4] != MAGIC:
            _bad("blob: not a compiled workflow (bad magic or shorter than the header)")
        h = struct.unpack_from("<18i", blob, 4)
        if h[0] != FORMAT:
            _bad("blob: format %d, this loader reads format %d" % (h[0], FORMAT))
        version = _num(h[1], 1, MAX_VERSION, "version")
        ns = _num(h[3], 1, MAX_STATES, "state count")
        nt = _num(h[4], 0, MAX_TRANSITIONS, "transition count")
        ng = _num(h[5], 0, MAX_TRANSITIONS * MAX_GUARD_TERMS, "guard comparison count")
        na = _num(h[6], 0, MAX_ACTIONS, "action count")
        ni = _num(h[7], 0, MAX_INPUTS, "input count")
        no = _num(h[8], 0, MAX_OUTPUTS, "output count")
        nv = _num(h[9], 0, MAX_VARS, "var count")
        ntm = _num(h[10], 0, MAX_TIMERS, "timer count")
        ne = _num(h[11], 0, MAX_EVENTS, "event count")
        nc = _num(h[12], 0, MAX_COMMANDS, "command count")
        nf = _num(h[13], 0, MAX_INPUTS * MAX_FILTERS, "filter count")
        npar = _num(h[14], 0, MAX_INPUTS * MAX_FILTERS * MAX_PARAMS, "filter param count")
        nmv = _num(h[15], 0, MAX_MIGRATE_VERSIONS, "migrate version count")
        nme = _num(h[16], 0, MAX_MIGRATE_ENTRIES, "migrate entry count")
        nsb = _num(h[17], 0, MAX_BLOB, "string bytes")
        self.initial = _num(h[2], 0, ns - 1, "initial state")
        self.version = version
        nstr = 1 + ns + 2 * ni + no + nv + ntm + ne + nc + nme
        words = ns * _SW + nt * _TW + ng * _GW + na * _AW + ni * _IW + nf * _FW + npar + nv
        words += nmv * _MW + nme
        want = _HEADER_BYTES + 4 * words + nstr + nsb
        if size != want:
            _bad(
                "blob: %d bytes where the header implies %d (%s)"
                % (size, want, "truncated" if size < want else "trailing bytes")
            )

        self._off = _HEADER_BYTES
        self.states = self._words(blob, ns * _SW)
        self.trans = self._words(blob, nt * _TW)
        self.guards = self._words(blob, ng * _GW)
        self.acts = self._words(blob, na * _AW)
        inputs = self._words(blob, ni * _IW)
        self._filters = self._words(blob, nf * _FW)
        self._params = self._words(blob, npar)
        var_init = self._words(blob, nv)
        self._migrate = self._words(blob, nmv * _MW)
        self._migrate_to = self._words(blob, nme)

        # String table: check every byte before decoding, then slice per string.
        lens = blob[self._off : self._off + nstr]
        pos = self._off + nstr
        if sum(lens) != nsb:
            _bad("strings: lengths add up to %d, header says %d bytes" % (sum(lens), nsb))
        strs = []
        for n in lens:
            s = blob[pos : pos + n]
            if not 0 < n <= MAX_NAME or not 97 <= s[0] <= 122:
                _bad("strings: string %d is not a name" % len(strs))
            for c in s:
                if c not in _NAME_CHARS:
                    _bad("strings: string %d is not a name" % len(strs))
            strs.append(s.decode())
            pos += n
        self.name = strs[0]
        k = 1
        self.state_names = _names("state", strs, k, ns)
        k += ns
        self.input_names = _names("input", strs, k, ni)
        k += ni
        self.input_channels = tuple(strs[k : k + ni])
        k += ni
        self.output_names = _names("output", strs, k, no)
        k += no
        self.var_names = _names("var", strs, k, nv)
        k += nv
        self.timer_names = _names("timer", strs, k, ntm)
        k += ntm
        self.event_names = _names("event", strs, k, ne)
        k += ne
        self.command_names = _names("command", strs, k, nc)
        k += nc
        self._migrate_names = tuple(strs[k:])

        counts = (ns, nt, ng, na, ni, no, nv, ntm, ne, nc)
        self._check_states(ns, nt, na)
        for t in range(nt):
            self._check_transition(t, counts)
        for g in range(ng):
            self._check_guard(g, counts)
        for a in range(na):
            self._check_action(a, counts)
        periods = []
        for i in range(ni):
            b = i * _IW
            periods.append(_num(inputs[b], PERIOD_MIN, DURATION_MAX, "input %d period_ms", i))
            _range(inputs[b + 1], inputs[b + 2], nf, MAX_FILTERS, "input %d filters", i)
        self._inputs = inputs
        self.period_ms = tuple(periods)
        for f in range(nf):
            b = f * _FW
            try:
                cls = filter_class(self._filters[b])
            except ValueError as e:
                raise ValueError("filter %d %s" % (f, e)) from None
            _range(
                self._filters[b + 1], self._filters[b + 2], npar, MAX_PARAMS, "filter %d params", f
            )
            if self._filters[b + 2] - self._filters[b + 1] != len(cls.ARGS):
                _bad(
                    "filter %d: %d params, %s takes %d"
                    % (f, self._filters[b + 2] - self._filters[b + 1], cls.__name__, len(cls.ARGS))
                )
        for p in self._params:
            _num(p, -TICKS_MAX - 1, TICKS_MAX, "filter param")
        for v in var_init:
            _num(v, -VAR_MAX, VAR_MAX, "var init")
        self.var_init = tuple(var_init)
        last = 0
        for m in range(nmv):
            b = m * _MW
            last = _num(self._migrate[b], last + 1, version - 1, "migrate old version")
            _range(
                self._migrate[b + 1],
                self._migrate[b + 2],
                nme,
                MAX_STATES,
                "migrate version %d entries",
                last,
            )
        for s in self._migrate_to:
            _num(s, 0, ns - 1, "migrate target state")

        import binascii
        import hashlib

        digest = hashlib.sha256(blob).digest()
        self.hash = binascii.hexlify(digest).decode()
        self.hash_prefix = digest[:8]

    def _words(self, blob, n):
        # The next n int32 words of the blob as an array('i').
        a = array("i", blob[self._off : self._off + 4 * n])
        if sys.byteorder != "little":
            a.byteswap()
        self._off += 4 * n
        return a

    def _check_states(self, ns, nt, na):
        st = self.states
        for s in range(ns):
            b = s * _SW
            _range(st[b], st[b + 1], nt, MAX_TRANSITIONS, "state %d transitions", s)
            _range(st[b + 2], st[b + 3], na, MAX_ACTIONS, "state %d entry actions", s)
            _range(st[b + 4], st[b + 5], na, MAX_ACTIONS, "state %d exit actions", s)
            _num(st[b + _S_FLAGS], 0, F_FINAL, "state %d flags", s)

    def _check_transition(self, t, counts):
        ns, nt, ng, na, ni, no, nv, ntm, ne, nc = counts
        tr = self.trans
        b = t * _TW
        ev = _num(tr[b], EV_BOOT, EV_SAMPLE, "transition %d event", t)
        hi = 0
        if ev == EV_TIMER:
            hi = ntm - 1
        elif ev == EV_COMMAND:
            hi = nc - 1
        elif ev == EV_SAMPLE:
            hi = ni - 1
        _num(tr[b + _T_ARG], 0, hi, "transition %d arg", t)
        lo = hi = 0
        if ev == EV_SAMPLE:
            cond = _num(tr[b + _T_COND], C_ABOVE, C_ANY, "transition %d condition", t)
            _num(tr[b + _T_LEVEL], -S16_MAX, S16_MAX, "transition %d level", t)
            if cond <= C_BELOW and tr[b + _T_FOR]:
                lo = 1
                hi = DURATION_MAX
        else:
            _num(tr[b + _T_COND], 0, 0, "transition %d condition", t)
            _num(tr[b + _T_LEVEL], 0, 0, "transition %d level", t)
        _num(tr[b + _T_FOR], lo, hi, "transition %d for_ms", t)
        _range(
            tr[b + _T_GUARD], tr[b + _T_GUARD + 1], ng, MAX_GUARD_TERMS, "transition %d guard", t
        )
        _range(tr[b + _T_ACT], tr[b + _T_ACT + 1], na, MAX_ACTIONS, "transition %d actions", t)
        _num(tr[b + _T_TARGET], -1, ns - 1, "transition %d target", t)

    def _check_guard(self, g, counts):
        ni, nv = counts[4], counts[6]
        gd = self.guards
        b = g * _GW
        lk = _num(gd[b], O_INPUT, O_VAR, "guard comparison %d left kind", g)
        _num(gd[b + 1], 0, (ni if lk == O_INPUT else nv) - 1, "guard comparison %d left index", g)
        _num(gd[b + 2], _OP_LT, _OP_NE, "guard comparison %d operator", g)
        _operand(gd, b + 3, ni, nv, VAR_MAX, False, "guard comparison %d right operand", g)

    def _check_action(self, a, counts):
        ac = self.acts
        b = a * _AW
        k = _num(ac[b], ACT_SET_OUTPUT, ACT_SET_PERIOD, "action %d kind", a)
        n = counts[_ACTION_COUNT[k - 1]]
        ni, nv = counts[4], counts[6]
        _num(ac[b + 1], 0, n - 1, "action %d target", a)
        if k == ACT_START_TIMER or k == ACT_SET_PERIOD:
            _num(ac[b + 2], O_CONST, O_CONST, "action %d operand kind", a)
            lo = 1 if k == ACT_START_TIMER else PERIOD_MIN
            _num(ac[b + 3], lo, DURATION_MAX, "action %d ms", a)
        elif k == ACT_CANCEL_TIMER:
            _num(ac[b + 2], O_NONE, O_NONE, "action %d operand kind", a)
            _num(ac[b + 3], 0, 0, "action %d operand", a)
        else:
            m = S16_MAX if k == ACT_SET_OUTPUT else VAR_MAX
            _operand(ac, b + 2, ni, nv, m, k == ACT_PUBLISH, "action %d operand", a)

    def filters(self, i):
        """Input ``i``'s filter chain as a list of ``(code, params)`` for filters.build_chain."""
        out = []
        for f in range(self._inputs[i * _IW + 1], self._inputs[i * _IW + 2]):
            b = f * _FW
            out.append(
                (self._filters[b], tuple(self._params[self._filters[b + 1] : self._filters[b + 2]]))
            )
        return out

    def migration(self, old_version):
        """``{old state name: new state index}`` declared for ``old_version``, or None."""
        for m in range(len(self._migrate) // _MW):
            b = m * _MW
            if self._migrate[b] == old_version:
                out = {}
                for e in range(self._migrate[b + 1], self._migrate[b + 2]):
                    out[self._migrate_names[e]] = self._migrate_to[e]
                return out
        return None

    def is_final(self, s):
        """True if state ``s`` is final."""
        return bool(self.states[s * _SW + _S_FLAGS] & F_FINAL)


# The checks format their message (what, with index i) only when they fail.


def _num(v, lo, hi, what, i=None):
    if v < lo or v > hi:
        _bad("%s: %d is outside [%d, %d]" % (what if i is None else what % i, v, lo, hi))
    return v


def _range(begin, end, n, most, what, i):
    if begin < 0 or end < begin or end > n or end - begin > most:
        _bad(
            "%s: range [%d, %d) is not within [0, %d) or has more than %d items"
            % (what % i, begin, end, n, most)
        )


def _operand(arr, b, ni, nv, most, none_ok, what, i):
    k = arr[b]
    v = arr[b + 1]
    if k == O_CONST:
        _num(v, -most, most, what, i)
    elif k == O_INPUT:
        _num(v, 0, ni - 1, what, i)
    elif k == O_VAR:
        _num(v, 0, nv - 1, what, i)
    elif k != O_NONE or not none_ok or v != 0:
        _bad("%s: kind %d value %d is not an operand here" % (what % i, k, v))


def _names(what, strs, k, n):
    t = tuple(strs[k : k + n])
    for i in range(n):
        for j in range(i):
            if t[i] == t[j]:
                _bad("strings: duplicate %s name %r" % (what, t[i]))
    return t
