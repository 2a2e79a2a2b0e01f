"""The workflow registry: immutable versions, refs, diffs and replay of a device's readings.

Registry functions run on SQLite and PostgreSQL (``db_url``); the ``orrery workflow …`` commands
are tested in tests/cloud/cli/test_workflow.py.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from cloud.orrery.cli.common import load_profile
from cloud.orrery.db.engine import engine_for
from cloud.orrery.fleet import registry, replay
from cloud.orrery.sim import workflows
from firmware.profile import parse_profile
from shared.workflow import compiler

WF = workflows.DIR
V1 = (WF / "greenhouse_v1.json").read_bytes()
V2 = (WF / "greenhouse.json").read_bytes()
LAB = (WF / "lab.json").read_bytes()
T0 = 1_790_000_000  # unix s of the devices' time anchor


def reformatted(raw: bytes) -> bytes:
    """The same definition with keys in reverse order and other whitespace."""

    def rev(x):
        if isinstance(x, dict):
            return {k: rev(x[k]) for k in reversed(list(x))}
        if isinstance(x, list):
            return [rev(v) for v in x]
        return x

    return json.dumps(rev(json.loads(raw)), indent=7).encode()


def changed_level(raw: bytes, level: int) -> bytes:
    """greenhouse with its first transition's threshold changed (different compiled content)."""
    d = json.loads(raw)
    d["states"][0]["on"][0]["when"]["level"] = level
    return json.dumps(d).encode()


# --- registry functions, on SQLite and PostgreSQL ------------------------------------------


@pytest.fixture
def engine(db_url):
    e = engine_for(db_url)
    yield e
    e.dispose()


def test_push_is_idempotent_and_versions_are_immutable(engine):
    with engine.begin() as c:
        first = registry.push(c, V1, None, 1)
        assert (first.name, first.version, first.created) == ("greenhouse", 1, True)
        assert first.hash == compiler.compile(V1).hash
        # the same content with other key order and whitespace: a no-op
        again = registry.push(c, reformatted(V1), None, 2)
        assert (again.created, again.hash) == (False, first.hash)
        assert registry.push(c, V2, None, 3).created
    with engine.begin() as c, pytest.raises(registry.RegistryError) as exc:
        registry.push(c, changed_level(V1, 3100), None, 4)
    msg = str(exc.value)
    assert "greenhouse@1 already exists with other content" in msg
    assert "versions are immutable" in msg
    assert "push it as version 3" in msg  # the next free version of greenhouse
    assert first.hash[:12] in msg
    with engine.connect() as c:
        rows = c.execute(
            sa.select(registry.WORKFLOWS.c.name, registry.WORKFLOWS.c.version,
                      registry.WORKFLOWS.c.created_ms, registry.WORKFLOWS.c.definition)
            .order_by(registry.WORKFLOWS.c.version)
        ).all()  # fmt: skip
        assert [(r.name, r.version, r.created_ms) for r in rows] == [
            ("greenhouse", 1, 1),
            ("greenhouse", 2, 3),
        ]
        assert rows[0].definition == V1.decode()  # the first push is kept, untouched
        assert registry.latest(c, "greenhouse") == 2
        assert registry.latest(c, "nope") == 0


def test_push_refuses_invalid_definitions(engine):
    d = json.loads(V2)
    d["states"][0]["on"][0]["target"] = "nowhere"
    with engine.begin() as c, pytest.raises(compiler.WorkflowError) as exc:
        registry.push(c, json.dumps(d).encode(), None, 0)
    assert exc.value.path == "states[0].on[0].target"
    assert "unknown state 'nowhere'" in exc.value.reason
    with engine.connect() as c:
        assert registry.latest(c, "greenhouse") == 0


def test_get_resolves_refs_and_says_what_is_known(engine):
    with engine.begin() as c:
        registry.push(c, V1, None, 0)
        registry.push(c, V2, None, 0)
        registry.push(c, LAB, None, 0)
    with engine.connect() as c:
        assert registry.get(c, "greenhouse").version == 2  # no version: the latest
        row = registry.get(c, "greenhouse@1")
        assert (row.name, row.version, row.hash) == ("greenhouse", 1, compiler.compile(V1).hash)
        assert bytes(row.blob) == compiler.compile(V1).blob
        assert registry.definition(row) == json.loads(V1)
        assert registry.get(c, "lab@3").heap_bytes == compiler.compile(LAB).heap_bytes
        cases = {
            "greenhouse@9": "no workflow 'greenhouse@9' in the registry (known: greenhouse@1, greenhouse@2)",
            "nope": "no workflow 'nope' in the registry",
            "greenhouse@x": "'greenhouse@x': version must be an integer",
            "@2": "'@2': expected NAME or NAME@VERSION",
        }
        for ref, want in cases.items():
            with pytest.raises(registry.RegistryError) as exc:
                registry.get(c, ref)
            assert str(exc.value) == want


def test_diff_names_safe_states():
    a = json.loads(V2)
    b = {**a, "safe_states": ["idle"], "safe_wait_s": 120}
    pa = registry.diff(a, b)["parameters"]
    assert pa["added"] == {"safe_states": ["idle"], "safe_wait_s": 120}
    pa = registry.diff(b, {**b, "safe_states": ["idle", "off"]})["parameters"]
    assert pa["changed"] == {"safe_states": {"from": ["idle"], "to": ["idle", "off"]}}


def test_diff_names_states_transitions_and_parameters():
    d = registry.diff(json.loads(V1), json.loads(V2))
    st, tr, pa = d["states"], d["transitions"], d["parameters"]
    assert sorted(st["added"]) == ["cooling", "fault", "off", "watering"]
    assert sorted(st["removed"]) == ["alarm", "cool", "manual"]
    assert list(st["changed"]) == ["idle"]  # its entry also turns relay2 off in v2
    assert st["changed"]["idle"]["to"]["entry"] == [
        {"set_output": "fan", "value": 0},
        {"set_output": "relay2", "value": 0},
    ]
    assert st["added"]["off"]["final"] is True
    # idle's first transition: same trigger, a new guard and target
    t0 = tr["changed"]["idle#0"]
    assert (t0["from"]["target"], t0["to"]["target"]) == ("cool", "cooling")
    assert "guard" not in t0["from"] and t0["to"]["guard"] == [
        {"var": "cycles", "op": "<", "value": 100}
    ]
    assert tr["added"]["cooling#0"]["when"] == {"crosses": "temp", "level": 4500, "direction": "up"}
    assert sorted(tr["removed"]) == ["alarm#0", "cool#0", "cool#1", "manual#0"]
    assert list(pa["added"]) == ["migrate"]
    assert pa["added"]["migrate"] == {"1": {"cool": "cooling", "alarm": "fault"}}
    assert sorted(pa["changed"]) == ["inputs", "outputs", "timers", "vars"]
    assert pa["changed"]["outputs"] == {
        "from": ["fan", "relay1"],
        "to": ["fan", "relay1", "relay2", "led"],
    }
    # nothing changed: nothing reported
    same = registry.diff(json.loads(V2), json.loads(reformatted(V2)))
    assert not any(part[k] for part in same.values() for k in part)


# --- replay --------------------------------------------------------------------------------


def channel(name: str) -> int:
    return [c[0] for c in parse_profile(load_profile("esp32-devkitc"))[0]].index(name)


TEMP = channel("temp")
# (second, temperature in c°C): mild, 25 s of heat above both versions' 3000 for 5 s, mild again
PROFILE = (
    [(s, 2000) for s in range(10)]
    + [(s, 3500) for s in range(10, 35)]
    + [(s, 2000) for s in range(35, 120)]
)


def stream() -> list[tuple[int, int, int]]:
    return [(T0 * 1000 + s * 1000, TEMP, v) for s, v in PROFILE]


def test_replay_runs_the_executor_over_readings():
    v1, v2 = compiler.compile(V1), compiler.compile(V2)
    names = [c[0] for c in parse_profile(load_profile("esp32-devkitc"))[0]]
    t1 = replay.replay(v1.blob, stream(), names, True)
    assert t1.version == "greenhouse@1" and t1.note is None
    moves = [(x["from"], x["to"]) for x in t1.transitions]
    assert moves == [("idle", "cool"), ("cool", "idle")]  # back on the 60 s cooldown timer
    t_cool = t1.transitions[0]["t"]
    assert T0 * 1000 + 15_000 <= t_cool <= T0 * 1000 + 20_000  # 3500 for 5 s, after the filters
    assert t1.transitions[1]["t"] - t_cool >= 60_000
    assert [e["event"] for e in t1.events] == ["cooling_started"]
    assert {(o["output"], o["value"]) for o in t1.outputs} >= {("fan", 1), ("relay1", 1)}
    assert t1.final_state == "idle"
    # v2 with v1's readings: other filter chains, so they are re-filtered (and it says so)
    same = replay.filters_of(v1.blob) == replay.filters_of(v2.blob)
    assert not same
    t2 = replay.replay(v2.blob, stream(), names, same)
    assert "re-filtered" in t2.note
    assert [(x["from"], x["to"]) for x in t2.transitions] == [
        ("idle", "cooling"),
        ("cooling", "idle"),
    ]
    # v2 leaves cooling as soon as it is below 2500, well before the cooldown
    assert t2.transitions[1]["t"] - t2.transitions[0]["t"] < 60_000
    assert {(o["output"], o["value"]) for o in t2.outputs} >= {("fan", 600), ("fan", 0)}
    assert replay.as_dict(t2)["final_state"] == "idle"
    # no readings: the initial state and nothing else
    empty = replay.replay(v2.blob, [], names, True)
    assert (empty.transitions, empty.events, empty.final_state) == ([], [], "idle")
