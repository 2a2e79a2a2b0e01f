"""The node on CPython against a real Mosquitto: offline, restarts, commands, installs.

Boards run the real firmware (``firmware.node``) with the simulation HAL on a virtual clock,
stepped cooperatively (``step_main`` then ``step_link``), except the stalled-link test, which
runs the real two-thread design on real time.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud.orrery.sim import workflows
from cloud.orrery.sim.hal import SimHal, VirtualClock
from cloud.orrery.sim.paho_link import PahoLink
from firmware.node import Node
from shared import codec as P
from shared import workflow

REPO = Path(__file__).resolve().parent.parent
PROFILE = json.loads((REPO / "hw" / "boards" / "esp32-devkitc.json").read_text())
WF = workflows.DIR
KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
T0 = 1_790_000_000_000  # virtual wall clock, unix ms


class Cloud:
    """The companion's side of the wire, as a plain paho client."""

    def __init__(self, port: int, fleet: str = "f1") -> None:
        self.fleet = fleet
        self.msgs: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        # a persistent session, as the companion has: nothing is lost while it reconnects
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"cloud-{time.monotonic_ns()}",
            clean_session=False,
        )
        self.c.reconnect_delay_set(min_delay=1, max_delay=2)
        self.c.on_message = self._on
        # subscribe on every (re)connect: the broker may restart under the test
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(f"orrery/{fleet}/+/up/#", qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        time.sleep(0.2)

    def _on(self, client, userdata, msg) -> None:
        with self.lock:
            self.msgs.append((msg.topic, msg.payload))

    def of(self, kind: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.msgs if t.endswith("/" + kind)]

    def readings(self) -> dict[int, tuple]:
        out: dict[int, tuple] = {}
        for payload in self.of("up/readings"):
            batch, err = P.decode_batch(payload)
            assert err is None, err
            for rec in batch.records:
                out[rec[0]] = (batch.boot_id, batch.historical) + rec[1:]
        return out

    def acks(self) -> list[dict]:
        return [P.decode_ack(p)[0] for p in self.of("up/acks")]

    def send(self, device: str, envelope: bytes) -> None:
        self.c.publish(P.topic(self.fleet, device, P.CMD), envelope, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def sign(device: str, cmd_id: str, kind: str, args: dict, now_s: int, ttl: int = 3600) -> bytes:
    return P.sign_command(bytes.fromhex(KEY), cmd_id, device, kind, args, now_s, now_s + ttl)


def install_args(name: str, health_s: int = 5) -> dict:
    c = workflow.compile((WF / name).read_bytes())
    return {"blob": base64.b64encode(c.blob).decode(), "sha256": c.hash, "health_s": health_s}


class Board:
    """One virtual board: the firmware node, the simulation HAL and a virtual clock."""

    def __init__(
        self,
        root: Path,
        port: int,
        device: str = "dev1",
        seed: int = 1,
        timeout_ms: int = 2000,
        key: str = KEY,
        clock: VirtualClock | None = None,
        fleet: str = "f1",
    ):
        self.clock = clock or VirtualClock(ticks=5, unix_ms=T0)
        self.hal = SimHal(PROFILE, seed, self.clock.ticks_ms, dropout_ppm=0, spike_ppm=0)
        self.device = device
        self.cfg = {
            "device_id": device,
            "fleet": fleet,
            "broker": {"host": "127.0.0.1", "port": port, "tls": False},
            "hmac_key": key,
            "board": "esp32-devkitc",
            "health_window_s": 5,
        }
        self.resets = 0
        self.link = PahoLink(device, "127.0.0.1", port, timeout_ms=timeout_ms)
        self.node = Node(
            self.cfg,
            self.hal,
            str(root / device),
            self.link,
            self.clock.ticks_ms,
            wall_ms=self.clock.unix_ms,
            reset=self._reset,
        )
        self.link.will = self.node.will()
        self.node.wf.boot()

    def _reset(self) -> None:
        self.resets += 1

    def now_s(self) -> int:
        return self.clock.unix_ms() // 1000

    def run(self, ms: int, step: int = 100) -> None:
        """Advance virtual time, stepping the main loop and the link as the board would."""
        for _ in range(ms // step):
            self.clock.advance(step)
            self.node.step_main()
            self.node.step_link()

    def drain(self, cloud: Cloud, seconds: float = 10.0) -> None:
        """Keep stepping (real time) until the backlog is delivered."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.run(100)
            if self.node.store.backlog() == 0 and not self.node.outbox:
                time.sleep(0.2)
                return
        raise AssertionError(f"backlog {self.node.store.backlog()} not drained")

    def close(self) -> None:
        self.link.close()


def _wait(pred, board: Board | None = None, seconds: float = 10.0) -> None:
    """Wait (real time) for ``pred``, stepping ``board`` meanwhile so it keeps working."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return
        if board is not None:
            board.run(100)
        time.sleep(0.02)
    raise AssertionError("condition not reached")


@pytest.fixture
def cloud(own_broker):
    c = Cloud(own_broker.port)
    yield c
    c.close()


def _install(board: Board, cloud: Cloud, name: str, cmd_id: str, health_s: int = 5) -> None:
    cloud.send(
        board.device,
        sign(board.device, cmd_id, "install_workflow", install_args(name, health_s), board.now_s()),
    )
    _wait(
        lambda: any(a["id"] == cmd_id and a["code"] == P.IN_PROGRESS for a in cloud.acks()), board
    )
    board.run(health_s * 1000 + 1000)
    _wait(lambda: any(a["id"] == cmd_id and a["code"] == P.OK for a in cloud.acks()), board)


def test_readings_survive_broker_restart_exactly(tmp_path, own_broker, cloud):
    b = Board(tmp_path, own_broker.port)
    b.run(1000)
    _install(b, cloud, "greenhouse_v1.json", "i1")
    b.run(30_000)
    own_broker.restart()
    b.run(30_000)
    b.drain(cloud)
    last = b.node.store.last_seq
    _wait(lambda: len(cloud.readings()) >= last)  # the companion may still be reconnecting
    got = cloud.readings()
    assert last > 50
    assert sorted(got) == list(range(1, last + 1)), "a reading was lost or invented"
    assert b.resets == 0


def test_broker_down_for_hours_of_virtual_time(tmp_path, own_broker, cloud):
    b = Board(tmp_path, own_broker.port, timeout_ms=500)
    b.run(1000)
    _install(b, cloud, "greenhouse_v1.json", "i1")
    b.drain(cloud)
    before = b.node.store.last_seq
    own_broker.stop()
    b.run(3 * 3600 * 1000, step=1000)  # three hours offline
    offline = b.node.store.last_seq - before
    # greenhouse v1 slows sampling to every 4 s while the link is down (its own rule)
    assert offline >= 3 * 3600 / 4 * 0.95, offline
    assert b.node.store.backlog() == offline
    assert b.resets == 0, "the board must never reboot because the cloud is away"
    own_broker.start()
    b.drain(cloud, seconds=60)
    _wait(lambda: len(cloud.readings()) >= b.node.store.last_seq, seconds=30)
    got = cloud.readings()
    assert sorted(got) == list(range(1, b.node.store.last_seq + 1))
    backlog = [got[s] for s in range(before + 1, before + offline - 100)]
    assert all(r[1] for r in backlog), "replayed backlog must be marked historical"
    states = [P.decode_state(p)[0] for p in cloud.of("up/state")]
    assert any(s and (s.get("backlog") or 0) >= offline - 200 for s in states), (
        "state reports the backlog"
    )


def test_signed_unsigned_expired_replayed_tampered_commands(tmp_path, own_broker, cloud):
    b = Board(tmp_path, own_broker.port)
    b.run(1000)
    _install(b, cloud, "greenhouse_v1.json", "i1")
    now = b.now_s()
    good = sign("dev1", "c-ok", "run_command", {"name": "manual"}, now)
    env = json.loads(good)
    unsigned = json.dumps({"v": 1, "b": env["b"]}).encode()
    tampered = json.dumps(
        {"v": 1, "b": env["b"].replace("manual", "force_cool"), "s": env["s"]}
    ).encode()
    expired = sign("dev1", "c-old", "run_command", {"name": "auto"}, now - 7200, ttl=60)
    wrong_key = P.sign_command(
        b"k" * 32, "c-key", "dev1", "run_command", {"name": "auto"}, now, now + 60
    )
    for e in (good, unsigned, tampered, expired, wrong_key):
        cloud.send("dev1", e)
        b.run(500)
    cloud.send("dev1", good)  # a QoS 1 redelivery
    b.run(1000)
    replay = json.loads(sign("dev1", "c-ok", "run_command", {"name": "auto"}, now))
    cloud.send("dev1", json.dumps(replay).encode())
    b.run(1000)
    _wait(lambda: len([a for a in cloud.acks() if a["id"] != "i1"]) >= 7, b)
    codes = [(a["id"], a["code"]) for a in cloud.acks() if a["id"] != "i1"]
    assert codes[0] == ("c-ok", P.OK)
    assert codes[1][1] == P.BAD_SIGNATURE and codes[2][1] == P.BAD_SIGNATURE
    assert codes[3] == ("c-old", P.EXPIRED)
    assert codes[4][1] == P.BAD_SIGNATURE
    assert codes[5] == ("c-ok", P.OK), "a duplicate gets the same result again"
    assert codes[6][1] == P.REPLAYED
    assert b.node.wf.ex.state_name() == "manual", "only the genuine command ran, once"


def test_workflow_install_migrates_running_state(tmp_path, own_broker, cloud):
    b = Board(tmp_path, own_broker.port)
    b.hal.configure("temp", base=3500, amplitude=0, noise=0)  # warm: cooling stays on
    b.run(1000)
    _install(b, cloud, "greenhouse_v1.json", "i1")
    cloud.send("dev1", sign("dev1", "c1", "run_command", {"name": "force_cool"}, b.now_s()))
    b.run(1000)
    assert b.node.wf.ex.state_name() == "cool"
    cycles = b.node.wf.ex.vars[0]
    _install(b, cloud, "greenhouse.json", "i2")
    assert b.node.wf.prog.version == 2
    assert b.node.wf.ex.state_name() == "cooling", "v1's 'cool' maps to v2's 'cooling'"
    assert b.node.wf.ex.vars[0] == cycles
    acks = [(a["id"], a["code"]) for a in cloud.acks()]
    assert ("i2", P.IN_PROGRESS) in acks and acks.index(("i2", P.IN_PROGRESS)) < acks.index(
        ("i2", P.OK)
    )


def test_failing_install_rolls_back(tmp_path, own_broker, cloud):
    b = Board(tmp_path, own_broker.port)
    b.run(1000)
    _install(b, cloud, "greenhouse_v1.json", "i1")
    b.hal.configure("temp", dropout_ppm=1_000_000)  # v2's sensor does not work on this board
    b.hal.configure("humidity", dropout_ppm=1_000_000)
    cloud.send(
        "dev1",
        sign("dev1", "i2", "install_workflow", install_args("greenhouse.json", 5), b.now_s()),
    )
    _wait(lambda: any(a["id"] == "i2" and a["code"] == P.FAILED for a in cloud.acks()), b)
    assert b.node.wf.prog.version == 1, "rolled back to the previous version"
    assert b.resets == 0


class BlackHole:
    """A TCP listener that accepts and never answers: a broker stuck mid-handshake."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_stalled_link_does_not_stall_sampling(tmp_path):
    hole = BlackHole()
    try:
        profile_wf = {
            "name": "fast",
            "version": 1,
            "inputs": [{"name": "a", "channel": "adc0", "period_ms": 50, "filters": []}],
            "outputs": [],
            "initial": "run",
            "states": [
                {"name": "run", "on": [{"when": {"command": "x"}, "target": "hold"}]},
                {"name": "hold", "on": [{"when": {"command": "y"}, "target": "run"}]},
            ],
        }
        c = workflow.compile(profile_wf)
        root = tmp_path / "dev1"
        (root / "wf").mkdir(parents=True)
        (root / "wf" / "current.bin").write_bytes(c.blob)
        from firmware.clock import ticks_ms

        hal = SimHal(PROFILE, 3, ticks_ms, dropout_ppm=0)
        link = PahoLink("dev1", "127.0.0.1", hole.port, timeout_ms=5000)
        cfg = {
            "device_id": "dev1",
            "fleet": "f1",
            "hmac_key": KEY,
            "broker": {"host": "127.0.0.1", "port": hole.port, "tls": False},
        }
        node = Node(cfg, hal, str(root), link, ticks_ms)
        node.start()  # the link thread now blocks for 5 s in a CONNECT that never gets a CONNACK
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            node.step_main()
            time.sleep(node.next_wait_ms() / 1000)
        elapsed = time.monotonic() - t0
        node.stop()
        taken = node.store.last_seq
        expected = elapsed * 1000 / 50
        assert taken >= expected * 0.9, (
            f"{taken} readings in {elapsed:.1f}s, expected ~{expected:.0f}"
        )
        assert not link.connected
    finally:
        hole.close()


def _send_bundle(b: Board, cloud: Cloud, files: list, cmd_id: str, version: str) -> None:
    import hashlib

    from shared import bundle as B

    blob = B.pack(files)
    size = 300
    chunks = [blob[i : i + size] for i in range(0, len(blob), size)]
    now = b.now_s()
    args = {
        "version": version,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
        "chunks": len(chunks),
    }
    cloud.send(b.device, sign(b.device, cmd_id, "install_bundle", args, now))
    for i, c in enumerate(chunks):
        chunk = {"version": version, "index": i, "data": base64.b64encode(c).decode()}
        cloud.send(b.device, sign(b.device, f"{cmd_id}-{i}", "bundle_chunk", chunk, now))
    _wait(lambda: b.resets == 1, b)


def _boot_slot(root: Path) -> tuple[str, int]:
    """What the board's /main.py does at boot: choose the slot, start the app from it."""
    import subprocess
    import sys

    from firmware.launcher import select_slot

    slot = select_slot(str(root))
    code = f"import sys; sys.path.insert(0, {slot!r}); import firmware.main"
    return slot, subprocess.run(
        [sys.executable, "-c", code], capture_output=True, cwd="/"
    ).returncode


def test_failing_app_bundle_rolls_back(tmp_path, own_broker, cloud):
    b = Board(tmp_path, own_broker.port)
    b.node.confirm_after_s = 2
    root = tmp_path / "dev1"
    (root / "app_a" / "firmware").mkdir(parents=True)
    (root / "app_a" / "firmware" / "__init__.py").write_text("")
    (root / "app_a" / "firmware" / "main.py").write_text("OK = True\n")
    broken = [
        ("firmware/__init__.py", b""),
        ("firmware/main.py", b"raise RuntimeError('broken build')\n"),
    ]
    b.run(3000)
    _send_bundle(b, cloud, broken, "bundle-2", "2.0.0")
    assert json.loads((root / "app.json").read_text())["trial"] == "b"
    b.close()
    slot, rc = _boot_slot(root)  # the trial boot crashes before it reaches the broker
    assert slot.endswith("app_b") and rc != 0
    slot, rc = _boot_slot(root)  # next boot: back to the previous slot, which works
    assert slot.endswith("app_a") and rc == 0
    again = Board(tmp_path, own_broker.port)  # the old app, booted again, reports the failure
    again.node.confirm_after_s = 2
    _wait(lambda: any(a["id"] == "bundle-2" and a["code"] == P.FAILED for a in cloud.acks()), again)
    assert json.loads((root / "app.json").read_text())["active"] == "a"


def test_good_app_bundle_is_confirmed(tmp_path, own_broker, cloud):
    b = Board(tmp_path, own_broker.port)
    root = tmp_path / "dev1"
    good = [("firmware/__init__.py", b""), ("firmware/main.py", b"OK = True\n")]
    b.run(3000)
    _send_bundle(b, cloud, good, "bundle-3", "3.0.0")
    b.close()
    slot, rc = _boot_slot(root)
    assert slot.endswith("app_b") and rc == 0
    again = Board(tmp_path, own_broker.port)  # the new app reaches the broker and stays up
    again.node.confirm_after_s = 2
    _wait(lambda: any(a["id"] == "bundle-3" and a["code"] == P.OK for a in cloud.acks()), again)
    app = json.loads((root / "app.json").read_text())
    assert app["active"] == "b" and not app["trial"]
    assert (root / "app_b" / "firmware" / "main.py").read_bytes() == b"OK = True\n"
