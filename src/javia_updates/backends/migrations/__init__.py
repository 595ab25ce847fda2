"""Database migrations (Alembic), shipped as package data (DESIGN.md section 5).

``javia db upgrade`` and the server's start-up call :func:`upgrade`; running it
on an up-to-date database does nothing. :func:`offline_sql` prints the same
migrations as SQL, for pasting into a hosted database's SQL editor.

Alembic is configured in code: ``script_location`` is this package's
directory, so no ``alembic.ini`` has to be found on disk.
"""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import SQLAlchemyError

from javia_core.errors import BackendError
from javia_updates.backends.schema import default_schema

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "head_revision",
    "offline_sql",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent


def _schema_for(database_url: str, schema: str | None) -> str | None:
    if schema is not None:
        return schema
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return default_schema(make_url(database_url).get_backend_name())
    except ArgumentError:
        return None


def alembic_config(database_url: str, *, schema: str | None = None) -> Config:
    """An Alembic configuration for ``database_url`` with the shipped scripts.

    Args:
        database_url: SQLAlchemy URL, e.g. ``sqlite:////var/lib/javia/javia.db``.
        schema: schema for javia's tables; None: the dialect's default
            (``javia`` on PostgreSQL, none on SQLite).
    """
    schema = _schema_for(database_url, schema)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%': a password with '%' in the URL must be escaped.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["javia_schema"] = schema
    return config


def upgrade(database_url: str, *, schema: str | None = None, revision: str = "head") -> None:
    """Apply every migration up to ``revision`` (default: the newest). Idempotent.

    Args:
        database_url: SQLAlchemy URL of the database.
        schema: schema for javia's tables; None: the dialect's default
            (``javia`` on PostgreSQL, none on SQLite).
        revision: target revision id, or ``"head"``.

    Raises:
        BackendError: the database cannot be reached or a migration fails; the
            message names the database (without its password).
    """
    from javia_updates.backends.sql.engine import redact_url

    try:
        if database_url.startswith("sqlite:///"):
            database_path = Path(database_url.removeprefix("sqlite:///"))
            if str(database_path) not in ("", ":memory:"):
                database_path.parent.mkdir(parents=True, exist_ok=True)
        command.upgrade(alembic_config(database_url, schema=schema), revision)
    except (SQLAlchemyError, OSError) as error:
        raise BackendError(f"cannot migrate database {redact_url(database_url)}: {error}") from None


def offline_sql(database_url: str, *, schema: str | None = None, revision: str = "head") -> str:
    """The SQL that :func:`upgrade` would run on an empty database, as text.

    ``database_url`` only selects the SQL dialect (e.g. ``postgresql://``); it
    is not connected to.
    """
    buffer = io.StringIO()
    config = alembic_config(database_url, schema=schema)
    config.output_buffer = buffer
    command.upgrade(config, revision, sql=True)
    return buffer.getvalue()


def head_revision() -> str:
    """The newest revision id shipped with this javia."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(database_url: str, *, schema: str | None = None) -> str | None:
    """The revision the database is at, or None for an empty database.

    Raises:
        BackendError: the database cannot be reached.
    """
    from javia_updates.backends.sql.engine import make_engine, redact_url

    schema = _schema_for(database_url, schema)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            options = {"version_table_schema": schema} if schema else {}
            return MigrationContext.configure(connection, opts=options).get_current_revision()
    except SQLAlchemyError as error:
        raise BackendError(f"cannot read database {redact_url(database_url)}: {error}") from None
    finally:
        engine.dispose()
