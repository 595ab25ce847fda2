"""Wire models shared by the server, the operator CLI and the agent.

These pydantic models are the JSON bodies of the HTTP API in DESIGN.md
section 6. Times are aware UTC datetimes (ISO 8601 on the wire); sizes are in
bytes; intervals in seconds. Importable on a device (pydantic only).

Kept as one module on purpose, though it passes 600 lines: it is the whole
wire contract (the enums, the bounds and validators the models share, every
request and answer body), read side by side with DESIGN.md section 6, and the
models reuse each other's field types.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from javia_core.errors import ScheduleError
from javia_core.failures import FailureClass, FailureDetails
from javia_core.input_rules import (
    TIMEZONE_EXAMPLE,
    check_display_text,
    check_json,
    check_text,
    check_timezone,
)
from javia_core.versioning import Version

__all__ = [
    "DEVICE_REPORTABLE_STATUSES",
    "FINAL_STATUSES",
    "DeviceOut",
    "DeviceRegisterRequest",
    "DeviceRegistered",
    "DeviceStatus",
    "DeviceUpdateOut",
    "EnrollmentTokenCreated",
    "EnrollmentTokenOut",
    "ErrorBody",
    "FailureClass",
    "FailureDetails",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "HeldUpdate",
    "ApiPath",
    "InstallDirective",
    "PlanEntry",
    "StatusReport",
    "StatusReportResult",
    "UpdateCheckResponse",
    "UpdateOut",
    "UpdateStatus",
    "UpdateType",
    "UrgencyEvidence",
    "WireVersion",
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
    (DESIGN.md section 5). Two waiting statuses a device reports on the way
    (revision 0005): ``staged`` (downloaded, verified and prepared ahead of
    the window; only stop, switch, start and health remain) and ``retrying``
    (a transient fault, retried with backoff until the deadline; the reason in
    ``error_message``). A staged or retrying row may still be superseded or
    cancelled: nothing of it was installed.
    """

    PENDING = "pending"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    COMPLETED = "completed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"
    STAGED = "staged"
    RETRYING = "retrying"


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
        UpdateStatus.STAGED,
        UpdateStatus.RETRYING,
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
    ``right/`` trees and any other file name (:func:`javia_core.input_rules.check_timezone`).
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
    (:func:`javia_core.input_rules.check_display_text`).

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


# -- server answers: every field is checked where the agent reads it -----------------
#
# The agent parses every answer of the server with the models below, and only
# with them: they are the one boundary where a server field becomes a typed
# value (docs/agent.md, "What the agent accepts from the server"). A field out
# of its range is a ValidationError, which the agent's client turns into a
# ServerError naming the field; nothing of such an answer is used.

#: Largest id the server hands out: a signed 64-bit database integer.
MAX_ID = 2**63 - 1
#: Largest payload size a directive may announce, in bytes (1 TiB). The signed
#: manifest's ``archive.size`` is what the agent downloads and checks.
MAX_DIRECTIVE_SIZE = 2**40
#: Longest idle time an urgent directive may require, in seconds (7 days, the
#: server's own limit for ``urgent_idle_seconds``).
MAX_IDLE_SECONDS = 7 * 86_400
#: Longest heartbeat interval a server may ask for, in seconds (1 day, the
#: server's own limit for ``heartbeat_interval_seconds``).
MAX_HEARTBEAT_INTERVAL_SECONDS = 86_400.0
#: Longest path a directive URL may have, in characters.
MAX_API_PATH_CHARS = 1024
#: Server times must lie in [EARLIEST_TIME, LATEST_TIME): far enough from
#: datetime's limits that adding a day or a heartbeat interval never overflows.
EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9000, 1, 1, tzinfo=UTC)

_API_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")


def _version_from_wire(value: object) -> Version:
    """A :class:`Version` from its wire form ``vX.Y.Z`` (DESIGN.md section 2)."""
    if isinstance(value, Version):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a version string such as v1.2.3")
    return Version.parse(value)  # VersionError is a ValueError: the message shows the form


#: A version: a :class:`Version` in Python, the string ``vX.Y.Z`` on the wire.
WireVersion = Annotated[
    Version,
    PlainValidator(_version_from_wire),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$",
            "examples": ["v1.2.3"],
        }
    ),
]


def check_api_path(value: object) -> str:
    """Return ``value`` if it is a safe path on the configured server.

    A directive's URLs are paths relative to the server's base URL
    (DESIGN.md section 6): ``/`` followed by ASCII letters, digits and
    ``. _ ~ - /``, at most :data:`MAX_API_PATH_CHARS` characters. Refused:
    any scheme or host (``https://other.example``, ``//other.example/x``,
    which would send the device token elsewhere), ``.`` and ``..`` segments,
    empty segments, percent-escapes, queries, fragments, backslashes, spaces
    and any other character.

    Raises:
        ValueError: naming what was wrong and the expected form.
    """
    example = "a path on the configured server such as /api/v1/updates/7/download"
    if not isinstance(value, str):
        raise ValueError(f"expected {example}")
    if len(value) > MAX_API_PATH_CHARS:
        raise ValueError(f"path longer than {MAX_API_PATH_CHARS} characters: expected {example}")
    if _API_PATH.fullmatch(value) is None:
        raise ValueError(
            f"{value[:80]!r} is not a plain path (scheme, host, query, escape or odd "
            f"character): expected {example}"
        )
    segments = value[1:].split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise ValueError(f"{value[:80]!r} has an empty, '.' or '..' segment: expected {example}")
    return value


def _check_server_time(value: datetime) -> datetime:
    if not EARLIEST_TIME <= value < LATEST_TIME:
        raise ValueError(
            f"time {value.isoformat()} is out of range: expected an instant between "
            f"{EARLIEST_TIME:%Y-%m-%d} and {LATEST_TIME:%Y-%m-%d}"
        )
    return value


#: A path on the configured server (see :func:`check_api_path`).
ApiPath = Annotated[str, AfterValidator(check_api_path)]
#: An aware instant (an offset is required) in [EARLIEST_TIME, LATEST_TIME).
ServerTime = Annotated[AwareDatetime, AfterValidator(_check_server_time)]
#: A database id: a whole number from 1 to :data:`MAX_ID`, a JSON integer on
#: the wire (strict: ``true`` or ``"7"`` is refused, not read as 1 or 7).
ServerId = Annotated[int, Field(ge=1, le=MAX_ID, strict=True)]


class ErrorBody(BaseModel):
    """Body of every 4xx/5xx response: ``{"detail": "what was wrong"}``."""

    detail: Any


class DeviceRegisterRequest(_Model):
    """``POST /api/v1/devices/register`` body. Every field is optional.

    ``device_name``: one line of printable text, at most 200 characters (no
    control, separator or bidi character: :func:`check_no_control_characters`);
    ``timezone``: a canonical IANA name (:func:`validate_timezone`);
    ``metadata``: device JSON within :mod:`javia_core.input_rules`' bounds
    (depth, keys, 64 KiB); ``tags``: the operator's tags (:func:`check_tags`,
    at most :data:`MAX_TAGS`). A field breaking its rule is a 422 naming it.
    """

    device_uuid: uuid.UUID | None = None
    device_name: str | None = Field(default=None, max_length=200)
    timezone: str = Field(default="UTC", description="IANA timezone, e.g. Europe/Berlin")
    metadata: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list, description="operator tags, e.g. kitchen")

    _tz = field_validator("timezone")(validate_timezone)

    @field_validator("device_name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        return check_no_control_characters(value, "device_name", multiline=False)

    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_json(value, "metadata")

    @field_validator("tags")
    @classmethod
    def _valid_tags(cls, value: list[str]) -> list[str]:
        return check_tags(value)


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
    tags: list[str] = Field(default_factory=list, description="operator tags, sorted")


#: A device tag (``kitchen``, ``canary``, ``beta-2``): lower case, digits, ``.``, ``_``, ``-``.
TAG_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
_MAX_TAG_LENGTH = 32
#: At most this many tags per device, and per publish.
MAX_TAGS = 32


def check_tag(value: object) -> str:
    """``value`` as a tag, or ValueError naming the expected form (docs/rollouts.md, tags).

    Raises:
        ValueError: not a string of 1-32 characters ``[a-z0-9][a-z0-9._-]*``.
    """
    text = value if isinstance(value, str) else repr(value)
    start = text[:_MAX_TAG_LENGTH]
    if isinstance(value, str) and len(text) > _MAX_TAG_LENGTH and TAG_PATTERN.fullmatch(start):
        raise ValueError(
            f"tag {start!r}... is too long ({len(text)} characters, at most {_MAX_TAG_LENGTH})"
        )
    if not isinstance(value, str) or TAG_PATTERN.fullmatch(value) is None:
        shown = repr(text if len(text) <= 40 else text[:37] + "...")
        raise ValueError(
            f"tag {shown} is not valid: 1-32 characters, lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter or digit (e.g. kitchen, beta-2)"
        )
    return value


def check_tags(values: object) -> list[str]:
    """A list of tags, de-duplicated and sorted; ValueError naming the first bad one or too many."""
    if not isinstance(values, list | tuple):
        raise ValueError("tags must be a list of strings")
    tags = sorted({check_tag(value) for value in values})
    if len(tags) > MAX_TAGS:
        raise ValueError(f"{len(tags)} tags: at most {MAX_TAGS} are allowed")
    return tags


class ApplicationHealth(_Model):
    """How the device application has fared since the running release became current.

    Sent by the agent in every heartbeat (``HeartbeatRequest.application``);
    the server uses it to find post-install regressions during a rollout's
    soak (docs/rollouts.md, halt).

    Attributes:
        restarts: times the application was restarted (crashed, was killed or
            exited and was started again) since the release became current; >= 0.
        last_exit_status: the application's last exit: its exit code, or minus
            the signal number that ended it; None if it has not exited.
        running: whether it runs now.
    """

    restarts: int = Field(default=0, ge=0, le=MAX_ID)
    last_exit_status: int | None = Field(default=None, ge=-128, le=255)
    running: bool = True


class HeartbeatRequest(_Model):
    """``POST /api/v1/devices/{uuid}/heartbeat`` body.

    ``current_version`` is ``vX.Y.Z``; ``metadata`` device JSON within
    :mod:`javia_core.input_rules`' bounds (valid Unicode without NUL,
    depth, keys, 64 KiB). A field breaking its rule is a 422 naming it, on
    the route and on its fast path alike (both validate with this model).
    """

    current_version: str | None = Field(default=None, description="vX.Y.Z the device runs")
    status: DeviceStatus = DeviceStatus.ONLINE
    metadata: dict[str, Any] = Field(default_factory=dict)
    application: ApplicationHealth | None = Field(
        default=None, description="the application's restarts and last exit (post-install health)"
    )

    _version = field_validator("current_version")(_check_version)

    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_json(value, "metadata")


class UrgencyEvidence(BaseModel):
    """The superseded update whose signed type makes an offer more urgent than its own.

    Supersession (DESIGN.md section 4): a device installs the highest pending
    version with the most urgent timing among the rows it supersedes. When a
    directive's ``update_type`` is more urgent than the signed type of the
    package it offers, the server names here the superseded update that was
    signed that urgent, so the device can verify the claim with its keyring
    (see :func:`javia_core.scheduling.check_urgency_evidence`).

    Validated like the directive itself: ``update_id`` 1 to :data:`MAX_ID`,
    ``version`` a :class:`Version` (``vX.Y.Z`` on the wire), URLs plain
    paths on the configured server (:func:`check_api_path`).
    """

    update_id: ServerId
    version: WireVersion
    manifest_url: ApiPath
    signature_url: ApiPath


class InstallDirective(BaseModel):
    """What the server tells a device about its pending update.

    ``install_at`` is the UTC instant from which the device may install
    (``scheduled_for``); for an urgent update the device may start earlier once
    the application has been idle for ``idle_seconds_required`` seconds.
    ``window_end`` closes the maintenance window for scheduled updates (None:
    no end). URLs are paths relative to the server's base URL.

    Every field is checked when an answer is parsed (the agent's one
    boundary for server data), numbers strictly (a JSON integer, never
    ``true`` or a string): ``update_id`` a whole number from 1 to
    :data:`MAX_ID`; ``version`` a :class:`Version` (``vX.Y.Z`` on the wire);
    times aware and in range; ``idle_seconds_required`` 0 to
    :data:`MAX_IDLE_SECONDS`; ``size`` 0 to :data:`MAX_DIRECTIVE_SIZE` bytes;
    URLs plain paths on the configured server (:func:`check_api_path`).
    ``urgency_from`` is present only when ``update_type`` is more urgent than
    the offered package's signed type because a superseded update was
    (:class:`UrgencyEvidence`); the device follows such a timing only if that
    update's signed manifest proves it.
    Unknown extra fields are ignored (a newer server may add some).
    """

    update_id: ServerId
    version: WireVersion
    update_type: UpdateType
    status: UpdateStatus
    install_at: ServerTime
    window_end: ServerTime | None = None
    idle_seconds_required: int | None = Field(default=None, ge=0, le=MAX_IDLE_SECONDS, strict=True)
    size: int = Field(
        ge=0, le=MAX_DIRECTIVE_SIZE, strict=True, description="payload archive size in bytes"
    )
    manifest_url: ApiPath
    signature_url: ApiPath
    download_url: ApiPath
    urgency_from: UrgencyEvidence | None = None


class HeldUpdate(BaseModel):
    """An update the device took whose rollout is paused (docs/rollouts.md, "Device statuses").

    Sent instead of a directive while the device's row is ``staged`` or
    ``retrying`` and its rollout is paused: the device keeps what it prepared
    (the staged release, the download) and installs nothing of it until the
    rollout resumes and the update is offered again. Without it, no directive
    means the update was withdrawn and the device deletes its work.
    Validated like a directive: ``update_id`` 1 to :data:`MAX_ID`,
    ``version`` a :class:`Version` (``vX.Y.Z`` on the wire).
    """

    update_id: ServerId
    version: WireVersion


class HeartbeatResponse(BaseModel):
    """Answer to a heartbeat: the server's clock, the poll interval, any update.

    ``heartbeat_interval_seconds`` is a finite number of seconds above 0 and
    at most :data:`MAX_HEARTBEAT_INTERVAL_SECONDS`; ``server_time`` aware and
    in range. ``held``: an update the device took whose rollout is paused
    (:class:`HeldUpdate`), only when ``update`` is None; an agent that does
    not know the field drops the held work as a withdrawn update.
    """

    server_time: ServerTime
    heartbeat_interval_seconds: float = Field(
        gt=0, le=MAX_HEARTBEAT_INTERVAL_SECONDS, allow_inf_nan=False, strict=True
    )
    update: InstallDirective | None = None
    held: HeldUpdate | None = None


class UpdateCheckResponse(BaseModel):
    """``GET /api/v1/devices/{uuid}/updates/check``: the pending update, if any."""

    device_uuid: uuid.UUID
    server_time: ServerTime
    current_version: WireVersion | None
    update_available: bool = Field(strict=True)
    update: InstallDirective | None = None


#: Longest ``error_message`` of a status report, in characters.
MAX_ERROR_MESSAGE_CHARS = 4000
_UNSTORABLE_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


class StatusReport(_Model):
    """``POST .../updates/{update_id}/status`` body sent by a device.

    ``error_message``: at most 4000 characters of valid Unicode without NUL
    (tab, newline and other characters pass: terminals escape them when shown).
    ``failure``: why the update failed, with ``failed`` or ``rolled_back``
    (:class:`~javia_core.failures.FailureDetails`: class, step, exit code or
    signal, output tails, reason; bounded, secrets redacted on the device).
    """

    status: UpdateStatus
    error_message: str | None = Field(default=None, max_length=MAX_ERROR_MESSAGE_CHARS)
    reported_at: datetime | None = Field(default=None, description="device clock, informative")
    failure: FailureDetails | None = None

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

    @field_validator("failure")
    @classmethod
    def _failure_with_a_failure(
        cls, value: FailureDetails | None, info: ValidationInfo
    ) -> FailureDetails | None:
        status = info.data.get("status")
        if value is not None and status not in (UpdateStatus.FAILED, UpdateStatus.ROLLED_BACK):
            raise ValueError("a failure goes only with status failed or rolled_back")
        return value

    @classmethod
    def from_device(
        cls,
        status: UpdateStatus,
        message: str | None,
        reported_at: datetime | None = None,
        failure: FailureDetails | None = None,
    ) -> StatusReport:
        """The report a device sends, with ``message`` made storable instead of refused.

        A failure reason may quote anything (an application's output, a file
        name from a package): NUL and lone surrogates become U+FFFD, and a
        message over :data:`MAX_ERROR_MESSAGE_CHARS` keeps its first 1,000 and
        its last characters around a ``[...]`` marker (the end of an output is
        usually where the error is). The server refuses such a report with
        422 (:func:`javia_core.input_rules.check_text`), which would lose it.
        """
        if message is not None:
            message = _UNSTORABLE_CHARACTERS.sub("\ufffd", message)
            if len(message) > MAX_ERROR_MESSAGE_CHARS:
                marker = "\n[...]\n"
                tail = MAX_ERROR_MESSAGE_CHARS - 1000 - len(marker)
                message = message[:1000] + marker + message[-tail:]
        return cls(status=status, error_message=message, reported_at=reported_at, failure=failure)


class StatusReportResult(BaseModel):
    """Answer to a status report. ``changed`` is False for a repeated report."""

    update_id: ServerId
    device_uuid: uuid.UUID
    status: UpdateStatus
    changed: bool = Field(strict=True)


class RolloutState(StrEnum):
    """Where a rollout stands (DESIGN.md section 9; the rules in :mod:`javia_core.rollouts`)."""

    AWAITING_APPROVAL = "awaiting_approval"  # offers nothing until approved
    ACTIVE = "active"  # offers to the devices of its open phases
    PAUSED = "paused"  # offers nothing; installs in flight finish
    HALTED = "halted"  # the failure threshold was crossed; offers nothing
    CANCELLED = "cancelled"  # not-started rows cancelled; never offers again
    COMPLETED = "completed"  # every phase open and every targeted device finished


class Cohort(BaseModel):
    """Health of a group of devices (the A/B view of ``javia updates show``).

    Attributes:
        devices: devices in the group.
        finished: of those, how many finished installing (completed, failed, rolled back).
        failed: installs that failed.
        rolled_back: installs that rolled back.
        regressions: devices that completed, then went silent or crashed within the soak.
        silent: devices not heard from for more than three heartbeat intervals.
        failure_rate: (failed + rolled_back + regressions) / finished, in percent; 0 if none finished.
    """

    devices: int = 0
    finished: int = 0
    failed: int = 0
    rolled_back: int = 0
    regressions: int = 0
    silent: int = 0
    failure_rate: float = 0.0


class RolloutHealth(BaseModel):
    """The exposed cohort (devices that started this update) against the devices still on
    the previous version."""

    exposed: Cohort = Field(default_factory=Cohort)
    previous: Cohort = Field(default_factory=Cohort)


class RolloutOut(BaseModel):
    """One update's rollout as operators see it (docs/rollouts.md).

    Attributes:
        state: where it stands.
        phase: index of the open phase (phases ``0..phase`` are open).
        phases: cumulative percentages, e.g. ``[1, 10, 50, 100]``.
        phase_opened_at: when the open phase opened (UTC).
        phase_soak_seconds: how long a phase must stay healthy before the next opens.
        halt_failure_rate: percent of finished devices failing that halts the rollout.
        halt_min_devices: finished devices needed before the halt rule applies.
        require_approval: the rollout waited (or waits) for ``approve`` to start.
        phase_approval: each next phase waits for ``approve`` instead of the soak alone.
        awaiting_phase_approval: the open phase passed its gate and waits for ``approve``.
        halt_reason: why it halted, if it did.
        target_tags: tags the publish targeted (a device with any of them), or None.
        phase_counts: per phase, devices per status (``{"completed": 3, ...}``).
        phase_regressions: per phase, completed devices with a post-install
            regression recorded (counted under ``completed`` in ``phase_counts``;
            failures for the halt rule).
        health: the exposed cohort against the devices on the previous version.
    """

    state: RolloutState
    phase: int
    phases: list[int]
    phase_opened_at: datetime | None = None
    phase_soak_seconds: int
    halt_failure_rate: float
    halt_min_devices: int
    require_approval: bool = False
    phase_approval: bool = False
    awaiting_phase_approval: bool = False
    halt_reason: str | None = None
    target_tags: list[str] | None = None
    phase_counts: list[dict[str, int]] = Field(default_factory=list)
    phase_regressions: list[int] = Field(default_factory=list)
    health: RolloutHealth = Field(default_factory=RolloutHealth)


class RolloutCommand(_Model):
    """Body of ``POST /api/v1/updates/{reference}/{pause,resume,cancel,approve,advance}``.

    ``reason``: the operator's words for the audit log (one line, at most 500 characters).
    """

    reason: str | None = Field(default=None, max_length=500)

    @field_validator("reason")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        return check_no_control_characters(value, "reason", multiline=False)


class DeviceTagsChange(_Model):
    """Body of ``POST /api/v1/devices/{uuid}/tags``: tags to add and to remove."""

    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)

    @field_validator("add", "remove")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        return check_tags(value)


class RevertSource(BaseModel):
    """``GET /api/v1/updates/{reference}/revert-source``: what a revert would roll forward to.

    Attributes:
        bad_version: the version being reverted.
        healthy_version: the highest earlier version that completed on the
            affected devices and was not halted or cancelled.
        healthy_update_id: its update id (its package is downloaded and re-signed).
        devices: the devices running the bad version.
    """

    bad_version: str
    healthy_version: str
    healthy_update_id: int
    devices: list[uuid.UUID]


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
    rollout: RolloutOut | None = None


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
    regressed_at: datetime | None = Field(
        default=None, description="a completed row: when a post-install regression was recorded"
    )
    regression_reason: str | None = Field(default=None, description="why it regressed")
    failure: FailureDetails | None = Field(
        default=None, description="failed or rolled back: why, as the device reported it"
    )


class PlanEntry(BaseModel):
    """Whether and when one device installs an update (dry run or published).

    Attributes:
        device_uuid: the device.
        device_name: its display name, if any.
        timezone: its IANA timezone.
        gets_row: publish creates (or created) its ``device_updates`` row.
        status: the row's status for a published update, else None.
        install_at_utc: when it installs (urgent: the deadline), UTC; None if not
            known yet.
        install_at_local: the same instant in the device's timezone.
        reason: one line saying why.
    """

    device_uuid: uuid.UUID
    device_name: str | None
    timezone: str
    gets_row: bool
    status: UpdateStatus | None = None
    install_at_utc: datetime | None
    install_at_local: datetime | None
    reason: str
    phase: int | None = Field(default=None, description="the device's rollout phase index")


class EnrollmentTokenOut(BaseModel):
    """An enrollment token as operators see it (never the token itself).

    Attributes:
        id: how operators name it (``javia devices enrollment-token revoke ID``).
        label: the operator's note.
        created_at: UTC.
        expires_at: UTC; from then on it registers nothing.
        max_uses: how many devices it may register.
        uses: how many it registered so far.
        revoked_at: UTC, if revoked.
        usable: not revoked, not expired and not used up at the time of asking.
    """

    id: int
    label: str | None
    created_at: datetime
    expires_at: datetime
    max_uses: int
    uses: int
    revoked_at: datetime | None
    usable: bool


class EnrollmentTokenCreated(EnrollmentTokenOut):
    """A new enrollment token; ``token`` is shown this once only (the server keeps its hash)."""

    token: str = Field(description="shown once; give it to the devices to register with")
