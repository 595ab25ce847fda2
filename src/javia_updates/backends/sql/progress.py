"""Device progress on updates (``device_updates``) and its forward-only transitions.

Status transitions are single conditional ``UPDATE ... WHERE status IN
(allowed previous)`` statements (:data:`~javia_core.status_rules.ALLOWED_PREVIOUS`),
so two server replicas can never move a row backwards (DESIGN.md section 5).
Transitions and reconciled rows go through the store's writer (group
commit on SQLite, :mod:`javia_updates.backends.sql.writer`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.exc import IntegrityError

from javia_core.errors import BackendError, NotFoundError
from javia_core.models import UpdateStatus, UpdateType
from javia_core.status_rules import ALLOWED_PREVIOUS, REASON_REFRESHING, raises_version
from javia_updates.backends.records import (
    AuditEntry,
    DeviceUpdateRecord,
    NewDeviceUpdate,
    Page,
    TransitionResult,
)
from javia_updates.backends.sql.common import SQLStoreBase
from javia_updates.backends.sql.engine import (
    short_message,
)

__all__ = ["ProgressStore"]


class ProgressStore(SQLStoreBase):
    """The device-progress aggregate of the SQL store (``device_updates``)."""

    def list_device_updates(
        self,
        *,
        update_id: int | None = None,
        device_id: int | None = None,
        status: UpdateStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
        with_failure: bool = False,
    ) -> Page[DeviceUpdateRecord]:
        """Rows by update/device/status, highest version first, then by device.

        ``with_failure``: read each row's ``failure`` too (the operator's views).
        """
        du = self.tables.device_updates
        if (
            device_id is not None
            and (update_id, status, limit, offset) == (None, None, None, 0)
            and not with_failure
        ):
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
            self._device_update_select(with_failure=with_failure)
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
            self._writer.run(insert)
        except IntegrityError as error:
            try:
                self.get_device_update(row.device_id, update_id)
            except NotFoundError:
                raise BackendError(
                    f"cannot add the device update row: {short_message(error)}"
                ) from None
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
        failure: dict[str, Any] | None = None,
    ) -> TransitionResult:
        """One conditional UPDATE; see :meth:`Store.transition` and :meth:`_transition_work`."""
        work = self._transition_work(device_update_id, status, now, error_message, audit, failure)
        try:
            return self._writer.run(work)
        except IntegrityError as error:  # pragma: no cover - no constraint can fail here
            raise BackendError(f"database write failed: {short_message(error)}") from error

    async def transition_async(
        self,
        device_update_id: int,
        status: UpdateStatus,
        *,
        now: datetime,
        error_message: str | None = None,
        audit: AuditEntry,
        failure: dict[str, Any] | None = None,
    ) -> TransitionResult:
        """:meth:`transition` for a coroutine (the status route): no thread is held while it waits."""
        work = self._transition_work(device_update_id, status, now, error_message, audit, failure)
        try:
            return await self._writer.run_async(work)
        except IntegrityError as error:  # pragma: no cover - no constraint can fail here
            raise BackendError(f"database write failed: {short_message(error)}") from error

    def _transition_work(
        self,
        device_update_id: int,
        status: UpdateStatus,
        now: datetime,
        error_message: str | None,
        audit: AuditEntry,
        failure: dict[str, Any] | None = None,
    ) -> Callable[[Connection], TransitionResult]:
        """The transition as a unit of work for one write transaction.

        Three statements on the path of a report that moves the row: the row
        (locked on PostgreSQL with ``FOR UPDATE``, so the audit's ``from`` is
        exact), the conditional ``UPDATE ... RETURNING`` and the audit line,
        plus the device's version on ``completed``. A repeated report in a
        status of :data:`~javia_core.status_rules.REASON_REFRESHING` with a new
        ``error_message`` stores that reason (``changed`` True, status kept).
        """
        allowed = {previous.value for previous in ALLOWED_PREVIOUS[status]}
        parameters: dict[str, Any] = {
            "row_id": device_update_id,
            "moved_at": now,
            "error_text": error_message,
            "failure_json": failure,
        }
        move_statement = self._statements.transition(
            status, with_error=error_message is not None, with_failure=failure is not None
        )

        def move(connection: Connection) -> TransitionResult:
            row = connection.execute(
                self._statements.device_update_for_update, parameters
            ).one_or_none()
            if row is None:
                raise NotFoundError(f"device update row {device_update_id} does not exist")
            before = self._device_update_from_row(row)
            if (
                before.status is status
                and status in REASON_REFRESHING
                and error_message is not None
                and error_message != before.error_message
            ):
                du = self.tables.device_updates
                connection.execute(
                    du.update()
                    .where(du.c.id == device_update_id, du.c.status == status.value)
                    .values(error_message=error_message, updated_at=now)
                )
                details = {**audit.details, "from": before.status.value}
                self._audit(connection, AuditEntry(audit.actor, audit.action, details), now)
                return TransitionResult(
                    replace(before, error_message=error_message, updated_at=now), True
                )
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
                failure=failure,
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
        """Retime a row only while it is pending or staged (conditional UPDATE)."""
        du = self.tables.device_updates
        waiting = (UpdateStatus.PENDING.value, UpdateStatus.STAGED.value)
        with self._write() as connection:
            result = connection.execute(
                du.update()
                .where(du.c.id == device_update_id, du.c.status.in_(waiting))
                .values(
                    install_type=install_type.value,
                    scheduled_for=scheduled_for,
                    window_end=window_end,
                    updated_at=now,
                )
            )
        return result.rowcount == 1
