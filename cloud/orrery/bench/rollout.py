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

import hmac
import json
import multiprocessing
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import sqlalchemy as sa

from cloud.orrery.bench.ingest import mqtt_client
from cloud.orrery.clock import now_ms
from cloud.orrery.db.engine import engine_for, url_from
from cloud.orrery.db.tables import (
    COMMAND_BODIES,
    COMMANDS,
    DEAD_LETTERS,
    DEVICES,
    ROLLOUT_DEVICES,
    ROLLOUT_LOG,
    ROLLOUTS,
)
from cloud.orrery.fleet import commands, keys, registry
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.fleet.rollout.plan import TARGET_COLS
from cloud.orrery.ingest.service import _ReadBuffer
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
WINDOW = 200  # messages published and not PUBACKed yet, at most, per client
TARGETS = {"planning_ratio": 5, "signing_ratio": 0.5, "acks_stored_per_s": 8000, "rollout_s": 30}


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
    """Every simulated board, as one MQTT client in a process of its own (the companion's side
    keeps this process to itself): answers each install command with OK, at most ``WINDOW``
    acks awaiting their PUBACK at a time."""

    def __init__(self, port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._first = ctx.Value("d", 0.0, lock=False)  # time.monotonic() of the first ack, or 0
        self._verified = ctx.Value("q", 0, lock=False)
        self._bad = ctx.SimpleQueue()
        self.subscribed = ctx.Event()
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=_boards_main,
            args=(port, self._first, self._verified, self._bad, self.subscribed, self._stop),
            daemon=True,
        )
        self._proc.start()

    @property
    def first_ack(self) -> float | None:
        """``time.perf_counter()`` when the first ack since the last reset was published."""
        t = self._first.value
        return None if not t else t - time.monotonic() + time.perf_counter()

    def reset(self) -> None:
        """Forget the first ack (a new wave)."""
        self._first.value = 0.0

    @property
    def verified(self) -> int:
        """Signatures the boards checked and found good."""
        return self._verified.value

    @property
    def bad(self) -> list[str]:
        """The commands whose signature did not verify."""
        out = []
        while not self._bad.empty():
            out.append(self._bad.get())
        return out

    def close(self) -> None:
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


class _BoardsClient(mqtt.Client):
    """paho's client reading its socket as ``orrery serve`` does, 256 KiB at a time (paho alone
    asks for the byte, the length and the rest of each 11 KB command separately)."""

    def _create_socket(self):
        return _ReadBuffer(super()._create_socket())


_ID = b'\\"id\\":\\"'  # a command's id in its envelope: "id":" escaped in the body string


def _boards_main(port, first, verified, bad, subscribed, stop) -> None:
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    window = threading.Semaphore(WINDOW)
    n = [0]

    def on_message(client, userdata, msg) -> None:
        name = msg.topic.split("/")[2]
        # the id without decoding the 11 KB envelope twice: the body's keys are sorted, so its
        # "id" is the last one ahead of "kind" (checked against the decoded body below)
        p = msg.payload
        i = p.rindex(_ID) + len(_ID)
        cmd_id = p[i : p.index(b'\\"', i)].decode()
        if not first.value:
            first.value = time.monotonic()
        if n[0] % VERIFY_EVERY == 0:
            code, cmd, detail = codec.Verifier(keys.device_key(SECRET, name), name).check(
                p, int(time.time())
            )
            if code == codec.OK and cmd["id"] == cmd_id:
                verified.value += 1
            else:
                bad.put(f"{name}: {codec.ACK_NAMES.get(code, code)} {detail} ({cmd_id!r})")
        n[0] += 1
        outbox.put((codec.topic(FLEET, name, codec.ACKS), codec.encode_ack(cmd_id, codec.OK, "")))

    run_boards(port, on_message, outbox, window, subscribed, stop)


def run_boards(port, on_message, outbox, window, subscribed, stop) -> None:
    """The simulated boards' MQTT client: subscribed to every board's commands (``on_message``
    answers them by putting ``(topic, payload)`` on ``outbox``), publishing the outbox at QoS 1
    with at most ``WINDOW`` in flight (``window``), until ``stop`` is set."""
    # MQTT 3.1.1, as the boards' umqtt.simple speaks it
    c = _BoardsClient(mqtt.CallbackAPIVersion.VERSION2, "bench-boards", protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(WINDOW)
    c.max_queued_messages_set(0)
    c.on_connect = lambda cl, *a: cl.subscribe(f"orrery/{FLEET}/+/{codec.CMD}", 1)
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = on_message
    c.on_publish = lambda *a: window.release()
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    try:
        while not stop.is_set():
            try:
                topic, payload = outbox.get(timeout=0.1)
            except queue.Empty:
                continue
            while not window.acquire(timeout=0.1):
                if stop.is_set():
                    return
            c.publish(topic, payload, qos=1)
    finally:
        c.disconnect()
        c.loop_stop()


class Publisher:
    """The companion's side of the wire: QoS 1 publishes, at most ``WINDOW`` awaiting their
    PUBACK at a time (paho rescans its whole in-flight list at every PUBACK: a wave handed to
    it at once makes that quadratic), waiting for every PUBACK."""

    def __init__(self, port: int) -> None:
        c = mqtt_client("bench-companion")
        c.max_inflight_messages_set(WINDOW)
        self.acked = threading.Semaphore(0)
        self.window = threading.Semaphore(WINDOW)

        def on_publish(*a) -> None:
            self.window.release()
            self.acked.release()

        c.on_publish = on_publish
        c.connect("127.0.0.1", port, keepalive=60)
        c.loop_start()
        self.client = c

    def publish(self, out, timeout: float = 600) -> None:
        for o in out:
            if not self.window.acquire(timeout=timeout):
                raise RuntimeError("the broker stopped acknowledging commands")
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


def run(devices: int = 100_000, db: str | None = None, timeout: float = 900) -> dict:
    """Measure planning against a plain SELECT, run the rollout, then compare its signing with
    ``json.dumps`` + ``hmac``; on a temporary SQLite file, or with ``db`` (a PostgreSQL
    server's URL) on a fresh database there, dropped afterwards. See the module docstring."""
    with tempfile.TemporaryDirectory(prefix="orrery-bench-rollout-") as tmp:
        with scratch_database(db, Path(tmp) / "rollout.db", "rollout") as (url, what):
            return _run(url, what, devices, Path(tmp), timeout)


@contextmanager
def scratch_database(db: str | None, file: Path, bench: str) -> Iterator[tuple[str, str]]:
    """A bench's database: ``(url, description)`` of the SQLite ``file``, or with ``db`` (a
    PostgreSQL server's URL) of a fresh database created there and dropped afterwards."""
    if db is None:
        yield f"sqlite:///{file}", "sqlite (temporary file)"
        return
    base = sa.engine.make_url(url_from(db))
    name = f"orrery_bench_{bench}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = base.set(database=name).render_as_string(hide_password=False)
        yield url, f"{base.get_backend_name()} (database {name}, dropped after)"
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _run(url: str, what: str, devices: int, tmp: Path, timeout: float) -> dict:
    v1 = workflows.GREENHOUSE_V1.read_bytes()
    v2 = workflows.GREENHOUSE.read_bytes()
    engine = engine_for(url)
    try:
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
            "database": what,
            "waves": WAVES,
            "wave_sizes": [w["count"] for w in plan.waves],
            "rate": RATE,
            "select_s": round(select_s, 3),
            "planning_s": round(planning_s, 3),
            "select_runs_s": [round(x, 3) for x in selects],
            "planning_runs_s": [round(x, 3) for x in plans],
            "ratio": round(planning_s / select_s, 2),
            "target": TARGETS["planning_ratio"],
        }
        result.update(_drive(engine, url, orch, plan.rollout_id, devices, tmp, timeout))
        result["signing"] = _signing(engine)
        met = {
            "planning_ratio": result["ratio"] <= TARGETS["planning_ratio"],
            "signing_ratio": result["signing"]["ratio"] >= TARGETS["signing_ratio"],
            "acks_stored_per_s": result["acks"]["stored_per_s"] >= TARGETS["acks_stored_per_s"],
            "rollout_s": result["rollout"]["seconds"] <= TARGETS["rollout_s"],
        }
        result["targets"] = {k: {"target": TARGETS[k], "met": v} for k, v in met.items()}
        result["met"] = all(met.values())
    finally:
        engine.dispose()
    return result


def _signing(engine: sa.Engine, rounds: int = 3) -> dict:
    """The rollout's commands signed again, by Orrery's path (the device keys, then
    ``codec.sign_commands`` per wave) and by ``json.dumps`` + ``hmac``, alternately, each
    checked to give the very envelopes the dispatch stored; best of ``rounds``."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(COMMANDS.c.id, DEVICES.c.name, COMMANDS.c.kind, COMMANDS.c.iat,
                      COMMANDS.c.exp, COMMANDS.c.skew_s, COMMAND_BODIES.c.envelope)
            .join(DEVICES, DEVICES.c.id == COMMANDS.c.device_id)
            .join(COMMAND_BODIES, COMMAND_BODIES.c.id == COMMANDS.c.id)
            .order_by(COMMANDS.c.created_ms, COMMANDS.c.id)
        ).all()  # fmt: skip
    waves: dict[tuple, list] = {}  # one per (kind, window), as the dispatch signs them
    for r in rows:
        waves.setdefault((r.kind, None, r.iat, r.exp), []).append(r)
    # a wave's args, as its first envelope carries them (if another one's differed, its
    # envelope signed again would differ from the stored one: checked below)
    parsed = {k: commands.signed_args(w[0].envelope) for k, w in waves.items()}
    stored = [r.envelope.encode() for w in waves.values() for r in w]

    def orrery() -> list[bytes]:
        out: list[bytes] = []
        for k, w in waves.items():
            cmds = [(keys.device_key(SECRET, r.name), r.id, r.name, r.skew_s) for r in w]
            out += codec.sign_commands(k[0], parsed[k], k[2], k[3], cmds)
        return out

    def baseline() -> list[bytes]:
        out = []
        for k, w in waves.items():
            for r in w:
                key = hmac.new(SECRET, b"orrery/cmd-key/" + r.name.encode(), "sha256").digest()
                c = {"id": r.id, "dev": r.name, "kind": k[0], "args": parsed[k], "iat": k[2],
                     "exp": k[3]}  # fmt: skip
                if r.skew_s:
                    c["skew"] = r.skew_s
                body = json.dumps(c, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                sig = hmac.new(key, body.encode(), "sha256").hexdigest()
                env = {"v": 1, "b": body, "s": sig}
                out.append(json.dumps(env, separators=(",", ":"), ensure_ascii=False).encode())
        return out

    times: dict[str, list[float]] = {"orrery": [], "baseline": []}
    for i in range(rounds):
        for name, f in (("orrery", orrery), ("baseline", baseline))[:: 1 if i % 2 else -1]:
            t = time.perf_counter()
            got = f()
            times[name].append(time.perf_counter() - t)
            if got != stored:
                raise RuntimeError(f"{name} signing does not give the envelopes the dispatch stored")
    n = len(rows)
    o, b = min(times["orrery"]), min(times["baseline"])
    return {
        "commands": n,
        "what": "the rollout's commands signed again, checked byte for byte against the stored "
        "envelopes: Orrery (device keys + codec.sign_commands per wave) against json.dumps + "
        "hmac, alternately, best of each",
        "rounds": rounds,
        "orrery_per_s": round(n / o),
        "baseline_per_s": round(n / b),
        "ratio": round(b / o, 2),
        "target": TARGETS["signing_ratio"],
    }


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
            boards.reset()
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
