"""The companion of a virtual fleet: ``orrery serve``'s service (ingest and rollout orchestrator)
on the fleet's virtual clock, run in its own process."""

from __future__ import annotations

import json
import os
import struct
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from cloud.orrery.db.engine import engine_for
from cloud.orrery.fleet import keys
from cloud.orrery.sim.clock import SharedClock


def companion_command(
    db_url: str, host: str, port: int, clock_file: Path, *, client_id: str = "orrery-sim",
    fleet: str = "+", group: str = "orrery-sim", reorder_window_ms: int = 120_000,
    reconcile_every_s: float = 1.0, commits_file: Path | None = None, log_level: str = "WARNING",
) -> list[str]:  # fmt: skip
    """The command line of a companion process on the fleet's virtual clock."""
    cmd = [
        sys.executable, "-m", "cloud.orrery.sim.companion", "--db", db_url, "--host", host,
        "--port", str(port), "--clock", str(clock_file), "--client-id", client_id,
        "--fleet", fleet, "--group", group, "--reorder-window-ms", str(reorder_window_ms),
        "--reconcile-every", str(reconcile_every_s), "--log-level", log_level,
    ]  # fmt: skip
    if commits_file is not None:
        cmd += ["--commits", str(commits_file)]
    return cmd


def board_messages(msgs: list) -> int:
    """How many of these MQTT messages a board published itself: not the broker's wills (an
    offline state) nor retained copies replayed on a subscription."""
    n = 0
    for m in msgs:
        if m.retain:
            continue
        if m.topic.endswith("/up/state") and b'"online":false' in m.payload.replace(b" ", b""):
            continue
        n += 1
    return n


def build_companion(
    engine: sa.Engine,
    secret: bytes,
    host: str,
    port: int,
    shared: SharedClock,
    *,
    client_id: str = "orrery-sim",
    fleet: str = "+",
    group: str = "orrery-sim",
    reorder_window_ms: int = 120_000,
    reconcile_every_s: float = 1.0,
    commits: list | None = None,
):
    """``orrery serve``'s service (ingest + rollout orchestrator) on the fleet's virtual clock,
    for ``fleet`` (``+``: all) in the shared-subscription ``group``.

    It reports its progress in ``shared``: subscriptions granted, board messages stored, and
    messages held. With ``commits`` a list, each stored readings batch is appended to it as
    ``(device, first seq, count, unix s of the commit)`` (for the end-to-end lag).
    """
    from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
    from cloud.orrery.ingest.handler import Ingest
    from cloud.orrery.ingest.service import BrokerAddress, Service

    class SimService(Service):
        def _client(self):
            c = super()._client()
            c.on_subscribe = self._on_subscribe
            return c

        def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
            super()._on_subscribe(client, userdata, mid, reason_codes, properties)
            shared.subscribed = shared.subscribed + 1

        def _collect(self, drain_only: bool) -> list:
            out = super()._collect(drain_only)
            shared.holding = self.waiting() + len(out)
            return out

        def _store(self, msgs) -> None:
            super()._store(msgs)
            shared.processed = shared.processed + board_messages(msgs)
            shared.holding = self.waiting()
            if commits is not None:
                t = time.time()
                for m in msgs:
                    p = m.payload
                    if m.topic.endswith("/up/readings") and len(p) >= 14:
                        first = struct.unpack_from("<I", p, 8)[0]
                        commits.append((m.topic.split("/")[2], first, p[12] | p[13] << 8, t))

    ingest = Ingest(engine, secret=secret, reorder_window_ms=reorder_window_ms, clock=shared)
    orch = Orchestrator(engine, secret, owner=client_id, clock=shared)
    return SimService(
        ingest,
        BrokerAddress(host=host, port=port),
        client_id=client_id,
        group=group,
        fleet=fleet,
        reconcile_every_s=reconcile_every_s,
        stats_every_s=3600,
        orchestrator=orch,
    )


def _companion_main(argv: list[str]) -> int:
    """``python -m cloud.orrery.sim.companion``: the companion process of a virtual fleet."""
    import argparse
    import logging

    from cloud.orrery.jsonlog import configure_logging

    ap = argparse.ArgumentParser(prog="python -m cloud.orrery.sim.companion")
    ap.add_argument("--db", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clock", required=True)
    ap.add_argument("--client-id", default="orrery-sim")
    ap.add_argument("--fleet", default="+")
    ap.add_argument("--group", default="orrery-sim")
    ap.add_argument("--reorder-window-ms", type=int, default=120_000)
    ap.add_argument("--reconcile-every", type=float, default=1.0)
    ap.add_argument("--commits", help="write (device, first seq, count, unix s) per stored batch")
    ap.add_argument("--log-level", default="WARNING")
    a = ap.parse_args(argv)
    configure_logging(a.log_level)
    logging.getLogger("orrery.ingest").setLevel(a.log_level)
    secret = keys.load_secret()
    shared = SharedClock(a.clock)
    engine = engine_for(a.db)
    commits: list | None = [] if a.commits else None
    svc = build_companion(
        engine, secret, a.host, a.port, shared, client_id=a.client_id, fleet=a.fleet,
        group=a.group, reorder_window_ms=a.reorder_window_ms, reconcile_every_s=a.reconcile_every,
        commits=commits,
    )  # fmt: skip

    def orphaned() -> None:
        parent = os.getppid()
        while not svc.stop_event.wait(1.0):
            if os.getppid() != parent:  # the fleet is gone: stop rather than linger
                svc.stop()

    threading.Thread(target=orphaned, daemon=True).start()
    svc.install_signals()
    svc.run()
    if a.commits and commits is not None:
        Path(a.commits).write_text("\n".join(json.dumps(c) for c in commits))
    return 0


if __name__ == "__main__":
    sys.exit(_companion_main(sys.argv[1:]))
