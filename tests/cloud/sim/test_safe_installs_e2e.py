"""Safe installs (issue 15, "When changes happen"), end to end: virtual boards running the real
firmware, a real Mosquitto, the companion in its own process (``orrery serve``'s service, its
orchestrator on the fleet's virtual clock), a real SQLite database, and the operator's side
through the CLI (in-process).

Every board runs a pump whose output switches on and off by itself (timers: idle 20 s with the
pump off, running 30 s with it on; an operator's ``kick`` restarts the cycle, which spreads the
boards' cycles) and that names ``safe_states: ["idle"]`` with a 60 s wait.
A rollout of the next version and then a reboot of every board go out while the pumps cycle:
boards that are running wait (the companion shows them waiting), and no board installs or
reboots while its pump is on, judged from what each board did (the order of its output changes,
its workflow switches and its resets). One board is held running by an operator command: its
install waits out the 60 s and is acked UNSAFE; the rollout counts it as failed with that reason
and pauses on its failure threshold; once released, ``rollout retry --failed`` installs it.
"""

from __future__ import annotations

import json
import time
from itertools import count

import pytest
from typer.testing import CliRunner

from cloud.orrery.cli import app
from cloud.orrery.sim.fleet import VirtualFleet

pytestmark = pytest.mark.slow

N = 8
MIN = 60_000
runner = CliRunner()


def pump(version: int) -> dict:
    return {
        "name": "pump",
        "version": version,
        "outputs": ["fan"],
        "timers": ["t"],
        "initial": "idle",
        "safe_states": ["idle"],
        "safe_wait_s": 60,
        "states": [
            {"name": "idle",
             "entry": [{"set_output": "fan", "value": 0}, {"start_timer": "t", "ms": 20_000}],
             "on": [{"when": {"timer": "t"}, "target": "running"},
                    {"when": {"command": "hold"}, "target": "held"},
                    {"when": {"command": "kick"}, "target": "idle"}]},
            {"name": "running",
             "entry": [{"set_output": "fan", "value": 1}, {"start_timer": "t", "ms": 30_000}],
             "on": [{"when": {"timer": "t"}, "target": "idle"},
                    {"when": {"command": "hold"}, "target": "held"},
                    {"when": {"command": "kick"}, "target": "idle"}]},
            {"name": "held",
             "entry": [{"set_output": "fan", "value": 1}, {"cancel_timer": "t"}],
             "on": [{"when": {"command": "release"}, "target": "idle"}]},
        ],
    }  # fmt: skip


def cli(f: VirtualFleet, *args: str) -> str:
    r = runner.invoke(app, [*args, "--db", f.db_url], env={"ORRERY_SECRET": f.secret.decode()})
    assert r.exit_code == 0, r.output
    return r.stdout


def run_until(
    f: VirtualFleet, pred, virtual_ms: int, on_pass=None, pace: float = 0.01, real_s: float = 180
) -> bool:
    """Run the fleet a virtual second at a time (sleeping ``pace`` real seconds after each, so
    the companion, which ticks once a real second, sees the clock often) until ``pred()`` or
    ``virtual_ms`` have passed."""
    end, deadline = f.now_ms + virtual_ms, time.monotonic() + real_s
    while not pred():
        if f.now_ms >= end or time.monotonic() > deadline:
            return False
        f.run(1000, on_pass)
        time.sleep(pace)
    return True


def send(f: VirtualFleet, *args: str) -> None:
    """``orrery devices send …``; returns once the board has run it (acked OK)."""
    ids = json.loads(cli(f, "devices", "send", *args, "--json"))["ids"]
    done = lambda: f.rows("SELECT status FROM commands WHERE id = :i", i=ids[0])[0][0] == "done"  # noqa: E731
    assert run_until(f, done, MIN, pace=0.05), f.companion_tail()


class Witness:
    """What each board did, in order: its pump output's changes, its workflow version switches
    and its resets (instrumenting the virtual boards' HAL and reset, nothing of the firmware)."""

    def __init__(self, f: VirtualFleet) -> None:
        self.seq = count()
        self.seen: dict[str, list[tuple[int, str, int]]] = {n: [] for n in f.boards}
        for name, b in f.boards.items():
            self._watch(name, b)

    def _watch(self, name: str, b) -> None:
        log = self.seen[name]
        hal, step, reboot = b.hal, b.step, b.reboot
        fan = hal.output_index("fan")
        set_output = hal.set_output

        def on_output(index, value):
            v = set_output(index, value)
            if index == fan:
                log.append((next(self.seq), "fan", v))
            return v

        def on_step():
            before, fan_before = b.version, hal.outputs[fan]
            step()
            if b.version != before:  # the pump as the pass that switched found it
                log.append((next(self.seq), "fan", fan_before))
                log.append((next(self.seq), "install", b.version or 0))

        def on_reboot():
            log.append((next(self.seq), "reboot", 0))
            reboot()

        hal.set_output = on_output
        b.step = on_step
        b.reboot = on_reboot

    def changes(self, name: str) -> list[tuple[str, int, int]]:
        """Board ``name``'s installs and reboots, each with its pump output just before."""
        fan, out = 0, []
        for _, what, v in self.seen[name]:
            if what == "fan":
                fan = v
            else:
                out.append((what, v, fan))
        return out

    def switched_on(self, name: str) -> int:
        """How often board ``name``'s pump was switched on."""
        return sum(1 for _, what, v in self.seen[name] if what == "fan" and v == 1)


@pytest.fixture
def fleet(tmp_path):
    v1, v2 = tmp_path / "pump_v1.json", tmp_path / "pump_v2.json"
    v1.write_text(json.dumps(pump(1)))
    v2.write_text(json.dumps(pump(2)))
    f = VirtualFleet(N, f"sqlite:///{tmp_path / 'cloud.db'}", seed=7, uplink_ms=10_000,
                     health_window_s=10, flash_workflow=v1, push=(v1, v2))  # fmt: skip
    yield f
    f.close()


def test_no_board_installs_or_reboots_while_its_pump_runs(fleet):
    f = fleet
    seen = Witness(f)
    names = sorted(f.boards)
    held = names[0]
    f.start_companion()
    assert run_until(f, lambda: f.online_count() == N, 5 * MIN), "every board came online"
    for name in names:  # the cycles, 6 s apart
        send(f, name, "run", "kick")
        f.run(6000)
    send(f, held, "run", "hold")
    assert f.boards[held].node.wf.ex.state_name() == "held"

    # the rollout: boards whose pump runs wait for it to stop, the held one waits in vain
    plan = json.loads(cli(f, "rollout", "create", "--workflow", "pump@2", "--target",
                          f"fleet={f.fleet_id}", "--waves", "100%", "--success", "100%",
                          "--max-failures", "10%", "--min-devices", "1", "--soak", "0s",
                          "--health", "10s", "--rate", "1000/min", "--json"))  # fmt: skip
    rid = plan["rollout_id"]
    cli(f, "rollout", "start", str(rid))
    waits: dict[str, str] = {}  # board -> the wait status showed for it
    texts: list[str] = []

    def watch_status() -> None:
        if f.passes % 3:
            return
        s = f.summary(rid)
        for w in s["waiting_safe_devices"]:
            waits.setdefault(w["device"], w["detail"])
        if s["waiting_safe"] and not texts:
            texts.append(cli(f, "rollout", "status", str(rid)))

    paused = lambda: f.rollout_state(rid)[0] == "paused"  # noqa: E731
    assert run_until(f, paused, 5 * MIN, watch_status, pace=0.04), (
        f.member_states(rid), f.companion_tail())  # fmt: skip
    state, reason, _ = f.rollout_state(rid)
    assert reason.startswith("failure threshold: 1 of ")
    assert waits[held] == "waiting for a safe state (in held; up to 60 s)"
    assert len(waits) >= 2, f"some cycling pumps were running when their install came: {waits}"
    assert "device(s) waiting for a safe state before they install:" in texts[0]
    assert f"{held}: waiting for a safe state (in held; up to 60 s)" in texts[0]
    detail = dict(f.rows("SELECT d.name, m.detail FROM rollout_devices m JOIN devices d"
                         " ON d.id = m.device_id WHERE m.rollout_id = :r", r=rid))  # fmt: skip
    assert f.member_states(rid)[held] == "failed"
    assert detail[held] == "UNSAFE: no safe state within 60 s (in held)"
    assert f.boards[held].version == 1, "it kept running the version it had"

    # the others finish their health window; the held board, released, takes it on a retry
    assert run_until(f, lambda: f.on_version(2) == N - 1 and list(f.member_states(rid).values())
                     .count("succeeded") == N - 1, 3 * MIN)  # fmt: skip
    send(f, held, "run", "release")
    assert "1 device(s) re-queued" in cli(f, "rollout", "retry", str(rid), "--failed")
    cli(f, "rollout", "resume", str(rid))
    assert run_until(f, lambda: f.rollout_state(rid)[0] == "finished", 5 * MIN), (
        f.member_states(rid), f.companion_tail())  # fmt: skip
    assert f.on_version(2) == N

    # a reboot of every board: each waits for its pump to stop
    sent = json.loads(cli(f, "devices", "send", f"fleet={f.fleet_id}", "reboot", "--json"))
    shown: dict[str, dict] = {}

    def watch_commands() -> None:
        if f.passes % 3:
            return
        for c in json.loads(cli(f, "commands", "list", "--state", "acked", "--json")):
            if c["kind"] == "reboot":
                shown.setdefault(c["device"], c)

    boots = {n: b.stats.boots for n, b in f.boards.items()}
    assert run_until(f, lambda: all(b.stats.boots > boots[n] for n, b in f.boards.items()),
                     3 * MIN, watch_commands, pace=0.04), sent  # fmt: skip
    assert shown, "some boards' pumps were running when the reboot came"
    one = next(iter(shown.values()))
    assert (one["state"], one["result"]) == ("acked", "IN_PROGRESS")
    assert one["detail"].startswith("waiting for a safe state (in running; up to 60 s)")
    full = json.loads(cli(f, "commands", "show", one["id"], "--json"))
    assert full["detail"] == one["detail"] or full["result"] == "OK"

    # what the boards did: never a change while the pump was on
    for name in names:
        changes = seen.changes(name)
        assert [w for w, _, _ in changes].count("reboot") == 1, (name, changes)
        assert ("install", 2, 0) in changes, (name, changes)
        assert all(fan == 0 for _, _, fan in changes), (name, changes)
        assert seen.switched_on(name) >= 2, "its pump switched on and off meanwhile"
