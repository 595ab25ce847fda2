"""Root of the ``javia`` command: wires the command groups together.

Each group lives in its own module of its own package (the agent's in
:mod:`javia_agent.cli`, the server's and operator's in :mod:`javia_updates.cli`,
the dev tools' in :mod:`javia_devtools.cli`); this module only registers them.
Server-only dependencies are imported inside the commands that need them, so
``javia agent ...`` runs on a Pi that installed only the base distribution.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, NoReturn

import typer

from javia_core.errors import JaviaError
from javia_updates import __version__

_app = typer.Typer(
    name="javia",
    help="Over-the-air updates for a fleet of Raspberry Pi voice assistants.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@functools.cache
def _full_app() -> typer.Typer:
    """The root app with every command group (imported on first use, see :func:`run`)."""
    from javia_agent.cli import app as agent_app
    from javia_devtools.cli import demo, simulate
    from javia_updates.cli import db, devices, keys, publish, server, updates, webhooks

    _app.command("publish")(publish.publish)
    _app.add_typer(devices.app, name="devices")
    _app.add_typer(updates.app, name="updates")
    _app.add_typer(keys.app, name="keys")
    _app.command("server")(server.serve)
    _app.add_typer(db.app, name="db")
    _app.add_typer(webhooks.app, name="webhooks")
    _app.command("demo")(demo.demo)
    _app.command("simulate")(simulate.simulate)
    _app.add_typer(agent_app, name="agent", help="Run and inspect the agent on a device.")
    return _app


def command() -> Any:
    """The complete ``javia`` command as it runs: built from :func:`_full_app`, help polished."""
    from javia_cli.help_text import polish

    return polish(typer.main.get_command(_full_app()))


def agent_command() -> Any:
    """``javia agent`` alone (no operator groups imported), help polished."""
    from javia_agent.cli import app as agent_app
    from javia_cli.help_text import polish

    return polish(typer.main.get_command(agent_app))


def __getattr__(name: str) -> typer.Typer:
    """``app``: the complete root app (built on first access)."""
    if name == "app":
        return _full_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@_app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Show javia's version and exit."),
) -> None:
    if version:
        typer.echo(f"javia {__version__}")
        raise typer.Exit()


def _invoke(built: Any, **arguments: Any) -> NoReturn:
    """Run a built command and exit with its code; a usage error is one red line, exit 2.

    A wrong option or argument (``--limit 0``, ``--port abc``, an unknown
    option, a missing argument) is one line naming it, what was expected and
    where the help is, instead of Typer's framed box (DESIGN.md section 1).
    """
    try:
        result = built(standalone_mode=False, **arguments)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except typer.TyperException as error:  # Click's usage errors (Typer carries its own Click)
        code = getattr(error, "exit_code", 2)
        if type(error).__name__ != "NoArgsIsHelpError":  # else the help is printed already
            _error_line(_usage_message(error))
        sys.exit(code)
    sys.exit(result if isinstance(result, int) else 0)


def _usage_message(error: Exception) -> str:
    """What was wrong, and where the help is: ``... (see 'javia devices show --help')``."""
    format_message = getattr(error, "format_message", None)
    message = format_message() if callable(format_message) else str(error)
    context = getattr(error, "ctx", None)
    if context is None:
        return message
    return f"{message.rstrip('.')} (see '{context.command_path} --help')"


def _error_line(message: str) -> None:
    """``error: message`` in red on stderr; the message shown as text, never as markup."""
    from javia_updates.cli.common import error_console, markup_safe

    error_console.print(
        f"[red]error:[/red] {markup_safe(message)}", highlight=False, soft_wrap=True
    )


def run() -> None:
    """Console-script entry point: no traceback ever reaches the user.

    ``javia agent ...`` runs the agent's commands alone: the operator's
    groups (server, publish, tables and progress bars) are not imported into
    the agent that runs all day on a device (about 3 MiB of its 40 MB budget,
    docs/benchmarks.md).
    """
    try:
        if sys.argv[1:2] == ["agent"]:
            _invoke(agent_command(), args=sys.argv[2:], prog_name="javia agent")
        else:
            _invoke(command(), args=sys.argv[1:], prog_name="javia")
    except JaviaError as error:  # pragma: no cover - commands catch their own
        _error_line(str(error))
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    run()
