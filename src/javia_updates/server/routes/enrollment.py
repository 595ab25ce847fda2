"""Enrollment tokens (operator): a new device registers itself with one, without the admin key.

``POST /api/v1/enrollment-tokens/`` answers with the token, shown this once
(the server keeps its SHA-256); ``javia agent register --enrollment-token``
then sends it as ``Authorization: Bearer <token>`` to
``POST /api/v1/devices/register``. Each token has a use limit and an expiry
(docs/security.md, "Device identity").
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, status

from javia_updates.server.auth import Caller, get_now, get_service, require_admin
from javia_updates.server.schemas import EnrollmentTokenPage, EnrollmentTokenRequest
from javia_updates.service import (
    MAX_DATABASE_INTEGER,
    EnrollmentTokenCreated,
    EnrollmentTokenOut,
    UpdateService,
)

__all__ = ["router"]

router = APIRouter(prefix="/enrollment-tokens", tags=["enrollment"])

Service = Annotated[UpdateService, Depends(get_service)]
Now = Annotated[datetime, Depends(get_now)]
Admin = Annotated[Caller, Depends(require_admin)]
TokenId = Annotated[int, Path(ge=1, le=MAX_DATABASE_INTEGER, description="the token's id")]


@router.post("/", status_code=status.HTTP_201_CREATED, response_model=EnrollmentTokenCreated)
def create_enrollment_token(
    body: EnrollmentTokenRequest, service: Service, now: Now, _: Admin
) -> EnrollmentTokenCreated:
    """Create an enrollment token with a use limit and an expiry; the token is shown this once."""
    return service.create_enrollment_token(
        max_uses=body.max_uses,
        expires_in_seconds=body.expires_in_seconds,
        label=body.label,
        now=now,
    )


@router.get("/", response_model=EnrollmentTokenPage)
def list_enrollment_tokens(
    service: Service,
    now: Now,
    _: Admin,
    limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_DATABASE_INTEGER, description="items to skip")] = 0,
) -> EnrollmentTokenPage:
    """Enrollment tokens, newest first, with their uses and whether each is still usable."""
    page = service.list_enrollment_tokens(now=now, limit=limit, offset=offset)
    return EnrollmentTokenPage(items=page.items, total=page.total, limit=limit, offset=offset)


@router.post("/{token_id}/revoke", response_model=EnrollmentTokenOut)
def revoke_enrollment_token(
    token_id: TokenId, service: Service, now: Now, _: Admin
) -> EnrollmentTokenOut:
    """Revoke an enrollment token; devices it registered keep their own tokens."""
    return service.revoke_enrollment_token(token_id, now=now)
