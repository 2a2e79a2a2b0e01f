"""The bench suite: ``pytest hw/bench --port /dev/ttyUSB0`` runs it against a real board.

Without ``--port`` every test skips, saying why. ``--port socket://HOST:PORT`` reaches a
virtual board (``python -m tools.dev.virtualboard``); ``tests/test_board_bench_virtual.py``
starts one and runs this suite against it in ``make test``.

The suite deploys the app once (the real ``orrery board deploy`` code path), then keeps the
app from starting while it tests, by leaving the crash counter at the safe-mode limit: a
reset then lands in safe mode, with no app holding the console and no watchdog armed. The
MQTT test is the one that lets the app run. At the end the counter is cleared, so the next
reset starts the app.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEY = "6f72726572792d62656e63682d6b65792d30303030303030303030303030303030"  # bench only


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("orrery bench")
    g.addoption("--port", default=None, help="board serial port, or socket://HOST:PORT")
    g.addoption("--board", default="esp32-devkitc", help="board profile (hw/boards/NAME.json)")
    g.addoption("--device-id", default="bench-01", help="device id to deploy as")
    g.addoption("--lib-dir", default=None, help="directory copied to /lib (umqtt.simple)")
    g.addoption("--mip-index", default=None, help="mip index (URL or local mirror)")
    g.addoption("--wifi-ssid", default=None, help="Wi-Fi network for the MQTT test")
    g.addoption("--wifi-password", default="", help="Wi-Fi password")
    g.addoption("--broker-host", default=None, help="this machine's address as the board sees it")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bench: needs a board on --port")


class Bench:
    """The board under test and the options it was deployed with."""

    def __init__(self, config: pytest.Config):
        from tools.board import profiles

        self.port: str = config.getoption("--port")
        self.opts = config
        self.profile = profiles.load(config.getoption("--board"))
        self.device_id: str = config.getoption("--device-id")
        self.virtual = False
        self.key = KEY
        self.config = {
            "device_id": self.device_id,
            "fleet": "bench",
            "board": self.profile["name"],
            "broker": {
                "host": config.getoption("--broker-host") or "127.0.0.1",
                "port": 1883,
                "tls": False,
            },
            "hmac_key": KEY,
            "health_window_s": 10,
        }
        ssid = config.getoption("--wifi-ssid")
        if ssid:
            self.config["wifi"] = {"ssid": ssid, "password": config.getoption("--wifi-password")}

    def board(self):
        """A fresh raw-REPL connection (tools.board.deploy.Board); retried while the board boots."""
        from tools.board import deploy

        last: Exception | None = None
        for _ in range(40):
            try:
                return deploy.Board(self.port)
            except Exception as exc:  # the port vanishes for a moment on some USB bridges
                last = exc
                time.sleep(0.5)
        raise AssertionError(f"board on {self.port} did not come back: {last}")

    def run(self, code: str, timeout: float = 60) -> str:
        """Run ``code`` on the board; its output."""
        with self.board() as b:
            return b.exec(code, timeout=timeout)

    def json(self, code: str, timeout: float = 60):
        """Run ``code``, which prints one JSON line last; that value."""
        out = self.run(code, timeout).strip().splitlines()
        return json.loads(out[-1])

    def hold(self) -> None:
        """Keep the app from starting at the next reset (crash counter at the limit)."""
        self.run("f = open('/crash_count', 'w')\nf.write('3')\nf.close()")

    def release(self) -> None:
        """Let the app start at the next reset."""
        self.run("import os\ntry:\n    os.remove('/crash_count')\nexcept OSError:\n    pass")

    def reset_and_read(self, seconds: float, until: bytes | None = None) -> str:
        """Hard-reset from the friendly REPL and return the console output that follows,
        up to the first REPL prompt after ``until`` (or ``seconds``)."""
        from tools.board import serialport

        ser = serialport.open_port(self.port, timeout=0.1)
        try:
            ser.write(b"\r\x03\x03\x02")  # interrupt, friendly REPL
            time.sleep(0.3)
            ser.read(ser.in_waiting or 1)
            ser.write(b"import machine; machine.reset()\r")
            out = b""
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                out += ser.read(ser.in_waiting or 1)
                if until and until in out and b">>> " in out[out.index(until) :]:
                    break
            return out.decode("utf-8", "replace")
        finally:
            ser.close()


@pytest.fixture(scope="session")
def bench(request: pytest.FixtureRequest) -> Bench:
    """The deployed board, held out of the app; skips the test without --port."""
    if not request.config.getoption("--port"):
        pytest.skip(
            "no board: pass --port /dev/ttyUSB0 (a board with MicroPython flashed) or "
            "--port socket://127.0.0.1:PORT (python -m tools.dev.virtualboard)"
        )
    from tools.board import deploy

    b = Bench(request.config)
    lib_dir = request.config.getoption("--lib-dir")
    mip_index = request.config.getoption("--mip-index")
    b.first_deploy = deploy.deploy(  # type: ignore[attr-defined]
        b.port,
        b.device_id,
        config=b.config,
        profile=b.profile,
        lib_dir=Path(lib_dir) if lib_dir else None,
        mip_index=mip_index,
        lib=deploy.DEFAULT_LIB if (lib_dir or mip_index) else None,
        reset=False,
    )
    b.virtual = b.first_deploy.board.platform == "webassembly"
    b.hold()
    yield b
    b.release()
