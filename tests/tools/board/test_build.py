"""The board build: every shared/firmware module compiles with mpy-cross and loads on MicroPython."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.board import build
from tools.dev import mpwasm


def test_every_board_file_compiles(tmp_path: Path) -> None:
    manifest = build.build(tmp_path)
    sources = build.board_sources()
    assert len(manifest) == len(sources) > 0
    for src in sources:
        rel = src.relative_to(build.REPO).with_suffix(".mpy").as_posix()
        assert (tmp_path / rel).stat().st_size > 0
        assert len(manifest[rel]) == 64


def test_compiled_modules_import_on_micropython(tmp_path: Path) -> None:
    build.build(tmp_path)
    modules = [
        src.relative_to(build.REPO)
        .with_suffix("")
        .as_posix()
        .replace("/", ".")
        .removesuffix(".__init__")
        for src in build.board_sources()
    ]
    code = (
        "import sys, json\n"
        "sys.path.insert(0, '/mpy')\n"
        f"mods = {modules!r}\n"
        "out = {}\n"
        "for m in mods:\n"
        "    mod = __import__(m)\n"
        "    for part in m.split('.')[1:]:\n"
        "        mod = getattr(mod, part)\n"
        "    out[m] = mod.__file__\n"
        "print(json.dumps(out))\n"
    )
    files = mpwasm.run_json(code, mounts={"/mpy": tmp_path})
    assert set(files) == set(modules)
    for name, path in files.items():
        assert path.startswith("/mpy/") and path.endswith(".mpy"), (name, path)


def test_syntax_error_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "bad.py").write_text("def f(:\n    pass\n")
    with pytest.raises(build.BuildError, match=r"shared/bad.py"):
        build.build(tmp_path / "out", repo=tmp_path)


def test_runtime_reports_guest_failure() -> None:
    res = mpwasm.run("raise ValueError('boom')")
    assert res.exit_code != 0
    assert "ValueError: boom" in res.stderr + res.stdout
    with pytest.raises(RuntimeError, match="boom"):
        res.check()


def test_repo_mount_is_read_only() -> None:
    res = mpwasm.run("open('/repo/should_not_exist.txt', 'w')")
    assert res.exit_code != 0
    assert not (build.REPO / "should_not_exist.txt").exists()


def test_fuel_is_deterministic() -> None:
    code = "x = 0\nfor i in range(500):\n    x += i\nprint(x)"
    a, b = mpwasm.run(code), mpwasm.run(code)
    assert a.stdout == b.stdout == "124750\n"
    assert a.fuel_used == b.fuel_used > 0


def test_typecheck_uses_micropython_stubs(tmp_path: Path) -> None:
    """The firmware type check knows MicroPython's API, not CPython's."""
    import subprocess

    from tools.dev import typecheck

    ts = typecheck.build_typeshed(tmp_path / "ts")
    src = tmp_path / "probe.py"
    src.write_text(
        "import time\nimport machine\nt = time.ticks_ms()\nx = time.monotonic()\nmachine.Pin(2, machine.Pin.OUT)\n"
    )
    out = subprocess.run(
        typecheck.mypy_command(ts, [str(src)]), capture_output=True, text=True
    ).stdout
    assert 'Module has no attribute "monotonic"' in out, out
    assert "ticks_ms" not in out and "machine" not in out.replace(str(src), ""), out
