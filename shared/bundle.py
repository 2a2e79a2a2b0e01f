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
    if not p or len(p) > MAX_PATH or p[0] == "/" or "\\" in p:
        return False
    for part in p.split("/"):
        if part in ("", ".", ".."):
            return False
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


def _read_into(f, buf, size):
    # the next min(size, len(buf)) bytes of f, read into buf (a slice only for a short read)
    n = len(buf)
    piece = memoryview(buf) if size >= n else memoryview(buf)[:size]
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
    if _read_exact(f, 4) != MAGIC:
        raise ValueError("not an Orrery bundle (bad magic)")
    (n,) = struct.unpack("<H", _read_exact(f, 2))
    if n > MAX_ENTRIES:
        raise ValueError("bundle has too many entries")
    paths = []
    for _ in range(n):
        (plen,) = struct.unpack("<H", _read_exact(f, 2))
        if plen > MAX_PATH:
            raise ValueError("bundle path too long")
        try:
            path = _read_exact(f, plen).decode()
        except UnicodeError:
            raise ValueError("bundle path is not UTF-8") from None
        if not _check_path(path):
            raise ValueError("bad path in bundle: {!r}".format(path))
        (size,) = struct.unpack("<I", _read_exact(f, 4))
        first = True
        while size or first:
            if not size:
                piece = b""
            elif buf is None:
                piece = _read_exact(f, min(size, chunk))
            else:
                piece = _read_into(f, buf, size)
            write(path, piece, first)
            first = False
            size -= len(piece)
        paths.append(path)
    if f.read(1):
        raise ValueError("trailing bytes after the last bundle entry")
    return paths
