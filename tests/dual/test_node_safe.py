"""Safe installs on both runtimes: a reboot waits while the workflow is outside its
``safe_states``; the board keeps working meanwhile, and a wait that runs out is acked UNSAFE.
(Installs and bundle switches: test_node_safe_install.)"""

from _nodekit import _acks, _cmd, _run
from _safekit import WAITING, _booted, _fan, _of, _pumping
from _util import allocates

from shared.wire import codec


def test_a_reboot_waits_for_a_safe_state_and_the_board_keeps_working():
    node, clock, link, resets = _pumping()
    _cmd(node, clock, "r1", "reboot", {})
    seq = node.store.last_seq
    _run(node, clock, 1000)
    assert _of(link, "r1") == [(codec.IN_PROGRESS, WAITING)]
    assert resets == [] and _fan(node) == 1
    assert node.store.last_seq > seq, "it samples and stores readings while it waits"
    # a command behind the waiting reboot still runs: it stops the pump, then the reboot goes
    _cmd(node, clock, "stop", "run_command", {"name": "stop"})
    _run(node, clock, 300)
    assert _of(link, "stop") == [(codec.OK, "state idle")]
    assert _of(link, "r1")[-1] == (codec.OK, "rebooting")
    assert len(resets) == 1 and _fan(node) == 0


def test_a_reboot_in_a_safe_state_goes_at_once():
    node, clock, link, resets = _pumping()
    _cmd(node, clock, "stop", "run_command", {"name": "stop"})
    _run(node, clock, 200)
    _cmd(node, clock, "r1", "reboot", {})
    _run(node, clock, 200)
    assert _of(link, "r1") == [(codec.OK, "rebooting")] and len(resets) == 1


def test_a_workflow_without_safe_states_never_waits():
    node, clock, link, resets = _booted("greenhouse_v1")
    _cmd(node, clock, "c1", "run_command", {"name": "force_cool"})
    _cmd(node, clock, "r1", "reboot", {})
    _run(node, clock, 500)
    assert node.wf.ex.state_name() == "cool"
    assert _of(link, "r1") == [(codec.OK, "rebooting")] and len(resets) == 1


def test_a_reboot_whose_wait_runs_out_is_acked_unsafe():
    node, clock, link, resets = _pumping()
    _cmd(node, clock, "r1", "reboot", {})
    _run(node, clock, 2500)
    assert _of(link, "r1") == [
        (codec.IN_PROGRESS, WAITING),
        (codec.UNSAFE, "no safe state within 2 s (in running)"),
    ]
    assert resets == [] and node.job is None and _fan(node) == 1
    assert [a["code"] for a in _acks(link)][-1] == codec.UNSAFE


def mp_test_a_pass_of_a_waiting_job_allocates_nothing():
    node, clock, link, resets = _pumping()
    _cmd(node, clock, "r1", "reboot", {})
    _run(node, clock, 300)
    job = node.job
    assert job is not None
    assert not allocates(lambda: next(job))
