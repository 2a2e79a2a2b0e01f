"""CPython-only workflow tests: hypothesis fuzzing of the validator, compiler and loader,
and the limits whose definitions are too large for the MicroPython test heap."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from unittest.mock import Mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.workflow import compiler
from shared.workflow.compiler import WorkflowError
from shared.workflow.executor import Executor
from shared.workflow.form import EV_BOOT, EV_COMMAND, EV_LINK_UP, EV_TIMER, MAX_BLOB
from shared.workflow.program import Program

REPO = Path(__file__).resolve().parents[2]
GREENHOUSE = json.loads((REPO / "cloud" / "orrery" / "sim" / "workflows" / "greenhouse.json").read_text())
PROFILE = json.loads((REPO / "hw" / "boards" / "esp32-devkitc.json").read_text())
BLOB = compiler.compile(GREENHOUSE).blob

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["temp", "idle", "cooling", "fan", "up", "down", "any", "<", "=="])
)
json_like = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids, max_size=5)
    ),
    max_leaves=30,
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _outcome(defn, profile=None):
    """Validate; on success compile and check the blob round-trips through Program."""
    try:
        compiler.validate(defn, profile)
    except WorkflowError as e:
        assert e.errors and all(isinstance(p, str) and isinstance(r, str) for p, r in e.errors)
        assert e.path == e.errors[0][0] and e.reason == e.errors[0][1]
        return False
    c = compiler.compile(defn, profile)
    p = Program(c.blob)
    assert p.hash == c.hash and len(c.blob) <= MAX_BLOB and c.heap_bytes > 0
    assert compiler.compile(defn, profile).blob == c.blob
    return True


@FUZZ
@given(json_like)
def test_any_json_like_value_only_ever_raises_workflow_error(value):
    _outcome(value)


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(GREENHOUSE) + ["extra"]), json_like, max_size=8))
def test_top_level_objects_only_ever_raise_workflow_error(d):
    _outcome(d)


def test_a_unicode_digit_is_not_a_migrate_version():
    # found by the fuzzer: "²".isdigit() is true, int("²") raises
    errs = compiler.errors({"migrate": {"²": None, "٣": {}}})
    assert ("migrate.²", "key '²' is not a version number") in errs
    assert ("migrate.٣", "key '٣' is not a version number") in errs


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_source_text_only_ever_raises_workflow_error(text):
    assert isinstance(compiler.errors(text), list)
    with pytest.raises(WorkflowError):
        compiler.validate(text)


_REPLACEMENTS = (
    json_like
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.text(alphabet="éß漢🙂aZ_- ", min_size=1, max_size=30)
    | st.sampled_from([2**29, -(2**29), 32768, -32768, 2**30, 0, -1, True, 1.5, "", None])
)


@st.composite
def mutated_greenhouse(draw):
    """The greenhouse definition with a few random edits: dropped keys, replaced values
    (other types, huge ints, unicode names), dropped or duplicated list items."""
    d = copy.deepcopy(GREENHOUSE)
    for _ in range(draw(st.integers(1, 3))):
        node = d
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            k = draw(st.sampled_from(keys))
            child = node[k]
            if isinstance(child, (dict, list)) and child and draw(st.booleans()):
                node = child
                continue
            action = draw(st.sampled_from(["drop", "replace", "duplicate"]))
            if action == "drop":
                del node[k]
            elif action == "replace":
                node[k] = draw(_REPLACEMENTS)
            elif isinstance(node, list):
                node.insert(k, copy.deepcopy(child))
            else:
                node[k] = [child, child]
            break
    return d


@FUZZ
@given(mutated_greenhouse(), st.booleans())
def test_mutated_greenhouse_only_ever_raises_workflow_error(d, with_profile):
    _outcome(d, PROFILE if with_profile else None)
    _outcome(json.dumps(d))


def test_the_mutation_fuzzer_reaches_both_outcomes():
    # Guards the fuzz tests above against testing nothing: some mutants stay valid.
    results = set()

    @settings(max_examples=200, deadline=None, database=None)
    @given(mutated_greenhouse())
    def run(d):
        results.add(_outcome(d))

    run()
    assert results == {True, False}


def _exercise(p):
    """Run a loaded program a little: nothing but ValueError (bad filter params) may escape."""
    try:
        ex = Executor(p, Mock(), lambda: 0)  # a host that accepts every call
    except ValueError:
        return
    ex.start()
    for i in range(len(p.input_names)):
        for v in (0, 30000, -30000, None, 5):
            ex.feed(i, v)
    for kind in (EV_BOOT, EV_LINK_UP, EV_TIMER, EV_COMMAND):
        for arg in range(3):
            ex.step(kind, arg)
    ex.tick()
    ex.next_deadline_ms()
    snap = ex.snapshot()
    ex.restore(snap)
    assert ex.snapshot() == snap


@FUZZ
@given(st.data())
def test_mutated_blobs_only_ever_raise_value_error(data):
    b = bytearray(BLOB)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "word", "cut", "insert"]))
        if not b:
            break
        i = data.draw(st.integers(0, len(b) - 1))
        if op == "flip":
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "word" and i + 4 <= len(b):
            b[i : i + 4] = struct.pack("<i", data.draw(st.integers(-(2**31), 2**31 - 1)))
        elif op == "cut":
            del b[i:]
        else:
            b[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        p = Program(bytes(b))
    except ValueError:
        return
    _exercise(p)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_value_error(b):
    with pytest.raises(ValueError):
        Program(b"ORWF" + b)


def test_header_word_mutations_are_all_refused_or_run():
    # Every header word set to a spread of values: refused with ValueError, or loads & runs.
    for word in range(18):
        for v in (-1, 0, 1, 2, 7, 33, 129, 257, 2**20 + 1, 2**31 - 1):
            try:
                p = Program(BLOB[: 4 + 4 * word] + struct.pack("<i", v) + BLOB[8 + 4 * word :])
            except ValueError:
                continue
            _exercise(p)


# Duplicate JSON keys (MicroPython's json keeps the last one silently).


def test_refuses_duplicate_json_keys_with_their_path():
    text = (REPO / "cloud" / "orrery" / "sim" / "workflows" / "greenhouse.json").read_text()
    text = text.replace('"initial": "idle",', '"initial": "idle", "initial": "fault",')
    text = text.replace('{"name": "cycles", "init": 0}', '{"name": "cycles", "init": 0, "init": 1}')
    assert compiler.errors(text) == [
        ("initial", "duplicate key 'initial'"),
        ("vars[0].init", "duplicate key 'init'"),
    ]


# Limits that need large definitions.


def _tiny():
    return {
        "name": "tiny",
        "version": 1,
        "initial": "a",
        "outputs": ["o"],
        "vars": [{"name": "n"}],
        "states": [
            {"name": "a", "on": [{"when": {"command": "go"}, "target": "b"}]},
            {"name": "b", "final": True},
        ],
    }


def test_refuses_over_the_transition_limit():
    d = _tiny()
    d["states"][0]["on"] *= 129
    assert compiler.errors(d) == [
        ("states[0].on", "129 transitions, over the limit of 128"),
        ("states[0].on[128]", "transition 129 is over the limit of 128 per workflow"),
    ]


def test_refuses_over_the_action_limit():
    d = _tiny()
    d["states"][0]["entry"] = [{"set_output": "o", "value": 1}] * 200
    d["states"][0]["on"][0]["actions"] = [{"add_var": "n", "value": 1}] * 57
    assert compiler.errors(d) == [
        ("states[0].on[0].actions[56]", "action 257 is over the limit of 256 per workflow"),
    ]


def test_refuses_a_compiled_form_over_the_blob_limit():
    d = _tiny()
    terms = [{"var": "n", "op": "<", "value": 3}] * 8
    d["states"][0]["on"] += [{"when": {"command": "x"}, "guard": terms}] * 60
    errs = compiler.errors(d)
    assert len(errs) == 1 and errs[0][0] == "$", errs
    assert errs[0][1].startswith("the compiled form is 1")
    assert errs[0][1].endswith(" bytes, over the 8192-byte limit")
    d["states"][0]["on"] = d["states"][0]["on"][:40]
    c = compiler.compile(d)
    assert len(c.blob) <= MAX_BLOB and Program(c.blob).name == "tiny"
