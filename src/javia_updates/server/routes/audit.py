"""``GET /api/v1/audit``: the audit log (registrations, publishes, status changes), newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from javia_updates.server.auth import Caller, get_service, require_admin
from javia_updates.server.schemas import AuditOut, AuditPage
from javia_updates.service import MAX_DATABASE_INTEGER, UpdateService

__all__ = ["router"]

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=AuditPage)
def audit_log(
    service: Annotated[UpdateService, Depends(get_service)],
    _: Annotated[Caller, Depends(require_admin)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_DATABASE_INTEGER)] = 0,
) -> AuditPage:
    """Audit log lines, newest first: who did what, when (UTC)."""
    page = service.audit_log(limit=limit, offset=offset)
    items = [
        AuditOut(id=r.id, at=r.at, actor=r.actor, action=r.action, details=r.details)
        for r in page.items
    ]
    return AuditPage(items=items, total=page.total, limit=limit, offset=offset)
