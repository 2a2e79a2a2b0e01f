"""``orrery workflow …`` with typer's CliRunner on a real SQLite file, with readings stored by
the real ingest from the board's own wire format."""

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
from firmware.profile import parse_profile
from shared.wire import codec
from shared.workflow import compiler
from tests.cloud.fleet.test_registry import (
    LAB,
    PROFILE,
    T0,
    TEMP,
    V1,
    V2,
    WF,
    changed_level,
    reformatted,
    stream,
)
from tests.support.cli import flat, run


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
    assert f"pushed greenhouse@1 ({compiler.compile(V1).hash[:12]}…)" in r.stdout
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
        "hash": compiler.compile(V2).hash,
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
    assert rows[2]["heap_bytes"] == compiler.compile(LAB).heap_bytes
    human = run("workflow", "list", "--db", url).stdout
    assert "greenhouse@2" in human and compiler.compile(V2).hash[:12] in human
    shown = json.loads(run("workflow", "show", "greenhouse@1", "--db", url).stdout)
    assert (shown["name"], shown["version"], shown["hash"]) == (
        "greenhouse",
        1,
        compiler.compile(V1).hash,
    )
    assert shown["definition"] == json.loads(V1)
    assert json.loads(run("workflow", "show", "greenhouse", "--db", url).stdout)["version"] == 2


def test_cli_list_of_an_empty_registry(url):
    # a database that does not exist is an error, not an empty registry (and is not created)
    assert "error: no database at" in run("workflow", "list", "--db", url, ok=False).stderr
    engine_for(url).dispose()
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
    h1 = compiler.compile(V1).hash
    recs = [(s, 0, v, TEMP) for s, v in PROFILE]
    t = "orrery/f1/d1/up/"
    out = ing.handle(
        [
            Message(t + "state", codec.encode_state(True, "1.0", "greenhouse", 1, h1, 3, 0, True, anchor, len(recs))),
            Message(t + "readings", codec.encode_batch(3, 1, recs[:60], codec.SYNCED, anchor)),
            Message(t + "readings", codec.encode_batch(3, 61, recs[60:], codec.SYNCED, anchor)),
            Message(t + "events", codec.encode_event(3, 1, 17, 0, "idle", "cooling_started", 3400)),
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
    want = replay.replay(compiler.compile(V2).blob, stream(), names, False)
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
