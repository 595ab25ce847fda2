"""Devices: registration, tokens, lookups, fleet queries and heartbeats (DESIGN.md section 5).

The heartbeat path's reads (:meth:`DeviceStore.find_device_by_token_hash`,
:meth:`DeviceStore.token_is_current`) run statements built once; the soft
state of many heartbeats is written in one ``executemany``
(:meth:`DeviceStore.record_heartbeats`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from javia_core.errors import ConflictError, NotFoundError
from javia_core.models import MAX_TAGS, DeviceStatus
from javia_updates.backends.records import (
    AuditEntry,
    DeviceQuery,
    DeviceRecord,
    DeviceWithRows,
    HeartbeatWrite,
    NewDevice,
    Page,
    PublishTarget,
)
from javia_updates.backends.schema import UTCDateTime, json_type
from javia_updates.backends.sql.batch import execute_converted
from javia_updates.backends.sql.common import DEVICE_COLUMN_PREFIX, SQLStoreBase
from javia_updates.backends.sql.engine import (
    as_backend_error,
    describe_failure,
    is_unreachable,
)

__all__ = ["DeviceStore"]

logger = logging.getLogger(__name__)

_IN_CHUNK = 500  # uuids per IN (...) list


class _Prefixed:
    """A result row read through the names of its columns that carry ``prefix``."""

    __slots__ = ("_prefix", "_row")

    def __init__(self, row: Any, prefix: str) -> None:
        self._row = row
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, self._prefix + name)


class DeviceStore(SQLStoreBase):
    """The devices aggregate of the SQL store (see :class:`~javia_updates.backends.store.Store`)."""

    def create_device(self, device: NewDevice, *, now: datetime, audit: AuditEntry) -> DeviceRecord:
        """Insert the device and its audit line in one transaction.

        Raises:
            ConflictError: ``device_uuid`` is already registered.
        """
        try:
            row = self._writer.run(
                lambda connection: self._insert_device(connection, device, now, audit)
            )
        except IntegrityError:
            raise self._device_conflict(device) from None
        return self._device_from_row(row)

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
        with self._read_one_statement() as connection:
            row = connection.execute(
                self._hot_statements()["device_by_token"], {"token_hash": token_hash}
            ).one_or_none()
        return None if row is None else self._device_from_row(row)

    def find_device_with_rows(self, token_hash: str) -> DeviceWithRows | None:
        """The device holding the token and its rows: one statement built once, no ``BEGIN``.

        The device joined to its rows (one result row per update row, one
        with empty row columns for a device without rows): one snapshot, so
        the device and its rows agree, on SQLite without a transaction.
        """
        with self._read_one_statement() as connection:
            result = connection.execute(
                self._hot_statements()["device_with_rows"], {"token_hash": token_hash}
            ).all()
        if not result:
            return None
        rows = [self._device_update_from_row(row) for row in result if row.id is not None]
        return DeviceWithRows(
            self._device_from_row(_Prefixed(result[0], DEVICE_COLUMN_PREFIX)),
            rows,
            (len(rows), sum(row.row_revision for row in result if row.id is not None)),
        )

    def token_is_current(self, device_id: int, token_hash: str) -> bool:
        """Whether the device still holds the token: one primary-key lookup, one boolean back."""
        with self._read_one_statement() as connection:
            held = connection.execute(
                self._hot_statements()["token_is_current"],
                {"device_id": device_id, "token_hash": token_hash},
            ).scalar_one_or_none()
        return held is not None

    def confirm_device(self, device_id: int, token_hash: str) -> tuple[int, int] | None:
        """The device's rows mark if it still holds the token, else None: one indexed query."""
        with self._read_one_statement() as connection:
            row = connection.execute(
                self._hot_statements()["confirm_device"],
                {"device_id": device_id, "token_hash": token_hash},
            ).one_or_none()
        return None if row is None else (int(row[0]), int(row[1]))

    def _has_tag(self, tag: str) -> Any:
        """The condition "the device carries ``tag``" (JSONB containment, or SQLite's json_each)."""
        d = self.tables.devices
        if self.engine.dialect.name == "postgresql":
            return type_coerce(d.c.tags, JSONB).contains([tag])
        held = func.json_each(d.c.tags).table_valued("value")
        return exists(select(literal(1)).select_from(held).where(held.c.value == tag))

    def _device_conditions(self, query: DeviceQuery) -> list[Any]:
        d = self.tables.devices
        conditions: list[Any] = []
        if query.current_version is not None:
            conditions.append(d.c.current_version == query.current_version)
        if query.tag is not None:
            conditions.append(self._has_tag(query.tag))
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
        self,
        connection: Connection,
        columns: list[Any],
        targets: Sequence[uuid.UUID] | None,
        tags: Sequence[str] | None = None,
    ) -> list[Any]:
        d = self.tables.devices
        if targets is None and tags is None:
            return list(connection.execute(select(*columns).order_by(d.c.id)).all())
        wanted = [str(target) for target in dict.fromkeys(targets or ())]
        rows: list[Any] = []
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            rows.extend(
                connection.execute(select(*columns).where(d.c.device_uuid.in_(chunk))).all()
            )
        if tags:
            listed = {row.id for row in rows}
            tagged = connection.execute(
                select(*columns).where(or_(*(self._has_tag(tag) for tag in dict.fromkeys(tags))))
            ).all()
            rows.extend(row for row in tagged if row.id not in listed)
        rows.sort(key=lambda row: row.id)
        missing = set(wanted) - {row.device_uuid for row in rows}
        if missing:
            shown = ", ".join(sorted(missing)[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise NotFoundError(f"targets name devices that are not registered: {shown}{more}")
        return rows

    def devices_for_targets(
        self, targets: Sequence[uuid.UUID] | None, tags: Sequence[str] | None = None
    ) -> list[DeviceRecord]:
        """Every targeted device (listed by uuid or carrying one of ``tags``), in registration order.

        Raises:
            NotFoundError: some targets are not registered devices (all are listed).
        """
        with self._read() as connection:
            rows = self._targeted_rows(connection, self._device_columns(), targets, tags)
        return [self._device_from_row(row) for row in rows]

    def tags_in_use(self, tags: Sequence[str]) -> set[str]:
        """Those of ``tags`` that at least one device carries."""
        d = self.tables.devices
        with self._read() as connection:
            return {
                tag
                for tag in dict.fromkeys(tags)
                if connection.execute(select(d.c.id).where(self._has_tag(tag)).limit(1)).first()
                is not None
            }

    def change_device_tags(
        self,
        device_uuid: uuid.UUID,
        *,
        add: Sequence[str],
        remove: Sequence[str],
        now: datetime,
        audit: AuditEntry,
    ) -> DeviceRecord:
        """Add ``add`` and remove ``remove`` from the device's tags, with ``audit`` if they changed.

        Read and written in one write transaction with the row locked
        (``FOR UPDATE`` on PostgreSQL; SQLite has one writer), so two operators
        changing the same device's tags at once both take effect. A tag in
        both lists ends up removed. Nothing changes (and nothing is audited)
        when the tags are already so.

        Raises:
            NotFoundError: no such device.
            ConflictError: the device would carry more than ``MAX_TAGS`` tags.
        """
        d = self.tables.devices
        with self._write() as connection:
            held = connection.execute(
                select(d.c.tags).where(d.c.device_uuid == str(device_uuid)).with_for_update()
            ).one_or_none()
            if held is None:
                raise NotFoundError(f"device {device_uuid} is not registered")
            before = sorted(held.tags or ())
            after = sorted((set(before) | set(add)) - set(remove))
            if len(after) > MAX_TAGS:
                raise ConflictError(
                    f"device {device_uuid} would carry {len(after)} tags: at most {MAX_TAGS} "
                    "are allowed; remove some first"
                )
            if after != before:
                connection.execute(
                    d.update()
                    .where(d.c.device_uuid == str(device_uuid))
                    .values(tags=after, updated_at=now)
                )
                self._audit(
                    connection,
                    AuditEntry(
                        audit.actor,
                        audit.action,
                        {**audit.details, "before": before, "tags": after},
                    ),
                    now,
                )
            row = connection.execute(
                select(*self._device_columns()).where(d.c.device_uuid == str(device_uuid))
            ).one()
        return self._device_from_row(row)

    def publish_targets(
        self,
        targets: Sequence[uuid.UUID] | None,
        *,
        tags: Sequence[str] | None = None,
        seen_since: datetime | None = None,
    ) -> list[PublishTarget]:
        """What a publish needs of the targeted devices: five columns, ``seen`` computed in SQL.

        Targeted: listed in ``targets`` or carrying one of ``tags``; both None: every device.
        A device whose token is revoked is left out (it can never fetch the update).

        Raises:
            NotFoundError: some targets are not registered devices (all are listed).
        """
        d = self.tables.devices
        seen = (
            literal(False)
            if seen_since is None
            else (d.c.last_seen >= literal(seen_since, UTCDateTime()))
        )
        columns = [
            d.c.id,
            d.c.device_uuid,
            d.c.timezone,
            d.c.current_version,
            seen.label("seen"),
            d.c.token_revoked_at,
        ]
        with self._read() as connection:
            rows = self._targeted_rows(connection, columns, targets, tags)
        return [
            PublishTarget(device_id, device_uuid, timezone, version, bool(seen))
            for device_id, device_uuid, timezone, version, seen, revoked_at in rows
            if revoked_at is None
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
        A heartbeat older than the device's stored ``last_seen`` is skipped:
        server processes flush their batches independently, so a device's
        later heartbeat, answered by another worker or replica, may be
        written first.

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
            with self._write(durable=False) as connection:
                self._heartbeat_rows(connection, writes)
            return
        except Exception as error:  # noqa: BLE001 - classified below
            if is_unreachable(error):
                raise as_backend_error(error) from error
            failure = error
        try:
            with self._write(durable=False) as connection:
                for write in writes:
                    try:
                        with connection.begin_nested():
                            self._heartbeat_rows(connection, [write])
                    except Exception as error:  # noqa: BLE001 - one row's fault, unless unreachable
                        if is_unreachable(error):
                            raise
                        logger.warning(
                            "dropped the heartbeat soft state of device id %d, which the "
                            "database refused: %s",
                            write.device_id,
                            describe_failure(error),
                        )
        except Exception as error:  # noqa: BLE001 - the batch as a whole failed
            raise as_backend_error(error) from failure

    def _heartbeat_rows(self, connection: Connection, writes: Sequence[HeartbeatWrite]) -> None:
        """The batch UPDATE of :meth:`record_heartbeats`, inside ``connection``'s transaction."""
        d = self.tables.devices
        at = bindparam("heartbeat_at", type_=UTCDateTime())
        statement = (
            d.update()
            # A heartbeat older than the stored one is not written: another
            # worker or replica may flush a later heartbeat of the device first.
            .where(
                d.c.id == bindparam("device_id"), or_(d.c.last_seen.is_(None), d.c.last_seen <= at)
            )
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
        execute_converted(
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
