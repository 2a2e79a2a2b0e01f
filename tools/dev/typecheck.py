"""Type-check the board's code against MicroPython's own stubs (micropython-esp32-stubs).

mypy gets a typeshed made of micropython-stdlib-stubs with the ESP32 port's modules laid over
it (``machine``, ``time`` with ``ticks_ms``, ``micropython``, ``_thread``, ``umqtt`` ...), so
``firmware/`` and ``shared/`` are checked against what a board really has, not CPython.
The simulation HAL (``cloud/orrery/sim/hal.py``) runs on both runtimes and is checked here too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: companion modules that also run on MicroPython (the dual tests run the simulation HAL there)
ALSO_MICROPYTHON = ("cloud/orrery/sim/hal.py",)


def build_typeshed(dest: Path) -> Path:
    """Lay the ESP32 stubs over MicroPython's stdlib stubs in ``dest``; return it."""
    site = Path(sysconfig.get_paths()["purelib"])
    src = site / "stdlib"
    if not (src / "VERSIONS").exists():
        raise SystemExit("micropython-stdlib-stubs is not installed (make setup)")
    stdlib = dest / "stdlib"
    shutil.copytree(src, stdlib)
    shutil.copytree(site / "_mpy_shed", stdlib / "_mpy_shed", dirs_exist_ok=True)
    versions = (stdlib / "VERSIONS").read_text().splitlines()
    known = {line.split(":")[0].strip() for line in versions if ":" in line}
    record = next(site.glob("micropython_esp32_stubs-*.dist-info")) / "RECORD"
    for line in record.read_text().splitlines():
        rel = line.split(",")[0]
        if not rel.endswith(".pyi") or rel.startswith("__builtins__"):
            continue
        target = stdlib / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(site / rel, target)
        mod = rel.split("/")[0].removesuffix(".pyi")
        if mod not in known:
            versions.append(f"{mod}: 3.0-")
            known.add(mod)
    (stdlib / "VERSIONS").write_text("\n".join(versions) + "\n")
    # mypy insists on finding its own extension stubs inside any custom typeshed
    import mypy

    own = Path(mypy.__file__).parent / "typeshed" / "stubs"
    shutil.copytree(own, dest / "stubs")
    return dest


def mypy_command(typeshed: Path, files: list[str]) -> list[str]:
    """The mypy command line that checks ``files`` against ``typeshed`` (``build_typeshed``)
    and nothing of CPython's site-packages."""
    ini = typeshed.parent / "mypy.ini"
    ini.write_text("[mypy]\nignore_missing_imports = False\n")
    return [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ini),
        "--custom-typeshed-dir",
        str(typeshed),
        "--no-site-packages",
        "--python-version",
        "3.11",
        "--pretty",
        # the CPython fallbacks (`def const`, `ticks_ms` on CPython) redefine MicroPython names
        "--disable-error-code",
        "misc",
        "--disable-error-code",
        "no-redef",
        *files,
    ]


def main() -> int:
    files = [
        str(p.relative_to(REPO))
        for pkg in ("shared", "firmware")
        for p in sorted((REPO / pkg).rglob("*.py"))
    ] + list(ALSO_MICROPYTHON)
    with tempfile.TemporaryDirectory(prefix="orrery-typeshed-") as tmp:
        typeshed = build_typeshed(Path(tmp) / "typeshed")
        return subprocess.call(mypy_command(typeshed, files), cwd=REPO)


if __name__ == "__main__":
    raise SystemExit(main())
