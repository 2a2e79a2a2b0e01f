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

import pytest

from cloud.orrery.sim.hal import SimHal
from cloud.orrery.sim.paho_link import PahoLink
from firmware.node import Node
from shared.wire import codec
from shared.workflow import compiler
from tests.support.boards import KEY, PROFILE, Board, Cloud, install_args, sign, wait_for


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
    wait_for(
        lambda: any(a["id"] == cmd_id and a["code"] == codec.IN_PROGRESS for a in cloud.acks()), board
    )
    board.run(health_s * 1000 + 1000)
    wait_for(lambda: any(a["id"] == cmd_id and a["code"] == codec.OK for a in cloud.acks()), board)


def test_readings_survive_broker_restart_exactly(tmp_path, own_broker, cloud):
    b = Board(tmp_path, own_broker.port)
    b.run(1000)
    _install(b, cloud, "greenhouse_v1.json", "i1")
    b.run(30_000)
    own_broker.restart()
    b.run(30_000)
    b.drain(cloud)
    last = b.node.store.last_seq
    wait_for(lambda: len(cloud.readings()) >= last)  # the companion may still be reconnecting
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
    wait_for(lambda: len(cloud.readings()) >= b.node.store.last_seq, seconds=30)
    got = cloud.readings()
    assert sorted(got) == list(range(1, b.node.store.last_seq + 1))
    backlog = [got[s] for s in range(before + 1, before + offline - 100)]
    assert all(r[1] for r in backlog), "replayed backlog must be marked historical"
    states = [codec.decode_state(p)[0] for p in cloud.of("up/state")]
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
    wrong_key = codec.sign_command(
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
    wait_for(lambda: len([a for a in cloud.acks() if a["id"] != "i1"]) >= 7, b)
    codes = [(a["id"], a["code"]) for a in cloud.acks() if a["id"] != "i1"]
    assert codes[0] == ("c-ok", codec.OK)
    assert codes[1][1] == codec.BAD_SIGNATURE and codes[2][1] == codec.BAD_SIGNATURE
    assert codes[3] == ("c-old", codec.EXPIRED)
    assert codes[4][1] == codec.BAD_SIGNATURE
    assert codes[5] == ("c-ok", codec.OK), "a duplicate gets the same result again"
    assert codes[6][1] == codec.REPLAYED
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
    assert ("i2", codec.IN_PROGRESS) in acks and acks.index(("i2", codec.IN_PROGRESS)) < acks.index(
        ("i2", codec.OK)
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
    wait_for(lambda: any(a["id"] == "i2" and a["code"] == codec.FAILED for a in cloud.acks()), b)
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
        c = compiler.compile(profile_wf)
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

    from shared import bundle

    blob = bundle.pack(files)
    size = 300
    chunks = [blob[i : i + size] for i in range(0, len(blob), size)]
    now = b.now_s()
    args = {
        "version": version,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
        "chunk_size": size,
        "chunks": len(chunks),
    }
    cloud.send(b.device, sign(b.device, cmd_id, "install_bundle", args, now))
    for i, c in enumerate(chunks):
        chunk = {"version": version, "index": i, "data": base64.b64encode(c).decode()}
        cloud.send(b.device, sign(b.device, f"{cmd_id}-{i}", "bundle_chunk", chunk, now))
    wait_for(lambda: b.resets == 1, b)


def _boot_slot(root: Path) -> tuple[str, int]:
    """What the board's /main.py does at boot: choose the slot, start the app from it."""
    import subprocess
    import sys

    from firmware.slots import select_slot

    slot = select_slot(str(root))
    code = f"import sys; sys.path.insert(0, {slot!r}); import firmware.main"
    return slot, subprocess.run(
        [sys.executable, "-c", code], capture_output=True, cwd="/"
    ).returncode


def test_boot_puts_the_slot_on_the_path_and_entry_starts_its_app(tmp_path, monkeypatch):
    import importlib
    import sys

    from firmware import main as app_main
    from firmware import slots

    monkeypatch.setattr(sys, "path", list(sys.path))
    slots.boot(str(tmp_path))  # no slot table yet: slot a
    assert sys.path[0] == str(tmp_path) + "/app_a"
    started = []
    monkeypatch.setattr(app_main, "main", lambda: started.append(True))
    monkeypatch.delitem(sys.modules, "firmware.entry", raising=False)
    importlib.import_module("firmware.entry")  # /main.py
    assert started == [True]


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
    wait_for(lambda: any(a["id"] == "bundle-2" and a["code"] == codec.FAILED for a in cloud.acks()), again)
    app = json.loads((root / "app.json").read_text())
    assert app["active"] == "a" and app["version"] is None, "the version that runs again"
    failed = [a for a in cloud.acks() if a["id"] == "bundle-2" and a["code"] == codec.FAILED]
    assert failed[0]["detail"] == (
        "rolled back: trial boot did not reach the broker and pass its health check"
    )
    wait_for(lambda: codec.decode_state(cloud.of("up/state")[-1])[0]["boot"] == again.node.boot_id)
    assert codec.decode_state(cloud.of("up/state")[-1])[0]["fw"] == "0.1.0"


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
    wait_for(lambda: any(a["id"] == "bundle-3" and a["code"] == codec.OK for a in cloud.acks()), again)
    app = json.loads((root / "app.json").read_text())
    assert app["active"] == "b" and not app["trial"]
    assert (root / "app_b" / "firmware" / "main.py").read_bytes() == b"OK = True\n"


def test_a_download_cut_by_a_power_cut_resumes_with_only_the_missing_chunks(
    tmp_path, own_broker, cloud
):
    import hashlib

    from shared import bundle

    files = [("firmware/__init__.py", b""), ("firmware/main.py", b"OK = 4\n" * 300)]
    blob = bundle.pack(files)
    cs = 256
    chunks = [blob[i : i + cs] for i in range(0, len(blob), cs)]
    n = len(chunks)
    args = {
        "version": "4.0.0",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
        "chunk_size": cs,
        "chunks": n,
    }

    def chunk(b: Board, i: int, tag: str) -> None:
        body = {"version": "4.0.0", "index": i, "data": base64.b64encode(chunks[i]).decode()}
        cloud.send(b.device, sign(b.device, f"{tag}-{i}", "bundle_chunk", body, b.now_s()))

    def ack(cmd_id: str) -> dict | None:
        got = [a for a in cloud.acks() if a["id"] == cmd_id]
        return got[-1] if got else None

    b = Board(tmp_path, own_broker.port)
    b.run(2000)
    cloud.send(b.device, sign(b.device, "inst-1", "install_bundle", args, b.now_s()))
    wait_for(lambda: ack("inst-1") is not None, b)
    assert ack("inst-1")["detail"] == f"next 0/{n}"
    half = n // 2
    for i in range(half):
        chunk(b, i, "a")
    wait_for(lambda: ack(f"a-{half - 1}") is not None, b)
    assert ack(f"a-{half - 1}")["detail"] == f"next {half}/{n}"
    b.close()  # the power goes while the next chunk is being written: it is torn
    root = tmp_path / "dev1"
    with open(root / "bundle.part", "ab") as f:
        f.write(chunks[half][:100])

    again = Board(tmp_path, own_broker.port)  # boots again: RAM lost, flash kept
    again.node.confirm_after_s = 2
    cloud.send(again.device, sign(again.device, "inst-2", "install_bundle", args, again.now_s()))
    wait_for(lambda: ack("inst-2") is not None, again)
    a = ack("inst-2")
    assert (a["code"], a["detail"]) == (codec.IN_PROGRESS, f"next {half}/{n} (resumed)")
    for i in range(half, n):  # the companion sends from K on: only the missing chunks
        chunk(again, i, "b")
    wait_for(lambda: again.resets == 1, again)
    assert ack(f"b-{n - 1}")["detail"] == "bundle 4.0.0 stored in slot b; rebooting into it"
    assert [x for x in cloud.acks() if x["id"].startswith("b-") and x["code"] != codec.OK] == []
    again.close()
    slot, rc = _boot_slot(root)
    assert slot.endswith("app_b") and rc == 0
    third = Board(tmp_path, own_broker.port)  # the trial boot reaches the broker, stays up
    third.node.confirm_after_s = 2
    wait_for(lambda: (ack("inst-2") or {}).get("code") == codec.OK, third)
    assert ack("inst-2")["detail"] == "running bundle 4.0.0"
    assert (root / "app_b" / "firmware" / "main.py").read_bytes() == b"OK = 4\n" * 300
    states = [codec.decode_state(p)[0] for p in cloud.of("up/state")]
    assert states[-1]["fw"] == "4.0.0", "the state reports the bundle that runs"
    assert states[0]["fw"] == "0.1.0", "before it, the firmware's own version"
