"""The metadata store on SQLAlchemy Core (DESIGN.md section 5).

One implementation for SQLite (the ``local`` backend) and PostgreSQL: only
portable SQL, tables from :mod:`javia_updates.backends.schema`. Every public
method is one transaction.

On SQLite each connection gets ``journal_mode=WAL`` (readers do not block the
writer), ``busy_timeout`` (a writer waits up to 5 s for the lock instead of
failing at once) and ``foreign_keys=ON``. Write transactions begin with
``BEGIN IMMEDIATE``, which takes the write lock up front: a transaction that
first reads and then writes can otherwise fail with "database is locked" when
another writer committed in between.

Status transitions are single conditional ``UPDATE ... WHERE status IN
(allowed previous)`` statements (:data:`~javia_core.status_rules.ALLOWED_PREVIOUS`),
so two server replicas can never move a row backwards.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    String,
    Table,
    and_,
    bindparam,
    case,
    create_engine,
    event,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, SQLAlchemyError

from javia_core.errors import BackendError, ConflictError, NotFoundError
from javia_core.models import FINAL_STATUSES, DeviceStatus, UpdateStatus, UpdateType
from javia_core.status_rules import ALLOWED_PREVIOUS, IN_FLIGHT_STATUSES, raises_version
from javia_updates.backends.base import (
    AuditEntry,
    AuditRecord,
    DeviceQuery,
    DeviceRecord,
    DeviceUpdateRecord,
    EnrollmentError,
    EnrollmentTokenRecord,
    HeartbeatWrite,
    NewDevice,
    NewDeviceUpdate,
    NewEnrollmentToken,
    NewUpdate,
    Page,
    PublishTarget,
    Store,
    TransitionResult,
    UpdateRecord,
)
from javia_updates.backends.group_commit import GroupCommit
from javia_updates.backends.schema import (
    Tables,
    UTCDateTime,
    build_tables,
    default_schema,
    json_type,
)

T = TypeVar("T")

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "SQLStore", "make_engine"]

SQLITE_BUSY_TIMEOUT_MS = 5000
_IN_CHUNK = 500  # uuids per IN (...) list

logger = logging.getLogger(__name__)


def _load_stored_json(text: str | bytes) -> Any:
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
                json_deserializer=_load_stored_json,
            )
            _configure_sqlite(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True, json_deserializer=_load_stored_json)
    except (SQLAlchemyError, ImportError, ValueError) as error:
        raise BackendError(f"cannot open database {_redact(database_url)}: {error}") from None
    return engine


def _redact(database_url: str) -> str:
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
        immediate = connection.get_execution_options().get("javia_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class _Statements:
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
        self._transitions: dict[tuple[UpdateStatus, bool], Any] = {}

    def transition(self, status: UpdateStatus, *, with_error: bool) -> Any:
        """The conditional ``UPDATE ... RETURNING`` moving a row to ``status``.

        Parameters: ``row_id``, ``moved_at`` (aware UTC) and, ``with_error``,
        ``error_text``. Returns ``started_at``, ``completed_at``, ``error_message``.
        """
        key = (status, with_error)
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
            allowed = [previous.value for previous in ALLOWED_PREVIOUS[status]]
            statement = (
                du.update()
                .where(du.c.id == bindparam("row_id"), du.c.status.in_(allowed))
                .values(**values)
                .returning(du.c.started_at, du.c.completed_at, du.c.error_message)
            )
            self._transitions[key] = statement
        return statement


class SQLStore(Store):
    """The :class:`~javia_updates.backends.base.Store` on SQLAlchemy Core.

    Args:
        engine: from :func:`make_engine`; the schema must exist (run the
            migrations first, :func:`javia_updates.backends.migrations.upgrade`).
        schema: the schema holding the tables; None: the dialect's default
            (``javia`` on PostgreSQL, none on SQLite), as the migrations use.
    """

    def __init__(self, engine: Engine, *, schema: str | None = None) -> None:
        self.engine = engine
        self.schema = schema if schema is not None else default_schema(engine.dialect.name)
        self.tables: Tables = build_tables(self.schema)
        self.local_reads = engine.dialect.name == "sqlite"
        self.exclusive = engine.dialect.name == "sqlite"
        self._statements = _Statements(
            self.tables, self._device_columns(), self._device_update_select()
        )
        self._hot: dict[str, Any] | None = None
        # SQLite has one writer at a time. Threads of this process queue here
        # instead of in SQLite's busy handler, which sleeps up to 100 ms per
        # retry even when the lock is free again after a millisecond.
        self._write_lock: threading.Lock | nullcontext[None] = (
            threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()
        )
        # On SQLite, status reports, registrations and reconciled rows from
        # concurrent requests share transactions: one commit (one WAL fsync)
        # for all. PostgreSQL commits concurrent transactions in parallel (and
        # groups their WAL flushes itself); sharing a transaction there would
        # only make replicas lock rows in different orders and deadlock.
        self.group_commit: GroupCommit | None = (
            GroupCommit(self._write) if engine.dialect.name == "sqlite" else None
        )

    def close(self) -> None:
        """Commit what the group commit holds, stop its writer, close every pooled connection."""
        if self.group_commit is not None:
            self.group_commit.close()
        self.engine.dispose()

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as connection, connection.begin():
                yield connection
        except SQLAlchemyError as error:
            raise BackendError(f"database read failed: {_short(error)}") from error

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction; IntegrityError passes through for the caller to map."""
        try:
            with self._write_lock, self.engine.connect() as connection:
                connection.execution_options(javia_write=True)
                with connection.begin():
                    yield connection
        except IntegrityError:
            raise
        except SQLAlchemyError as error:
            raise BackendError(f"database write failed: {_short(error)}") from error

    def _grouped(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in a write transaction, on SQLite shared with concurrent callers.

        See :mod:`javia_updates.backends.group_commit`. IntegrityError passes
        through for the caller to map, as with :meth:`_write`.
        """
        if self.group_commit is None:
            with self._write() as connection:
                return work(connection)
        try:
            return self.group_commit.run(work)
        except IntegrityError:
            raise
        except SQLAlchemyError as error:
            raise BackendError(f"database write failed: {_short(error)}") from error

    async def _grouped_async(self, work: Callable[[Connection], T]) -> T:
        """:meth:`_grouped` for a coroutine: waits on the event loop (a thread without group commit)."""
        if self.group_commit is None:
            return await asyncio.to_thread(self._grouped, work)
        try:
            return await self.group_commit.run_async(work)
        except IntegrityError:
            raise
        except SQLAlchemyError as error:
            raise BackendError(f"database write failed: {_short(error)}") from error

    def _audit(self, connection: Connection, entry: AuditEntry, now: datetime) -> None:
        # One statement object for every audit line: SQLAlchemy then finds its
        # compiled form at once instead of building a new INSERT per call.
        connection.execute(
            self._statements.audit_insert,
            {"at": now, "actor": entry.actor, "action": entry.action, "details": entry.details},
        )

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

    def create_device(self, device: NewDevice, *, now: datetime, audit: AuditEntry) -> DeviceRecord:
        """Insert the device and its audit line in one transaction.

        Raises:
            ConflictError: ``device_uuid`` is already registered.
        """
        try:
            row = self._grouped(
                lambda connection: self._insert_device(connection, device, now, audit)
            )
        except IntegrityError:
            raise self._device_conflict(device) from None
        return self._device_from_row(row)

    def create_device_with_enrollment(
        self, token_hash: str, device: NewDevice, *, now: datetime, audit: AuditEntry
    ) -> DeviceRecord:
        """One conditional ``UPDATE ... SET uses = uses + 1`` and the insert, in one transaction.

        Raises:
            EnrollmentError: unknown, revoked, expired or used up.
            ConflictError: the uuid is already registered (the use is not counted).
        """
        e = self.tables.enrollment_tokens
        try:
            with self._write() as connection:
                used = connection.execute(
                    e.update()
                    .where(
                        e.c.token_hash == token_hash,
                        e.c.revoked_at.is_(None),
                        e.c.uses < e.c.max_uses,
                        e.c.expires_at > literal(now, UTCDateTime()),
                    )
                    .values(uses=e.c.uses + 1)
                )
                if used.rowcount != 1:
                    raise self._enrollment_refusal(connection, token_hash, now)
                token_id = connection.execute(
                    select(e.c.id).where(e.c.token_hash == token_hash)
                ).scalar_one()
                audit = AuditEntry(
                    audit.actor, audit.action, {**audit.details, "enrollment_token_id": token_id}
                )
                row = self._insert_device(connection, device, now, audit)
        except IntegrityError:
            raise self._device_conflict(device) from None
        return self._device_from_row(row)

    def _enrollment_refusal(
        self, connection: Connection, token_hash: str, now: datetime
    ) -> EnrollmentError:
        e = self.tables.enrollment_tokens
        row = connection.execute(select(e).where(e.c.token_hash == token_hash)).one_or_none()
        if row is None:
            return EnrollmentError(
                "unknown enrollment token: ask the operator for one "
                "(javia devices enrollment-token create)"
            )
        if row.revoked_at is not None:
            return EnrollmentError(f"enrollment token {row.id} was revoked")
        if row.uses >= row.max_uses:
            return EnrollmentError(
                f"enrollment token {row.id} is used up ({row.uses} of {row.max_uses} registrations)"
            )
        return EnrollmentError(f"enrollment token {row.id} expired at {row.expires_at.isoformat()}")

    def replace_device_token(
        self,
        device_uuid: uuid.UUID,
        *,
        token_hash: str,
        revoked: bool,
        now: datetime,
        audit: AuditEntry,
    ) -> DeviceRecord:
        """Set the token hash (and ``token_revoked_at``) of one device, with ``audit``.

        Raises:
            NotFoundError: no such device.
        """
        d = self.tables.devices
        with self._write() as connection:
            result = connection.execute(
                d.update()
                .where(d.c.device_uuid == str(device_uuid))
                .values(
                    token_hash=token_hash,
                    token_revoked_at=now if revoked else None,
                    updated_at=now,
                )
            )
            if result.rowcount != 1:
                raise NotFoundError(f"device {device_uuid} is not registered")
            self._audit(connection, audit, now)
            row = connection.execute(
                select(*self._device_columns()).where(d.c.device_uuid == str(device_uuid))
            ).one()
        return self._device_from_row(row)

    # ------------------------------------------------------------------ enrollment tokens
    @staticmethod
    def _enrollment_from_row(row: Any) -> EnrollmentTokenRecord:
        return EnrollmentTokenRecord(
            id=row.id,
            label=row.label,
            created_at=row.created_at,
            expires_at=row.expires_at,
            max_uses=row.max_uses,
            uses=row.uses,
            revoked_at=row.revoked_at,
        )

    def _enrollment_columns(self) -> list[Any]:
        e = self.tables.enrollment_tokens
        return [c for c in e.c if c.name != "token_hash"]

    def create_enrollment_token(
        self, token: NewEnrollmentToken, *, now: datetime, audit: AuditEntry
    ) -> EnrollmentTokenRecord:
        """Insert the token's hash and limits with ``audit``."""
        e = self.tables.enrollment_tokens
        with self._write() as connection:
            result = connection.execute(
                e.insert().values(
                    token_hash=token.token_hash,
                    label=token.label,
                    created_at=now,
                    expires_at=token.expires_at,
                    max_uses=token.max_uses,
                    uses=0,
                    revoked_at=None,
                )
            )
            token_id = _inserted_id(result)
            self._audit(
                connection,
                AuditEntry(audit.actor, audit.action, {**audit.details, "token_id": token_id}),
                now,
            )
            row = connection.execute(
                select(*self._enrollment_columns()).where(e.c.id == token_id)
            ).one()
        return self._enrollment_from_row(row)

    def list_enrollment_tokens(self, *, limit: int, offset: int) -> Page[EnrollmentTokenRecord]:
        """Enrollment tokens, newest first."""
        e = self.tables.enrollment_tokens
        with self._read() as connection:
            total = connection.execute(select(func.count()).select_from(e)).scalar_one()
            rows = connection.execute(
                select(*self._enrollment_columns())
                .order_by(e.c.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
        return Page([self._enrollment_from_row(row) for row in rows], total)

    def revoke_enrollment_token(
        self, token_id: int, *, now: datetime, audit: AuditEntry
    ) -> EnrollmentTokenRecord:
        """Set ``revoked_at`` if not set yet; write ``audit`` when it changed.

        Raises:
            NotFoundError: no such token.
        """
        e = self.tables.enrollment_tokens
        with self._write() as connection:
            result = connection.execute(
                e.update()
                .where(e.c.id == token_id, e.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = connection.execute(
                select(*self._enrollment_columns()).where(e.c.id == token_id)
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"enrollment token {token_id} does not exist")
            if result.rowcount == 1:
                self._audit(connection, audit, now)
        return self._enrollment_from_row(row)

    def get_device(self, device_uuid: uuid.UUID) -> DeviceRecord:
        """The device, or NotFoundError."""
        d = self.tables.devices
        with self._read() as connection:
            row = connection.execute(
                select(*self._device_columns()).where(d.c.device_uuid == str(device_uuid))
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"device {device_uuid} is not registered")
        return self._device_from_row(row)

    def find_device_by_token_hash(self, token_hash: str) -> DeviceRecord | None:
        """The device holding the token with this SHA-256 hex, or None."""
        with self._read() as connection:
            row = connection.execute(
                self._hot_statements()["device_by_token"], {"token_hash": token_hash}
            ).one_or_none()
        return None if row is None else self._device_from_row(row)

    def token_is_current(self, device_id: int, token_hash: str) -> bool:
        """Whether the device still holds the token: one primary-key lookup, one boolean back."""
        with self._read() as connection:
            held = connection.execute(
                self._hot_statements()["token_is_current"],
                {"device_id": device_id, "token_hash": token_hash},
            ).scalar_one_or_none()
        return held is not None

    def _hot_statements(self) -> dict[str, Any]:
        """Statements of the heartbeat path, built once: building one costs more than running it."""
        statements = self._hot
        if statements is None:
            d, du = self.tables.devices, self.tables.device_updates
            statements = self._hot = {
                "device_by_token": select(*self._device_columns()).where(
                    d.c.token_hash == bindparam("token_hash")
                ),
                "token_is_current": select(literal(1)).where(
                    d.c.id == bindparam("device_id"), d.c.token_hash == bindparam("token_hash")
                ),
                "rows_of_device": self._device_update_select()
                .where(du.c.device_id == bindparam("device_id"))
                .order_by(*self._version_order(), du.c.device_id),
            }
        return statements

    def _device_conditions(self, query: DeviceQuery) -> list[Any]:
        d = self.tables.devices
        conditions: list[Any] = []
        if query.current_version is not None:
            conditions.append(d.c.current_version == query.current_version)
        if query.derived_status is None and query.online is None:
            return conditions
        if query.offline_before is None:
            raise ValueError("DeviceQuery.derived_status and .online need offline_before")
        cutoff = literal(query.offline_before, UTCDateTime())
        offline = or_(
            d.c.last_seen.is_(None),
            d.c.last_seen < cutoff,
            d.c.status == DeviceStatus.OFFLINE.value,
        )
        if query.derived_status is DeviceStatus.OFFLINE:
            conditions.append(offline)
        elif query.derived_status is not None:
            conditions.append(
                and_(d.c.last_seen >= cutoff, d.c.status == query.derived_status.value)
            )
        if query.online is True:
            conditions.append(
                and_(d.c.last_seen >= cutoff, d.c.status != DeviceStatus.OFFLINE.value)
            )
        elif query.online is False:
            conditions.append(offline)
        return conditions

    def list_devices(self, query: DeviceQuery, *, limit: int, offset: int) -> Page[DeviceRecord]:
        """Devices matching ``query``, in registration order."""
        d = self.tables.devices
        conditions = self._device_conditions(query)
        with self._read() as connection:
            total = connection.execute(
                select(func.count()).select_from(d).where(*conditions)
            ).scalar_one()
            rows = connection.execute(
                select(*self._device_columns())
                .where(*conditions)
                .order_by(d.c.id)
                .limit(limit)
                .offset(offset)
            ).all()
        return Page([self._device_from_row(row) for row in rows], total)

    def _targeted_rows(
        self, connection: Connection, columns: list[Any], targets: Sequence[uuid.UUID] | None
    ) -> list[Any]:
        d = self.tables.devices
        if targets is None:
            return list(connection.execute(select(*columns).order_by(d.c.id)).all())
        wanted = [str(target) for target in dict.fromkeys(targets)]
        rows: list[Any] = []
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            rows.extend(
                connection.execute(select(*columns).where(d.c.device_uuid.in_(chunk))).all()
            )
        rows.sort(key=lambda row: row.id)
        missing = set(wanted) - {row.device_uuid for row in rows}
        if missing:
            shown = ", ".join(sorted(missing)[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise NotFoundError(f"targets name devices that are not registered: {shown}{more}")
        return rows

    def devices_for_targets(self, targets: Sequence[uuid.UUID] | None) -> list[DeviceRecord]:
        """Every targeted device, in registration order.

        Raises:
            NotFoundError: some targets are not registered devices (all are listed).
        """
        with self._read() as connection:
            rows = self._targeted_rows(connection, self._device_columns(), targets)
        return [self._device_from_row(row) for row in rows]

    def publish_targets(
        self, targets: Sequence[uuid.UUID] | None, *, seen_since: datetime | None = None
    ) -> list[PublishTarget]:
        """What a publish needs of the targeted devices: five columns, ``seen`` computed in SQL.

        Raises:
            NotFoundError: some targets are not registered devices (all are listed).
        """
        d = self.tables.devices
        seen = (
            literal(False)
            if seen_since is None
            else (d.c.last_seen >= literal(seen_since, UTCDateTime()))
        )
        columns = [d.c.id, d.c.device_uuid, d.c.timezone, d.c.current_version, seen.label("seen")]
        with self._read() as connection:
            rows = self._targeted_rows(connection, columns, targets)
        return [
            PublishTarget(device_id, device_uuid, timezone, version, bool(seen))
            for device_id, device_uuid, timezone, version, seen in rows
        ]

    def record_heartbeat(
        self,
        device_id: int,
        *,
        now: datetime,
        current_version: str | None,
        status: DeviceStatus,
        metadata: dict[str, Any],
    ) -> DeviceRecord:
        """Set last_seen, the reported version, status and metadata.

        Raises:
            NotFoundError: the device was deleted meanwhile.
        """
        d = self.tables.devices
        with self._write() as connection:
            result = connection.execute(
                d.update()
                .where(d.c.id == device_id)
                .values(
                    last_seen=now,
                    current_version=current_version,
                    status=status.value,
                    metadata=metadata,
                    updated_at=now,
                )
            )
            if result.rowcount != 1:
                raise NotFoundError(f"device {device_id} is not registered")
            row = connection.execute(
                select(*self._device_columns()).where(d.c.id == device_id)
            ).one()
        return self._device_from_row(row)

    def record_heartbeats(self, writes: Sequence[HeartbeatWrite]) -> None:
        """Store many heartbeats' soft state: one ``executemany`` UPDATE in one transaction.

        ``current_version`` is kept where the row changed after the heartbeat
        (``updated_at`` later than its ``now``: a completed update raised it).

        One bad write never costs the others theirs: if the batch fails for
        any reason other than the database being unreachable or busy, it is
        written again row by row, each in its own savepoint of one
        transaction; a row the database refuses (say, text PostgreSQL cannot
        store) is dropped with a warning naming the device id, and the rest
        are committed. The device sends its soft state again at its next
        heartbeat.

        Raises:
            BackendError: the database is unreachable, busy or failed as a
                whole (nothing of the batch is stored; the caller retries).
        """
        if not writes:
            return
        try:
            with self._write() as connection:
                self._heartbeat_rows(connection, writes)
            return
        except Exception as error:  # noqa: BLE001 - classified below
            if _unreachable(error):
                raise _as_backend_error(error) from error
            failure = error
        try:
            with self._write() as connection:
                for write in writes:
                    try:
                        with connection.begin_nested():
                            self._heartbeat_rows(connection, [write])
                    except Exception as error:  # noqa: BLE001 - one row's fault, unless unreachable
                        if _unreachable(error):
                            raise
                        logger.warning(
                            "dropped the heartbeat soft state of device id %d, which the "
                            "database refused: %s",
                            write.device_id,
                            _describe_failure(error),
                        )
        except Exception as error:  # noqa: BLE001 - the batch as a whole failed
            raise _as_backend_error(error) from failure

    def _heartbeat_rows(self, connection: Connection, writes: Sequence[HeartbeatWrite]) -> None:
        """The batch UPDATE of :meth:`record_heartbeats`, inside ``connection``'s transaction."""
        d = self.tables.devices
        at = bindparam("heartbeat_at", type_=UTCDateTime())
        statement = (
            d.update()
            .where(d.c.id == bindparam("device_id"))
            .values(
                last_seen=at,
                status=bindparam("reported_status", type_=String()),
                metadata=bindparam("reported_metadata", type_=json_type()),
                current_version=case(
                    (d.c.updated_at > at, d.c.current_version),
                    else_=bindparam("reported_version", type_=String()),
                ),
                updated_at=at,
            )
        )
        statuses = {status: status.value for status in DeviceStatus}
        _execute_converted(
            connection,
            statement,
            [
                ("device_id", None, [write.device_id for write in writes]),
                ("heartbeat_at", UTCDateTime(), [write.now for write in writes]),
                ("reported_status", None, [statuses[write.status] for write in writes]),
                ("reported_metadata", json_type(), [write.metadata for write in writes]),
                ("reported_version", None, [write.current_version for write in writes]),
            ],
        )

    # ------------------------------------------------------------------ updates
    def _update_columns(self) -> list[Any]:
        u = self.tables.updates
        return [c for c in u.c if c.name not in ("manifest", "signature")]

    @staticmethod
    def _update_from_row(row: Any) -> UpdateRecord:
        targets = None if row.targets is None else tuple(uuid.UUID(t) for t in row.targets)
        return UpdateRecord(
            id=row.id,
            version=row.version,
            created_at=row.created_at,
            update_type=UpdateType(row.update_type),
            description=row.description,
            package_url=row.package_url,
            requires_system_packages=bool(row.requires_system_packages),
            system_packages=tuple(row.system_packages or ()),
            app=row.app,
            key_id=row.key_id,
            archive_size=row.archive_size,
            archive_sha256=row.archive_sha256,
            targets=targets,
        )

    def create_update(
        self,
        update: NewUpdate,
        rows: Sequence[NewDeviceUpdate],
        *,
        now: datetime,
        audit: AuditEntry,
    ) -> UpdateRecord:
        """Insert the update, all its device rows (one executemany) and the audit line, atomically.

        Raises:
            ConflictError: the version is already published.
        """
        u = self.tables.updates
        du = self.tables.device_updates
        major, minor, patch = update.version_numbers
        try:
            with self._write() as connection:
                existing = connection.execute(
                    select(u.c.id).where(u.c.version == update.version)
                ).scalar_one_or_none()
                if existing is not None:
                    raise ConflictError(
                        f"version {update.version} is already published (update {existing}); "
                        "publish a higher version"
                    )
                result = connection.execute(
                    u.insert().values(
                        version=update.version,
                        version_major=major,
                        version_minor=minor,
                        version_patch=patch,
                        created_at=now,
                        update_type=update.update_type.value,
                        description=update.description,
                        package_url=update.package_url,
                        requires_system_packages=bool(update.system_packages),
                        system_packages=list(update.system_packages),
                        app=update.app,
                        key_id=update.key_id,
                        archive_size=update.archive_size,
                        archive_sha256=update.archive_sha256,
                        manifest=update.manifest,
                        signature=update.signature,
                        targets=None
                        if update.targets is None
                        else [str(t) for t in update.targets],
                    )
                )
                update_id = _inserted_id(result)
                kinds = {kind: kind.value for kind in UpdateType}
                _insert_many(
                    connection,
                    du,
                    {
                        "update_id": update_id,
                        "status": UpdateStatus.PENDING.value,
                        "created_at": now,
                        "updated_at": now,
                    },
                    ("device_id", "install_type", "scheduled_for", "window_end"),
                    [
                        (row.device_id, kinds[row.install_type], row.scheduled_for, row.window_end)
                        for row in rows
                    ],
                )
                self._audit(
                    connection,
                    AuditEntry(
                        audit.actor, audit.action, {**audit.details, "update_id": update_id}
                    ),
                    now,
                )
                stored = connection.execute(
                    select(*self._update_columns()).where(u.c.id == update_id)
                ).one()
        except IntegrityError as error:
            # Another publisher inserted the same version between our check and
            # insert; anything else (a device deleted meanwhile) is a plain failure.
            try:
                existing = self.get_update_by_version(update.version)
            except NotFoundError:
                raise BackendError(f"publishing {update.version} failed: {_short(error)}") from None
            raise ConflictError(
                f"version {update.version} is already published (update {existing.id}); "
                "publish a higher version"
            ) from None
        return self._update_from_row(stored)

    def get_update(self, update_id: int) -> UpdateRecord:
        """The update, or NotFoundError."""
        u = self.tables.updates
        with self._read() as connection:
            row = connection.execute(
                select(*self._update_columns()).where(u.c.id == update_id)
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"update {update_id} does not exist")
        return self._update_from_row(row)

    def get_update_by_version(self, version: str) -> UpdateRecord:
        """The update published as ``version``, or NotFoundError."""
        u = self.tables.updates
        with self._read() as connection:
            row = connection.execute(
                select(*self._update_columns()).where(u.c.version == version)
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"no update is published as version {version}")
        return self._update_from_row(row)

    def get_package_documents(self, update_id: int) -> tuple[bytes, bytes]:
        """The stored manifest and signature bytes, exactly as uploaded."""
        u = self.tables.updates
        with self._read() as connection:
            row = connection.execute(
                select(u.c.manifest, u.c.signature).where(u.c.id == update_id)
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"update {update_id} does not exist")
        return bytes(row.manifest), bytes(row.signature)

    def _version_order(self) -> list[Any]:
        u = self.tables.updates
        return [u.c.version_major.desc(), u.c.version_minor.desc(), u.c.version_patch.desc()]

    def list_updates(
        self, *, limit: int, offset: int, update_type: UpdateType | None = None
    ) -> Page[UpdateRecord]:
        """Updates, highest version first."""
        u = self.tables.updates
        conditions = [] if update_type is None else [u.c.update_type == update_type.value]
        with self._read() as connection:
            total = connection.execute(
                select(func.count()).select_from(u).where(*conditions)
            ).scalar_one()
            rows = connection.execute(
                select(*self._update_columns())
                .where(*conditions)
                .order_by(*self._version_order())
                .limit(limit)
                .offset(offset)
            ).all()
        return Page([self._update_from_row(row) for row in rows], total)

    def update_ids(self) -> list[int]:
        """The ids of every published update."""
        u = self.tables.updates
        with self._read() as connection:
            return list(connection.execute(select(u.c.id)).scalars())

    def updates_newer_than(self, version: tuple[int, int, int] | None) -> list[UpdateRecord]:
        """Updates above ``version`` (numeric order), highest first."""
        u = self.tables.updates
        conditions: list[Any] = []
        if version is not None:
            major, minor, patch = version
            conditions.append(
                or_(
                    u.c.version_major > major,
                    and_(u.c.version_major == major, u.c.version_minor > minor),
                    and_(
                        u.c.version_major == major,
                        u.c.version_minor == minor,
                        u.c.version_patch > patch,
                    ),
                )
            )
        with self._read() as connection:
            rows = connection.execute(
                select(*self._update_columns()).where(*conditions).order_by(*self._version_order())
            ).all()
        return [self._update_from_row(row) for row in rows]

    def status_counts(self, update_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """``{update_id: {status: count}}``; updates without rows map to ``{}``."""
        du = self.tables.device_updates
        counts: dict[int, dict[str, int]] = {update_id: {} for update_id in update_ids}
        if not update_ids:
            return counts
        with self._read() as connection:
            rows = connection.execute(
                select(du.c.update_id, du.c.status, func.count())
                .where(du.c.update_id.in_(list(update_ids)))
                .group_by(du.c.update_id, du.c.status)
            ).all()
        for update_id, status, count in rows:
            counts[update_id][status] = count
        return counts

    # ------------------------------------------------------------------ device updates
    def _device_update_select(self) -> Any:
        du, d, u = self.tables.device_updates, self.tables.devices, self.tables.updates
        return select(
            du,
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
        )

    def list_device_updates(
        self,
        *,
        update_id: int | None = None,
        device_id: int | None = None,
        status: UpdateStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[DeviceUpdateRecord]:
        """Rows by update/device/status, highest version first, then by device."""
        du = self.tables.device_updates
        if device_id is not None and (update_id, status, limit, offset) == (None, None, None, 0):
            # The heartbeat's question: every row of one device.
            with self._read() as connection:
                rows = connection.execute(
                    self._hot_statements()["rows_of_device"], {"device_id": device_id}
                ).all()
            return Page([self._device_update_from_row(row) for row in rows], len(rows))
        conditions: list[Any] = []
        if update_id is not None:
            conditions.append(du.c.update_id == update_id)
        if device_id is not None:
            conditions.append(du.c.device_id == device_id)
        if status is not None:
            conditions.append(du.c.status == status.value)
        query = (
            self._device_update_select()
            .where(*conditions)
            .order_by(*self._version_order(), du.c.device_id)
            .offset(offset)
        )
        if limit is not None:
            query = query.limit(limit)
        with self._read() as connection:
            rows = connection.execute(query).all()
            if limit is None and offset == 0:
                total = len(rows)  # every match is here: no second query
            else:
                total = connection.execute(
                    select(func.count()).select_from(du).where(*conditions)
                ).scalar_one()
        return Page([self._device_update_from_row(row) for row in rows], total)

    def _load_device_update(
        self, connection: Connection, device_update_id: int
    ) -> DeviceUpdateRecord:
        du = self.tables.device_updates
        row = connection.execute(
            self._device_update_select().where(du.c.id == device_update_id)
        ).one_or_none()
        if row is None:
            raise NotFoundError(f"device update row {device_update_id} does not exist")
        return self._device_update_from_row(row)

    def get_device_update(self, device_id: int, update_id: int) -> DeviceUpdateRecord:
        """The row of ``device_id`` for ``update_id``, or NotFoundError."""
        du = self.tables.device_updates
        with self._read() as connection:
            row = connection.execute(
                self._device_update_select().where(
                    du.c.device_id == device_id, du.c.update_id == update_id
                )
            ).one_or_none()
        if row is None:
            raise NotFoundError(f"update {update_id} is not assigned to this device")
        return self._device_update_from_row(row)

    def add_device_update(
        self, update_id: int, row: NewDeviceUpdate, *, now: datetime, audit: AuditEntry
    ) -> bool:
        """Insert one pending row; False if the (device, update) row already exists."""
        du = self.tables.device_updates

        def insert(connection: Connection) -> None:
            connection.execute(
                du.insert().values(
                    device_id=row.device_id,
                    update_id=update_id,
                    status=UpdateStatus.PENDING.value,
                    install_type=row.install_type.value,
                    scheduled_for=row.scheduled_for,
                    window_end=row.window_end,
                    created_at=now,
                    updated_at=now,
                )
            )
            self._audit(connection, audit, now)

        try:
            self._grouped(insert)
        except IntegrityError as error:
            try:
                self.get_device_update(row.device_id, update_id)
            except NotFoundError:
                raise BackendError(f"cannot add the device update row: {_short(error)}") from None
            return False
        return True

    def transition(
        self,
        device_update_id: int,
        status: UpdateStatus,
        *,
        now: datetime,
        error_message: str | None = None,
        audit: AuditEntry,
    ) -> TransitionResult:
        """One conditional UPDATE; see :meth:`Store.transition` and :meth:`_transition_work`."""
        work = self._transition_work(device_update_id, status, now, error_message, audit)
        try:
            return self._grouped(work)
        except IntegrityError as error:  # pragma: no cover - no constraint can fail here
            raise BackendError(f"database write failed: {_short(error)}") from error

    async def transition_async(
        self,
        device_update_id: int,
        status: UpdateStatus,
        *,
        now: datetime,
        error_message: str | None = None,
        audit: AuditEntry,
    ) -> TransitionResult:
        """:meth:`transition` for a coroutine (the status route): no thread is held while it waits."""
        work = self._transition_work(device_update_id, status, now, error_message, audit)
        try:
            return await self._grouped_async(work)
        except IntegrityError as error:  # pragma: no cover - no constraint can fail here
            raise BackendError(f"database write failed: {_short(error)}") from error

    def _transition_work(
        self,
        device_update_id: int,
        status: UpdateStatus,
        now: datetime,
        error_message: str | None,
        audit: AuditEntry,
    ) -> Callable[[Connection], TransitionResult]:
        """The transition as a unit of work for one write transaction.

        Three statements on the path of a report that moves the row: the row
        (locked on PostgreSQL with ``FOR UPDATE``, so the audit's ``from`` is
        exact), the conditional ``UPDATE ... RETURNING`` and the audit line,
        plus the device's version on ``completed``.
        """
        allowed = {previous.value for previous in ALLOWED_PREVIOUS[status]}
        parameters = {"row_id": device_update_id, "moved_at": now, "error_text": error_message}
        move_statement = self._statements.transition(status, with_error=error_message is not None)

        def move(connection: Connection) -> TransitionResult:
            row = connection.execute(
                self._statements.device_update_for_update, parameters
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"device update row {device_update_id} does not exist")
            before = self._device_update_from_row(row)
            if before.status.value not in allowed:
                return TransitionResult(before, False)
            moved = connection.execute(move_statement, parameters).one_or_none()
            if moved is None:  # pragma: no cover - the row is locked since the SELECT
                return TransitionResult(
                    self._load_device_update(connection, device_update_id), False
                )
            record = replace(
                before,
                status=status,
                started_at=moved.started_at,
                completed_at=moved.completed_at,
                error_message=moved.error_message,
                updated_at=now,
            )
            details = {**audit.details, "from": before.status.value}
            self._audit(connection, AuditEntry(audit.actor, audit.action, details), now)
            if status is UpdateStatus.COMPLETED:
                self._raise_current_version(connection, record, now)
            return TransitionResult(record, True)

        return move

    def _raise_current_version(
        self, connection: Connection, record: DeviceUpdateRecord, now: datetime
    ) -> None:
        d = self.tables.devices
        running = connection.execute(
            select(d.c.current_version).where(d.c.id == record.device_id)
        ).scalar_one_or_none()
        if not raises_version(running, record.version):
            return
        connection.execute(
            d.update()
            .where(d.c.id == record.device_id)
            .values(current_version=record.version, updated_at=now)
        )

    def reschedule(
        self,
        device_update_id: int,
        *,
        install_type: UpdateType,
        scheduled_for: datetime,
        window_end: datetime | None,
        now: datetime,
    ) -> bool:
        """Retime a row only while it is pending (conditional UPDATE)."""
        du = self.tables.device_updates
        with self._write() as connection:
            result = connection.execute(
                du.update()
                .where(du.c.id == device_update_id, du.c.status == UpdateStatus.PENDING.value)
                .values(
                    install_type=install_type.value,
                    scheduled_for=scheduled_for,
                    window_end=window_end,
                    updated_at=now,
                )
            )
        return result.rowcount == 1

    # ------------------------------------------------------------------ audit
    def list_audit(self, *, limit: int, offset: int) -> Page[AuditRecord]:
        """Audit lines, newest first."""
        a = self.tables.audit_log
        with self._read() as connection:
            total = connection.execute(select(func.count()).select_from(a)).scalar_one()
            rows = connection.execute(
                select(a).order_by(a.c.id.desc()).limit(limit).offset(offset)
            ).all()
        return Page(
            [
                AuditRecord(row.id, row.at, row.actor, row.action, dict(row.details or {}))
                for row in rows
            ],
            total,
        )


def _insert_many(
    connection: Connection,
    table: Table,
    constants: dict[str, Any],
    keys: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """Insert many rows with one ``executemany`` (see :func:`_execute_converted`).

    Args:
        connection: inside the caller's transaction.
        table: the table to insert into.
        constants: column → the same value for every row.
        keys: the varying columns, in the order of each row's values.
        rows: one sequence of values per row.
    """
    if not rows:
        return
    varying = list(zip(*rows, strict=True))
    columns: list[tuple[str, Any, Sequence[Any]]] = [
        (key, table.c[key].type, values) for key, values in zip(keys, varying, strict=True)
    ]
    columns += [
        (name, table.c[name].type, itertools.repeat(value, len(rows)))  # type: ignore[misc]
        for name, value in constants.items()
    ]
    _execute_converted(connection, table.insert(), columns, count=len(rows))


def _execute_converted(
    connection: Connection,
    statement: Any,
    columns: Sequence[tuple[str, Any, Sequence[Any]]],
    *,
    count: int | None = None,
) -> None:
    """Run ``statement`` once per row with one ``executemany``, converting each distinct value once.

    SQLAlchemy's ``connection.execute(statement, [dict, ...])`` runs every
    parameter's bind processor (for a :class:`UTCDateTime`: normalise, then
    format for SQLite; for JSON: serialise) on every row, in Python, holding
    the GIL: most of the time of a publish to 100,000 devices, and the
    latency spikes of the heartbeat batches. Here the statement is compiled
    once by the dialect, each parameter's values go through its processor
    once per distinct value (values that cannot be hashed, such as metadata
    dictionaries, once each), and the driver gets plain tuples (or dicts, for
    named parameter styles).

    Args:
        connection: inside the caller's transaction.
        statement: an INSERT or UPDATE whose bound parameters are named as in ``columns``.
        columns: ``(parameter name, SQL type or None, one value per row)``.
        count: rows, when every ``columns`` entry is an iterator.
    """
    dialect = connection.dialect
    names = [name for name, _type, _values in columns]
    compiled = statement.compile(dialect=dialect, column_keys=names)
    converted: list[Any] = []
    for _name, type_, values in columns:
        processor = None if type_ is None else type_.dialect_impl(dialect).bind_processor(dialect)
        if processor is None:
            converted.append(values)
            continue
        values = list(values)
        try:
            memo = {value: processor(value) for value in set(values) if value is not None}
            converted.append(list(map(memo.get, values)))
        except TypeError:  # unhashable values (dictionaries): convert each one
            converted.append([None if value is None else processor(value) for value in values])
    if compiled.positional:
        order = [names.index(name) for name in compiled.positiontup or ()]
        params: list[Any] = list(zip(*(converted[i] for i in order), strict=count is None))
    else:
        params = [dict(zip(names, row, strict=True)) for row in zip(*converted, strict=False)]
    if params:
        connection.exec_driver_sql(compiled.string, params)


def _inserted_id(result: Any) -> int:
    key = result.inserted_primary_key
    if key is None or key[0] is None:  # pragma: no cover - every table has an id column
        raise BackendError("the database returned no id for the inserted row")
    return int(key[0])


def _unreachable(error: BaseException) -> bool:
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


def _describe_failure(error: BaseException) -> str:
    cause = error.__cause__ if isinstance(error, BackendError) and error.__cause__ else error
    if isinstance(cause, SQLAlchemyError):
        return _short(cause)
    return f"{type(cause).__name__}: {str(cause).splitlines()[0][:300] if str(cause) else ''}"


def _as_backend_error(error: BaseException) -> BackendError:
    if isinstance(error, BackendError):
        return error
    return BackendError(f"database write failed: {_describe_failure(error)}")


def _short(error: SQLAlchemyError) -> str:
    original = getattr(error, "orig", None)
    return str(original if original is not None else error).splitlines()[0][:300]
