"""A real Mosquitto broker of our own: its own process, port and config; restartable and killable.

Used by the tests and by `orrery bench ingest`."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tools.dev.processes import terminate


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes outgoing connections' local ports from (Linux), else the
    IANA dynamic range."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 49152, 65535


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, outside the ephemeral range: a
    broker stopped to be restarted on its port must find it free again, and any outgoing
    connection on the machine may take a free ephemeral port meanwhile."""
    lo, hi = ephemeral_ports()
    spans = [(p, q) for p, q in ((10000, lo), (hi + 1, 65536)) if q - p >= 100]
    rng = random.SystemRandom()
    for _ in range(200):
        p, q = rng.choice(spans)
        port = rng.randrange(p, q)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 outside the ephemeral range {lo}-{hi}")


def mosquitto_binary() -> str:
    """The mosquitto executable (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None,
    )
    if not found:
        raise RuntimeError(
            "mosquitto is not installed: run `make setup` (apt-get install mosquitto)"
        )
    return found


class Broker:
    """One Mosquitto process on a free port; ``extra_conf`` lines are appended to its config."""

    def __init__(
        self, port: int | None = None, extra_conf: str = "", persistence: bool = True
    ) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="orrery-mosquitto-"))
        # started as root, mosquitto drops to the `mosquitto` user: it must be able to write
        # its persistence file and log here
        os.chmod(self.dir, 0o777)
        self.conf = self.dir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true" if "allow_anonymous" not in extra_conf else "",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "max_queued_messages 100000",
            "max_inflight_messages 100",
            f"log_dest file {self.dir}/mosquitto.log",
            extra_conf,
        ]
        self.conf.write_text("\n".join(line for line in lines if line) + "\n")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Broker:
        """Start the broker and wait until it accepts TCP connections."""
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(
                    f"mosquitto exited with {self.proc.returncode}: {err} {self.log()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): the broker saves its persistence file."""
        terminate(self.proc)
        self.proc = None

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crash or power cut."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text() if path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
