"""The node's command inbox on both runtimes: admitted by bytes, one step per main pass."""

from _nodekit import _acks, _board, _cmd, _install, _run

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
