"""A small fleet for scenario tests: real firmware boards and the real companion on a real broker.

Boards are ``firmware.node`` on the simulation HAL (``tests.support.boards.Board``), sharing one
virtual clock that starts at the real time and runs ahead of it, so the companion (real time)
never signs a command "in the future" for a board. The companion is ``orrery serve``'s
``Service`` (ingest + rollout orchestrator), in a thread or as its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES
from cloud.orrery.fleet import keys, registry
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.ingest.handler import Ingest
from cloud.orrery.ingest.service import BrokerAddress, Service
from cloud.orrery.sim.hal import VirtualClock
from shared.workflow import compiler
from tests.support.boards import WF, Board
from tools.dev.mosquitto import free_port

SECRET = b"scenario-fleet-secret-0123456789"


class Fleet:
    """``n`` boards named ``b00``… running greenhouse v1, registered and online."""

    def __init__(
        self, tmp_path: Path, port: int, db_url: str, n: int, names: list[str] | None = None
    ) -> None:
        self.tmp = tmp_path
        self.port = port
        self.db_url = db_url
        self.engine = engine_for(db_url)
        self.clock = VirtualClock(ticks=5, unix_ms=int(time.time() * 1000))
        self.dead_port = free_port()
        self.boards: dict[str, Board] = {}
        self.away: set[str] = set()
        self.services: list[Service] = []
        self.procs: list[subprocess.Popen] = []
        with self.engine.begin() as conn:
            for f in ("greenhouse_v1.json", "greenhouse.json"):
                registry.push(conn, (WF / f).read_bytes(), None, 0)
        for name in names or [f"b{i:02d}" for i in range(n)]:
            self.add(name)

    def add(self, name: str) -> Board:
        """Register a board and power it on."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(DEVICES),
                [{"name": name, "fleet": "f1", "profile": "esp32-devkitc", "created_ms": 0}],
            )
        # flashed with greenhouse v1
        (self.tmp / name / "wf").mkdir(parents=True, exist_ok=True)
        (self.tmp / name / "wf" / "current.bin").write_bytes(
            compiler.compile((WF / "greenhouse_v1.json").read_bytes()).blob
        )
        b = Board(self.tmp, self.port, device=name, seed=len(self.boards) + 1,
                  key=keys.device_key(SECRET, name).hex(), clock=self.clock)  # fmt: skip
        self.boards[name] = b
        return b

    # --- the companion -------------------------------------------------------------------------

    def companion(self, owner: str = "c1") -> Service:
        """Start the companion in a thread (ingest + orchestrator)."""
        ingest = Ingest(self.engine, secret=SECRET, reorder_window_ms=60_000)
        orch = Orchestrator(self.engine, SECRET, owner=owner, lease_ms=3000)
        svc = Service(
            ingest,
            BrokerAddress(port=self.port),
            client_id=owner,
            group="g",
            reconcile_every_s=0.1,
            orchestrator=orch,
        )
        threading.Thread(target=svc.run, daemon=True).start()
        assert svc.connected.wait(10), "companion did not connect"
        self.services.append(svc)
        return svc

    def companion_process(self, owner: str, log: Path) -> subprocess.Popen:
        """Start ``orrery serve`` as its own process (to kill -9 it)."""
        env = dict(os.environ, ORRERY_SECRET=SECRET.decode(), PYTHONUNBUFFERED="1")
        p = subprocess.Popen(
            [sys.executable, "-m", "cloud.orrery.cli", "serve", "--db", self.db_url, "--port", str(self.port),
             "--client-id", owner, "--group", "g", "--reconcile-every", "0.1", "--reorder-window", "60"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "ab"),  # noqa: SIM115
        )  # fmt: skip
        self.procs.append(p)
        return p

    def orchestrator(self) -> Orchestrator:
        """An orchestrator for operator actions (create, start, cancel …)."""
        return Orchestrator(self.engine, SECRET, owner="operator")

    # --- boards ------------------------------------------------------------------------------

    def run(self, ms: int, step: int = 200) -> None:
        """Advance virtual time; every board samples, and those not away use their link."""
        for _ in range(max(1, ms // step)):
            self.clock.advance(step)
            for b in self.boards.values():
                b.node.step_main()
                b.node.step_link()

    def go_away(self, name: str) -> None:
        """Cut a board's network: the broker publishes its will; it cannot reconnect."""
        b = self.boards[name]
        b.link.port = self.dead_port
        b.link.close()
        self.away.add(name)

    def come_back(self, name: str) -> None:
        """Restore a board's network; it reconnects, pulls its pending commands."""
        self.boards[name].link.port = self.port
        self.away.discard(name)

    def wait(self, pred, seconds: float = 30.0, step: int = 200) -> None:
        """Run the fleet (real time passing too) until ``pred()``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if pred():
                return
            self.run(step, step)
            time.sleep(0.01)
        raise AssertionError("condition not reached")

    def rows(self, sql: str, **kw) -> list:
        with self.engine.connect() as c:
            return c.execute(sa.text(sql), kw).all()

    def states(self, rid: int) -> dict[str, str]:
        """Device name -> rollout state."""
        return dict(self.rows(
            "SELECT d.name, m.state FROM rollout_devices m JOIN devices d ON d.id = m.device_id WHERE m.rollout_id = :r",
            r=rid))  # fmt: skip

    def close(self) -> None:
        for svc in self.services:
            svc.stop()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for b in self.boards.values():
            b.close()
        time.sleep(0.2)
        self.engine.dispose()
