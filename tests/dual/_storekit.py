"""What the store tests share, on CPython and on MicroPython: what a Store reads back, and
the store's files cut short at every byte."""

import os


def held(st):
    """{seq: (boot_id, wire bytes)} for every record the store can read back."""
    out = {}
    buf = bytearray(9 * 5)
    s = 1
    while s <= st.last_seq:
        n, boot, first = st.read_range(buf, s, st.last_seq)
        if n == 0:
            break
        for i in range(n):
            out[first + i] = (boot, bytes(buf[i * 9 : i * 9 + 9]))
        s = first + n
    return out


def held_range(st):
    """``(oldest seq held, newest seq held)`` of Store ``st``, acked or not, or None."""
    lo = hi = -1
    for k in range(len(st._nums)):
        b = st._bases[k]
        if b >= 0 and st._counts[k]:
            if lo < 0:
                lo = b
            hi = b + st._counts[k] - 1
    return None if lo < 0 else (lo, hi)


def snapshot(root):
    """{file name: bytes} of every file in directory ``root``."""
    out = {}
    for n in os.listdir(root):
        with open(root + "/" + n, "rb") as f:
            out[n] = f.read()
    return out


def restore(root, snap):
    """Put directory ``root`` back as ``snapshot`` found it."""
    for n in os.listdir(root):
        os.remove(root + "/" + n)
    for n in snap:
        with open(root + "/" + n, "wb") as f:
            f.write(snap[n])


def cuts(root, snap, name):
    """Every power cut while file ``name`` was written: for each length from 0 to the whole
    file, put ``root`` back as ``snap`` with ``name`` cut to that length, and yield the length."""
    data = snap[name]
    for cut in range(len(data) + 1):
        restore(root, snap)
        with open(root + "/" + name, "wb") as f:
            f.write(data[:cut])
        yield cut
