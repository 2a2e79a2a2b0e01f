"""The workflow registry: immutable versions, refs, diffs and replay of a device's readings.

Registry functions run on SQLite and PostgreSQL (``db_url``); the ``orrery workflow …`` commands
run with typer's CliRunner on a real SQLite file, with readings stored by the real ingest from
the board's own wire format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloud.orrery.cli.common import load_profile
from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES
from cloud.orrery.fleet import registry, replay
from cloud.orrery.ingest.handler import Ingest, Message
from cloud.orrery.sim import workflows
from firmware.profile import parse_profile
from shared import codec as P
from shared import workflow
from tests.support.cli import flat, run

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
        assert first.hash == workflow.compile(V1).hash
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
    with engine.begin() as c, pytest.raises(workflow.WorkflowError) as exc:
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
        assert (row.name, row.version, row.hash) == ("greenhouse", 1, workflow.compile(V1).hash)
        assert bytes(row.blob) == workflow.compile(V1).blob
        assert registry.definition(row) == json.loads(V1)
        assert registry.get(c, "lab@3").heap_bytes == workflow.compile(LAB).heap_bytes
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
    v1, v2 = workflow.compile(V1), workflow.compile(V2)
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


# --- the CLI, on a real SQLite file --------------------------------------------------------


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'o.db'}"


def write(tmp_path: Path, name: str, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_cli_push_list_show(tmp_path, url):
    v1 = write(tmp_path, "v1.json", V1)
    r = run("workflow", "push", v1, "--db", url)
    assert f"pushed greenhouse@1 ({workflow.compile(V1).hash[:12]}…)" in r.stdout
    r = run("workflow", "push", write(tmp_path, "v1b.json", reformatted(V1)), "--db", url)
    assert "greenhouse@1 is already in the registry with this content: nothing to do" in flat(
        r.stdout
    )
    res = json.loads(
        run("workflow", "push", str(WF / "greenhouse.json"), "--db", url, "--json").stdout
    )
    assert res == {
        "name": "greenhouse",
        "version": 2,
        "hash": workflow.compile(V2).hash,
        "created": True,
    }
    again = json.loads(
        run("workflow", "push", str(WF / "greenhouse.json"), "--db", url, "--json").stdout
    )
    assert again["created"] is False
    r = run(
        "workflow",
        "push",
        write(tmp_path, "v1c.json", changed_level(V1, 3100)),
        "--db",
        url,
        ok=False,
    )
    out = flat(r.output)
    assert "greenhouse@1 already exists with other content" in out
    assert "push it as version 3" in out
    # validated against a board profile, like the board does
    r = run("workflow", "push", str(WF / "lab.json"), "--board", "esp32-devkitc", "--db", url)
    assert "pushed lab@3" in r.stdout
    # devices running a version are counted
    with engine_for(url).begin() as c:
        c.execute(sa.insert(DEVICES), [
            {"name": "d1", "fleet": "f1", "created_ms": 0, "wf": "greenhouse", "wf_ver": 1},
            {"name": "d2", "fleet": "f1", "created_ms": 0, "wf": "greenhouse", "wf_ver": 1},
            {"name": "d3", "fleet": "f1", "created_ms": 0, "wf": "lab", "wf_ver": 3},
        ])  # fmt: skip
    rows = json.loads(run("workflow", "list", "--db", url, "--json").stdout)
    assert [(r["name"], r["version"], r["devices"]) for r in rows] == [
        ("greenhouse", 1, 2),
        ("greenhouse", 2, 0),
        ("lab", 3, 1),
    ]
    assert rows[2]["heap_bytes"] == workflow.compile(LAB).heap_bytes
    human = run("workflow", "list", "--db", url).stdout
    assert "greenhouse@2" in human and workflow.compile(V2).hash[:12] in human
    shown = json.loads(run("workflow", "show", "greenhouse@1", "--db", url).stdout)
    assert (shown["name"], shown["version"], shown["hash"]) == (
        "greenhouse",
        1,
        workflow.compile(V1).hash,
    )
    assert shown["definition"] == json.loads(V1)
    assert json.loads(run("workflow", "show", "greenhouse", "--db", url).stdout)["version"] == 2


def test_cli_list_of_an_empty_registry(url):
    assert json.loads(run("workflow", "list", "--db", url, "--json").stdout) == []
    assert "the registry is empty" in run("workflow", "list", "--db", url).stdout


def test_cli_validate_and_push_name_path_and_reason(tmp_path, url):
    d = json.loads(V2)
    d["states"][0]["on"][0]["target"] = "nowhere"
    d["inputs"][0]["channel"] = "pressure"
    bad = write(tmp_path, "bad.json", json.dumps(d).encode())
    r = run("workflow", "validate", bad, ok=False)
    out = flat(r.output)
    assert f"{bad}: states[0].on[0].target: unknown state 'nowhere'" in out
    # against the board's profile the channel is wrong too
    r = run("workflow", "validate", bad, "--board", "esp32-devkitc", "--json", ok=False)
    assert json.loads(r.stdout)["errors"] == [
        {"path": "inputs[0].channel",
         "reason": "board 'esp32-devkitc' has no channel 'pressure' (channels: adc0, adc1, adc2, adc3, humidity, temp)"},
        {"path": "states[0].on[0].target",
         "reason": "unknown state 'nowhere' (declared: cooling, fault, idle, off, watering)"},
    ]  # fmt: skip
    r = run("workflow", "push", bad, "--board", "esp32-devkitc", "--db", url, ok=False)
    out = flat(r.output)
    assert f"{bad}: inputs[0].channel: board 'esp32-devkitc' has no channel 'pressure'" in out
    assert f"{bad}: states[0].on[0].target: unknown state 'nowhere'" in out
    r = run("workflow", "push", write(tmp_path, "junk.json", b"{nope"), "--db", url, ok=False)
    assert "$: not valid JSON" in flat(r.output)
    r = run("workflow", "push", str(tmp_path / "missing.json"), "--db", url, ok=False)
    assert "missing.json: no such file" in flat(r.output)
    assert json.loads(run("workflow", "list", "--db", url, "--json").stdout) == []
    assert "valid" in run("workflow", "validate", str(WF / "greenhouse.json")).stdout


def test_cli_diff(url):
    run("workflow", "push", str(WF / "greenhouse_v1.json"), "--db", url)
    run("workflow", "push", str(WF / "greenhouse.json"), "--db", url)
    d = json.loads(
        run("workflow", "diff", "greenhouse@1", "greenhouse@2", "--db", url, "--json").stdout
    )
    assert d == registry.diff(json.loads(V1), json.loads(V2))
    assert "cooling" in d["states"]["added"] and "cool" in d["states"]["removed"]
    out = run("workflow", "diff", "greenhouse@1", "greenhouse@2", "--db", url).stdout
    lines = out.splitlines()
    assert lines[0] == "greenhouse@1 → greenhouse@2"
    assert any(ln.startswith("+ state cooling: ") for ln in lines)
    assert any(ln.startswith("- state alarm: ") for ln in lines)
    assert any(ln.startswith("~ transition idle#0: ") for ln in lines)
    assert any(ln.startswith("+ parameter migrate: ") for ln in lines)
    text = flat(out)
    assert (
        '~ transition idle#0: {"when": {"above": "temp", "level": 3000, "for_ms": 5000}, "target": "cool",'
        in text
    )
    assert '+ parameter migrate: {"1": {"cool": "cooling", "alarm": "fault"}}' in text
    assert '~ parameter outputs: ["fan", "relay1"] → ["fan", "relay1", "relay2", "led"]' in text
    assert (
        "no differences"
        in run("workflow", "diff", "greenhouse@2", "greenhouse", "--db", url).stdout
    )
    r = run("workflow", "diff", "greenhouse@1", "greenhouse@7", "--db", url, ok=False)
    assert "no workflow 'greenhouse@7' in the registry (known: greenhouse@1, greenhouse@2)" in flat(
        r.output
    )


@pytest.fixture
def fleet(url):
    """d1 runs greenhouse@1 and stored PROFILE's temperatures; d2 runs nothing, has none."""
    run("workflow", "push", str(WF / "greenhouse_v1.json"), "--db", url)
    run("workflow", "push", str(WF / "greenhouse.json"), "--db", url)
    run("devices", "add", "d1", "d2", "--fleet", "f1", "--profile", "esp32-devkitc", "--db", url)
    engine = engine_for(url)
    ing = Ingest(engine, reorder_window_ms=0)
    anchor = (0, 0, T0, 0)  # uptime 0 was T0
    h1 = workflow.compile(V1).hash
    recs = [(s, 0, v, TEMP) for s, v in PROFILE]
    t = "orrery/f1/d1/up/"
    out = ing.handle(
        [
            Message(t + "state", P.encode_state(True, "1.0", "greenhouse", 1, h1, 3, 0, True, anchor, len(recs))),
            Message(t + "readings", P.encode_batch(3, 1, recs[:60], P.SYNCED, anchor)),
            Message(t + "readings", P.encode_batch(3, 61, recs[60:], P.SYNCED, anchor)),
            Message(t + "events", P.encode_event(3, 1, 17, 0, "idle", "cooling_started", 3400)),
        ],
        now=(T0 + 200) * 1000,
    )  # fmt: skip
    assert (out.inserted, out.dead) == (len(recs), 0)
    engine.dispose()
    return url


def test_cli_simulate_side_by_side(fleet):
    url = fleet
    res = json.loads(
        run("workflow", "simulate", "greenhouse@2", "--device", "d1", "--db", url, "--json").stdout
    )
    assert res["device"] == "d1" and res["readings"] == len(PROFILE)
    pre, cur = res["preview"], res["running"]
    assert pre["version"] == "greenhouse@2" and cur["version"] == "greenhouse@1"
    assert [(x["from"], x["to"]) for x in pre["transitions"]] == [
        ("idle", "cooling"),
        ("cooling", "idle"),
    ]
    assert [(x["from"], x["to"]) for x in cur["transitions"]] == [
        ("idle", "cool"),
        ("cool", "idle"),
    ]
    assert [e["event"] for e in pre["events"]] == ["cooling_started"]
    assert [e["event"] for e in cur["events"]] == ["cooling_started"]
    # the transitions carry the readings' event time (unix ms from the anchor)
    assert T0 * 1000 + 10_000 < pre["transitions"][0]["t"] < T0 * 1000 + 35_000
    assert ("fan", 600) in {(o["output"], o["value"]) for o in pre["outputs"]}
    assert ("relay1", 1) in {(o["output"], o["value"]) for o in cur["outputs"]}
    assert "re-filtered" in pre["note"] and cur["note"] is None
    assert res["board_events"] == [
        {"t": (T0 + 17) * 1000, "state": "idle", "event": "cooling_started", "value": 3400}
    ]
    # it equals the registry's replay of the same readings
    names = [c[0] for c in parse_profile(load_profile("esp32-devkitc"))[0]]
    want = replay.replay(workflow.compile(V2).blob, stream(), names, False)
    assert pre == replay.as_dict(want)
    # the human form: a side-by-side table and the preview's transitions
    out = run("workflow", "simulate", "greenhouse@2", "--device", "d1", "--db", url).stdout
    assert f"replayed {len(PROFILE)} reading(s) of d1" in out
    assert "preview greenhouse@2" in out and "running greenhouse@1" in out
    assert "idle → cooling" in out and "cooling → idle" in out
    assert "note:" in out


def test_cli_simulate_time_window(fleet):
    url = fleet
    # only the first 12 s: mild, then 2 s of heat; nothing happens
    res = json.loads(
        run("workflow", "simulate", "greenhouse@2", "--device", "d1", "--db", url, "--json",
            "--since", str(T0), "--until", str(T0 + 12)).stdout
    )  # fmt: skip
    assert res["readings"] == 12
    assert res["preview"]["transitions"] == [] and res["running"]["transitions"] == []
    # from the heat on (ISO 8601 works too)
    res = json.loads(
        run("workflow", "simulate", "greenhouse@1", "--device", "d1", "--db", url, "--json",
            "--since", "2026-09-21T14:13:30").stdout
    )  # fmt: skip
    assert res["readings"] == 120 - 10
    assert [x["to"] for x in res["preview"]["transitions"]] == ["cool", "idle"]
    # a version with the running version's filters replays exactly: the same trace
    assert res["preview"] == res["running"]


def test_cli_simulate_errors(fleet):
    url = fleet
    r = run("workflow", "simulate", "greenhouse@2", "--device", "nope", "--db", url, ok=False)
    assert "unknown device 'nope'" in flat(r.output)
    r = run("workflow", "simulate", "greenhouse@5", "--device", "d1", "--db", url, ok=False)
    assert "no workflow 'greenhouse@5' in the registry (known: greenhouse@1, greenhouse@2)" in flat(
        r.output
    )
    r = run("workflow", "simulate", "greenhouse@x", "--device", "d1", "--db", url, ok=False)
    assert "version must be an integer" in flat(r.output)
    r = run(
        "workflow",
        "simulate",
        "greenhouse@2",
        "--device",
        "d1",
        "--since",
        "yesterday",
        "--db",
        url,
        ok=False,
    )
    assert "--since: 'yesterday'" in flat(r.output)
    # a device without a running version and without readings: a preview only
    res = json.loads(
        run("workflow", "simulate", "greenhouse@2", "--device", "d2", "--db", url, "--json").stdout
    )
    assert (res["readings"], res["running"], res["preview"]["transitions"]) == (0, None, [])
    out = run("workflow", "simulate", "greenhouse@2", "--device", "d2", "--db", url).stdout
    assert "replayed 0 reading(s) of d2" in out and "running -" in out
