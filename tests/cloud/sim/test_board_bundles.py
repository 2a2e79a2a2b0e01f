"""App bundles on a virtual board (``cloud.orrery.sim.board.VirtualBoard``) against a real
Mosquitto: each boot chooses its slot as ``/boot.py`` does, so ``app.json`` decides the version
the board reports; a trial boot made to crash (``trial_crash``) falls back to the previous slot
and the install is acked FAILED "rolled back: ..."; a power cut in the middle of a download
keeps it on flash, and it resumes.

The companion's side is a plain paho client that signs commands (``tests.support.boards``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest

from cloud.orrery.sim.board import VirtualBoard, mpy_version
from cloud.orrery.sim.hal import VirtualClock
from firmware.uplink import FW_VERSION
from shared import bundle
from shared.wire import codec
from tests.support.boards import KEY, T0, Cloud, sign

CS = 512
BLOB = bundle.pack([("firmware/__init__.py", b""), ("firmware/main.py", b"V = 2\n" * 400)])
CHUNKS = [BLOB[i : i + CS] for i in range(0, len(BLOB), CS)]
N = len(CHUNKS)
ARGS = {
    "version": "2.0.0",
    "sha256": hashlib.sha256(BLOB).hexdigest(),
    "size": len(BLOB),
    "chunk_size": CS,
    "chunks": N,
}


@pytest.fixture
def cloud(broker):
    c = Cloud(broker.port)
    yield c
    c.close()


def _board(tmp_path, broker, **kw) -> VirtualBoard:
    clock = VirtualClock(ticks=5, unix_ms=T0)
    return VirtualBoard(
        "dev1", tmp_path / "dev1", clock, "127.0.0.1", broker.port, bytes.fromhex(KEY),
        fleet="f1", dropout_ppm=0, spike_ppm=0, **kw,
    )  # fmt: skip


def _run(b: VirtualBoard, ms: int) -> None:
    for _ in range(ms // 100):
        b.clock.advance(100)
        b.step()
        b.link_turn()


def _wait(pred, b: VirtualBoard, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return
        _run(b, 200)
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def _acks(cloud: Cloud, cmd_id: str) -> list[tuple[int, str]]:
    return [(a["code"], a["detail"]) for a in cloud.acks() if a["id"] == cmd_id]


def _send(cloud: Cloud, b: VirtualBoard, cmd_id: str, kind: str, args: dict) -> None:
    cloud.send("dev1", sign("dev1", cmd_id, kind, args, b.clock.unix_ms() // 1000))


def _chunk(cloud: Cloud, b: VirtualBoard, i: int) -> None:
    data = base64.b64encode(CHUNKS[i]).decode()
    _send(cloud, b, f"c{i}-{b.boot_id}", "bundle_chunk", {"version": "2.0.0", "index": i, "data": data})


def _install(cloud: Cloud, b: VirtualBoard, cmd_id: str) -> None:
    _send(cloud, b, cmd_id, "install_bundle", ARGS)
    _wait(lambda: _acks(cloud, cmd_id), b)
    assert _acks(cloud, cmd_id)[0] == (codec.IN_PROGRESS, f"next 0/{N}")
    for i in range(N):
        _chunk(cloud, b, i)
    _wait(lambda: b.resets == 1, b)  # stored in the inactive slot; the board reboots


def _state(cloud: Cloud, b: VirtualBoard) -> dict:
    _wait(lambda: any(codec.decode_state(p)[0]["boot"] == b.boot_id for p in cloud.of("up/state")), b)
    return [s for s in (codec.decode_state(p)[0] for p in cloud.of("up/state")) if s["boot"] == b.boot_id][-1]


def test_a_trial_boot_that_crashes_rolls_back_and_fails_the_install(tmp_path, broker, cloud):
    b = _board(tmp_path, broker, trial_crash=True)
    _run(b, 2000)
    _install(cloud, b, "inst-1")
    assert b.stats.trial_crashes == 1 and b.stats.boots == 3, "trial boot crashed, booted again"
    app = json.loads((b.root / "app.json").read_text())
    assert app["active"] == "a" and app["trial"] is None and app["version"] is None
    _wait(lambda: len(_acks(cloud, "inst-1")) == 2, b)  # once connected again
    assert _acks(cloud, "inst-1")[1] == (
        codec.FAILED,
        "rolled back: trial boot did not reach the broker and pass its health check",
    )
    assert b.fw == FW_VERSION and _state(cloud, b)["fw"] == FW_VERSION


def test_a_trial_boot_that_stays_up_is_confirmed_and_reported(tmp_path, broker, cloud):
    b = _board(tmp_path, broker, mpy="6.3")
    _run(b, 2000)
    assert _state(cloud, b)["fw"] == FW_VERSION and _state(cloud, b)["mpy"] == "6.3"
    _install(cloud, b, "inst-1")
    assert b.stats.trial_crashes == 0 and b.fw == "2.0.0", "the trial boot runs the new bundle"
    _run(b, 31_000)  # reaches the broker and stays up: confirm_after_s
    _wait(lambda: len(_acks(cloud, "inst-1")) == 2, b)
    assert _acks(cloud, "inst-1")[1] == (codec.OK, "running bundle 2.0.0")
    app = json.loads((b.root / "app.json").read_text())
    assert app["active"] == "b" and app["version"] == "2.0.0"
    b.reboot()  # it stays on the new bundle
    assert _state(cloud, b)["fw"] == "2.0.0"


def test_a_power_cut_mid_download_keeps_it_and_it_resumes(tmp_path, broker, cloud):
    b = _board(tmp_path, broker)
    _run(b, 2000)
    _send(cloud, b, "inst-1", "install_bundle", ARGS)
    _wait(lambda: _acks(cloud, "inst-1"), b)
    k = N // 2
    for i in range(k):
        _chunk(cloud, b, i)
    _wait(lambda: any(a == (codec.OK, f"next {k}/{N}") for a in _acks(cloud, f"c{k - 1}-{b.boot_id}")), b)
    held = (b.root / "bundle.part").read_bytes()
    b.power_cut("torn_chunk")
    assert b.stats.boots == 2
    assert (b.root / "bundle.part").read_bytes()[: len(held)] == held
    assert (b.root / "bundle.part").stat().st_size > len(held), "the torn chunk's bytes"
    assert json.loads((b.root / "bundle.json").read_text())["cmd"] == "inst-1"
    _send(cloud, b, "inst-2", "install_bundle", ARGS)
    _wait(lambda: _acks(cloud, "inst-2"), b)
    assert _acks(cloud, "inst-2") == [(codec.IN_PROGRESS, f"next {k}/{N} (resumed)")]
    assert (b.root / "bundle.part").read_bytes() == held
    for i in range(k, N):
        _chunk(cloud, b, i)
    _wait(lambda: b.resets == 1, b)
    assert json.loads((b.root / "app.json").read_text())["cmd"] == "inst-2"


def test_a_virtual_board_reports_what_mpy_cross_writes(tmp_path, broker, cloud):
    b = _board(tmp_path, broker)
    assert mpy_version() is not None
    major, sub = mpy_version().split(".")
    assert major.isdigit() and sub.isdigit()
    assert _state(cloud, b)["mpy"] == mpy_version()
    # not through its config, which the board checks: a config change is still accepted
    _send(cloud, b, "cfg-1", "set_config", {"changes": {"log_level": "debug"}})
    _wait(lambda: _acks(cloud, "cfg-1"), b)
    assert _acks(cloud, "cfg-1") == [(codec.OK, "saved; applies at the next boot")]
