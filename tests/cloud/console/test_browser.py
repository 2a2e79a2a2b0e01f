"""The console in a real browser (Debian's chromium under Playwright) against a real uvicorn
server and a real SQLite fleet: log in with a token, the fleet overview, a staged rollout
started from the console whose wave 1 progress moves on the page without a reload while the
boards ack, pause, a device page with its plot; a viewer sees no action buttons and a forged
POST from a viewer is refused. Screenshots land in build/test-artifacts/console/."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from cloud.orrery.console.session import csrf_for
from tests.support.api import ApiFleet
from tests.support.console import Boards, Server, chromium_path, secret_env, shot

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path, monkeypatch):
    secret_env(monkeypatch)
    fleet = ApiFleet(f"sqlite:///{tmp_path / 'fleet.db'}")
    server = Server(fleet.engine)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                     args=["--no-sandbox"])  # fmt: skip
        try:
            yield fleet, server, browser
        finally:
            browser.close()
            server.close()
            fleet.close()


def login(browser, server: Server, token: str) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(15_000)
    page.goto(server.url + "/console/fleet")
    expect(page).to_have_url(server.url + "/console/login?next=/console/fleet")
    page.fill("#token", token)
    page.click("#login")
    expect(page).to_have_url(server.url + "/console/fleet")
    return page


def test_operator_runs_a_staged_rollout_and_a_viewer_only_watches(env):
    fleet, server, browser = env
    page = login(browser, server, fleet.tokens["operator"])
    expect(page.locator("#who")).to_contain_text("operator")
    expect(page.locator("#n-devices")).to_have_text("10")
    expect(page.locator("#n-online")).to_have_text("10")
    expect(page.locator("#devices")).to_contain_text("greenhouse@1")
    shot(page, "fleet")

    # a staged rollout: wave 1 is 4 of the 8 boards on greenhouse@1
    page.click("text=Rollouts")
    page.select_option("#workflow", "greenhouse@2")
    page.fill("#waves", "4,100%")
    page.fill("#min_devices", "1")
    page.fill("#soak", "10m")
    page.fill("#rate", "1000/min")
    page.fill("#health", "5s")
    page.click("#create")
    expect(page.locator("#state")).to_have_text("running")
    expect(page.locator("#notice")).to_have_text("Rollout started.")
    expect(page.locator("#wave-1 .done")).to_have_text("0")
    expect(page.locator("#wave-1 .total")).to_have_text("4")
    page.evaluate("window.__sameDocument = true")

    # the boards of wave 1 ack one by one; the page follows by itself
    boards = Boards(fleet)
    out = fleet.orch.tick()
    assert len(out) == 4, out
    seen = []
    for i, o in enumerate(out, 1):
        boards.install(o)
        fleet.orch.tick()
        expect(page.locator("#wave-1 .done")).to_have_text(str(i), timeout=10_000)
        seen.append(page.locator("#wave-1 .done").text_content())
    assert seen == ["1", "2", "3", "4"]
    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    expect(page.locator("#soak")).to_be_visible(timeout=10_000)
    left = int(page.locator("#soak-left").text_content() or "0")
    assert 0 < left <= 600
    expect(page.locator("#members")).to_contain_text("succeeded")
    shot(page, "rollout")

    page.click("#btn-pause")
    expect(page.locator("#state")).to_have_text("paused")
    expect(page.locator("#notice")).to_have_text("Rollout paused.")
    expect(page.locator("#btn-resume")).to_be_visible()
    expect(page.locator("#btn-pause")).to_be_hidden()
    expect(page.locator("#log")).to_contain_text("operator")
    rollout_url = page.url.split("?")[0]
    shot(page, "rollout-paused")

    page.click("#members a >> nth=0")
    expect(page.locator("h1")).to_contain_text("d0")
    expect(page.locator("#workflow")).to_contain_text("greenhouse@2")
    expect(page.locator("#timeline")).to_contain_text("install")

    page.goto(server.url + "/console/devices/d00")
    chart = page.locator("#plot svg.chart")
    expect(chart).to_have_count(1)
    expect(chart).to_have_attribute("data-channel", "temp")
    expect(chart.locator("polyline")).to_have_count(1)
    expect(chart).to_contain_text("5 readings")
    shot(page, "device")

    # a viewer sees the same rollout without a single action, and cannot forge one
    viewer = login(browser, server, fleet.tokens["viewer"])
    viewer.goto(rollout_url)
    expect(viewer.locator("#state")).to_have_text("paused")
    expect(viewer.locator("#actions")).to_have_count(0)
    expect(viewer.locator("button[id^=btn-]")).to_have_count(0)
    viewer.goto(server.url + "/console/rollouts")
    expect(viewer.locator("#new-rollout")).to_have_count(0)
    shot(viewer, "rollout-viewer")
    forged = viewer.request.post(
        rollout_url + "/resume", form={"csrf": csrf_for(fleet.tokens["viewer"])}
    )
    assert forged.status == 403 and "has role viewer; this needs operator" in forged.text()
    status = viewer.request.get(rollout_url + "/status.json").json()
    assert status["summary"]["state"] == "paused"
    time.sleep(0)  # nothing in flight


def test_a_browser_without_the_cookie_is_sent_to_log_in(env):
    fleet, server, browser = env
    page = browser.new_page()
    page.goto(server.url + "/console/rollouts")
    expect(page).to_have_url(server.url + "/console/login?next=/console/rollouts")
    page.fill("#token", "orrery_not-a-token")
    page.click("#login")
    expect(page.locator("#error")).to_have_text("unknown or revoked token")
    r = page.request.get(server.url + "/console/rollouts/1/status.json")
    assert r.status == 401
