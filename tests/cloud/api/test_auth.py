"""Tokens and roles: who may call what, checked before anything else; ``orrery tokens``."""

from __future__ import annotations

import json

import sqlalchemy as sa

from cloud.orrery.db.tables import API_TOKENS, ROLLOUTS
from cloud.orrery.fleet import tokens
from tests.support.cli import flat, run


def test_no_token_is_401_before_anything_else(fleet):
    for method, path in (("GET", "/devices"), ("GET", "/nowhere"), ("POST", "/rollouts/1/start"),
                         ("GET", "/devices?limit=0"), ("DELETE", "/devices")):  # fmt: skip
        msg = fleet.error(method, path, 401, as_=None)
        assert "no token" in msg and "Authorization: Bearer TOKEN" in msg
    r = fleet.call("GET", "/devices", None)
    assert r.headers["www-authenticate"] == "Bearer"
    # a malformed body is not looked at before the token is
    r = fleet.call("POST", "/rollouts", None, content=b"{not json")
    assert r.status_code == 401
    assert "Bearer TOKEN" in fleet.error("GET", "/devices", 401, headers={"Authorization": "Basic eDp5"}, as_=None)


def test_unknown_and_revoked_tokens_are_401(fleet):
    assert fleet.error("GET", "/devices", 401, as_="orrery_nosuchtoken") == "unknown or revoked token"
    assert fleet.error("GET", "/devices", 401, as_="not-even-the-format") == "unknown or revoked token"
    fleet.ok("GET", "/devices", "viewer")
    r = run("tokens", "revoke", "viewer", "--db", fleet.url)
    assert "token viewer revoked" in r.stdout
    assert fleet.error("GET", "/devices", 401, as_="viewer") == "unknown or revoked token"
    # revoking it again is no error and changes nothing
    assert "was revoked" in run("tokens", "revoke", "viewer", "--db", fleet.url).stdout


def test_a_viewer_cannot_start_a_rollout(fleet):
    plan = fleet.ok("POST", "/rollouts", "operator", json={"workflow": "greenhouse@2", "target": "all"})
    rid = plan["rollout_id"]
    msg = fleet.error("POST", f"/rollouts/{rid}/start", 403, as_="viewer")
    assert msg == "token 'viewer' has role viewer; this needs operator"
    with fleet.engine.connect() as c:
        assert c.execute(sa.select(ROLLOUTS.c.state).where(ROLLOUTS.c.id == rid)).scalar() == "draft"
    # the role is checked before the body: a viewer's malformed request is still 403
    assert fleet.call("POST", "/rollouts", "viewer", content=b"{").status_code == 403
    # an operator may not manage tokens or register devices; an admin may do everything
    fleet.error("GET", "/tokens", 403, as_="operator")
    fleet.error("POST", "/devices", 403, as_="operator", json={"names": ["x"]})
    fleet.ok("POST", f"/rollouts/{rid}/start", "admin")


def test_every_operation_states_its_role_and_the_scheme(fleet):
    doc = fleet.client.get("/api/v1/openapi.json").json()  # the document needs no token
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    ops = [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items()]
    assert len(ops) >= 35
    for m, p, op in ops:
        assert op["x-orrery-role"] in ("viewer", "operator", "admin"), (m, p)
        assert op["security"] == [{"HTTPBearer": []}], (m, p)
        assert {"401", "403", "422"} <= set(op["responses"]), (m, p)
        if m == "get":  # reading is a viewer's, but for the tokens
            assert op["x-orrery-role"] == ("admin" if p == "/api/v1/tokens" else "viewer"), p
    # nothing the API returns carries a token hash, a key or a secret
    text = json.dumps(doc["components"]["schemas"])
    for word in ('"hash_"', "secret", "password", '"key"'):
        assert word not in text.lower()
    assert "hash" not in doc["components"]["schemas"]["Token"]["properties"]


def test_tokens_api_shows_a_token_once_and_never_its_hash(fleet):
    new = fleet.ok("POST", "/tokens", "admin", 201, json={"name": "ci-bot", "role": "operator"})
    assert new["token"].startswith("orrery_") and new["created_by"] == "admin"
    assert fleet.ok("GET", "/devices", new["token"])["total"] == 10
    listed = fleet.ok("GET", "/tokens", "admin")
    assert [t["name"] for t in listed] == ["viewer", "operator", "admin", "ci-bot"]
    assert all("token" not in t and "hash" not in t for t in listed)
    with fleet.engine.connect() as c:
        stored = c.execute(sa.select(API_TOKENS.c.hash).where(API_TOKENS.c.name == "ci-bot")).scalar()
    assert stored == tokens.token_hash(new["token"]) and new["token"] not in stored
    assert stored not in fleet.client.get("/api/v1/tokens", headers={"Authorization": f"Bearer {new['token']}"}).text
    assert "exists already" in fleet.error("POST", "/tokens", 409, json={"name": "ci-bot", "role": "viewer"})
    assert "role" in fleet.error("POST", "/tokens", 422, json={"name": "x", "role": "root"})
    revoked = fleet.ok("POST", f"/tokens/{new['id']}/revoke", "admin")
    assert (revoked["name"], revoked["revoked_by"]) == ("ci-bot", "admin")
    fleet.error("GET", "/devices", 401, as_=new["token"])
    assert "no token 'nobody'" in fleet.error("POST", "/tokens/nobody/revoke", 404)


def test_last_used_is_noted(fleet):
    before = {t["name"]: t["last_used"] for t in fleet.ok("GET", "/tokens", "admin")}
    assert before["viewer"] is None and before["admin"] is not None
    fleet.ok("GET", "/fleet", "viewer")
    after = {t["name"]: t["last_used"] for t in fleet.ok("GET", "/tokens", "admin")}
    assert after["viewer"] is not None


def test_tokens_cli(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    r = run("tokens", "create", "--role", "operator", "--name", "alice", "--db", url)
    token = r.stdout.strip().splitlines()[-1]
    assert token.startswith("orrery_") and len(token) > 40
    assert "shown this once" in r.stdout
    rows = json.loads(run("tokens", "list", "--db", url, "--json").stdout)
    assert [(t["name"], t["role"], t["revoked"]) for t in rows] == [("alice", "operator", None)]
    assert token not in run("tokens", "list", "--db", url).stdout
    assert tokens.token_hash(token) not in run("tokens", "list", "--db", url, "--json").stdout
    made = json.loads(run("tokens", "create", "--role", "viewer", "--name", "bob", "--db", url, "--json").stdout)
    assert made["token"].startswith("orrery_") and made["name"] == "bob"
    # revoke by id
    assert "token bob revoked" in run("tokens", "revoke", str(made["id"]), "--db", url).stdout
    for args, msg in (
        (("create", "--role", "root", "--name", "x"), "role 'root': expected one of viewer, operator, admin"),
        (("create", "--role", "viewer", "--name", "alice"), "a token named 'alice' exists already"),
        (("create", "--role", "viewer", "--name", "a b"), "token name 'a b'"),
        (("revoke", "carol"), "no token 'carol'"),
    ):
        r = run("tokens", *args, "--db", url, ok=False)
        assert msg in flat(r.output) and "Traceback" not in r.output
