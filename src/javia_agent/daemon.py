"""The long-running agent process behind ``javia agent run`` (DESIGN.md section 7).

``javia agent run`` parses its options (typer), loads and checks the
configuration (pydantic-settings: keyword arguments over the environment over
the TOML file), then replaces itself with ``python -m javia_agent.daemon``
(:func:`exec_daemon`, ``os.execv``). The process id stays the same, so
systemd's main process, its notify socket and a supervisor's signals reach the
agent as before. The loaded configuration comes along as JSON in an unnamed
temporary file on an inherited file descriptor; the daemon validates it again
with :class:`~javia_agent.config.AgentConfig` and runs
:meth:`~javia_agent.agent.Agent.run_forever`.

Why: the command line (typer, click, shell completion) and pydantic-settings
(asyncio, argparse, python-dotenv, cloud secret sources) are about 5 MiB of
the agent's 40 MB idle budget (issue 7) and are not needed once it runs
(docs/benchmarks.md, agent idle memory).

The daemon's options are internal (only :func:`exec_daemon` writes them):
``--config-fd N`` (required) and ``--verbose``. Errors are one line
``error: ...`` on stderr and exit status 1, as from the command line.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from javia_agent.config import AgentConfig

__all__ = ["exec_daemon", "main", "setup_logging"]

CONFIG_FD_OPTION = "--config-fd"
VERBOSE_OPTION = "--verbose"


def setup_logging(verbose: bool) -> None:
    """Log lines ``<time> <level> <logger>: <message>`` to stderr; DEBUG if ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def exec_daemon(config: AgentConfig, *, verbose: bool) -> NoReturn:
    """Replace this process with the agent daemon, handing it ``config``.

    Never returns. The configuration is written to an unnamed temporary file
    (no size limit, gone when the daemon closes it) whose descriptor the new
    program inherits.

    Raises:
        OSError: the temporary file cannot be written or the interpreter
            cannot be executed (this process then still runs).
    """
    handoff = tempfile.TemporaryFile()  # noqa: SIM115 - its descriptor outlives this process image
    handoff.write(config.model_dump_json().encode("utf-8"))
    handoff.flush()
    handoff.seek(0)
    descriptor = handoff.fileno()
    os.set_inheritable(descriptor, True)
    argv = [sys.executable, "-m", "javia_agent.daemon", CONFIG_FD_OPTION, str(descriptor)]
    if verbose:
        argv.append(VERBOSE_OPTION)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _parse(argv: list[str]) -> tuple[int, bool]:
    """``(descriptor, verbose)`` from the daemon's internal options.

    Raises:
        ValueError: an option is unknown or ``--config-fd`` lacks a number.
    """
    descriptor: int | None = None
    verbose = False
    rest = list(argv)
    while rest:
        option = rest.pop(0)
        if option == VERBOSE_OPTION:
            verbose = True
        elif option == CONFIG_FD_OPTION and rest:
            descriptor = int(rest.pop(0))
        else:
            raise ValueError(f"unknown option {option[:80]!r}")
    if descriptor is None:
        raise ValueError(f"{CONFIG_FD_OPTION} N is required")
    return descriptor, verbose


def main(argv: list[str] | None = None) -> int:
    """Run the agent until SIGTERM or SIGINT with the configuration handed over.

    Args:
        argv: the internal options (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 after a stop, 1 after an error (printed as one line),
        2 for options not written by :func:`exec_daemon`.
    """
    try:
        descriptor, verbose = _parse(sys.argv[1:] if argv is None else argv)
    except ValueError as error:
        print(
            f"error: {error}; this program is started by 'javia agent run', not by hand",
            file=sys.stderr,
        )
        return 2
    from javia_agent.memory import skip_httpx_command_line

    skip_httpx_command_line()  # before httpx is first imported (javia_agent.client)
    from pydantic import ValidationError

    from javia_agent._fs import restrict_umask
    from javia_agent.agent import Agent
    from javia_agent.config import AgentConfig
    from javia_core.errors import JaviaError

    restrict_umask()
    setup_logging(verbose)
    try:
        with os.fdopen(descriptor, "rb") as handle:
            config = AgentConfig.model_validate_json(handle.read())
        agent = Agent.from_config(config)
    except (OSError, ValidationError) as error:
        print(f"error: cannot read the configuration handed over: {error}", file=sys.stderr)
        return 1
    except JaviaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        return agent.run_forever()
    except (JaviaError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        agent.client.close()


if __name__ == "__main__":
    sys.exit(main())
