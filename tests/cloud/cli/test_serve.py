"""``orrery serve`` as a real process: it says why it cannot connect, on every attempt, and gives
up after ``--connect-timeout``; it refuses to start on a CA file that is no certificate and on a
named fleet secret it cannot read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tools.dev.mosquitto import free_port

REPO = Path(__file__).resolve().parents[3]


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ORRERY_")}
    full.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run(
        [sys.executable, "-m", "cloud.orrery.cli", "serve", "--db", f"sqlite:///{tmp_path / 'o.db'}", *args],
        cwd=tmp_path, env=full, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def logged(stderr: str) -> list[dict]:
    return [json.loads(ln)["msg"] for ln in stderr.splitlines() if ln.startswith("{")]


def errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("{")]


def test_unreachable_broker_is_logged_with_its_cause_and_ends_the_service(tmp_path):
    port = free_port()  # nothing listens there
    p = serve(tmp_path, "--port", str(port), "--connect-timeout", "4", ORRERY_SECRET="s" * 20)
    assert p.returncode == 1, p.stderr
    failures = [m for m in logged(p.stderr) if m["event"] == "broker_connect_failed"]
    assert len(failures) >= 2, p.stderr  # every attempt, not once
    assert all(
        m["broker"] == f"127.0.0.1:{port}" and "Connection refused" in m["error"] for m in failures
    ), p.stderr
    assert errors(p.stderr) == [
        f"error: no connection to the broker 127.0.0.1:{port} for 4 s (--connect-timeout): "
        "[Errno 111] Connection refused"
    ]


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path):
    ca = tmp_path / "hostname"
    ca.write_text("vm\n")  # like /etc/hostname
    p = serve(tmp_path, "--ca-file", str(ca), ORRERY_SECRET="s" * 20)
    assert p.returncode == 1
    [line] = errors(p.stderr)
    assert line.startswith(f"error: --ca-file {ca}: not a CA certificate in PEM form ("), line
    assert "Traceback" not in p.stderr


def test_a_named_secret_file_that_does_not_exist_refuses_to_start(tmp_path):
    missing = tmp_path / "fleet.secret"
    p = serve(tmp_path, "--rollouts", ORRERY_SECRET_FILE=str(missing))
    assert p.returncode == 1
    assert errors(p.stderr) == [f"error: fleet secret file {missing}: No such file or directory"]
    assert not logged(p.stderr)  # it did not start
    assert not (tmp_path / "o.db").exists()
