"""``javia db``: database migrations (Alembic) and moving data between backends.

- ``javia db upgrade``: apply pending migrations to the configured database
  (on PostgreSQL one process at a time, so replicas may start alongside it);
- ``javia db sql``: print the migrations as SQL, for Supabase's SQL editor;
- ``javia db migrate-data``: copy a whole installation (rows with their ids,
  and the packages) into a new, empty database and blob store.

Server-only dependencies (SQLAlchemy, Alembic) are imported inside the
commands, so ``javia`` still starts on a Pi without them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer

from javia_updates.cli.common import (
    choices,
    console,
    error_console,
    fail,
    friendly_errors,
    markup_safe,
    print_json,
)

app = typer.Typer(help="Database migrations and data moves between backends.", no_args_is_help=True)

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_BACKENDS = ("local", "supabase")
_DIALECTS = ("postgresql", "sqlite")

DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Server data directory.", show_default=False)
]


def _server_modules() -> None:
    """Fail with one line when the server extra is not installed."""
    try:
        import alembic  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as error:
        fail(f"needs the server extra: pip install 'javia[server]' ({error.name} missing)")


def _settings(data_dir: Path | None = None) -> Any:
    from javia_updates.settings import ServerSettings

    return ServerSettings() if data_dir is None else ServerSettings(data_dir=data_dir)


def _configured_database_url(settings: Any, given: str | None) -> str:
    """``--database-url``, else the settings' database (the SQLite file of ``local``)."""
    from javia_updates.backends.database import normalize_database_url

    if given:
        return normalize_database_url(given)
    if settings.backend == "supabase" and not settings.database_url:
        fail(
            "the supabase backend needs its database URL: set JAVIA_DATABASE_URL (or "
            "database_url in the settings file), or pass --database-url"
        )
    return normalize_database_url(settings.resolved_database_url())


@app.command("upgrade")
def upgrade(
    data_dir: DataDirOption = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="SQLAlchemy URL of the database (default: JAVIA_DATABASE_URL, else the SQLite "
            "file in the data directory).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Apply every pending migration to the configured database (safe to repeat).

    Says what it did: created a new database, migrated an older one (from
    which revision to which), or found it up to date.
    """
    _server_modules()
    with friendly_errors():
        from javia_updates.backends.database import upgrade_serialized
        from javia_updates.backends.migrations import head_revision

        url = _configured_database_url(_settings(data_dir), database_url)
        before = upgrade_serialized(url)
        head = head_revision()
    if before is None:
        console.print(f"created the database and migrated it to revision {head}", highlight=False)
    elif before == head:
        console.print(f"database is up to date (revision {head})", highlight=False)
    else:
        console.print(f"migrated the database from revision {before} to {head}", highlight=False)


@app.command("sql")
def sql(
    schema: Annotated[
        str,
        typer.Option(
            "--schema",
            help="PostgreSQL schema for javia's tables. The server uses 'javia'; another name "
            "only suits inspection or other tools.",
        ),
    ] = "javia",
    dialect: Annotated[
        str,
        typer.Option(
            "--dialect",
            help="SQL dialect: postgresql or sqlite.",
            autocompletion=choices(*_DIALECTS),
        ),
    ] = "postgresql",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the SQL to this file instead of standard output."
        ),
    ] = None,
) -> None:
    """Print the migrations as SQL, e.g. for pasting into Supabase's SQL editor.

    The script is for an empty database: it creates the schema, the tables
    and Alembic's version table in one transaction, so a later `javia db
    upgrade` continues from there. Nothing is connected to.
    """
    _server_modules()
    if dialect not in _DIALECTS:
        fail(f"unknown dialect {dialect!r}: expected postgresql or sqlite")
    if dialect == "postgresql" and not _SCHEMA.fullmatch(schema):
        fail(
            f"invalid schema name {schema[:70]!r}: expected a lower-case identifier such as javia "
            "(letters, digits, '_', not starting with a digit)"
        )
    if dialect == "postgresql" and schema == "public":
        fail(
            "schema 'public' is served by Supabase's data API to anyone holding the project's "
            "publishable key: keep javia's tables in their own schema, e.g. --schema javia"
        )
    from javia_updates.backends.migrations import offline_sql

    with friendly_errors():
        if dialect == "postgresql":
            script = offline_sql("postgresql+psycopg://", schema=schema)
        else:
            script = offline_sql("sqlite://")
    if dialect == "postgresql" and schema != "javia":
        error_console.print(
            f"note: the server keeps its tables in schema 'javia'; this SQL creates them in "
            f"{markup_safe(repr(schema))}",
            highlight=False,
        )
    if output is None:
        typer.echo(script, nl=False)
        return
    try:
        output.write_text(script, encoding="utf-8")
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror}")
    console.print(f"wrote the migrations as SQL to {markup_safe(output)}", highlight=False)


def _blob_store(kind: str, data_dir: Path, settings: Any) -> Any:
    """The blob store of a ``local`` (files in ``data_dir``) or ``supabase`` (Storage) backend."""
    if kind == "local":
        from javia_updates.backends.files import FileBlobStore

        return FileBlobStore(data_dir)
    from javia_updates.backends.supabase import SupabaseSettings

    return SupabaseSettings.for_server(settings).blob_store(data_dir / "uploads")


def _default_source_dir(source_url: str) -> Path | None:
    """The data directory of a ``local`` installation: where its SQLite file lies."""
    from sqlalchemy.engine import make_url

    url = make_url(source_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).expanduser().absolute().parent


@app.command("migrate-data")
def migrate_data(
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="Database to copy from, e.g. sqlite:////var/lib/javia-server/javia.db. Only read.",
            show_default=False,
        ),
    ],
    target: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Empty database to copy into, e.g. postgresql://… (default: "
            "JAVIA_DATABASE_URL). Migrated first.",
            show_default=False,
        ),
    ] = None,
    from_backend: Annotated[
        str,
        typer.Option(
            "--from-backend",
            help="Where the packages are now: local or supabase.",
            autocompletion=choices(*_BACKENDS),
        ),
    ] = "local",
    from_data_dir: Annotated[
        Path | None,
        typer.Option(
            "--from-data-dir",
            help="Data directory holding packages/ of a local source (default: the directory "
            "of the SQLite file).",
            show_default=False,
        ),
    ] = None,
    to_backend: Annotated[
        str | None,
        typer.Option(
            "--to-backend",
            help="Where the packages go: local or supabase (default: JAVIA_BACKEND).",
            show_default=False,
            autocompletion=choices(*_BACKENDS),
        ),
    ] = None,
    to_data_dir: Annotated[
        Path | None,
        typer.Option(
            "--to-data-dir",
            help="Data directory of the target: packages/ for local, uploads/ for supabase "
            "(default: JAVIA_DATA_DIR).",
            show_default=False,
        ),
    ] = None,
    packages: Annotated[
        bool,
        typer.Option(
            "--packages/--no-packages",
            help="Copy the package objects when the blob store changes.",
        ),
    ] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")
    ] = False,
) -> None:
    """Copy every device, token hash, update, progress row and audit line, with their ids.

    Also copies the packages when the blob store changes (local files to
    Supabase Storage, say), each checked against the SHA-256 the database
    records. The target database must be empty; it receives everything in
    one transaction, or nothing. Stop the servers using the source first.
    """
    _server_modules()
    for option, value in (("--from-backend", from_backend), ("--to-backend", to_backend)):
        if value is not None and value not in _BACKENDS:
            fail(f"{option} {value!r}: expected local or supabase")
    with friendly_errors():
        from javia_updates.backends.data_migration import migrate_data as run_migration
        from javia_updates.backends.database import normalize_database_url

        settings = _settings(to_data_dir)
        source_url = normalize_database_url(source)
        if target is None and not settings.database_url:
            fail("no target database: pass --to, or set JAVIA_DATABASE_URL")
        target_url = normalize_database_url(target or settings.database_url)
        destination = to_backend or settings.backend
        if destination not in _BACKENDS:
            fail(f"backend {destination!r}: expected local or supabase (--to-backend)")
        source_blobs = target_blobs = None
        if packages:
            source_dir = from_data_dir or _default_source_dir(source_url)
            target_dir = Path(settings.data_dir).expanduser().absolute()
            if from_backend == "local" and source_dir is None:
                fail(
                    "where are the source's packages? pass --from-data-dir (the data directory "
                    "holding packages/), or --no-packages"
                )
            same_files = (
                from_backend == destination == "local"
                and source_dir is not None
                and source_dir.resolve() == target_dir.resolve()
            )
            same_bucket = from_backend == destination == "supabase"
            if not (same_files or same_bucket):
                source_blobs = _blob_store(from_backend, source_dir or target_dir, settings)
                target_blobs = _blob_store(destination, target_dir, settings)
                target_blobs.prepare()
        printer = (
            None if as_json else (lambda line: console.print(markup_safe(line), highlight=False))
        )
        try:
            result = run_migration(
                source_url,
                target_url,
                source_blobs=source_blobs,
                target_blobs=target_blobs,
                progress=printer,
            )
        finally:
            for store in (source_blobs, target_blobs):
                if store is not None and hasattr(store, "close"):
                    store.close()
    summary = {
        "rows": result.rows,
        "packages": result.packages,
        "packages_moved": result.packages_moved,
        "objects_copied": result.objects_copied,
        "objects_present": result.objects_present,
        "bytes_copied": result.bytes_copied,
    }
    if as_json:
        print_json(summary)
        return
    from rich.table import Table

    table = Table(title="copied")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in result.rows.items():
        table.add_row(name, str(count))
    console.print(table)
    if result.packages_moved:
        console.print(
            f"packages: {result.packages}, objects copied: {result.objects_copied} "
            f"({result.bytes_copied} bytes), already there: {result.objects_present}",
            highlight=False,
        )
    else:
        console.print(
            f"packages: {result.packages}, left where they are (same blob store, or --no-packages)",
            highlight=False,
        )
