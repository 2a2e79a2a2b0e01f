"""Stopping a child process the way a power switch would not: SIGTERM, a grace period to save
its state, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess


def terminate(proc: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    """Stop ``proc`` if it still runs: SIGTERM and close its stdin (a child that watches its
    parent through a pipe), wait up to ``grace_s``, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
