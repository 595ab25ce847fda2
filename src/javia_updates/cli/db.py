"""``javia db``: database migrations (Alembic)."""

from __future__ import annotations

from pathlib import Path

import typer

from javia_updates.cli.common import console, fail, friendly_errors

app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Server data directory."),
) -> None:
    """Apply every pending migration to the configured database."""
    try:
        from javia_updates.backends.migrations import upgrade as run_upgrade
        from javia_updates.settings import ServerSettings
    except ImportError as error:
        fail(f"needs the server extra: pip install 'javia[server]' ({error.name} missing)")
    with friendly_errors():
        overrides = {"data_dir": data_dir} if data_dir is not None else {}
        settings = ServerSettings(**overrides)
        run_upgrade(settings.resolved_database_url())
    console.print("database is up to date")
