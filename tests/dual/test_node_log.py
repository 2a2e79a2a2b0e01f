"""The board's log ring on both runtimes: fixed records, the oldest overwritten, published on
``up/log`` at most once per LOG_EVERY_MS, and (on MicroPython) written without allocating.

(A module of its own: each dual module runs in one MicroPython heap, collection off.)"""

from _nodekit import RecorderLink, _board, _cmd, _install, _run
from _util import allocates

from shared.wire import codec


def _logs(link):
    # every up/log message published, decoded
    out = []
    for topic, payload in link.sent:
        if topic.endswith("/up/log"):
            msg, err = codec.decode_log(payload)
            assert err is None, err
            out.append(msg)
    return out


def _lines(link):
    # (seq, code, a, b) of every line published, in order
    out = []
    for m in _logs(link):
        for seq, _, _, code, a, b in m["lines"]:
            out.append((seq, code, a, b))
    return out


def _send_all(node):
    while node.step_link():
        pass


def test_boot_and_connect_are_the_first_lines_sent_at_once():
    node, clock, link = _board()
    logs = _logs(link)
    assert len(logs) == 1 and logs[0]["boot"] == node.boot_id and logs[0]["first"] == 0
    assert _lines(link) == [(0, codec.LOG_BOOT, 0, 0), (1, codec.LOG_LINK_UP, 0, 0)]


def test_state_changes_and_refused_commands_are_logged_and_sent_rate_limited():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 4500)
    _cmd(node, clock, "c1", "run_command", {"name": "manual"})
    _cmd(node, clock, "c2", "run_command", {"name": "manual"}, ttl=3600, age=99999)  # expired
    for _ in range(4):
        node.step_main()
    _send_all(node)
    sent = len(_logs(link))
    clock.advance(1000)  # within LOG_EVERY_MS of the last up/log: nothing new is published
    node.step_main()
    _send_all(node)
    assert len(_logs(link)) == sent
    _run(node, clock, 10000)
    lines = _lines(link)
    manual = node.wf.prog.state_names.index("manual")
    assert (codec.LOG_STATE, manual) in [(c, a) for _, c, a, _ in lines]
    assert (codec.LOG_REFUSED, codec.EXPIRED) in [(c, a) for _, c, a, _ in lines]
    assert [s for s, _, _, _ in lines] == list(range(len(lines))), "each line once, in order"
    ats = [m["first"] for m in _logs(link)]
    assert ats == sorted(ats)


def test_the_ring_keeps_the_newest_lines_and_the_gap_shows_what_was_lost():
    node, clock, link = _board()
    clock.advance(20000)
    for i in range(40):
        node.log(codec.LOG_FAULT, i, -i)
    _send_all(node)
    last = _logs(link)[-1]
    assert last["first"] == 42 - codec.LOG_LINES and len(last["lines"]) == codec.LOG_LINES
    assert [(a, b) for _, _, _, _, a, b in last["lines"]] == [
        (i, -i) for i in range(40 - codec.LOG_LINES, 40)
    ]
    assert node.log_sent == node.log_seq == 42


class _FlakyLink(RecorderLink):
    up = True

    def connect(self):
        self.connected = self.up
        return self.up


def test_a_lost_link_is_logged_once_then_its_return_with_the_failed_connects():
    node, clock, _ = _board()
    link = _FlakyLink()
    link.on_message = node.link.on_message
    node.link = link
    node.backoff._rand = lambda: 7  # the WASI runtime has no os.urandom
    link.up = False
    for _ in range(5):
        clock.advance(70000)  # past any backoff
        node.step_link()
    link.up = True
    clock.advance(70000)
    _send_all(node)
    lines = [(c, a) for _, c, a, _ in _lines(link)]
    assert lines.count((codec.LOG_LINK_DOWN, 0)) == 1
    assert (codec.LOG_LINK_UP, 5) in lines


def mp_test_a_line_and_a_state_change_allocate_nothing():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 4500)
    assert node.wf.trial is None
    seq = node.log_seq
    assert not allocates(lambda: node.log(codec.LOG_FAULT, -32768, 32767))
    for _ in range(2 * codec.LOG_LINES):  # around the ring
        assert not allocates(lambda: node.log(codec.LOG_LINK_DOWN, 1, 2))
    node.wf.ex.transitions += 1  # as the executor does when a transition fires
    assert not allocates(node.wf.check_health)
    assert node.log_seq == seq + 2 * codec.LOG_LINES + 2
    assert node.wf.dirty


def mp_test_a_main_pass_s_health_check_and_an_event_allocate_nothing():
    # check_health runs every main pass and publish on every workflow event: both kept their
    # frames on the heap before (too many locals around a ``with``), an allocation each
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 4500)
    assert not allocates(node.wf.check_health)
    n = node.ev_count
    assert not allocates(lambda: node.publish(0, 5))
    assert node.ev_count == n + 1
