"""Lay out a valid definition's records as the compiled device form (the layout is
``shared.workflow.form``'s).
"""

import struct

from shared.workflow.form import FORMAT, MAGIC, MAX_BLOB


def encode(c):
    """The device form of the definition Checker ``c`` found valid, as bytes; None, with an
    error recorded in ``c``, if it is over MAX_BLOB."""
    d = c.defn
    words = []
    for recs in (c.st, c.tr, c.gd, c.ac):
        for r in recs:
            words.extend(r)
    params = []
    fcount = 0
    for i in range(len(c.filters)):
        words.extend((c.periods[i], fcount, fcount + len(c.filters[i])))
        fcount += len(c.filters[i])
    for chain in c.filters:
        for code, ps in chain:
            words.extend((code, len(params), len(params) + len(ps)))
            params.extend(ps)
    words.extend(params)
    words.extend(c.var_init)
    mig_names = []
    targets = []
    for old, entries in c.mig:
        words.extend((old, len(targets), len(targets) + len(entries)))
        for name, new in entries:
            mig_names.append(name)
            targets.append(new)
    words.extend(targets)
    strs = [d["name"]]
    for table in (c.states, c.inputs):
        strs.extend(_ordered(table))
    strs.extend(c.channels)
    for table in (c.outputs, c.vars, c.timers, c.events, c.commands):
        strs.extend(_ordered(table))
    strs.extend(mig_names)
    data = "".join(strs).encode()
    header = (
        FORMAT,
        d["version"],
        c.states[d["initial"]],
        len(c.st),
        len(c.tr),
        len(c.gd),
        len(c.ac),
        len(c.inputs),
        len(c.outputs),
        len(c.vars),
        len(c.timers),
        len(c.events),
        len(c.commands),
        fcount,
        len(params),
        len(c.mig),
        len(targets),
        len(data),
    )
    blob = (
        MAGIC
        + struct.pack("<18i", *header)
        + struct.pack("<%di" % len(words), *words)
        + bytes([len(s) for s in strs])
        + data
    )
    if len(blob) > MAX_BLOB:
        c.err("$", "the compiled form is %d bytes, over the %d-byte limit" % (len(blob), MAX_BLOB))
        return None
    return blob


def _ordered(table):
    # A name -> index dict's names in index order (dict order differs on MicroPython).
    out = [None] * len(table)
    for k in table:
        out[table[k]] = k
    return out
