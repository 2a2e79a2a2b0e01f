"""Each resource of the API: its happy path and its errors, on SQLite and PostgreSQL; the same
answers the CLI gives, and the token's name as the actor of every change."""

from __future__ import annotations

import csv
import io
import json

import sqlalchemy as sa

from cloud.orrery.db.tables import COMMANDS, ROLLOUT_LOG, ROLLOUTS
from cloud.orrery.ingest.handler import Message
from shared.wire import codec
from tests.support.api import NAMES, state
from tests.support.cli import run


def test_devices_list_filters_and_pages(fleet):
    fleet.ok("PATCH", "/devices/d03/tags", "admin", json={"set": {"site": "north", "tz": "UTC"}})
    fleet.ok("PATCH", "/devices/d04/tags", "admin", json={"set": {"site": "north"}})
    fleet.send(state("d05", None, online=False))
    p1 = fleet.ok("GET", "/devices?limit=4")
    assert [d["device"] for d in p1["items"]] == NAMES[:4]
    assert (p1["total"], p1["limit"], p1["offset"], p1["next"]) == (10, 4, 0, 4)
    p3 = fleet.ok("GET", "/devices?limit=4&offset=8")
    assert [d["device"] for d in p3["items"]] == NAMES[8:] and p3["next"] is None
    d = p1["items"][0]
    assert (d["workflow"], d["fw"], d["online"], d["received"]) == ("greenhouse@1", "1.2.0", True, 5)
    # the same rows the CLI lists
    assert fleet.ok("GET", "/devices?limit=1000")["items"] == json.loads(
        run("devices", "list", "--json", "--db", fleet.url).stdout
    )
    north = fleet.ok("GET", "/devices?tag=site=north")
    assert [x["device"] for x in north["items"]] == ["d03", "d04"] and north["total"] == 2
    both = fleet.ok("GET", "/devices?tag=site=north&tag=tz=UTC")
    assert [x["device"] for x in both["items"]] == ["d03"]
    off = fleet.ok("GET", "/devices?online=false")
    assert [x["device"] for x in off["items"]] == ["d05"]
    assert fleet.ok("GET", "/devices?profile=esp32-devkitc&online=true")["total"] == 9
    assert fleet.ok("GET", "/devices?profile=other")["total"] == 0
    assert "tag 'site'" in fleet.error("GET", "/devices?tag=site", 400)
    assert "query limit" in fleet.error("GET", "/devices?limit=100000", 422)
    assert "query offset" in fleet.error("GET", "/devices?offset=-1", 422)
    assert "query online" in fleet.error("GET", "/devices?online=perhaps", 422)


def test_fleet_overview(fleet):
    fleet.send(state("d01", None, online=False))
    s = fleet.ok("GET", "/fleet")
    assert (s["devices"], s["online"], s["offline"]) == (10, 9, 1)
    assert s["workflows"] == {"greenhouse@1": 8, "greenhouse@2": 2}
    assert (s["fw"], s["profiles"], s["received"]) == ({"1.2.0": 10}, {"esp32-devkitc": 10}, 5)
    fleet.ok("PATCH", "/devices/d09/tags", "admin", json={"set": {"site": "x"}})
    assert fleet.ok("GET", "/fleet?tag=site=x")["workflows"] == {"greenhouse@2": 1}


def test_device_show_tags_register(fleet):
    d = fleet.ok("GET", "/devices/d00")
    assert d["device"] == "d00" and d["tags"] == {} and d["sessions"][0]["boot"] == 7
    assert d == json.loads(run("devices", "show", "d00", "--json", "--db", fleet.url).stdout)
    assert "unknown device 'nope'" in fleet.error("GET", "/devices/nope", 404)
    t = fleet.ok("PATCH", "/devices/d00/tags", "admin", json={"set": {"room": "7"}})
    assert t == {"room": "7"}
    t = fleet.ok("PATCH", "/devices/d00/tags", "admin", json={"set": {"a": "1"}, "remove": ["room"]})
    assert t == {"a": "1"}
    assert "tag 'bad key!=1'" in fleet.error("PATCH", "/devices/d00/tags", 400, json={"set": {"bad key!": "1"}})
    assert "may not be empty" in fleet.error("PATCH", "/devices/d00/tags", 400, json={"set": {"a": ""}})
    fleet.error("PATCH", "/devices/nope/tags", 404, json={"set": {"a": "1"}})
    fleet.error("PATCH", "/devices/d00/tags", 403, as_="operator", json={"set": {"a": "1"}})
    r = fleet.ok("POST", "/devices", "admin", 201, json={"names": ["n1", "d00"], "fleet": "f2"})
    assert r == {"added": ["n1"], "known": 1}
    assert "'bad id!' is not a valid id" in fleet.error("POST", "/devices", 400, json={"names": ["bad id!"]})


def test_readings_export_gaps_stats(fleet):
    r = fleet.get("/devices/d00/readings")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(x["seq"]) for x in rows] == [1, 2, 3, 4, 5]
    assert (rows[0]["channel_name"], rows[0]["value"], rows[0]["scaled"], rows[0]["unit"]) == (
        "temp", "2150", "21.5", "°C")  # fmt: skip
    # the same bytes the CLI writes
    assert r.text == run("readings", "export", "d00", "--db", fleet.url).stdout
    lines = fleet.get("/devices/d00/readings?format=jsonl&since=1790000002&until=1790000004")
    assert lines.headers["content-type"].startswith("application/jsonl")
    got = [json.loads(x) for x in lines.text.splitlines()]
    assert [(x["seq"], x["scaled"], x["channel_name"]) for x in got] == [(3, 21.52, "temp"), (4, 21.53, "temp")]
    assert "since: 'yesterday'" in fleet.error("GET", "/devices/d00/readings?since=yesterday", 400)
    assert "outside the years" in fleet.error("GET", "/devices/d00/readings?since=1e300", 400)
    assert "query format" in fleet.error("GET", "/devices/d00/readings?format=xml", 422)
    fleet.error("GET", "/devices/nope/readings", 404)
    # a gap: d01 sends seqs 1..2 and 5
    t = "orrery/f1/d01/up/readings"
    fleet.send(Message(t, codec.encode_batch(7, 1, [(1, 0, 1, 0), (2, 0, 2, 0)], codec.SYNCED, (0, 0, 1_790_000_000, 0))),
               Message(t, codec.encode_batch(7, 5, [(5, 0, 5, 0)], codec.SYNCED, (0, 0, 1_790_000_000, 0))))  # fmt: skip
    fleet.ingest.reconcile()
    gaps = fleet.ok("GET", "/readings/gaps?device=d01")
    assert [(g["first"], g["last"], g["kind"]) for g in gaps["items"]] == [(3, 4, "gap")]
    assert gaps["items"] == json.loads(run("readings", "gaps", "--device", "d01", "--json", "--db", fleet.url).stdout)
    fleet.error("GET", "/readings/gaps?device=nope", 404)
    stats = fleet.ok("GET", "/readings/stats")
    assert stats == json.loads(run("readings", "stats", "--json", "--db", fleet.url).stdout)
    assert stats["totals"]["received"] == 8


def test_workflows(fleet):
    listed = fleet.ok("GET", "/workflows")
    assert [(w["name"], w["version"]) for w in listed["items"]] == [("greenhouse", 1), ("greenhouse", 2)]
    assert listed["items"][0]["devices"] == 8 and listed["total"] == 2
    show = fleet.ok("GET", "/workflows/greenhouse")  # the newest
    assert (show["version"], show["definition"]["name"]) == (2, "greenhouse")
    defn = show["definition"]
    assert fleet.ok("POST", "/workflows/validate", json={"definition": defn}) == {"ok": True, "errors": []}
    bad = {**defn, "states": {}}
    v = fleet.ok("POST", "/workflows/validate", json={"definition": bad, "board": "esp32-devkitc"})
    assert v["ok"] is False and v["errors"] and all(e["path"] and e["reason"] for e in v["errors"])
    assert "board 'nope'" in fleet.error("POST", "/workflows/validate", 400, json={"definition": defn, "board": "nope"})
    assert "board '../x'" in fleet.error("POST", "/workflows/validate", 400, json={"definition": defn, "board": "../x"})
    # push: the same content is a no-op, a new version is created, other content is refused
    same = fleet.ok("POST", "/workflows", "operator", json={"definition": defn})
    assert (same["name"], same["version"], same["created"]) == ("greenhouse", 2, False)
    v3 = fleet.ok("POST", "/workflows", "operator", json={"definition": {**defn, "version": 3}})
    assert (v3["version"], v3["created"]) == (3, True)
    v1 = fleet.ok("GET", "/workflows/greenhouse@1")["definition"]
    assert "already exists with other content" in fleet.error(
        "POST", "/workflows", 409, json={"definition": {**v1, "version": 2}}
    )
    assert "version" in fleet.error("POST", "/workflows", 400, json={"definition": {"name": "x"}})
    fleet.error("POST", "/workflows", 403, as_="viewer", json={"definition": defn})
    d = fleet.ok("GET", "/workflows/greenhouse@1/diff/greenhouse@2")
    assert (d["a"], d["b"]) == ("greenhouse@1", "greenhouse@2")
    cli = json.loads(run("workflow", "diff", "greenhouse@1", "greenhouse@2", "--json", "--db", fleet.url).stdout)
    assert {k: d[k] for k in cli} == cli
    fleet.error("GET", "/workflows/nope@1", 404)
    fleet.error("GET", "/workflows/greenhouse@9", 404)
    assert "version must be an integer" in fleet.error("GET", "/workflows/greenhouse@x", 400)
    sim = fleet.ok("POST", "/workflows/greenhouse@2/simulate", json={"device": "d00"})
    assert sim == json.loads(run("workflow", "simulate", "greenhouse@2", "--device", "d00", "--json", "--db", fleet.url).stdout)
    assert sim["readings"] == 5 and sim["running"]["version"] == "greenhouse@1"
    fleet.error("POST", "/workflows/greenhouse@2/simulate", 404, json={"device": "nope"})


def test_rollouts_and_the_actor(fleet):
    body = {"workflow": "greenhouse@2", "target": "fleet=f1", "waves": "2,100%", "success": "100%",
            "soak": "0s", "rate": "5/s"}  # fmt: skip
    dry = fleet.ok("POST", "/rollouts", "operator", json={**body, "dry_run": True})
    assert dry["rollout_id"] is None and [w["count"] for w in dry["waves"]] == [2, 6]
    assert dry["excluded"] == {"already running this version": ["d08", "d09"]}
    assert fleet.ok("GET", "/rollouts")["total"] == 0
    plan = fleet.ok("POST", "/rollouts", "operator", json=body)
    rid = plan["rollout_id"]
    s = fleet.ok("GET", f"/rollouts/{rid}")
    assert (s["state"], s["workflow"], s["devices"]) == ("draft", "greenhouse@2", 8)
    assert s == json.loads(run("rollout", "status", str(rid), "--json", "--db", fleet.url).stdout)
    assert fleet.ok("POST", f"/rollouts/{rid}/start", "operator")["state"] == "running"
    assert "is running; started needs it draft" in fleet.error("POST", f"/rollouts/{rid}/start", 409)
    out = fleet.orch.tick()  # serve drives it: wave 1 is sent
    assert len(out) == 2
    m = fleet.ok("GET", f"/rollouts/{rid}/devices?wave=1")
    assert m["total"] == 2 and {x["state"] for x in m["items"]} == {"sent"}
    assert all(x["wave"] == 1 and x["from"] == "greenhouse@1" and x["command"] for x in m["items"])
    assert fleet.ok("GET", f"/rollouts/{rid}/devices?state=queued")["total"] == 6
    assert fleet.ok("GET", f"/rollouts/{rid}/devices?limit=1000")["items"] == json.loads(
        run("rollout", "devices", str(rid), "--json", "--db", fleet.url).stdout
    )
    fleet.error("GET", "/rollouts/99/devices", 404)
    p = fleet.ok("POST", f"/rollouts/{rid}/pause", "operator")
    assert (p["changed"], p["status"]["state"]) == (True, "paused")
    assert fleet.ok("POST", f"/rollouts/{rid}/pause", "operator")["changed"] is False
    assert fleet.ok("POST", f"/rollouts/{rid}/resume", "operator")["status"]["state"] == "running"
    assert fleet.ok("POST", f"/rollouts/{rid}/retry", "operator")["requeued"] == 0
    rb = fleet.ok("POST", f"/rollouts/{rid}/rollback?dry_run=true", "operator")
    assert rb["dry_run"] is True and rb["rollouts"] == []
    c = fleet.ok("POST", f"/rollouts/{rid}/cancel", "operator")
    assert c["status"]["state"] == "canceled"
    assert "canceled" in fleet.error("POST", f"/rollouts/{rid}/resume", 409)
    log = fleet.ok("GET", f"/rollouts/{rid}/log?limit=3")
    assert log["total"] > 3 and log["next"] == 3 and len(log["items"]) == 3
    full = fleet.ok("GET", f"/rollouts/{rid}/log?limit=1000")["items"]
    by = {(e["event"], e["by"]) for e in full if e["device"] is None}
    assert {("created", "operator"), ("started", "operator"), ("paused", "operator"),
            ("resumed", "operator"), ("canceled", "operator")} <= by  # fmt: skip
    with fleet.engine.connect() as conn:
        assert conn.execute(sa.select(ROLLOUTS.c.created_by).where(ROLLOUTS.c.id == rid)).scalar() == "operator"
        assert "operator" in set(conn.execute(sa.select(ROLLOUT_LOG.c.actor)).scalars())
    assert full == json.loads(run("rollout", "log", str(rid), "--json", "--db", fleet.url).stdout)
    listed = fleet.ok("GET", "/rollouts")
    assert [r["id"] for r in listed["items"]] == [rid]
    for path in ("", "/log"):
        assert "no rollout 99" in fleet.error("GET", f"/rollouts/99{path}", 404)
    for verb in ("start", "pause", "resume", "cancel", "retry", "rollback"):
        fleet.error("POST", f"/rollouts/99/{verb}", 404)
    fleet.error("GET", "/rollouts/0", 422)
    fleet.error("GET", "/rollouts/x", 422)
    assert "selects no device" in fleet.error("POST", "/rollouts", 400, json={**body, "target": "fleet=zz"})
    assert "--soak" in fleet.error("POST", "/rollouts", 400, json={**body, "soak": "soon"})
    fleet.error("POST", "/rollouts", 404, json={**body, "workflow": "greenhouse@9"})
    assert "give one of --workflow" in fleet.error("POST", "/rollouts", 400, json={"target": "all"})
    both = {**body, "bundle": "app@2.0"}
    assert "give one of --workflow" in fleet.error("POST", "/rollouts", 400, json=both)


def test_commands_and_the_sender(fleet):
    sent = fleet.ok("POST", "/commands", "operator", 201, json={"target": "d00", "command": "reboot"})
    assert (sent["kind"], sent["sent_by"], sent["devices"]) == ("reboot", "operator", ["d00"])
    cfg = fleet.ok("POST", "/commands", "operator", 201,
                   json={"target": "fleet=f1,wf=greenhouse@2", "command": "config", "params": ["log_level=debug"]})  # fmt: skip
    assert cfg["devices"] == ["d08", "d09"] and cfg["args"] == {"changes": ["log_level"]}
    with fleet.engine.connect() as conn:
        assert set(conn.execute(sa.select(COMMANDS.c.sent_by)).scalars()) == {"operator"}
    page = fleet.ok("GET", "/commands?limit=2")
    assert page["total"] == 3 and page["next"] == 2 and len(page["items"]) == 2
    assert fleet.ok("GET", "/commands?device=d00")["items"][0]["id"] == sent["ids"][0]
    one = fleet.ok("GET", f"/commands/{sent['ids'][0]}")
    assert (one["device"], one["kind"], one["state"], one["sent_by"]) == ("d00", "reboot", "queued", "operator")
    assert one == json.loads(run("commands", "show", sent["ids"][0], "--json", "--db", fleet.url).stdout)
    assert "no command 'op:x'" in fleet.error("GET", "/commands/op:x", 404)
    assert "unknown device 'nope'" in fleet.error("GET", "/commands?device=nope", 404)
    assert "--state 'lost'" in fleet.error("GET", "/commands?state=lost", 400)
    assert "unknown command 'dance'" in fleet.error("POST", "/commands", 400, json={"target": "d00", "command": "dance"})
    assert "unknown device 'zz'" in fleet.error("POST", "/commands", 404, json={"target": "zz", "command": "reboot"})
    assert "ttl" in fleet.error("POST", "/commands", 400, json={"target": "d00", "command": "reboot", "ttl": "ever"})
    fleet.error("POST", "/commands", 403, as_="viewer", json={"target": "d00", "command": "reboot"})


def test_timeline_dead_letters_alerts(fleet):
    fleet.ok("POST", "/commands", "operator", 201, json={"target": "d02", "command": "reboot"})
    tl = fleet.ok("GET", "/devices/d02/timeline")
    kinds = [e["kind"] for e in tl["entries"]]
    assert "command" in kinds and tl["more"] is False
    cli = json.loads(run("devices", "timeline", "d02", "--json", "--db", fleet.url).stdout)
    assert tl["entries"] == cli
    one = fleet.ok("GET", "/devices/d02/timeline?limit=1")
    assert len(one["entries"]) == 1 and one["more"] is True
    assert "--since" in fleet.error("GET", "/devices/d02/timeline?since=later", 400)
    fleet.error("GET", "/devices/nope/timeline", 404)
    # a message from an unregistered board is a dead letter
    fleet.ingest.handle([Message("orrery/f1/ghost/up/readings", codec.encode_batch(1, 1, [(1, 0, 1, 0)]))])
    dl = fleet.ok("GET", "/dead-letters")
    assert dl["total"] == 1 and dl["items"][0]["topic"] == "orrery/f1/ghost/up/readings"
    assert "payload" not in dl["items"][0] and dl["items"][0]["size"] > 0
    reason = dl["items"][0]["reason"]
    assert fleet.ok("GET", f"/dead-letters?reason={reason[:4]}")["total"] == 1
    assert fleet.ok("GET", "/dead-letters?reason=zzz")["total"] == 0
    assert fleet.ok("GET", "/dead-letters?device=d00")["total"] == 0
    assert fleet.ok("GET", "/alerts") == {"items": [], "total": 0, "limit": 100, "offset": 0, "next": None}
    fleet.error("GET", "/alerts?device=nope", 404)


def test_unknown_paths_and_methods_are_json(fleet):
    assert "no such endpoint /api/v1/nowhere" in fleet.error("GET", "/nowhere", 404)
    assert "DELETE is not allowed" in fleet.error("DELETE", "/devices", 405)
    assert "not valid JSON" in fleet.error("POST", "/rollouts", 422, content=b"{", headers={"content-type": "application/json"})


def test_hostile_inputs_are_4xx_never_5xx(fleet):
    """Values the database cannot hold (NUL characters, numbers beyond 64 bits) and oddities
    of every kind end in an answer or a JSON 4xx, never a server error, on both databases."""
    cases = [
        ("GET", "/devices/a%00b", None),
        ("GET", "/devices?profile=a%00b", None),
        ("GET", "/devices?tag=k=v%00", None),
        ("GET", "/commands/op%00x", None),
        ("GET", "/workflows/gr%00@1", None),
        ("GET", "/dead-letters?reason=%00", None),
        ("GET", "/devices/d00/timeline?since=99999999999999999999", None),
        ("GET", "/devices/d00/timeline?since=99999999999d", None),
        ("GET", "/devices/d00/readings?since=-1", None),
        ("GET", "/rollouts/99999999999999999999", None),
        ("POST", "/rollouts", {"workflow": "greenhouse@2", "target": "all", "soak": "99999999999999999999d"}),
        ("POST", "/rollouts", {"workflow": "greenhouse@2", "target": "device=\u0000"}),
        ("POST", "/rollouts", {"workflow": "greenhouse@99999999999999999999", "target": "all"}),
        ("POST", "/commands", {"target": "d\u0000", "command": "reboot"}),
        ("POST", "/commands", {"target": "d00", "command": "reboot", "ttl": "99999999999999999999d"}),
        ("POST", "/devices", {"names": ["a\u0000"]}),
        ("PATCH", "/devices/d00/tags", {"set": {"k": "v\u0000"}}),
        ("POST", "/tokens", {"name": "x\u0000", "role": "viewer"}),
        ("POST", "/workflows/validate", {"definition": {"name": "x\u0000", "version": 2**70}}),
        ("POST", "/workflows", {"definition": {"name": "x", "version": 2**70, "states": []}}),
        ("POST", "/workflows/greenhouse@2/simulate", {"device": "d00", "since": "1e300"}),
    ]
    for method, path, body in cases:
        r = fleet.call(method, path, "admin", json=body)
        assert r.status_code < 500, (method, path, body, r.status_code, r.text)
        assert r.status_code < 300 or r.json()["error"], (path, r.text)
    r = fleet.call("POST", "/bundles", "admin", content=b"\x00" * 100,
                   headers={"content-type": "application/octet-stream"})  # fmt: skip
    assert r.status_code == 400 and "not an Orrery bundle file" in r.json()["error"]


def test_bundles_and_a_bundle_rollout(fleet):
    from tools.board import bundle as bundle_file

    built = bundle_file.build_bundle("2.0.0")
    data = built.encode()
    octets = {"content-type": "application/octet-stream"}
    new = fleet.ok("POST", "/bundles", "operator", content=data, headers=octets)
    ref = f"{new['name']}@2.0.0"
    assert (new["version"], new["created"]) == ("2.0.0", True)
    assert fleet.ok("POST", "/bundles", "operator", content=data, headers=octets)["created"] is False
    assert "not an Orrery bundle file" in fleet.error("POST", "/bundles", 400, content=b"zz", headers=octets)
    fleet.error("POST", "/bundles", 403, as_="viewer", content=data, headers=octets)
    listed = fleet.ok("GET", "/bundles")
    assert listed["total"] == 1 and listed["items"][0]["created_by"] == "operator"
    show = fleet.ok("GET", f"/bundles/{ref}")
    assert show["files"] == len(show["manifest"]["files"]) == len(built.manifest["files"])
    assert show == {**json.loads(run("bundle", "show", ref, "--json", "--db", fleet.url).stdout)}
    d = fleet.ok("GET", f"/bundles/{ref}/diff/{ref}")
    assert (d["from"], d["unchanged"], d["changed"]) == (ref, show["files"], [])
    fleet.error("GET", "/bundles/nope@1", 404)
    # boards that report the bundle's .mpy version can take it
    mpy = show["mpy_version"]
    t = [codec.topic("f1", n, codec.STATE) for n in NAMES]
    fleet.send(*[Message(x, codec.encode_state(True, "1.0.0", None, None, None, 7, 0, False, None,
                                               None, mpy=mpy)) for x in t])  # fmt: skip
    plan = fleet.ok("POST", "/rollouts", "operator",
                    json={"bundle": ref, "target": "fleet=f1", "waves": "100%", "dry_run": True})  # fmt: skip
    assert (plan["kind"], plan["workflow"], plan["waves"][0]["count"]) == ("bundle", ref, 10)
    rid = fleet.ok("POST", "/rollouts", "operator", json={"bundle": ref, "target": "fleet=f1"})["rollout_id"]
    s = fleet.ok("GET", f"/rollouts/{rid}")
    assert (s["kind"], s["workflow"], s["devices"]) == ("bundle", ref, 10)


def test_device_logs(fleet):
    from shared.wire import message

    lines = [(101, 0, 1, 0, 0), (102, 0, 2, 1, 1)]
    fleet.send(Message(f"orrery/f1/d00/{message.LOG}", codec.encode_log(7, 1, lines)))
    got = fleet.ok("GET", "/devices/d00/logs")
    assert [(x["seq"], x["level"]) for x in got] == [(1, "info"), (2, "info")]
    assert got == json.loads(run("devices", "logs", "d00", "--json", "--db", fleet.url).stdout)
    assert len(fleet.ok("GET", "/devices/d00/logs?limit=1")) == 1
    fleet.error("GET", "/devices/nope/logs", 404)
    assert "--since" in fleet.error("GET", "/devices/d00/logs?since=later", 400)
