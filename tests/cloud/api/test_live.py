"""``orrery api`` as real processes: two of them on one database answer over HTTP, a change
made through one is seen through the other (no state of their own); the warning for a
listener beyond localhost without TLS; bad options end in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.api import SECRET, ApiFleet
from tools.dev.mosquitto import free_port

REPO = Path(__file__).resolve().parents[3]


def start(db_url: str, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORRERY_")}
    env.update(PYTHONPATH=str(REPO), ORRERY_SECRET=SECRET)
    p = subprocess.Popen(
        [sys.executable, "-m", "cloud.orrery.cli", "api", "--port", str(port), "--db", db_url, *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return p, port


def request(port: int, method: str, path: str, token: str | None = None, host: str = "127.0.0.1"):
    req = urllib.request.Request(f"http://{host}:{port}/api/v1{path}", method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_ready(p: subprocess.Popen, port: int, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()
        try:
            urllib.request.urlopen(f"http://{host}:{port}/api/v1/openapi.json", timeout=2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("orrery api did not answer within 30 s")


def stop(p: subprocess.Popen) -> str:
    p.terminate()
    _, err = p.communicate(timeout=20)
    return err


def test_two_api_processes_serve_one_database(db_url):
    fleet = ApiFleet(db_url)
    procs = [start(db_url), start(db_url)]
    try:
        for p, port in procs:
            wait_ready(p, port)
        (_, a), (_, b) = procs
        op, viewer = fleet.tokens["operator"], fleet.tokens["viewer"]
        assert request(a, "GET", "/devices")[0] == 401
        status, page = request(a, "GET", "/devices?limit=3", viewer)
        assert status == 200 and page["total"] == 10 and page["next"] == 3
        status, plan = request(a, "POST", "/rollouts/1/start", viewer)
        assert status == 403
        # created and started through one process, paused through the other
        body = json.dumps({"workflow": "greenhouse@2", "target": "all"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{a}/api/v1/rollouts", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {op}", "Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            rid = json.loads(r.read())["rollout_id"]
        assert request(b, "POST", f"/rollouts/{rid}/start", op)[1]["state"] == "running"
        assert request(a, "POST", f"/rollouts/{rid}/pause", op)[1]["status"]["state"] == "paused"
        status, s = request(b, "GET", f"/rollouts/{rid}", viewer)
        assert (status, s["state"]) == (200, "paused")
        status, log = request(b, "GET", f"/rollouts/{rid}/log", viewer)
        assert {e["by"] for e in log["items"] if e["device"] is None} == {"operator"}
    finally:
        errs = [stop(p) for p, _ in procs]
        fleet.close()
    assert all("Traceback" not in e for e in errs), errs


def test_beyond_localhost_without_tls_warns(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    ApiFleet(url).close()
    p, port = start(url, "--host", "0.0.0.0")
    try:
        wait_ready(p, port)
    finally:
        err = stop(p)
    assert "warning: listening on 0.0.0.0 without TLS" in " ".join(err.split())
    p, port = start(url)
    try:
        wait_ready(p, port)
    finally:
        err = stop(p)
    assert "warning" not in err and f"orrery api on http://127.0.0.1:{port}/api/v1" in err


def test_bad_options_end_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    for args, msg in (
        ((), "no database at"),
        (("--certfile", str(tmp_path / "c.pem")), "--certfile and --keyfile go together"),
        (("--host", "http://x"), "--host 'http://x'"),
    ):
        p, _ = start(url, *args)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 1 and msg in " ".join(err.split()), err
        assert "Traceback" not in err
