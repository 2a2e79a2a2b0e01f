"""`orrery broker config` against a real Mosquitto started from the files it writes.

What the broker must guarantee: a board publishes only under its own ``up/`` topics and reads
only its own commands; wrong or missing credentials are refused; the companion reads and writes
the whole fleet (shared subscriptions, commands to any board, retained states). Plus TLS, a
reload that admits a new device, and the listener split that stops client-id takeover.

Waits are on events (CONNACK, PUBACK, SUBACK, a message) with timeouts. "Nothing arrived" is
shown with ordering instead of sleeping: Mosquitto delivers to a client in the order it handled
the publishes, so once a later marker message has arrived, an earlier forbidden one would have
arrived before it.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import typer
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from cloud.orrery.cli import broker as broker_cli
from cloud.orrery.fleet import broker as mosquitto_config
from cloud.orrery.fleet import keys
from tests.support.broker import free_port, mosquitto_binary

FLEET = "f1"
SECRET = b"test-fleet-secret-0123456789abcdef"
COMPANION = mosquitto_config.COMPANION_USER
NOT_AUTHORIZED = 135
UP_KINDS = ("state", "readings", "events", "acks", "loss", "pull")  # shared/wire/message.py
TIMEOUT = 5.0


def password(user: str) -> str:
    return keys.mqtt_password(SECRET, user)


def topic(device: str, kind: str) -> str:
    return f"orrery/{FLEET}/{device}/{kind}"


# --- a broker from the generated files -------------------------------------------------------


class Running:
    """A mosquitto process started from a generated config; its log is its stderr."""

    def __init__(self, paths: dict[str, Path], ports: list[int]) -> None:
        self.paths = paths
        self.ports = ports
        self.log_path = paths["config"].parent / "mosquitto.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-v", "-c", str(paths["config"])],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited {self.proc.returncode}:\n{self.log()}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"mosquitto not listening on {port}:\n{self.log()}"
                        ) from None
                    time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory Mosquitto can reach after dropping root (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="orrery-broker-config-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def start(workdir: Path) -> Iterator:
    """start(devices, **write_config options) -> Running, stopped at teardown."""
    running: list[Running] = []

    def _start(devices: list[str], **options) -> Running:
        options.setdefault("port", free_port())
        options.setdefault("bind", "127.0.0.1")
        options.setdefault("owner", mosquitto_config.default_owner())
        paths = mosquitto_config.write_config(
            workdir / "mosquitto", FLEET, devices, SECRET, **options
        )
        ports = [options["port"]] + (
            [options["companion_port"]] if "companion_port" in options else []
        )
        r = Running(paths, ports)
        running.append(r)
        return r

    yield _start
    for r in running:
        r.stop()


# --- MQTT clients ------------------------------------------------------------------------------


class Peer:
    """A paho client that waits for what it asked for: CONNACK, PUBACK, SUBACK, messages."""

    def __init__(
        self,
        port: int,
        user: str | None,
        pw: str | None,
        client_id: str,
        *,
        protocol: int = mqtt.MQTTv5,
        clean: bool = True,
        will: str | None = None,
        ca: Path | None = None,
        host: str = "127.0.0.1",
        threaded: bool = True,
    ) -> None:
        kwargs = {} if protocol == mqtt.MQTTv5 else {"clean_session": clean}
        self.c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            reconnect_on_failure=False,  # a client the broker closed stays closed
            **kwargs,
        )
        if user is not None:
            self.c.username_pw_set(user, pw)
        if will:
            self.c.will_set(will, b'{"v":1,"online":false,"boot":1}', qos=1, retain=True)
        if ca:
            self.c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.acks: dict[int, object] = {}
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.reason: ReasonCode | None = None
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, msg: self.inbox.put(msg)
        self.c.on_publish = lambda c, u, mid, rc, props: self._ack(mid, rc)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self._ack(mid, rcs)
        self.c.connect(host, port, **({"clean_start": clean} if protocol == mqtt.MQTTv5 else {}))
        self.threaded = threaded
        if threaded:
            self.c.loop_start()
        else:  # driven by hand until CONNACK, then left alone (see drop)
            deadline = time.monotonic() + TIMEOUT
            while not self.connected.is_set() and time.monotonic() < deadline:
                self.c.loop(0.05)
        assert self.connected.wait(TIMEOUT), f"no CONNACK for {client_id}"

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if self.reason is None:
            self.reason = reason
            self.session_present = flags.session_present
        self.connected.set()

    def _ack(self, mid: int, value: object) -> None:
        with self.cond:
            self.acks[mid] = value
            self.cond.notify_all()

    def _wait_ack(self, mid: int) -> object:
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.acks, TIMEOUT), f"no ack for mid {mid}"
            return self.acks[mid]

    def publish(self, topic_: str, payload: bytes, retain: bool = False) -> ReasonCode:
        """Publish with QoS 1; the PUBACK's reason code."""
        info = self.c.publish(topic_, payload, qos=1, retain=retain)
        return self._wait_ack(info.mid)  # type: ignore[return-value]

    def subscribe(self, *filters: str) -> list[ReasonCode]:
        """Subscribe with QoS 1; the SUBACK's reason codes."""
        _, mid = self.c.subscribe([(f, 1) for f in filters])
        return self._wait_ack(mid)  # type: ignore[return-value]

    def next(self) -> mqtt.MQTTMessage:
        try:
            return self.inbox.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError("no message arrived") from None

    def until(self, topic_: str, payload: bytes) -> list[mqtt.MQTTMessage]:
        """Every message up to and including (topic_, payload)."""
        got = []
        while True:
            msg = self.next()
            got.append(msg)
            if (msg.topic, msg.payload) == (topic_, payload):
                return got

    def close(self) -> None:
        self.c.disconnect()  # first: it wakes the network thread, which then ends at once
        self.c.loop_stop()

    def drop(self) -> None:
        """Vanish without DISCONNECT, as a board that lost power: the broker sends its will.
        Only for a client made with ``threaded=False`` (no thread to reconnect it)."""
        assert not self.threaded
        sock = self.c.socket()
        if sock:
            sock.close()


@pytest.fixture
def peers() -> Iterator:
    made: list[Peer] = []

    def _peer(*args, **kwargs) -> Peer:
        p = Peer(*args, **kwargs)
        made.append(p)
        return p

    yield _peer
    for p in made:
        p.close()


def accepted(reason: ReasonCode) -> bool:
    """A PUBACK that took the message: 0 Success or 16 No matching subscribers."""
    return not reason.is_failure


def refused(reason: ReasonCode | None) -> bool:
    # Mosquitto 2.0 answers a bad login with 135 Not authorized; 134 Bad user name or password
    # would do as well
    return reason is not None and reason.is_failure and reason.value in (134, NOT_AUTHORIZED)


# --- the password file format --------------------------------------------------------------------


def test_password_hash_is_what_mosquitto_passwd_writes(workdir: Path) -> None:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    pwfile = workdir / "pw"
    subprocess.run([tool, "-c", "-b", str(pwfile), "someone", "s3cret!"], check=True)
    user, line = pwfile.read_text().strip().split(":", 1)
    _, alg, rounds, salt, _ = line.split("$")
    assert (user, alg) == ("someone", "7")
    assert mosquitto_config.password_hash("s3cret!", base64.b64decode(salt), int(rounds)) == line


def test_config_files_modes_and_reproducibility(workdir: Path) -> None:
    out = workdir / "conf"
    paths = mosquitto_config.write_config(out, FLEET, ["A", "B"], SECRET, owner=None)
    first = {name: p.read_bytes() for name, p in paths.items() if p.is_file()}
    assert mosquitto_config.write_config(out, FLEET, ["A", "B"], SECRET, owner=None) == paths
    assert {name: p.read_bytes() for name, p in paths.items() if p.is_file()} == first
    assert paths["password_file"].stat().st_mode & 0o777 == 0o640
    assert paths["acl_file"].stat().st_mode & 0o777 == 0o640
    assert paths["companion_password_file"].stat().st_mode & 0o777 == 0o600
    assert paths["companion_password_file"].read_text().strip() == password(COMPANION)
    users = [line.split(":")[0] for line in first["password_file"].decode().splitlines()]
    assert users == ["A", "B", COMPANION]
    conf = first["config"].decode()
    for line in ("allow_anonymous false", "persistence true", "max_queued_messages 0"):
        assert line in conf.splitlines()
    acl = first["acl_file"].decode().splitlines()
    assert f"pattern write orrery/{FLEET}/%u/up/#" in acl
    assert f"pattern read orrery/{FLEET}/%u/down/#" in acl


# --- boards and the companion on a real broker ---------------------------------------------------


def test_board_is_confined_to_its_own_topics(start, peers) -> None:
    broker = start(["A", "B"])
    port = broker.ports[0]
    comp = peers(port, COMPANION, password(COMPANION), "ingest-1")
    assert not comp.reason.is_failure
    # file ownership and modes as Mosquitto wants them (2.0.17+ warns about anything else)
    assert "Warning" not in broker.log()
    # the companion's shared subscriptions, as `orrery serve` makes them (every fleet): Mosquitto
    # grants subscriptions and checks each message against the ACL by its real topic
    shared = ["$share/orrery-ingest/orrery/+/+/up/#", "$share/orrery-ingest/orrery/+/+/down/cmd"]
    assert [rc.value for rc in comp.subscribe(*shared)] == [1, 1]

    a = peers(port, "A", password("A"), "A", will=topic("A", "up/state"))
    b = peers(port, "B", password("B"), "B")
    assert not a.reason.is_failure and not b.reason.is_failure

    # A publishes under each of its own up/ topics: delivered
    ups = [topic("A", f"up/{kind}") for kind in UP_KINDS]
    for t in ups:
        assert a.publish(t, b"a-own").value == 0
    assert [m.topic for m in comp.until(ups[-1], b"a-own")] == ups

    # A publishes as B: PUBACK 135, and the companion never sees it (its own marker, published
    # after, is the next thing it receives). Mosquitto 2.0 also closes A's connection then.
    forger = peers(port, "A", password("A"), "A-forger")
    assert forger.publish(topic("B", "up/readings"), b"forged").value == NOT_AUTHORIZED
    assert comp.publish(topic("B", "up/readings"), b"marker").value == 0
    assert [(m.topic, m.payload) for m in comp.until(topic("B", "up/readings"), b"marker")] == [
        (topic("B", "up/readings"), b"marker")
    ]

    # A subscribes to B's data and commands every way it can: granted (Mosquitto's ACL file
    # does not check subscriptions) but nothing of B's is ever delivered to it
    a.subscribe(
        topic("B", "down/cmd"),
        f"orrery/{FLEET}/+/down/cmd",
        "#",
        f"$share/x/orrery/{FLEET}/B/down/#",
        topic("B", "up/#"),
    )
    assert [rc.value for rc in a.subscribe(topic("A", "down/cmd"))] == [1]
    assert [rc.value for rc in b.subscribe(topic("B", "down/cmd"))] == [1]
    assert b.publish(topic("B", "up/readings"), b"b-data").value == 0
    # the companion commands both boards (and sees the commands through its group); each board
    # gets its own and A nothing of B's
    assert comp.publish(topic("B", "down/cmd"), b"cmd-b").value == 0
    assert comp.publish(topic("A", "down/cmd"), b"cmd-a").value == 0
    assert comp.publish(topic("A", "down/cmd"), b"end").value == 0
    got_b = b.next()
    assert (got_b.topic, got_b.payload) == (topic("B", "down/cmd"), b"cmd-b")
    seen_by_a = a.until(topic("A", "down/cmd"), b"end")
    assert {m.topic for m in seen_by_a} == {topic("A", "down/cmd")}
    assert {m.payload for m in seen_by_a} == {b"cmd-a", b"end"}
    # a board may not write commands, not even its own
    assert a.publish(topic("A", "down/cmd"), b"self-cmd").value == NOT_AUTHORIZED


def test_bad_logins_are_refused(start, peers) -> None:
    port = start(["A", "B"]).ports[0]
    assert refused(peers(port, "A", "wrong", "A").reason)
    assert refused(peers(port, "A", password("B"), "A").reason)  # another board's password
    assert refused(peers(port, None, None, "anon").reason)  # anonymous
    assert refused(peers(port, "C", password("C"), "C").reason)  # not in the fleet
    assert refused(peers(port, COMPANION, password("A"), "x").reason)
    assert not peers(port, "A", password("A"), "A").reason.is_failure


def test_last_will_only_on_own_state(start, peers) -> None:
    port = start(["A", "B"]).ports[0]
    comp = peers(port, COMPANION, password(COMPANION), "orchestrator")
    comp.subscribe(f"orrery/{FLEET}/+/up/state")
    # Mosquitto accepts the connection but checks the will when it would publish it
    liar = peers(port, "A", password("A"), "A-liar", will=topic("B", "up/state"), threaded=False)
    assert not liar.reason.is_failure
    liar.drop()
    honest = peers(port, "A", password("A"), "A", will=topic("A", "up/state"), threaded=False)
    honest.drop()
    msg = comp.next()
    assert msg.topic == topic("A", "up/state")
    assert json.loads(msg.payload)["online"] is False


def test_companion_reads_and_clears_retained_states(start, peers) -> None:
    port = start(["A", "B"]).ports[0]
    for device in ("A", "B"):
        board = peers(port, device, password(device), device)
        state = f'{{"v":1,"online":true,"dev":"{device}"}}'.encode()
        assert accepted(board.publish(topic(device, "up/state"), state, retain=True))
    comp = peers(port, COMPANION, password(COMPANION), "orchestrator")
    comp.subscribe(f"orrery/{FLEET}/+/up/state")
    got = {comp.next().topic, comp.next().topic}
    assert got == {topic("A", "up/state"), topic("B", "up/state")}
    # clear A's retained state (an empty retained message)
    assert comp.publish(topic("A", "up/state"), b"", retain=True).value == 0
    fresh = peers(port, COMPANION, password(COMPANION), "orchestrator-2")
    fresh.subscribe(topic("A", "up/state"))  # nothing retained any more
    fresh.subscribe(topic("B", "up/state"))
    msg = fresh.next()
    assert (msg.topic, msg.retain) == (topic("B", "up/state"), True)


def test_companion_port_ties_board_client_ids_to_users(start, peers) -> None:
    port, cport = free_port(), free_port()
    start(["A", "B"], port=port, companion_port=cport)
    # two companion workers with their own client ids share the load on their own listener
    w1 = peers(cport, COMPANION, password(COMPANION), "ingest-1")
    w2 = peers(cport, COMPANION, password(COMPANION), "ingest-2")
    group = f"$share/ingest/orrery/{FLEET}/+/up/#"
    assert w1.subscribe(group)[0].value == w2.subscribe(group)[0].value == 1
    # B (MQTT 3.1.1 like umqtt, persistent session) goes offline with commands queued
    b = peers(port, "B", password("B"), "B", protocol=mqtt.MQTTv311, clean=False)
    b.subscribe(topic("B", "down/cmd"))
    b.close()
    for n in range(3):
        assert w1.publish(topic("B", "down/cmd"), f"cmd{n}".encode()).value == 0
    # A asks for B's client id: the broker makes it "A", so B's session is untouched
    thief = peers(port, "A", password("A"), "B", protocol=mqtt.MQTTv311, clean=False)
    assert not thief.reason.is_failure and not thief.session_present
    thief.close()
    b = peers(port, "B", password("B"), "B", protocol=mqtt.MQTTv311, clean=False)
    assert b.session_present
    assert [b.next().payload for _ in range(3)] == [b"cmd0", b"cmd1", b"cmd2"]
    # both workers are still connected
    for n in range(4):
        assert b.publish(topic("B", "up/readings"), f"r{n}".encode()).value == 0
    got = [w1.next().payload for _ in range(2)] + [w2.next().payload for _ in range(2)]
    assert sorted(got) == [b"r0", b"r1", b"r2", b"r3"]


def test_only_the_companion_logs_in_on_its_listener(start, peers) -> None:
    """A board's account must not reach the companion's listener: there it could take over a
    worker's persistent session (client ids are free on that listener) and the readings queued
    for the companion would go to the board, which may not read them."""
    port, cport = free_port(), free_port()
    start(["A", "ingest-1"], port=port, companion_port=cport)
    v311 = {"protocol": mqtt.MQTTv311, "clean": False}  # a persistent session, as serve keeps
    w = peers(cport, COMPANION, password(COMPANION), "ingest-1", **v311)
    assert not w.reason.is_failure
    group = f"$share/ingest/orrery/{FLEET}/+/up/#"
    assert w.subscribe(group)[0].value == 1
    w.close()  # offline: readings queue in its session
    a = peers(port, "A", password("A"), "A")
    for n in range(3):
        assert accepted(a.publish(topic("A", "up/readings"), f"r{n}".encode()))
    # board A, and a board named like the worker, try the companion's listener and client id
    for user in ("A", "ingest-1"):
        thief = peers(cport, user, password(user), "ingest-1", **v311)
        assert refused(thief.reason), (user, thief.reason)
    # the companion's account is not on the boards' listener either
    assert refused(peers(port, COMPANION, password(COMPANION), "x").reason)
    w = peers(cport, COMPANION, password(COMPANION), "ingest-1", **v311)
    assert w.session_present
    assert sorted(w.next().payload for _ in range(3)) == [b"r0", b"r1", b"r2"]


def test_reload_admits_a_new_device(start, peers) -> None:
    broker = start(["A", "B"])
    port = broker.ports[0]
    comp = peers(port, COMPANION, password(COMPANION), "ingest-1")
    comp.subscribe(f"orrery/{FLEET}/+/up/#")
    assert refused(peers(port, "C", password("C"), "C").reason)
    mosquitto_config.write_config(
        broker.paths["config"].parent,
        FLEET,
        ["A", "B", "C"],
        SECRET,
        port=port,
        bind="127.0.0.1",
        owner=mosquitto_config.default_owner(),
    )
    broker.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + TIMEOUT
    while refused((c := peers(port, "C", password("C"), "C")).reason):
        assert time.monotonic() < deadline, "C still refused after the reload"
        time.sleep(0.05)
    # the reload kept the companion's connection and subscription
    assert c.publish(topic("C", "up/readings"), b"c").value == 0
    assert (comp.next().topic, comp.reason.value) == (topic("C", "up/readings"), 0)


# --- TLS ---------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path, name: str = "ca") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server cert for localhost/127.0.0.1 signed by it (EC P-256)."""
    d.mkdir(exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt",
             "-days", "2", "-subj", f"/CN=Orrery test {name}", cwd=d)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=d)  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", f"{name}.crt", "-CAkey", f"{name}.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf",
             cwd=d)  # fmt: skip
    os.chmod(d / "server.key", 0o600)  # root-only when run as root: Mosquitto reads a copy
    return d / f"{name}.crt", d / "server.crt", d / "server.key"


def test_tls_listener(start, peers, workdir: Path) -> None:
    ca, cert, key = make_pki(workdir / "pki")
    other_ca, _, _ = make_pki(workdir / "other", "other")
    broker = start(["A", "B"], tls=mosquitto_config.TLSFiles(ca, cert, key))
    port = broker.ports[0]
    assert broker.paths["tls_keyfile"].stat().st_mode & 0o777 == 0o600
    comp = peers(port, COMPANION, password(COMPANION), "ingest-1", ca=ca, host="localhost")
    comp.subscribe(f"$share/ingest/orrery/{FLEET}/+/up/#")
    a = peers(port, "A", password("A"), "A", ca=ca, host="localhost")
    assert a.publish(topic("A", "up/readings"), b"over tls").value == 0
    assert comp.next().payload == b"over tls"
    assert a.publish(topic("B", "up/readings"), b"forged").value == NOT_AUTHORIZED
    # a client that trusts another CA refuses the broker
    with pytest.raises(ssl.SSLCertVerificationError):
        Peer(port, "A", password("A"), "A-2", ca=other_ca, host="localhost")
    # plain MQTT on the TLS port: the broker closes the connection without a CONNACK
    plain = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    plain.username_pw_set("A", password("A"))
    connacks: list[ReasonCode] = []
    plain.on_connect = lambda c, u, flags, reason, props: connacks.append(reason)
    plain.connect("127.0.0.1", port)
    deadline = time.monotonic() + TIMEOUT
    while plain.loop(0.05) == mqtt.MQTT_ERR_SUCCESS:
        assert time.monotonic() < deadline, "the TLS port kept a plain MQTT connection open"
    assert connacks == []


def test_tls_inputs_are_checked(workdir: Path) -> None:
    ca, cert, key = make_pki(workdir / "pki")
    other_ca, other_cert, other_key = make_pki(workdir / "other", "other")
    out = workdir / "conf"
    with pytest.raises(mosquitto_config.BrokerConfigError, match="not signed by"):
        mosquitto_config.write_config(
            out, FLEET, ["A"], SECRET, tls=mosquitto_config.TLSFiles(other_ca, cert, key)
        )
    with pytest.raises(mosquitto_config.BrokerConfigError, match="not a matching"):
        mosquitto_config.write_config(
            out, FLEET, ["A"], SECRET, tls=mosquitto_config.TLSFiles(ca, cert, other_key)
        )
    with pytest.raises(mosquitto_config.BrokerConfigError, match="--cafile .*no such file"):
        mosquitto_config.write_config(
            out, FLEET, ["A"], SECRET, tls=mosquitto_config.TLSFiles(workdir / "nope", cert, key)
        )
    assert not out.exists()  # nothing written


# --- the commands --------------------------------------------------------------------------------


@pytest.fixture
def cli() -> Iterator:
    app = typer.Typer()
    app.add_typer(broker_cli.app, name="broker")
    runner = CliRunner()

    def _run(*args: str, secret: str | None = SECRET.decode()):
        env = {"ORRERY_SECRET": secret or "", "ORRERY_SECRET_FILE": ""}
        return runner.invoke(app, ["broker", *args], env=env)

    yield _run


def test_secret_command(cli, workdir: Path) -> None:
    path = workdir / "fleet.secret"
    res = cli("secret", str(path), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"secret_file": str(path.resolve())}
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_bytes()
    assert keys.load_secret(path) == first.strip()
    res = cli("secret", str(path))
    assert res.exit_code == 1 and "already exists" in res.stderr
    assert path.read_bytes() == first
    assert cli("secret", str(path), "--force").exit_code == 0
    assert path.read_bytes() != first


def test_config_command(cli, workdir: Path) -> None:
    out = workdir / "conf"
    devices = workdir / "devices.txt"
    devices.write_text("# boards in the lab\nlab-1\n\nlab-2  # the spare\n")
    res = cli("config", str(out), "--fleet", FLEET, "--device", "A", "--devices-file",
              str(devices), "--port", "18830", "--owner", "", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    paths = json.loads(res.stdout)
    assert set(paths) >= {"config", "password_file", "acl_file", "companion_password_file"}
    users = [ln.split(":")[0] for ln in Path(paths["password_file"]).read_text().splitlines()]
    assert users == ["A", "lab-1", "lab-2", COMPANION]
    assert "listener 18830" in Path(paths["config"]).read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "a/b"], "device id 'a/b' is not a valid id"),
        (["--device", "A", "--device", "A"], "duplicate device ids: A"),
        ([], "no devices"),
        (["--device", "A", "--port", "70000"], "port 70000 is out of range"),
        (
            [
                "--device",
                "A",
                "--cafile",
                "/nonexistent/ca.crt",
                "--certfile",
                "x",
                "--keyfile",
                "y",
            ],
            "--cafile /nonexistent/ca.crt: no such file",
        ),  # fmt: skip
        (["--device", "A", "--cafile", "ca.crt"], "missing --certfile, --keyfile"),
        (["--device", COMPANION], "is the companion's user name"),
        (["--device", "A", "--devices-file", "/nonexistent"], "devices file /nonexistent"),
        (["--device", "A", "--companion-port", "1883"], "also the boards' port"),
    ],
)
def test_config_command_errors(cli, workdir: Path, args: list[str], message: str) -> None:
    out = workdir / "conf"
    res = cli("config", str(out), "--fleet", FLEET, *args)
    assert res.exit_code == 1
    assert message in " ".join(res.stderr.split()), res.stderr
    assert not out.exists()


def test_config_command_needs_a_secret(cli, workdir: Path) -> None:
    res = cli("config", str(workdir / "conf"), "--fleet", FLEET, "--device", "A", secret=None)
    assert res.exit_code == 1 and "no fleet secret" in res.stderr


def test_bad_devices_file_line_is_named(cli, workdir: Path) -> None:
    devices = workdir / "devices.txt"
    devices.write_text("ok-1\nnot ok\n")
    res = cli("config", str(workdir / "conf"), "--fleet", FLEET, "--devices-file", str(devices))
    assert res.exit_code == 1
    assert f"{devices}:2: device id 'not ok'" in " ".join(res.stderr.split())
