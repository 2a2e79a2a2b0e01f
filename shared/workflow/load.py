"""Loading the compiled device form (``shared.workflow.form`` documents it): decode it and
check every count, index and value.

``shared.workflow.program.Program(blob)`` calls ``load``. A board needs it only while it boots
or installs a workflow, so the firmware drops this module again afterwards.
"""

import struct
import sys
from array import array

from shared import const
from shared.filters.catalog import filter_name, param_names

# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_ACT_CANCEL_TIMER = const(3)
_ACT_PUBLISH = const(6)
_ACT_SET_OUTPUT = const(1)
_ACT_SET_PERIOD = const(7)
_ACT_START_TIMER = const(2)
_AW = const(4)
_C_ABOVE = const(1)
_C_ANY = const(5)
_C_BELOW = const(2)
_DURATION_MAX = const(536870911)  # ms; half the 2**30 tick range, so tick diffs are exact
_EV_BOOT = const(0)
_EV_COMMAND = const(4)
_EV_SAMPLE = const(5)
_EV_TIMER = const(3)
_FORMAT = const(1)
_FW = const(3)
_F_FINAL = const(1)
_F_SAFE = const(2)
_GW = const(5)
_HEADER_BYTES = const(76)  # 4 + 4 * HEADER_WORDS
_IW = const(3)
_MAX_ACTIONS = const(256)  # entry, exit and transition actions together
_MAX_BLOB = const(8192)
_MAX_COMMANDS = const(16)
_MAX_EVENTS = const(16)
_MAX_FILTERS = const(8)  # per input
_MAX_GUARD_TERMS = const(8)  # comparisons ANDed in one guard
_MAX_INPUTS = const(8)
_MAX_MIGRATE_ENTRIES = const(64)
_MAX_MIGRATE_VERSIONS = const(16)
_MAX_NAME = const(24)
_MAX_OUTPUTS = const(16)
_MAX_PARAMS = const(8)  # per filter
_MAX_STATES = const(32)
_MAX_TIMERS = const(8)
_MAX_TRANSITIONS = const(128)
_MAX_VARS = const(16)
_MAX_VERSION = const(1048576)  # 2**20
_MW = const(3)
_OP_LT = const(0)
_OP_NE = const(5)
_O_CONST = const(0)
_O_INPUT = const(1)
_O_NONE = const(3)
_O_VAR = const(2)
_PERIOD_MIN = const(10)  # ms
_S16_MAX = const(32767)
_SAFE_SHIFT = const(8)  # the state flags' bits from here on hold the workflow's safe_wait_s
_SAFE_WAIT_MAX = const(86400)  # s
_SW = const(7)
_S_FLAGS = const(6)
_TICKS_MAX = const(1073741823)  # 2**30 - 1: ticks wrap to 0 after this
_TW = const(10)
_T_ACT = const(7)
_T_ARG = const(1)
_T_COND = const(2)
_T_FOR = const(4)
_T_GUARD = const(5)
_T_LEVEL = const(3)
_T_TARGET = const(9)
_VAR_MAX = const(536870911)  # 2**29 - 1

# Per action kind: the index in the counts tuple of what its target indexes.
_ACTION_COUNT = b"\x05\x07\x07\x06\x06\x08\x04"


def _bad(msg):
    raise ValueError(msg)


def load(p, blob):
    """Decode and check ``blob`` into the attributes of Program ``p`` (see Program's doc).

    Raises ValueError with the reason for anything malformed.
    """
    if not isinstance(blob, (bytes, bytearray)):
        _bad("blob: expected bytes, got " + type(blob).__name__)
    blob = bytes(blob)
    size = len(blob)
    if size > _MAX_BLOB:
        _bad("blob: %d bytes, over the %d-byte limit" % (size, _MAX_BLOB))
    if size < _HEADER_BYTES or blob[:4] != b"ORWF":
        _bad("blob: not a compiled workflow (bad magic or shorter than the header)")
    h = struct.unpack_from("<18i", blob, 4)
    if h[0] != _FORMAT:
        _bad("blob: format %d, this loader reads format %d" % (h[0], _FORMAT))
    version = _num(h[1], 1, _MAX_VERSION, "version")
    ns = _num(h[3], 1, _MAX_STATES, "state count")
    nt = _num(h[4], 0, _MAX_TRANSITIONS, "transition count")
    ng = _num(h[5], 0, _MAX_TRANSITIONS * _MAX_GUARD_TERMS, "guard comparison count")
    na = _num(h[6], 0, _MAX_ACTIONS, "action count")
    ni = _num(h[7], 0, _MAX_INPUTS, "input count")
    no = _num(h[8], 0, _MAX_OUTPUTS, "output count")
    nv = _num(h[9], 0, _MAX_VARS, "var count")
    ntm = _num(h[10], 0, _MAX_TIMERS, "timer count")
    ne = _num(h[11], 0, _MAX_EVENTS, "event count")
    nc = _num(h[12], 0, _MAX_COMMANDS, "command count")
    nf = _num(h[13], 0, _MAX_INPUTS * _MAX_FILTERS, "filter count")
    npar = _num(h[14], 0, _MAX_INPUTS * _MAX_FILTERS * _MAX_PARAMS, "filter param count")
    nmv = _num(h[15], 0, _MAX_MIGRATE_VERSIONS, "migrate version count")
    nme = _num(h[16], 0, _MAX_MIGRATE_ENTRIES, "migrate entry count")
    nsb = _num(h[17], 0, _MAX_BLOB, "string bytes")
    p.initial = _num(h[2], 0, ns - 1, "initial state")
    p.version = version
    nstr = 1 + ns + 2 * ni + no + nv + ntm + ne + nc + nme
    words = ns * _SW + nt * _TW + ng * _GW + na * _AW + ni * _IW + nf * _FW + npar + nv
    words += nmv * _MW + nme
    want = _HEADER_BYTES + 4 * words + nstr + nsb
    if size != want:
        _bad(
            "blob: %d bytes where the header implies %d (%s)"
            % (size, want, "truncated" if size < want else "trailing bytes")
        )

    # All int32 sections in one array, then one array per section (slices copy).
    w = array("i", blob[_HEADER_BYTES : _HEADER_BYTES + 4 * words])
    if sys.byteorder != "little":
        w.byteswap()
    o = 0
    sec = []
    for n in (ns * _SW, nt * _TW, ng * _GW, na * _AW, ni * _IW, nf * _FW, npar, nv, nmv * _MW):
        sec.append(w[o : o + n])
        o += n
    sec.append(w[o:])
    p.states, p.trans, p.guards, p.acts, inputs, p._filters, p._params = sec[:7]
    var_init, p._migrate, p._migrate_to = sec[7:]
    del w, sec

    # The string table stays one bytes object (Program decodes names when asked); ``_k``
    # holds where each of its sections (program.py's _NAMES) begins, then the string count.
    pos = _HEADER_BYTES + 4 * words
    strs = _strings(blob, pos, nstr, nsb)
    k = [0, 1]
    for n, what in ((ns, "state"), (ni, "input"), (ni, ""), (no, "output"), (nv, "var")):
        _names(what, strs, k, n)
    for n, what in ((ntm, "timer"), (ne, "event"), (nc, "command"), (nme, "")):
        _names(what, strs, k, n)
    del strs
    p._s = blob[pos:]
    p._k = bytes(k)

    counts = (ns, nt, ng, na, ni, no, nv, ntm, ne, nc)
    _check_states(p.states, ns, nt, na)
    for t in range(nt):
        _check_transition(p.trans, t, counts)
    for g in range(ng):
        _check_guard(p.guards, g, counts)
    for a in range(na):
        _check_action(p.acts, a, counts)
    for i in range(ni):
        b = i * _IW
        _num(inputs[b], _PERIOD_MIN, _DURATION_MAX, "input %d period_ms", i)
        _range(inputs[b + 1], inputs[b + 2], nf, _MAX_FILTERS, "input %d filters", i)
    p._inputs = inputs
    _check_filters(p._filters, nf, npar)
    for v in p._params:
        _num(v, -_TICKS_MAX - 1, _TICKS_MAX, "filter param")
    for v in var_init:
        _num(v, -_VAR_MAX, _VAR_MAX, "var init")
    p._vi = var_init
    last = 0
    for m in range(nmv):
        b = m * _MW
        last = _num(p._migrate[b], last + 1, version - 1, "migrate old version")
        _range(
            p._migrate[b + 1],
            p._migrate[b + 2],
            nme,
            _MAX_STATES,
            "migrate version %d entries",
            last,
        )
    for s in p._migrate_to:
        _num(s, 0, ns - 1, "migrate target state")

    import hashlib

    p._h = hashlib.sha256(blob).digest()


def _strings(blob, pos, nstr, nsb):
    # The string table: check every byte before decoding, then slice per string.
    lens = blob[pos : pos + nstr]
    pos += nstr
    if sum(lens) != nsb:
        _bad("strings: lengths add up to %d, header says %d bytes" % (sum(lens), nsb))
    strs = []
    for n in lens:
        s = blob[pos : pos + n]
        if not 0 < n <= _MAX_NAME or not 97 <= s[0] <= 122:
            _bad("strings: string %d is not a name" % len(strs))
        for c in s:
            if not (97 <= c <= 122 or 48 <= c <= 57 or c == 95):  # [a-z0-9_]
                _bad("strings: string %d is not a name" % len(strs))
        strs.append(s.decode())
        pos += n
    return strs


def _check_states(st, ns, nt, na):
    w = _num(st[_S_FLAGS] >> _SAFE_SHIFT, 0, _SAFE_WAIT_MAX, "safe_wait_s")
    for s in range(ns):
        b = s * _SW
        _range(st[b], st[b + 1], nt, _MAX_TRANSITIONS, "state %d transitions", s)
        _range(st[b + 2], st[b + 3], na, _MAX_ACTIONS, "state %d entry actions", s)
        _range(st[b + 4], st[b + 5], na, _MAX_ACTIONS, "state %d exit actions", s)
        # the same safe_wait_s in every state; the safe bit only with one
        f = st[b + _S_FLAGS] - (w << _SAFE_SHIFT)
        _num(f, 0, _F_FINAL | _F_SAFE if w else _F_FINAL, "state %d flags", s)


def _check_transition(tr, t, counts):
    ns, nt, ng, na, ni, no, nv, ntm, ne, nc = counts
    b = t * _TW
    ev = _num(tr[b], _EV_BOOT, _EV_SAMPLE, "transition %d event", t)
    hi = 0
    if ev == _EV_TIMER:
        hi = ntm - 1
    elif ev == _EV_COMMAND:
        hi = nc - 1
    elif ev == _EV_SAMPLE:
        hi = ni - 1
    _num(tr[b + _T_ARG], 0, hi, "transition %d arg", t)
    lo = hi = 0
    if ev == _EV_SAMPLE:
        cond = _num(tr[b + _T_COND], _C_ABOVE, _C_ANY, "transition %d condition", t)
        _num(tr[b + _T_LEVEL], -_S16_MAX, _S16_MAX, "transition %d level", t)
        if cond <= _C_BELOW and tr[b + _T_FOR]:
            lo = 1
            hi = _DURATION_MAX
    else:
        _num(tr[b + _T_COND], 0, 0, "transition %d condition", t)
        _num(tr[b + _T_LEVEL], 0, 0, "transition %d level", t)
    _num(tr[b + _T_FOR], lo, hi, "transition %d for_ms", t)
    _range(tr[b + _T_GUARD], tr[b + _T_GUARD + 1], ng, _MAX_GUARD_TERMS, "transition %d guard", t)
    _range(tr[b + _T_ACT], tr[b + _T_ACT + 1], na, _MAX_ACTIONS, "transition %d actions", t)
    _num(tr[b + _T_TARGET], -1, ns - 1, "transition %d target", t)


def _check_guard(gd, g, counts):
    ni, nv = counts[4], counts[6]
    b = g * _GW
    lk = _num(gd[b], _O_INPUT, _O_VAR, "guard comparison %d left kind", g)
    _num(gd[b + 1], 0, (ni if lk == _O_INPUT else nv) - 1, "guard comparison %d left index", g)
    _num(gd[b + 2], _OP_LT, _OP_NE, "guard comparison %d operator", g)
    _operand(gd, b + 3, ni, nv, _VAR_MAX, False, "guard comparison %d right operand", g)


def _check_action(ac, a, counts):
    b = a * _AW
    k = _num(ac[b], _ACT_SET_OUTPUT, _ACT_SET_PERIOD, "action %d kind", a)
    n = counts[_ACTION_COUNT[k - 1]]
    ni, nv = counts[4], counts[6]
    _num(ac[b + 1], 0, n - 1, "action %d target", a)
    if k == _ACT_START_TIMER or k == _ACT_SET_PERIOD:
        _num(ac[b + 2], _O_CONST, _O_CONST, "action %d operand kind", a)
        lo = 1 if k == _ACT_START_TIMER else _PERIOD_MIN
        _num(ac[b + 3], lo, _DURATION_MAX, "action %d ms", a)
    elif k == _ACT_CANCEL_TIMER:
        _num(ac[b + 2], _O_NONE, _O_NONE, "action %d operand kind", a)
        _num(ac[b + 3], 0, 0, "action %d operand", a)
    else:
        m = _S16_MAX if k == _ACT_SET_OUTPUT else _VAR_MAX
        _operand(ac, b + 2, ni, nv, m, k == _ACT_PUBLISH, "action %d operand", a)


def _check_filters(fs, nf, npar):
    for f in range(nf):
        b = f * _FW
        try:
            n = len(param_names(fs[b]))
        except ValueError as e:
            raise ValueError("filter %d %s" % (f, e)) from None
        _range(fs[b + 1], fs[b + 2], npar, _MAX_PARAMS, "filter %d params", f)
        if fs[b + 2] - fs[b + 1] != n:
            _bad(
                "filter %d: %d params, %s takes %d"
                % (f, fs[b + 2] - fs[b + 1], filter_name(fs[b]), n)
            )


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
    if k == _O_CONST:
        _num(v, -most, most, what, i)
    elif k == _O_INPUT:
        _num(v, 0, ni - 1, what, i)
    elif k == _O_VAR:
        _num(v, 0, nv - 1, what, i)
    elif k != _O_NONE or not none_ok or v != 0:
        _bad("%s: kind %d value %d is not an operand here" % (what % i, k, v))


def _names(what, strs, k, n):
    # Check that the next n strings (from k[-1] on) are distinct if ``what`` names them,
    # then append where the section after them begins.
    b = k[-1]
    for i in range(b, b + n):
        for j in range(b, i):
            if what and strs[i] == strs[j]:
                _bad("strings: duplicate %s name %r" % (what, strs[i]))
    k.append(b + n)
