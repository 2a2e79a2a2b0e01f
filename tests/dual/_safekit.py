"""A board running the golden ``pump`` workflow (safe_states ["idle"], safe_wait_s 2) with its
pump started: the fixture of the safe-install tests (test_node_safe*)."""

import binascii

from _nodekit import GOLDEN, _acks, _board, _cmd, _root, _run

from firmware.files import mkdir, write_atomic

WAITING = "waiting for a safe state (in running; up to 2 s)"


def _booted(name):
    """A board that boots with golden workflow ``name`` installed (saves the heap an install
    takes: MicroPython runs these tests with automatic collection off); and its resets."""
    root = _root()
    mkdir(root)
    mkdir(root + "/wf")
    write_atomic(root + "/wf/current.bin", binascii.unhexlify(GOLDEN[name]["blob"]))
    resets = []
    node, clock, link = _board(root=root, reset=lambda: resets.append(clock.ticks_ms()))
    assert node.wf.prog.name == name.split("_")[0]
    return node, clock, link, resets


def _pumping():
    """A board on pump v1 with its fan on; and the ticks it reset at."""
    node, clock, link, resets = _booted("pump")
    _cmd(node, clock, "go", "run_command", {"name": "start"})
    _run(node, clock, 300)
    assert node.wf.ex.state_name() == "running"
    return node, clock, link, resets


def _of(link, cmd_id):
    """Command ``cmd_id``'s acks, as (code, detail)."""
    return [(a["code"], a["detail"]) for a in _acks(link) if a["id"] == cmd_id]


def _fan(node):
    return node.hal.outputs[node.hal.output_index("fan")]
