"""The bench suite (hw/bench) against the virtual board, as part of ``make test``.

It runs in its own pytest process, the way an engineer runs it against a real board
(``pytest hw/bench --port ...``), and this test checks the outcome test by test: a skip is
not counted as a pass. Without a port the suite must skip every test, saying why.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH_TESTS = {
    "test_deploy_is_incremental",
    "test_sampling",
    "test_store_persists_across_reset",
    "test_workflow_install",
    "test_safe_mode",
    "test_mqtt_round_trip",
}
NOT_ON_VIRTUAL = {
    "test_mqtt_round_trip": "virtual board: MicroPython's WebAssembly port has no network stack"
}


def _run(tmp_path: Path, *args: str) -> dict[str, tuple[str, str]]:
    """Run hw/bench; return {test name: (outcome, skip reason)}."""
    report = tmp_path / "report.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "hw/bench", "-p", "no:cacheprovider", "-p",
         "no:xdist", "-rA", "-o", "addopts=", "--junit-xml", str(report), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    import xml.etree.ElementTree as ET

    out: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).iter("testcase"):
        name = case.get("name", "")
        skipped = case.find("skipped")
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        if failed is not None:
            out[name] = ("failed", (failed.get("message") or "") + proc.stdout[-3000:])
        elif skipped is not None:
            out[name] = ("skipped", skipped.get("message") or "")
        else:
            out[name] = ("passed", "")
    return out


def test_without_a_port_every_test_skips_saying_why(tmp_path):
    got = _run(tmp_path)
    assert set(got) == BENCH_TESTS
    for name, (outcome, reason) in got.items():
        assert outcome == "skipped", name
        assert "no board: pass --port /dev/ttyUSB0" in reason, reason


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_bench_suite_on_the_virtual_board(tmp_path):
    from tools.dev.virtualboard import VirtualBoard

    lib = tmp_path / "lib" / "orrery_benchlib"  # exercises --lib-dir (umqtt itself is not
    lib.mkdir(parents=True)  # downloadable here, and has no network to use on this board)
    (lib / "__init__.py").write_text("BENCH = True\n")
    with VirtualBoard(tmp_path / "flash") as board:
        got = _run(tmp_path, "--port", board.url, "--lib-dir", str(lib.parent))
    assert set(got) == BENCH_TESTS
    for name in sorted(BENCH_TESTS - set(NOT_ON_VIRTUAL)):
        assert got[name][0] == "passed", f"{name}: {got[name]}"
    for name, why in NOT_ON_VIRTUAL.items():
        assert got[name][0] == "skipped" and why in got[name][1], got[name]
    # what the suite left on the board's flash: the app, its manifest, the bench store
    files = {p.relative_to(tmp_path / "flash").as_posix() for p in (tmp_path / "flash").rglob("*")}
    assert {"main.py", "boot.py", "config.json", ".orrery-deploy.json"} <= files
    assert "lib/orrery_benchlib/__init__.py" in files
    assert re.search(r"bench/store/\d{8}\.seg", " ".join(sorted(files)))
