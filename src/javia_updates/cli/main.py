"""Root of the ``javia`` command: wires the command groups together.

Each group lives in its own module; server-only dependencies are imported
inside the commands that need them, so ``javia agent ...`` runs on a Pi that
installed only the base distribution.
"""

from __future__ import annotations

import sys

import typer

from javia_updates import __version__
from javia_updates.cli import db, demo, devices, keys, publish, server, simulate, updates
from javia_updates.cli.common import fail
from javia_updates.errors import JaviaError

app = typer.Typer(
    name="javia",
    help="Over-the-air updates for a fleet of Raspberry Pi voice assistants.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("publish")(publish.publish)
app.add_typer(devices.app, name="devices")
app.add_typer(updates.app, name="updates")
app.add_typer(keys.app, name="keys")
app.command("server")(server.serve)
app.add_typer(db.app, name="db")
app.command("demo")(demo.demo)
app.command("simulate")(simulate.simulate)


def _add_agent() -> None:
    from javia_agent.cli import app as agent_app

    app.add_typer(agent_app, name="agent", help="Run and inspect the agent on a device.")


_add_agent()


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Show javia's version and exit."),
) -> None:
    if version:
        typer.echo(f"javia {__version__}")
        raise typer.Exit()


def run() -> None:
    """Console-script entry point: no traceback ever reaches the user."""
    try:
        app()
    except JaviaError as error:  # pragma: no cover - commands catch their own
        fail(str(error))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    run()
