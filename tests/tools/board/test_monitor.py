"""The serial console: which lines are highlighted, and a live read from a port."""

from __future__ import annotations

import os
import threading
import time

from tools.board import monitor

BOOT = """ets Jun  8 2016 00:22:57
rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)
---- config: 1 problem in /config.json ----
  broker.port: must be 1..65535, got 0
---- fix it (e.g. mpremote cp config.json :/config.json) and reset ----
==== SAFE MODE: the app is not started ====
  config: 1 problem(s), listed above
MicroPython v1.27.0 on 2025-12-10; Generic ESP32 module with ESP32
orrery: link error: OSError 113
orrery: sampling 6 channels
main: the node crashed (1 failed boot(s) in a row); resetting
Traceback (most recent call last):
  File "main.py", line 3, in <module>
ValueError: bad
>>> print(1)
1"""


def test_styles():
    got = list(monitor.styled(iter(BOOT.splitlines())))
    assert got == [
        ("ets Jun  8 2016 00:22:57", "dim"),
        ("rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)", "dim"),
        ("---- config: 1 problem in /config.json ----", "red"),
        ("  broker.port: must be 1..65535, got 0", "red"),
        ("---- fix it (e.g. mpremote cp config.json :/config.json) and reset ----", "red"),
        ("==== SAFE MODE: the app is not started ====", "bold red"),
        ("  config: 1 problem(s), listed above", "bold red"),
        ("MicroPython v1.27.0 on 2025-12-10; Generic ESP32 module with ESP32", None),
        ("orrery: link error: OSError 113", "yellow"),
        ("orrery: sampling 6 channels", "cyan"),
        ("main: the node crashed (1 failed boot(s) in a row); resetting", "magenta"),
        ("Traceback (most recent call last):", "red"),
        ('  File "main.py", line 3, in <module>', "red"),
        ("ValueError: bad", "red"),
        (">>> print(1)", None),
        ("1", None),
    ]


def test_lines_and_prompts():
    chunks = iter([b"abc\r\nde", b"f\n>>> ", None, b"x\n", b""])
    assert list(monitor.lines_of(lambda: next(chunks))) == [
        "abc",
        "def",
        ">>> " + monitor.PARTIAL,
        "x",
    ]


def test_monitor_reads_a_port():
    master, slave = os.openpty()
    name = os.ttyname(slave)
    got: list[tuple[str, str | None]] = []

    def board() -> None:
        time.sleep(0.2)
        os.write(master, b"orrery: sampling\r\n==== SAFE MODE: the app is not started ====\r\n")

    threading.Thread(target=board, daemon=True).start()
    n = monitor.monitor(name, seconds=1.0, out=lambda line, style: got.append((line, style)))
    os.close(master)
    os.close(slave)
    assert n == 2
    assert got == [
        ("orrery: sampling", "cyan"),
        ("==== SAFE MODE: the app is not started ====", "bold red"),
    ]
