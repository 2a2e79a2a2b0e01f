"""The compiled workflow a board keeps: ``Program(blob)`` decodes and checks the device form
(``shared.workflow.form`` documents it) with ``shared.workflow.load``, which a board imports only
while it boots or installs a workflow, and keeps the records the executor runs on.
"""

from shared import const

# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_FW = const(3)
_F_FINAL = const(1)
_IW = const(3)
_MW = const(3)
_SW = const(7)
_S_FLAGS = const(6)
# The string table's sections, in its order, between spaces (``_k`` holds where each
# begins): what ``Program.__getattr__`` decodes for each name. One str, not a tuple of them.
_NAMES = const(
    " name state_names input_names input_channels output_names var_names timer_names"
    " event_names command_names _migrate_names "
)


class Program:
    """A compiled workflow, decoded and checked (by ``shared.workflow.load``).

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
        from shared.workflow import load

        load.load(self, blob)

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
