"""`orrery bench device` runs on the MicroPython runtime and reports what the issue asks for.

No timing is asserted (the machine is shared); the allocation figures are behaviour, though:
the integer filters, the chain and the workflow step allocate nothing.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cloud.orrery.cli import app


def test_bench_device_json_reports_every_figure() -> None:
    result = CliRunner().invoke(app, ["bench", "device", "--json", "--samples", "200"])
    assert result.exit_code in (0, 2), result.output  # 2: a target missed, still a report
    d = json.loads(result.stdout)
    assert d["runtime"].startswith("MicroPython 1.")
    names = {f["name"] for f in d["filters"]}
    assert names == {
        "moving_average", "ema", "median", "min", "max", "lowpass", "highpass", "biquad",
        "delta", "clamp", "calibrate", "hysteresis", "debounce", "throttle", "heartbeat",
    }
    for f in d["filters"] + [d["chain"]]:
        assert f["int"]["fuel"] > 0 and f["naive_float"]["fuel"] > 0
        assert f["int"]["alloc_bytes"] == 0, f
        assert f["int"]["heap_lock_allocations"] == 0, f
        assert f["ratio_fuel"] == f["naive_float"]["fuel"] / f["int"]["fuel"]
    step = d["workflow_step"]
    assert step["alloc_bytes"] == 0 and step["heap_lock_allocations"] == 0
    assert step["transitions"] > 0, "the representative workflow must actually run"
    heap = d["heap"]["from_mpy"]
    assert heap["total"] == heap["modules"] + heap["workflow"] > 0
    assert all(p.endswith(".mpy") for p in heap["loaded_from"])
    rom = d["heap"]["from_romfs"]
    assert all(p.startswith("/rom/") for p in rom["loaded_from"])
    assert rom["modules"] < heap["modules"], "executing in place must hold less than copying"
    assert d["firmware_heap"]["total_romfs"] < d["firmware_heap"]["total"]
    t = d["targets"]
    assert set(t) >= {"allocations_per_call", "chain_vs_naive_float", "shared_core_heap_bytes", "met"}
    # heap is judged as stock firmware runs it (.mpy); the firmware node's target is reported
    assert t["shared_core_heap_bytes"]["met_mpy"] == (heap["total"] <= 24 * 1024)
    assert t["chain_vs_naive_float"]["met"] == (d["chain"]["ratio_fuel"] >= 2.0)
    assert t["firmware_heap_bytes"]["measured_mpy"] == d["firmware_heap"]["total"]
    assert t["met"] == (
        t["allocations_per_call"]["met"]
        and t["chain_vs_naive_float"]["met"]
        and t["shared_core_heap_bytes"]["met_mpy"]
    )
    assert result.exit_code == (0 if t["met"] else 2)
