"""Workflow ``safe_states`` and ``safe_wait_s``: validation and their place in the compiled
state flags (on both runtimes; a module of its own for MicroPython's heap: test_workflow's
other compiles fill it)."""

from shared.workflow.compiler import compile, errors
from shared.workflow.program import Program


def base():
    return {
        "name": "tiny",
        "version": 1,
        "outputs": ["fan"],
        "initial": "a",
        "states": [
            {"name": "a", "entry": [{"set_output": "fan", "value": 0}],
             "on": [{"when": {"command": "go"}, "target": "b"}]},
            {"name": "b", "entry": [{"set_output": "fan", "value": 1}],
             "on": [{"when": {"command": "stop"}, "target": "a"},
                    {"when": {"command": "end"}, "target": "c"}]},
            {"name": "c", "final": True},
        ],
    }  # fmt: skip


def check(d, expected):
    got = errors(d)
    assert got == expected, got


def test_safe_states_mark_states_and_carry_the_wait():
    d = base()
    d["safe_states"] = ["c", "a"]
    p = Program(compile(d).blob)
    assert [p.states[s * 7 + 6] for s in range(3)] == [2 | 600 << 8, 600 << 8, 3 | 600 << 8]
    d["safe_wait_s"] = 30
    assert Program(compile(d).blob).states[6] == 2 | 30 << 8
    del d["safe_states"], d["safe_wait_s"]
    assert Program(compile(d).blob).states[6] == 0, "no safe_states: every state is safe"


def test_refuses_bad_safe_states():
    d = base()
    d["safe_states"] = ["a", "zz", "a"]
    d["safe_wait_s"] = 0
    check(
        d,
        [
            ("safe_wait_s", "0 is outside the safe wait range (s) [1, 86400]"),
            ("safe_states[1]", "unknown state 'zz' (declared: a, b, c)"),
            ("safe_states[2]", "duplicate state 'a'"),
        ],
    )
    d["safe_states"] = []
    d["safe_wait_s"] = 86401
    check(
        d,
        [
            ("safe_states", "name at least one state (without it every state is safe)"),
            ("safe_wait_s", "86401 is outside the safe wait range (s) [1, 86400]"),
        ],
    )
    d["safe_states"] = "a"
    d["safe_wait_s"] = 5
    check(d, [("safe_states", "expected an array, got string")])
    del d["safe_states"]
    check(d, [("safe_wait_s", "needs safe_states (the states the board waits for)")])
