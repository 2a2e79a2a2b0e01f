"""A firmware node on CPython against a real Mosquitto, and the companion's side of the wire as
a plain paho client that signs commands: what the node, ingest and fleet tests drive.

Boards run the real firmware (``firmware.node``) with the simulation HAL on a virtual clock,
stepped cooperatively (``step_main`` then ``step_link``).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud.orrery.sim import workflows
from cloud.orrery.sim.hal import SimHal, VirtualClock
from cloud.orrery.sim.paho_link import PahoLink
from firmware.node import Node
from shared.wire import codec
from shared.workflow import compiler

REPO = Path(__file__).resolve().parents[2]
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
            batch, err = codec.decode_batch(payload)
            assert err is None, err
            for rec in batch.records:
                out[rec[0]] = (batch.boot_id, batch.historical) + rec[1:]
        return out

    def acks(self) -> list[dict]:
        return [codec.decode_ack(p)[0] for p in self.of("up/acks")]

    def send(self, device: str, envelope: bytes) -> None:
        self.c.publish(codec.topic(self.fleet, device, codec.CMD), envelope, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def sign(device: str, cmd_id: str, kind: str, args: dict, now_s: int, ttl: int = 3600) -> bytes:
    return codec.sign_command(bytes.fromhex(KEY), cmd_id, device, kind, args, now_s, now_s + ttl)


def install_args(name: str, health_s: int = 5) -> dict:
    c = compiler.compile((WF / name).read_bytes())
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


def wait_for(pred, board: Board | None = None, seconds: float = 10.0) -> None:
    """Wait (real time) for ``pred``, stepping ``board`` meanwhile so it keeps working."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return
        if board is not None:
            board.run(100)
        time.sleep(0.02)
    raise AssertionError("condition not reached")
