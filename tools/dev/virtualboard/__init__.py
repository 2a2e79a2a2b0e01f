"""A virtual board for the bench tests: a real MicroPython behind a TCP serial port.

``board.mjs`` runs MicroPython's official WebAssembly port (npm package
``@micropython/micropython-webassembly-pyscript``, pinned in ``package.json``) under Node and
bridges its REPL to a TCP socket, so ``mpremote connect socket://127.0.0.1:PORT`` (and
``orrery board deploy --port socket://...``) talk to it as to a board on a USB serial port.
See board.mjs for what it emulates; ``machine.py`` for the emulated peripherals.

``python -m tools.dev.virtualboard --flash DIR [--port N]`` runs one in the foreground.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from tools.dev.processes import terminate

HERE = Path(__file__).resolve().parent
PACKAGE = "@micropython/micropython-webassembly-pyscript"


class VirtualBoardError(RuntimeError):
    """Node or the npm package is missing, or the board did not start."""


def node_binary() -> str:
    """The ``node`` executable; VirtualBoardError if there is none."""
    node = shutil.which("node")
    if node is None:
        raise VirtualBoardError("the virtual board needs Node.js (node) on PATH")
    return node


def ensure_installed() -> Path:
    """Install the MicroPython WebAssembly package (``npm ci``) once; return its directory."""
    pkg = HERE / "node_modules" / PACKAGE
    if (pkg / "micropython.mjs").exists():
        return pkg
    npm = shutil.which("npm")
    if npm is None:
        raise VirtualBoardError(f"the virtual board needs npm to install {PACKAGE}")
    with open(HERE / ".npm-install.lock", "w") as lock:  # parallel test workers: one installs
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (pkg / "micropython.mjs").exists():
            return pkg
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=300,
        )
    if proc.returncode != 0 or not (pkg / "micropython.mjs").exists():
        raise VirtualBoardError(f"npm ci in {HERE} failed:\n{proc.stdout}\n{proc.stderr}")
    return pkg


class VirtualBoard:
    """One virtual board process; use as a context manager or call start()/stop().

    ``flash`` is the board's filesystem on the host (kept across resets and restarts);
    ``url`` is what mpremote and the orrery commands take as ``--port``.
    """

    def __init__(self, flash: Path | None = None, port: int = 0, host: str = "127.0.0.1"):
        self._tmp = None if flash else tempfile.TemporaryDirectory(prefix="vboard-")
        self.flash = Path(flash) if flash else Path(self._tmp.name) / "flash"  # type: ignore[union-attr]
        self.state = self.flash.with_name(self.flash.name + ".state")
        self.host = host
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        """``socket://HOST:PORT``."""
        return f"socket://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> VirtualBoard:
        """Start the board (power on) and wait until it accepts connections."""
        ensure_installed()
        self.flash.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [node_binary(), str(HERE / "board.mjs"), "--host", self.host, "--port"]
            + [str(self.port), "--flash", str(self.flash), "--state", str(self.state)],
            stdin=subprocess.PIPE,  # the board powers off when this pipe closes
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()

        def reader() -> None:
            assert self.proc and self.proc.stdout
            for line in self.proc.stdout:
                self.log.append(line.rstrip("\n"))
                if line.startswith("listening "):
                    self.port = int(line.rsplit(":", 1)[1])
                    ready.set()
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise VirtualBoardError("virtual board did not start:\n" + "\n".join(self.log))
        return self

    def set_pin(self, pin: int, level: int | None) -> None:
        """Drive input ``pin`` to ``level`` (None: released, reads 1 as with a pull-up)."""
        path = self.state / "pins.json"
        levels = json.loads(path.read_text()) if path.exists() else {}
        if level is None:
            levels.pop(str(pin), None)
        else:
            levels[str(pin)] = level
        path.write_text(json.dumps(levels))

    def stop(self) -> None:
        """Power off: the board writes its filesystem back to ``flash`` and exits."""
        terminate(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        """Stop, and remove the temporary flash directory if this board made one."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Run a virtual board in the foreground until Ctrl-C."""
    ap = argparse.ArgumentParser(prog="python -m tools.dev.virtualboard", description=__doc__)
    ap.add_argument("--flash", type=Path, required=True, help="the board's filesystem directory")
    ap.add_argument("--port", type=int, default=7777)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args(argv)
    board = VirtualBoard(args.flash, args.port, args.host).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop() runs in finally
    print(f"virtual board on {board.url} (flash: {board.flash}); Ctrl-C stops it", flush=True)
    try:
        assert board.proc is not None
        board.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
