"""App bundles: the files of a firmware version in one archive, built by the companion and
unpacked by the board into its inactive A/B slot.

Layout (little-endian): magic ``b"ORB1"``, a u16 entry count, then per entry: u16 path
length, the UTF-8 path (relative, ``/``-separated, no ``..``), u32 data length, the data.
Unpacking streams from a file, so a board never holds the bundle in RAM.
"""

import struct

MAGIC = b"ORB1"
MAX_ENTRIES = 256
MAX_PATH = 128


def _check_path(p):
    # the parts between "/" are looked at in place: no list, no slices
    if not p or len(p) > MAX_PATH or p.startswith("/") or "\\" in p:
        return False
    n = len(p)
    i = 0
    while i <= n:
        j = p.find("/", i)
        if j < 0:
            j = n
        k = j - i
        if k == 0 or (k == 1 and p.startswith(".", i)) or (k == 2 and p.startswith("..", i)):
            return False
        i = j + 1
    return True


def pack(files):
    """Build a bundle from ``[(path, data_bytes), ...]``; ValueError names a bad path."""
    if len(files) > MAX_ENTRIES:
        raise ValueError("a bundle holds at most {} files".format(MAX_ENTRIES))
    out = [MAGIC, struct.pack("<H", len(files))]
    for path, data in files:
        if not _check_path(path):
            raise ValueError("bad path in bundle: {!r}".format(path))
        p = path.encode()
        out.append(struct.pack("<H", len(p)))
        out.append(p)
        out.append(struct.pack("<I", len(data)))
        out.append(bytes(data))
    return b"".join(out)


def _read_exact(f, n):
    b = f.read(n)
    if b is None or len(b) != n:
        raise ValueError("bundle truncated")
    return b


def _uint(f, mv):
    # a little-endian u16 or u32 (len(mv) bytes), read into mv: nothing allocated
    if f.readinto(mv) != len(mv):
        raise ValueError("bundle truncated")
    v = 0
    for i in range(len(mv) - 1, -1, -1):
        v = v << 8 | mv[i]
    return v


def _read_into(f, mv, size):
    # the next min(size, len(mv)) bytes of f, read into mv (a slice only for a short read)
    piece = mv if size >= len(mv) else mv[:size]
    if f.readinto(piece) != len(piece):
        raise ValueError("bundle truncated")
    return piece


def unpack(f, write, chunk=512, buf=None):
    """Stream the bundle in file ``f``: ``write(path, data_piece, first)`` per piece.

    Returns the list of paths. Raises ValueError for a malformed bundle (checked before any
    piece of a bad entry is written; the caller unpacks into a scratch slot anyway). With
    ``buf`` (a bytearray; ``chunk`` is then its length) the pieces are read into it and each
    is a memoryview of it, valid only until ``write`` returns: a board unpacks without
    allocating a piece per read.
    """
    paths = []
    for path in entries(f, write, chunk, buf):
        paths.append(path)
    return paths


def entries(f, write, chunk=512, buf=None):
    """``unpack`` one entry at a time: a generator that yields each entry's path once all of
    it went to ``write``, so a board can spread an unpack over several passes of its loop."""
    if _read_exact(f, 4) != MAGIC:
        raise ValueError("not an Orrery bundle (bad magic)")
    w = memoryview(bytearray(4))  # u32 fields are read into w, u16 ones into h
    h = w[:2]
    n = _uint(f, h)
    if n > MAX_ENTRIES:
        raise ValueError("bundle has too many entries")
    mv = None if buf is None else memoryview(buf)  # one view for every full piece
    for _ in range(n):
        plen = _uint(f, h)
        if plen > MAX_PATH:
            raise ValueError("bundle path too long")
        try:
            path = _read_exact(f, plen).decode()
        except UnicodeError:
            raise ValueError("bundle path is not UTF-8") from None
        if not _check_path(path):
            raise ValueError("bad path in bundle: {!r}".format(path))
        size = _uint(f, w)
        first = True
        while size or first:
            if not size:
                piece = b""
            elif buf is None:
                piece = _read_exact(f, min(size, chunk))
            else:
                piece = _read_into(f, mv, size)
            write(path, piece, first)
            first = False
            size -= len(piece)
        yield path
    if f.read(1):
        raise ValueError("trailing bytes after the last bundle entry")
