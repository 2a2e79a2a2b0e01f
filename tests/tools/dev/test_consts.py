"""tools/dev/consts.py: the board modules' private const() copies are written from one source."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.dev import consts

HEADER = "# Copied from src/values.py by python -m tools.dev.consts: edit them there.\n"


def _tree(tmp_path: Path, values: str, user: str) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "values.py").write_text(values)
    path = tmp_path / "src" / "user.py"
    path.write_text(user)
    return path


def test_every_block_in_the_repository_matches_its_source() -> None:
    copies = 0
    for path in consts.board_modules():
        new, n = consts.rewrite(path)
        assert new == path.read_text(), f"{path}: run python -m tools.dev.consts"
        copies += n
    assert copies >= 60, copies


def test_a_block_is_written_from_the_source_with_its_text_and_comment(tmp_path: Path) -> None:
    values = (
        "from shared import const\n"
        "SEQ_MAX = 0x3FFFFFFF  # the largest small int\n"
        "HEADER = 14\n"
        "BOTH = HEADER + 12\n"
        "_PRIVATE = const(-7)\n"
    )
    user = (
        "x = 1\n" + HEADER + "_SEQ_MAX = const(5)\n_BOTH = const(0)\n_PRIVATE = const(0)\n"
        "_WIRE = const(0)  # = HEADER\n\n_LOCAL = const(3)\n"
    )
    path = _tree(tmp_path, values, user)
    new, copies = consts.rewrite(path, repo=tmp_path)
    assert copies == 4
    assert new == (  # in name order
        "x = 1\n" + HEADER + "_BOTH = const(26)\n_PRIVATE = const(-7)\n"
        "_SEQ_MAX = const(0x3FFFFFFF)  # the largest small int\n_WIRE = const(14)  # = HEADER\n\n"
        "_LOCAL = const(3)\n"
    )


def test_a_name_the_source_does_not_define_is_refused(tmp_path: Path) -> None:
    path = _tree(tmp_path, "A = 1\n", HEADER + "_B = const(1)\n")
    with pytest.raises(consts.ConstsError, match="defines no B or _B"):
        consts.rewrite(path, repo=tmp_path)


def test_a_missing_source_file_is_refused(tmp_path: Path) -> None:
    path = _tree(tmp_path, "A = 1\n", HEADER.replace("values.py", "gone.py") + "_A = const(1)\n")
    with pytest.raises(consts.ConstsError, match="no source file src/gone.py"):
        consts.rewrite(path, repo=tmp_path)


def test_check_fails_on_a_stale_copy_and_the_tool_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _tree(tmp_path, "A = 2\n", HEADER + "_A = const(1)\n")
    monkeypatch.setattr(consts, "REPO", tmp_path)
    monkeypatch.setattr(consts, "BOARD_PACKAGES", ("src",))
    assert consts.main(["--check"]) == 1
    assert "src/user.py" in capsys.readouterr().err
    assert path.read_text().endswith("_A = const(1)\n"), "--check writes nothing"
    assert consts.main([]) == 0
    assert path.read_text().endswith("_A = const(2)\n")
    assert consts.main(["--check"]) == 0
