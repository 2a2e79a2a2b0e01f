"""Command handling and workflow install on both runtimes (the firmware's own code)."""

import binascii

from _nodekit import GOLDEN, _acks, _board, _cmd, _install, _run  # noqa: F401

from shared.wire import codec


def test_connect_publishes_state_and_pull():
    node, clock, link = _board()
    topics = [t for t, _ in link.sent]
    assert topics[0] == "orrery/f1/dev1/up/state"
    assert topics[1] == "orrery/f1/dev1/up/pull"
    state = codec.decode_state(link.sent[0][1])[0]
    assert state["online"] is True and state["synced"] is True and state["boot"] > 0


def test_install_runs_health_window_then_migrates_on_upgrade():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 500)
    assert [(a["id"], a["code"]) for a in _acks(link)] == [("i1", codec.IN_PROGRESS)]
    _run(node, clock, 4000)
    assert _acks(link)[-1]["id"] == "i1" and _acks(link)[-1]["code"] == codec.OK
    _cmd(node, clock, "c1", "run_command", {"name": "force_cool"})
    _run(node, clock, 300)
    assert node.wf.ex.state_name() == "cool"
    _install(node, clock, "i2", "greenhouse")
    _run(node, clock, 700)  # verify, then one pass each: stage, load, build, migrate, switch
    assert node.wf.prog.version == 2
    assert node.wf.ex.state_name() == "cooling"
    _run(node, clock, 4000)
    assert (_acks(link)[-1]["id"], _acks(link)[-1]["code"]) == ("i2", codec.OK)


def test_refused_commands_and_duplicates():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 4500)
    env = _cmd(node, clock, "c1", "run_command", {"name": "manual"})
    _run(node, clock, 200)
    node._on_message(node.topics[codec.CMD], env)  # a QoS 1 redelivery
    node._on_message(node.topics[codec.CMD], env.replace(b"manual", b"auto__"))  # tampered
    _cmd(node, clock, "c-old", "run_command", {"name": "auto"}, ttl=60, age=3600)  # expired
    _cmd(node, clock, "c2", "run_command", {"name": "nope"})  # valid, refused by the workflow
    _run(node, clock, 600)  # one step per pass: 4 refused or answered at once, then c2's 2
    got = [(a["id"], a["code"]) for a in _acks(link)][2:]
    assert got[0] == ("c1", codec.OK)
    assert got[1] == ("c1", codec.OK), "a duplicate gets the stored result, and runs nothing"
    assert got[2][1] == codec.BAD_SIGNATURE
    assert got[3] == ("c-old", codec.EXPIRED)
    assert got[4] == ("c2", codec.REJECTED)
    assert node.wf.ex.state_name() == "manual"


def test_bad_install_is_rejected_and_nothing_changes():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 4500)
    w = GOLDEN["greenhouse"]
    blob = binascii.unhexlify(w["blob"])
    bad = {"blob": binascii.b2a_base64(blob[:-3]).decode().strip(), "sha256": w["hash"]}
    _cmd(node, clock, "i2", "install_workflow", bad)
    _run(node, clock, 300)
    last = _acks(link)[-1]
    assert last["id"] == "i2" and last["code"] == codec.REJECTED and "sha256" in last["detail"]
    assert node.wf.prog.version == 1
