"""Alembic environment for javia's metadata store.

Reads the database URL from the Alembic configuration (set in code by
:func:`javia_updates.backends.migrations.alembic_config`) and the PostgreSQL
schema from ``config.attributes["javia_schema"]``. On PostgreSQL the schema is
created if missing and Alembic's version table lives in it too.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from javia_updates.backends.schema import build_tables
from javia_updates.backends.sql import make_engine

config = context.config
# Run by hand (`alembic -c .../alembic.ini -x url=sqlite:///javia.db upgrade head`)
# the URL comes from -x; run by javia, from the configuration set in code.
_x_arguments = context.get_x_argument(as_dictionary=True)
if _x_arguments.get("url"):
    config.set_main_option("sqlalchemy.url", _x_arguments["url"].replace("%", "%%"))
schema: str | None = config.attributes.get("javia_schema", _x_arguments.get("schema"))
target_metadata = build_tables(schema).metadata


def _configure(**options: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table_schema=schema,
        include_schemas=bool(schema),
        **options,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """Write the migrations as SQL to the output buffer instead of running them."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        if schema:
            context.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        context.run_migrations()


def _run(connection: Connection) -> None:
    if schema and connection.dialect.name == "postgresql":
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        connection.commit()
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a connection (given in ``attributes["connection"]``, or opened here)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
