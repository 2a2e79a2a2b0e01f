"""shared/wire/message.py, shared/wire/verifier.py, shared/wire/codec.py and shared/wire/hmac256.py, on CPython and on MicroPython."""

import binascii
import json
import struct

from _util import allocates, load_json, raises

from shared.wire import codec
from shared.wire.hmac256 import compare_digest, hmac_sha256

GOLD = load_json("tests/golden/protocol.json")
KEY = bytes(range(1, 33))
OTHER_KEY = bytes(range(2, 34))
DEV = "dev-01"
T0 = 1700000000
ANCHOR = (12, 345, T0, 678)


def _hex(b):
    return binascii.hexlify(b).decode()


def _unhex(s):
    return binascii.unhexlify(s)


def _plain(v):
    # decoded objects hold tuples where the golden JSON holds lists
    if isinstance(v, tuple) or isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        out = {}
        for k in v:
            out[k] = _plain(v[k])
        return out
    return v


# --- topics -----------------------------------------------------------------------------------


def test_topic_golden_and_round_trip():
    assert len(GOLD["topics"]) == len(codec.TOPIC_KINDS)
    for case in GOLD["topics"]:
        fleet, device, kind = case["args"]
        t = codec.topic(fleet, device, kind)
        assert t == case["topic"]
        assert codec.parse_topic(t) == ((fleet, device, kind), None)
        assert codec.parse_topic(t.encode()) == ((fleet, device, kind), None)
    assert codec.topic("f", "d", codec.CMD) == "orrery/f/d/down/cmd"


def test_topic_acl_layout():
    # the board writes only under up/ and reads only under down/
    for kind in codec.TOPIC_KINDS:
        direction = codec.topic("f", "d", kind).split("/")[3]
        assert direction == ("down" if kind == codec.CMD else "up")


def test_parse_topic_refusals():
    R = "topic is not orrery/<fleet>/<device>/<dir>/<kind>"
    long_id = "a" * 65
    cases = [
        ("", R),
        ("orrery", R),
        ("other/f/d/up/state", R),
        ("/orrery/f/d/up/state", R),
        ("orrery/f/d/up", R),
        ("orrery/f/d/up/state/x", R),
        ("orrery//d/up/state", "invalid fleet id"),
        ("orrery/f//up/state", "invalid device id"),
        ("orrery/+/d/up/state", "invalid fleet id"),
        ("orrery/f/#/up/state", "invalid device id"),
        ("orrery/f/d+/up/state", "invalid device id"),
        ("orrery/f/" + long_id + "/up/state", "invalid device id"),
        ("orrery/f/dé/up/state", "invalid device id"),
        ("orrery/f/d/sideways/state", "unknown topic kind"),
        ("orrery/f/d/down/state", "unknown topic kind"),
        ("orrery/f/d/up/cmd", "unknown topic kind"),
        ("orrery/f/d/up/", "unknown topic kind"),
        ("orrery/f/d/up/#", "unknown topic kind"),
        (b"orrery/f/d/up/\xff", "topic is not UTF-8"),
        (None, "topic must be str or bytes"),
        (42, "topic must be str or bytes"),
    ]
    for t, reason in cases:
        assert codec.parse_topic(t) == (None, reason), t
    assert codec.parse_topic("orrery/a/" + "b" * 64 + "/up/pull") == (
        ("a", "b" * 64, codec.PULL),
        None,
    )


def test_topic_encoder_errors():
    assert "fleet" in str(raises(ValueError, codec.topic, "", "d", codec.STATE))
    assert "device" in str(raises(ValueError, codec.topic, "f", "d/x", codec.STATE))
    assert "device" in str(raises(ValueError, codec.topic, "f", "+", codec.STATE))
    assert "fleet" in str(raises(ValueError, codec.topic, "#", "d", codec.STATE))
    assert "device" in str(raises(ValueError, codec.topic, "f", "a" * 65, codec.STATE))
    assert "device" in str(raises(ValueError, codec.topic, "f", 7, codec.STATE))
    assert "unknown topic kind" in str(raises(ValueError, codec.topic, "f", "d", "state"))
    assert "unknown topic kind" in str(raises(ValueError, codec.topic, "f", "d", "down/state"))
    assert codec.is_id("a.b-c_9") and not codec.is_id("a:b") and not codec.is_id("")


# --- readings batches ---------------------------------------------------------------------------


def test_batch_golden():
    assert len(GOLD["batches"]) >= 5
    for case in GOLD["batches"]:
        a = case["args"]
        data = codec.encode_batch(
            a["boot_id"], a["first_seq"], a["records"], a["flags"], a["anchor"]
        )
        assert _hex(data) == case["hex"], case["name"]
        b, err = codec.decode_batch(_unhex(case["hex"]))
        assert err is None, case["name"]
        d = case["decoded"]
        assert b.boot_id == d["boot_id"] and b.first_seq == d["first_seq"], case["name"]
        assert b.count == d["count"] and b.flags == d["flags"], case["name"]
        assert b.historical == d["historical"], case["name"]
        assert _plain(b.anchor) == d["anchor"], case["name"]
        assert _plain(b.records) == d["records"], case["name"]


def test_log_golden_bytes_and_refusals():
    assert len(GOLD["logs"]) >= 2
    for case in GOLD["logs"]:
        a = case["args"]
        data = codec.encode_log(a["boot_id"], a["first_seq"], a["lines"])
        assert _hex(data) == case["hex"], case["name"]
        m, err = codec.decode_log(_unhex(case["hex"]))
        assert err is None and _plain(m) == case["decoded"], case["name"]
    # the batch header, then up_s u32, up_ms u16, code u8, a i16, b i16 per line
    data = codec.encode_log(0x01020304, 5, [(0x11223344, 999, 6, -2, 258)])
    assert data == b"OR\x01\x00\x04\x03\x02\x01\x05\x00\x00\x00\x01\x00" + (
        b"\x44\x33\x22\x11\xe7\x03\x06\xfe\xff\x02\x01"
    )
    assert codec.decode_log(data) == (
        {"boot": 0x01020304, "first": 5, "lines": [(5, 0x11223344, 999, 6, -2, 258)]},
        None,
    )
    assert codec.decode_log(data[:-1])[1] == "24 bytes, expected 25"
    assert codec.decode_log(b"XX" + data[2:])[1] == "bad magic"
    assert codec.decode_log(data[:3] + b"\x02" + data[4:])[1] == "unknown flags 0x02"
    assert codec.decode_log(data[:10])[1] == "log shorter than its header"
    assert codec.decode_log(data[:-7] + b"\xe8\x03" + data[-5:])[1].startswith("up_ms")
    assert codec.decode_log("OR")[1] == "log must be bytes"
    assert raises(ValueError, codec.encode_log, 1, 0, [(0, 0, 1, 32768, 0)])
    assert raises(ValueError, codec.encode_log, 0, 0, [(0, 0, 1, 0, 0)])


def test_batch_bytes_by_hand():
    # the layout written out byte by byte, independently of struct
    data = codec.encode_batch(0x01020304, 0x0A0B0C0D, [(0x11223344, 999, -2, 7)], codec.HISTORICAL)
    expected = (
        b"OR\x01\x01"
        + b"\x04\x03\x02\x01"
        + b"\x0d\x0c\x0b\x0a"
        + b"\x01\x00"
        + b"\x44\x33\x22\x11"
        + b"\xe7\x03"
        + b"\xfe\xff"
        + b"\x07"
    )
    assert data == expected
    data = codec.encode_batch(1, 0, [(0, 0, 1, 0)], 0, (5, 6, 0x65000000, 7))
    assert data[3] == codec.SYNCED
    assert data[14:26] == b"\x05\x00\x00\x00\x06\x00\x00\x00\x00\x65\x07\x00"
    assert len(data) == codec.HEADER_SIZE + codec.ANCHOR_SIZE + codec.RECORD_SIZE


def test_batch_into_preallocated_buffer():
    records = [(100, 0, -5, 0), (100, 250, 32767, 1), (101, 999, -32767, 2)]
    buf = bytearray(codec.MAX_BATCH_BYTES)
    off = codec.HEADER_SIZE + codec.ANCHOR_SIZE
    for r in records:
        off += codec.record_into(buf, off, r[0], r[1], r[2], r[3])
    # the header goes in last, when the count is known
    assert codec.batch_header_into(buf, 0, codec.HISTORICAL, 9, 40, len(records), ANCHOR) == 26
    assert bytes(buf[:off]) == codec.encode_batch(9, 40, records, codec.HISTORICAL, ANCHOR)
    b, err = codec.decode_batch(memoryview(buf)[:off])
    assert err is None
    assert b.records == [(40, 100, 0, -5, 0), (41, 100, 250, 32767, 1), (42, 101, 999, -32767, 2)]
    assert b.anchor == ANCHOR and b.historical and b.flags == codec.HISTORICAL | codec.SYNCED
    assert codec.batch_header_into(buf, 0, 0, 9, 40, 3, None) == 14


def test_batch_round_trip_without_anchor():
    records = [(i, i % 1000, i * 7 - 300, i % 3) for i in range(50)]
    b, err = codec.decode_batch(codec.encode_batch(3, 77, records))
    assert err is None
    assert b.anchor is None and not b.historical and b.flags == 0 and b.count == 50
    for i in range(50):
        assert b.records[i] == (77 + i,) + records[i]
    # the lowest and highest uptime (s) of its records: what the cloud checks event times by
    assert (b.up_min, b.up_max) == (0, 49)
    b, err = codec.decode_batch(
        codec.encode_batch(3, 1, [(9, 0, 0, 0), (4, 999, 0, 0), (7, 0, 0, 0)])
    )
    assert err is None and (b.up_min, b.up_max) == (4, 9)


def _good_batch():
    return bytearray(codec.encode_batch(5, 10, [(1, 2, 3, 4), (5, 6, 7, 8)], 0, ANCHOR))


def _patched(fmt, offset, value):
    data = _good_batch()
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


def test_batch_decode_refusals():
    good = bytes(_good_batch())
    assert codec.decode_batch(good)[1] is None
    cases = [
        (None, "batch must be bytes"),
        ("OR", "batch must be bytes"),
        (b"", "batch shorter than its header"),
        (good[:13], "batch shorter than its header"),
        (b"XR" + good[2:], "bad magic"),
        (_patched("<B", 2, 2), "unsupported batch version 2"),
        (_patched("<B", 2, 0), "unsupported batch version 0"),
        (_patched("<B", 3, 6), "unknown flags 0x06"),
        (_patched("<I", 4, 0), "boot_id must be an int in [1, 1073741823], got 0"),
        (_patched("<I", 4, 1 << 30), "boot_id must be an int in [1, 1073741823], got 1073741824"),
        (_patched("<H", 12, 0), "count must be an int in [1, 512], got 0"),
        (_patched("<H", 12, 513), "count must be an int in [1, 512], got 513"),
        (
            _patched("<I", 8, (1 << 30) - 1),
            "first_seq must be an int in [0, 1073741822], got 1073741823",
        ),
        (good[:20], "20 bytes, expected 44"),
        (
            _patched("<I", 14, 1 << 30),
            "anchor up_s must be an int in [0, 1073741823], got 1073741824",
        ),
        (_patched("<H", 18, 1000), "anchor up_ms must be an int in [0, 999], got 1000"),
        (_patched("<H", 24, 1000), "anchor unix_ms must be an int in [0, 999], got 1000"),
        (good + b"\x00", "45 bytes, expected 44"),
        (good[:-1], "43 bytes, expected 44"),
        (_patched("<H", 12, 1), "44 bytes, expected 35"),
        (_patched("<B", 3, 0), "44 bytes, expected 32"),
        (
            _patched("<I", 35, 1 << 30),
            "record 1: up_s must be an int in [0, 1073741823], got 1073741824",
        ),
        (_patched("<H", 30, 1000), "record 0: up_ms must be an int in [0, 999], got 1000"),
        (
            _patched("<h", 41, -32768),
            "record 1: value must be an int in [-32767, 32767], got -32768",
        ),
    ]
    for data, reason in cases:
        assert codec.decode_batch(data) == (None, reason), reason
    # the last seq may be 2**30-1, not more
    assert codec.decode_batch(_patched("<I", 8, (1 << 30) - 2))[1] is None


def test_batch_encoder_errors():
    r = (0, 0, 0, 0)

    def msg(*args):
        return str(raises(ValueError, codec.encode_batch, *args))

    assert msg(1, 0, []) == "count must be an int in [1, 512], got 0"
    assert msg(1, 0, [r] * 513) == "count must be an int in [1, 512], got 513"
    assert msg(0, 0, [r]) == "boot_id must be an int in [1, 1073741823], got 0"
    assert msg(1 << 30, 0, [r]) == "boot_id must be an int in [1, 1073741823], got 1073741824"
    assert msg(True, 0, [r]) == "boot_id must be an int in [1, 1073741823], got True"
    assert msg(1, -1, [r]) == "first_seq must be an int in [0, 1073741823], got -1"
    assert (
        msg(1, (1 << 30) - 1, [r, r])
        == "first_seq must be an int in [0, 1073741822], got 1073741823"
    )
    assert (
        msg(1, 0, [(1 << 30, 0, 0, 0)])
        == "record 0: up_s must be an int in [0, 1073741823], got 1073741824"
    )
    assert msg(1, 0, [r, (0, 1000, 0, 0)]) == "record 1: up_ms must be an int in [0, 999], got 1000"
    assert (
        msg(1, 0, [(0, 0, -32768, 0)])
        == "record 0: value must be an int in [-32767, 32767], got -32768"
    )
    assert (
        msg(1, 0, [(0, 0, 32768, 0)])
        == "record 0: value must be an int in [-32767, 32767], got 32768"
    )
    assert (
        msg(1, 0, [(0, 0, 1.5, 0)]) == "record 0: value must be an int in [-32767, 32767], got 1.5"
    )
    assert msg(1, 0, [(0, 0, 0, 256)]) == "record 0: channel must be an int in [0, 255], got 256"
    assert msg(1, 0, [(0, 0, 0, True)]) == "record 0: channel must be an int in [0, 255], got True"
    assert msg(1, 0, [(0, 0, 0)]) == "record 0: must be (up_s, up_ms, value, channel)"
    assert msg(1, 0, "abc") == "records must be a list"
    flags = "flags may hold HISTORICAL, and SYNCED only with an anchor"
    assert msg(1, 0, [r], 4) == flags
    assert msg(1, 0, [r], codec.SYNCED) == flags
    assert msg(1, 0, [r], None) == flags
    assert codec.encode_batch(1, 0, [r], codec.SYNCED, ANCHOR) == codec.encode_batch(
        1, 0, [r], 0, ANCHOR
    )
    assert msg(1, 0, [r], 0, (1, 2, 3)) == "anchor must be (up_s, up_ms, unix_s, unix_ms)"
    assert msg(1, 0, [r], 0, (1, 1000, 3, 4)) == "anchor up_ms must be an int in [0, 999], got 1000"
    assert (
        msg(1, 0, [r], 0, (1, 0, -3, 4))
        == "anchor unix_s must be an int in [0, 4294967295], got -3"
    )
    assert (
        msg(1, 0, [r], 0, (1, 0, 1 << 32, 4))
        == "anchor unix_s must be an int in [0, 4294967295], got 4294967296"
    )
    buf = bytearray(20)
    assert (
        str(raises(ValueError, codec.record_into, buf, 12, 0, 0, 0, 0))
        == "no room for 9 bytes at offset 12"
    )
    assert (
        str(raises(ValueError, codec.record_into, buf, -1, 0, 0, 0, 0))
        == "no room for 9 bytes at offset -1"
    )
    e = raises(ValueError, codec.batch_header_into, buf, 0, 0, 1, 0, 1, ANCHOR)
    assert str(e) == "no room for 26 bytes at offset 0"
    assert codec.record_into(buf, 11, 0, 0, 0, 0) == 9


def test_event_time_ms():
    for case in GOLD["event_times"]:
        assert codec.event_time_ms(case["anchor"], case["up_s"], case["up_ms"]) == case["unix_ms"]
    # at the anchor: the anchor's wall time; before and after it: offset by the uptime delta
    assert codec.event_time_ms(ANCHOR, 12, 345) == T0 * 1000 + 678
    assert codec.event_time_ms(ANCHOR, 0, 0) == T0 * 1000 + 678 - 12345
    assert codec.event_time_ms(ANCHOR, 12, 346) == T0 * 1000 + 679
    assert codec.event_time_ms(ANCHOR, 13, 0) == T0 * 1000 + 678 + 655
    assert "up_s" in str(raises(ValueError, codec.event_time_ms, ANCHOR, -1, 0))
    assert "anchor" in str(raises(ValueError, codec.event_time_ms, None, 1, 0))


# --- sequence numbers and boot ids ---------------------------------------------------------------


def test_seq():
    s = codec.Seq(7)
    assert s.value == 7
    assert s.next() == 7 and s.next() == 8 and s.value == 9
    assert codec.Seq().next() == 0
    top = codec.Seq(codec.SEQ_MAX - 1)
    assert top.next() == codec.SEQ_MAX - 1
    assert top.value == codec.SEQ_MAX
    assert "exhausted" in str(raises(ValueError, top.next))
    assert top.value == codec.SEQ_MAX
    assert "start" in str(raises(ValueError, codec.Seq, 1 << 30))
    assert "start" in str(raises(ValueError, codec.Seq, -1))
    assert "start" in str(raises(ValueError, codec.Seq, "3"))


def test_new_boot_id():
    for case in GOLD["boot_ids"]:
        assert codec.new_boot_id(_unhex(case["rand"])) == case["boot_id"]
    assert codec.new_boot_id(b"\x78\x56\x34\x12") == 0x12345678
    assert codec.new_boot_id(b"\xff\xff\xff\xff") == codec.SEQ_MAX
    assert codec.new_boot_id(bytearray(4)) == 1
    assert "4 bytes" in str(raises(ValueError, codec.new_boot_id, b"abc"))
    assert "4 bytes" in str(raises(ValueError, codec.new_boot_id, 1234))


def mp_test_record_into_allocates_nothing():
    buf = bytearray(codec.MAX_BATCH_BYTES)
    assert not allocates(lambda: codec.record_into(buf, 26, codec.SEQ_MAX, 999, -32767, 255))
    assert bytes(buf[26:35]) == b"\xff\xff\xff\x3f\xe7\x03\x01\x80\xff"
    assert not allocates(lambda: codec.batch_header_into(buf, 0, codec.HISTORICAL, 5, 0, 1, ANCHOR))
    assert not allocates(lambda: codec.batch_header_into(buf, 0, 0, 5, 0, 1, None))
    assert codec.batch_header_into(buf, 0, 0, 5, 0, 1, None) == codec.HEADER_SIZE
    # the probe can fail: decoding builds a list
    assert allocates(lambda: codec.decode_batch(buf))


def mp_test_seq_next_allocates_nothing():
    s = codec.Seq(codec.SEQ_MAX - 3)
    assert not allocates(s.next)
    assert not allocates(s.next)
    assert s.value == codec.SEQ_MAX - 1


# --- JSON messages ------------------------------------------------------------------------------

_DECODE = {
    "state": codec.decode_state,
    "will": codec.decode_state,
    "event": codec.decode_event,
    "ack": codec.decode_ack,
    "loss": codec.decode_loss,
    "pull": codec.decode_pull,
}
_ENCODE = {
    "state": codec.encode_state,
    "will": codec.encode_will,
    "event": codec.encode_event,
    "ack": codec.encode_ack,
    "loss": codec.encode_loss,
    "pull": codec.encode_pull,
}


def test_messages_golden():
    kinds = {}
    for case in GOLD["messages"]:
        kinds[case["kind"]] = 1
        data = _ENCODE[case["kind"]](*case["args"])
        assert _hex(data) == case["hex"], case["name"]
        obj, err = _DECODE[case["kind"]](_unhex(case["hex"]))
        assert err is None, case["name"]
        assert _plain(obj) == case["decoded"], case["name"]
    assert len(kinds) == len(_ENCODE)


def test_state_round_trip():
    data = codec.encode_state(True, "1.0", "wf", 2, "ab12", 9, 100, True, ANCHOR, 99, {"rssi": -70})
    s, err = codec.decode_state(data)
    assert err is None
    assert s["online"] is True and s["anchor"] == ANCHOR and s["extra"] == {"rssi": -70}
    assert s["wf"] == "wf" and s["wf_ver"] == 2 and s["wf_hash"] == "ab12" and s["last_seq"] == 99
    w, err = codec.decode_state(codec.encode_will(9))
    assert err is None
    assert w["online"] is False and w["boot"] == 9 and w["fw"] is None and w["anchor"] is None
    # unknown keys are ignored; the decoded dict holds only known ones
    s, err = codec.decode_state(b'{"v":1,"online":false,"boot":3,"future":[1]}')
    assert err is None and "future" not in s


def test_event_ack_loss_pull_round_trip():
    e, err = codec.decode_event(codec.encode_event(1, 2, 3, 4, "s", "e", 32767))
    assert err is None
    assert e == {
        "boot": 1,
        "seq": 2,
        "up_s": 3,
        "up_ms": 4,
        "state": "s",
        "event": "e",
        "value": 32767,
    }
    for code in codec.ACK_NAMES:
        a, err = codec.decode_ack(codec.encode_ack("c:1", code, codec.ACK_NAMES[code]))
        assert err is None and a == {"id": "c:1", "code": code, "detail": codec.ACK_NAMES[code]}
    assert len(codec.ACK_NAMES) == 12 and codec.ACK_NAMES[codec.UNSAFE] == "UNSAFE"
    assert codec.decode_loss(codec.encode_loss(4, 0, 0, "corrupt")) == (
        {"boot": 4, "first": 0, "last": 0, "reason": "corrupt"},
        None,
    )
    assert codec.decode_pull(codec.encode_pull(8)) == ({"boot": 8}, None)


def test_json_decoder_refusals():
    st = '"v":1,"online":true,"fw":"1","wf":null,"wf_ver":null,"wf_hash":null,"backlog":0,"synced":false,"anchor":null,"last_seq":null'

    def state(old, new, boot=',"boot":1'):
        return ("{" + st.replace(old, new) + boot + "}").encode()

    ev = '{"v":1,"boot":1,"seq":0,"up_s":0,"up_ms":0,"state":"s","event":"e","value":0}'

    def event(old, new):
        return ev.replace(old, new).encode()

    B = "boot must be an int in [1, 1073741823], got "
    cases = [
        (codec.decode_pull, b"\xff\xfe", "payload is not UTF-8"),
        (codec.decode_pull, 12, "payload must be bytes or str"),
        (codec.decode_pull, None, "payload must be bytes or str"),
        (codec.decode_pull, b"", "payload is not JSON"),
        (codec.decode_pull, b'{"v":1,"boot":1', "payload is not JSON"),
        (codec.decode_pull, b"[" * 500, "payload is not JSON"),
        (codec.decode_pull, b"[1]", "payload is not a JSON object"),
        (codec.decode_pull, b"null", "payload is not a JSON object"),
        (codec.decode_pull, b'{"boot":1}', "unsupported version None"),
        (codec.decode_pull, b'{"v":2,"boot":1}', "unsupported version 2"),
        (codec.decode_pull, b'{"v":true,"boot":1}', "unsupported version True"),
        (codec.decode_pull, b'{"v":1.0,"boot":1}', "unsupported version 1.0"),
        (codec.decode_pull, b'{"v":"1","boot":1}', "unsupported version '1'"),
        (codec.decode_pull, b'{"v":1}', B + "None"),
        (codec.decode_pull, b'{"v":1,"boot":true}', B + "True"),
        (codec.decode_pull, b'{"v":1,"boot":0}', B + "0"),
        (codec.decode_pull, b'{"v":1,"boot":1073741824}', B + "1073741824"),
        (codec.decode_pull, b'{"v":1,"boot":"1"}', B + "'1'"),
        (codec.decode_state, b'{"v":1,"boot":1}', "online must be a bool, got None"),
        (codec.decode_state, b'{"v":1,"online":0,"boot":1}', "online must be a bool, got 0"),
        (codec.decode_state, b'{"v":1,"online":false}', B + "None"),
        (codec.decode_state, state("", "", ""), B + "None"),
        (codec.decode_state, state('"fw":"1"', '"fw":""'), "fw must be 1..64 printable chars"),
        (codec.decode_state, state('"fw":"1"', '"fw":"a\\nb"'), "fw must be 1..64 printable chars"),
        (codec.decode_state, state('"fw":"1"', '"fw":7'), "fw must be 1..64 printable chars"),
        (
            codec.decode_state,
            state('"wf":null', '"wf":"x"'),
            "wf_ver must be an int in [0, 1073741823], got None",
        ),
        (codec.decode_state, state('"wf_ver":null', '"wf_ver":1'), "wf_ver and wf_hash need wf"),
        (
            codec.decode_state,
            state('"wf":null,"wf_ver":null,"wf_hash":null', '"wf":"x","wf_ver":1,"wf_hash":"a b"'),
            "wf_hash must be 1..64 chars of [A-Za-z0-9_.:-], got 'a b'",
        ),
        (
            codec.decode_state,
            state('"backlog":0', '"backlog":-1'),
            "backlog must be an int in [0, 1073741823], got -1",
        ),
        (
            codec.decode_state,
            state('"synced":false', '"synced":true'),
            "synced must be true exactly when there is an anchor",
        ),
        (
            codec.decode_state,
            state('"anchor":null', '"anchor":[1,2,3,4]'),
            "synced must be true exactly when there is an anchor",
        ),
        (
            codec.decode_state,
            state('"synced":false,"anchor":null', '"synced":true,"anchor":[1,2,3]'),
            "anchor must be (up_s, up_ms, unix_s, unix_ms)",
        ),
        (
            codec.decode_state,
            state('"synced":false,"anchor":null', '"synced":true,"anchor":[1,2000,3,4]'),
            "anchor up_ms must be an int in [0, 999], got 2000",
        ),
        (
            codec.decode_state,
            state('"last_seq":null', '"last_seq":1.5'),
            "last_seq must be an int in [0, 1073741823], got 1.5",
        ),
        (codec.decode_state, state("", "", ',"boot":1,"extra":[]'), "extra must be a dict"),
        (
            codec.decode_state,
            state("", "", ',"boot":1,"extra":{"a":[1]}'),
            "extra['a'] must be None, bool, int or str",
        ),
        (
            codec.decode_state,
            state("", "", ',"boot":1,"extra":{"a b":1}'),
            "extra key must be 1..64 chars of [A-Za-z0-9_.-], got 'a b'",
        ),
        (
            codec.decode_event,
            event('"up_ms":0', '"up_ms":1000'),
            "up_ms must be an int in [0, 999], got 1000",
        ),
        (
            codec.decode_event,
            event('"seq":0', '"seq":-1'),
            "seq must be an int in [0, 1073741823], got -1",
        ),
        (
            codec.decode_event,
            event('"value":0', '"value":-32768'),
            "value must be an int in [-32767, 32767], got -32768",
        ),
        (
            codec.decode_event,
            event('"value":0', '"value":false'),
            "value must be an int in [-32767, 32767], got False",
        ),
        (
            codec.decode_event,
            event('"state":"s"', '"state":""'),
            "state must be 1..64 chars of [A-Za-z0-9_.-], got ''",
        ),
        (
            codec.decode_event,
            event(',"event":"e"', ""),
            "event must be 1..64 chars of [A-Za-z0-9_.-], got None",
        ),
        (codec.decode_ack, b'{"v":1,"code":0,"detail":""}', "missing id"),
        (
            codec.decode_ack,
            b'{"v":1,"id":"a b","code":0,"detail":""}',
            "id must be 1..64 chars of [A-Za-z0-9_.:-], got 'a b'",
        ),
        (
            codec.decode_ack,
            b'{"v":1,"id":"a","code":12,"detail":""}',
            "code must be an int in [0, 11], got 12",
        ),
        (
            codec.decode_ack,
            b'{"v":1,"id":"a","code":false,"detail":""}',
            "code must be an int in [0, 11], got False",
        ),
        (
            codec.decode_ack,
            b'{"v":1,"id":"a","code":0}',
            "detail must be a str of at most 200 chars",
        ),
        (
            codec.decode_loss,
            b'{"v":1,"boot":1,"first":5,"last":4,"reason":"corrupt"}',
            "last must be an int in [5, 1073741823], got 4",
        ),
        (
            codec.decode_loss,
            b'{"v":1,"boot":1,"first":5,"last":5,"reason":"gone"}',
            "reason must be store_full or corrupt, got 'gone'",
        ),
    ]
    for decode, data, reason in cases:
        assert decode(data) == (None, reason), reason
    assert codec.decode_state(state("", "")) == codec.decode_state(
        state("", "", ',"boot":1,"ignored":{}')
    )


def test_text_a_database_cannot_store_is_refused():
    # PostgreSQL's text holds no U+0000 and no lone surrogate: every JSON decoder refuses them,
    # wherever they are in what it returns, naming the field
    st = '{"v":1,"online":true,"fw":"1","wf":null,"wf_ver":null,"wf_hash":null,"boot":1,'
    st += '"backlog":0,"synced":false,"anchor":null,"last_seq":null'
    cases = [
        (codec.decode_ack, b'{"v":1,"id":"zz","code":0,"detail":"a\\u0000"}', "detail", "0000"),
        (codec.decode_ack, b'{"v":1,"id":"zz","code":0,"detail":"\\ud800"}', "detail", "D800"),
        (codec.decode_ack, b'{"v":1,"id":"zz","code":0,"detail":"x\\udfff"}', "detail", "DFFF"),
        (codec.decode_state, (st + ',"fw":"1\\ud83d"}').encode(), "fw", "D83D"),
        (codec.decode_state, (st + ',"extra":{"note":"\\u0000"}}').encode(), "extra.note", "0000"),
    ]
    for decode, data, field, code in cases:
        reason = field + " holds U+" + code + ", which a database cannot store"
        assert decode(data) == (None, reason), reason
    # everything else, non-ASCII included, is fine
    a, err = codec.decode_ack(
        '{"v":1,"id":"zz","code":0,"detail":"\u00e9 \u20ac \U0001f600"}'.encode()
    )
    assert err is None and a["detail"] == "\u00e9 \u20ac \U0001f600"
    s, err = codec.decode_state((st + ',"extra":{"note":"caf\u00e9"}}').encode())
    assert err is None and s["extra"] == {"note": "caf\u00e9"}


def test_decoders_never_raise_on_hostile_input():
    hostile = [
        b"",
        b"\x00" * 64,
        b"\xc3",
        b'{"v":1e999}',
        b'{"v":1,"boot":1e999}',
        b'{"v":1,"online":true,"boot":"1","anchor":{"a":1}}',
        b'{"v":1,"b":[],"s":{}}',
        b"{" * 200,
        b'"' + b"\\" * 99,
        bytearray(b'{"v":1}'),
        memoryview(b"OR\x01\x00"),
        "OR",
        [],
        3.5,
    ]
    v = codec.Verifier(KEY, DEV)
    for data in hostile:
        for decode in (
            codec.decode_state,
            codec.decode_event,
            codec.decode_ack,
            codec.decode_loss,
            codec.decode_pull,
        ):
            obj, err = decode(data)
            assert obj is None and isinstance(err, str) and err
        assert codec.decode_batch(data)[0] is None
        assert codec.parse_topic(data)[0] is None
        assert codec.verify_envelope(KEY, data)[0] is None
        code, cmd, detail = v.check(data, T0)
        assert code == codec.MALFORMED and cmd is None and detail


def test_json_encoder_errors():
    def msg(fn, *args):
        return str(raises(ValueError, fn, *args))

    ok = [True, "1.0", None, None, None, 1, 0, False, None, None]

    def state(i, value):
        args = list(ok)
        args[i] = value
        return msg(codec.encode_state, *args)

    assert state(0, 1) == "online must be a bool, got 1"
    assert state(1, "") == "fw must be 1..64 printable chars"
    assert state(2, "wf") == "wf_ver must be an int in [0, 1073741823], got None"
    assert state(3, 1) == "wf_ver and wf_hash need wf"
    assert state(5, 0) == "boot must be an int in [1, 1073741823], got 0"
    assert state(6, None) == "backlog must be an int in [0, 1073741823], got None"
    assert state(7, True) == "synced must be true exactly when there is an anchor"
    assert state(8, (1, 2, 3, 4)) == "synced must be true exactly when there is an anchor"
    assert state(9, -1) == "last_seq must be an int in [0, 1073741823], got -1"
    e = raises(ValueError, codec.encode_state, *(ok + [{"a": 1.5}]))
    assert str(e) == "extra['a'] must be None, bool, int or str"
    assert msg(codec.encode_will, 0) == "boot must be an int in [1, 1073741823], got 0"
    assert (
        msg(codec.encode_event, 1, 0, 0, 0, "s", "e", -32768)
        == "value must be an int in [-32767, 32767], got -32768"
    )
    assert (
        msg(codec.encode_event, 1, 0, 0, 0, "s", "e", 1.0)
        == "value must be an int in [-32767, 32767], got 1.0"
    )
    assert (
        msg(codec.encode_event, 1, 0, 0, 0, "s s", "e", 1)
        == "state must be 1..64 chars of [A-Za-z0-9_.-], got 's s'"
    )
    assert msg(codec.encode_ack, "c", 99) == "code must be an int in [0, 11], got 99"
    assert msg(codec.encode_ack, "c", True) == "code must be an int in [0, 11], got True"
    assert (
        msg(codec.encode_ack, "c", codec.OK, "x" * 201)
        == "detail must be a str of at most 200 chars"
    )
    assert (
        msg(codec.encode_ack, "", codec.OK) == "id must be 1..64 chars of [A-Za-z0-9_.:-], got ''"
    )
    assert (
        msg(codec.encode_loss, 1, 5, 4, "corrupt")
        == "last must be an int in [5, 1073741823], got 4"
    )
    assert (
        msg(codec.encode_loss, 1, 5, 5, "full")
        == "reason must be store_full or corrupt, got 'full'"
    )
    assert msg(codec.encode_pull, None) == "boot must be an int in [1, 1073741823], got None"


# --- HMAC-SHA256 --------------------------------------------------------------------------------

_RFC4231 = [
    # (case, key, data, HMAC-SHA256)
    (1, b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (2, b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (3, b"\xaa" * 20, b"\xdd" * 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (4, bytes(range(1, 26)), b"\xcd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (6, b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (7, b"\xaa" * 131,
     b"This is a test using a larger than block-size key and a larger than block-size data."
     b" The key needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]  # fmt: skip


def test_hmac_rfc4231():
    for case, key, data, mac in _RFC4231:
        assert _hex(hmac_sha256(key, data)) == mac, case
    assert hmac_sha256(bytearray(b"Jefe"), memoryview(b"what do ya want for nothing?")) == _unhex(
        _RFC4231[1][3]
    )


def test_hmac_errors_and_compare():
    assert "key" in str(raises(TypeError, hmac_sha256, "Jefe", b"x"))
    assert "msg" in str(raises(TypeError, hmac_sha256, b"Jefe", "x"))
    mac = hmac_sha256(b"k", b"m")
    assert compare_digest(mac, bytes(mac))
    assert not compare_digest(mac, mac[:31] + bytes([mac[31] ^ 1]))
    assert not compare_digest(mac, bytes([mac[0] ^ 0x80]) + mac[1:])
    assert not compare_digest(mac, mac[:31])
    assert compare_digest(b"", b"")
    assert "a" in str(raises(TypeError, compare_digest, "x", b"x"))


# --- signed command envelopes --------------------------------------------------------------------


def _sign(cmd_id="c1", kind="reboot", args=None, iat=T0, exp=T0 + 600, dev=DEV, key=KEY, skew=0):
    a = {} if args is None else args
    if skew:
        return codec.sign_command(key, cmd_id, dev, kind, a, iat, exp, skew)
    return codec.sign_command(key, cmd_id, dev, kind, a, iat, exp)


def _envelope(body, sig):
    # an envelope around any body text, signed or not, built by hand
    out = '{"v":1,"b":' + json.dumps(body)
    if sig is not None:
        out += ',"s":"' + sig + '"'
    return (out + "}").encode()


def _cd(result):
    # (code, detail) of a Verifier.check result
    return result[0], result[2]


def test_envelope_golden():
    for case in GOLD["envelopes"]:
        data = codec.sign_command(_unhex(case["key"]), *case["args"])
        assert _hex(data) == case["hex"], case["name"]
        assert codec.verify_envelope(_unhex(case["key"]), _unhex(case["hex"])) == (
            case["decoded"],
            None,
        ), case["name"]


def test_envelope_layout():
    env = json.loads(_sign(args={"x": [1, "é"]}))
    body = env["b"]
    assert _hex(hmac_sha256(KEY, body.encode())) == env["s"]
    assert json.loads(body) == {
        "id": "c1", "dev": DEV, "kind": "reboot", "args": {"x": [1, "é"]}, "iat": T0, "exp": T0 + 600,
    }  # fmt: skip


def test_verify_envelope():
    env = _sign()
    cmd, err = codec.verify_envelope(KEY, env)
    assert err is None and cmd["kind"] == "reboot" and cmd["iat"] == T0
    assert codec.verify_envelope(OTHER_KEY, env) == (None, "BAD_SIGNATURE: signature mismatch")
    tampered = env.replace(b"reboot", b"cancel")
    assert codec.verify_envelope(KEY, tampered) == (None, "BAD_SIGNATURE: signature mismatch")
    body = json.loads(env)["b"]
    assert codec.verify_envelope(KEY, _envelope(body, None)) == (None, "BAD_SIGNATURE: unsigned")
    assert "key" in str(raises(ValueError, codec.verify_envelope, b"short", env))


def test_verifier_accepts_valid_command():
    v = codec.Verifier(KEY, DEV)
    code, cmd, detail = v.check(_sign(args={"n": 1}), T0 + 10)
    assert (code, detail) == (codec.OK, "")
    assert cmd == {
        "id": "c1",
        "dev": DEV,
        "kind": "reboot",
        "args": {"n": 1},
        "iat": T0,
        "exp": T0 + 600,
    }
    # exactly at exp and exactly at the skew limit are still fine
    assert v.check(_sign("c2"), T0 + 600)[0] == codec.OK
    assert v.check(_sign("c3", iat=T0 + 300, exp=T0 + 900), T0)[0] == codec.OK


def test_verifier_signature_refusals():
    v = codec.Verifier(KEY, DEV)
    env = _sign()
    body = json.loads(env)["b"]
    sig = json.loads(env)["s"]
    assert v.check(_envelope(body, None), T0) == (codec.BAD_SIGNATURE, None, "unsigned")
    assert v.check(env.replace(b'"reboot', b'"cancel'), T0) == (
        codec.BAD_SIGNATURE,
        None,
        "signature mismatch",
    )
    assert v.check(_sign(key=OTHER_KEY), T0) == (codec.BAD_SIGNATURE, None, "signature mismatch")
    assert v.check(_envelope(body, sig[:-1]), T0)[0:2] == (codec.BAD_SIGNATURE, None)
    assert v.check(_envelope(body, "z" * 64), T0) == (
        codec.BAD_SIGNATURE,
        None,
        "signature is not hex",
    )
    assert v.check(_envelope(body, sig.upper()), T0)[0] == codec.OK  # hex case does not matter
    assert v.state()["ids"] == [["c1", sig[:32], T0 + 600]]


def test_verifier_malformed():
    v = codec.Verifier(KEY, DEV)

    def signed(body):
        return _envelope(body, _hex(hmac_sha256(KEY, body.encode())))

    good = json.loads(_sign())["b"]
    cases = [
        (b"not json", "payload is not JSON"),
        (b'{"v":1,"b":5,"s":"00"}', "b must be a string"),
        (b'{"v":2,"b":"{}","s":"00"}', "unsupported version 2"),
        (signed("[]"), "body: not a JSON object"),
        (
            signed(good.replace('"iat":', '"iat":-')),
            "body: iat must be an int in [0, 4294967295], got -1700000000",
        ),
        (
            signed(good.replace('"exp":' + str(T0 + 600), '"exp":true')),
            "body: exp must be an int in [1700000001, 4294967295], got True",
        ),
        (
            signed(good.replace('"exp":' + str(T0 + 600), '"exp":' + str(T0))),
            "body: exp must be an int in [1700000001, 4294967295], got 1700000000",
        ),
        (signed(good.replace('"args":{}', '"args":[]')), "body: args must be a dict"),
        (
            signed(good.replace('"c1"', '"c 1"')),
            "body: id must be 1..64 chars of [A-Za-z0-9_.:-], got 'c 1'",
        ),
        (
            signed(good.replace('"kind":"reboot"', '"kind":""')),
            "body: kind must be 1..64 chars of [A-Za-z0-9_.-], got ''",
        ),
        (
            signed(good.replace('"dev":"dev-01"', '"dev":null')),
            "body: dev must be 1..64 chars of [A-Za-z0-9_.-], got None",
        ),
        (_sign(dev="dev-02"), "wrong device"),
    ]
    for env, detail in cases:
        assert v.check(env, T0) == (codec.MALFORMED, None, detail), detail
    code, cmd, detail = v.check(signed("{"), T0)  # the parser's own message follows
    assert (code, cmd) == (codec.MALFORMED, None) and detail.startswith("body: ")
    assert v.state()["ids"] == []


def test_verifier_time_window():
    v = codec.Verifier(KEY, DEV)
    assert _cd(v.check(_sign("a", exp=T0 + 600), T0 + 601)) == (codec.EXPIRED, "expired")
    week = 7 * 24 * 3600
    assert _cd(v.check(_sign("b", exp=T0 + week + 1), T0)) == (
        codec.EXPIRED,
        "lifetime over 7 days",
    )
    assert v.check(_sign("c", exp=T0 + week), T0)[0] == codec.OK
    code, cmd, detail = v.check(_sign("d", iat=T0 + 301, exp=T0 + 900), T0)
    assert (code, detail) == (codec.EXPIRED, "issued in the future") and cmd["id"] == "d"
    assert [e[0] for e in v.state()["ids"]] == ["c"]


def test_verifier_duplicate_and_replay():
    v = codec.Verifier(KEY, DEV)
    env = _sign("x1", args={"a": 1})
    assert v.check(env, T0)[0] == codec.OK
    code, cmd, detail = v.check(env, T0 + 5)
    assert (code, detail) == (codec.DUPLICATE, "already accepted") and cmd["args"] == {"a": 1}
    code, cmd, detail = v.check(_sign("x1", args={"a": 2}), T0 + 5)
    assert (code, detail) == (codec.REPLAYED, "id reused with another body") and cmd["args"] == {
        "a": 2
    }
    # still recognised after being replayed
    assert v.check(env, T0 + 6)[0] == codec.DUPLICATE


def test_verifier_unknown_kind_is_not_recorded():
    v = codec.Verifier(KEY, DEV)
    code, cmd, detail = v.check(_sign("k1", kind="launch"), T0)
    assert (code, detail) == (codec.UNKNOWN_KIND, "unknown kind") and cmd["kind"] == "launch"
    assert v.check(_sign("k1", kind="launch"), T0)[0] == codec.UNKNOWN_KIND
    assert v.state()["ids"] == []
    for kind in codec.KINDS:
        assert v.check(_sign("k-" + kind, kind=kind), T0)[0] == codec.OK


def test_verifier_busy_and_eviction():
    v = codec.Verifier(KEY, DEV, capacity=2)
    assert v.check(_sign("a", exp=T0 + 100), T0)[0] == codec.OK
    assert v.check(_sign("b", exp=T0 + 200), T0)[0] == codec.OK
    assert _cd(v.check(_sign("c", exp=T0 + 300), T0 + 50)) == (codec.BUSY, "replay table full")
    # "a" is kept until an issue time past its exp is seen: the wall clock alone frees nothing
    assert v.check(_sign("c", exp=T0 + 300), T0 + 101)[0] == codec.BUSY
    assert v.check(_sign("a", exp=T0 + 100), T0 + 100)[0] == codec.DUPLICATE
    assert v.check(_sign("c", iat=T0 + 100, exp=T0 + 300), T0 + 101)[0] == codec.BUSY
    assert v.check(_sign("c", iat=T0 + 101, exp=T0 + 300), T0 + 101)[0] == codec.OK
    # once forgotten, a replay of "a" is refused: its exp is older than the newest command seen
    assert _cd(v.check(_sign("a", exp=T0 + 100), T0 + 101)) == (
        codec.EXPIRED,
        "older than the newest command seen",
    )
    assert [e[0] for e in v.state()["ids"]] == ["b", "c"]


def test_verifier_without_wall_time():
    v = codec.Verifier(KEY, DEV)
    # no time yet: anything unexpired relative to the highest accepted iat (none yet) passes
    assert v.check(_sign("a", iat=T0, exp=T0 + 600), None)[0] == codec.OK
    assert _cd(v.check(_sign("old", iat=T0 - 9000, exp=T0 - 1), None)) == (
        codec.EXPIRED,
        "older than the newest command seen",
    )
    # a future iat cannot be refused without a clock; it raises the lower bound
    assert v.check(_sign("b", iat=T0 + 5000, exp=T0 + 5600), None)[0] == codec.OK
    assert v.state()["hi"] == T0 + 5000
    assert v.check(_sign("c", iat=T0 + 100, exp=T0 + 700), None)[0] == codec.EXPIRED
    assert [e[0] for e in v.state()["ids"]] == ["b"]  # "a" was evicted: its exp is behind
    # a wall clock behind the lower bound does not move time backwards
    assert v.check(_sign("d", iat=T0, exp=T0 + 700), T0)[0] == codec.EXPIRED
    assert "now" in str(raises(ValueError, v.check, _sign("e"), 1.5))


def test_verifier_persistence():
    v = codec.Verifier(KEY, DEV, capacity=4)
    env = _sign("p1", exp=T0 + 900)
    assert v.check(env, T0)[0] == codec.OK
    assert v.check(_sign("p2", iat=T0 + 10, exp=T0 + 100), T0 + 20)[0] == codec.OK
    saved = json.loads(json.dumps(v.state()))
    w = codec.Verifier(KEY, DEV, capacity=4)
    w.load(saved)
    assert w.state() == v.state()
    assert w.check(env, None)[0] == codec.DUPLICATE
    assert w.check(_sign("p1", args={"z": 0}, exp=T0 + 900), None)[0] == codec.REPLAYED
    assert _cd(w.check(_sign("p0", iat=T0 - 100, exp=T0 + 5), None)) == (
        codec.EXPIRED,
        "older than the newest command seen",
    )

    def bad(state):
        return str(raises(ValueError, w.load, state))

    assert bad(None) == "verifier state must be a dict with v=1, hi and ids"
    assert bad({"v": 2, "hi": 0, "ids": []}) == "verifier state must be a dict with v=1, hi and ids"
    assert bad({"v": 1, "ids": []}) == "verifier state must be a dict with v=1, hi and ids"
    assert bad({"v": 1, "hi": 0}) == "verifier state must be a dict with v=1, hi and ids"
    assert bad({"v": 1, "hi": 0, "ids": None}).startswith("bad verifier state: ")
    assert (
        bad({"v": 1, "hi": -1, "ids": []})
        == "bad verifier state: hi must be an int in [0, 4294967295], got -1"
    )
    assert (
        bad({"v": 1, "hi": 0, "ids": [["a", "0" * 32, 1]] * 5})
        == "bad verifier state: more ids than capacity"
    )
    assert (
        bad({"v": 1, "hi": 0, "ids": [["a", "0" * 30, 1]]})
        == "bad verifier state: digest must be 32 hex chars"
    )
    assert bad({"v": 1, "hi": 0, "ids": [["a", "0" * 31, 1]]}).startswith("bad verifier state: ")
    assert bad({"v": 1, "hi": 0, "ids": [["a", "0" * 32]]}).startswith("bad verifier state: ")
    assert bad({"v": 1, "hi": 0, "ids": [["a b", "0" * 32, 1]]}).startswith(
        "bad verifier state: id must be"
    )
    assert bad({"v": 1, "hi": 0, "ids": [["a", "0" * 32, 1.5]]}).startswith(
        "bad verifier state: exp must be"
    )
    assert w.state() == v.state()  # a refused load changes nothing


def test_sign_command_errors():
    def msg(*args):
        return str(raises(ValueError, codec.sign_command, *args))

    assert msg(b"short", "c", DEV, "reboot", {}, 1, 2) == "key must be at least 16 bytes"
    assert msg("k" * 32, "c", DEV, "reboot", {}, 1, 2) == "key must be at least 16 bytes"
    assert (
        msg(KEY, "", DEV, "reboot", {}, 1, 2) == "id must be 1..64 chars of [A-Za-z0-9_.:-], got ''"
    )
    assert (
        msg(KEY, "c/1", DEV, "reboot", {}, 1, 2)
        == "id must be 1..64 chars of [A-Za-z0-9_.:-], got 'c/1'"
    )
    assert (
        msg(KEY, "c", "d+", "reboot", {}, 1, 2)
        == "dev must be 1..64 chars of [A-Za-z0-9_.-], got 'd+'"
    )
    assert msg(KEY, "c", DEV, "", {}, 1, 2) == "kind must be 1..64 chars of [A-Za-z0-9_.-], got ''"
    assert msg(KEY, "c", DEV, "reboot", [], 1, 2) == "args must be a dict"
    assert msg(KEY, "c", DEV, "reboot", {}, 2, 2) == "exp must be an int in [3, 4294967295], got 2"
    assert (
        msg(KEY, "c", DEV, "reboot", {}, True, 2)
        == "iat must be an int in [0, 4294967295], got True"
    )
    assert msg(KEY, "c", DEV, "reboot", {"x": 0.5}, 1, 2) == (
        "cannot encode a float (only None, bool, int, str, list, dict)"
    )
    assert msg(KEY, "c", DEV, "reboot", {1: 2}, 1, 2) == "dict keys must be str, got 1"
    assert str(raises(ValueError, codec.Verifier, b"k", DEV)) == "key must be at least 16 bytes"
    assert "device" in str(raises(ValueError, codec.Verifier, KEY, "a/b"))
    assert "capacity" in str(raises(ValueError, codec.Verifier, KEY, DEV, 0))


def test_error_texts_come_from_protomsg():
    # shared.wire.message raises with shared.wire.errors's texts (imported only to raise)
    e = raises(ValueError, codec.batch_header_into, bytearray(40), 0, 0, 1, 0, 1, (1, 1000, 0, 0))
    assert str(e) == "anchor up_ms must be an int in [0, 999], got 1000"
    e = raises(ValueError, codec.topic, "f", "a b", codec.STATE)
    assert str(e) == "device must be 1..64 chars of [A-Za-z0-9_.-], got 'a b'"
    e = raises(ValueError, codec.encode_ack, "a b", 0)
    assert str(e) == "id must be 1..64 chars of [A-Za-z0-9_.:-], got 'a b'"
    e = raises(ValueError, codec.encode_loss, 1, 0, 0, "gone")
    assert str(e) == "reason must be store_full or corrupt, got 'gone'"
    assert str(raises(ValueError, codec.encode_ack, None, 0, 5)) == (
        "detail must be a str of at most 200 chars"
    )
