"""The executor keeps private const() copies of the compact form's constants (so MicroPython
folds them and keeps no names in RAM); they must equal shared.program's public ones."""

from __future__ import annotations

import re
from pathlib import Path

from shared import executor, program

SRC = Path(executor.__file__).read_text()


def test_private_copies_match_program() -> None:
    checked = 0
    for name in re.findall(r"^_?([A-Z][A-Z0-9_]*) = const\(", SRC, re.M):
        public = getattr(program, name, None)
        if public is None:
            continue
        mine = getattr(executor, name, None)
        if mine is None:
            mine = getattr(executor, "_" + name)
        assert mine == public, name
        checked += 1
    assert checked >= 20, f"only {checked} constants compared"
