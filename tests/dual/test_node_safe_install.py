"""Safe installs on both runtimes: a workflow install and an app bundle's switch wait while
the running workflow is outside its ``safe_states`` (reboots: test_node_safe)."""

import binascii
import os

from _nodekit import _cmd, _install, _run
from _safekit import WAITING, _fan, _of, _pumping

from shared.wire import codec


def test_an_install_waits_for_a_safe_state_then_goes():
    node, clock, link, resets = _pumping()
    _install(node, clock, "i2", "pump_v2")
    _run(node, clock, 1000)
    assert _of(link, "i2") == [(codec.IN_PROGRESS, WAITING)]
    assert node.wf.prog.version == 1 and _fan(node) == 1
    # a reboot meanwhile (or another install) is refused: the board is busy with a change
    _cmd(node, clock, "r1", "reboot", {})
    _run(node, clock, 300)
    assert _of(link, "r1") == [(codec.BUSY, "i2 waits for a safe state")]
    _cmd(node, clock, "stop", "run_command", {"name": "stop"})
    _run(node, clock, 800)
    assert node.wf.prog.version == 2 and node.wf.ex.state_name() == "idle"
    _run(node, clock, 3500)
    assert (codec.IN_PROGRESS, "health window 3 s") in _of(link, "i2")
    assert _of(link, "i2")[-1][0] == codec.OK and resets == []


def test_an_install_whose_wait_runs_out_leaves_the_old_version_running():
    node, clock, link, resets = _pumping()
    _install(node, clock, "i2", "pump_v2")
    _run(node, clock, 2500)
    assert _of(link, "i2") == [
        (codec.IN_PROGRESS, WAITING),
        (codec.UNSAFE, "no safe state within 2 s (in running)"),
    ]
    assert node.wf.prog.version == 1 and node.wf.ex.state_name() == "running"
    assert sorted(os.listdir(node.root + "/wf")) == ["current.bin", "state.bin"]


def test_a_bundle_switch_waits_for_a_safe_state():
    import hashlib

    from shared.bundle import pack

    node, clock, link, resets = _pumping()
    data = pack([("main.py", b"print('v2')\n")])
    sha = binascii.hexlify(hashlib.sha256(data).digest()).decode()
    args = {"version": "2", "sha256": sha, "size": len(data), "chunk_size": len(data), "chunks": 1}
    _cmd(node, clock, "b1", "install_bundle", args)
    _run(node, clock, 200)
    chunk = {"version": "2", "index": 0, "data": binascii.b2a_base64(data).decode().strip()}
    _cmd(node, clock, "b1c0", "bundle_chunk", chunk)
    _run(node, clock, 1000)
    assert _of(link, "b1")[-1] == (codec.IN_PROGRESS, WAITING)
    assert resets == [] and _fan(node) == 1
    _cmd(node, clock, "stop", "run_command", {"name": "stop"})
    _run(node, clock, 500)
    assert _of(link, "b1c0")[-1][0] == codec.OK and len(resets) == 1 and _fan(node) == 0
