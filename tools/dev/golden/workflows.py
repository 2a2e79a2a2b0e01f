"""Write ``tests/golden/executor.json``: compiled workflows and golden executor traces.

``python -m tools.dev.golden.workflows`` rewrites the file; ``--check`` exits 1 if it is out of
date. For every ``cloud/orrery/sim/workflows/*.json`` it records the blob, its hash, size and
computed heap footprint; for each scripted trace (virtual time, samples, commands, link
events, a reboot) the state, outputs and host calls after every step. The dual tests
compile the sources and replay the traces on CPython and on MicroPython and compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.workflow import compiler
from shared.workflow.form import TICKS_MAX
from shared.workflow.program import Program

REPO = Path(__file__).resolve().parents[3]
SOURCES = REPO / "cloud" / "orrery" / "sim" / "workflows"
OUT = REPO / "tests" / "golden" / "executor.json"


def _greenhouse_script() -> list:
    s: list = []

    def seconds(n, temp=None, hum=None, soil=None):
        for _ in range(n):
            s.append(["at", 1000])
            if temp is not None:
                s.append(["feed", "temp", temp])
            if hum is not None:
                s.append(["feed", "humidity", hum])
            if soil is not None:
                s.append(["feed", "soil", soil])

    seconds(6, temp=2400, hum=6000, soil=2600)  # filters fill; the clock wraps meanwhile
    s += [["cmd", "status"], ["link", "down"], ["link", "up"]]
    seconds(20, temp=3300)  # above 3000 for 5 s -> cooling
    s += [["feed", "temp", None], ["feed", "temp", 40000]]  # refused raw samples
    seconds(6, temp=6000)  # crosses 4500 up -> fault
    s += [["reboot", 17], ["cmd", "reset"]]  # boot re-enters fault; reset guard: too hot
    seconds(8, temp=2900)
    s += [["cmd", "reset"]]  # 2900 < alarm_level 3200 -> idle
    seconds(3, temp=2500, hum=7000, soil=2600)  # after the reboot: fresh filters, no values
    seconds(6, temp=2500, hum=7000, soil=900)  # dry soil, humid enough -> watering
    seconds(4, soil=3000)  # soil crosses 2000 -> idle
    seconds(4, soil=900)  # -> watering again
    s += [["cmd", "stop"], ["cmd", "force_cool"]]
    seconds(61)  # the cooldown timer -> idle
    s += [["cmd", "force_cool"]]
    seconds(4, temp=1000)  # below 2500 -> idle
    seconds(20, temp=3300)  # above 3000 for 5 s -> cooling
    seconds(6, temp=7000)  # crosses 4500 -> fault
    s += [["cmd", "shutdown"], ["cmd", "force_cool"], ["at", 5000]]
    return s


def _lab_script() -> list:
    return [
        ["link", "down"],
        ["link", "up"],
        ["cmd", "inner"],
        ["cmd", "again"],
        ["feed", "b", 10],
        ["feed", "b", -5],
        ["feed", "b", 0],
        ["feed", "b", 5],
        # above a 100 for 1 s (restarted once) -> s2; there, above 200 for 300 ms repeats.
        ["feed", "a", 150],
        ["at", 600],
        ["feed", "a", 90],
        ["feed", "a", 150],
        ["at", 999],
        ["at", 1],
        ["feed", "a", 250],
        ["at", 100],
        ["at", 250],
        ["feed", "a", 260],
        ["at", 50],
        ["at", 300],
        ["feed", "a", -1],
        ["cmd", "sat"],
        ["cmd", "neg"],
        ["feed", "a", 30],
        ["cmd", "go"],
        ["at", 300],
        ["reboot", 1000],
        ["at", 200],
        ["cmd", "stop"],
        ["at", 2000],
        ["cmd", "back"],
        ["feed", "a", 70],
        ["feed", "a", 3],
        ["cmd", "back"],
        ["feed", "a", 10],
        ["cmd", "go"],
        ["cmd", "back"],
        ["feed", "a", 150],
        ["at", 1000],
        ["cmd", "end"],
        ["cmd", "go"],
        ["at", 5000],
    ]


TRACES = [
    {
        "name": "greenhouse_day",
        "workflow": "greenhouse",
        "start_ms": TICKS_MAX - 3499,
        "script": _greenhouse_script(),
    },
    {
        "name": "lab_all_triggers",
        "workflow": "lab",
        "start_ms": TICKS_MAX - 1999,
        "script": _lab_script(),
    },
]


def build() -> dict:
    """The golden document."""
    sys.path.insert(0, str(REPO / "tests" / "dual"))
    from test_executor import play

    workflows = {}
    for path in sorted(SOURCES.glob("*.json")):
        c = compiler.compile(path.read_bytes())
        workflows[path.stem] = {
            "hash": c.hash,
            "blob_bytes": len(c.blob),
            "heap_bytes": c.heap_bytes,
            "blob": c.blob.hex(),
        }
    traces = []
    for t in TRACES:
        prog = Program(bytes.fromhex(workflows[t["workflow"]]["blob"]))
        rows = play(prog, t)
        seen = {r[1] for r in rows}
        missing = set(prog.state_names) - seen
        assert not missing, f"trace {t['name']} never visits {sorted(missing)}"
        traces.append({**t, "expect": rows})
    return {"workflows": workflows, "traces": traces}


def _dump(doc: dict) -> str:
    # One trace op or row per line: small diffs, readable file.
    lines = ["{", '"workflows": ' + json.dumps(doc["workflows"], indent=1) + ",", '"traces": [']
    for i, t in enumerate(doc["traces"]):
        head = {k: v for k, v in t.items() if k not in ("script", "expect")}
        lines.append(json.dumps(head)[:-1] + ', "script": [')
        lines.append(",\n".join(json.dumps(op) for op in t["script"]) + "],")
        lines.append('"expect": [')
        lines.append(",\n".join(json.dumps(r) for r in t["expect"]) + "]}")
        if i < len(doc["traces"]) - 1:
            lines[-1] += ","
    lines.append("]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = ap.parse_args(argv)
    text = _dump(build())
    assert json.loads(text)  # the hand-rolled layout is valid JSON
    if args.check:
        ok = OUT.exists() and OUT.read_text() == text
        print(f"{OUT}: {'up to date' if ok else 'OUT OF DATE'}")
        return 0 if ok else 1
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
