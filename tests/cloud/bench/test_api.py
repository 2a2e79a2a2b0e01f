"""``orrery bench api`` end to end on a small fleet: every case measured over the real server
(all answers 200) and directly, with its ratio."""

from __future__ import annotations

from cloud.orrery.bench import api


def test_bench_api_measures_each_case():
    r = api.run(200, seconds=0.5)
    assert r["devices"] == 200 and isinstance(r["met"], bool)
    for case in ("devices_page", "fleet_summary", "rollout_status"):
        f = r[case]
        assert f["api_per_s"] > 0 and f["direct_per_s"] > 0
        assert f["ratio"] == round(f["api_per_s"] / f["direct_per_s"], 3) or abs(
            f["ratio"] - f["api_per_s"] / f["direct_per_s"]
        ) < 0.01
