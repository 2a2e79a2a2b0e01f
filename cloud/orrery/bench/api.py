"""The API benchmark (``orrery bench api``): requests/s of the fleet overview and of a rollout's
status over a real ``orrery api`` (uvicorn) process, against the same queries run directly.

A fresh SQLite database (a temporary file) gets ``devices`` devices, online on greenhouse@1,
and a running rollout of greenhouse@2 to all of them in the waves ``1%,10%,50%,100%``. Then,
for each of

- ``devices_page``: ``GET /api/v1/devices?limit=100`` (the overview's first page, with the
  total), against ``devices.device_rows`` of 100 + ``devices.count_devices``;
- ``fleet_summary``: ``GET /api/v1/fleet``, against ``devices.fleet_summary``;
- ``rollout_status``: ``GET /api/v1/rollouts/{id}``, against ``Orchestrator.summary``;

``api_per_s`` counts the responses (all 200) that ``CLIENTS`` threads, each with its own
keep-alive connection, get in ``SECONDS`` s; ``direct_per_s`` the same query on one connection
in one thread for as long. ``ratio`` = api_per_s / direct_per_s, the share of the query's own
speed the API keeps: HTTP, JSON, the token check on every request, a connection from the
pool. Target: ``ratio >= MIN_RATIO`` for each (``met``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from cloud.orrery.bench.rollout import register
from cloud.orrery.db.engine import engine_for
from cloud.orrery.fleet import devices, registry, tokens
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.sim import workflows
from shared.workflow import compiler

SECONDS = 5.0
CLIENTS = 4
MIN_RATIO = 0.5
REPO = Path(__file__).resolve().parents[3]


def _log(msg: str) -> None:
    print(f"bench api: {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct_rate(fn: Callable[[], object], seconds: float = SECONDS) -> float:
    """Calls of ``fn`` a second, for ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while (el := time.perf_counter() - t0) < seconds:
        fn()
        n += 1
    return n / el


def api_rate(base: str, path: str, token: str, seconds: float = SECONDS) -> float:
    """Responses a second to ``GET path`` from ``CLIENTS`` threads; every one must be 200."""
    counts = [0] * CLIENTS
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                          timeout=30) as c:  # fmt: skip
            while time.perf_counter() < stop:
                r = c.get(path)
                if r.status_code != 200:
                    errors.append(f"{path}: {r.status_code} {r.text[:200]}")
                    return
                counts[i] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(errors[0])
    return sum(counts) / (time.perf_counter() - t0)


def _wait(base: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"orrery api exited: {proc.communicate()[1][-2000:]}")
        try:
            httpx.get(base + "/api/v1/openapi.json", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("orrery api did not answer within 60 s")


def run(n: int, seconds: float = SECONDS) -> dict:
    """Set up ``n`` devices and a rollout, measure each case for ``seconds``, and return the
    figures."""
    with tempfile.TemporaryDirectory(prefix="orrery-bench-api-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'o.db'}"
        engine = engine_for(url)
        wf = workflows.DIR
        with engine.begin() as conn:
            for f in ("greenhouse_v1.json", "greenhouse.json"):
                registry.push(conn, (wf / f).read_bytes(), None, 0)
            token, _ = tokens.create(conn, "bench", "viewer", by="bench")
        v1 = compiler.compile((wf / "greenhouse_v1.json").read_bytes())
        _log(f"registering {n} devices")
        register(engine, n, v1.hash)
        o = Orchestrator(engine, None, owner="bench", actor="bench")
        rid = o.create("greenhouse@2", "all", "1%,10%,50%,100%", soak="0s").rollout_id
        assert rid is not None
        o.start(rid)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORRERY_")}
        env["PYTHONPATH"] = str(REPO)
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloud.orrery.cli", "api", "--port", str(port), "--db", url],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            _wait(base, proc)
            conn = engine.connect()
            cases: dict[str, tuple[str, Callable[[], object]]] = {
                "devices_page": (
                    "/api/v1/devices?limit=100",
                    lambda: (devices.device_rows(conn, limit=100), devices.count_devices(conn)),
                ),
                "fleet_summary": ("/api/v1/fleet", lambda: devices.fleet_summary(conn)),
                "rollout_status": (f"/api/v1/rollouts/{rid}", lambda: o.summary(conn, rid)),
            }
            figures = {}
            for name, (path, fn) in cases.items():
                _log(f"{name}: {path} and the query directly, {seconds:g} s each")
                api_rate(base, path, token, min(1.0, seconds))  # warm up: connections, caches
                direct = direct_rate(fn, seconds)
                api = api_rate(base, path, token, seconds)
                figures[name] = {
                    "api_per_s": round(api, 1),
                    "direct_per_s": round(direct, 1),
                    "ratio": round(api / direct, 3),
                }
            conn.close()
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
            engine.dispose()
    return {
        "devices": n,
        "clients": CLIENTS,
        "seconds": seconds,
        "server": "orrery api (uvicorn, one process), SQLite",
        **figures,
        "targets": {"ratio": MIN_RATIO},
        "met": all(f["ratio"] >= MIN_RATIO for f in figures.values()),
    }
