"""Compiled workflow programs: the compact device form, its limits, and its loader.

Boards install a workflow from this form (``Program(blob)``) instead of parsing authoring
JSON; ``shared.workflow.compile`` writes it. The constants and limits named below are
``shared.compact``'s; the loader and its checks are ``shared.progload``, which a board imports
only while it boots or installs a workflow. This module is the part a board keeps: the
loaded program.

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

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_SW = const(7)  # record widths and offsets: shared.compact's (a test checks)
_S_FLAGS = const(6)
_F_FINAL = const(1)
_IW = const(3)
_FW = const(3)
_MW = const(3)
# The string table's sections, in its order, between spaces (``_k`` holds where each
# begins): what ``Program.__getattr__`` decodes for each name. One str, not a tuple of them.
_NAMES = const(
    " name state_names input_names input_channels output_names var_names timer_names"
    " event_names command_names _migrate_names "
)


class Program:
    """A compiled workflow, decoded and checked (by ``shared.progload``).

    Raises ValueError with the reason for anything malformed: bad magic or format,
    truncated or trailing bytes, counts over the limits, indexes or values out of range.

    Attributes: ``name``, ``version``, ``hash`` (hex sha256 of the blob), ``hash_prefix``
    (its first 8 bytes), ``initial``; name tuples ``state_names``, ``input_names``,
    ``input_channels``, ``output_names``, ``var_names``, ``timer_names``, ``event_names``,
    ``command_names``; ``period_ms`` and ``var_init`` (tuples of ints); and the record
    arrays ``states``, ``trans``, ``guards``, ``acts`` laid out as the module doc says.

    To keep a board's heap small the names, hashes, ``period_ms`` and ``var_init`` are not
    stored as such: each access decodes them from the blob's string table (kept as one
    bytes object), the sha256 digest and the records (``__getattr__``), so it allocates.
    """

    def __init__(self, blob):
        from shared import progload

        progload.load(self, blob)

    def __getattr__(self, a):
        """Decode attribute ``a`` (a name, a hash, ``period_ms`` or ``var_init``); any
        other name raises AttributeError."""
        if a == "hash":
            import binascii

            return binascii.hexlify(self._h).decode()
        if a == "hash_prefix":
            return self._h[:8]
        if a == "var_init":
            return tuple(self._vi)
        if a == "period_ms":
            out = []
            for b in range(0, len(self._inputs), _IW):
                out.append(self._inputs[b])
            return tuple(out)
        i = _NAMES.find(a)  # a whole word of _NAMES (found without allocating)
        while i > 0 and not (_NAMES.startswith(" ", i - 1) and _NAMES.startswith(" ", i + len(a))):
            i = _NAMES.find(a, i + 1)
        if i <= 0 or " " in a:
            raise AttributeError(a)
        i = _NAMES.count(" ", 0, i) - 1  # the section's index
        s = self._s
        k = self._k
        out = []
        pos = k[-1]  # the strings' bytes follow one length byte per string
        for j in range(k[i + 1]):
            if j >= k[i]:
                out.append(s[pos : pos + s[j]].decode())
            pos += s[j]
        return out[0] if i == 0 else tuple(out)

    def filters(self, i):
        """Input ``i``'s filter chain as a list of ``(code, params)`` for catalog.build_chain."""
        out = []
        f = self._filters
        for b in range(_FW * self._inputs[i * _IW + 1], _FW * self._inputs[i * _IW + 2], _FW):
            out.append((f[b], tuple(self._params[f[b + 1] : f[b + 2]])))
        return out

    def migration(self, old_version):
        """``{old state name: new state index}`` declared for ``old_version``, or None."""
        m = self._migrate
        for b in range(0, len(m), _MW):
            if m[b] == old_version:
                out = {}
                names = self._migrate_names
                for e in range(m[b + 1], m[b + 2]):
                    out[names[e]] = self._migrate_to[e]
                return out
        return None

    def is_final(self, s):
        """True if state ``s`` is final."""
        return bool(self.states[s * _SW + _S_FLAGS] & _F_FINAL)
