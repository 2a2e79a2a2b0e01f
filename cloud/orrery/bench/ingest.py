"""The ingest benchmark (``orrery bench ingest``): readings through a real broker into the
database, against baselines measured on the same messages and rows in the same run.

The load: ``devices`` simulated boards, ``readings`` readings in batches of ``batch`` (the
board's wire format, each with its time anchor), ``dup`` of the batches published twice (a
QoS 1 redelivery), all shuffled. ``orrery serve`` workers (1, and N on one shared
subscription, as a fleet scales out) run as their own processes on their own Mosquitto; the
figures are messages and unique readings stored per second, from the first publish to the last
commit. The baselines, each on the same messages or rows:

- MQTT: the same publisher through a Mosquitto of its own to a plain paho subscriber that only
  counts what it receives (the most a Python MQTT client gets through this machine);
- SQLite: the driver's ``executemany`` of ``INSERT ... ON CONFLICT DO NOTHING``, 5,000 rows per
  transaction, duplicates and order included, into an empty database with the same schema;
- PostgreSQL: ``COPY`` (rows formatted in bulk) into a staging table, then
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, 5,000 rows per transaction.
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
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.orrery.db.engine import describe, engine_for, url_from
from cloud.orrery.db.tables import DEVICES, READING_COLS, READINGS
from shared.wire import codec
from tools.dev.mosquitto import Broker

FLEET = "bench"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, the boards' time anchor
CHUNK = 5000  # rows per transaction of the database baselines
# The targets: each applies to the loads it names (a batch size range) and to one worker.
MQTT_TARGET = 0.6  # messages/s against the plain paho subscriber, batches of <= 26 readings
SQLITE_TARGET = 0.8  # readings/s against raw executemany, batches of >= 100 readings
PG_TARGET = 0.7  # readings/s against COPY through a staging table, batches of >= 100 readings
MESSAGE_BOUND = 26  # the fleet's typical batch: at or below it, messages decide
ROW_BOUND = 100  # at or above it, rows decide


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
    # executemany CHUNK rows per transaction; the seconds it took (the connection is closed)
    t = time.perf_counter()
    for i in range(0, len(rows), CHUNK):
        cur.executemany(sql, rows[i : i + CHUNK])
        con.commit()
    elapsed = time.perf_counter() - t
    con.close()
    return elapsed


def _copy_text(rows: list[tuple]) -> bytes:
    # COPY's text format, built in bulk (None is \N, booleans t/f)
    def cell(v) -> str:
        if v is None:
            return "\\N"
        if v is True or v is False:
            return "t" if v else "f"
        return str(v)

    return "".join("\t".join(map(cell, r)) + "\n" for r in rows).encode()


def raw_baseline(url: str, rows: list[tuple]) -> float:
    """Seconds to store ``rows`` the plain way, CHUNK per transaction: SQLite ``executemany``;
    PostgreSQL ``COPY`` into a staging table and one ``INSERT ... SELECT ... ON CONFLICT DO
    NOTHING``."""
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
    with con.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE staging (LIKE readings INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        con.commit()
        t = time.perf_counter()
        for i in range(0, len(rows), CHUNK):
            with cur.copy(f"COPY staging ({cols}) FROM STDIN") as cp:
                cp.write(_copy_text(rows[i : i + CHUNK]))
            cur.execute(f"INSERT INTO readings ({cols}) SELECT {cols} FROM staging"
                        " ON CONFLICT DO NOTHING")  # fmt: skip
            con.commit()
        elapsed = time.perf_counter() - t
    con.close()
    return elapsed


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


def raw_mqtt(messages: list[tuple[str, bytes]], timeout: float = 600) -> float:
    """Seconds for the same publisher to get ``messages`` through a Mosquitto of its own to a
    plain paho subscriber (MQTT v5, QoS 1, one shared subscription, as ``orrery serve``) that
    only counts them: from the first publish to the last message received."""
    broker = Broker(extra_conf="max_inflight_messages 1000").start()
    got = [0]
    done = threading.Event()
    subscribed = threading.Event()
    n = len(messages)

    def on_message(client, userdata, msg) -> None:
        got[0] += 1
        if got[0] >= n:
            done.set()

    sub = mqtt_client("bench-sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 2000  # as orrery serve's
    try:
        sub.connect("127.0.0.1", broker.port, properties=props)
        sub.loop_start()
        sub.subscribe(f"$share/raw/orrery/{FLEET}/+/up/#", qos=1)
        if not subscribed.wait(30):
            raise RuntimeError("raw MQTT subscriber: no SUBACK")
        t = time.perf_counter()
        publish(broker.port, messages)
        if not done.wait(timeout):
            raise RuntimeError(f"raw MQTT subscriber: got {got[0]} of {n} messages")
        elapsed = time.perf_counter() - t
    finally:
        sub.disconnect()
        sub.loop_stop()
        broker.close()
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
        "messages_per_s": round(len(messages) / elapsed),
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
    batches: Sequence[int] = (26, 100),
    dup: float = 0.10,
    pg_url: str | None = None,
    timeout: float = 900,
    workers: Sequence[int] = (1, 2),
) -> dict:
    """Measure each batch size on SQLite, and PostgreSQL when ``pg_url`` answers, with each
    number of workers; see the module docstring. ``targets`` lists every target the run
    measured, ``met`` says whether all were met."""
    result: dict = {"readings": readings, "devices": devices, "dup": dup, "loads": []}
    targets: list[dict] = []
    for batch in batches:
        load = _load(readings, devices, batch, dup, pg_url, timeout, workers)
        result["loads"].append(load)
        targets += _targets(load, workers)
    result["targets"] = targets
    result["met"] = all(t["met"] for t in targets)
    return result


def _load(readings, devices, batch, dup, pg_url, timeout, workers) -> dict:
    messages, unique = make_messages(readings, devices, batch, dup)
    rows = rows_of(messages, 0)
    mqtt_s = raw_mqtt(messages, timeout)
    load: dict = {
        "batch": batch,
        "readings": unique,
        "messages": len(messages),
        "duplicate_readings_sent": len(rows) - unique,
        "raw_mqtt": {"seconds": round(mqtt_s, 3), "messages_per_s": round(len(messages) / mqtt_s)},
    }
    with tempfile.TemporaryDirectory(prefix="orrery-bench-") as tmp:
        load["sqlite"] = _compare(
            lambda i: f"sqlite:///{Path(tmp) / f'e2e{i}.db'}", f"sqlite:///{Path(tmp) / 'raw.db'}",
            messages, rows, unique, devices, timeout, workers, mqtt_s, "raw_executemany",
        )  # fmt: skip
    if pg_url:
        load["postgresql"] = _postgres(
            pg_url, messages, rows, unique, devices, timeout, workers, mqtt_s
        )
    return load


def _targets(load: dict, workers: Sequence[int]) -> list[dict]:
    # every target this load measured: the ratios that apply to its batch size (one worker),
    # and nothing lost nor duplicated in every run
    out = []
    batch = load["batch"]

    def add(name: str, value, ok: bool, want) -> None:
        out.append({"name": f"batch {batch}: {name}", "value": value, "target": want, "met": ok})

    for db in ("sqlite", "postgresql"):
        part = load.get(db)
        if not isinstance(part, dict) or "workers" not in part:
            continue
        one = part["workers"].get("1")
        if one is not None:
            if batch <= MESSAGE_BOUND and db == "sqlite":
                r = one["ratio_messages_vs_raw_mqtt"]
                add("sqlite, 1 worker, messages/s vs raw MQTT", r, r >= MQTT_TARGET,
                    f">= {MQTT_TARGET}")  # fmt: skip
            if batch >= ROW_BOUND:
                want = SQLITE_TARGET if db == "sqlite" else PG_TARGET
                base = "raw executemany" if db == "sqlite" else "COPY via staging"
                r = one["ratio_readings_vs_" + ("raw_executemany" if db == "sqlite" else "copy")]
                add(f"{db}, 1 worker, readings/s vs {base}", r, r >= want, f">= {want}")
        for w, e2e in part["workers"].items():
            bad = e2e["lost"] + e2e["duplicate_rows"]
            add(f"{db}, {w} worker(s), lost + duplicated", bad, bad == 0, "0")
    return out


def _compare(
    e2e_url,
    raw_url: str,
    messages,
    rows,
    unique: int,
    devices: int,
    timeout: float,
    workers: Sequence[int],
    mqtt_s: float,
    base: str,
) -> dict:
    # each number of workers on a fresh database (``e2e_url(n)``), then the baseline
    runs = {}
    for n in workers:
        runs[n] = end_to_end(e2e_url(n), messages, unique, devices, timeout, n)
    raw_engine = engine_for(raw_url)
    register(raw_engine, devices)
    raw_engine.dispose()
    raw_s = raw_baseline(raw_url, rows)
    key = "raw_executemany" if base == "raw_executemany" else "copy"
    for e2e in runs.values():
        e2e["ratio_messages_vs_raw_mqtt"] = round(mqtt_s / e2e["seconds"], 3)
        e2e["ratio_readings_vs_" + key] = round(raw_s / e2e["seconds"], 3)
    return {
        "workers": {str(n): e2e for n, e2e in runs.items()},
        base: {
            "seconds": round(raw_s, 3),
            "readings_per_s": round(unique / raw_s),
            "rows_per_s": round(len(rows) / raw_s),
        },
    }


def _postgres(
    pg_url: str, messages, rows, unique: int, devices: int, timeout: float, workers, mqtt_s
) -> dict:
    base = sa.engine.make_url(url_from(pg_url))
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    names = [f"orrery_bench_{uuid.uuid4().hex[:8]}" for _ in range(len(workers) + 1)]
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{names[0]}"'))
    except sa.exc.OperationalError as exc:
        return {
            "skipped": f"PostgreSQL not reachable at {describe(str(base))}: {str(exc.orig).strip()[:200]}"
        }
    url = lambda n: base.set(database=n).render_as_string(hide_password=False)  # noqa: E731
    index = {n: i + 1 for i, n in enumerate(workers)}

    def e2e_url(n: int) -> str:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{names[index[n]]}"'))
        return url(names[index[n]])

    try:
        return _compare(
            e2e_url, url(names[0]), messages, rows, unique, devices, timeout, workers, mqtt_s,
            "copy_via_staging",
        )  # fmt: skip
    finally:
        with admin.connect() as c:
            for n in names:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
        admin.dispose()
