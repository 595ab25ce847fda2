"""Response and request bodies that only the HTTP API has (lists, plan requests).

The shared wire models live in :mod:`javia_core.models`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from javia_core.models import (
    DeviceOut,
    DeviceUpdateOut,
    EnrollmentTokenOut,
    PlanEntry,
    UpdateOut,
    UpdateType,
    check_tags,
)
from javia_core.versioning import Version
from javia_updates.server.uploads import ROLLOUT_FIELD_PARTS

__all__ = [
    "AuditOut",
    "AuditPage",
    "DevicePage",
    "DeviceUpdatePage",
    "EnrollmentTokenPage",
    "EnrollmentTokenRequest",
    "Health",
    "Page",
    "PlanList",
    "PlanRequest",
    "UpdatePage",
]

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: ``items``, the ``total`` matching, and the window asked for."""

    items: list[T]
    total: int
    limit: int
    offset: int


DevicePage = Page[DeviceOut]
UpdatePage = Page[UpdateOut]
DeviceUpdatePage = Page[DeviceUpdateOut]
EnrollmentTokenPage = Page[EnrollmentTokenOut]

#: Longest validity of an enrollment token: one year, in seconds.
MAX_ENROLLMENT_SECONDS = 366 * 86_400


class EnrollmentTokenRequest(BaseModel):
    """``POST /api/v1/enrollment-tokens/``: how many devices, for how long (seconds)."""

    model_config = ConfigDict(extra="forbid")

    max_uses: int = Field(default=1, ge=1, le=100_000, description="devices it may register")
    expires_in_seconds: int = Field(
        default=86_400,
        ge=60,
        le=MAX_ENROLLMENT_SECONDS,
        description="validity from now, in seconds (60 s to one year)",
    )
    label: str | None = Field(default=None, max_length=200, description="operator's note")


class AuditOut(BaseModel):
    """One audit log line: when (UTC), who, what."""

    id: int
    at: datetime
    actor: str
    action: str
    details: dict[str, Any]


AuditPage = Page[AuditOut]


class PlanList(BaseModel):
    """A rollout plan: one entry per targeted device."""

    items: list[PlanEntry]


class PlanRequest(BaseModel):
    """``POST /api/v1/updates/plan``: the dry run of a publish."""

    model_config = ConfigDict(extra="forbid")

    update_type: UpdateType
    version: str = Field(description="vX.Y.Z")
    targets: list[uuid.UUID] | None = Field(default=None, max_length=100_000)
    tags: list[str] | None = Field(default=None, description="a device with any of them")
    phases: str | None = Field(default=None, description="as the publish form, e.g. 1,10,50,100")
    phase_soak_seconds: int | str | None = Field(
        default=None, description="seconds, or a duration such as 30m or 2h"
    )
    halt_failure_rate: float | str | None = None
    halt_min_devices: int | str | None = None
    require_approval: bool | None = None
    phase_approval: bool | None = None

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_tags(value)

    def policy_fields(self) -> dict[str, str]:
        """The rollout policy fields given, as the publish form carries them (text)."""
        given = self.model_dump(include=set(ROLLOUT_FIELD_PARTS), exclude_none=True)
        return {
            name: str(value).lower() if isinstance(value, bool) else str(value)
            for name, value in given.items()
        }

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        Version.parse(value)
        return value


class Health(BaseModel):
    """``GET /api/v1/health``."""

    status: str
    version: str
    server_time: datetime
