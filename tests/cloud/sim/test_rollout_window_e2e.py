"""A maintenance window that opens mid-test (issue 15, "When changes happen"), end to end:
virtual boards running the real firmware, a real Mosquitto, the companion in its own process
(``orrery serve``'s service, its orchestrator on the fleet's virtual clock) and the rollout made
with ``orrery rollout create --window … --window-tz tag.tz`` (the CLI, in-process).

Half of the boards are tagged ``tz=Europe/Berlin``, the rest have no zone (one has a tag that
names none) and follow the window in UTC. The window is two windows: one that opens for the UTC
boards about four virtual minutes after the rollout starts, and one that opens for the Berlin
boards six minutes later, each at a wall-clock time in its own zone. Nothing is sent before the
first opening; until the second, only the UTC boards of the first wave get their command, the
Berlin ones wait (and hold the wave); after it the waves go on and the rollout finishes.
"""

from __future__ import annotations

import getpass
import json
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from cloud.orrery.cli import app
from cloud.orrery.sim.fleet import VirtualFleet

pytestmark = pytest.mark.slow

N = 12
MIN = 60_000
BERLIN = ZoneInfo("Europe/Berlin")
runner = CliRunner()


def cli(f: VirtualFleet, *args: str) -> str:
    r = runner.invoke(app, [*args, "--db", f.db_url], env={"ORRERY_SECRET": f.secret.decode()})
    assert r.exit_code == 0, r.output
    return r.stdout


def window_at(t_ms: int, tz, minutes: int) -> str:
    """A window opening at unix ms ``t_ms`` (on a minute) in ``tz``'s wall clock."""
    a = datetime.fromtimestamp(t_ms / 1000, tz)
    b = datetime.fromtimestamp((t_ms + minutes * MIN) / 1000, tz)
    return f"{a:%a} {a:%H:%M}-{b:%H:%M}"


def run_to(f: VirtualFleet, t_ms: int, pred=None, real_s: float = 120) -> bool:
    """Run the fleet a virtual second at a time (at most 100 a real second, so the companion,
    which ticks once a real second, sees the clock often) until virtual ``t_ms`` or ``pred()``."""
    deadline = time.monotonic() + real_s
    while f.now_ms < t_ms and not (pred and pred()):
        if time.monotonic() > deadline:
            return False
        f.run(1000)
        time.sleep(0.01)
    return True


def installs(f: VirtualFleet) -> dict[str, int]:
    """Board -> when (virtual unix ms) its install command was made."""
    return dict(f.rows("SELECT d.name, c.created_ms FROM commands c JOIN devices d ON d.id = c.device_id"
                       " WHERE c.kind = 'install_workflow'"))  # fmt: skip


@pytest.fixture
def fleet(tmp_path):
    f = VirtualFleet(N, f"sqlite:///{tmp_path / 'cloud.db'}", seed=5, uplink_ms=10_000,
                     health_window_s=20)  # fmt: skip
    yield f
    f.close()


def test_a_window_opening_mid_test_holds_the_rollout_until_it_opens(fleet):
    f = fleet
    f.start_companion()
    assert run_to(f, f.now_ms + 10 * MIN, lambda: f.online_count() == N), "every board came online"
    utc_opens = (f.now_ms // MIN + 4) * MIN  # 3 to 4 virtual minutes from now
    berlin_opens = utc_opens + 6 * MIN
    window = f"{window_at(utc_opens, UTC, 30)}; {window_at(berlin_opens, BERLIN, 30)}"
    plan = json.loads(cli(f, "rollout", "create", "--workflow", "greenhouse@2", "--target",
                          f"fleet={f.fleet_id}", "--waves", "50%,100%", "--success", "100%",
                          "--soak", "0s", "--health", "20s", "--rate", "1000/min",
                          "--window", window, "--window-tz", "tag.tz", "--json"))  # fmt: skip
    rid = plan["rollout_id"]
    wave1, wave2 = (w["devices"] for w in plan["waves"])
    assert len(wave1) == len(wave2) == N // 2
    assert plan["schedule"] == {"start_at": None, "window": window, "window_tz": "tag.tz"}
    berlin = wave1[:3] + wave2[:3]  # each wave has boards in both zones
    for n in berlin:
        cli(f, "devices", "tag", n, "tz=Europe/Berlin")
    cli(f, "devices", "tag", wave1[3], "tz=Nowhere/Land")  # names no zone: UTC
    cli(f, "rollout", "start", str(rid))

    # before the first opening: nothing is sent
    assert run_to(f, utc_opens - 10_000)
    s = f.summary(rid)["schedule"]
    assert installs(f) == {}, "nothing before the window opens"
    assert (s["open"], s["waiting"], s["without_zone"]) == (False, N // 2, N // 2)
    assert s["next_open"] == datetime.fromtimestamp(utc_opens / 1000, UTC).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")
    groups = {g["tz"]: g for g in s["groups"]}
    assert groups["Europe/Berlin"]["next_open_local"] == window_at(berlin_opens, BERLIN, 30)[:9]

    # open for the UTC boards only: wave 1's UTC boards install, its Berlin boards wait
    utc_wave1 = [n for n in wave1 if n not in berlin]
    assert run_to(f, berlin_opens - 10_000)
    sent = installs(f)
    assert sorted(sent) == sorted(utc_wave1), (sent, f.companion_tail())
    assert all(t >= utc_opens for t in sent.values())
    states = f.member_states(rid)
    assert all(states[n] == "succeeded" for n in utc_wave1), states
    assert all(states[n] == "queued" for n in berlin), states
    s = f.summary(rid)["schedule"]
    groups = {g["tz"]: g for g in s["groups"]}
    assert (groups["UTC"]["open"], groups["Europe/Berlin"]["open"]) == (True, False)
    assert groups["Europe/Berlin"]["waiting"] == 3 and s["waiting"] == 3
    assert f.rollout_state(rid)[:3:2] == ("running", 1), "wave 1 waits for its Berlin boards"

    # the Berlin window opens: the waves go on, and the rollout finishes inside both windows
    assert run_to(f, utc_opens + 30 * MIN, lambda: f.rollout_state(rid)[0] == "finished"), (
        f.member_states(rid), f.companion_tail())  # fmt: skip
    assert f.now_ms < utc_opens + 30 * MIN
    sent = installs(f)
    assert sorted(sent) == sorted(wave1 + wave2), "one install command each"
    assert all(sent[n] >= berlin_opens for n in berlin), "no Berlin board before its window"
    assert all(t >= utc_opens for t in sent.values())
    assert set(f.member_states(rid).values()) == {"succeeded"}
    f.catch_up()
    assert f.on_version(2) == N
    log = f.rows("SELECT event, detail, actor FROM rollout_log WHERE rollout_id = :r AND device_id IS NULL"
                 " ORDER BY id", r=rid)  # fmt: skip
    assert log[0][0] == "created" and log[0][2] == getpass.getuser()
    assert log[0][1].endswith(f"; window {window} (each device's tag.tz; UTC without one)")
    events = [e for e, _, _ in log]
    assert events[-1] == "finished"
    assert events.index("schedule-held") < events.index("schedule-open"), "held, then sending"
