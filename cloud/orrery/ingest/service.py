"""``orrery serve``: the ingest service on MQTT.

- paho-mqtt, MQTT v5, QoS 1, a persistent session (clean_start off, a long session expiry), so
  a restarted worker gets what arrived while it was away;
- a shared subscription ``$share/<group>/orrery/<fleet>/+/up/#``: several workers split the
  load on one broker or a clustered one;
- manual acks: a message is acked only after the transaction that stored it has committed, so
  ``kill -9`` at any moment loses nothing, and what was stored but not acked comes back once and
  is dropped as a duplicate;
- commands: queued ones are published each reconcile pass, sent ones again when their ack is
  overdue (``fleet.commands``), and every open one again after each (re)subscription, since a
  board's pull that reached the broker while no one was subscribed was dropped;
- a group the database refuses because of what it holds is split until the message(s) causing
  it are found; those are dead-lettered and acked, the rest stored (``Ingest.store``): one
  message never stops the ingest. Other database errors keep the group, unacked, and retry;
- one structured (JSON) log line per notable event and a periodic stats line; every failed
  connection attempt is logged with its cause (refused, no route, TLS, the broker's refusal);
- without a connection for ``connect_timeout_s`` (from the start or from a disconnect) the
  service stops and ``failure`` says why (``orrery serve`` then exits non-zero); 0 retries
  forever;
- SIGTERM/SIGINT: stop taking messages, store and ack what is in hand, disconnect, exit 0.

The worker's client id must be stable across restarts (the broker keeps its session, and the
messages in flight to it, under that id): give each worker its own ``--client-id``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.orrery.fleet import commands, keys
from cloud.orrery.ingest.handler import Ingest, Message
from cloud.orrery.jsonlog import jlog
from shared.wire import codec

SESSION_EXPIRY_S = 7 * 86400
RECEIVE_MAXIMUM = 2000
READ_SIZE = 256 * 1024  # bytes asked of the socket at a time (many messages in one read)
READ_PACKETS = 2000  # the most packets handled per read before the loop looks at writes again
OTA_EVERY_S = 0.1  # how often rollouts tick while a bundle download is under way
_READINGS = b"/" + codec.READINGS.encode()  # the end of a readings batch's topic
_PUBACK = struct.Struct("!BBH").pack  # a PUBACK packet: type, remaining length 2, packet id
_MESSAGE = mqtt.MQTTMessage
_new_message = object.__new__


class _ReadBuffer:
    """The broker connection's socket, read ``READ_SIZE`` bytes at a time: paho asks for one
    byte, the length, then the rest of each packet, three system calls a message otherwise.
    ``pending`` tells paho's loop what is buffered (as for a TLS socket's own buffer), so it
    never waits in ``select`` with a message in hand."""

    __slots__ = ("sock", "buf", "pos")

    def __init__(self, sock) -> None:
        self.sock = sock
        self.buf = b""
        self.pos = 0

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes, from the buffer or else one read of the socket."""
        buf, pos = self.buf, self.pos
        if pos >= len(buf):
            data = self.sock.recv(max(n, READ_SIZE))
            if len(data) <= n:
                return data
            self.buf, self.pos = data, n
            return data[:n]
        self.pos = pos + n
        return buf[pos : pos + n]

    def pending(self) -> int:
        """Bytes read from the socket and not yet handled (the TLS layer's included)."""
        inner = getattr(self.sock, "pending", None)
        return len(self.buf) - self.pos + (inner() if inner else 0)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


class FastClient(mqtt.Client):
    """paho's client with a cheaper way in for the common message: a QoS 0/1 PUBLISH without
    MQTT v5 properties, whole in the read buffer, becomes an ``MQTTMessage`` in a few steps and
    goes straight to ``sink`` (no ``Properties`` object, no topic-filter walk, no locks); any
    other packet, or one split across reads, takes paho's own path. ``ack_many`` sends many
    PUBACKs as one write."""

    sink: Callable[[mqtt.MQTTMessage], None] | None = None

    def _create_socket(self):
        return _ReadBuffer(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """paho's ``loop_read``, then every whole packet already buffered."""
        rc = super().loop_read(max_packets)
        sock = self._sock
        k = 0
        while rc == mqtt.MQTT_ERR_SUCCESS and isinstance(sock, _ReadBuffer) and k < READ_PACKETS:
            if self._sock is not sock or sock.pos >= len(sock.buf):
                break
            rc = self._packet_read()
            k += 1
            if rc == mqtt.MQTT_ERR_AGAIN:
                rc = mqtt.MQTT_ERR_SUCCESS
                break
            if rc > 0:
                return self._loop_rc_handle(rc)
        return rc

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        sock = self._sock
        if self.sink is None or self._in_packet["command"] or not isinstance(sock, _ReadBuffer):
            return super()._packet_read()
        buf, pos = sock.buf, sock.pos
        n = len(buf)
        if pos + 2 > n or buf[pos] & 0xF6 != 0x30 and buf[pos] & 0xF6 != 0x32:
            return super()._packet_read()  # not a QoS 0/1 PUBLISH, or nothing buffered
        cmd = buf[pos]
        i, length, shift = pos + 1, 0, 0
        while True:  # the remaining length: 1 to 4 bytes
            if i >= n or shift > 21:
                return super()._packet_read()
            b = buf[i]
            length |= (b & 127) << shift
            shift += 7
            i += 1
            if not b & 128:
                break
        end = i + length
        if end > n or length < 3:
            return super()._packet_read()
        qos1 = cmd & 0x02
        t = i + 2 + (buf[i] << 8 | buf[i + 1])
        p = t + 2 if qos1 else t
        v5 = self._protocol == mqtt.MQTTv5
        if p + v5 > end or (qos1 and not self._manual_ack) or (v5 and buf[p]):
            return super()._packet_read()  # malformed, to be acked by paho, or with properties
        mid = buf[t] << 8 | buf[t + 1] if qos1 else 0
        p += v5
        sock.pos = end
        m = _new_message(_MESSAGE)  # as MQTTMessage(mid, topic), without its unused MessageInfo
        m.mid = mid
        m._topic = buf[i + 2 : t]
        m.qos = 1 if qos1 else 0
        m.dup = bool(cmd & 0x08)
        m.retain = bool(cmd & 0x01)
        m.payload = buf[p:end]
        m.timestamp = time.monotonic()
        m.state = mqtt.mqtt_ms_invalid
        m.info = None
        m.properties = None
        self._last_bytes_received = m.timestamp  # keepalive: paho's clock is time.monotonic
        self.sink(m)
        return mqtt.MQTT_ERR_SUCCESS

    def ack_many(self, mids: Iterable[int]) -> None:
        """Acknowledge QoS 1 messages (manual acks) in one packet write."""
        packet = b"".join([_PUBACK(0x40, 2, mid) for mid in mids])
        if packet:
            self._packet_queue(0x40, packet, 0, 0)


class _Decoder:
    """Takes the messages waiting in the inbox, in order, and decodes their readings batches
    while the main thread commits a group: the database's commit (and its checkpoint) runs
    without the interpreter lock, so this work costs the main thread nothing. It works only
    between ``start`` (just before a commit) and ``pause`` (once the commit is over, before
    the acks), at most ``max_rows`` readings ahead; the main thread touches the inbox and
    ``ahead`` only while it is paused. ``ahead`` holds the messages taken, in order, ``ready``
    what each one decoded to (by ``id`` of the message)."""

    def __init__(self, inbox: queue.SimpleQueue, max_rows: int) -> None:
        self.inbox = inbox
        self.max_rows = max_rows
        self.ahead: deque[mqtt.MQTTMessage] = deque()
        self.rows_ahead = 0
        self.ready: dict[int, tuple[mqtt.MQTTMessage, Message]] = {}
        self._go = threading.Event()
        self._busy = threading.Lock()  # held while taking and decoding
        self._paused = True
        self._closed = False
        self._thread: threading.Thread | None = None

    def run_in_background(self) -> None:
        """Start the decoding thread."""
        self._thread = threading.Thread(target=self._run, name="orrery-decode", daemon=True)
        self._thread.start()

    def start(self) -> None:
        """Decode what waits, from now until ``pause``."""
        self._paused = False
        self._go.set()

    def pause(self) -> None:
        """Stop decoding; returns once the thread no longer touches the inbox nor ``ahead``."""
        self._paused = True
        with self._busy:
            pass

    def close(self) -> None:
        """Stop the thread (what it took stays in ``ahead``)."""
        self._closed = self._paused = True
        self._go.set()
        if self._thread is not None:
            self._thread.join()

    def take(self, m: mqtt.MQTTMessage) -> Message:
        """The ``Message`` of ``m``: the one decoded ahead, else made now."""
        got = self.ready.pop(id(m), None)
        return got[1] if got is not None and got[0] is m else _message(m)

    def _run(self) -> None:
        while True:
            self._go.wait()
            self._go.clear()
            if self._closed:
                return
            with self._busy:
                while not self._paused and self.rows_ahead < self.max_rows:
                    try:
                        m = self.inbox.get_nowait()
                    except queue.Empty:
                        break
                    self.ahead.append(m)
                    self.rows_ahead += _rows(m)
                    # taken first: whatever happens here, the message goes into the next group
                    with contextlib.suppress(Exception):  # undecoded, the handler decodes it
                        self.ready[id(m)] = (m, _message(m, decode=True))
                    # let the main thread have the interpreter lock as soon as its commit is
                    # over: otherwise it waits for the switch interval (5 ms) to take it back
                    time.sleep(0)


def default_group(secret: bytes | None) -> str:
    """The shared-subscription group when none is given: derived from the fleet secret, so a
    board cannot join it and take a share of other boards' messages."""
    if secret is None:
        return "orrery-ingest"
    return "orrery-" + keys.mqtt_password(secret, "$share-group")[:16].replace("-", "x").replace(
        "_", "y"
    )


@dataclass
class BrokerAddress:
    """Where and how to connect."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None


class Service:
    """One ingest worker: MQTT in, ``Ingest`` in the middle, acks and commands out."""

    def __init__(
        self,
        ingest: Ingest,
        broker: BrokerAddress,
        *,
        client_id: str,
        group: str = "orrery-ingest",
        fleet: str = "+",
        flush_ms: int = 100,
        max_rows: int = 20000,
        reconcile_every_s: float = 2.0,
        stats_every_s: float = 10.0,
        connect_timeout_s: float = 0.0,
        orchestrator=None,
    ) -> None:
        self.ingest = ingest
        self.orchestrator = orchestrator
        self.broker = broker
        self.client_id = client_id
        self.group = group
        self.fleet = fleet
        self.flush_s = flush_ms / 1000
        self.max_rows = max_rows
        self.reconcile_every_s = reconcile_every_s
        self.stats_every_s = stats_every_s
        self.connect_timeout_s = connect_timeout_s
        self.inbox: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        self.stop_event = threading.Event()
        self.connected = threading.Event()  # set once the broker acknowledged the subscriptions
        self.resubscribed = threading.Event()  # open commands go out again at the next pass
        self.lost_broker = threading.Event()  # the link to the broker dropped since the last pass
        self.stored = 0
        self.down_since: float | None = time.monotonic()  # None while connected
        self.last_error = "no answer yet"  # why the last connection attempt failed
        self.failure: str | None = None  # why the service gave up, if it did
        self._committed: set[int] = set()  # indexes of the last group's messages stored so far
        self.decoder = _Decoder(self.inbox, max_rows)
        self.client = self._client()

    def _client(self) -> mqtt.Client:
        c = FastClient(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        c.sink = self.inbox.put
        if self.broker.username:
            c.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.ca_file:
            c.tls_set(ca_certs=self.broker.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self.last_error = f"the broker refused the connection: {reason}"
            jlog("broker_refused", logging.ERROR, reason=str(reason), broker=self.address)
            return
        self.down_since = None
        base = f"$share/{self.group}/orrery/{self.fleet}/+"
        client.subscribe([(base + "/up/#", 1), (base + "/down/cmd", 1)])
        jlog(
            "broker_connected",
            session_present=bool(flags.session_present),
            client_id=self.client_id,
        )

    def _on_subscribe(self, client, userdata, mid, reasons, properties) -> None:
        # connected means subscribed: a message published after it reaches this service
        bad = [str(r) for r in reasons if r.is_failure]
        if bad:
            jlog("broker_refused_subscription", logging.ERROR, reasons=bad)
            return
        self.resubscribed.set()
        self.connected.set()

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this from inside its ``except OSError``: the exception is the cause
        exc = sys.exc_info()[1]
        self.last_error = str(exc) if exc is not None else "connection failed"
        jlog("broker_connect_failed", logging.ERROR, broker=self.address, error=self.last_error)

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.connected.clear()
        self.lost_broker.set()
        if self.down_since is None:
            self.down_since = time.monotonic()
        if not self.stop_event.is_set():
            jlog("broker_disconnected", logging.WARNING, reason=str(reason))

    @property
    def address(self) -> str:
        """The broker as HOST:PORT."""
        return f"{self.broker.host}:{self.broker.port}"

    def _gave_up(self, now: float) -> bool:
        # True (and ``failure`` set) once the broker has been out of reach for too long
        down = self.down_since
        if not self.connect_timeout_s or down is None or now - down < self.connect_timeout_s:
            return False
        self.failure = (
            f"no connection to the broker {self.address} for {self.connect_timeout_s:g} s "
            f"(--connect-timeout): {self.last_error}"
        )
        jlog("broker_unreachable", logging.ERROR, broker=self.address, error=self.last_error)
        return True

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(msg)

    # --- running -----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (retrying in the background until the broker answers) and start the loop."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self.client.connect_async(
            self.broker.host, self.broker.port, keepalive=30, clean_start=False, properties=props
        )
        self.client.loop_start()

    def run(self) -> None:
        """Serve until ``stop()`` (or SIGTERM via ``install_signals``), then drain and disconnect."""
        self.start()
        jlog(
            "serve_started",
            client_id=self.client_id,
            group=self.group,
            broker=self.address,
        )
        next_reconcile = time.monotonic() + self.reconcile_every_s
        next_ota = 0.0
        next_stats = time.monotonic() + self.stats_every_s
        pending: list[mqtt.MQTTMessage] = []
        self.decoder.run_in_background()
        self.ingest.before_commit = self.decoder.start
        backoff = 0.5
        while True:
            stopping = self.stop_event.is_set()
            if not pending:
                pending = self._collect(drain_only=stopping)
            if pending:
                try:
                    self._store(pending)
                    pending = []
                    backoff = 0.5
                except Exception as exc:  # the database: keep what is left, unacked, and retry
                    pending = [m for i, m in enumerate(pending) if i not in self._committed]
                    jlog(
                        "store_failed",
                        logging.ERROR,
                        error=repr(exc)[:300],
                        messages=len(pending),
                        retry_s=backoff,
                    )
                    if stopping:
                        break
                    self.stop_event.wait(backoff)
                    backoff = min(backoff * 2, 30)
                    continue
            if stopping and self.inbox.empty() and not self.decoder.ahead:
                break
            now = time.monotonic()
            if not stopping and self._gave_up(now):
                self.stop()
                continue
            if now >= next_reconcile and not stopping:
                next_reconcile = now + self.reconcile_every_s
                self._reconcile()
            elif (
                not stopping
                and self.orchestrator is not None
                and self.orchestrator.downloading
                and now >= next_ota
            ):
                # a bundle download's next chunks go out once the acks of the last are in
                next_ota = now + min(OTA_EVERY_S, self.reconcile_every_s)
                self._tick_rollouts()
            if now >= next_stats:
                next_stats = now + self.stats_every_s
                jlog("stats", stored=self.stored, **dict(self.ingest.counters))
        self.ingest.before_commit = None
        self.decoder.close()
        self.client.disconnect()
        self.client.loop_stop()
        jlog("serve_stopped", stored=self.stored)

    def stop(self) -> None:
        """Ask the loop to finish: what is in hand is stored and acked first."""
        self.stop_event.set()

    def install_signals(self) -> None:
        """SIGTERM and SIGINT stop the service cleanly."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())

    def waiting(self) -> int:
        """Messages received and not yet taken into a group."""
        return self.inbox.qsize() + len(self.decoder.ahead)

    def _collect(self, drain_only: bool) -> list[mqtt.MQTTMessage]:
        out: list[mqtt.MQTTMessage] = []
        rows = 0
        dec = self.decoder
        dec.pause()
        while dec.ahead and rows < self.max_rows:  # the messages decoded ahead come first
            m = dec.ahead.popleft()
            out.append(m)
            n = _rows(m)
            rows += n
            dec.rows_ahead -= n
        deadline = time.monotonic() + self.flush_s
        while rows < self.max_rows:
            timeout = deadline - time.monotonic()
            try:
                if drain_only or timeout <= 0:
                    m = self.inbox.get_nowait()
                else:
                    m = self.inbox.get(timeout=timeout)
            except queue.Empty:
                break
            out.append(m)
            rows += _rows(m)
        return out

    def _store(self, msgs: list[mqtt.MQTTMessage]) -> None:
        """Store and ack ``msgs``; on an error, ``_committed`` holds the indexes of those that
        were stored and acked all the same."""
        self._committed = set()

        def committed(indexes: list[int], result) -> None:
            # committed: now the broker may forget them
            self.decoder.pause()
            self.client.ack_many([msgs[i].mid for i in indexes if msgs[i].qos == 1])
            self._committed.update(indexes)
            self.stored += len(indexes)
            if result.outgoing:
                self._publish(result.outgoing)

        try:
            self.ingest.store([self.decoder.take(m) for m in msgs], committed)
        finally:
            self.decoder.pause()

    def _reconcile(self) -> None:
        out: list[commands.Outgoing] = []
        try:
            out = self.ingest.reconcile(budget_s=0.2)
        except Exception as exc:
            jlog("reconcile_failed", logging.ERROR, error=repr(exc)[:300])
        if self.orchestrator is not None:
            try:
                if self.resubscribed.is_set() and self.lost_broker.is_set():
                    # back after losing the broker: soaks start over (Orchestrator docs)
                    self.lost_broker.clear()
                    self.orchestrator.broker_restarted()
                out += self.orchestrator.tick()
            except Exception as exc:
                jlog("rollouts_failed", logging.ERROR, error=repr(exc)[:300])
        try:
            more = self.ingest.queued_commands()
            if self.resubscribed.is_set():
                self.resubscribed.clear()
                again = self.ingest.open_commands()
                if again:
                    jlog("commands_republished", count=len(again), reason="subscribed again")
                more += again
            seen = {x.command_id for x in out}
            for o in more:
                if o.command_id not in seen:
                    seen.add(o.command_id)
                    out.append(o)
        except Exception as exc:
            jlog("dispatch_failed", logging.ERROR, error=repr(exc)[:300])
        if out:
            self._publish(out)

    def _tick_rollouts(self) -> None:
        # the orchestrator alone, between two reconciles (bundle downloads under way)
        assert self.orchestrator is not None
        try:
            out = self.orchestrator.tick()
        except Exception as exc:
            jlog("rollouts_failed", logging.ERROR, error=repr(exc)[:300])
            return
        if out:
            self._publish(out)

    def _publish(self, out: list[commands.Outgoing]) -> None:
        infos = [(o, self.client.publish(o.topic, o.payload, qos=1)) for o in out]
        sent = []
        deadline = time.monotonic() + 5  # one wait for the whole group, not 5 s per command
        for o, info in infos:
            try:
                info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):  # not connected: it stays queued for later
                continue
            if info.is_published():
                sent.append(o.command_id)
        try:
            self.ingest.mark_sent(sent)
        except Exception as exc:
            jlog("mark_sent_failed", logging.ERROR, error=repr(exc)[:300])
        if sent:
            jlog("commands_sent", count=len(sent), ids=sent[:10])


_READINGS_TOPIC = "/" + codec.READINGS


def _rows(m: mqtt.MQTTMessage) -> int:
    # a readings batch counts its readings (9 bytes each); any other message one (the broker's
    # RECEIVE_MAXIMUM bounds the group's bytes): a wave's acks and the commands they answer,
    # 11 KB each, make a group of hundreds, not of a few dozen
    return max(1, len(m.payload) // 9) if m._topic.endswith(_READINGS) else 1


def _message(m: mqtt.MQTTMessage, decode: bool = False) -> Message:
    try:
        topic = m.topic
    except UnicodeDecodeError:  # the broker should refuse such a topic; it is dead-lettered
        topic = "(a topic that is not UTF-8)"
    msg = Message(topic, m.payload, bool(m.retain))
    if decode and topic.endswith(_READINGS_TOPIC):
        msg.batch = codec.decode_batch(m.payload)
    return msg
