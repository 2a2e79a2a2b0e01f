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
        a, d = f["api_per_s"], f["direct_per_s"]
        # the ratio is of the unrounded rates; the rates are shown to 0.1 (each off by <= 0.05)
        assert abs(f["ratio"] - a / d) <= 0.0005 + 0.05 / (d - 0.05) * (1 + a / d)
