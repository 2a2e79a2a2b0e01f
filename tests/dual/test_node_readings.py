"""Readings on both runtimes: what the node stores reaches the link in batches, in order.

(A module of its own: each dual module runs in one MicroPython heap, collection off.)"""

from _nodekit import _board, _install, _run

from shared.wire import codec


def test_readings_are_stored_and_sent_in_batches():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 10000)
    batches = [codec.decode_batch(p)[0] for t, p in link.sent if t.endswith("/up/readings")]
    seqs = []
    for b in batches:
        for r in b.records:
            seqs.append(r[0])
    assert seqs == list(range(1, node.store.last_seq + 1))
    assert node.store.backlog() == 0
