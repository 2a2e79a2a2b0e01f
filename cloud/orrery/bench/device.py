"""The device benchmark (``orrery bench device``): the shared core's cost on a real MicroPython
runtime.

Every figure comes from one run on this machine: fuel (wasmtime's deterministic instruction
budget) and microseconds per sample or step, bytes allocated per call, calls that fail under
``heap_lock``, and the heap the shared core holds with the representative workflow loaded.
Each integer filter is measured beside a naive float/list version of the same filter in the
same run, so the ratio is meaningful on a noisy, shared machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

from cloud.orrery.sim import workflows
from tools.board import build
from tools.dev import mpwasm, umqtt

REPO = Path(__file__).resolve().parents[3]
WORKFLOW = workflows.GREENHOUSE

HEAP_TARGET = 24 * 1024
STEADY_TARGET = 72_000  # the whole firmware at work (issue 17)
PEAK_TARGET = 96_000  # ... while a workflow install and an app bundle install run
RATIO_TARGET = 2.0

# The whole-firmware run (tools/dev/bench/firmware_guest.py): greenhouse@1 boots from flash,
# works for RUN_MS, installs greenhouse@2 (health window HEALTH_S), then an app bundle of the
# board's own .mpy files in BUNDLE_CHUNK-byte chunks (one signed command each).
RUN_MS = 30_000
HEALTH_S = 5
# The sender's choice: 2 KiB chunks (2.9 KB envelopes) keep what one pass of the board handles
# small, and the bundle within the board's replay table (64 command ids: 49 chunks here); the
# sender keeps at most the board's admission budget (firmware.uplink.CMD_BUDGET bytes of
# envelopes) in flight, as a sender that waits for the acks does.
BUNDLE_CHUNK = 2048
# The modules a board keeps imported, dependencies first (each one's cost is its own).
RESIDENT = (
    "firmware",
    "shared",
    "firmware.clock",
    "firmware.safemode",
    "firmware.sht31",
    "firmware.hal",
    "firmware.main",
    "firmware.files",
    "firmware.records",
    "shared.wire",
    "shared.wire.message",
    "firmware.store",
    "firmware.backoff",
    "shared.filters",
    "shared.workflow",
    "shared.workflow.program",
    "shared.workflow.executor",
    "firmware.sampler",
    "firmware.uplink",
    "firmware.node",
    "firmware.link",
)

# One representative spec per filter kind, at a 100 ms sample period.
PERIOD_MS = 100
FILTER_SPECS: list[dict] = [
    {"type": "moving_average", "window": 16},
    {"type": "ema", "alpha": 0.2},
    {"type": "median", "window": 7},
    {"type": "min", "window": 16},
    {"type": "max", "window": 16},
    {"type": "lowpass", "cutoff_hz": 0.5},
    {"type": "highpass", "cutoff_hz": 0.5},
    {"type": "biquad", "design": "lowpass", "cutoff_hz": 1.0, "q": 0.7071},
    {"type": "delta", "threshold": 20},
    {"type": "clamp", "min": -1000, "max": 3000},
    {"type": "calibrate", "gain": 0.805, "offset": -12},
    {"type": "hysteresis", "low": 1000, "high": 1500},
    {"type": "debounce", "samples": 3},
    {"type": "throttle", "samples": 10},
    {"type": "heartbeat", "samples": 10},
]
CHAIN_SPECS: list[dict] = [
    {"type": "clamp", "min": -500, "max": 4000},
    {"type": "median", "window": 5},
    {"type": "moving_average", "window": 8},
    {"type": "calibrate", "gain": 0.805, "offset": -12},
    {"type": "biquad", "design": "lowpass", "cutoff_hz": 1.0, "q": 0.7071},
]


def _signal(n: int, seed: int = 1) -> list[int]:
    """A deterministic noisy slow sine in the sample domain (an LCG, not ``random``)."""
    import math

    out, s = [], seed
    for i in range(n):
        s = (1103515245 * s + 12345) & 0x7FFFFFFF
        noise = (s >> 16) % 61 - 30
        out.append(int(1500 + 1200 * math.sin(i / 40.0)) + noise)
    return out


def _compiled_specs(specs: list[dict]) -> list[dict]:
    from shared.filters.spec import compile_spec

    out = []
    for spec in specs:
        code, params = compile_spec(spec, PERIOD_MS)
        out.append(
            {
                "name": spec["type"],
                "spec": spec,
                "period_ms": PERIOD_MS,
                "code": code,
                "params": list(params),
            }
        )
    return out


def _romfs(src: Path) -> bytes:
    """A ROMFS image of the compiled board code (mpremote's builder; its listing is muted)."""
    from mpremote.romfs import make_romfs

    with contextlib.redirect_stdout(io.StringIO()):
        return make_romfs(str(src), mpy_cross=False)


def filter_modules(blob: bytes) -> list[str]:
    """The ``shared.filters`` modules a board loads to build a compiled workflow's chains."""
    from shared.filters import catalog
    from shared.workflow.program import Program

    prog = Program(blob)
    mods: list[str] = []
    for i in range(len(prog.input_names)):
        for code, _ in prog.filters(i):
            mod = catalog._TABLE[code][1]
            if mod not in mods:
                mods.append(mod)
    return mods


def _heap_config(blob: bytes) -> dict:
    """What heap_guest.py needs from the host: the workflow and the firmware's list of
    rare-path modules."""
    from firmware import RARE, REPORTS

    return {
        "workflow_blob": blob.hex(),
        "filter_modules": filter_modules(blob),
        "rare": list(RARE) + list(REPORTS),
    }


def _sht31() -> list[int]:
    """An SHT31 reading (25 degC, 50 %RH) with its CRC bytes, for BoardHal's I2C stand-in."""
    from firmware.sht31 import crc8

    sht = bytearray(b"\x66\x66\x00\x80\x00\x00")
    sht[2] = crc8(sht, 0, 2)
    sht[5] = crc8(sht, 3, 5)
    return list(sht)


def _heap(cfg: dict, mounts: dict) -> dict:
    """Heap of the shared core with the workflow (tools/dev/bench/heap_guest.py)."""
    return _guest(REPO / "tools" / "dev" / "bench" / "heap_guest.py", cfg, mounts=mounts)


def _publish(topic: str, payload: bytes, pid: int) -> bytes:
    """An MQTT 3.1.1 PUBLISH (QoS 1) packet, as the broker sends it to the board."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + pid.to_bytes(2, "big") + payload
    head, n = bytearray([0x32]), len(body)
    while True:
        b, n = n & 0x7F, n >> 7
        head.append(b | (0x80 if n else 0))
        if not n:
            return bytes(head) + body


def _firmware_config(mpy_dir: Path, blob: bytes) -> tuple[dict, bytes, dict]:
    """The whole-firmware run's config, the command packets the broker delivers (one bytes
    string; ``packet_ranges`` in the config) and what they carry."""
    import base64
    import hashlib

    from shared import bundle
    from shared.wire import codec, connect, message
    from shared.workflow import compiler

    key, dev, fleet = bytes(32), "dev1", "f1"

    def cmd(cmd_id: str, kind: str, args: dict) -> bytes:
        return codec.sign_command(key, cmd_id, dev, kind, args, 0, 3600)

    v1 = compiler.compile(workflows.GREENHOUSE_V1.read_bytes()).blob
    cmds = [
        cmd("c1", "run_command", {"name": "status"}),
        cmd(
            "c2",
            "install_workflow",
            {
                "blob": base64.b64encode(blob).decode(),
                "sha256": hashlib.sha256(blob).hexdigest(),
                "health_s": HEALTH_S,
            },
        ),
    ]
    # the app bundle: the board's own code (its .mpy files), as a release carries it
    files = [
        (f.relative_to(mpy_dir).as_posix(), f.read_bytes())
        for f in sorted(mpy_dir.rglob("*.mpy"))
        if f.relative_to(mpy_dir).parts[0] in build.BOARD_PACKAGES
    ]
    app = bundle.pack(files)
    chunks = [app[i : i + BUNDLE_CHUNK] for i in range(0, len(app), BUNDLE_CHUNK)]
    cmds.append(
        cmd(
            "b0",
            "install_bundle",
            {
                "version": "0.2.0",
                "sha256": hashlib.sha256(app).hexdigest(),
                "size": len(app),
                "chunk_size": BUNDLE_CHUNK,
                "chunks": len(chunks),
            },
        )
    )
    for i, c in enumerate(chunks):
        data = base64.b64encode(c).decode()
        cmds.append(
            cmd(f"b{i + 1}", "bundle_chunk", {"version": "0.2.0", "index": i, "data": data})
        )
    topic = connect.topic(fleet, dev, message.CMD)
    packets, ranges = b"", []
    for pid, env in enumerate(cmds, 1):
        p = _publish(topic, env, pid)
        ranges.append([len(packets), len(packets) + len(p)])
        packets += p
    cfg = {
        "device_config": {
            "device_id": dev,
            "fleet": fleet,
            "broker": {"host": "mqtt.example.net", "port": 1883, "tls": False},
            "username": dev,
            "password": "p" * 24,
            "hmac_key": key.hex(),
            "board": "esp32-devkitc",
            "wifi": {"ssid": "greenhouse-net", "password": "w" * 16},
        },
        "workflow_blob": v1.hex(),
        "sht31": _sht31(),
        "packet_ranges": ranges,
        "resident_order": list(RESIDENT),
        "packages": ["firmware", "shared", "umqtt"],
        "run_ms": RUN_MS,
        "health_ms": (HEALTH_S + 1) * 1000,
        "window": fw_window(),
        "envelope_bytes": [len(c) for c in cmds],
    }
    carried = {
        "workflow_install": {
            "from": "greenhouse@1",
            "blob_bytes": len(blob),
            "envelope_bytes": len(cmds[1]),
        },
        "bundle_install": {
            "bundle_bytes": len(app),
            "files": len(files),
            "chunk_bytes": BUNDLE_CHUNK,
            "chunks": len(chunks),
            "largest_envelope_bytes": max(len(c) for c in cmds[3:]),
        },
    }
    return cfg, packets, carried


def _firmware(cfg: dict, packets: bytes, mounts: dict) -> dict:
    """One whole-firmware run (tools/dev/bench/firmware_guest.py) on a fresh flash."""
    guest = REPO / "tools" / "dev" / "bench" / "firmware_guest.py"
    with (
        tempfile.TemporaryDirectory(prefix="orrery-flash-") as flash,
        tempfile.TemporaryDirectory(prefix="orrery-bench-") as tmp,
    ):
        Path(tmp, "config.json").write_text(json.dumps(cfg))
        Path(tmp, "packets.bin").write_bytes(packets)
        return mpwasm.run_json(  # type: ignore[return-value]
            guest.read_text(),
            mounts={"/bench": tmp, **mounts},
            rw_dir=flash,
            heap="2M",
            fuel=400_000_000_000,
        )


def _phases(steps: dict) -> dict:
    # per phase: passes run, the most the heap held before one (collected), and the most it
    # can have held during one (that, plus every byte the pass allocated)
    # and, of the pass with that bound, what was live before it and which loop ran it
    loops = {1: "main", 2: "link"}
    return {
        k: {
            "passes": v[0],
            "live": v[1],
            "bound": v[2],
            "bound_pass": {"live": v[3], "loop": loops.get(v[4], "")},
        }
        for k, v in steps.items()
    }


def _firmware_figures(fw: dict, fw_rom: dict, carried: dict) -> dict:
    """The whole firmware's figures, from .mpy and from ROMFS."""
    for r in (fw, fw_rom):  # figures of installs that did not complete would mean nothing
        if r["resets"] != 1 or r["workflow"] != "greenhouse@2":
            raise RuntimeError(
                "bench device: the installs did not complete (workflow {}, {} reset(s))".format(
                    r["workflow"], r["resets"]
                )
            )

    def figures(r: dict) -> dict:
        marks, phases = r["marks"], _phases(r["steps"])
        steady = max(marks["steady_boot"], marks["steady"], phases["run"]["live"])
        steady = max(steady, phases["health"]["live"])
        install = max(phases["workflow"]["bound"], phases["bundle"]["bound"])
        # what the heap certainly held at some moment of an install (collected between passes)
        seen = max(phases["workflow"]["live"], phases["bundle"]["live"], marks["after_bundle"])
        return {
            "steady": steady,
            "peak": install,
            "peak_live_seen": seen,
            "marks": marks,
            "phases": phases,
        }

    out = figures(fw)
    out["modules"] = fw["modules"]
    out["resident_modules"] = fw["resident"]
    out["loaded_from"] = fw["loaded_from"]
    out["workflow_after"] = fw["workflow"]
    # the acks the board remembers (firmware.sampler: a line each), the newest per command
    acks = dict(line.split(" ", 2)[:2] for line in fw["acks"].split("\n") if line)
    out["acks"] = {k: int(v) for k, v in sorted(acks.items())}
    out["resets"] = fw["resets"]
    out["installs"] = {**carried, "bytes_in_flight": fw_window()}
    out["umqtt"] = {"package": "micropython-umqtt.simple", "version": umqtt.VERSION}
    rom = figures(fw_rom)
    out["romfs"] = {k: rom[k] for k in ("steady", "peak", "peak_live_seen", "phases")}
    return out


def fw_window() -> int:
    """The sender's window: the bytes of command envelopes the board admits at once."""
    from firmware.uplink import CMD_BUDGET

    return CMD_BUDGET


def _guest(path: Path, config: dict, **kw) -> dict:
    with tempfile.TemporaryDirectory(prefix="orrery-bench-") as tmp:
        Path(tmp, "config.json").write_text(json.dumps(config))
        mounts = {"/bench": tmp, **kw.pop("mounts", {})}
        return mpwasm.run_json(path.read_text(), mounts=mounts, **kw)  # type: ignore[return-value]


def _heap_target(target: int, mpy: int, romfs: int) -> dict:
    # a heap target's figures from .mpy (stock firmware) and from ROMFS, and whether each meets it
    return {
        "target": f"<= {target}",
        "measured_mpy": mpy,
        "measured_romfs": romfs,
        "met_mpy": mpy <= target,
        "met_romfs": romfs <= target,
    }


def run(samples: int = 1000) -> dict:
    """Measure everything; return the figures as a JSON-able dict."""
    from shared.workflow import compiler

    compiled = compiler.compile(WORKFLOW.read_bytes())
    prog_inputs = _signal(samples, seed=7)
    config = {
        "samples": samples,
        "inputs": _signal(samples),
        "filters": _compiled_specs(FILTER_SPECS),
        "chain": _compiled_specs(CHAIN_SPECS),
        "workflow_blob": compiled.blob.hex(),
        "workflow_inputs": prog_inputs,
    }
    guest = REPO / "tools" / "dev" / "bench" / "device_guest.py"
    costs: dict = {"filters": []}
    for item in config["filters"]:
        r = _guest(guest, {**config, "task": "filter", "filter": item})
        costs["runtime"] = r["runtime"]
        costs["filters"].append(r["result"])
    costs["chain"] = _guest(guest, {**config, "task": "chain"})["result"]
    costs["workflow_step"] = _guest(guest, {**config, "task": "workflow"})["result"]

    umqtt_src = umqtt.source()
    with tempfile.TemporaryDirectory(prefix="orrery-mpy-") as mpy_dir:
        build.build(Path(mpy_dir))
        # micropython-lib's umqtt.simple, in /lib as mip puts it on a board
        build.compile_file(umqtt_src, Path(mpy_dir, "lib", "umqtt", "simple.mpy"))
        fw_cfg, packets, carried = _firmware_config(Path(mpy_dir), compiled.blob)
        mpy_cfg = {**_heap_config(compiled.blob), "path": "/mpy"}
        heap_mpy = _heap(mpy_cfg, {"/mpy": mpy_dir})
        fw = _firmware({**fw_cfg, "path": "/mpy"}, packets, {"/mpy": mpy_dir})
        with tempfile.TemporaryDirectory(prefix="orrery-romfs-") as rom_dir:
            Path(rom_dir, "img.romfs").write_bytes(_romfs(Path(mpy_dir)))
            rom = {"path": "/rom", "romfs": "/romimg/img.romfs"}
            heap_rom = _heap({**mpy_cfg, **rom}, {"/romimg": rom_dir})
            fw_rom = _firmware({**fw_cfg, **rom}, packets, {"/romimg": rom_dir})
    firmware = _firmware_figures(fw, fw_rom, carried)

    allocs = sum(f["int"]["heap_lock_allocations"] for f in costs["filters"])
    allocs += (
        costs["chain"]["int"]["heap_lock_allocations"]
        + costs["workflow_step"]["heap_lock_allocations"]
    )
    alloc_bytes = max(
        [f["int"]["alloc_bytes"] for f in costs["filters"]]
        + [costs["chain"]["int"]["alloc_bytes"], costs["workflow_step"]["alloc_bytes"]]
    )
    chain_ratio = costs["chain"]["ratio_fuel"]
    result = {
        **costs,
        "workflow": {
            "name": compiled.name,
            "version": compiled.version,
            "hash": compiled.hash,
            "blob_bytes": len(compiled.blob),
            "computed_heap_bytes": compiled.heap_bytes,
        },
        "heap": {
            "from_mpy": heap_mpy,
            "from_romfs": heap_rom,
            "computed_workflow_bytes": compiled.heap_bytes,
        },
        "firmware": firmware,
        "targets": {
            "allocations_per_call": {
                "target": 0,
                "measured_heap_lock_failures": allocs,
                "max_alloc_bytes_per_call": alloc_bytes,
                "met": allocs == 0 and alloc_bytes == 0,
            },
            "chain_vs_naive_float": {
                "target": f">= {RATIO_TARGET}x",
                "ratio_fuel": chain_ratio,  # judged in fuel: deterministic, unlike time
                "ratio_us": costs["chain"]["ratio_us"],
                "met": chain_ratio >= RATIO_TARGET,
            },
            "shared_core_heap_bytes": _heap_target(
                HEAP_TARGET, heap_mpy["total"], heap_rom["total"]
            ),
            "firmware_steady_bytes": _heap_target(
                STEADY_TARGET, firmware["steady"], firmware["romfs"]["steady"]
            ),
            "firmware_peak_bytes": _heap_target(
                PEAK_TARGET, firmware["peak"], firmware["romfs"]["peak"]
            ),
        },
    }
    t = result["targets"]
    # Heap is judged as stock firmware runs it: .mpy files copied into RAM (no ROMFS partition).
    t["met"] = (
        t["allocations_per_call"]["met"]
        and t["chain_vs_naive_float"]["met"]
        and t["shared_core_heap_bytes"]["met_mpy"]
        and t["firmware_steady_bytes"]["met_mpy"]
        and t["firmware_peak_bytes"]["met_mpy"]
    )
    return result
