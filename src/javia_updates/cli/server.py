"""``javia server``: run the update server (FastAPI on uvicorn)."""

from __future__ import annotations

from pathlib import Path

import typer

from javia_updates.cli.common import fail, friendly_errors


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port (1-65535)."),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Database and packages (default ./javia-data, or JAVIA_DATA_DIR)."
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        max=256,
        help="Server processes sharing the port (default: one per CPU core, or JAVIA_WORKERS).",
    ),
) -> None:
    """Run the update server. The admin key comes from JAVIA_API_KEY or the settings file."""
    try:
        from javia_updates.server import run
        from javia_updates.settings import load_server_settings
    except ImportError as error:
        fail(
            f"the server needs the server extra: pip install 'javia[server]' ({error.name} missing)"
        )
    with friendly_errors():
        overrides: dict[str, object] = {"data_dir": data_dir} if data_dir is not None else {}
        if workers is not None:
            overrides["workers"] = workers
        settings = load_server_settings(**overrides)
        run(settings, host=host, port=port)
