"""The ``orrery`` command line: the root app, its command groups, and ``main``.

``orrery X Y`` lives in ``cloud/orrery/cli/X.py``; ``common.py`` holds what the commands share.
Every failure ends the same way: one line ``error: …`` on stderr and a non-zero exit code
(``OrreryGroup``); a traceback is shown only with ``ORRERY_DEBUG=1``.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cloud.orrery.cli import (
    api,
    bench,
    board,
    broker,
    bundle,
    commands,
    demo,
    devices,
    readings,
    rollout,
    serve,
    sim,
    tokens,
    workflow,
)
from cloud.orrery.cli.common import console, error_line


class OrreryGroup(TyperGroup):
    """The root command: a usage error, an unexpected exception or an interrupt ends as one
    ``error:`` line on stderr and a non-zero exit, never as a traceback or a help box."""

    def main(
        self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra: Any
    ):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            error_line("aborted")
            code = 1
        except Exception as exc:
            code = _exit_code(exc)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _exit_code(exc: Exception) -> int:
    """Report an exception that ended a command; return the exit code."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # the help is printed already
        return exc.exit_code  # type: ignore[attr-defined]
    if isinstance(getattr(exc, "exit_code", None), int) and hasattr(exc, "format_message"):
        # click's own (typer's copy): a usage error, a bad parameter, a file it could not open
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        error_line(exc.format_message() + hint)  # type: ignore[attr-defined]
        return exc.exit_code  # type: ignore[attr-defined]
    if os.environ.get("ORRERY_DEBUG"):
        raise exc
    error_line(f"unexpected {type(exc).__name__}: {exc} (ORRERY_DEBUG=1 shows the traceback)")
    return 1


app = typer.Typer(
    cls=OrreryGroup,
    help="Orrery: MicroPython sensor boards and the companion that runs their fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(bench.app, name="bench")
app.add_typer(workflow.app, name="workflow")
app.add_typer(devices.app, name="devices")
app.add_typer(commands.app, name="commands")
app.add_typer(readings.app, name="readings")
app.command("serve")(serve.serve)
app.add_typer(bundle.app, name="bundle")
app.add_typer(rollout.app, name="rollout")
app.add_typer(broker.app, name="broker")
app.add_typer(board.app, name="board")
app.command("demo")(demo.demo)
app.command("sim")(sim.sim)
app.command("api")(api.api)
app.add_typer(tokens.app, name="tokens")


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        from importlib.metadata import version as pkg_version

        console.print(f"orrery {pkg_version('orrery')}")
        raise typer.Exit()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point. SIGTERM ends a command as Ctrl-C does, through its clean-up
    (the brokers, companions and databases it started); ``orrery serve`` installs its own
    handler, which drains first."""
    signal.signal(signal.SIGTERM, _interrupt)
    app(prog_name="orrery")
