"""Published updates: publish (with every device row), lookups and counts (DESIGN.md section 5)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.exc import IntegrityError

from javia_core.errors import BackendError, ConflictError, NotFoundError
from javia_core.models import UpdateStatus, UpdateType
from javia_core.status_rules import WAITING_STATUSES
from javia_updates.backends.records import (
    AuditEntry,
    NewDeviceUpdate,
    NewRollout,
    NewUpdate,
    Page,
    SupersededRow,
    UpdateRecord,
)
from javia_updates.backends.schema import UTCDateTime
from javia_updates.backends.sql.batch import insert_many, inserted_id
from javia_updates.backends.sql.engine import (
    short_message,
)
from javia_updates.backends.sql.rollouts import RolloutStore

__all__ = ["UpdateStore"]


class UpdateStore(RolloutStore):
    """The updates aggregate of the SQL store (publishing creates the rollout too)."""

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
            target_tags=None if row.target_tags is None else tuple(row.target_tags),
        )

    def create_update(
        self,
        update: NewUpdate,
        rows: Sequence[NewDeviceUpdate],
        *,
        now: datetime,
        audit: AuditEntry,
        rollout: NewRollout | None = None,
        superseded: Sequence[SupersededRow] = (),
    ) -> UpdateRecord:
        """Insert the update, its rollout, all its device rows (one executemany) and the audit line, atomically.

        The rows it ``superseded`` move from ``pending`` or ``staged`` to
        ``superseded`` in the same transaction (one executemany; a row no
        longer waiting is left).

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
                        target_tags=None
                        if update.target_tags is None
                        else list(update.target_tags),
                    )
                )
                update_id = inserted_id(result)
                if rollout is not None:
                    self._insert_rollout(connection, update_id, rollout, now)
                kinds = {kind: kind.value for kind in UpdateType}
                insert_many(
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
                if superseded:
                    self._supersede_rows(connection, superseded, update.version, now)
                stored = connection.execute(
                    select(*self._update_columns()).where(u.c.id == update_id)
                ).one()
        except IntegrityError as error:
            # Another publisher inserted the same version between our check and
            # insert; anything else (a device deleted meanwhile) is a plain failure.
            try:
                existing = self.get_update_by_version(update.version)
            except NotFoundError:
                raise BackendError(
                    f"publishing {update.version} failed: {short_message(error)}"
                ) from None
            raise ConflictError(
                f"version {update.version} is already published (update {existing.id}); "
                "publish a higher version"
            ) from None
        return self._update_from_row(stored)

    def _supersede_rows(
        self, connection: Any, rows: Sequence[SupersededRow], version: str, now: datetime
    ) -> None:
        """Move ``rows`` from pending or staged to superseded (one executemany) with one audit line."""
        du = self.tables.device_updates
        moved_at = bindparam("moved_at", type_=UTCDateTime())
        statement = (
            du.update()
            .where(
                du.c.id == bindparam("row_id"),
                # OR of literals, not IN: an expanding IN cannot run as executemany.
                or_(*(du.c.status == status.value for status in sorted(WAITING_STATUSES))),
            )
            .values(
                status=UpdateStatus.SUPERSEDED.value,
                updated_at=moved_at,
                started_at=func.coalesce(du.c.started_at, moved_at),
                completed_at=moved_at,
                error_message=bindparam("reason"),
            )
        )
        connection.execute(
            statement,
            [
                {"row_id": row.device_update_id, "moved_at": now, "reason": row.reason}
                for row in rows
            ],
        )
        self._audit(
            connection,
            AuditEntry("server", "device_update.superseded", {"by": version, "rows": len(rows)}),
            now,
        )

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
