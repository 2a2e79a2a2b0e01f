"""Write the board modules' private ``const()`` copies of constants defined elsewhere.

MicroPython folds ``_NAME = const(value)`` into the bytecode, so a private copy costs a board
no RAM, while importing a constants module would keep the module and its names in RAM. Each
constant still has one source: a board module that needs copies holds a block like::

    # Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
    _SEQ_MAX = const(0x3FFFFFFF)  # 2**30 - 1, the largest small int on a 32-bit MicroPython
    _OK = const(0)

and this tool writes every line of the block from the source file: ``_NAME`` is the source's
``NAME`` (or its private ``_NAME``), with the source's literal text and comment; a line that
ends in ``# = OTHER`` copies the source's ``OTHER`` under its own name. The lines of a block are
kept in name order. Add a name to
a block with any value and run the tool; ``--check`` (part of ``make test``) fails when a block
differs from its source or names a constant its source does not define.

``python -m tools.dev.consts [--check]``
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOARD_PACKAGES = ("shared", "firmware")

_HEADER = re.compile(
    r"^# Copied from (\S+\.py) by python -m tools\.dev\.consts: edit them there\.$"
)
_LINE = re.compile(r"^(_[A-Z][A-Z0-9_]*) = const\((.*?)\)(\s+#.*)?$")
_ALIAS = re.compile(r"\s+# = ([A-Za-z_][A-Za-z0-9_]*)$")


class ConstsError(Exception):
    """A block that names a source or a constant that does not exist."""


@dataclass(frozen=True)
class Source:
    """One source constant: its value, the literal text that defines it, and its comment."""

    value: int
    text: str
    comment: str


def _value(node: ast.expr, known: dict[str, int]) -> int | None:
    # The int an expression of int literals, known names and + - * // << >> | & evaluates to.
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name):
        return known.get(node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "const":
        return _value(node.args[0], known) if len(node.args) == 1 else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _value(node.operand, known)
        return None if v is None else -v
    if isinstance(node, ast.BinOp):
        a, b = _value(node.left, known), _value(node.right, known)
        if a is None or b is None:
            return None
        ops = {
            ast.Add: lambda: a + b,
            ast.Sub: lambda: a - b,
            ast.Mult: lambda: a * b,
            ast.FloorDiv: lambda: a // b,
            ast.LShift: lambda: a << b,
            ast.RShift: lambda: a >> b,
            ast.BitOr: lambda: a | b,
            ast.BitAnd: lambda: a & b,
        }
        op = ops.get(type(node.op))
        return None if op is None else op()
    return None


def sources(path: Path) -> dict[str, Source]:
    """The int constants a module defines at its top level, by name."""
    text = path.read_text()
    lines = text.splitlines()
    known: dict[str, int] = {}
    out: dict[str, Source] = {}
    for node in ast.parse(text).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if not isinstance(target, ast.Name):
            continue
        value = _value(node.value, known)
        if value is None:
            continue
        known[target.id] = value
        expr = node.value
        if isinstance(expr, ast.Call):  # const(x): copy x
            expr = expr.args[0]
        literal = ast.get_source_segment(text, expr) or str(value)
        if not isinstance(expr, ast.Constant) and not (
            isinstance(expr, ast.UnaryOp) and isinstance(expr.operand, ast.Constant)
        ):
            literal = str(value)  # an expression of other names: its value
        line = lines[node.lineno - 1]
        comment = line[line.index("#") :] if "#" in line[node.end_col_offset :] else ""
        out[target.id] = Source(value, literal, comment)
    return out


def board_modules(repo: Path | None = None) -> list[Path]:
    """Every Python file of the board packages."""
    repo = repo or REPO
    files: list[Path] = []
    for pkg in BOARD_PACKAGES:
        files.extend(sorted((repo / pkg).rglob("*.py")))
    return [f for f in files if "__pycache__" not in f.parts]


def rewrite(path: Path, repo: Path | None = None) -> tuple[str, int]:
    """``path``'s text with every copied block written from its source, and how many copies."""
    repo = repo or REPO
    lines = path.read_text().splitlines(keepends=True)
    out: list[str] = []
    block: list[str] = []  # the block being written, sorted by name when it ends
    src: dict[str, Source] | None = None
    src_name = ""
    copies = 0
    for n, line in enumerate(lines, 1):
        header = _HEADER.match(line.rstrip("\n"))
        m = _LINE.match(line.rstrip("\n")) if src is not None and not header else None
        if m is None:
            out.extend(sorted(block))
            block = []
        if header:
            src_name = header.group(1)
            src_path = repo / src_name
            if not src_path.is_file():
                raise ConstsError(f"{path.relative_to(repo)}:{n}: no source file {src_name}")
            src = sources(src_path)
            out.append(line)
            continue
        if src is None or m is None:
            src = None
            out.append(line)
            continue
        name = m.group(1)
        alias = _ALIAS.match(m.group(3) or "")
        wanted = [alias.group(1)] if alias else [name[1:], name]
        s = next((src[w] for w in wanted if w in src), None)
        if s is None:
            raise ConstsError(
                f"{path.relative_to(repo)}:{n}: {src_name} defines no {' or '.join(wanted)}"
            )
        comment = f"  # = {wanted[0]}" if alias else (f"  {s.comment}" if s.comment else "")
        block.append(f"{name} = const({s.text}){comment}\n")
        copies += 1
    out.extend(sorted(block))
    return "".join(out), copies


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.dev.consts", description=__doc__)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if a block differs")
    args = ap.parse_args(argv)
    stale: list[str] = []
    total = 0
    try:
        for path in board_modules():
            new, copies = rewrite(path)
            total += copies
            if new != path.read_text():
                stale.append(path.relative_to(REPO).as_posix())
                if not args.check:
                    path.write_text(new)
    except ConstsError as exc:
        print(f"consts: {exc}", file=sys.stderr)
        return 1
    if args.check and stale:
        print(
            "consts: these modules' copied constants differ from their sources "
            "(run python -m tools.dev.consts): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    verb = "checked" if args.check else ("rewrote " + str(len(stale)) + " module(s);")
    print(f"consts: {verb} {total} copied constant(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
