"""SIGTERM ends an ``orrery`` command as Ctrl-C does: through its clean-up, so the brokers and
companion processes it started do not outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _children(pid: int) -> dict[int, int]:
    """Every process descended from ``pid``, each with its parent."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents[int(entry.name)] = ppid
    found: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                found[child] = parent
                frontier.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_sigterm_stops_bench_fleet_with_its_broker_and_companion(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloud.orrery.cli",
            "bench",
            "fleet",
            "--devices",
            "5",
            "--duration",
            "10h",
            "--json",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    started: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("running:") for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "the bench never started running"
            time.sleep(0.2)
        started = _children(proc.pid)
        assert len(started) >= 2, started  # its Mosquitto and its companion at least
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in started if _alive(pid)]
        assert not left, f"processes left running after SIGTERM: {left}"
        assert proc.returncode not in (0, -signal.SIGTERM), proc.returncode
        assert not any("Traceback" in line for line in lines), "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
