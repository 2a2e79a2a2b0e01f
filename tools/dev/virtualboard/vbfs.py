# ruff: noqa: UP032, B904
# (MicroPython code: no f-strings, no exception chaining)
# The virtual board's root filesystem (MicroPython; mounted at "/" by board.mjs).
#
# The WebAssembly port's VfsPosix raises OSError with Emscripten's errno numbers (ENOENT is
# 44, EEXIST 20), while its own errno module, like an ESP32, uses MicroPython's (2, 17).
# This VFS wraps VfsPosix("/flash") and re-raises with MicroPython's numbers, so
# ``e.errno == errno.EEXIST`` holds and mpremote reads "OSError: 2" as ENOENT, as on a board.
import vfs

# Emscripten (WASI) errno -> MicroPython errno
_MAP = {44: 2, 20: 17, 54: 20, 31: 21, 55: 39, 28: 22, 2: 13, 8: 9, 29: 5, 51: 28, 63: 1, 10: 16}


def _fix(e):
    n = e.args[0] if e.args else 0
    return OSError(_MAP.get(n, n)) if isinstance(n, int) else e


class Flash:
    def __init__(self, root):
        self._root = root
        self._v = vfs.VfsPosix(root)
        self._raw = vfs.VfsPosix()

    def _host(self, path):
        if not path.startswith("/"):
            cwd = self._v.getcwd()
            path = (cwd if cwd.endswith("/") else cwd + "/") + path
        return self._root + path

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        try:
            return self._v.open(path, mode)
        except OSError as e:
            raise _fix(e)

    def ilistdir(self, path):
        # (name, type, inode, size), with the size a board's LittleFS reports
        try:
            out = []
            base = path if path.endswith("/") else path + "/"
            for e in self._v.ilistdir(path):
                size = self._v.stat(base + e[0])[6] if e[1] == 0x8000 else 0
                out.append((e[0], e[1], 0, size))
            return iter(out)
        except OSError as e:
            raise _fix(e)

    def chdir(self, path):
        try:
            return self._v.chdir(path)
        except OSError as e:
            raise _fix(e)

    def getcwd(self):
        return self._v.getcwd()

    def mkdir(self, path):
        try:
            return self._v.mkdir(path)
        except OSError as e:
            raise _fix(e)

    def remove(self, path):
        try:
            return self._v.remove(path)
        except OSError as e:
            raise _fix(e)

    def rename(self, old, new):
        try:
            # VfsPosix(root) builds both paths in one buffer, so the second overwrites the
            # first: rename through a root-less VfsPosix with host paths instead
            return self._raw.rename(self._host(old), self._host(new))
        except OSError as e:
            raise _fix(e)

    def rmdir(self, path):
        try:
            return self._v.rmdir(path)
        except OSError as e:
            raise _fix(e)

    def stat(self, path):
        try:
            return self._v.stat(path)
        except OSError as e:
            raise _fix(e)

    def statvfs(self, path):
        # a 2 MiB LittleFS partition in 4 KiB blocks, as on a 4 MB ESP32 board
        return (4096, 4096, 512, 400, 400, 0, 0, 0, 0, 255)
