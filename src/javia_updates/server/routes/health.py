"""``GET /api/v1/health``: liveness, no authentication."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends

from javia_updates import __version__
from javia_updates.server.auth import get_now
from javia_updates.server.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(now: Annotated[datetime, Depends(get_now)]) -> Health:
    """Answer 200 while the server runs; shows the server's clock and javia's version."""
    return Health(status="ok", version=__version__, server_time=now)
