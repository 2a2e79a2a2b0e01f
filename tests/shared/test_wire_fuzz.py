"""Property tests of shared/wire/message.py and shared/wire/hmac256.py (CPython, hypothesis)."""

import hmac
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.wire import codec
from shared.wire.hmac256 import compare_digest, hmac_sha256
from shared.wire.message import _emit, _json
from shared.wire.verifier import _check_body, _key
from tools.dev.golden import protocol

KEY = bytes(range(1, 33))
DEV = "dev-01"
T0 = 1_700_000_000

DECODERS = (codec.decode_state, codec.decode_event, codec.decode_ack, codec.decode_loss, codec.decode_pull)
_VERIFIER = codec.Verifier(KEY, DEV, capacity=8)


def _valid_encodings():
    out = [bytes.fromhex(c["hex"]) for s in ("batches", "messages", "envelopes") for c in protocol.build()[s]]
    out.append(codec.sign_command(KEY, "c1", DEV, "reboot", {"a": [1, "x"]}, T0, T0 + 600))
    return out


VALID = _valid_encodings()


def _check_result(result):
    obj, err = result
    assert (obj is None) != (err is None)
    if err is not None:
        assert isinstance(err, str) and err


def _decode_everything(data, now=T0):
    for decode in DECODERS:
        _check_result(decode(data))
    _check_result(codec.decode_batch(data))
    _check_result(codec.parse_topic(data))
    _check_result(codec.verify_envelope(KEY, data))
    code, cmd, detail = _VERIFIER.check(data, now)
    assert code in codec.ACK_NAMES and isinstance(detail, str)
    if code in (codec.MALFORMED, codec.BAD_SIGNATURE):
        assert cmd is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_decoders_never_raise_on_bytes(data):
    _decode_everything(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_decoders_never_raise_on_text(text):
    _decode_everything(text)
    _decode_everything(text.encode("utf-8", "surrogatepass"))


@st.composite
def mutations(draw):
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "truncate")))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[i : i + draw(st.integers(1, 4))]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations(), st.one_of(st.none(), st.integers(0, 2 * T0)))
def test_decoders_never_raise_on_mutations(data, now):
    _decode_everything(data, now)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
_KEYS = (
    "v", "online", "fw", "wf", "wf_ver", "wf_hash", "boot", "backlog", "synced", "anchor",
    "last_seq", "extra", "seq", "up_s", "up_ms", "state", "event", "value", "id", "code",
    "detail", "first", "last", "reason", "b", "s",
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _json_values, max_size=12), st.booleans())
def test_decoders_never_raise_on_schema_shaped_json(d, v1):
    # objects with the right keys and arbitrary values reach the field checks
    if v1:
        d["v"] = 1
    _decode_everything(json.dumps(d).encode())


@st.composite
def batches(draw):
    count = draw(st.integers(1, 40))
    first_seq = draw(st.integers(0, codec.SEQ_MAX - count + 1))
    records = draw(
        st.lists(
            st.tuples(
                st.integers(0, codec.SEQ_MAX),
                st.integers(0, 999),
                st.integers(-32767, 32767),
                st.integers(0, 255),
            ),
            min_size=count,
            max_size=count,
        )
    )
    anchor = draw(
        st.none()
        | st.tuples(
            st.integers(0, codec.SEQ_MAX), st.integers(0, 999), st.integers(0, 2**32 - 1), st.integers(0, 999)
        )
    )
    flags = draw(st.sampled_from((0, codec.HISTORICAL)))
    return draw(st.integers(1, codec.SEQ_MAX)), first_seq, records, flags, anchor


@settings(max_examples=300, deadline=None)
@given(batches())
def test_batch_round_trip(args):
    boot_id, first_seq, records, flags, anchor = args
    data = codec.encode_batch(boot_id, first_seq, records, flags, anchor)
    b, err = codec.decode_batch(data)
    assert err is None
    assert (b.boot_id, b.first_seq, b.count, b.historical) == (boot_id, first_seq, len(records), bool(flags))
    assert b.anchor == anchor
    assert b.flags == flags | (0 if anchor is None else codec.SYNCED)
    assert b.records == [(first_seq + i,) + r for i, r in enumerate(records)]
    # a preallocated buffer written record by record holds the same bytes
    buf = bytearray(len(data) + 5)
    off = codec.batch_header_into(buf, 5, flags, boot_id, first_seq, len(records), anchor) + 5
    for r in records:
        off += codec.record_into(buf, off, *r)
    assert bytes(buf[5:off]) == data


@settings(max_examples=300, deadline=None)
@given(st.tuples(*[st.integers(-(2**33), 2**33)] * 4))
def test_record_into_writes_or_refuses(r):
    buf = bytearray(9)
    try:
        codec.record_into(buf, 0, *r)
    except ValueError:
        assert not (0 <= r[0] < 2**30 and 0 <= r[1] <= 999 and -32767 <= r[2] <= 32767 and 0 <= r[3] <= 255)
    else:
        b, err = codec.decode_batch(codec.encode_batch(1, 0, [r]))
        assert err is None and b.records[0][1:] == r


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, codec.SEQ_MAX),
    st.integers(0, codec.SEQ_MAX),
    st.integers(0, 999),
    st.text(st.sampled_from("abcXYZ09_.-"), min_size=1, max_size=64),
    st.one_of(st.none(), st.integers(-32767, 32767)),
    st.text(max_size=200),
)
def test_json_messages_round_trip(boot, seq, ms, name, value, detail):
    e = codec.encode_event(boot, seq, seq, ms, name, name, value)
    assert codec.decode_event(e)[0] == {
        "boot": boot, "seq": seq, "up_s": seq, "up_ms": ms, "state": name, "event": name, "value": value,
    }  # fmt: skip
    try:
        a = codec.encode_ack(name, codec.FAILED, detail)
    except ValueError:  # lone surrogates are not valid text
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in detail)
    else:
        assert json.loads(a)["detail"] == detail  # a standard JSON parser agrees
        if "\x00" in detail:  # text no database can store: the companion refuses it
            assert codec.decode_ack(a) == (
                None, "detail holds U+0000, which a database cannot store"
            )  # fmt: skip
        else:
            assert codec.decode_ack(a) == ({"id": name, "code": codec.FAILED, "detail": detail}, None)
    assert codec.decode_loss(codec.encode_loss(boot, seq, seq, "corrupt"))[0]["last"] == seq


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
            max_leaves=8,
        ),
        max_size=5,
    )
)
def test_signed_args_round_trip(args):
    try:
        env = codec.sign_command(KEY, "c1", DEV, "set_config", args, T0, T0 + 60)
    except ValueError:
        return  # lone surrogates in some string
    cmd, err = codec.verify_envelope(KEY, env)
    assert err is None and cmd["args"] == args


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=300))
def test_hmac_matches_cpython(key, msg):
    assert hmac_sha256(key, msg) == hmac.new(key, msg, "sha256").digest()


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=65, max_size=300), st.binary(max_size=100))
def test_hmac_long_keys_match_cpython(key, msg):
    assert hmac_sha256(key, msg) == hmac.new(key, msg, "sha256").digest()


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_compare_digest_matches_cpython(a, b):
    assert compare_digest(a, b) == hmac.compare_digest(a, b)


def test_golden_file_is_up_to_date():
    assert protocol.render() == protocol.OUT.read_text(encoding="utf-8")


# --- the companion's fast JSON writer and bulk signing: byte for byte the slow path -------------

_any_text = st.text(st.characters(exclude_categories=()), max_size=12)  # controls, surrogates too
_any_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _any_text | st.floats(allow_nan=False)
    | st.binary(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(_any_text | st.integers(0, 3), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


def _outcome(f, *args):
    try:
        return f(*args)
    except ValueError as e:
        return ("raised", type(e), str(e))


@settings(max_examples=800, deadline=None)
@given(_any_values)
def test_fast_json_is_the_fixed_layout_writer(v):
    assert _outcome(codec._fast, v) == _outcome(_json, v)


def _sign_slow(key, cmd_id, dev, kind, args, iat, exp, skew=0):
    # sign_command as the board's modules alone write it (the reference of the fast path)
    c = {"id": cmd_id, "dev": dev, "kind": kind, "args": args, "iat": iat, "exp": exp}
    if skew:
        c["skew"] = skew
    _check_body(c)
    body = _json(c)
    return _emit(("b", "s"), {"b": body, "s": hmac_sha256(_key(key), body.encode()).hex()})


_ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True) | _any_text
_cmds = st.lists(
    st.tuples(
        st.sampled_from([KEY, bytes(range(40, 72)), b"short"]),
        _ids,
        _ids,
        st.integers(-(2**33), 2**33) | st.sampled_from([0, True, None]),
    ),
    max_size=5,
)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["install_workflow", "reboot", "bad kind"]),
    st.dictionaries(_any_text, _any_values, max_size=4) | _any_values,
    st.integers(-1, 2**32),
    st.integers(0, 1000),
    _cmds,
)
def test_bulk_signing_is_the_slow_path_byte_for_byte(kind, args, iat, ttl, cmds):
    exp = iat + ttl
    one = [_outcome(codec.sign_command, k, i, d, kind, args, iat, exp, s) for k, i, d, s in cmds]
    assert one == [_outcome(_sign_slow, k, i, d, kind, args, iat, exp, s) for k, i, d, s in cmds]
    bulk = _outcome(codec.sign_commands, kind, args, iat, exp, cmds)
    raised = [x for x in one if isinstance(x, tuple)]
    assert bulk == (raised[0] if raised else one)
