"""App bundle rollouts (issue 15, "App bundles (firmware OTA)"), end to end: virtual boards
running the real firmware (its chunked download, resume from flash, A/B slots, trial boot and
fallback), a real Mosquitto, the companion in its own process (``orrery serve``'s service,
whose orchestrator drives the downloads with ``fleet.rollout.ota``) on the fleet's virtual
clock, and the registry's bundles table.

- 100 boards, 30 of them offline when the rollout starts (they come back during it), and power
  cuts in the middle of downloads: every board converges on the new bundle, and a download that
  was cut resumes from the chunks its flash holds (from the commands table: no chunk stored
  twice, at most a window of chunks sent again).
- A bundle whose trial boot crashes on some boards: they fall back, report ``rolled-back`` with
  the board's reason, and the failure threshold pauses the rollout.
- A real app (``tools.board.deploy.build_app`` + ``shared.bundle.pack``) onto a few boards.
"""

from __future__ import annotations

import random
import re
import time

import pytest

from cloud.orrery.fleet import bundles
from cloud.orrery.fleet.rollout import ota
from cloud.orrery.sim.board import PROFILE_NAME, TORN_CHUNK, mpy_version
from cloud.orrery.sim.fleet import VirtualFleet
from shared import bundle as packing

pytestmark = pytest.mark.slow


def push(f: VirtualFleet, data: bytes, version: str) -> str:
    m = {"name": "app", "version": version, "profile": PROFILE_NAME, "mpy_version": mpy_version(),
         "source_hash": "0" * 64, "files": []}  # fmt: skip
    with f.engine.begin() as c:
        bundles.push(c, data, m, f.now_ms)
    return f"app@{version}"


def small_app(seed: int) -> bytes:
    rnd = random.Random(seed)
    return packing.pack([(f"app/m{i}.mpy", rnd.randbytes(2500)) for i in range(4)])


def run_until(f: VirtualFleet, pred, real_s: float = 50, step_ms: int = 1000) -> bool:
    deadline = time.monotonic() + real_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        f.run(step_ms)
        time.sleep(0.005)
    return True


def create(f: VirtualFleet, ref: str, **kw) -> int:
    o = f.operator()
    opts = dict(waves="100%", success="100%", max_failures="100%", min_devices=1, soak="0s",
                timeout="1h", rate="100000/min", health="20s")  # fmt: skip
    plan = o.create(None, f"fleet={f.fleet_id}", bundle=ref, **{**opts, **kw})
    o.start(plan.rollout_id)
    return plan.rollout_id


def fws(f: VirtualFleet) -> dict[str, str]:
    return dict(f.rows("SELECT name, fw FROM devices WHERE fleet = :f", f=f.fleet_id))


def chunk_acks(f: VirtualFleet) -> dict[str, list[tuple[int, str | None]]]:
    """Board -> (chunk index, ack detail) of every bundle_chunk command, oldest first."""
    out: dict[str, list] = {}
    for name, cid, detail in f.rows(
        "SELECT d.name, c.id, c.ack_detail FROM commands c JOIN devices d ON d.id = c.device_id"
        " WHERE c.kind = 'bundle_chunk' ORDER BY c.created_ms, c.id"
    ):
        out.setdefault(name, []).append((int(cid.rsplit(".", 1)[1]), detail))
    return out


@pytest.fixture
def fleet_of(tmp_path):
    made = []

    def make(n: int, **kw) -> VirtualFleet:
        f = VirtualFleet(n, f"sqlite:///{tmp_path / 'cloud.db'}", seed=7, uplink_ms=20_000,
                         health_window_s=10, **kw)  # fmt: skip
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def test_100_boards_30_offline_and_power_cuts_mid_download_all_converge(fleet_of):
    f = fleet_of(100)
    f.start_companion()
    assert run_until(f, lambda: f.online_count() == 100), "every board came online"
    ref = push(f, small_app(1), "2.0")
    n_chunks = ota.chunk_count(len(small_app(1)))
    names = sorted(f.boards)
    away = names[::10] + names[1::10] + names[2::10]  # 30 boards
    for n in away:
        f.go_away(n)
    assert run_until(f, lambda: f.online_count() == 70)
    rid = create(f, ref)

    # cut the power of boards whose download is halfway
    cut: set[str] = set()

    def halfway() -> bool:
        rows = f.rows("SELECT d.name FROM rollout_devices m JOIN devices d ON d.id = m.device_id"
                      " WHERE m.rollout_id = :r AND m.dl_next BETWEEN 1 AND :k", r=rid,
                      k=n_chunks - 2)  # fmt: skip
        for (n,) in rows[:8]:
            if n not in cut and n not in away:
                f.power_cut(n, TORN_CHUNK)  # a chunk half written to flash
                cut.add(n)
        return len(cut) >= 5

    assert run_until(f, halfway), "downloads under way"
    for n in away:  # the 30 come back while the others download
        f.come_back(n)
    assert run_until(f, lambda: f.rollout_state(rid)[0] == "finished", real_s=55), (
        f.summary(rid), f.companion_tail())  # fmt: skip
    assert set(f.member_states(rid).values()) == {"succeeded"}
    assert set(fws(f).values()) == {"2.0"}, "every board reports the new bundle"
    acks = chunk_acks(f)
    for name in names:
        stored = [i for i, d in acks[name] if d and d.startswith("next")]
        assert sorted(set(stored)) == list(range(n_chunks - 1)), (name, acks[name])
        sent = [i for i, _ in acks[name]]
        assert len(sent) <= n_chunks + ota.WINDOW, (name, acks[name])
    for name in cut:
        stored = [i for i, d in acks[name] if d and d.startswith("next")]
        assert stored.count(0) == 1, "a resumed download does not start over"


def test_a_bundle_that_fails_its_trial_boot_is_rolled_back_and_pauses_the_rollout(fleet_of):
    f = fleet_of(12)
    f.start_companion()
    assert run_until(f, lambda: f.online_count() == 12)
    ref = push(f, small_app(2), "3.0")
    bad = sorted(f.boards)[:4]
    f.crash_trials(bad)
    rid = create(f, ref, max_failures="20%", min_devices=3)
    assert run_until(f, lambda: f.rollout_state(rid)[0] == "paused", real_s=55), (
        f.member_states(rid), f.companion_tail())  # fmt: skip
    states = f.member_states(rid)
    assert {states[n] for n in bad} <= {"rolled-back", "acked", "installing"}
    rolled = [n for n in bad if states[n] == "rolled-back"]
    assert rolled and all(states[n] != "succeeded" for n in bad)
    # it paused on rolled-back boards (more may roll back after the pause), past 20% of the decided
    # (how many had rolled back by then depends on how fast the boards ran)
    reason = f.rollout_state(rid)[1]
    m = re.match(r"failure threshold: (\d+) of (\d+) decided devices failed", reason)
    assert m, reason
    failed, decided = int(m[1]), int(m[2])
    assert 1 <= failed <= len(rolled) and decided >= 3 and failed / decided > 0.2, (reason, states)
    details = dict(f.rows("SELECT d.name, m.detail FROM rollout_devices m JOIN devices d"
                          " ON d.id = m.device_id WHERE m.rollout_id = :r", r=rid))  # fmt: skip
    assert details[rolled[0]].startswith("rolled back: trial boot did not reach the broker")
    assert all(fws(f)[n] != "3.0" for n in rolled), "a board that fell back runs its old app"


def test_a_real_app_bundle_reaches_a_few_boards(fleet_of):
    from cloud.orrery.sim.bundle import app_bundle

    data, _ = app_bundle("4.0")  # what board deploy copies, compiled by mpy-cross, packed
    f = fleet_of(3)
    f.start_companion()
    assert run_until(f, lambda: f.online_count() == 3)
    rid = create(f, push(f, data, "4.0"))
    assert run_until(f, lambda: f.rollout_state(rid)[0] == "finished", real_s=55), (
        f.summary(rid), f.companion_tail())  # fmt: skip
    assert set(fws(f).values()) == {"4.0"}
    n = ota.chunk_count(len(data))
    assert n > 20, "a real app is dozens of chunks"
    for name, acks in chunk_acks(f).items():
        assert len([i for i, d in acks if d and d.startswith("next")]) == n - 1, name
