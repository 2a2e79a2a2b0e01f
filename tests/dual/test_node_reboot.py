"""A power cycle: the node resumes its state, outputs and sequence (both runtimes)."""

from _nodekit import PROFILE, RecorderLink, _board, _cmd, _install, _run
from _storekit import held_range

from cloud.orrery.sim.hal import SimHal
from firmware.node import Node
from shared.wire import codec


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


def _reboot(node, clock):
    again, _, link = _board(clock=clock, root=node.root, rand4=b"\x09\x09\x09\x09")
    return again, link


def _failed(link):
    from _nodekit import _acks

    return [(a["id"], a["detail"]) for a in _acks(link) if a["code"] == codec.FAILED]


def test_a_reboot_in_the_middle_of_an_install_fails_it_and_keeps_the_old_version():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 4500)
    _install(node, clock, "i2", "greenhouse")
    for _ in range(4):  # verify, stage, load, build: the power goes before the migration
        clock.advance(100)
        node.step_main()
    assert node.job is not None and node.wf.prog.version == 1
    again, link2 = _reboot(node, clock)
    assert again.wf.prog.version == 1 and again.wf.ex is not None
    while again.step_link():
        pass
    assert _failed(link2) == [("i2", "rolled back: rebooted during the install")]
    import os

    assert sorted(os.listdir(node.root + "/wf")) == ["current.bin", "state.bin"]


def test_a_reboot_after_the_switch_but_before_the_trial_rolls_back():
    import json
    import os

    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 4500)
    _install(node, clock, "i2", "greenhouse")
    _run(node, clock, 700)
    assert node.wf.prog.version == 2 and node.wf.trial is not None
    # the power went after the two renames, before trial.json was written
    d = node.root + "/wf/"
    os.remove(d + "trial.json")
    with open(d + "installing.json", "w") as f:
        f.write(json.dumps({"id": "i2", "sha256": node.wf.prog.hash}))
    again, link2 = _reboot(node, clock)
    assert again.wf.prog.version == 1
    while again.step_link():
        pass
    assert _failed(link2) == [("i2", "rolled back: rebooted during the install")]
