"""Board modules keep private const() copies of public constants (so MicroPython folds them
and keeps no names in RAM); they must equal the public ones: shared.compact's for the
workflow form, shared.codec's for the wire protocol."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared import codec, compact

REPO = Path(__file__).resolve().parent.parent

# (board module, public module it copies, fewest constants it must share with it)
COPIES = [
    ("shared/executor.py", compact, 20),
    ("shared/progload.py", compact, 50),
    ("shared/program.py", compact, 5),
    ("shared/activate.py", compact, 7),
    ("shared/protocol.py", codec, 6),
    ("shared/protostart.py", codec, 1),
    ("shared/protoreport.py", codec, 2),
    ("shared/verifier.py", codec, 10),
    ("firmware/node.py", codec, 5),
    ("firmware/commands.py", codec, 6),
    ("firmware/installer.py", codec, 5),
    ("firmware/bundle.py", codec, 4),
]


@pytest.mark.parametrize(("path", "public", "least"), COPIES)
def test_private_copies_match_public(path: str, public: object, least: int) -> None:
    src = (REPO / path).read_text()
    checked = 0
    for private, name, value in re.findall(r"^(_?)([A-Z][A-Z0-9_]*) = const\(([^)]*)\)", src, re.M):
        twin = getattr(public, name, getattr(public, "_" + name, None))
        if twin is None:
            continue
        assert int(value, 0) == twin, (path, private + name)
        checked += 1
    assert checked >= least, f"{path}: only {checked} constants compared"


# (module with private copies, module they copy, names): copies between board modules
TWINS = [
    (
        "shared/protoreport.py",
        "shared/protocol.py",
        ("_SEQ_MAX", "_E_ONLINE", "_E_EXTRA", "_E_EXTRA_VALUE", "_E_FW", "_E_WF", "_E_SYNCED")
        + ("_E_NO_ID", "_E_DETAIL", "_E_REASON"),
    ),
    ("shared/activate.py", "shared/executor.py", ("_OFF", "_SNAP_FORMAT", "_SNAP_HEADER")),
    (
        "firmware/recover.py",
        "firmware/store.py",
        ("_MAGIC", "_CMAGIC", "_LMAGIC", "_CSIZE", "_LSIZE", "_CROTATE", "_RECORD_SIZE"),
    ),
]


@pytest.mark.parametrize(("path", "source", "names"), TWINS)
def test_private_copies_match_their_module(path: str, source: str, names: tuple) -> None:
    mine = (REPO / path).read_text()
    theirs = (REPO / source).read_text()
    for name in names:
        got = re.search(rf"^{name} = const\(([^)]*)\)", mine, re.M)
        want = re.search(rf"^_?{name.lstrip('_')} = const\(([^)]*)\)", theirs, re.M)
        assert got and want and int(got.group(1), 0) == int(want.group(1), 0), (path, name)


def test_node_no_value_is_the_executors() -> None:
    from shared.executor import NO_VALUE

    got = re.search(r"^_NO_VALUE = const\(([^)]*)\)", (REPO / "firmware/node.py").read_text(), re.M)
    assert got and int(got.group(1), 0) == NO_VALUE
