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
from javia_updates.input_rules import (
    TIMEZONE_EXAMPLE,
    check_display_text,
    check_json,
    check_text,
    check_timezone,
)
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
    "TIMEZONE_EXAMPLE",
    "check_no_control_characters",
    "load_timezone",
    "validate_timezone",
]


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
    """Return ``name`` if it is a canonical IANA time zone name.

    Accepted: the names the ``tzdata`` package lists (every zone and its
    backward-compatible links such as ``UTC`` and ``US/Eastern``), except
    ``Factory``; refused: ``localtime``, ``posixrules``, the ``posix/`` and
    ``right/`` trees and any other file name (:func:`javia_updates.input_rules.check_timezone`).
    Used for new input: registration and the agent's configuration. Names
    stored by older versions are loaded by :func:`load_timezone`.

    Raises:
        ScheduleError: (a ``ValueError``) for an unknown or malformed name; the
            message gives an example of the expected form (``Europe/Berlin``).
    """
    try:
        return check_timezone(name)
    except ValueError as error:
        raise ScheduleError(str(error)) from None


def load_timezone(name: str) -> ZoneInfo:
    """The ZoneInfo of a stored device's time zone name.

    Lenient on purpose: a device registered before :func:`validate_timezone`
    refused non-canonical names (``localtime``, ``posix/...``) keeps being
    scheduled as before rather than failing every publish that targets it.

    Raises:
        ScheduleError: (a ``ValueError``) the name cannot be loaded at all.
    """
    if isinstance(name, str) and 0 < len(name) <= 64:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    return ZoneInfo(validate_timezone(name))  # raises, naming an example


def check_no_control_characters(
    value: str | None, field: str, *, multiline: bool = True
) -> str | None:
    """Refuse control, separator and bidirectional formatting characters in display text.

    NUL, ESC, carriage return and the like break terminal tables and can
    rewrite what an operator's terminal shows (ANSI escape sequences); bidi
    overrides make text read differently from what it is. Refused: C0
    (U+0000 to U+001F; with ``multiline`` tab and newline pass), DEL
    (U+007F), C1 (U+0080 to U+009F), U+2028/U+2029, the bidi embeddings,
    overrides, isolates and marks (U+061C, U+200E, U+200F, U+202A to U+202E,
    U+2066 to U+2069) and lone surrogates
    (:func:`javia_updates.input_rules.check_display_text`).

    Args:
        value: the text (None passes).
        field: the field's name, for the message.
        multiline: allow tab and newline (a description); False for a name.

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: naming the field and the first refused character.
    """
    if value is not None:
        check_display_text(value, field, multiline=multiline)
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
    """``POST /api/v1/devices/register`` body. Every field is optional.

    ``device_name``: one line of printable text, at most 200 characters (no
    control, separator or bidi character: :func:`check_no_control_characters`);
    ``timezone``: a canonical IANA name (:func:`validate_timezone`);
    ``metadata``: device JSON within :mod:`javia_updates.input_rules`' bounds
    (depth, keys, 64 KiB). A field breaking its rule is a 422 naming it.
    """

    device_uuid: uuid.UUID | None = None
    device_name: str | None = Field(default=None, max_length=200)
    timezone: str = Field(default="UTC", description="IANA timezone, e.g. Europe/Berlin")
    metadata: dict[str, Any] = Field(default_factory=dict)

    _tz = field_validator("timezone")(validate_timezone)

    @field_validator("device_name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        return check_no_control_characters(value, "device_name", multiline=False)

    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_json(value, "metadata")


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
    """``POST /api/v1/devices/{uuid}/heartbeat`` body.

    ``current_version`` is ``vX.Y.Z``; ``metadata`` device JSON within
    :mod:`javia_updates.input_rules`' bounds (valid Unicode without NUL,
    depth, keys, 64 KiB). A field breaking its rule is a 422 naming it, on
    the route and on its fast path alike (both validate with this model).
    """

    current_version: str | None = Field(default=None, description="vX.Y.Z the device runs")
    status: DeviceStatus = DeviceStatus.ONLINE
    metadata: dict[str, Any] = Field(default_factory=dict)

    _version = field_validator("current_version")(_check_version)

    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_json(value, "metadata")


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
    """``POST .../updates/{update_id}/status`` body sent by a device.

    ``error_message``: at most 4000 characters of valid Unicode without NUL
    (tab, newline and other characters pass: terminals escape them when shown).
    """

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

    @field_validator("error_message")
    @classmethod
    def _storable_message(cls, value: str | None) -> str | None:
        return None if value is None else check_text(value, "error_message")


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
