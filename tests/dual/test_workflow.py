"""Workflow validation (one test per refusal kind) and compilation.

The loader (shared.workflow.program.Program) is tested in test_executor, on the golden blobs.

No gc.collect() here and little allocation: see test_executor's docstring.
"""

from _util import REPO, load_json, raises

from shared.workflow.compiler import WorkflowError, compile, errors, validate
from shared.workflow.form import MAX_SOURCE
from shared.workflow.program import Program

PROFILE = load_json("hw/boards/esp32-devkitc.json")
GOLDEN = load_json("tests/golden/executor.json")["workflows"]


def base():
    """A small valid definition; each test breaks one thing."""
    return {
        "name": "tiny",
        "version": 2,
        "inputs": [
            {
                "name": "t",
                "channel": "temp",
                "period_ms": 1000,
                "filters": [{"type": "ema", "alpha": 0.5}],
            }
        ],
        "outputs": ["fan"],
        "vars": [{"name": "n", "init": 0}],
        "timers": ["tm"],
        "events": ["ev"],
        "initial": "a",
        "states": [
            {
                "name": "a",
                "entry": [{"set_output": "fan", "value": 0}],
                "on": [
                    {
                        "when": {"above": "t", "level": 100},
                        "target": "b",
                        "guard": {"var": "n", "op": "<", "value": 3},
                        "actions": [{"add_var": "n", "value": 1}, {"publish": "ev"}],
                    }
                ],
            },
            {
                "name": "b",
                "entry": [{"start_timer": "tm", "ms": 1000}],
                "on": [
                    {"when": {"timer": "tm"}, "target": "a"},
                    {"when": {"command": "stop"}, "target": "c"},
                ],
            },
            {"name": "c", "final": True},
        ],
        "migrate": {"1": {"old": "a"}},
    }


def check(d, expected, profile=None):
    got = errors(d, profile)
    assert got == expected, got


def on(d, state=0, i=0):
    return d["states"][state]["on"][i]


def test_base_is_valid():
    assert errors(base()) == []
    assert errors(base(), PROFILE) == []
    assert validate(base(), PROFILE) is None


def test_refuses_wrong_types():
    d = base()
    d["version"] = "2"
    d["states"][2]["final"] = 1
    on(d)["when"]["level"] = 100.5
    d["outputs"] = "fan"
    d["vars"][0]["init"] = True
    check(
        d,
        [
            ("version", "expected an integer, got string"),
            ("outputs", "expected an array, got string"),
            ("vars[0].init", "expected an integer, got boolean"),
            ("states[0].entry[0].set_output", "unknown output 'fan' (none declared)"),
            ("states[0].on[0].when.level", "expected an integer, got number"),
            ("states[2].final", "expected true or false, got integer"),
            (
                "states[2]",
                "state 'c' is not final and has no transition to another state (no way out)",
            ),
        ],
    )
    check([], [("$", "expected an object, got array")])


def test_refuses_missing_keys():
    d = base()
    del d["initial"]
    del d["inputs"][0]["period_ms"]
    del on(d, 1, 0)["when"]
    check(
        d,
        [
            ("initial", "missing required key"),
            ("inputs[0].period_ms", "missing required key"),
            ("states[1].on[0].when", "missing required key"),
        ],
    )


def test_refuses_unknown_keys_and_suggests_the_typo():
    d = base()
    d["descripton"] = "x"
    w = on(d)["when"]
    w["levle"] = w.pop("level")
    on(d, 1, 1)["tagret"] = "c"
    check(
        d,
        [
            ("descripton", "unknown key 'descripton' (did you mean 'description'?)"),
            ("states[0].on[0].when.level", "missing required key"),
            ("states[0].on[0].when.levle", "unknown key 'levle' (did you mean 'level'?)"),
            ("states[1].on[1].tagret", "unknown key 'tagret' (did you mean 'target'?)"),
        ],
    )


def test_refuses_unknown_state():
    d = base()
    on(d, 1, 1)["target"] = "zz"
    check(d, [("states[1].on[1].target", "unknown state 'zz' (declared: a, b, c)")])
    d = base()
    d["initial"] = "q"
    check(d, [("initial", "unknown state 'q' (declared: a, b, c)")])


def test_refuses_unknown_input():
    d = base()
    on(d)["when"]["above"] = "x"
    check(d, [("states[0].on[0].when.above", "unknown input 'x' (declared: t)")])


def test_refuses_unknown_output():
    d = base()
    d["states"][0]["entry"][0]["set_output"] = "pump"
    check(d, [("states[0].entry[0].set_output", "unknown output 'pump' (declared: fan)")])


def test_refuses_unknown_timer():
    d = base()
    on(d, 1, 0)["when"]["timer"] = "tx"
    check(d, [("states[1].on[0].when.timer", "unknown timer 'tx' (declared: tm)")])


def test_refuses_unknown_var():
    d = base()
    on(d)["guard"]["var"] = "m"
    on(d)["actions"][0]["value"] = {"var": "m"}
    check(
        d,
        [
            ("states[0].on[0].guard.var", "unknown var 'm' (declared: n)"),
            ("states[0].on[0].actions[0].value.var", "unknown var 'm' (declared: n)"),
        ],
    )


def test_refuses_unknown_event():
    d = base()
    on(d)["actions"][1]["publish"] = "boom"
    check(d, [("states[0].on[0].actions[1].publish", "unknown event 'boom' (declared: ev)")])


def test_refuses_duplicate_names():
    d = base()
    d["states"].append({"name": "b", "final": True})
    d["inputs"].append({"name": "t", "channel": "humidity", "period_ms": 100})
    d["vars"].append({"name": "n"})
    d["timers"].append("tm")
    d["events"].append("ev")
    d["outputs"].append("fan")
    check(
        d,
        [
            ("inputs[1].name", "duplicate input name 't' (first at inputs[0].name)"),
            ("outputs[1]", "duplicate output name 'fan' (first at outputs[0])"),
            ("vars[1].name", "duplicate var name 'n' (first at vars[0].name)"),
            ("timers[1]", "duplicate timer name 'tm' (first at timers[0])"),
            ("events[1]", "duplicate event name 'ev' (first at events[0])"),
            ("states[3].name", "duplicate state name 'b' (first at states[1].name)"),
        ],
    )


def test_refuses_unreachable_states():
    d = base()
    d["states"].append({"name": "lost", "on": [{"when": {"boot": True}, "target": "a"}]})
    check(d, [("states[3]", "state 'lost' is unreachable from the initial state 'a'")])


def test_refuses_a_state_with_no_way_out():
    d = base()
    b = d["states"][1]
    b["on"] = [
        {"when": {"timer": "tm"}, "target": "b"},
        {"when": {"command": "stop"}, "actions": [{"cancel_timer": "tm"}]},
    ]
    check(
        d,
        [
            (
                "states[1]",
                "state 'b' is not final and has no transition to another state (no way out)",
            ),
            ("states[2]", "state 'c' is unreachable from the initial state 'a'"),
        ],
    )


def test_refuses_a_state_only_a_timer_that_nothing_starts_can_leave():
    # b's only way out is its timer; with nothing starting it, the board stays in b forever
    d = base()
    d["states"][1]["on"] = [{"when": {"timer": "tm"}, "target": "c"}]
    d["states"][1]["entry"] = [{"set_output": "fan", "value": 1}]
    stuck = (
        "states[1]",
        "state 'b' can only be left by timer 'tm', which nothing starts while the workflow is in "
        "it (it would stay there forever)",
    )
    check(d, [stuck])
    # started elsewhere but canceled on the way in: the same
    d["states"][0]["exit"] = [{"start_timer": "tm", "ms": 500}]
    on(d, 0, 0)["actions"] = [{"cancel_timer": "tm"}]
    check(d, [stuck])
    # started on the way in (the exit of a, a transition's actions): it fires, b is left
    on(d, 0, 0)["actions"] = []
    check(d, [])
    d["states"][0]["exit"] = []
    on(d, 0, 0)["actions"] = [{"start_timer": "tm", "ms": 500}]
    check(d, [])
    # started by an internal transition of b itself
    on(d, 0, 0)["actions"] = []
    d["states"][1]["on"].append(
        {"when": {"command": "arm"}, "actions": [{"start_timer": "tm", "ms": 500}]}
    )
    check(d, [])
    # another way out that is not a timer: not stuck
    d["states"][1]["on"] = [
        {"when": {"timer": "tm"}, "target": "c"},
        {"when": {"command": "stop"}, "target": "a"},
    ]
    check(d, [])


def test_refuses_final_states_with_transitions_or_exit_actions():
    d = base()
    c = d["states"][2]
    c["on"] = [{"when": {"command": "go"}, "target": "a"}]
    c["exit"] = [{"set_output": "fan", "value": 1}]
    check(
        d,
        [
            ("states[2].exit", "a final state is never left, so exit actions never run"),
            ("states[2].on", "a final state has no transitions"),
        ],
    )


def test_refuses_what_the_board_lacks():
    d = base()
    d["inputs"][0]["channel"] = "pressure"
    d["outputs"].append("pump")
    check(
        d,
        [
            (
                "inputs[0].channel",
                "board 'esp32-devkitc' has no channel 'pressure' (channels: "
                "adc0, adc1, adc2, adc3, humidity, temp)",
            ),
            (
                "outputs[1]",
                "board 'esp32-devkitc' has no output 'pump' (outputs: fan, led, relay1, relay2)",
            ),
        ],
        PROFILE,
    )
    assert errors(d) == []  # without a profile nothing is checked against a board
    check(
        base(),
        [("profile.channels", "expected an object or array, got null")],
        {"outputs": ["fan"]},
    )
    check(
        base(),
        [("outputs[0]", "board (unnamed) has no output 'fan' (outputs: )")],
        {"channels": ["temp"], "outputs": []},
    )


def test_refuses_constants_out_of_range():
    d = base()
    on(d)["when"]["level"] = 40000
    on(d)["guard"] = [
        {"var": "n", "op": "<", "value": 536870912},
        {"input": "t", "op": ">=", "value": -32768},
    ]
    d["vars"][0]["init"] = -(2**40)
    d["states"][0]["entry"][0]["value"] = 32768
    d["states"][1]["entry"][0]["ms"] = 0
    d["inputs"][0]["period_ms"] = 9
    check(
        d,
        [
            ("inputs[0].period_ms", "9 is outside the duration range (ms) [10, 536870911]"),
            ("vars[0].init", "-1099511627776 is outside the var range [-536870911, 536870911]"),
            ("states[0].entry[0].value", "32768 is outside the S16 range [-32767, 32767]"),
            ("states[0].on[0].when.level", "40000 is outside the S16 range [-32767, 32767]"),
            (
                "states[0].on[0].guard[0].value",
                "536870912 is outside the var range [-536870911, 536870911]",
            ),
            ("states[0].on[0].guard[1].value", "-32768 is outside the S16 range [-32767, 32767]"),
            ("states[1].entry[0].ms", "0 is outside the duration range (ms) [1, 536870911]"),
        ],
    )
    d = base()
    d["version"] = 2**20 + 1
    d["migrate"] = {}
    check(d, [("version", "1048577 is outside the version range [1, 1048576]")])


def test_refuses_bad_filters_with_the_filter_path():
    d = base()
    d["inputs"][0]["filters"] = [
        {"type": "ema", "alpha": 2},
        {"type": "biquad", "coeffs": [2.5, 0, 0, 0, 0]},
        {"type": "median", "window": 4},
        {"type": "kalman"},
        {"type": "ema", "alpha": 0.5, "beta": 1},
        "ema",
        {"type": "biquad", "design": "lowpass", "cutoff_hz": 0.002},
    ]
    d["inputs"][0]["period_ms"] = 1000
    check(
        d,
        [
            ("inputs[0].filters[0].alpha", "2 is outside (0, 1]"),
            ("inputs[0].filters[1].coeffs[0]", "b0=2.5 does not fit Q14 [-2, 2)"),
            ("inputs[0].filters[2].window", "4 must be odd for median"),
            ("inputs[0].filters[3].type", "unknown filter 'kalman'"),
            ("inputs[0].filters[4]", "unknown key 'beta'"),
            ("inputs[0].filters[5]", "expected an object, got string"),
            (
                "inputs[0].filters[6].cutoff_hz",
                "0.002 Hz sampled every 1000 ms leaves a dead band of 4116 LSB: the output can "
                "settle that far from a constant input (at most 16 LSB); sample this input less "
                "often (a longer period_ms) or use another filter (ema, lowpass)",
            ),
        ],
    )


def test_refuses_crosses_with_for_ms():
    d = base()
    on(d)["when"] = {"crosses": "t", "level": 5, "direction": "up", "for_ms": 100}
    check(
        d,
        [
            (
                "states[0].on[0].when.for_ms",
                "crosses fires on one sample; for_ms applies to above and below only",
            )
        ],
    )
    on(d)["when"] = {"crosses": "t", "level": 5, "direction": "sideways"}
    check(d, [("states[0].on[0].when.direction", "expected 'up', 'down' or 'any', got 'sideways'")])


def test_refuses_bad_triggers_guards_and_actions():
    d = base()
    on(d)["when"] = {"above": "t", "below": "t", "level": 1}
    on(d, 1, 1)["when"] = {"boot": "yes"}
    on(d)["guard"]["op"] = "=<"
    d["states"][1]["entry"].append({"set_var": "n", "value": {"var": "n", "input": "t"}})
    d["states"][1]["entry"].append({"blink": "fan"})
    check(
        d,
        [
            ("states[0].on[0].when", "more than one trigger: above, below"),
            ("states[0].on[0].guard.op", "expected one of < <= > >= == !=, got '=<'"),
            ("states[1].entry[1].value", "more than one operand (input or var): input, var"),
            (
                "states[1].entry[2]",
                "no action: expected one of set_output, start_timer, "
                "cancel_timer, set_var, add_var, publish, set_period",
            ),
            ("states[1].on[1].when.boot", "expected true, got string"),
        ],
    )


def test_refuses_bad_migrate_entries():
    d = base()
    d["migrate"] = {"x": {}, "2": {}, "01": {}, "1": {"old": "nowhere", "Bad": "a"}}
    check(
        d,
        [
            ("migrate.01", "key '01' is not a version number"),
            (
                "migrate.1.Bad",
                "invalid name 'Bad': names are 1-24 characters of a-z, 0-9 and _, "
                "starting with a letter",
            ),
            ("migrate.1.old", "unknown state 'nowhere' (declared: a, b, c)"),
            ("migrate.2", "version 2 is not earlier than this version 2"),
            ("migrate.x", "key 'x' is not a version number"),
        ],
    )


def test_refuses_bad_names_and_size_limits():
    d = base()
    d["name"] = "a" * 25
    d["timers"] = ["T1"]
    d["states"][1]["entry"] = []
    on(d, 1, 0)["when"] = {"command": "stop"}
    d["states"] += [{"name": "s%d" % i, "final": True} for i in range(30)]
    d["states"][1]["on"] += [{"when": {"boot": True}, "target": "s%d" % i} for i in range(30)]
    check(
        d,
        [
            (
                "name",
                "invalid name '" + "a" * 25 + "': names are 1-24 characters of a-z, 0-9 "
                "and _, starting with a letter",
            ),
            (
                "timers[0]",
                "invalid name 'T1': names are 1-24 characters of a-z, 0-9 and _, "
                "starting with a letter",
            ),
            ("states", "33 states, over the limit of 32"),
        ],
    )


def test_refuses_over_the_command_limit():
    # The transition, action and blob-size limits need definitions too large for the
    # MicroPython test heap; tests/shared/test_workflow_fuzz.py checks them on CPython.
    d = base()
    d["states"][0]["on"] += [{"when": {"command": "c%d" % i}, "target": "b"} for i in range(16)]
    check(d, [("states[1].on[1].when.command", "command 17 is over the limit of 16")])


def test_json_text_source():
    import json

    text = json.dumps(base())
    assert errors(text) == [] and errors(text.encode()) == []
    e = errors('{"name": ')
    assert e[0][0] == "$" and e[0][1].startswith("not valid JSON: ") and len(e) == 1
    assert errors(b"\xff\xfe") == [("$", "source is not UTF-8 text")]
    big = b" " * (MAX_SOURCE + 1)
    assert errors(big) == [("$", "source is 16385 bytes, over the 16384-byte limit")]
    assert errors("[1]") == [("$", "expected an object, got array")]


def test_workflow_error_lists_everything():
    d = base()
    d["version"] = 0
    d["initial"] = "zz"
    e = raises(WorkflowError, validate, d)
    assert e.path == "version" and e.reason == "0 is outside the version range [1, 1048576]"
    assert len(e.errors) == 2 and e.errors[1][0] == "initial"
    assert str(e) == (
        "version: 0 is outside the version range [1, 1048576]; "
        "initial: unknown state 'zz' (declared: a, b, c)"
    )
    assert isinstance(e, ValueError)
    e = raises(WorkflowError, compile, d)
    assert e.errors[0][0] == "version"


# Compilation.


def test_compile_matches_golden_hashes_on_both_runtimes():
    names = ["greenhouse", "greenhouse_v1", "lab", "pump", "pump_v2"]
    for name in names:
        with open(workflow_path(name), "rb") as f:
            c = compile(f.read(), PROFILE)
        g = GOLDEN[name]
        assert c.hash == g["hash"], (name, c.hash)
        assert len(c.blob) == g["blob_bytes"] and c.heap_bytes == g["heap_bytes"], name
        assert c.name == name.split("_")[0] and c.version in (1, 2, 3)
    assert sorted(GOLDEN) == names


def workflow_path(name):
    return REPO + "/cloud/orrery/sim/workflows/" + name + ".json"


def test_compile_is_deterministic_and_round_trips():
    import json

    a = compile(base())
    b = compile(json.dumps(base()).encode())  # the JSON text compiles to the same bytes
    assert a.blob == b.blob and a.hash == b.hash and len(a.hash) == 64
    assert a.name == "tiny" and a.version == 2 and a.heap_bytes > 0
    p = Program(a.blob)
    assert p.hash == a.hash and p.name == "tiny" and p.version == 2
    assert p.state_names == ("a", "b", "c") and p.initial == 0
    assert p.input_names == ("t",) and p.input_channels == ("temp",)
    assert p.period_ms == (1000,) and p.var_init == (0,)
    assert p.output_names == ("fan",) and p.timer_names == ("tm",)
    assert p.event_names == ("ev",) and p.command_names == ("stop",)
    assert p.filters(0) == [(2, (8192,))]
    assert p.migration(1) == {"old": 0} and p.migration(2) is None
    assert [p.is_final(s) for s in range(3)] == [False, False, True]


def test_commands_are_numbered_by_first_use():
    d = base()
    d["states"][0]["on"].append({"when": {"command": "zeta"}, "target": "b"})
    d["states"][0]["on"].append({"when": {"command": "alpha"}, "target": "b"})
    d["states"][1]["on"].append({"when": {"command": "zeta"}, "target": "a"})
    assert Program(compile(d).blob).command_names == ("zeta", "alpha", "stop")
