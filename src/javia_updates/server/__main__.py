"""``python -m javia_updates.server [--host H] [--port P] [--data-dir DIR] [--workers N]``: run the server.

The same as ``javia server``, without the CLI's dependencies; used by systemd
units and tests. Settings as in :class:`javia_updates.settings.ServerSettings`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from javia_core.errors import JaviaError
from javia_updates.server import run
from javia_updates.settings import load_server_settings


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the server; 1 with one line on stderr on a javia error."""
    parser = argparse.ArgumentParser(prog="python -m javia_updates.server", description=__doc__)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="database and packages directory"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server processes sharing the port (default: one per CPU core, or JAVIA_WORKERS)",
    )
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.port <= 65535:
        parser.error(f"--port {arguments.port} is not a TCP port: expected 1 to 65535")
    if arguments.workers is not None and not 1 <= arguments.workers <= 256:
        parser.error(
            f"--workers {arguments.workers} is not a number of processes: expected 1 to 256"
        )
    try:
        overrides: dict[str, object] = (
            {"data_dir": arguments.data_dir} if arguments.data_dir is not None else {}
        )
        if arguments.workers is not None:
            overrides["workers"] = arguments.workers
        run(load_server_settings(**overrides), host=arguments.host, port=arguments.port)
    except JaviaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
