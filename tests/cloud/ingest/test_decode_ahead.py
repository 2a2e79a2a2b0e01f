"""``service._Decoder``: while the worker commits a group, the messages waiting in its inbox are
taken in order and their readings batches decoded ahead; the next group is the same messages,
in the same order, with the same decoded batches as decoding them then would give, and nothing
is taken once the worker has paused it."""

from __future__ import annotations

import queue
import time

import paho.mqtt.client as mqtt

from cloud.orrery.ingest.service import _Decoder
from shared.wire import codec


def _msg(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    m = mqtt.MQTTMessage(mid=1, topic=topic.encode())
    m.payload = payload
    m.qos = 1
    return m


def _decoded(result) -> tuple:
    # decode_batch's result as plain values (a Batch has no equality of its own)
    batch, err = result
    return (vars(batch) if batch is not None else None), err


def _until(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the decoder did not take the messages"
        time.sleep(0.005)


def test_messages_are_taken_in_order_and_decoded_as_they_would_be_later():
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    msgs = []
    for i in range(40):
        if i % 5 == 1:  # not a batch: taken in its turn, left to the handler
            msgs.append(_msg(f"orrery/f/d{i}/up/state", b'{"online": true}'))
        elif i % 5 == 2:  # a malformed batch: its error, as the handler would get it
            msgs.append(_msg(f"orrery/f/bad{i}/up/readings", b"OR\x01garbage"))
        else:
            recs = [(s, 0, s * 3 - 50, s % 2) for s in range(26)]
            msgs.append(_msg(f"orrery/f/d{i}/up/readings", codec.encode_batch(1 + i, 1, recs, 0, None)))
    for m in msgs:
        inbox.put(m)
    dec = _Decoder(inbox, max_rows=10**6)
    dec.run_in_background()
    try:
        dec.start()
        _until(lambda: len(dec.ahead) == len(msgs))
        dec.pause()
        assert list(dec.ahead) == msgs and inbox.empty()
        for m in msgs:
            got = dec.take(m)
            assert (got.topic, got.payload) == (m.topic, m.payload)
            if m.topic.endswith("/up/readings"):
                assert _decoded(got.batch) == _decoded(codec.decode_batch(m.payload))
                assert (got.batch[0] is None) == ("/bad" in m.topic)
            else:
                assert got.batch is None
        assert dec.ready == {}
        # paused: what arrives now stays in the inbox for the main thread
        late = _msg("orrery/f/late/up/readings", msgs[0].payload)
        inbox.put(late)
        time.sleep(0.05)
        assert inbox.get_nowait() is late
        # a message it never took is made on the spot, undecoded (the handler decodes it)
        assert dec.take(late).batch is None
    finally:
        dec.close()


def test_it_stops_a_group_ahead():
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    payload = codec.encode_batch(1, 1, [(s, 0, 1, 0) for s in range(100)], 0, None)
    for i in range(50):
        inbox.put(_msg(f"orrery/f/d{i}/up/readings", payload))
    dec = _Decoder(inbox, max_rows=1000)  # about ten of these batches
    dec.run_in_background()
    try:
        dec.start()
        _until(lambda: dec.rows_ahead >= 1000)
        time.sleep(0.05)
        dec.pause()
        assert 10 <= len(dec.ahead) <= 11 and inbox.qsize() == 50 - len(dec.ahead)
    finally:
        dec.close()
