"""The engine: connection set-up per dialect, and how database errors read (DESIGN.md section 5).

On SQLite each connection gets ``journal_mode=WAL`` (readers do not block the
writer), ``busy_timeout`` (a writer waits up to 5 s for the lock instead of
failing at once), ``foreign_keys=ON`` and ``synchronous=FULL`` (the soft-state batch
alone commits at NORMAL, see ``SQLStoreBase._write``). Write
transactions begin with ``BEGIN IMMEDIATE`` (the execution option
``javia_write``), which takes the write lock up front: a transaction that
first reads and then writes can otherwise fail with "database is locked"
when another writer committed in between. A read of one statement
(the execution option :data:`ONE_STATEMENT_READ`, the heartbeat's reads)
sends no ``BEGIN`` at all: SQLite reads one statement from one snapshot. PostgreSQL connections are
checked before use (``pool_pre_ping``).

Stored JSON is read with :func:`load_stored_json`, which never raises.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from javia_core.errors import BackendError

__all__ = [
    "ONE_STATEMENT_READ",
    "SQLITE_BUSY_TIMEOUT_MS",
    "as_backend_error",
    "describe_failure",
    "is_sqlite",
    "is_unreachable",
    "load_stored_json",
    "make_engine",
    "redact_url",
    "short_message",
]

#: The execution option of a read transaction that runs one statement: no
#: ``BEGIN``/``COMMIT`` on SQLite (:func:`make_engine`); ignored on PostgreSQL.
ONE_STATEMENT_READ = "javia_one_statement_read"

#: How long (milliseconds) a SQLite writer waits for the write lock before failing.
SQLITE_BUSY_TIMEOUT_MS = 5000

logger = logging.getLogger(__name__)


def load_stored_json(text: str | bytes) -> Any:
    """``json.loads`` for stored JSON columns that never raises.

    A value an older version stored and :func:`json.loads` cannot read back
    (nested deeper than the interpreter's recursion limit allows, an integer
    of more than 4300 digits) would fail every read of its row, and with it
    every list holding the row. It is read as an object holding one note
    instead (logged); a device's metadata then shows the note, and a column
    that must hold a list (``targets``) fails closed on it.
    """
    try:
        return json.loads(text)
    except (RecursionError, ValueError) as error:
        logger.warning("a stored JSON value cannot be read (%s); shown as a note instead", error)
        return {"unreadable": f"the stored value could not be read: {type(error).__name__}"}


def make_engine(database_url: str) -> Engine:
    """Create an engine for ``database_url``, with javia's SQLite connection set-up.

    Raises:
        BackendError: the URL is malformed or names a driver that is not installed.
    """
    try:
        url = make_url(database_url)
        if url.get_backend_name() == "sqlite":
            engine = create_engine(
                url,
                connect_args={"check_same_thread": False},
                json_deserializer=load_stored_json,
            )
            _configure_sqlite(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True, json_deserializer=load_stored_json)
    except (SQLAlchemyError, ImportError, ValueError) as error:
        raise BackendError(f"cannot open database {redact_url(database_url)}: {error}") from None
    return engine


def redact_url(database_url: str) -> str:
    """``database_url`` without its password, for messages and logs."""
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - never echo a malformed URL that may hold a password
        return "<database url>"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module (it would not BEGIN
        # before SELECTs); SQLAlchemy emits BEGIN itself in _on_begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get("javia_write", False):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif not options.get(ONE_STATEMENT_READ, False):
            connection.exec_driver_sql("BEGIN")
        # A read of one statement needs no BEGIN: SQLite runs a statement
        # outside a transaction on one snapshot of its own (autocommit).


def is_sqlite(engine: Engine) -> bool:
    """Whether ``engine`` is SQLite: one writer at a time, in this process (else PostgreSQL)."""
    return engine.dialect.name == "sqlite"


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` says the database is unreachable or busy, not that a row is bad.

    Connection failures, "database is locked" and the like
    (``OperationalError``, ``InterfaceError``, an invalidated connection),
    also when wrapped in a :class:`BackendError`.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OperationalError | InterfaceError):
            return True
        if getattr(seen, "connection_invalidated", False):
            return True
        seen = seen.__cause__
    return False


def describe_failure(error: BaseException) -> str:
    """One line (at most 300 characters) saying why a write failed, for logs and messages."""
    cause = error.__cause__ if isinstance(error, BackendError) and error.__cause__ else error
    if isinstance(cause, SQLAlchemyError):
        return short_message(cause)
    return f"{type(cause).__name__}: {str(cause).splitlines()[0][:300] if str(cause) else ''}"


def as_backend_error(error: BaseException) -> BackendError:
    """``error`` as the :class:`BackendError` a store raises (itself if it is one)."""
    if isinstance(error, BackendError):
        return error
    return BackendError(f"database write failed: {describe_failure(error)}")


def short_message(error: SQLAlchemyError) -> str:
    """The driver's own message of ``error``: its first line, at most 300 characters."""
    original = getattr(error, "orig", None)
    return str(original if original is not None else error).splitlines()[0][:300]
