"""``javia db``: the SQL for Supabase's SQL editor, refusals on bad input, and the docs.

The SQL that ``javia db sql`` prints is run the way an operator pastes it:
as the project's (non-superuser) role on a real PostgreSQL server; the server
must then find a database it can use and ``javia db upgrade`` nothing to do.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from javia_cli.main import app
from javia_core.models import DeviceRegisterRequest
from javia_updates.backends import backend_names, create_backend
from javia_updates.backends.database import upgrade_serialized
from javia_updates.backends.migrations import current_revision, head_revision
from javia_updates.backends.sql_store import make_engine
from javia_updates.backends.supabase import SupabaseSettings
from javia_updates.cli.db import app as db_app
from javia_updates.service import UpdateService
from javia_updates.settings import ServerSettings

from .conftest import API_KEY
from .test_conformance import NOW

DOCS = Path(__file__).resolve().parents[2] / "docs" / "backends.md"


def javia(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


def test_the_printed_sql_run_as_pasted_gives_a_database_the_server_uses(new_postgres_url, tmp_path):
    result = javia("db", "sql")
    assert result.exit_code == 0, result.output
    url = new_postgres_url()
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    with psycopg.connect(libpq, autocommit=True) as connection:  # the SQL editor: one script
        connection.execute(result.stdout.encode())

    assert current_revision(url) == head_revision()
    engine = make_engine(url)
    assert "devices" in inspect(engine).get_table_names("javia")
    engine.dispose()
    upgrade_serialized(url)  # `javia db upgrade` afterwards: nothing to do
    settings = ServerSettings(api_key=API_KEY, data_dir=tmp_path, database_url=url)
    backend = create_backend(settings)
    try:
        service = UpdateService(backend, settings)
        registered = service.register_device(DeviceRegisterRequest(), now=NOW)
        assert service.find_device(registered.device_uuid).id == 1
    finally:
        backend.close()


def test_sql_goes_to_another_schema_or_file_or_sqlite_on_request(tmp_path):
    other = javia("db", "sql", "--schema", "fleet_inspection")
    assert other.exit_code == 0
    assert "CREATE TABLE fleet_inspection.devices" in other.stdout
    assert "javia" in other.stderr  # reminds that the server uses the javia schema

    target = tmp_path / "schema.sql"
    written = javia("db", "sql", "--output", str(target))
    assert written.exit_code == 0 and 'CREATE SCHEMA IF NOT EXISTS "javia"' in target.read_text()

    sqlite = javia("db", "sql", "--dialect", "sqlite")
    assert sqlite.exit_code == 0 and "CREATE TABLE devices" in sqlite.stdout
    assert "CREATE SCHEMA" not in sqlite.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["db", "sql", "--schema", "public"], "publishable key"),
        (["db", "sql", "--schema", "Robert'); DROP"], "invalid schema name"),
        (["db", "sql", "--dialect", "mysql"], "expected postgresql or sqlite"),
        (["db", "migrate-data", "--from", "sqlite:////x.db", "--to-backend", "s3"], "expected local or supabase"),
        (["db", "migrate-data", "--from", "sqlite:////x.db"], "JAVIA_DATABASE_URL"),
        (["db", "migrate-data", "--from", "sqlite:////nothing/here.db", "--to", "sqlite:////tmp/x.db", "--no-packages"], "does not exist"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_line_and_exit_1(args, needle):
    result = javia(*args)

    assert result.exit_code == 1
    assert needle in result.stderr
    assert "Traceback" not in result.output


def test_every_db_command_setting_and_backend_is_documented():
    docs = DOCS.read_text(encoding="utf-8")
    for command in db_app.registered_commands:
        assert f"javia db {command.name}" in docs, command.name
    for name in ("backend", "data_dir", "database_url", *SupabaseSettings.model_fields):
        assert f"`{name}`" in docs and f"JAVIA_{name.upper()}" in docs, name
    for name in backend_names():
        assert f"`{name}`" in docs, name
    options = set(re.findall(r"--[a-z][a-z-]+", javia("db", "migrate-data", "--help").stdout))
    undocumented = {option for option in options if option not in docs} - {"--help"}
    assert undocumented == set()


def test_upgrade_says_whether_it_created_migrated_or_found_the_database_current(tmp_path):
    from javia_updates.backends.migrations import upgrade

    data_dir = tmp_path / "new"
    created = javia("db", "upgrade", "--data-dir", str(data_dir))
    assert created.exit_code == 0, created.output
    assert "created the database" in created.output
    assert head_revision() in created.output

    again = javia("db", "upgrade", "--data-dir", str(data_dir))
    assert again.exit_code == 0, again.output
    assert "up to date" in again.output

    older = tmp_path / "older.db"
    upgrade(f"sqlite:///{older}", revision="0001")
    migrated = javia("db", "upgrade", "--database-url", f"sqlite:///{older}")
    assert migrated.exit_code == 0, migrated.output
    assert f"from revision 0001 to {head_revision()}" in migrated.output
