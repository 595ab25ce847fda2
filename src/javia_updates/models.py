"""Wire models shared by the server, the operator CLI and the agent.

These pydantic models are the JSON bodies of the HTTP API in DESIGN.md
section 6. Times are aware UTC datetimes (ISO 8601 on the wire); sizes are in
bytes; intervals in seconds. Importable on a device (pydantic only).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from javia_updates.errors import ScheduleError
from javia_updates.versioning import Version

__all__ = [
    "DEVICE_REPORTABLE_STATUSES",
    "FINAL_STATUSES",
    "DeviceOut",
    "DeviceRegisterRequest",
    "DeviceRegistered",
    "DeviceStatus",
    "DeviceUpdateOut",
    "ErrorBody",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "InstallDirective",
    "StatusReport",
    "StatusReportResult",
    "UpdateCheckResponse",
    "UpdateOut",
    "UpdateStatus",
    "UpdateType",
    "check_no_control_characters",
    "validate_timezone",
]

TIMEZONE_EXAMPLE = "Europe/Berlin"


class UpdateType(StrEnum):
    """When a device installs an update (DESIGN.md section 4)."""

    SCHEDULED = "scheduled"  # inside the next 02:00 device-local maintenance window
    URGENT = "urgent"  # after 1 h of application idle time, at the latest in the window
    INSTANT = "instant"  # now, for devices seen in the last 300 s

    @classmethod
    def parse(cls, text: str) -> UpdateType:
        """Return the update type named ``text``.

        Raises:
            ScheduleError: (a ``ValueError``) naming the three valid types.
        """
        try:
            return cls(text)
        except ValueError:
            valid = ", ".join(t.value for t in cls)
            raise ScheduleError(f"unknown update type {text!r}: expected one of {valid}") from None


class DeviceStatus(StrEnum):
    """A device's status as shown to operators.

    ``offline`` is derived when read: a device whose last heartbeat is older than
    three heartbeat intervals is offline, whatever it last reported.
    """

    ONLINE = "online"
    OFFLINE = "offline"
    UPDATING = "updating"


class UpdateStatus(StrEnum):
    """Progress of one update on one device (a ``device_updates`` row).

    Moves only forward: pending → downloading → installing → completed | failed |
    rolled_back; a pending row may also become superseded or cancelled
    (DESIGN.md section 5).
    """

    PENDING = "pending"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset(
    {
        UpdateStatus.COMPLETED,
        UpdateStatus.FAILED,
        UpdateStatus.ROLLED_BACK,
        UpdateStatus.SUPERSEDED,
        UpdateStatus.CANCELLED,
    }
)

DEVICE_REPORTABLE_STATUSES = frozenset(
    {
        UpdateStatus.DOWNLOADING,
        UpdateStatus.INSTALLING,
        UpdateStatus.COMPLETED,
        UpdateStatus.FAILED,
        UpdateStatus.ROLLED_BACK,
    }
)


def validate_timezone(name: str) -> str:
    """Return ``name`` if it is a known IANA timezone.

    Raises:
        ScheduleError: (a ``ValueError``) for an unknown or malformed name; the
            message gives an example of the expected form.
    """
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ScheduleError(f"invalid timezone: expected an IANA name such as {TIMEZONE_EXAMPLE}")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            f"unknown timezone {name!r}: expected an IANA name such as {TIMEZONE_EXAMPLE}"
        ) from None
    return name


def check_no_control_characters(value: str | None, field: str) -> str | None:
    """Refuse C0 control characters other than tab and newline in display text.

    NUL, ESC, carriage return and the like break terminal tables and can
    rewrite what an operator's terminal shows (ANSI escape sequences).

    Args:
        value: the text (None passes).
        field: the field's name, for the message.

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: ``value`` holds a control character U+0000 to U+001F
            other than tab (U+0009) and newline (U+000A); the message names
            the field and the first such character.
    """
    if value is not None:
        for character in value:
            if ord(character) < 0x20 and character not in "\t\n":
                raise ValueError(
                    f"{field} contains the control character U+{ord(character):04X}: "
                    "expected printable text (tab and newline allowed)"
                )
    return value


def _check_version(value: str | None) -> str | None:
    if value is not None:
        Version.parse(value)
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class ErrorBody(BaseModel):
    """Body of every 4xx/5xx response: ``{"detail": "what was wrong"}``."""

    detail: Any


class DeviceRegisterRequest(_Model):
    """``POST /api/v1/devices/register`` body. Every field is optional."""

    device_uuid: uuid.UUID | None = None
    device_name: str | None = Field(default=None, max_length=200)
    timezone: str = Field(default="UTC", description="IANA timezone, e.g. Europe/Berlin")
    metadata: dict[str, Any] = Field(default_factory=dict)

    _tz = field_validator("timezone")(validate_timezone)

    @field_validator("device_name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        return check_no_control_characters(value, "device_name")


class DeviceRegistered(BaseModel):
    """Answer to a registration; ``device_token`` is shown this once only."""

    device_uuid: uuid.UUID
    device_token: str
    device_name: str | None
    timezone: str
    registered_at: datetime


class DeviceOut(BaseModel):
    """A device as operators see it."""

    id: int
    device_uuid: uuid.UUID
    device_name: str | None
    registered_at: datetime
    last_seen: datetime | None
    current_version: str | None
    timezone: str
    status: DeviceStatus
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    token_revoked_at: datetime | None = Field(
        default=None, description="when the device's token was revoked (UTC); None: not revoked"
    )


class HeartbeatRequest(_Model):
    """``POST /api/v1/devices/{uuid}/heartbeat`` body."""

    current_version: str | None = Field(default=None, description="vX.Y.Z the device runs")
    status: DeviceStatus = DeviceStatus.ONLINE
    metadata: dict[str, Any] = Field(default_factory=dict)

    _version = field_validator("current_version")(_check_version)


class InstallDirective(BaseModel):
    """What the server tells a device about its pending update.

    ``install_at`` is the UTC instant from which the device may install
    (``scheduled_for``); for an urgent update the device may start earlier once
    the application has been idle for ``idle_seconds_required`` seconds.
    ``window_end`` closes the maintenance window for scheduled updates (None:
    no end). URLs are paths relative to the server's base URL.
    """

    update_id: int
    version: str
    update_type: UpdateType
    status: UpdateStatus
    install_at: datetime
    window_end: datetime | None = None
    idle_seconds_required: int | None = None
    size: int = Field(description="payload archive size in bytes")
    manifest_url: str
    signature_url: str
    download_url: str


class HeartbeatResponse(BaseModel):
    """Answer to a heartbeat: the server's clock, the poll interval, any update."""

    server_time: datetime
    heartbeat_interval_seconds: float
    update: InstallDirective | None = None


class UpdateCheckResponse(BaseModel):
    """``GET /api/v1/devices/{uuid}/updates/check``: the pending update, if any."""

    device_uuid: uuid.UUID
    server_time: datetime
    current_version: str | None
    update_available: bool
    update: InstallDirective | None = None


class StatusReport(_Model):
    """``POST .../updates/{update_id}/status`` body sent by a device."""

    status: UpdateStatus
    error_message: str | None = Field(default=None, max_length=4000)
    reported_at: datetime | None = Field(default=None, description="device clock, informative")

    @field_validator("status")
    @classmethod
    def _reportable(cls, value: UpdateStatus) -> UpdateStatus:
        if value not in DEVICE_REPORTABLE_STATUSES:
            valid = ", ".join(sorted(s.value for s in DEVICE_REPORTABLE_STATUSES))
            raise ValueError(f"a device may report only: {valid}")
        return value


class StatusReportResult(BaseModel):
    """Answer to a status report. ``changed`` is False for a repeated report."""

    update_id: int
    device_uuid: uuid.UUID
    status: UpdateStatus
    changed: bool


class UpdateOut(BaseModel):
    """A published update as operators see it, with per-status device counts."""

    id: int
    version: str
    created_at: datetime
    update_type: UpdateType
    description: str
    package_url: str
    requires_system_packages: bool
    system_packages: list[str]
    size: int
    key_id: str
    targets: list[uuid.UUID] | None = Field(default=None, description="None: every device")
    status_counts: dict[str, int] = Field(default_factory=dict)


class DeviceUpdateOut(BaseModel):
    """One device's progress on one update."""

    device_uuid: uuid.UUID
    device_name: str | None
    update_id: int
    version: str
    status: UpdateStatus
    scheduled_for: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
