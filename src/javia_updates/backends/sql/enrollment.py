"""Enrollment tokens, and a registration that uses one (DESIGN.md section 5).

A token's use is one conditional ``UPDATE ... SET uses = uses + 1``, so
registrations on any number of replicas never exceed ``max_uses``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, literal, select
from sqlalchemy.exc import IntegrityError

from javia_core.errors import NotFoundError
from javia_updates.backends.records import (
    AuditEntry,
    DeviceRecord,
    EnrollmentTokenRecord,
    NewDevice,
    NewEnrollmentToken,
    Page,
)
from javia_updates.backends.schema import UTCDateTime
from javia_updates.backends.sql.batch import inserted_id
from javia_updates.backends.sql.common import SQLStoreBase
from javia_updates.backends.store import EnrollmentError

__all__ = ["EnrollmentStore"]


class EnrollmentStore(SQLStoreBase):
    """The enrollment-token aggregate of the SQL store."""

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
            token_id = inserted_id(result)
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
