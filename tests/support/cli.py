"""Running the ``orrery`` CLI in-process for tests."""

from __future__ import annotations

from typer.testing import CliRunner

from cloud.orrery.cli import app

runner = CliRunner()


def run(*args: str, ok: bool = True):
    """Invoke ``orrery ARGS``; assert exit 0 (``ok``) or exit 1 with a message."""
    r = runner.invoke(app, list(args))
    if ok:
        assert r.exit_code == 0, r.output
    else:
        assert r.exit_code == 1, r.output
    return r


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())
