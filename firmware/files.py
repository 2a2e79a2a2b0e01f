"""The board's file helpers: read a file, write one atomically (a temporary file, then a
rename), rename over one, and make and remove files and directories. The node's
persisted tables (the workflow files and snapshot, the time anchors, the command replay table)
go through these, so a power cut leaves the old version or the new one, never half of one.
"""

import os


def read(path):
    """The bytes of file ``path``, or None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def write_atomic(path, data):
    """Replace file ``path`` with ``data`` (str or bytes): write a temp file, then rename."""
    if isinstance(data, str):
        data = data.encode()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    replace(tmp, path)


def replace(src, dst):
    """Rename ``src`` over ``dst``."""
    try:
        os.rename(src, dst)
    except OSError:  # FAT will not rename over a file
        remove(dst)
        os.rename(src, dst)


def remove(path):
    """Remove file ``path`` if it exists."""
    try:
        os.remove(path)
    except OSError:
        pass


def mkdir(path):
    """Make directory ``path`` unless it exists (its parent must)."""
    try:
        os.mkdir(path)
    except OSError:
        pass
