"""``POST/GET /api/v1/rollouts/{id}/preview`` and a rollout created with a preview gate, as each
role, on real rows (SQLite and PostgreSQL), through FastAPI's TestClient to the real app."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from cloud.orrery.api.app import create_app
from cloud.orrery.fleet import tokens
from tests.support.api import ROLES, SECRET
from tests.support.cli import run
from tests.support.preview_rows import BROKEN_GATE, LOOSE_GATE, WARM, PreviewDb


class Api:
    """A PreviewDb behind the API, a token per role named after it."""

    def __init__(self, url: str) -> None:
        self.db = PreviewDb(url)
        self.url = url
        with self.db.engine.begin() as conn:
            self.tokens = {r: tokens.create(conn, r, r, by="test")[0] for r in ROLES}
        self.client = TestClient(create_app(engine=self.db.engine), raise_server_exceptions=False)

    def call(self, method: str, path: str, as_: str, **kw):
        headers = {"Authorization": f"Bearer {self.tokens[as_]}"}
        return self.client.request(method, "/api/v1" + path, headers=headers, **kw)

    def ok(self, method: str, path: str, as_: str = "viewer", **kw):
        r = self.call(method, path, as_, **kw)
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def error(self, method: str, path: str, status: int, as_: str = "operator", **kw) -> str:
        r = self.call(method, path, as_, **kw)
        assert r.status_code == status, (r.status_code, r.text)
        body = r.json()
        assert set(body) == {"error"} and "\n" not in body["error"], body
        return body["error"]


@pytest.fixture
def api(db_url, monkeypatch):
    monkeypatch.setenv("ORRERY_SECRET", SECRET)
    monkeypatch.delenv("ORRERY_SECRET_FILE", raising=False)
    a = Api(db_url)
    yield a
    a.client.close()
    a.db.close()


BODY = {"workflow": "greenhouse@3", "target": "fleet=f1", "waves": "100%", "success": "100%",
        "max_failures": "100%", "min_devices": 1, "soak": "0s"}  # fmt: skip


def test_preview_runs_stores_and_is_read_back_by_role(api):
    rid = api.ok("POST", "/rollouts", "operator", json={**BODY, "preview_gate": BROKEN_GATE})[
        "rollout_id"
    ]
    assert "has no stored preview" in api.error("GET", f"/rollouts/{rid}/preview", 404, "viewer")
    assert "operator" in api.error("POST", f"/rollouts/{rid}/preview", 403, "viewer", json={})
    p = api.ok("POST", f"/rollouts/{rid}/preview", "operator", json={"since": "2h"})
    assert p["rollout"] == rid and p["at"] and p["to"] == "greenhouse@3"
    assert p["gate"]["passed"] is False and p["devices"] == 6 and p["changed"] == 2
    assert {d["device"] for d in p["per_device"]} >= set(WARM)  # the breaking devices' entries
    assert p["verdict"].endswith(f"gate broken: {BROKEN_GATE} on 2 device(s) (p00, p01)")
    assert api.ok("GET", f"/rollouts/{rid}/preview", "viewer") == p
    s = api.ok("GET", f"/rollouts/{rid}")
    assert s["preview_gate"] == BROKEN_GATE
    assert s["preview"] == {"at": p["at"], "to": "greenhouse@3", "summary": p["summary"],
                            "verdict": p["verdict"], "passed": False}  # fmt: skip
    assert s == json.loads(run("rollout", "status", str(rid), "--json", "--db", api.url).stdout)
    log = api.ok("GET", f"/rollouts/{rid}/log")["items"]
    assert [(e["event"], e["by"], e["detail"]) for e in log[1:]] == [
        ("preview", "operator", p["verdict"])
    ]
    msg = api.error("POST", f"/rollouts/{rid}/start", 409)
    assert msg.startswith(f"rollout {rid} cannot start: its preview of ")
    # a rollback's preview is answered, not stored
    assert api.error("POST", f"/rollouts/{rid}/preview", 409, json={"rollback": True}) == (
        f"rollout {rid}: no member runs greenhouse@3 to roll back from"
    )
    api.db.runs(["p00"], 3)
    back = api.ok("POST", f"/rollouts/{rid}/preview", "operator", json={"rollback": True})
    assert (back["at"], back["to"], back["devices"]) == (None, "previous versions", 1)
    assert api.ok("GET", f"/rollouts/{rid}/preview", "viewer") == p


def test_create_with_preview_and_dry_run(api):
    dry = api.ok("POST", "/rollouts", "operator",
                 json={**BODY, "dry_run": True, "preview": True, "preview_gate": BROKEN_GATE})  # fmt: skip
    assert dry["rollout_id"] is None and dry["preview"]["rollout"] is None
    assert dry["preview"]["at"] is None and dry["preview"]["gate"]["passed"] is False
    assert api.ok("GET", "/rollouts")["total"] == 0
    plan = api.ok("POST", "/rollouts", "operator",
                  json={**BODY, "preview": True, "preview_gate": LOOSE_GATE})  # fmt: skip
    rid = plan["rollout_id"]
    assert plan["preview"]["gate"]["passed"] is True
    assert plan["preview"] == api.ok("GET", f"/rollouts/{rid}/preview")
    assert api.ok("POST", f"/rollouts/{rid}/start", "operator")["state"] == "running"


def test_bad_requests(api):
    rid = api.ok("POST", "/rollouts", "operator", json=BODY)["rollout_id"]
    bid = api.db.bundle_rollout()
    assert api.error("POST", f"/rollouts/{bid}/preview", 409, json={}).endswith(
        "a preview replays workflows, not app bundles"
    )
    assert api.error("POST", "/rollouts/99/preview", 404, json={}) == (
        "no rollout 99 (see `orrery rollout list`)"
    )
    assert "no rollout 99" in api.error("GET", "/rollouts/99/preview", 404, "viewer")
    assert api.error("POST", f"/rollouts/{rid}/preview", 400, json={"since": "soon"}).startswith(
        "since: 'soon' is neither a duration"
    )
    assert api.error("POST", f"/rollouts/{rid}/preview", 400, json={"until": "x"}).startswith(
        "until: 'x' is neither"
    )
    assert "is not before until" in api.error(
        "POST", f"/rollouts/{rid}/preview", 400, json={"since": "1h", "until": "2h"}
    )
    assert api.error("POST", f"/rollouts/{rid}/preview", 400, json={"alerts": ["hot"]}) == (
        "alerts: alert rule 'hot': expected CHANNEL>LEVEL or CHANNEL<LEVEL, e.g. 0>3000"
    )
    api.error("POST", f"/rollouts/{rid}/preview", 422, json={"alerts": ["0>1"] * 21})
    assert api.error(
        "POST", "/rollouts", 400, json={**BODY, "preview_gate": "events.alarm<=+1"}
    ) == (
        "--preview-gate: bound 'events.alarm<=+1': greenhouse@3 has no event 'alarm' (its events: "
        "cooling_started, watering_done, fault_raised, status)"
    )
    assert api.error("POST", "/rollouts", 400, json={**BODY, "preview_gate": "what"}).startswith(
        "--preview-gate: "
    )
    api.error("POST", "/rollouts", 422, json={**BODY, "preview_gate": "x" * 501})
    assert api.ok("GET", "/rollouts")["total"] == 2  # the two created above


def test_the_console_rollout_page_shows_the_gate_and_the_stored_preview(api):
    import html

    rid = api.ok("POST", "/rollouts", "operator", json={**BODY, "preview_gate": BROKEN_GATE})[
        "rollout_id"
    ]
    c = api.client
    r = c.post("/console/login", data={"token": api.tokens["viewer"], "next": "/console/rollouts"},
               follow_redirects=False)  # fmt: skip
    assert r.status_code == 303
    page = html.unescape(c.get(f"/console/rollouts/{rid}").text)
    assert f'<code id="preview-gate">{BROKEN_GATE}</code>' in page
    assert (
        f"no preview yet: starting it runs one, or <code>orrery rollout preview {rid}</code>"
        in page
    )
    p = api.ok("POST", f"/rollouts/{rid}/preview", "operator", json={})
    page = html.unescape(c.get(f"/console/rollouts/{rid}").text)
    assert f'<p id="preview-verdict" class="error">{p["verdict"]}</p>' in page
    assert "\n".join(p["summary"]) in page and "no preview yet" not in page
    plain = api.ok("POST", "/rollouts", "operator", json={**BODY, "target": "device=p00"})
    assert 'id="preview"' not in c.get(f"/console/rollouts/{plain['rollout_id']}").text
