"""The console's pages through the real app (FastAPI's TestClient) on a real fleet, SQLite and
PostgreSQL: the login and its cookie, every page for a viewer, errors as pages, user data
escaped, nothing loaded from elsewhere, and actions: POST only, a per-form token, a form from
another site refused, the role checked on the server, the token's name as the actor."""

from __future__ import annotations

import html
import re

import pytest
import sqlalchemy as sa

from cloud.orrery.console import plot
from cloud.orrery.console.session import COOKIE, csrf_for
from cloud.orrery.fleet import devices, tokens
from tests.support.api import SECRET, ApiFleet

PAGES = (
    "/console/fleet", "/console/fleet?profile=esp32-devkitc", "/console/fleet?tag=site%3Dnorth",
    "/console/devices/d00", "/console/rollouts", "/console/rollouts/1", "/console/workflows",
    "/console/workflows/greenhouse@2", "/console/workflows/diff?a=greenhouse@1&b=greenhouse@2",
    "/console/workflows/simulate?ref=greenhouse@2&device=d00", "/console/bundles",
    "/console/losses",
)  # fmt: skip


@pytest.fixture
def fleet(db_url, monkeypatch):
    monkeypatch.setenv("ORRERY_SECRET", SECRET)
    monkeypatch.delenv("ORRERY_SECRET_FILE", raising=False)
    f = ApiFleet(db_url)
    f.orch.create("greenhouse@2", "all", "2,100%", min_devices=1)
    yield f
    f.close()


def login(fleet: ApiFleet, role: str):
    c = fleet.client
    c.cookies.clear()
    r = c.post("/console/login", data={"token": fleet.tokens[role], "next": "/console/rollouts"},
               follow_redirects=False)  # fmt: skip
    assert r.status_code == 303 and r.headers["location"] == "/console/rollouts"
    return r


def csrf(fleet: ApiFleet, role: str) -> str:
    return csrf_for(fleet.tokens[role])


def state(fleet: ApiFleet, rid: int = 1) -> str:
    return fleet.client.get(f"/console/rollouts/{rid}/status.json").json()["summary"]["state"]


def test_login_keeps_the_token_in_a_strict_httponly_cookie_and_logout_forgets_it(fleet):
    c = fleet.client
    r = c.get("/console/devices/d03", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (
        303,
        "/console/login?next=/console/devices/d03",
    )
    assert c.get("/console/rollouts/1/status.json").status_code == 401
    r = c.post("/console/login", data={"token": "orrery_nope"})
    assert r.status_code == 401 and "unknown or revoked token" in r.text
    cookie = login(fleet, "viewer").headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={fleet.tokens['viewer']};")
    assert {"httponly", "path=/console", "samesite=strict"} <= {
        p.strip().lower() for p in cookie.split(";")
    }
    assert c.get("/console/fleet").status_code == 200
    r = c.post("/console/logout", follow_redirects=False)
    assert r.status_code == 303 and f'{COOKIE}=""' in r.headers["set-cookie"]
    c.cookies.clear()
    assert c.get("/console/fleet", follow_redirects=False).status_code == 303


def test_login_goes_on_only_to_console_pages(fleet):
    for target in ("https://evil.example/x", "//evil.example/x", "/api/v1/devices", "/console"):
        r = fleet.client.post("/console/login", follow_redirects=False,
                              data={"token": fleet.tokens["viewer"], "next": target})  # fmt: skip
        assert r.headers["location"] == "/console/fleet", target


def test_a_form_from_another_site_is_refused_even_login_and_logout(fleet):
    c = fleet.client
    evil = {"origin": "https://evil.example"}
    r = c.post("/console/login", data={"token": fleet.tokens["operator"]}, headers=evil)
    assert r.status_code == 403 and "https://evil.example" in r.text and COOKIE not in c.cookies
    login(fleet, "operator")
    for path in ("/console/logout", "/console/rollouts/1/start"):
        r = c.post(path, data={"csrf": csrf(fleet, "operator")}, headers={"origin": "null"})
        assert r.status_code == 403, path
    assert state(fleet) == "draft" and COOKIE in c.cookies
    same = {"origin": "http://testserver"}
    r = c.post("/console/rollouts/1/start", data={"csrf": csrf(fleet, "operator")}, headers=same)
    assert r.status_code == 200 and state(fleet) == "running"


def test_a_revoked_token_is_sent_back_to_log_in(fleet):
    login(fleet, "viewer")
    with fleet.engine.begin() as conn:
        tokens.revoke(conn, "viewer", by="test")
    r = fleet.client.get("/console/fleet", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")


def test_every_page_renders_for_a_viewer_with_nothing_from_elsewhere(fleet):
    login(fleet, "viewer")
    for path in PAGES:
        r = fleet.client.get(path)
        assert r.status_code == 200, (path, r.text[-500:])
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        urls = re.findall(r'(?:src|href|action)="([^"]*)"', r.text)
        assert urls and all(u.startswith("/console") for u in urls), (path, urls)
        assert '<form method="post" action="/console/rollouts' not in r.text, path
    for asset in ("console.css", "console.js", "favicon.svg"):
        assert fleet.client.get(f"/console/static/{asset}").status_code == 200


def test_pages_show_the_fleet_through_the_fleet_functions(fleet):
    login(fleet, "viewer")
    with fleet.engine.begin() as conn:
        devices.set_tags(conn, devices.device_id(conn, "d01"), [("site", "north")])
    page = fleet.client.get("/console/fleet").text
    assert re.search(r'id="n-devices">10<', page) and re.search(r'id="n-online">10<', page)
    assert "greenhouse@1 <b>8</b>" in page and "greenhouse@2 <b>2</b>" in page
    page = fleet.client.get("/console/fleet?tag=site%3Dnorth").text
    assert re.search(r'id="n-devices">1<', page) and "/console/devices/d01" in page
    assert "/console/devices/d02" not in page
    from cloud.orrery.fleet import logs
    from cloud.orrery.ingest.handler import Message
    from shared.wire import codec, message

    lines = [(101, 0, 1, 0, 0), (102, 0, 2, 1, 1)]
    fleet.send(Message(f"orrery/f1/d00/{message.LOG}", codec.encode_log(7, 1, lines)))
    page = fleet.client.get("/console/devices/d00").text
    with fleet.engine.connect() as conn:
        texts = [x.text for x in logs.lines(conn, devices.device_id(conn, "d00"))]
    assert len(texts) == 2 and all(f"<td>{html.escape(t)}</td>" in page for t in texts)
    assert "7.1" in page and "7.2" in page  # boot.seq
    assert 'data-channel="temp"' in page and "temp (°C) · 5 readings" in page
    assert "<polyline" in page and "21.5" in page  # scaled: 2150 is 21.50 °C
    page = fleet.client.get("/console/rollouts/1").text
    assert 'id="wave-1"' in page and 'id="wave-2"' in page and "draft" in page
    s = fleet.client.get("/console/rollouts/1/status.json").json()
    assert s["summary"]["devices"] == 8 and len(s["members"]) == s["members_total"] == 8
    assert set(s["detail"]["health"]) >= {"upgraded", "control", "metrics"}


def test_errors_are_pages_that_say_what_was_wrong(fleet):
    login(fleet, "viewer")
    for path, status, msg in (
        ("/console/devices/nope", 404, "unknown device &#39;nope&#39;"),
        ("/console/workflows/nope@3", 404, "no workflow &#39;nope@3&#39;"),
        ("/console/rollouts/99", 404, "no rollout 99"),
        ("/console/fleet?tag=nonsense", 400, "tag &#39;nonsense&#39;"),
        ("/console/workflows/simulate?ref=greenhouse@2&device=zz", 404, "unknown device"),
    ):
        r = fleet.client.get(path)
        assert r.status_code == status and msg in r.text, (path, r.status_code, r.text[-400:])
        assert "Traceback" not in r.text


def test_user_data_is_escaped(fleet):
    login(fleet, "viewer")
    evil = "<script>alert(1)</script>"
    with fleet.engine.begin() as conn:
        devices.set_tags(conn, devices.device_id(conn, "d00"), [("note", evil)])
    page = fleet.client.get("/console/devices/d00").text
    assert evil not in page and "note=&lt;script&gt;alert(1)&lt;/script&gt;" in page
    svg = plot.chart('a"<b>', "&", [(0, 1.0), (1000, 2.0)])
    assert "<b>" not in svg and "a&quot;&lt;b&gt; (&amp;)" in svg


def test_a_chart_draws_at_most_its_points_and_keeps_the_last(fleet):
    pts = [(i * 1000, float(i % 7)) for i in range(10_000)]
    svg = plot.chart("t", "", pts)
    drawn = re.search(r'points="([^"]*)"', svg).group(1).split()
    assert len(drawn) <= plot.MAX_POINTS + 1 and "10000 readings" in svg
    assert drawn[-1].startswith(f"{plot.W - plot.RIGHT}.0,")  # the newest reading is drawn
    assert plot.chart("t", "", []) == ""


def test_actions_need_post_the_form_token_and_the_role(fleet):
    c = fleet.client
    login(fleet, "viewer")
    assert c.get("/console/rollouts/1/start").status_code == 405
    r = c.post("/console/rollouts/1/start", data={"csrf": csrf(fleet, "viewer")})
    assert r.status_code == 403 and "has role viewer; this needs operator" in r.text
    r = c.post(
        "/console/rollouts", data={"csrf": csrf(fleet, "viewer"), "workflow": "greenhouse@2"}
    )
    assert r.status_code == 403
    assert state(fleet) == "draft"
    login(fleet, "operator")
    for data in ({}, {"csrf": "x" * 32}, {"csrf": csrf(fleet, "viewer")}):
        r = c.post("/console/rollouts/1/start", data=data)
        assert r.status_code == 403 and "reload the page" in r.text, data
    assert state(fleet) == "draft"
    ok = {"csrf": csrf(fleet, "operator")}
    r = c.post("/console/rollouts/1/start", data=ok, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/console/rollouts/1?done=start")
    assert state(fleet) == "running"
    assert c.post("/console/rollouts/1/pause", data=ok).status_code == 200
    assert state(fleet) == "paused"
    r = c.post("/console/rollouts/1/start", data=ok)
    assert r.status_code == 409 and 'class="error"' in r.text
    assert c.post("/console/rollouts/1/explode", data=ok).status_code == 404
    assert c.post("/console/rollouts/77/pause", data=ok).status_code == 404
    assert c.post("/console/rollouts/1/cancel", data=ok).status_code == 200
    assert state(fleet) == "canceled"
    with fleet.engine.connect() as conn:
        actors = conn.execute(sa.text(
            "SELECT event, actor FROM rollout_log WHERE rollout_id = 1 AND device_id IS NULL"
            " AND event IN ('started', 'paused', 'canceled')")).all()  # fmt: skip
    assert sorted(actors) == [
        ("canceled", "operator"),
        ("paused", "operator"),
        ("started", "operator"),
    ]


def test_an_operator_plans_a_rollout_from_the_form(fleet):
    login(fleet, "operator")
    form = {"csrf": csrf(fleet, "operator"), "workflow": "greenhouse@2", "target": "all",
            "waves": "3,100%", "min_devices": "1"}  # fmt: skip
    r = fleet.client.post("/console/rollouts", data=form, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/console/rollouts/2?done=created")
    assert state(fleet, 2) == "draft"
    for bad, msg in (({"workflow": "greenhouse@9"}, "greenhouse@9"),
                     ({"min_devices": "lots"}, "min devices"),
                     ({"waves": "0"}, "wave")):  # fmt: skip
        r = fleet.client.post("/console/rollouts", data={**form, **bad})
        assert r.status_code == 400 and msg in r.text, (bad, r.text[-600:])
        assert 'class="error"' in r.text


def test_bundles_and_their_diff(fleet):
    from cloud.orrery.fleet import bundles
    from tools.board import bundle as bundle_file

    with fleet.engine.begin() as conn:
        for version in ("1.0.0", "1.0.1"):
            built = bundle_file.build_bundle(version)
            bundles.push(conn, built.data, built.manifest, 0, by="ci")
    login(fleet, "viewer")
    page = fleet.client.get("/console/bundles").text
    assert "app@1.0.0" in page and "app@1.0.1" in page and "/console/bundles/diff" in page
    r = fleet.client.get("/console/bundles/diff?a=app@1.0.0&b=app@1.0.1")
    assert (
        r.status_code == 200 and "app@1.0.0 → app@1.0.1" in r.text and "files unchanged" in r.text
    )
    r = fleet.client.get("/console/bundles/diff?a=app@1.0.0&b=app@9")
    assert r.status_code == 404 and "app@9" in r.text
    # an operator rolls the app out from the same form as a workflow
    login(fleet, "operator")
    assert 'value="bundle:app@1.0.1"' in fleet.client.get("/console/rollouts").text
    form = {"csrf": csrf(fleet, "operator"), "workflow": "bundle:app@1.0.1", "target": "all",
            "waves": "100%", "min_devices": "1"}  # fmt: skip
    r = fleet.client.post("/console/rollouts", data=form)
    assert r.status_code == 400 and "app@1.0.1 cannot run on 10 of the 10" in r.text
    with fleet.engine.begin() as conn:  # as if every board had reported its .mpy version
        conn.execute(sa.text("UPDATE devices SET mpy = :m"), {"m": bundle_file.mpy_version()})
    r = fleet.client.post("/console/rollouts", data=form, follow_redirects=False)
    assert r.status_code == 303, re.findall(r'id="error">([^<]*)', r.text)
    page = fleet.client.get(r.headers["location"]).text
    assert "app bundle app@1.0.1" in page and 'id="downloads"' in page
