"""Plumbing for the ingest reliability tests: real ``orrery serve`` worker processes, a paced
QoS 1 publisher that survives a broker restart, fences, and the exactly-once accounting.

Nothing here simulates anything: the workers are ``python -m cloud.orrery.cli serve``
subprocesses, the broker is a real Mosquitto (logging everything, so the tests can see
subscriptions and redeliveries), the databases are real SQLite files and PostgreSQL databases.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.orrery.bench import ingest as bench
from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES
from cloud.orrery.ingest.handler import Ingest
from cloud.orrery.ingest.service import BrokerAddress, Service
from shared.wire import codec
from tools.dev.mosquitto import Broker

FLEET = bench.FLEET
FENCE = "fence"  # a registered device of its own: fences never mix with the stream's readings
GROUP = "orrery-ingest"
# everything, debug included: subscriptions (readiness) and PUBLISH lines with their DUP flag
# (redeliveries) are read back from the log
BROKER_CONF = "log_type all"
ROOT = Path(__file__).resolve().parents[2]


def wait_for(
    cond: Callable[[], object], timeout: float, what: str, diag: Callable[[], str] = lambda: ""
):
    """Poll ``cond`` every 20 ms until it is truthy; return its value, or fail saying ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{diag()}")
        time.sleep(0.02)


def broker() -> Broker:
    """A Mosquitto of the test's own that logs everything (see ``BROKER_CONF``)."""
    return Broker(extra_conf=BROKER_CONF).start()


# --- workers -------------------------------------------------------------------------------


class Worker:
    """One ``orrery serve`` process; its stderr (JSON log lines) goes to ``log_path``."""

    def __init__(
        self, db_url: str, port: int, client_id: str, log_path: Path, args: tuple = ()
    ) -> None:
        self.db_url = db_url
        self.port = port
        self.client_id = client_id
        self.log_path = log_path
        self.args = ["--reorder-window", "3600", *args]  # later options win
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Worker:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for k in ("ORRERY_SECRET", "ORRERY_SECRET_FILE", "ORRERY_DB_URL"):
            env.pop(k, None)
        with open(self.log_path, "ab") as err:
            err.write(f"--- start #{self.starts + 1} of {self.client_id}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloud.orrery.cli", "serve", "--db", self.db_url,
                 "--port", str(self.port), "--client-id", self.client_id, "--group", GROUP,
                 "--log-level", "INFO", *self.args],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        self.starts += 1
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """``kill -9``: no drain, no disconnect, whatever transaction is open is lost."""
        assert self.proc is not None and self.alive(), f"{self.client_id} is not running"
        self.proc.kill()
        self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the worker freezes (a stalled process, a long GC, a VM pause)."""
        assert self.proc is not None and self.alive()
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (the worker drains and exits 0); SIGKILL if it hangs. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def connects(self) -> list[bool]:
        """``session_present`` of each ``broker_connected`` line this worker logged."""
        out = []
        for line in self.log().splitlines():
            try:
                msg = json.loads(line)["msg"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(msg, dict) and msg.get("event") == "broker_connected":
                out.append(bool(msg.get("session_present")))
        return out


def subscriptions(b: Broker, client_id: str) -> int:
    """How many times ``client_id`` subscribed to the readings (Mosquitto logs each SUBSCRIBE)."""
    line = f"{client_id} 1 $share/{GROUP}/orrery/+/+/up/#"
    return sum(1 for ln in b.log().splitlines() if ln.endswith(line))


def start_ready(w: Worker, b: Broker, timeout: float = 60) -> None:
    """Start ``w`` and wait until the broker has its subscription (once more than before)."""
    before = subscriptions(b, w.client_id)
    w.start()

    def ready() -> bool:
        if not w.alive():
            raise AssertionError(f"worker {w.client_id} exited {w.proc.returncode}:\n{w.log()}")
        return subscriptions(b, w.client_id) > before

    wait_for(ready, timeout, f"worker {w.client_id} to subscribe", w.log)


# --- the load ------------------------------------------------------------------------------


@dataclass(repr=False)
class Load:
    """The stream: shuffled batches, some published twice, and what the database must end with."""

    messages: list[tuple[str, bytes]]
    devices: int
    per_device: int
    batch: int
    unique: int
    sent: Counter  # device name -> readings published (duplicates included)

    @property
    def published(self) -> int:
        return sum(self.sent.values())

    def __repr__(self) -> str:
        return (f"Load({len(self.messages)} messages, {self.unique} readings, "
                f"{self.devices} devices)")  # fmt: skip


def make_load(readings: int, devices: int, batch: int = 100, dup: float = 0.10, seed: int = 1):
    """``bench.make_messages`` with full batches only (so a redelivery is a whole batch)."""
    assert readings % devices == 0 and (readings // devices) % batch == 0
    messages, unique = bench.make_messages(readings, devices, batch, dup, seed)
    sent: Counter = Counter()
    for topic, payload in messages:
        b, err = codec.decode_batch(payload)
        assert err is None, err
        sent[topic.split("/")[2]] += b.count
    return Load(messages, devices, readings // devices, batch, unique, sent)


def setup_db(url: str, load: Load) -> sa.Engine:
    """Migrate, register the stream's devices (ids 1..devices) and the fence device."""
    engine = engine_for(url)
    bench.register(engine, load.devices)
    with engine.begin() as c:
        c.execute(
            sa.insert(DEVICES), [{"name": FENCE, "fleet": FLEET, "created_ms": 0}]
        )
    return engine


def stored(engine: sa.Engine) -> tuple[int, int]:
    """The stream's (received, duplicates) counters, summed over its devices."""
    with engine.connect() as c:
        r = c.execute(
            sa.text("SELECT sum(received), sum(duplicates) FROM devices WHERE name <> :f"),
            {"f": FENCE},
        ).first()
    return int(r[0] or 0), int(r[1] or 0)


class Publisher:
    """The boards' side of the wire, as one MQTT client: publishes a load at QoS 1 at a steady
    pace, from a fixed client id with a persistent session (across a broker restart paho
    re-sends its unacknowledged messages, DUP, and sends what was published while it was
    disconnected), and records the reason code of every PUBACK: 0, or 0x10 "no matching
    subscribers" when the broker accepted a message and dropped it.

    With ``secret`` it also answers the cloud's signed ``resend`` commands as a board does
    (from its store: here, the load), and ``send_states`` publishes each board's state with
    its last sequence number, which is how the cloud learns about readings it never saw.
    """

    def __init__(
        self,
        port: int,
        load: Load,
        seconds: float,
        secret: bytes | None = None,
        hold_at: float = 0.5,
    ) -> None:
        self.load = load
        self.interval = seconds / len(load.messages)
        # the stream pauses here until release(): a fault injected before then lands mid-stream
        # however slow the machine
        self.hold_at = int(len(load.messages) * hold_at)
        self._go = threading.Event()
        self.secret = secret
        self.client_id = f"boards-{uuid.uuid4().hex[:8]}"
        self.sent = 0  # stream messages handed to paho
        self.tracked: dict[int, tuple[str, list[int]]] = {}  # mid -> (device, seqs)
        self.acks: dict[int, int] = {}  # mid -> PUBACK reason code
        self.answered: set[str] = set()  # resend command ids answered
        self.resent = 0  # readings resent
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._store: dict[str, dict[int, tuple]] = {}  # device -> seq -> (up_s, up_ms, v, ch)
        for topic, payload in load.messages:
            b, _ = codec.decode_batch(payload)
            recs = self._store.setdefault(topic.split("/")[2], {})
            for seq, up_s, up_ms, value, ch in b.records:
                recs[seq] = (up_s, up_ms, value, ch)
        c = bench.mqtt_client("", client_id=self.client_id)
        c.max_inflight_messages_set(100)
        c.reconnect_delay_set(1, 2)
        c.on_publish = self._on_publish
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, keepalive=30, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        self.thread = threading.Thread(target=self._run, daemon=True)

    # --- publishing --------------------------------------------------------------------------

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        with self._lock:
            self.acks[mid] = reason.value if hasattr(reason, "value") else int(reason)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and track it (a readings batch: which readings it holds)."""
        seqs: list[int] = []
        if topic.endswith("/" + codec.READINGS):
            b, err = codec.decode_batch(payload)
            assert err is None, err
            seqs = [r[0] for r in b.records]
        # not under self._lock: paho calls on_publish holding its own lock
        info = self.client.publish(topic, payload, qos=1)
        # NO_CONN while the broker is down: paho keeps the message and sends it on reconnect
        assert info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN), info.rc
        with self._lock:  # its PUBACK may already be in self.acks: they are matched later
            self.tracked[info.mid] = (topic.split("/")[2], seqs)

    def _run(self) -> None:
        t0 = time.monotonic()
        for i, (topic, payload) in enumerate(self.load.messages):
            if i == self.hold_at and not self._go.is_set():
                while not self._go.wait(0.05):
                    if self._stop.is_set():
                        return
                t0 = time.monotonic() - i * self.interval
            if self._stop.wait(max(0.0, t0 + i * self.interval - time.monotonic())):
                return
            self.publish(topic, payload)
            self.sent = i + 1

    def start(self) -> Publisher:
        self.thread.start()
        return self

    def release(self) -> None:
        """Let the stream go on past ``hold_at``."""
        self._go.set()

    def finished(self) -> bool:
        return self.sent == len(self.load.messages)

    def all_acked(self) -> bool:
        with self._lock:
            return self.sent == len(self.load.messages) and self.tracked.keys() <= self.acks.keys()

    def wait(self, timeout: float) -> None:
        wait_for(
            self.all_acked,
            timeout,
            "the broker to acknowledge every published message",
            lambda: (
                f"sent {self.sent}/{len(self.load.messages)}, tracked {len(self.tracked)}, "
                f"acked {len(self.acks)}"
            ),
        )

    def accepted(self) -> Counter:
        """Readings per device in messages the broker acked with reason 0 (it had a
        subscriber for them)."""
        out: Counter = Counter()
        with self._lock:
            for mid, (dev, seqs) in self.tracked.items():
                if self.acks.get(mid) == 0:
                    out[dev] += len(seqs)
        return out

    def dropped(self) -> set[tuple[str, int]]:
        """(device, seq) of readings that were only in messages the broker dropped (a PUBACK
        with a non-zero reason code, 0x10: no matching subscribers)."""
        bad: set[tuple[str, int]] = set()
        good: set[tuple[str, int]] = set()
        with self._lock:
            for mid, (dev, seqs) in self.tracked.items():
                if mid in self.acks:
                    (good if self.acks[mid] == 0 else bad).update((dev, s) for s in seqs)
        return bad - good

    def dropped_messages(self) -> int:
        with self._lock:
            return sum(1 for mid in self.tracked if self.acks.get(mid, 0) != 0)

    # --- the boards' part: state and resends -------------------------------------------------

    def send_states(self) -> None:
        """Each board's state (online, last seq issued, nothing left in its backlog)."""
        for i in range(self.load.devices):
            name = bench.device_name(i)
            self.publish(
                codec.topic(FLEET, name, codec.STATE),
                codec.encode_state(True, "test", None, None, None, 1 + i, 0, True,
                               (0, 0, bench.T0 + i, 0), self.load.per_device),
            )  # fmt: skip

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if self.secret is not None and not reason.is_failure:
            client.subscribe(f"orrery/{FLEET}/+/{codec.CMD}", 1)

    def _on_message(self, client, userdata, msg) -> None:
        from cloud.orrery.fleet import keys

        dev = msg.topic.split("/")[2]
        if dev not in self._store:
            return
        cmd, err = codec.verify_envelope(keys.device_key(self.secret, dev), msg.payload)
        assert err is None, f"a command for {dev} that does not verify: {err}"
        if cmd["kind"] != "resend" or cmd["id"] in self.answered:
            return
        first, last = cmd["args"]["first"], cmd["args"]["last"]
        i = int(dev[1:])
        recs = self._store[dev]
        for a in range(first, last + 1, self.load.batch):
            seqs = range(a, min(last, a + self.load.batch - 1) + 1)
            self.publish(
                codec.topic(FLEET, dev, codec.READINGS),
                codec.encode_batch(1 + i, a, [recs[s] for s in seqs], codec.SYNCED,
                               (0, 0, bench.T0 + i, 0)),
            )  # fmt: skip
            self.resent += len(seqs)
        self.answered.add(cmd["id"])

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()


def fence(b: Broker, engine: sa.Engine, workers: list[Worker], timeout: float = 60) -> None:
    """Make sure every message routed to ``workers`` has been stored and acked.

    Call once the stream is fully acknowledged by the broker. Publishes fence readings (on the
    fence device) until the broker has sent one to each worker (its log says to whom), then
    waits until all of them are stored. A worker gets its session's messages in order and
    stores them in order, so once its fence is committed so is everything queued before it.
    """
    topic = codec.topic(FLEET, FENCE, codec.READINGS)
    with engine.connect() as c:
        fid = c.execute(sa.text("SELECT id FROM devices WHERE name = :f"), {"f": FENCE}).scalar()

    def fences() -> int:
        with engine.connect() as c:
            return c.execute(
                sa.text("SELECT count(*) FROM readings WHERE device_id = :d"), {"d": fid}
            ).scalar()

    pending = {w.client_id for w in workers}
    seen = len(
        re.findall(r"Sending PUBLISH to \S+ \(d0, q1, r0, m\d+, '" + re.escape(topic), b.log())
    )
    before = sent = fences()
    deadline = time.monotonic() + timeout
    while pending:
        sent += 1
        bench.publish(b.port, [(topic, codec.encode_batch(1, sent, [(0, 0, 0, 0)], 0, None))])
        hits = re.findall(
            r"Sending PUBLISH to (\S+) \(d0, q1, r0, m\d+, '" + re.escape(topic), b.log()
        )
        pending -= set(hits[seen:])
        if time.monotonic() > deadline:
            raise AssertionError(f"no fence reached {sorted(pending)} in {timeout} s")
    wait_for(lambda: fences() == sent, timeout, f"fence readings {before + 1}..{sent} stored")


def redeliveries(b: Broker, worker_ids: list[str], publisher_id: str) -> int:
    """Stream messages delivered more than once, as the broker logged them: PUBLISHes it
    re-sent (DUP) to a worker, and PUBLISHes the publisher re-sent (DUP) to it."""
    n = 0
    fence_topic = codec.topic(FLEET, FENCE, codec.READINGS)
    for ln in b.log().splitlines():
        if fence_topic in ln or "/" + codec.READINGS + "'" not in ln:
            continue
        m = re.search(r"Sending PUBLISH to (\S+) \(d1, q1", ln)
        if m and m.group(1) in worker_ids:
            n += 1
        elif f"Received PUBLISH from {publisher_id} (d1, q1" in ln:
            n += 1
    return n


def missing(engine: sa.Engine, load: Load) -> set[tuple[str, int]]:
    """(device, seq) of the load's readings not in the ``readings`` table."""
    with engine.connect() as c:
        have = set(
            c.execute(
                sa.text("SELECT d.name, r.seq FROM readings r JOIN devices d ON d.id = r.device_id"
                        " WHERE d.name <> :f"), {"f": FENCE}
            ).all()
        )  # fmt: skip
    return {
        (bench.device_name(i), s)
        for i in range(load.devices)
        for s in range(1, load.per_device + 1)
        if (bench.device_name(i), s) not in have
    }


def check_exactly_once(engine: sa.Engine, load: Load, accepted: Counter, redelivered: int) -> dict:
    """Assert the stream is stored exactly once, and its duplicates counted, not stored.

    ``accepted``: readings per device in the messages the broker acked with reason 0 (the
    stream, its repeats, and any resends); ``redelivered``: messages the broker logged as sent
    again (DUP) to a worker or received again from the publisher.

    - every device has exactly its readings: one boot, seq 1..per_device, no more, no less
      (with the (device, boot, seq) primary key: nothing lost, nothing stored twice);
    - each device's ``received`` counter is per_device (every reading counted once as new);
    - each device's ``duplicates`` counter is every accepted reading beyond the first copy,
      plus whole batches delivered again after a fault (committed but not acked when the
      worker died, or re-sent by the publisher across a broker restart): never a fraction of
      a batch, and never more batches than the redeliveries the broker logged.
    """
    with engine.connect() as c:
        per = {
            r.name: r
            for r in c.execute(
                sa.text(
                    "SELECT d.name, r.boot, count(*) AS n, min(r.seq) AS lo, max(r.seq) AS hi"
                    " FROM readings r JOIN devices d ON d.id = r.device_id"
                    " WHERE d.name <> :f GROUP BY d.name, r.boot"
                ),
                {"f": FENCE},
            )
        }
        rows = c.execute(
            sa.text("SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device_id"
                    " WHERE d.name <> :f"), {"f": FENCE}
        ).scalar()  # fmt: skip
        counters = _counters(c)
        dead = c.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar()
    names = [bench.device_name(i) for i in range(load.devices)]
    assert rows == load.unique, f"{rows} rows for {load.unique} unique readings"
    wrong = {
        n: (per[n].boot, per[n].n, per[n].lo, per[n].hi) if n in per else None
        for n in names
        if n not in per
        or (per[n].boot, per[n].n, per[n].lo, per[n].hi)
        != (1 + int(n[1:]), load.per_device, 1, load.per_device)
    }
    assert not wrong, f"devices with missing or extra readings (boot, rows, min, max): {wrong}"
    assert set(per) == set(names), set(per) ^ set(names)
    received = sum(r for r, _ in counters.values())
    duplicates = sum(d for _, d in counters.values())
    assert received == load.unique, (received, load.unique)
    assert all(counters[n][0] == load.per_device for n in names)
    extra = {n: counters[n][1] - (accepted[n] - load.per_device) for n in names}
    assert all(e >= 0 and e % load.batch == 0 for e in extra.values()), (
        f"duplicates counted minus accepted repeats, per device: {extra}"
    )
    extra_batches = sum(extra.values()) // load.batch
    assert extra_batches <= redelivered, (
        f"{extra_batches} batches counted as duplicates beyond the accepted repeats, "
        f"but the broker logged only {redelivered} redeliveries"
    )
    assert dead == 0, f"{dead} dead letters"
    return {
        "rows": rows,
        "received": received,
        "duplicates": duplicates,
        "accepted_repeats": sum(accepted.values()) - load.unique,
        "redelivered_batches_dropped": extra_batches,
        "redeliveries_logged": redelivered,
    }


def _counters(c) -> dict[str, tuple[int, int]]:
    # device name -> (received, duplicates), the fence device left out
    rows = c.execute(
        sa.text("SELECT name, received, duplicates FROM devices WHERE name <> :f"), {"f": FENCE}
    )
    return {r.name: (r.received, r.duplicates) for r in rows}


def check_accepted_exactly_once(
    engine: sa.Engine, load: Load, accepted: Counter, lost: set, redelivered: int
) -> None:
    """``check_exactly_once`` for a run in which the broker dropped ``lost`` readings: every
    other reading stored once, counted once as new, and the duplicates accounted for."""
    with engine.connect() as c:
        rows = c.execute(
            sa.text("SELECT d.name, r.boot, count(*) AS n FROM readings r"
                    " JOIN devices d ON d.id = r.device_id WHERE d.name <> :f"
                    " GROUP BY d.name, r.boot"), {"f": FENCE}
        ).all()  # fmt: skip
        counters = _counters(c)
    lost_per = Counter(dev for dev, _ in lost)
    for r in rows:
        assert r.boot == 1 + int(r.name[1:])
        assert r.n == load.per_device - lost_per[r.name], (r.name, r.n, lost_per[r.name])
    assert sum(r.n for r in rows) == load.unique - len(lost)
    extra = {
        n: dup - (accepted[n] - (load.per_device - lost_per[n]))
        for n, (rec, dup) in counters.items()
    }
    assert all(rec == load.per_device - lost_per[n] for n, (rec, _) in counters.items())
    assert all(e >= 0 and e % load.batch == 0 for e in extra.values()), extra
    assert sum(extra.values()) // load.batch <= redelivered


class MisdirectedResend(AssertionError):
    """A device's gap waits on a resend command that was queued for another device."""


def misdirected_gaps(engine: sa.Engine) -> list:
    """Gaps whose resend command was queued for another device."""
    with engine.connect() as c:
        return c.execute(
            sa.text("SELECT g.device_id, g.first, g.last, g.command_id, c.device_id AS owner"
                    " FROM gaps g JOIN commands c ON c.id = g.command_id"
                    " WHERE c.device_id <> g.device_id")
        ).all()  # fmt: skip


def commands_answered(engine: sa.Engine, answered: set[str]) -> bool:
    """No command waits to be published, and the boards have answered every one."""
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT id, status FROM commands")).all()
    return all(r.status != "queued" and r.id in answered for r in rows)


# --- one message the database refuses -----------------------------------------------------

REFUSED_VALUE = 31337  # a reading with this value makes the database refuse its transaction


def refuse_value(engine: sa.Engine) -> None:
    """Make the database itself refuse any reading of value ``REFUSED_VALUE``: a trigger that
    raises a data exception (PostgreSQL, SQLSTATE 22023) or aborts (SQLite, a constraint
    error), as a value the schema cannot hold would. The ingest sees the real driver's error."""
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            c.execute(sa.text(
                "CREATE FUNCTION refuse_value() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                f" IF NEW.value = {REFUSED_VALUE} THEN RAISE EXCEPTION 'value {REFUSED_VALUE}"
                " refused' USING ERRCODE = '22023'; END IF; RETURN NEW; END $$"
            ))  # fmt: skip
            c.execute(sa.text(
                "CREATE TRIGGER refuse_value BEFORE INSERT ON readings"
                " FOR EACH ROW EXECUTE FUNCTION refuse_value()"
            ))  # fmt: skip
        else:
            c.execute(sa.text(
                f"CREATE TRIGGER refuse_value BEFORE INSERT ON readings WHEN NEW.value ="
                f" {REFUSED_VALUE} BEGIN SELECT RAISE(ABORT, 'value {REFUSED_VALUE} refused'); END"
            ))  # fmt: skip


@contextmanager
def serving(ingest: Ingest, port: int, fleet: str) -> Iterator[Service]:
    """The real ``orrery serve`` service around ``ingest``, in a thread, on the broker at
    ``port`` (a group and client id of its own, only ``fleet``'s topics); stopped on exit."""
    tag = uuid.uuid4().hex[:8]
    svc = Service(ingest, BrokerAddress(port=port), client_id=f"ingest-{tag}",
                  group=f"g-{tag}", fleet=fleet, reconcile_every_s=0.3)  # fmt: skip
    t = threading.Thread(target=svc.run, daemon=True)
    t.start()
    try:
        assert svc.connected.wait(10), "the service did not subscribe"
        yield svc
    finally:
        svc.stop()
        t.join(30)
        assert not t.is_alive(), "the service did not stop"


def store_failures(caplog) -> int:
    """How many ``store_failed`` log lines the service wrote (a group it had to retry)."""
    return sum(1 for r in caplog.records if '"event": "store_failed"' in r.getMessage())
