"""The node's command inbox on both runtimes: admitted by bytes, one step per main pass."""

from _nodekit import _acks, _board, _cmd, _install, _run

from firmware import gate
from shared.wire import codec


def test_one_command_step_per_pass_and_the_inbox_bytes_return_to_zero():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 4500)
    before = len(_acks(link))
    a = _cmd(node, clock, "c1", "run_command", {"name": "manual"})
    b = _cmd(node, clock, "c2", "run_command", {"name": "auto"})
    assert node.inbox_bytes == len(a) + len(b)
    assert node._held() == node.inbox_bytes
    node.step_main()  # verifies c1 only: it waits at the head for the next pass
    assert isinstance(node.inbox[0], dict) and node.inbox[1] == b
    assert node.wf.ex.state_name() != "manual" and len(node.outbox) == 0
    node.step_main()  # runs c1
    assert node.wf.ex.state_name() == "manual" and node.inbox == [b]
    assert node.inbox_bytes == len(b)
    node.step_main()
    node.step_main()  # verifies, then runs c2
    assert node.inbox == [] and node.inbox_bytes == 0
    while node.step_link():
        pass
    assert [(x["id"], x["code"]) for x in _acks(link)[before:]] == [
        ("c1", codec.OK),
        ("c2", codec.OK),
    ]


def test_an_install_takes_one_step_a_pass_while_the_old_workflow_runs_and_commands_wait():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 4500)
    _install(node, clock, "i2", "greenhouse")
    _cmd(node, clock, "c1", "run_command", {"name": "auto"})
    node.step_main()  # verifies i2
    node.step_main()  # runs it: the blob is checked and staged; the rest is the node's job
    assert node.job is not None and node.job_id == "i2"
    assert node.wf.prog.version == 1 and len(node.inbox) == 1
    samples = node.wf.samples
    passes = 0
    while node.job is not None:
        clock.advance(1000)
        node.step_main()
        passes += 1
        assert len(node.inbox) == 1, "c1 waits behind the install"
    assert passes == 4  # load and check, build the executor, migrate, switch and start
    assert node.wf.prog.version == 2
    assert node.wf.samples - samples >= 2, "the old workflow sampled between the steps"
    node.step_main()
    node.step_main()  # c1: verified, then run
    assert node.inbox == [] and node.inbox_bytes == 0
    while node.step_link():
        pass
    got = [(a["id"], a["code"]) for a in _acks(link)][-2:]
    assert got[0] == ("i2", codec.IN_PROGRESS) and got[1][0] == "c1"  # run by version 2


def test_the_acks_a_duplicate_gets_again_are_the_newest_64_one_line_each():
    node, clock, link = _board()
    node.ack_later("i1", codec.IN_PROGRESS, "health window 3 s")
    node.ack_later("i1", codec.OK, "healthy:\nall good")  # the later result wins
    assert gate.stored_ack(node, "i1") == (codec.OK, "healthy: all good")
    node.ack_later("x", codec.REJECTED, "not remembered", False)
    assert gate.stored_ack(node, "x") is None and gate.stored_ack(node, "i") is None
    for i in range(64):
        node.ack_later("c:" + str(i), codec.OK, "chunk {} of 64".format(i + 1))
    assert node.n_acks == 64 and node.acks.count("\n") == 65
    assert gate.stored_ack(node, "i1") is None  # the oldest went
    assert gate.stored_ack(node, "c:0") == (codec.OK, "chunk 1 of 64")
    assert gate.stored_ack(node, "c:63") == (codec.OK, "chunk 64 of 64")
