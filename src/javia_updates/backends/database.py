"""Helpers for every SQL-backed backend: connection strings and migrations that take turns.

- :func:`normalize_database_url` reads the ``postgresql://`` strings hosting
  dashboards (Supabase's among them) show as psycopg 3, the only PostgreSQL
  driver javia installs.
- :func:`upgrade_serialized` runs the Alembic migrations (DESIGN.md section 5)
  so that several server replicas, or ``javia db upgrade`` next to a starting
  replica, never race each other through ``CREATE TABLE`` on PostgreSQL.
- :func:`restrict_sqlite_file` keeps a SQLite database (the fleet's devices,
  token hashes, audit log) readable by its owner only, 0600, however the
  process's umask is set.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from javia_core.errors import BackendError
from javia_updates.backends.sql.engine import make_engine, redact_url

__all__ = [
    "MIGRATION_LOCK_KEY",
    "MIGRATION_LOCK_TIMEOUT_SECONDS",
    "SQLITE_FILE_MODE",
    "normalize_database_url",
    "restrict_sqlite_file",
    "upgrade_serialized",
]

#: Key of the PostgreSQL advisory lock held while migrating: "javia" in ASCII.
MIGRATION_LOCK_KEY = 0x6A61766961
#: How long a process waits for another one's migration to finish, in seconds.
MIGRATION_LOCK_TIMEOUT_SECONDS = 600

#: Mode of a SQLite database file; SQLite gives its -wal, -shm and -journal
#: files the database file's mode.
SQLITE_FILE_MODE = 0o600
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")

_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for lock_timeout expiring
_URL_EXAMPLES = (
    "sqlite:////var/lib/javia-server/javia.db or "
    "postgresql://postgres.<project-ref>:PASSWORD@aws-0-<region>.pooler.supabase.com:5432/"
    "postgres?sslmode=require"
)


def normalize_database_url(database_url: str) -> str:
    """``database_url`` with a bare PostgreSQL scheme mapped to psycopg 3.

    Dashboards show ``postgresql://…`` (some tools ``postgres://…``), which
    SQLAlchemy would open with psycopg2, a driver javia does not install.
    Those two schemes become ``postgresql+psycopg://``; every other URL
    (SQLite, an explicit driver) is returned unchanged.

    Raises:
        BackendError: the URL cannot be parsed; the message does not echo it
            (it may hold a password).
    """
    text_url = database_url.strip()
    if text_url.startswith("postgres://"):
        text_url = "postgresql://" + text_url.removeprefix("postgres://")
    try:
        url = make_url(text_url)
    except ArgumentError:
        raise BackendError(f"malformed database URL: expected e.g. {_URL_EXAMPLES}") from None
    if url.drivername == "postgresql":
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return text_url


def restrict_sqlite_file(database_url: str) -> Path | None:
    """Create a SQLite database file with mode 0600, or narrow an existing one to 0600.

    SQLite creates a missing database with mode 0644 (less the umask) and its
    ``-wal``, ``-shm`` and ``-journal`` files with the database's mode, so a
    server started outside its systemd unit (``UMask=0077``) would leave the
    fleet's data readable by every local user. Called before the first
    connection (:func:`upgrade_serialized`): the file is created empty with
    0600 (SQLite treats an empty file as a new database; a missing directory
    is created 0700), and an existing
    database and its companions are narrowed to 0600. Files owned by another
    user are left alone. Other URLs (PostgreSQL, in-memory SQLite) are ignored.

    Returns:
        The database file's path, or None for a URL that is not a SQLite file.

    Raises:
        BackendError: the file cannot be created or its mode set.
    """
    try:
        url = make_url(database_url)
    except ArgumentError:
        return None
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or url.query.get("mode") == "memory":
        return None  # a SQLite URI: its own rules
    path = Path(database)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, SQLITE_FILE_MODE
        )
        try:
            _narrow(descriptor)
        finally:
            os.close(descriptor)
        for suffix in _SQLITE_COMPANIONS:
            companion = path.with_name(path.name + suffix)
            try:
                descriptor = os.open(companion, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                _narrow(descriptor)
            finally:
                os.close(descriptor)
    except OSError as error:
        raise BackendError(
            f"cannot create the database {path} with mode 0600: {error.strerror or error}"
        ) from None
    return path


def _narrow(descriptor: int) -> None:
    info = os.fstat(descriptor)
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & ~SQLITE_FILE_MODE:
        os.fchmod(descriptor, stat.S_IMODE(info.st_mode) & SQLITE_FILE_MODE)


def upgrade_serialized(database_url: str, *, schema: str | None = None) -> str | None:
    """Apply every pending migration; on PostgreSQL one process at a time.

    On PostgreSQL the migrations run while this process holds the session
    advisory lock :data:`MIGRATION_LOCK_KEY`, so processes that start together
    take turns: the first migrates, the others then find the database up to
    date. A process waits at most :data:`MIGRATION_LOCK_TIMEOUT_SECONDS` for
    the lock. On SQLite (one server only) this is
    :func:`javia_updates.backends.migrations.upgrade`, after
    :func:`restrict_sqlite_file` made the database file 0600.

    Args:
        database_url: SQLAlchemy URL of the database.
        schema: schema for javia's tables; None: the dialect's default
            (``javia`` on PostgreSQL).

    Returns:
        The revision the database was at before (read under the lock on
        PostgreSQL), None for an empty (or new) database: what ``javia db
        upgrade`` reports.

    Raises:
        BackendError: the database cannot be reached, the lock was not had in
            time, or a migration failed; the message names the database
            without its password.
    """
    from javia_updates.backends.migrations import current_revision, upgrade

    restrict_sqlite_file(database_url)
    engine = make_engine(database_url)
    try:
        if engine.dialect.name != "postgresql":
            before = current_revision(database_url, schema=schema)
            upgrade(database_url, schema=schema)
            return before
        try:
            connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as error:
            raise BackendError(
                f"cannot connect to database {redact_url(database_url)}: {_first_line(error)}"
            ) from None
        with connection:
            _lock(connection, database_url)
            try:
                before = current_revision(database_url, schema=schema)
                upgrade(database_url, schema=schema)
                return before
            finally:
                # If unlocking fails, closing the session releases the lock as well.
                with contextlib.suppress(SQLAlchemyError):
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
    finally:
        engine.dispose()


def _lock(connection: Connection, database_url: str) -> None:
    """Take the migration lock on ``connection``, waiting at most the timeout."""
    try:
        connection.execute(text(f"SET lock_timeout = '{MIGRATION_LOCK_TIMEOUT_SECONDS}s'"))
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            raise BackendError(
                f"cannot migrate database {redact_url(database_url)}: another javia process has "
                f"held the migration lock for {MIGRATION_LOCK_TIMEOUT_SECONDS} s; look for a "
                "stuck `javia db upgrade` or server start"
            ) from None
        raise BackendError(
            f"cannot migrate database {redact_url(database_url)}: {_first_line(error)}"
        ) from None


def _first_line(error: BaseException) -> str:
    original = getattr(error, "orig", None)
    return str(original if original is not None else error).strip().splitlines()[0][:300]
