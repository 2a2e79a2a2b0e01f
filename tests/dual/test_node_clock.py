"""Signed commands and the board's clock, on both runtimes: a clock that is off, corrected in a
later boot, never makes a command run twice (the replay table on flash forgets by issue time).

(A module of its own: each dual module runs in one MicroPython heap, collection off.)"""

import binascii

from _nodekit import KEY, _acks, _board, _cmd, _run

from shared.wire import codec


def _ack_of(link, cmd_id):
    return [(a["code"], a["detail"]) for a in _acks(link) if a["id"] == cmd_id]


def test_a_command_runs_once_across_a_clock_correction():
    # boot 1: the board's clock runs 2 h fast; the companion signs in its own time (it has no
    # estimate of the board's clock yet), with a lifetime of a day, and the board reboots once
    resets = []
    boards = []

    def reset():  # a board never returns from machine.reset(); this one goes on, so it forgets
        resets.append(len(boards))
        boards[-1].reboot_requested = False

    fast = 2 * 3600 * 1000
    node, clock, link = _board(skew_ms=fast, reset=reset)
    boards.append(node)
    x = _cmd(node, clock, "X", "reboot", {}, ttl=86400)
    _run(node, clock, 500)
    assert _ack_of(link, "X") == [(codec.OK, "rebooting")] and resets == [1]
    # 22 h on, the fast clock is past X's exp; another command is checked then
    clock.advance(22 * 3600 * 1000 + 600_000)
    _cmd(node, clock, "Y", "resend", {"first": 1, "last": 1}, ttl=86400)
    _run(node, clock, 500)
    assert _ack_of(link, "Y")[0][0] == codec.IN_PROGRESS
    # the clock is corrected in the next boot; X arrives again (a QoS 1 redelivery)
    again, clock, link2 = _board(clock, root=node.root, reset=reset, rand4=b"\x05\x06\x07\x08")
    boards.append(again)
    assert again.boot_id != node.boot_id
    again._on_message(again.topics[codec.CMD], x)
    _run(again, clock, 500)
    assert _ack_of(link2, "X") == [(codec.DUPLICATE, "already accepted")]
    assert resets == [1], "X must not run a second time"


def test_a_refused_command_with_a_newer_issue_time_is_kept_on_flash():
    # a board 1 h slow refuses what was signed in the companion's time, and accepts the same
    # command signed with its skew
    node, clock, link = _board(skew_ms=-3600 * 1000)
    now = clock.unix_ms() // 1000
    key = binascii.unhexlify(KEY)
    resend = {"first": 1, "last": 1}
    env = codec.sign_command(key, "r1", "dev1", "resend", resend, now, now + 600)
    node._on_message(node.topics[codec.CMD], env)
    _run(node, clock, 300)
    assert _ack_of(link, "r1") == [(codec.EXPIRED, "issued in the future")]
    env = codec.sign_command(key, "r1", "dev1", "resend", resend, now, now + 600, -3600)
    node._on_message(node.topics[codec.CMD], env)
    _run(node, clock, 300)
    assert _ack_of(link, "r1")[1][0] == codec.IN_PROGRESS
    # 700 s later a command of a kind it does not know: refused, but its issue time is the
    # newest seen, which forgets r1 (its exp has passed), and that is saved at once
    clock.advance(700_000)
    later = now + 700
    env = codec.sign_command(key, "k1", "dev1", "launch", {}, later, later + 600, -3600)
    node._on_message(node.topics[codec.CMD], env)
    _run(node, clock, 300)
    assert _ack_of(link, "k1") == [(codec.UNKNOWN_KIND, "unknown kind")]
    again, clock, link2 = _board(clock, root=node.root, rand4=b"\x05\x06\x07\x08")
    # after a reboot, r1 delivered again is refused by that issue time, whatever the clock
    env = codec.sign_command(key, "r1", "dev1", "resend", resend, now, now + 600, -3600)
    again._on_message(again.topics[codec.CMD], env)
    _run(again, clock, 300)
    assert _ack_of(link2, "r1") == [(codec.EXPIRED, "older than the newest command seen")]
