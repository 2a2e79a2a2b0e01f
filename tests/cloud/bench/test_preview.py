"""``orrery bench preview`` end to end on a small fleet: the JSON has every figure, the figures
agree with each other and with what was built, and the replay found what greenhouse@3's lower
cooling level changes. No timing is asserted (the machine is shared)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cloud.orrery.bench.preview import UNANCHORED_EVERY
from cloud.orrery.cli import app


def test_bench_preview_json_is_consistent() -> None:
    args = ["bench", "preview", "--devices", "6", "--hours", "1", "--workers", "2", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 2), result.output  # 2: a target missed, still a report
    d = json.loads(result.stdout)
    assert (d["devices"], d["hours"], d["workers"]) == (6, 1, 2)
    assert d["device_days"] == 6 * 1 / 24
    built = d["build"]
    # one reading per 10 s per device, every one in the window
    assert built["readings"] == 6 * 360 == d["select_rows"]
    assert built["unanchored_boots"] == len(range(1, 6, UNANCHORED_EVERY)) > 0
    p = d["preview"]
    assert p["replayed"] == 6 and p["readings"] == built["readings"], "every reading replayed"
    assert p["changed"] > 0, "a lower cooling level must change what some device does"
    assert p["extra_events"]["cooling_started"] > 0
    assert p["events"]["new"] - p["events"]["running"] == sum(p["extra_events"].values())
    assert p["stranded"] == 0 and sum(p["start_states"].values()) == 6
    assert p["start_states"]["reported"] == built["reported_start"] > 0
    # the figures are each other's (times and rates to 4 significant figures: within 0.2%)
    s = d["preview_s"]
    assert d["select_s"] == min(d["select_runs_s"]) > 0

    def near(x: float, y: float) -> bool:
        return abs(x - y) <= 0.002 * abs(y) + 1e-9

    assert near(d["device_days_per_s"], d["device_days"] / s)
    assert near(d["readings_per_s"], p["readings"] / s)
    assert near(d["select_rows_per_s"], d["select_rows"] / d["select_s"])
    assert near(d["ratio"], s / d["select_s"])
    assert near(d["projected_10k_device_days_s"], 10_000 / d["device_days_per_s"])
    t = d["targets"]
    assert set(t) == {"device_days_10k_s", "ratio"}
    assert t["device_days_10k_s"]["met"] == (d["projected_10k_device_days_s"] <= t["device_days_10k_s"]["target"])  # fmt: skip
    assert t["ratio"]["met"] == (d["ratio"] <= t["ratio"]["target"])
    assert d["met"] == (t["device_days_10k_s"]["met"] and t["ratio"]["met"])
    assert (result.exit_code == 0) == d["met"]
