"""Rollouts: the state of each update's rollout, its conditional changes and its rows (docs/rollouts.md).

Every change of a rollout is one conditional ``UPDATE ... WHERE update_id = ?
AND revision = ?``: of two operators or server replicas racing, one write
wins and the other gets None, re-reads and applies its event again
(:func:`javia_core.rollouts.apply_event` is idempotent where it should be).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, cast, func, or_, select
from sqlalchemy.engine import Connection

from javia_core.models import RolloutState, UpdateStatus
from javia_core.rollouts import CANARY_TAG, Rollout
from javia_core.status_rules import ALLOWED_PREVIOUS
from javia_updates.backends.records import (
    AuditEntry,
    NewRollout,
    RolloutDeviceRow,
    RolloutMember,
    RolloutRecord,
    StatusGroup,
)
from javia_updates.backends.sql.common import SQLStoreBase
from javia_updates.backends.sql.engine import load_stored_json

__all__ = ["RolloutStore"]


class RolloutStore(SQLStoreBase):
    """The rollouts aggregate of the SQL store."""

    def _insert_rollout(
        self, connection: Connection, update_id: int, rollout: NewRollout, now: datetime
    ) -> None:
        """Insert the rollout of a new update (inside the publish's transaction)."""
        started = rollout.state is not RolloutState.AWAITING_APPROVAL
        connection.execute(
            self.tables.rollouts.insert().values(
                update_id=update_id,
                state=rollout.state.value,
                phases=list(rollout.phases),
                phase_index=0,
                phase_opened_at=now if started else None,
                phase_soak_seconds=rollout.phase_soak_seconds,
                halt_failure_rate=rollout.halt_failure_rate,
                halt_min_devices=rollout.halt_min_devices,
                require_approval=rollout.require_approval,
                phase_approval=rollout.phase_approval,
                awaiting_phase_approval=False,
                halt_reason=None,
                revision=0,
                created_at=now,
                updated_at=now,
            )
        )

    @staticmethod
    def _rollout_from_row(row: Any) -> RolloutRecord:
        return RolloutRecord(
            update_id=row.update_id,
            state=RolloutState(row.state),
            phases=tuple(int(p) for p in row.phases),
            phase_index=row.phase_index,
            phase_opened_at=row.phase_opened_at,
            phase_soak_seconds=row.phase_soak_seconds,
            halt_failure_rate=float(row.halt_failure_rate),
            halt_min_devices=row.halt_min_devices,
            require_approval=bool(row.require_approval),
            phase_approval=bool(row.phase_approval),
            awaiting_phase_approval=bool(row.awaiting_phase_approval),
            halt_reason=row.halt_reason,
            revision=row.revision,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def get_rollout(self, update_id: int) -> RolloutRecord | None:
        """The rollout of ``update_id``, or None (an update stored without one)."""
        r = self.tables.rollouts
        with self._read() as connection:
            row = connection.execute(select(r).where(r.c.update_id == update_id)).one_or_none()
        return None if row is None else self._rollout_from_row(row)

    def list_rollouts(self, update_ids: Sequence[int] | None = None) -> dict[int, RolloutRecord]:
        """``{update_id: rollout}`` of ``update_ids`` (None: every update that has one)."""
        r = self.tables.rollouts
        query = select(r)
        if update_ids is not None:
            if not update_ids:
                return {}
            query = query.where(r.c.update_id.in_(list(update_ids)))
        with self._read() as connection:
            rows = connection.execute(query).all()
        return {row.update_id: self._rollout_from_row(row) for row in rows}

    def change_rollout(
        self,
        update_id: int,
        *,
        revision: int,
        rollout: Rollout,
        now: datetime,
        audit: AuditEntry | None,
    ) -> RolloutRecord | None:
        """Store ``rollout`` if the stored revision is still ``revision``; one transaction."""
        r, du = self.tables.rollouts, self.tables.device_updates
        with self._write() as connection:
            before = connection.execute(
                select(r.c.phase_index, r.c.phase_opened_at, r.c.state).where(
                    r.c.update_id == update_id, r.c.revision == revision
                )
            ).one_or_none()
            if before is None:
                return None
            opened = before.phase_opened_at
            if rollout.phase != before.phase_index or (
                opened is None and rollout.state is RolloutState.ACTIVE
            ):
                opened = now
            result = connection.execute(
                r.update()
                .where(r.c.update_id == update_id, r.c.revision == revision)
                .values(
                    state=rollout.state.value,
                    phase_index=rollout.phase,
                    phase_opened_at=opened,
                    awaiting_phase_approval=rollout.awaiting_phase_approval,
                    halt_reason=rollout.halt_reason,
                    revision=revision + 1,
                    updated_at=now,
                )
            )
            if result.rowcount != 1:
                return None
            if rollout.state is RolloutState.CANCELLED:
                connection.execute(
                    du.update()
                    .where(
                        du.c.update_id == update_id,
                        # Rows nothing of which was installed (pending, staged,
                        # retrying): the statuses a cancel may come from.
                        du.c.status.in_(
                            sorted(s.value for s in ALLOWED_PREVIOUS[UpdateStatus.CANCELLED])
                        ),
                    )
                    .values(
                        status=UpdateStatus.CANCELLED.value,
                        error_message="the rollout was cancelled",
                        completed_at=now,
                        updated_at=now,
                    )
                )
            if audit is not None:
                self._audit(connection, audit, now)
            row = connection.execute(select(r).where(r.c.update_id == update_id)).one()
        return self._rollout_from_row(row)

    def rollout_devices(
        self, update_id: int, *, silent_before: datetime | None = None
    ) -> list[RolloutDeviceRow]:
        """Device rows of ``update_id`` with ``last_seen`` and tags (all, or the silence candidates)."""
        du, d = self.tables.device_updates, self.tables.devices
        query = (
            select(
                du.c.id,
                du.c.device_id,
                d.c.device_uuid,
                du.c.status,
                du.c.window_end,
                du.c.started_at,
                du.c.completed_at,
                du.c.regressed_at,
                d.c.last_seen,
                d.c.tags,
            )
            .select_from(du.join(d, du.c.device_id == d.c.id))
            .where(du.c.update_id == update_id)
            .order_by(du.c.id)
        )
        if silent_before is not None:
            query = query.where(
                du.c.status == UpdateStatus.COMPLETED.value,
                du.c.regressed_at.is_(None),
                du.c.completed_at < silent_before,
                or_(d.c.last_seen.is_(None), d.c.last_seen < silent_before),
            )
        with self._read() as connection:
            rows = connection.execute(query).all()
        return [
            RolloutDeviceRow(
                device_update_id=row.id,
                device_id=row.device_id,
                device_uuid=uuid.UUID(row.device_uuid),
                status=UpdateStatus(row.status),
                window_end=row.window_end,
                started_at=row.started_at,
                completed_at=row.completed_at,
                regressed_at=row.regressed_at,
                last_seen=row.last_seen,
                tags=tuple(row.tags or ()),
            )
            for row in rows
        ]

    def rollout_members(self, update_id: int) -> list[RolloutMember]:
        """Every row of ``update_id``, lean: tags read as text and parsed only if they may hold
        ``canary`` (tags are ``[a-z0-9._-]``, so the quoted name appears only as that tag)."""
        du, d = self.tables.device_updates, self.tables.devices
        with self._read() as connection:
            rows = connection.execute(
                select(
                    d.c.device_uuid,
                    cast(d.c.tags, String),
                    du.c.status,
                    du.c.regressed_at.is_not(None),
                    du.c.completed_at,
                    du.c.window_end,
                )
                .select_from(du.join(d, du.c.device_id == d.c.id))
                .where(du.c.update_id == update_id)
            ).all()
            marker = f'"{CANARY_TAG}"'
            statuses = {status.value: status for status in UpdateStatus}
            return [
                RolloutMember(
                    device_uuid,
                    tags is not None
                    and marker in tags
                    and CANARY_TAG in (load_stored_json(tags) or ()),
                    statuses[status],
                    bool(regressed),
                    completed_at,
                    window_end,
                )
                for device_uuid, tags, status, regressed, completed_at, window_end in rows
            ]

    def rollout_status_groups(
        self, update_id: int, *, silent_before: datetime
    ) -> list[StatusGroup]:
        """``update_id``'s rows by status, regression and silence; one aggregate query."""
        du, d = self.tables.device_updates, self.tables.devices
        rows_of_update = (
            select(
                du.c.status,
                du.c.regressed_at.is_not(None).label("regressed"),
                or_(d.c.last_seen.is_(None), d.c.last_seen < silent_before).label("silent"),
            )
            .select_from(du.join(d, du.c.device_id == d.c.id))
            .where(du.c.update_id == update_id)
            .subquery()
        )
        columns = (rows_of_update.c.status, rows_of_update.c.regressed, rows_of_update.c.silent)
        with self._read() as connection:
            rows = connection.execute(select(*columns, func.count()).group_by(*columns)).all()
        return [
            StatusGroup(UpdateStatus(status), bool(was_regressed), bool(was_silent), count)
            for status, was_regressed, was_silent, count in rows
        ]

    def previous_status_groups(self, update_id: int, previous_id: int) -> list[StatusGroup]:
        """``previous_id``'s rows of the devices pending in ``update_id``; one aggregate query."""
        du = self.tables.device_updates
        waiting = du.alias("waiting")
        previous_rows = (
            select(du.c.status, du.c.regressed_at.is_not(None).label("regressed"))
            .select_from(du.join(waiting, waiting.c.device_id == du.c.device_id))
            .where(
                du.c.update_id == previous_id,
                waiting.c.update_id == update_id,
                waiting.c.status == UpdateStatus.PENDING.value,
            )
            .subquery()
        )
        columns = (previous_rows.c.status, previous_rows.c.regressed)
        with self._read() as connection:
            rows = connection.execute(select(*columns, func.count()).group_by(*columns)).all()
        return [
            StatusGroup(UpdateStatus(status), bool(was_regressed), False, count)
            for status, was_regressed, count in rows
        ]

    def regression_count(self, update_id: int) -> int:
        """How many completed rows of ``update_id`` have a post-install regression recorded."""
        du = self.tables.device_updates
        with self._read() as connection:
            count: int = connection.execute(
                select(func.count())
                .select_from(du)
                .where(
                    du.c.update_id == update_id,
                    du.c.status == UpdateStatus.COMPLETED.value,
                    du.c.regressed_at.is_not(None),
                )
            ).scalar_one()
        return count

    def previous_update_id(self, update_id: int) -> int | None:
        """The update with the next lower version than ``update_id``'s, or None."""
        u = self.tables.updates
        with self._read() as connection:
            this = connection.execute(
                select(u.c.version_major, u.c.version_minor, u.c.version_patch).where(
                    u.c.id == update_id
                )
            ).one_or_none()
            if this is None:
                return None
            major, minor, patch = this
            below = or_(
                u.c.version_major < major,
                and_(u.c.version_major == major, u.c.version_minor < minor),
                and_(
                    u.c.version_major == major,
                    u.c.version_minor == minor,
                    u.c.version_patch < patch,
                ),
            )
            found: int | None = connection.execute(
                select(u.c.id).where(below).order_by(*self._version_order()).limit(1)
            ).scalar_one_or_none()
        return found

    def record_regression(
        self, device_update_id: int, reason: str, *, now: datetime, audit: AuditEntry
    ) -> bool:
        """Mark a completed row as regressed after install; False if it is not or already was."""
        du = self.tables.device_updates
        with self._write() as connection:
            result = connection.execute(
                du.update()
                .where(
                    du.c.id == device_update_id,
                    du.c.status == UpdateStatus.COMPLETED.value,
                    du.c.regressed_at.is_(None),
                )
                .values(regressed_at=now, regression_reason=reason[:500], updated_at=now)
            )
            if result.rowcount != 1:
                return False
            self._audit(connection, audit, now)
        return True
