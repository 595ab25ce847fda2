"""The audit log, read back (every change writes its line in its own transaction)."""

from __future__ import annotations

from sqlalchemy import func, select

from javia_updates.backends.records import (
    AuditRecord,
    Page,
)
from javia_updates.backends.sql.common import SQLStoreBase

__all__ = ["AuditStore"]


class AuditStore(SQLStoreBase):
    """The audit-log aggregate of the SQL store."""

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
