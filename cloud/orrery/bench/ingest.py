"""The ingest benchmark (``orrery bench ingest``): readings through a real broker into the
database, against the raw ``executemany`` rate of the same rows measured in the same run.

The load: ``devices`` simulated boards, ``readings`` readings in batches of ``batch`` (the
board's wire format, each with its time anchor), ``dup`` of the batches published twice (a
QoS 1 redelivery), all shuffled. One ``orrery serve`` worker (``--workers N``: N of them on one
shared subscription, as a fleet scales out) runs as its own process on its
own Mosquitto; the figure is unique readings stored per second, from the first publish to the
last commit. The baseline inserts the same rows, duplicates and order included, with
``executemany`` of ``INSERT ... ON CONFLICT DO NOTHING`` in batches of 5,000 into an empty
database with the same schema.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import sqlalchemy as sa

from cloud.orrery.db.engine import describe, engine_for, url_from
from cloud.orrery.db.tables import DEVICES, READING_COLS, READINGS
from shared.wire import codec
from tools.dev.mosquitto import Broker

FLEET = "bench"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, the boards' time anchor


def device_name(i: int) -> str:
    """The simulated board ``i``'s id."""
    return f"b{i:05d}"


def make_messages(
    readings: int, devices: int, batch: int, dup: float, seed: int = 1
) -> tuple[list[tuple[str, bytes]], int]:
    """Shuffled (topic, batch) messages and the number of unique readings they hold."""
    rnd = random.Random(seed)
    per = readings // devices
    msgs = []
    for d in range(devices):
        name = device_name(d)
        t = codec.topic(FLEET, name, codec.READINGS)
        boot = 1 + d
        anchor = (0, 0, T0 + d, 0)
        for first in range(1, per + 1, batch):
            n = min(batch, per + 1 - first)
            recs = [
                ((first + i) // 4, 250 * ((first + i) % 4), rnd.randint(-2000, 2000), 0)
                for i in range(n)
            ]
            payload = codec.encode_batch(boot, first, recs, codec.SYNCED, anchor)
            msgs.append((t, payload))
            if rnd.random() < dup:
                msgs.append((t, payload))
    rnd.shuffle(msgs)
    return msgs, per * devices


def rows_of(messages: list[tuple[str, bytes]], now: int) -> list[tuple]:
    """The readings rows the messages hold, in message order (device ids are 1-based by name)."""
    out = []
    for t, payload in messages:
        b, err = codec.decode_batch(payload)
        assert err is None, err
        did = int(t.split("/")[2][1:]) + 1
        a_up, a_unix = b.anchor[0] * 1000 + b.anchor[1], b.anchor[2] * 1000 + b.anchor[3]
        for seq, up_s, up_ms, value, ch in b.records:
            up = up_s * 1000 + up_ms
            out.append((did, b.boot_id, seq, ch, value, up, up - a_up + a_unix, False, now))
    return out


def register(engine: sa.Engine, devices: int) -> None:
    """Register the simulated boards, ids 1..devices in name order."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(DEVICES),
            [{"name": device_name(i), "fleet": FLEET, "created_ms": 0} for i in range(devices)],
        )


def _insert_in_batches(con, cur, sql: str, rows: list[tuple]) -> float:
    # executemany 5,000 rows per transaction; the seconds it took (the connection is closed)
    t = time.perf_counter()
    for i in range(0, len(rows), 5000):
        cur.executemany(sql, rows[i : i + 5000])
        con.commit()
    elapsed = time.perf_counter() - t
    con.close()
    return elapsed


def raw_baseline(url: str, rows: list[tuple]) -> float:
    """Seconds to insert ``rows`` with the driver's executemany, 5,000 per transaction."""
    cols = ",".join(READING_COLS)
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        con = sqlite3.connect(path)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        sql = f"INSERT INTO readings ({cols}) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING"
        return _insert_in_batches(con, con, sql, rows)
    import psycopg

    con = psycopg.connect(
        sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    sql = (
        f"INSERT INTO readings ({cols}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING"
    )
    with con.cursor() as cur:
        return _insert_in_batches(con, cur, sql, rows)


def mqtt_client(prefix: str, client_id: str | None = None) -> mqtt.Client:
    """An MQTT v5 client for a benchmark, id ``client_id`` or ``PREFIX-<random>``: up to 1000
    QoS 1 messages in flight and an unbounded queue."""
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{prefix}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    return c


def publish(port: int, messages: list[tuple[str, bytes]], done_timeout: float = 600) -> float:
    """Publish at QoS 1 and wait for every PUBACK; return the seconds it took."""
    c = mqtt_client("bench-pub")
    acked = threading.Semaphore(0)
    c.on_publish = lambda *a: acked.release()
    c.connect("127.0.0.1", port)
    c.loop_start()
    t = time.perf_counter()
    for topic, payload in messages:
        c.publish(topic, payload, qos=1)
    for _ in messages:
        if not acked.acquire(timeout=done_timeout):
            raise RuntimeError("publisher: PUBACKs stopped arriving")
    elapsed = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    return elapsed


def _stored(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        r = conn.execute(
            sa.select(
                sa.func.sum(DEVICES.c.received),
                sa.func.sum(DEVICES.c.duplicates),
            )
        ).first()
    return int(r[0] or 0), int(r[1] or 0)


def end_to_end(
    url: str,
    messages: list[tuple[str, bytes]],
    unique: int,
    devices: int,
    timeout: float,
    workers: int = 1,
) -> dict:
    """Run ``workers`` ``orrery serve`` processes (one shared subscription) on a broker of
    their own and measure the whole path."""
    engine = engine_for(url)
    register(engine, devices)
    broker = Broker(extra_conf="max_inflight_messages 1000").start()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("ORRERY_SECRET", None)
    logs = [
        tempfile.NamedTemporaryFile(prefix="orrery-bench-worker-", suffix=".log", delete=False)
        for _ in range(workers)
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cloud.orrery.cli", "serve", "--db", url, "--port", str(broker.port),
             "--client-id", f"bench-ingest-{i}", "--group", "bench", "--reorder-window", "3600",
             "--log-level", "INFO"],
            env=env, stdout=subprocess.DEVNULL, stderr=logs[i],
        )
        for i in range(workers)
    ]  # fmt: skip
    elapsed = pub_s = 0.0
    try:
        # ready when every worker has subscribed (its log says so) and a probe has gone through
        deadline = time.monotonic() + 60
        while not all("broker_connected" in Path(f.name).read_text() for f in logs):
            for w, f in zip(procs, logs, strict=True):
                if w.poll() is not None:
                    raise RuntimeError(f"orrery serve exited: {Path(f.name).read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("orrery serve did not start within 60 s")
            time.sleep(0.1)
        probe = codec.encode_batch(1, 10**9, [(0, 0, 0, 0)], 0, None)
        while _stored(engine)[0] == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("orrery serve stored nothing within 60 s")
            publish(broker.port, [(codec.topic(FLEET, device_name(0), codec.READINGS), probe)])
            time.sleep(0.3)
        base = _stored(engine)
        t = time.perf_counter()
        pub_s = publish(broker.port, messages)
        deadline = time.monotonic() + timeout
        while True:
            got, dups = _stored(engine)
            got -= base[0]
            if (
                got >= unique
                or time.monotonic() > deadline
                or any(w.poll() is not None for w in procs)
            ):
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - t
        time.sleep(0.5)  # anything late would show up as a duplicate or an excess
        got, dups = _stored(engine)
        got, dups = got - base[0], dups - base[1]
        with engine.connect() as conn:
            rows = conn.execute(sa.select(sa.func.count()).select_from(READINGS)).scalar() - base[0]
    finally:
        for w in procs:
            w.terminate()
        for w in procs:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
        broker.close()
        engine.dispose()
        for f in logs:
            f.close()
            os.unlink(f.name)
    return {
        "workers": workers,
        "seconds": round(elapsed, 3),
        "publish_seconds": round(pub_s, 3),
        "readings_per_s": round(unique / elapsed),
        "stored": rows,
        "lost": unique - rows,
        "duplicate_rows": rows - got if rows > got else 0,
        "duplicates_dropped": dups,
        "worker_exit": [w.returncode for w in procs],
    }


def run(
    readings: int = 1_000_000,
    devices: int = 1000,
    batch: int = 100,
    dup: float = 0.10,
    pg_url: str | None = None,
    timeout: float = 900,
    workers: int = 1,
) -> dict:
    """Measure SQLite, and PostgreSQL when ``pg_url`` answers; see the module docstring."""
    messages, unique = make_messages(readings, devices, batch, dup)
    rows = rows_of(messages, 0)
    result: dict = {
        "readings": unique,
        "devices": devices,
        "batch": batch,
        "messages": len(messages),
        "duplicate_readings_sent": len(rows) - unique,
        "target_ratio": 0.5,
    }
    with tempfile.TemporaryDirectory(prefix="orrery-bench-") as tmp:
        e2e_url = f"sqlite:///{Path(tmp) / 'e2e.db'}"
        raw_url = f"sqlite:///{Path(tmp) / 'raw.db'}"
        result["sqlite"] = _compare(
            e2e_url, raw_url, messages, rows, unique, devices, timeout, workers
        )
    if pg_url:
        result["postgresql"] = _postgres(pg_url, messages, rows, unique, devices, timeout, workers)
    parts = [result["sqlite"]] + (
        [result["postgresql"]]
        if isinstance(result.get("postgresql"), dict) and "ratio" in result["postgresql"]
        else []
    )
    result["met"] = all(
        p["ratio"] >= 0.5
        and p["end_to_end"]["lost"] == 0
        and p["end_to_end"]["duplicate_rows"] == 0
        for p in parts
    )
    return result


def _compare(
    e2e_url: str,
    raw_url: str,
    messages,
    rows,
    unique: int,
    devices: int,
    timeout: float,
    workers: int = 1,
) -> dict:
    e2e = end_to_end(e2e_url, messages, unique, devices, timeout, workers)
    raw_engine = engine_for(raw_url)
    register(raw_engine, devices)
    raw_engine.dispose()
    raw_s = raw_baseline(raw_url, rows)
    raw = {
        "seconds": round(raw_s, 3),
        "readings_per_s": round(unique / raw_s),
        "rows_per_s": round(len(rows) / raw_s),
    }
    return {"end_to_end": e2e, "raw_executemany": raw, "ratio": round(raw_s / e2e["seconds"], 3)}


def _postgres(
    pg_url: str, messages, rows, unique: int, devices: int, timeout: float, workers: int = 1
) -> dict:
    base = sa.engine.make_url(url_from(pg_url))
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    names = [f"orrery_bench_{uuid.uuid4().hex[:8]}", f"orrery_bench_{uuid.uuid4().hex[:8]}"]
    try:
        with admin.connect() as c:
            for n in names:
                c.execute(sa.text(f'CREATE DATABASE "{n}"'))
    except sa.exc.OperationalError as exc:
        return {
            "skipped": f"PostgreSQL not reachable at {describe(str(base))}: {str(exc.orig).strip()[:200]}"
        }
    try:
        return _compare(
            base.set(database=names[0]).render_as_string(hide_password=False),
            base.set(database=names[1]).render_as_string(hide_password=False),
            messages, rows, unique, devices, timeout, workers,
        )  # fmt: skip
    finally:
        with admin.connect() as c:
            for n in names:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
        admin.dispose()
