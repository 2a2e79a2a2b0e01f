"""The bundle rollout benchmark (``orrery bench rollout --bundle``): an app bundle rolled out to
many registered boards, chunk by chunk, through the real command path.

A fresh SQLite database (a temporary file) gets ``devices`` devices, online, on app 1.0.0 with
``.mpy`` 6.3; the bundle is the real app (``tools.board.deploy.build_app``, what ``board
deploy`` copies, packed by ``shared.bundle.pack``), pushed as app@2.0.0 and rolled out to all
of them in one wave (``--success 100%``, no soak, no rate limit that bites). The orchestrator
is ``Orchestrator`` (its downloads ``fleet.rollout.ota``: ``CHUNK_SIZE`` chunks, ``WINDOW`` in
flight per board), ticking back to back in this process, its commands published at QoS 1 to a
real Mosquitto of the bench's own; the acks are stored by a real ``orrery serve`` process.
The boards are one MQTT client in a process of its own that answers like
``firmware/bundle.py``: ``next K/N`` for an install and for each stored chunk, a repeat as
already stored, a gap refused with the chunk it expects; after the last chunk it reports the
new version in its state message and acks the install ``running bundle V`` (checking one
signature in ``VERIFY_EVERY``).

Figures: the bundle's size and chunks, the envelope size of a chunk, ``converge_s`` (from
``rollout start`` until every board is ``succeeded``), ``chunks_per_s`` (chunk commands
acked over that time, for the whole fleet), and the orchestrator's ticks.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from cloud.orrery.bench import rollout as wf_bench
from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import COMMANDS, DEVICES
from cloud.orrery.fleet import bundles, commands, keys
from cloud.orrery.fleet.rollout import ota
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.sim.bundle import app_bundle, mpy
from shared.wire import codec
from tools.dev.mosquitto import Broker

FLEET = wf_bench.FLEET
SECRET = wf_bench.SECRET
VERSION = "2.0.0"
VERIFY_EVERY = 97
TARGETS = {"converge_s_1000": 120}


def _log(msg: str) -> None:
    print(f"bench rollout --bundle: {msg}", file=sys.stderr, flush=True)


def register(engine: sa.Engine, n: int) -> None:
    """``n`` devices, online, on app 1.0.0."""
    rows = [
        {"name": wf_bench.device_name(i), "fleet": FLEET, "profile": "esp32-devkitc",
         "online": True, "created_ms": 0, "fw": "1.0.0", "mpy": mpy(), "boot": 1}
        for i in range(n)
    ]  # fmt: skip
    with engine.begin() as conn:
        for i in range(0, n, 20_000):
            conn.execute(sa.insert(DEVICES), rows[i : i + 20_000])


def _boards_main(port, verified, bad, subscribed, stop) -> None:
    # every board, as one MQTT client: answers installs and chunks as firmware/bundle.py does
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    window = threading.Semaphore(wf_bench.WINDOW)
    dl: dict[str, dict] = {}  # board -> {next, chunks, cmd, version}
    board_mpy = mpy()
    n = [0]

    def ack(name: str, cmd_id: str, code: int, detail: str) -> None:
        outbox.put((codec.topic(FLEET, name, codec.ACKS), codec.encode_ack(cmd_id, code, detail)))

    def on_message(client, userdata, msg) -> None:
        name = msg.topic.split("/")[2]
        if n[0] % VERIFY_EVERY == 0:
            code, c, detail = codec.Verifier(keys.device_key(SECRET, name), name).check(
                msg.payload, int(time.time())
            )
            if code == codec.OK:
                verified.value += 1
            else:
                bad.put(f"{name}: {codec.ACK_NAMES.get(code, code)} {detail}")
        n[0] += 1
        body = json.loads(json.loads(msg.payload)["b"])
        a, cmd_id = body["args"], body["id"]
        if body["kind"] == "install_bundle":
            st = dl.setdefault(name, {"next": 0})
            st.update(chunks=a["chunks"], cmd=cmd_id, version=a["version"])
            return ack(name, cmd_id, codec.IN_PROGRESS, f"next {st['next']}/{a['chunks']}")
        st = dl[name]
        i, k = a["index"], st["next"]
        if i < k:
            return ack(name, cmd_id, codec.OK, f"chunk {i} already stored")
        if i > k:
            return ack(name, cmd_id, codec.REJECTED, f"next {k}/{st['chunks']}")
        st["next"] = k + 1
        if k + 1 < st["chunks"]:
            return ack(name, cmd_id, codec.OK, f"next {k + 1}/{st['chunks']}")
        ack(name, cmd_id, codec.OK, f"bundle {st['version']} stored; rebooting")
        state = codec.encode_state(True, st["version"], None, None, None, 2, 0, False, None,
                                   None, mpy=board_mpy)  # fmt: skip
        outbox.put((codec.topic(FLEET, name, codec.STATE), state))
        ack(name, st["cmd"], codec.OK, f"running bundle {st['version']}")

    wf_bench.run_boards(port, on_message, outbox, window, subscribed, stop)


def run(devices: int = 1000, timeout: float = 900) -> dict:
    """Roll the real app out to ``devices`` boards; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="orrery-bench-bundle-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'rollout.db'}"
        engine = engine_for(url)
        broker = Broker().start()
        ctx = multiprocessing.get_context("spawn")
        verified = ctx.Value("q", 0, lock=False)
        bad = ctx.SimpleQueue()
        subscribed, stop = ctx.Event(), ctx.Event()
        boards = ctx.Process(target=_boards_main, daemon=True,
                             args=(broker.port, verified, bad, subscribed, stop))  # fmt: skip
        boards.start()
        serve = wf_bench._serve(url, broker.port, Path(tmp) / "serve.log")
        pub = None
        try:
            data, manifest = app_bundle(VERSION)
            with engine.begin() as conn:
                bundles.push(conn, data, manifest, 0)
            register(engine, devices)
            wf_bench._probe(engine, broker.port, serve)
            if not subscribed.wait(60):
                raise RuntimeError("the simulated boards did not subscribe")
            pub = wf_bench.Publisher(broker.port)
            return _drive(engine, pub, serve, data, devices, verified, bad, timeout)
        finally:
            stop.set()
            boards.join(10)
            if boards.is_alive():
                boards.kill()
            if pub is not None:
                pub.close()
            serve.terminate()
            serve.wait(30)
            broker.close()
            engine.dispose()


def _drive(engine, pub, serve, data: bytes, devices: int, verified, bad, timeout: float) -> dict:
    orch = Orchestrator(engine, SECRET, owner="bench")
    plan = orch.create(None, "all", "100%", success="100%", max_failures="2%", min_devices=20,
                       soak="0s", timeout="1h", rate="100000/s", health="60s",
                       bundle=f"app@{VERSION}")  # fmt: skip
    rid = plan.rollout_id
    assert rid is not None
    orch.start(rid)
    t0 = time.perf_counter()
    ticks: list[float] = []
    published = 0
    envelope = 0
    while True:
        t = time.perf_counter()
        out = orch.tick()
        ticks.append(time.perf_counter() - t)
        if out:
            envelope = max(envelope, max(len(o.payload) for o in out))
            pub.publish(out)
            with engine.begin() as conn:
                commands.mark_sent(conn, [o.command_id for o in out], int(time.time() * 1000))
            published += len(out)
        with engine.connect() as conn:
            done = orch.counts(conn, rid)["succeeded"]
        if done == devices:
            break
        if serve.poll() is not None:
            raise RuntimeError(f"orrery serve exited with {serve.returncode}")
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{done} of {devices} boards converged within {timeout:g} s")
        if not out:
            time.sleep(0.02)
    converge = time.perf_counter() - t0
    with engine.connect() as conn:
        chunks = conn.execute(
            sa.select(sa.func.count()).where(COMMANDS.c.kind == ota.KIND_CHUNK,
                                             COMMANDS.c.status == "done")
        ).scalar_one()  # fmt: skip
    failures = []
    while not bad.empty():
        failures.append(bad.get())
    n = ota.chunk_count(len(data))
    _log(f"{devices} boards converged in {converge:.1f} s ({chunks / converge:.0f} chunks/s)")
    result = {
        "devices": devices,
        "database": "sqlite (temporary file)",
        "bundle_bytes": len(data),
        "chunk_size": ota.CHUNK_SIZE,
        "chunks_per_board": n,
        "window": ota.WINDOW,
        "chunk_envelope_bytes": envelope,
        "chunk_commands_acked": chunks,
        "commands_published": published,
        "converge_s": round(converge, 2),
        "chunks_per_s": round(chunks / converge),
        "bytes_per_s": round(chunks * ota.CHUNK_SIZE / converge),
        "ticks": {"count": len(ticks), "mean_ms": round(1000 * sum(ticks) / len(ticks), 1),
                  "max_ms": round(1000 * max(ticks), 1)},  # fmt: skip
        "signatures_checked": verified.value,
        "bad_signatures": failures[:5],
    }
    met = not failures and (devices > 1000 or converge <= TARGETS["converge_s_1000"])
    result["targets"] = {"converge_s_1000": {"target": TARGETS["converge_s_1000"], "met": met}}
    result["met"] = met
    return result
