"""A serial console for a board that highlights the node's structured log lines.

What the firmware prints, and how it is shown:

- ``orrery: ...`` (the node's log, firmware/node.py): cyan; ``orrery: link error`` and
  ``workflow fault`` yellow;
- ``==== SAFE MODE ...`` and the reasons under it: bold red;
- ``---- config: N problems ...`` blocks (firmware/config.py): red;
- ``main: ...`` (firmware/main.py: crashes, resets): magenta;
- ``Traceback`` and the lines of a traceback: red;
- the ESP32 ROM's boot lines (``rst:0x..``, ``ets ...``): dim.

Ctrl-] leaves; keys typed are sent to the board (so the REPL works).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator

from tools.board import serialport

STYLES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^==== SAFE MODE"), "bold red"),
    (re.compile(r"^orrery: (link error|workflow fault|installed workflow unusable)"), "yellow"),
    (re.compile(r"^orrery: "), "cyan"),
    (re.compile(r"^---- (config|fix it)"), "red"),
    (re.compile(r"^main: "), "magenta"),
    (re.compile(r"^Traceback \(most recent call last\)"), "red"),
    (re.compile(r"^(ets |rst:0x|configsip|clk_drv|mode:|load:0x|entry 0x|ESP-ROM)"), "dim"),
]
EXIT_KEY = b"\x1d"  # Ctrl-]
PARTIAL = "\x00"  # marks a line shown before its newline arrived


def style_of(line: str, in_block: str | None = None) -> str | None:
    """The rich style for one console line, or None for plain text.

    ``in_block`` is the style of the block the previous line was in (a traceback's or the
    safe-mode banner's indented lines keep it).
    """
    for pat, style in STYLES:
        if pat.search(line):
            return style
    if in_block and (line.startswith("  ") or re.match(r"^\w*(Error|Exception)\b", line)):
        return in_block
    return None


def styled(lines: Iterator[str]) -> Iterator[tuple[str, str | None]]:
    """``(line, style)`` for each line, following tracebacks and safe-mode blocks.

    A line ending in ``PARTIAL`` (a prompt shown before its newline) is passed through
    unstyled."""
    block: str | None = None
    for line in lines:
        if line.endswith(PARTIAL):
            yield line, None
            continue
        style = style_of(line, block)
        if style in ("red", "bold red") and not line.startswith("  "):
            block = style if not re.match(r"^\w*(Error|Exception)\b", line) else None
        elif style is None:
            block = None
        yield line, style


def lines_of(read: Callable[[], bytes | None]) -> Iterator[str]:
    """Split what ``read`` returns into lines (without CR/LF); stops when it returns b''.

    ``read`` returns None when the line has gone quiet: what is buffered then (a prompt
    such as ``>>> ``) comes out as a line ending in ``PARTIAL``."""
    buf = b""
    while True:
        chunk = read()
        if chunk is None:
            if buf:
                yield buf.decode("utf-8", "replace") + PARTIAL
                buf = b""
            continue
        if not chunk:
            if buf:
                yield buf.decode("utf-8", "replace")
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.rstrip(b"\r").decode("utf-8", "replace")


def monitor(
    port: str,
    baud: int = 115200,
    seconds: float | None = None,
    out: Callable[[str, str | None], None] | None = None,
    interactive: bool = True,
) -> int:
    """Show the console of the board on ``port`` until Ctrl-] (or ``seconds``); return the
    number of lines shown. ``out(line, style)`` prints a line (default: plain stdout).
    """
    ser = serialport.open_port(port, baud, timeout=0.1)
    stop = threading.Event()
    deadline = None if seconds is None else time.monotonic() + seconds

    def read() -> bytes | None:
        if stop.is_set() or (deadline is not None and time.monotonic() > deadline):
            return b""
        try:
            data = ser.read(ser.in_waiting or 1)
        except (OSError, serialport.serial.SerialException):
            return b""
        return data or None

    def keys() -> None:
        import termios
        import tty

        fd = sys.stdin.fileno()
        old = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            attrs = termios.tcgetattr(fd)
            attrs[3] &= ~termios.ISIG  # Ctrl-C goes to the board, Ctrl-] leaves
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            while not stop.is_set():
                ch = os.read(fd, 64)
                if not ch or EXIT_KEY in ch:
                    stop.set()
                    return
                ser.write(ch.replace(b"\n", b"\r"))
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)

    if interactive and sys.stdin.isatty():
        threading.Thread(target=keys, daemon=True).start()

    def plain(line: str, style: str | None) -> None:
        if line.endswith(PARTIAL):
            print(line[:-1], end="", flush=True)
        else:
            print(line, flush=True)

    show = out or plain
    n = 0
    try:
        for line, style in styled(lines_of(read)):
            show(line, style)
            n += 1
    finally:
        stop.set()
        ser.close()
    return n
