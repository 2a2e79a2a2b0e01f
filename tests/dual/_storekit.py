"""What a test reads back from a firmware Store, on CPython and on MicroPython."""


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
