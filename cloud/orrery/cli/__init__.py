"""The ``orrery`` command line: the root app, its command groups, and ``main``.

``orrery X Y`` lives in ``cloud/orrery/cli/X.py``; ``common.py`` holds what the commands share.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cloud.orrery.cli import (
    bench,
    board,
    broker,
    demo,
    devices,
    readings,
    rollout,
    serve,
    sim,
    workflow,
)
from cloud.orrery.cli.common import console

app = typer.Typer(
    help="Orrery: MicroPython sensor boards and the companion that runs their fleet.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(bench.app, name="bench")
app.add_typer(workflow.app, name="workflow")
app.add_typer(devices.app, name="devices")
app.add_typer(readings.app, name="readings")
app.command("serve")(serve.serve)
app.add_typer(rollout.app, name="rollout")
app.add_typer(broker.app, name="broker")
app.add_typer(board.app, name="board")
app.command("demo")(demo.demo)
app.command("sim")(sim.sim)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        from importlib.metadata import version as pkg_version

        console.print(f"orrery {pkg_version('orrery')}")
        raise typer.Exit()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="orrery")
