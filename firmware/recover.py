"""What a board rebuilds from flash when it starts: the reading store's state after a reboot
or a power cut (``recover``, which ``Store()`` runs), and the time anchors of recent boots
(``load_anchors``).

Needed once per boot, so the node imports this module then and drops it again
(``firmware.drop``). ``firmware.records`` documents the store's files and
``firmware.store`` its guarantees.
"""

import errno
import json
import os

from firmware.files import read
from firmware.records import CORRUPT, CURSOR, CURSOR_TMP, LOSS, LOSS_TMP, STORE_FULL, get30, sealed
from shared import const

# Copied from firmware/records.py by python -m tools.dev.consts: edit them there.
_CMAGIC = const(0xC5)  # a cursor entry
_CROTATE = const(32)  # cursor entries before cursor.log is rewritten as one
_CSIZE = const(7)  # a cursor entry
_LMAGIC = const(0x4C)  # a loss entry
_LSIZE = const(12)  # a loss entry
_MAGIC = const(0xA7)  # a reading record
_RECORD_SIZE = const(20)  # a reading record


def _cursor_max(data):
    # (largest valid seq or 0, entry count if every entry is whole and valid else -1)
    if data is None:
        return 0, 0
    best = 0
    clean = len(data) % _CSIZE == 0
    for o in range(0, len(data) - _CSIZE + 1, _CSIZE):
        s = get30(data, o + 1)
        if data[o] == _CMAGIC and s >= 0 and sealed(data, o, 5):
            if s > best:
                best = s
        else:
            clean = False
    return best, (len(data) // _CSIZE if clean else -1)


def _parse_losses(data):
    out = []
    if data is None:
        return out
    for o in range(0, len(data) - _LSIZE + 1, _LSIZE):
        a = get30(data, o + 2)
        z = get30(data, o + 6)
        r = data[o + 1]
        if data[o] == _LMAGIC and 1 <= r <= 2 and 0 < a <= z and sealed(data, o, 10):
            out.append((a, z, STORE_FULL if r == 1 else CORRUPT))
    return out


def recover(st):
    """Rebuild Store ``st``'s state from its files (``Store.__init__`` calls this)."""
    try:
        os.mkdir(st._root)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise

    acked, n = _cursor_max(read(st._path(CURSOR)))
    tmp = read(st._path(CURSOR_TMP))
    if tmp is not None:
        t = _cursor_max(tmp)[0]
        if t > acked:  # the cut came between writing cursor.tmp and the rename
            st._replace(CURSOR_TMP, CURSOR)
            acked = t
            n = 1
        else:
            st._remove(CURSOR_TMP)
    st.acked = acked
    st._cn = n if n >= 0 else _CROTATE

    data = read(st._path(LOSS))
    tmp = read(st._path(LOSS_TMP))
    if data is None and tmp is not None:  # cut after FAT's remove, before the rename
        st._replace(LOSS_TMP, LOSS)
        data = tmp
    elif tmp is not None:
        st._remove(LOSS_TMP)
    st._losses = _parse_losses(data)

    nums = []
    for name in os.listdir(st._root):
        if len(name) == 12 and name[8:] == ".seg" and name[:8].isdigit():
            nums.append(int(name[:8]))
    nums.sort()
    if nums:
        st._next_num = nums[-1] + 1
    bad = []  # (segment index, slot) of every bad slot
    prev = 0  # newest valid seq so far
    for num in nums:
        n, base, newest = _scan(st, num, prev, bad, len(st._nums))
        if n == 0:  # empty, or just a torn record
            os.remove(st._seg_path(num))
            continue
        st._nums.append(num)
        st._bases.append(base)
        st._counts.append(n)
        if newest > 0:
            prev = newest

    bases = st._bases
    counts = st._counts
    m = len(bases)
    for k in range(m):
        nb = bases[k + 1] if k + 1 < m else -1
        if bases[k] < 0 and k and bases[k - 1] >= 0:
            e = bases[k - 1] + counts[k - 1]
            if k + 1 == m or nb - e == counts[k]:
                bases[k] = e  # all bad: place it between its neighbours
        if bases[k] >= 0 and nb >= 0 and bases[k] + counts[k] > nb:
            # bad tail slots whose seqs a later segment holds (a failed write that
            # still left a full-length record): not losses
            counts[k] = nb - bases[k] if nb > bases[k] else 0
    added = False
    for k, i in bad:
        if bases[k] < 0:
            st.corrupt += 1
        elif i < counts[k] and st._found_bad(bases[k] + i):
            added = True

    s = st.acked
    for _, z, _ in st._losses:
        if z > s:
            s = z
    for k in range(m):
        if bases[k] >= 0 and counts[k] and bases[k] + counts[k] - 1 > s:
            s = bases[k] + counts[k] - 1
    st.last_seq = s
    if added:
        st._save_losses()


def _scan(st, num, prev, bad, k):
    # -> (slots, base or -1, newest valid seq or -1); appends (k, slot) of bad slots
    path = st._seg_path(num)
    n = os.stat(path)[6] // _RECORD_SIZE
    base = newest = -1
    if n == 0:
        return 0, -1, -1
    c = st._chunk
    i = 0
    f = open(path, "rb")
    try:
        while i < n:
            got = f.readinto(c) or 0
            if got < _RECORD_SIZE:
                break
            j = 0
            while j + _RECORD_SIZE <= got and i < n:
                s = get30(c, j + 1)
                if c[j] != _MAGIC or not sealed(c, j, 18):
                    s = -1
                if s >= 0 and base < 0 and s - i > prev:
                    base = s - i
                if s >= 0 and base >= 0 and s == base + i:
                    newest = s
                else:
                    bad.append((k, i))
                i += 1
                j += _RECORD_SIZE
    finally:
        f.close()
    return i, base, newest


def load_anchors(root):
    """Time anchors of recent boots: {boot_id: (up_s, up_ms, unix_s, unix_ms)} (the uplink
    saves them: ``Uplink._save_anchor``)."""
    try:
        raw = json.loads(read(root + "/anchors.json"))
        return {int(k): tuple(v) for k, v in raw.items()}
    except Exception:
        return {}
