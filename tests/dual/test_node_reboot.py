"""A power cycle: the node resumes its state, outputs and sequence (both runtimes)."""

from _nodekit import PROFILE, RecorderLink, _board, _cmd, _install, _run
from _storekit import held_range

from cloud.orrery.sim.hal import SimHal
from firmware.node import Node


def test_reboot_resumes_state_outputs_and_sequence():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 4500)
    _cmd(node, clock, "c1", "run_command", {"name": "force_cool"})
    _run(node, clock, 2000)
    assert node.wf.ex.state_name() == "cool"
    fan = node.hal.output_index("fan")
    assert node.hal.outputs[fan] == 1
    last = node.store.last_seq
    root = node.root
    # power cycle: a new node on the same flash, with fresh hardware (outputs off)
    hal = SimHal(PROFILE, 1, clock.ticks_ms, dropout_ppm=0, spike_ppm=0)
    hal.configure("temp", base=3500, amplitude=0, noise=0)
    again = Node(
        node.cfg,
        hal,
        root,
        RecorderLink(),
        clock.ticks_ms,
        wall_ms=clock.unix_ms,
        rand4=lambda: b"\x05\x06\x07\x08",
    )
    again.wf.boot()
    assert again.wf.ex.state_name() == "cool", "the executor resumes where it was"
    assert hal.outputs[fan] == 1, "outputs come back as they were, without toggling"
    assert again.boot_id != node.boot_id
    _run(again, clock, 8000)  # the median window refills first
    assert again.store.last_seq > last
    assert held_range(again.store)[0] == 1, "readings of the earlier boot are still held"
