"""What every aggregate of the SQL store shares: tables, transactions, statements, row readers.

:class:`SQLStoreBase` holds the engine, the tables of
:mod:`javia_updates.backends.schema`, the read and write transactions, the
:class:`~javia_updates.backends.sql.writer.Writer` chosen once for the
dialect, the statements built once (:class:`Statements`: SQLAlchemy finds
the compiled form of a statement object it has seen at once, building a new
statement per call costs more than executing it), the audit line every
change writes, and the row readers more than one aggregate uses. The
aggregates (:mod:`~javia_updates.backends.sql.devices`,
:mod:`~javia_updates.backends.sql.enrollment`,
:mod:`~javia_updates.backends.sql.updates`,
:mod:`~javia_updates.backends.sql.progress`,
:mod:`~javia_updates.backends.sql.audit`) build on it and
:class:`~javia_updates.backends.sql.store.SQLStore` combines them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, literal, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from javia_core.errors import BackendError, ConflictError
from javia_core.models import FINAL_STATUSES, DeviceStatus, UpdateStatus, UpdateType
from javia_core.status_rules import ALLOWED_PREVIOUS, IN_FLIGHT_STATUSES
from javia_updates.backends.records import (
    AuditEntry,
    DeviceRecord,
    DeviceUpdateRecord,
    NewDevice,
)
from javia_updates.backends.schema import Tables, UTCDateTime, build_tables, default_schema
from javia_updates.backends.sql.engine import ONE_STATEMENT_READ, is_sqlite, short_message
from javia_updates.backends.sql.write_lock import SQLiteWriteLock, sqlite_file
from javia_updates.backends.sql.writer import Writer, writer_for
from javia_updates.metrics import observe_write_transaction
from javia_updates.webhooks.outbox import enqueue as enqueue_webhook_event

__all__ = ["DEVICE_COLUMN_PREFIX", "SQLStoreBase", "Statements"]


class Statements:
    """Statements built once per store and executed with parameters (the hot writes).

    SQLAlchemy finds the compiled form of a statement object it has seen at
    once; building a new statement per call costs more than executing it.
    """

    def __init__(
        self, tables: Tables, device_columns: list[Any], device_update_select: Any
    ) -> None:
        du = tables.device_updates
        self._tables = tables
        self.audit_insert = tables.audit_log.insert()
        self.device_insert = tables.devices.insert().returning(*device_columns)
        self.device_update_for_update = device_update_select.where(
            du.c.id == bindparam("row_id")
        ).with_for_update(of=du)
        self._transitions: dict[tuple[UpdateStatus, bool, bool], Any] = {}

    def transition(
        self, status: UpdateStatus, *, with_error: bool, with_failure: bool = False
    ) -> Any:
        """The conditional ``UPDATE ... RETURNING`` moving a row to ``status``.

        Parameters: ``row_id``, ``moved_at`` (aware UTC), with ``with_error``
        ``error_text`` and with ``with_failure`` ``failure_json`` (a dict).
        Returns ``started_at``, ``completed_at``, ``error_message``.
        """
        key = (status, with_error, with_failure)
        statement = self._transitions.get(key)
        if statement is None:
            du = self._tables.device_updates
            moved_at = bindparam("moved_at", type_=UTCDateTime())
            values: dict[str, Any] = {"status": status.value, "updated_at": moved_at}
            if status in IN_FLIGHT_STATUSES or status in FINAL_STATUSES:
                values["started_at"] = func.coalesce(du.c.started_at, moved_at)
            if status in FINAL_STATUSES:
                values["completed_at"] = moved_at
            if with_error:
                values["error_message"] = bindparam("error_text")
            if with_failure:
                values["failure"] = bindparam("failure_json", type_=du.c.failure.type)
            allowed = [previous.value for previous in ALLOWED_PREVIOUS[status]]
            statement = (
                du.update()
                .where(du.c.id == bindparam("row_id"), du.c.status.in_(allowed))
                .values(**values)
                .returning(du.c.started_at, du.c.completed_at, du.c.error_message)
            )
            self._transitions[key] = statement
        return statement


#: The prefix of the device's own columns in the hot statement ``device_with_rows``.
DEVICE_COLUMN_PREFIX = "device__"


class SQLStoreBase:
    """The engine, tables, transactions and shared statements of one SQL store.

    Args:
        engine: from :func:`~javia_updates.backends.sql.engine.make_engine`;
            the schema must exist (run the migrations first,
            :func:`javia_updates.backends.migrations.upgrade`).
        schema: the schema holding the tables; None: the dialect's default
            (``javia`` on PostgreSQL, none on SQLite), as the migrations use.
    """

    def __init__(self, engine: Engine, *, schema: str | None = None) -> None:
        self.engine = engine
        self.schema = schema if schema is not None else default_schema(engine.dialect.name)
        self.tables: Tables = build_tables(self.schema)
        self.local_reads = is_sqlite(engine)
        self.exclusive = is_sqlite(engine)
        self._statements = Statements(
            self.tables, self._device_columns(), self._device_update_select()
        )
        self._hot: dict[str, Any] | None = None
        # SQLite has one writer at a time. Threads of this process, and other
        # processes on the same file (server workers), queue here instead of
        # in SQLite's busy handler, which sleeps up to 100 ms per retry even
        # when the lock is free again after a millisecond (write_lock module).
        self._write_lock: SQLiteWriteLock | nullcontext[None] = (
            SQLiteWriteLock(sqlite_file(engine)) if is_sqlite(engine) else nullcontext()
        )
        # The shared writes' path, chosen once: group commit on SQLite, one
        # transaction per unit of work on PostgreSQL (see the writer module).
        self._writer: Writer = writer_for(engine, self._write)

    def close(self) -> None:
        """Commit what the writer holds, stop its thread, close every pooled connection."""
        self._writer.close()
        self.engine.dispose()
        if isinstance(self._write_lock, SQLiteWriteLock):
            self._write_lock.close()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as connection, connection.begin():
                yield connection
        except SQLAlchemyError as error:
            raise BackendError(f"database read failed: {short_message(error)}") from error

    @contextmanager
    def _read_one_statement(self) -> Iterator[Connection]:
        """A read that runs exactly one statement: no ``BEGIN``/``COMMIT`` on SQLite.

        A single statement reads one snapshot by itself; a read of two
        statements that must agree uses :meth:`_read`.
        """
        try:
            with self.engine.connect() as connection:
                connection.execution_options(**{ONE_STATEMENT_READ: True})
                yield connection
        except SQLAlchemyError as error:
            raise BackendError(f"database read failed: {short_message(error)}") from error

    @contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[Connection]:
        """One write transaction; IntegrityError passes through for the caller to map.

        ``durable`` False (soft state only, which a crash may lose by design:
        ``heartbeat_flush_seconds``): on SQLite the commit skips its ``fsync``
        (``synchronous = NORMAL`` for this transaction; still atomic, and the
        next durable commit's ``fsync`` covers it). The connection is back at
        ``FULL`` before it returns to the pool, or it is discarded.
        """
        relaxed = not durable and is_sqlite(self.engine)
        try:
            asked = time.perf_counter()
            with self._write_lock, self.engine.connect() as connection:
                started = time.perf_counter()
                connection.execution_options(javia_write=True)
                if relaxed:
                    _set_synchronous(connection, "NORMAL")
                try:
                    with connection.begin():
                        yield connection
                finally:
                    if relaxed:
                        _restore_synchronous(connection)
                observe_write_transaction(started - asked, time.perf_counter() - started)
        except IntegrityError:
            raise
        except SQLAlchemyError as error:
            raise BackendError(f"database write failed: {short_message(error)}") from error

    def _audit(self, connection: Connection, entry: AuditEntry, now: datetime) -> None:
        # One statement object for every audit line: SQLAlchemy then finds its
        # compiled form at once instead of building a new INSERT per call.
        connection.execute(
            self._statements.audit_insert,
            {"at": now, "actor": entry.actor, "action": entry.action, "details": entry.details},
        )
        # The change's webhook event, if it is one, commits with it (docs/webhooks.md).
        enqueue_webhook_event(connection, self.tables, entry, now)

    # ------------------------------------------------------------------ devices
    def _device_from_row(self, row: Any) -> DeviceRecord:
        return DeviceRecord(
            id=row.id,
            device_uuid=uuid.UUID(row.device_uuid),
            device_name=row.device_name,
            registered_at=row.registered_at,
            last_seen=row.last_seen,
            current_version=row.current_version,
            timezone=row.timezone,
            status=DeviceStatus(row.status),
            metadata=dict(row.metadata or {}),
            created_at=row.created_at,
            updated_at=row.updated_at,
            token_revoked_at=row.token_revoked_at,
            tags=tuple(row.tags or ()),
        )

    def _device_columns(self) -> list[Any]:
        d = self.tables.devices
        return [c for c in d.c if c.name != "token_hash"]

    def _insert_device(
        self, connection: Connection, device: NewDevice, now: datetime, audit: AuditEntry
    ) -> Any:
        row = connection.execute(
            self._statements.device_insert,
            {
                "device_uuid": str(device.device_uuid),
                "device_name": device.device_name,
                "registered_at": now,
                "last_seen": None,
                "current_version": None,
                "timezone": device.timezone,
                "status": DeviceStatus.OFFLINE.value,
                "metadata": device.metadata,
                "token_hash": device.token_hash,
                "tags": list(device.tags),
                "created_at": now,
                "updated_at": now,
            },
        ).one()
        self._audit(connection, audit, now)
        return row

    @staticmethod
    def _device_conflict(device: NewDevice) -> ConflictError:
        return ConflictError(
            f"device {device.device_uuid} is already registered: register it under a new "
            "uuid, or omit device_uuid to get one"
        )

    def _hot_statements(self) -> dict[str, Any]:
        """Statements of the heartbeat path, built once: building one costs more than running it."""
        statements = self._hot
        if statements is None:
            d, du, u = self.tables.devices, self.tables.device_updates, self.tables.updates
            statements = self._hot = {
                "device_by_token": select(*self._device_columns()).where(
                    d.c.token_hash == bindparam("token_hash")
                ),
                "token_is_current": select(literal(1)).where(
                    d.c.id == bindparam("device_id"), d.c.token_hash == bindparam("token_hash")
                ),
                # The token check of a cached device, with the count and sum of
                # its rows' revisions (schema, revision 0009): no row back when
                # the token is no longer the device's.
                "confirm_device": select(
                    func.count(du.c.id), func.coalesce(func.sum(du.c.row_revision), 0)
                )
                .select_from(d.outerjoin(du, du.c.device_id == d.c.id))
                .where(d.c.id == bindparam("device_id"), d.c.token_hash == bindparam("token_hash"))
                .group_by(d.c.id),
                "rows_of_device": self._device_update_select()
                .where(du.c.device_id == bindparam("device_id"))
                .order_by(*self._version_order(), du.c.device_id),
                # The device joined to its rows (one result row per update row;
                # one with empty row columns for a device without rows), the
                # device's own columns under DEVICE_COLUMN_PREFIX.
                "device_with_rows": select(
                    *self._device_update_select().selected_columns,
                    *(
                        column.label(DEVICE_COLUMN_PREFIX + column.name)
                        for column in self._device_columns()
                    ),
                )
                .select_from(
                    d.outerjoin(du, du.c.device_id == d.c.id).outerjoin(u, du.c.update_id == u.c.id)
                )
                .where(d.c.token_hash == bindparam("token_hash"))
                .order_by(*self._version_order(), du.c.id),
            }
        return statements

    def _version_order(self) -> list[Any]:
        u = self.tables.updates
        return [u.c.version_major.desc(), u.c.version_minor.desc(), u.c.version_patch.desc()]

    # ------------------------------------------------------------------ device updates
    def _device_update_select(self, *, with_failure: bool = False) -> Any:
        """Rows with their device's and update's names; ``failure`` only ``with_failure``.

        The failure JSON (up to 192 KiB a row) stays out of the heartbeat's and
        the reports' reads: only the operator's queries ask for it.
        """
        du, d, u = self.tables.device_updates, self.tables.devices, self.tables.updates
        columns = [c for c in du.c if with_failure or c.name != "failure"]
        return select(
            *columns,
            d.c.device_uuid,
            d.c.device_name,
            u.c.version,
            u.c.update_type,
            u.c.archive_size,
        ).select_from(du.join(d, du.c.device_id == d.c.id).join(u, du.c.update_id == u.c.id))

    @staticmethod
    def _device_update_from_row(row: Any) -> DeviceUpdateRecord:
        return DeviceUpdateRecord(
            id=row.id,
            device_id=row.device_id,
            device_uuid=uuid.UUID(row.device_uuid),
            device_name=row.device_name,
            update_id=row.update_id,
            version=row.version,
            update_type=UpdateType(row.update_type),
            install_type=UpdateType(row.install_type),
            archive_size=row.archive_size,
            status=UpdateStatus(row.status),
            scheduled_for=row.scheduled_for,
            window_end=row.window_end,
            started_at=row.started_at,
            completed_at=row.completed_at,
            error_message=row.error_message,
            created_at=row.created_at,
            updated_at=row.updated_at,
            regressed_at=row.regressed_at,
            regression_reason=row.regression_reason,
            failure=row._mapping.get("failure"),
        )


def _set_synchronous(connection: Connection, level: str) -> None:
    """``PRAGMA synchronous`` on a SQLite connection, outside any transaction.

    Sent straight to the driver (no transaction open: the module runs with
    ``isolation_level = None``), since SQLite ignores the change inside one.
    """
    driver = connection.connection.driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA synchronous = {level}")


def _restore_synchronous(connection: Connection) -> None:
    """Back to ``synchronous = FULL`` (durable commits); a connection that cannot be is discarded."""
    try:
        _set_synchronous(connection, "FULL")
    except Exception:
        connection.invalidate()
        raise
