"""The rollout benchmark (``orrery bench rollout``): plan and run a rollout over many registered
devices.

A fresh SQLite database (a temporary file) gets ``devices`` devices, online on greenhouse@1;
greenhouse@2 is rolled out to all of them (``--target all``) in the waves ``1%,10%,50%,100%``
with a rate limit high enough never to throttle (``100000/s``), ``--success 100%`` and no soak.
Nothing is simulated on the companion's side: the orchestrator is ``Orchestrator``, the
commands go to a real Mosquitto of the bench's own, and the acks are stored by a real
``orrery serve`` process.

Figures:

- ``select_s``: a plain ``SELECT`` of the devices' columns that planning reads (SQLAlchemy
  Core, all rows fetched), best of three; ``planning_s``: ``Orchestrator.create`` (the target
  query, the canary order, the waves, and the insert of every member), best of three, each on
  the same database (the extra drafts are deleted). ``ratio`` = planning_s / select_s, target
  ``<= 5`` (``met``). The two are measured alternately, so both see the same machine load.
- ``commands_per_s``: the install commands published at QoS 1 to the broker and PUBACKed, then
  marked sent in the database (what ``orrery serve`` does with the commands a tick returns);
  ``dispatch.signed_per_s``: the ticks that sign and queue them (one command per device, with
  the workflow's blob, stored in the commands table).
- ``acks_per_s``: the boards' acks (``OK``), from the first published by the simulated boards
  (one MQTT client answering every command, after checking a sample of the signatures) through
  Mosquitto into ``orrery serve`` (``Ingest.handle``, batched) until the orchestrator, ticking
  every ``TICK_EVERY_S`` like ``serve``, has turned each into a succeeded device, per wave,
  summed; ``acks.stored_per_s`` is the part up to ``serve`` having stored them.
- ``ticks``: how long the orchestrator's ticks take with every device a member: while a wave's
  acks come in, and between waves (a wave met, the next one started).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from cloud.orrery.bench.ingest import mqtt_client
from cloud.orrery.clock import now_ms
from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import (
    COMMANDS,
    DEAD_LETTERS,
    DEVICES,
    ROLLOUT_DEVICES,
    ROLLOUT_LOG,
    ROLLOUTS,
)
from cloud.orrery.fleet import keys, registry
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.fleet.rollout.plan import TARGET_COLS
from cloud.orrery.sim import workflows
from shared.wire import codec
from shared.workflow import compiler
from tools.dev.mosquitto import Broker

FLEET = "bench"
WAVES = "1%,10%,50%,100%"
RATE = "100000/s"
SECRET = b"orrery-bench-rollout-fleet-secret"
VERIFY_EVERY = 97  # the simulated boards check one signature in this many
TICK_EVERY_S = 2.0  # orrery serve's default --reconcile-every: how often it ticks rollouts


def device_name(i: int) -> str:
    """The simulated board ``i``'s id."""
    return f"r{i:06d}"


def _log(msg: str) -> None:
    print(f"bench rollout: {msg}", file=sys.stderr, flush=True)


def register(engine: sa.Engine, n: int, wf_hash: str) -> None:
    """``n`` devices, online, running greenhouse@1."""
    rows = [
        {"name": device_name(i), "fleet": FLEET, "profile": "esp32-devkitc", "online": True,
         "created_ms": 0, "fw": "1.0.0", "wf": "greenhouse", "wf_ver": 1, "wf_hash": wf_hash}
        for i in range(n)
    ]  # fmt: skip
    with engine.begin() as conn:
        for i in range(0, n, 20_000):
            conn.execute(sa.insert(DEVICES), rows[i : i + 20_000])


def time_select(engine: sa.Engine) -> tuple[float, int]:
    """Seconds to fetch every device's planning columns, and how many rows."""
    with engine.connect() as conn:
        t = time.perf_counter()
        rows = conn.execute(sa.select(*TARGET_COLS)).all()
        return time.perf_counter() - t, len(rows)


def _drop_rollout(engine: sa.Engine, rid: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(ROLLOUT_DEVICES).where(ROLLOUT_DEVICES.c.rollout_id == rid))
        conn.execute(sa.delete(ROLLOUT_LOG).where(ROLLOUT_LOG.c.rollout_id == rid))
        conn.execute(sa.delete(ROLLOUTS).where(ROLLOUTS.c.id == rid))


class Boards:
    """Every simulated board, as one MQTT client: answers each install command with OK."""

    def __init__(self, port: int) -> None:
        self.first_ack: float | None = None
        self.acked = 0
        self.verified = 0
        self.bad: list[str] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt_client("bench-boards")
        c.on_connect = lambda cl, *a: cl.subscribe(f"orrery/{FLEET}/+/{codec.CMD}", 1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port, keepalive=60)
        c.loop_start()
        self.client = c

    def _on_message(self, client, userdata, msg) -> None:
        name = msg.topic.split("/")[2]
        cmd_id = json.loads(json.loads(msg.payload)["b"])["id"]
        with self._lock:
            n = self.acked
            self.acked += 1
            if self.first_ack is None:
                self.first_ack = time.perf_counter()
        if n % VERIFY_EVERY == 0:
            code, _, detail = codec.Verifier(keys.device_key(SECRET, name), name).check(
                msg.payload, int(time.time())
            )
            if code == codec.OK:
                self.verified += 1
            else:
                self.bad.append(f"{name}: {codec.ACK_NAMES.get(code, code)} {detail}")
        client.publish(
            codec.topic(FLEET, name, codec.ACKS), codec.encode_ack(cmd_id, codec.OK, ""), qos=1
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """The companion's side of the wire: QoS 1 publishes, waiting for every PUBACK."""

    def __init__(self, port: int) -> None:
        c = mqtt_client("bench-companion")
        self.acked = threading.Semaphore(0)
        c.on_publish = lambda *a: self.acked.release()
        c.connect("127.0.0.1", port, keepalive=60)
        c.loop_start()
        self.client = c

    def publish(self, out, timeout: float = 600) -> None:
        for o in out:
            self.client.publish(o.topic, o.payload, qos=1)
        for _ in out:
            if not self.acked.acquire(timeout=timeout):
                raise RuntimeError("the broker stopped acknowledging commands")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _serve(url: str, port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for k in ("ORRERY_SECRET", "ORRERY_SECRET_FILE", "ORRERY_DB_URL"):
        env.pop(k, None)
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "cloud.orrery.cli", "serve", "--db", url, "--port", str(port),
             "--client-id", "bench-serve", "--group", "bench", "--reconcile-every", "3600",
             "--no-rollouts", "--log-level", "WARNING"],
            env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip


def _probe(engine: sa.Engine, port: int, serve: subprocess.Popen) -> None:
    """Wait until serve stores what it receives: an ack for no command is a dead letter."""

    def dead() -> int:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(DEAD_LETTERS)).scalar()

    c = Publisher(port)
    try:
        deadline = time.monotonic() + 60
        while dead() == 0:
            if serve.poll() is not None:
                raise RuntimeError(f"orrery serve exited with {serve.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("orrery serve did not start within 60 s")
            c.client.publish(
                codec.topic(FLEET, device_name(0), codec.ACKS),
                codec.encode_ack("probe", codec.OK),
                qos=1,
            )
            time.sleep(0.2)
    finally:
        c.close()


def _count_done(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(COMMANDS).where(COMMANDS.c.status == "done")
        ).scalar()


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"orrery serve exited with {proc.returncode} while waiting for {what}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def run(devices: int = 100_000, timeout: float = 900) -> dict:
    """Measure planning against a plain SELECT, then run the rollout; see the module docstring."""
    v1 = workflows.GREENHOUSE_V1.read_bytes()
    v2 = workflows.GREENHOUSE.read_bytes()
    with tempfile.TemporaryDirectory(prefix="orrery-bench-rollout-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'rollout.db'}"
        engine = engine_for(url)
        with engine.begin() as conn:
            registry.push(conn, v1, None, 0)
            registry.push(conn, v2, None, 0)
        t = time.perf_counter()
        register(engine, devices, compiler.compile(v1).hash)
        _log(f"{devices} devices registered in {time.perf_counter() - t:.1f} s")
        orch = Orchestrator(engine, SECRET, owner="bench")
        kw = dict(success="100%", max_failures="2%", min_devices=20, soak="0s", timeout="1h",
                  rate=RATE, health="60s")  # fmt: skip
        time_select(engine)  # warm the page cache for both
        selects, plans, plan = [], [], None
        for i in range(3):
            s, n = time_select(engine)
            assert n == devices, n
            selects.append(s)
            t = time.perf_counter()
            plan = orch.create("greenhouse@2", "all", WAVES, **kw)
            plans.append(time.perf_counter() - t)
            if i < 2:
                _drop_rollout(engine, plan.rollout_id)
        assert plan is not None and plan.rollout_id is not None
        select_s, planning_s = min(selects), min(plans)
        _log(f"select {select_s:.3f} s, planning {planning_s:.3f} s")
        result: dict = {
            "devices": devices,
            "database": "sqlite (temporary file)",
            "waves": WAVES,
            "wave_sizes": [w["count"] for w in plan.waves],
            "rate": RATE,
            "select_s": round(select_s, 3),
            "planning_s": round(planning_s, 3),
            "select_runs_s": [round(x, 3) for x in selects],
            "planning_runs_s": [round(x, 3) for x in plans],
            "ratio": round(planning_s / select_s, 2),
            "target": 5,
        }
        result["met"] = result["ratio"] <= result["target"]
        result.update(_drive(engine, url, orch, plan.rollout_id, devices, Path(tmp), timeout))
        engine.dispose()
    return result


def _succeeded(engine: sa.Engine, rid: int) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count())
            .select_from(ROLLOUT_DEVICES)
            .where(ROLLOUT_DEVICES.c.rollout_id == rid, ROLLOUT_DEVICES.c.state == "succeeded")
        ).scalar()


def _mark_sent(engine: sa.Engine, ids: list[str]) -> None:
    with engine.begin() as conn:
        for i in range(0, len(ids), 10_000):
            conn.execute(
                sa.update(COMMANDS)
                .where(COMMANDS.c.id.in_(ids[i : i + 10_000]), COMMANDS.c.status == "queued")
                .values(status="sent", sent_ms=now_ms())
            )


def _stats(xs: list[float]) -> dict:
    return {
        "count": len(xs),
        "median_s": round(statistics.median(xs), 3) if xs else None,
        "max_s": round(max(xs), 3) if xs else None,
    }


def _drive(
    engine: sa.Engine,
    url: str,
    orch: Orchestrator,
    rid: int,
    devices: int,
    tmp: Path,
    timeout: float,
) -> dict:
    """Run the planned rollout to the end; the companion's loop is this function's (a tick,
    publish what it returns, tick every TICK_EVERY_S while the acks come in)."""
    broker = Broker(extra_conf="max_queued_messages 1000000\nmax_inflight_messages 1000").start()
    serve = _serve(url, broker.port, tmp / "serve.log")
    boards = pub = None
    try:
        boards = Boards(broker.port)
        pub = Publisher(broker.port)
        assert boards.subscribed.wait(10), "the boards' client did not subscribe"
        _probe(engine, broker.port, serve)
        orch.start(rid)
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        dispatch_s = publish_s = acks_s = stored_s = 0.0
        commands = 0
        waiting: list[float] = []  # ticks while a wave's acks come in
        between: list[float] = []  # ticks that neither send nor wait (a wave met, the next one)
        while True:
            t = time.perf_counter()
            out = orch.tick()
            dt = time.perf_counter() - t
            with engine.connect() as conn:
                state = conn.execute(
                    sa.select(ROLLOUTS.c.state).where(ROLLOUTS.c.id == rid)
                ).scalar()
            if state != "running":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the rollout did not finish within {timeout:g} s")
            if not out:
                between.append(dt)
                continue
            dispatch_s += dt
            commands += len(out)
            boards.first_ack = None
            t0 = time.perf_counter()
            pub.publish(out)
            _mark_sent(engine, [o.command_id for o in out])
            sent = time.perf_counter()
            publish_s += sent - t0
            _log(
                f"wave of {len(out)}: signed and queued in {dt:.2f} s, published in {sent - t0:.2f} s"
            )
            stored_at = None
            next_tick = time.perf_counter() + TICK_EVERY_S
            while True:
                if serve.poll() is not None:
                    raise RuntimeError(f"orrery serve exited with {serve.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"acks did not arrive within {timeout:g} s")
                if stored_at is None and _count_done(engine) >= commands:
                    stored_at = time.perf_counter()
                if stored_at is not None or time.perf_counter() >= next_tick:
                    t = time.perf_counter()
                    assert orch.tick() == [], "a tick sent commands while a wave was in flight"
                    waiting.append(time.perf_counter() - t)
                    next_tick = time.perf_counter() + TICK_EVERY_S
                    if stored_at is not None and _succeeded(engine, rid) >= commands:
                        break
                time.sleep(0.25)
            done = time.perf_counter()
            first = boards.first_ack or t0
            stored_s += stored_at - first
            acks_s += done - first
            _log(
                f"{len(out)} acks stored in {stored_at - first:.2f} s, processed in {done - first:.2f} s"
            )
        total = time.perf_counter() - started
        with engine.connect() as conn:
            summary = orch.summary(conn, rid)
        bad = list(boards.bad)
        verified = boards.verified
    finally:
        for c in (boards, pub):
            if c is not None:
                c.close()
        serve.terminate()
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            serve.kill()
        broker.close()
    if bad:
        raise RuntimeError(f"commands that do not verify: {bad[:5]}")
    return {
        "commands_per_s": round(commands / publish_s),
        "acks_per_s": round(commands / acks_s),
        "dispatch": {
            "commands": commands,
            "sign_and_queue_s": round(dispatch_s, 2),
            "signed_per_s": round(commands / dispatch_s),
            "publish_s": round(publish_s, 2),
            "signatures_verified_by_boards": verified,
        },
        "acks": {
            "path": "boards' MQTT client -> Mosquitto -> orrery serve (Ingest.handle) "
            "-> Orchestrator.tick",
            "seconds": round(acks_s, 2),
            "stored_per_s": round(commands / stored_s),
        },
        "ticks": {
            "every_s_while_acks_arrive": TICK_EVERY_S,
            "while_acks_arrive": _stats(waiting),
            "between_waves": _stats(between),
        },
        "rollout": {
            "seconds": round(total, 1),
            "state": summary["state"],
            "converged": summary["converged_text"],
        },
    }
