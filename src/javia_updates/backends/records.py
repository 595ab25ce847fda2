"""The records the store reads and writes (DESIGN.md section 5).

Frozen dataclasses, one per shape: ``New*`` is what a caller asks to store,
``*Record`` what the store returns, plus :class:`Page`, the queries and
write batches. Instants are aware UTC datetimes; sizes are bytes. The
contract that moves them is :class:`javia_updates.backends.store.Store`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, NamedTuple, TypeVar

from javia_core.models import DeviceStatus, RolloutState, UpdateStatus, UpdateType
from javia_core.rollouts.targeting import is_targeted

__all__ = [
    "AuditEntry",
    "AuditRecord",
    "DeviceQuery",
    "DeviceRecord",
    "DeviceUpdateRecord",
    "DeviceWithRows",
    "EnrollmentTokenRecord",
    "HeartbeatWrite",
    "NewDevice",
    "NewDeviceUpdate",
    "NewEnrollmentToken",
    "NewRollout",
    "NewUpdate",
    "Page",
    "PublishTarget",
    "RolloutDeviceRow",
    "RolloutMember",
    "RolloutRecord",
    "StatusGroup",
    "SupersededRow",
    "TransitionResult",
    "UpdateRecord",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list: the items and how many match in all."""

    items: list[T]
    total: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An audit log line to write with a change: who (``admin``, ``device:<uuid>``), what, details."""

    actor: str
    action: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A stored audit log line; ``at`` is UTC."""

    id: int
    at: datetime
    actor: str
    action: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewDevice:
    """A device to register. ``token_hash`` is the SHA-256 hex of its token; ``tags`` sorted."""

    device_uuid: uuid.UUID
    device_name: str | None
    timezone: str
    metadata: dict[str, Any]
    token_hash: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A stored device. ``status`` is what it last reported, not yet the derived one.

    ``tags`` are the operator's tags, sorted (``javia_core.models.check_tag``);
    heartbeats never change them.
    """

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
    token_revoked_at: datetime | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HeartbeatWrite:
    """A heartbeat's soft state for one device, to store (batched, see ``record_heartbeats``).

    Attributes:
        device_id: the device's row id.
        now: the heartbeat's instant (UTC): becomes ``last_seen`` and ``updated_at``.
        current_version: the version the device reported (or the stored one).
        status: the status it reported.
        metadata: its metadata after merging the reported keys.
    """

    device_id: int
    now: datetime
    current_version: str | None
    status: DeviceStatus
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PublishTarget:
    """What a publish needs of one targeted device (:meth:`Store.publish_targets`).

    Attributes:
        id: the device's row id.
        device_uuid: its uuid, canonical lower-case text (decides its window slot).
        timezone: its IANA timezone.
        current_version: the version it last reported, if any.
        seen: whether it was seen at or after ``seen_since`` (False if not asked).
    """

    id: int
    device_uuid: str
    timezone: str
    current_version: str | None
    seen: bool = False


@dataclass(frozen=True, slots=True)
class NewEnrollmentToken:
    """An enrollment token to store: its SHA-256 hex, an optional label, limits (UTC)."""

    token_hash: str
    label: str | None
    expires_at: datetime
    max_uses: int


@dataclass(frozen=True, slots=True)
class EnrollmentTokenRecord:
    """A stored enrollment token (never the token itself, only its hash is kept).

    Attributes:
        id: row id, how operators name it.
        label: the operator's note, e.g. ``"kitchen batch, March"``.
        created_at: when it was created, UTC.
        expires_at: after this instant (UTC) it registers nothing.
        max_uses: how many devices it may register in all.
        uses: how many it registered so far.
        revoked_at: when the operator revoked it, UTC; None if not.
    """

    id: int
    label: str | None
    created_at: datetime
    expires_at: datetime
    max_uses: int
    uses: int
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """Filters for :meth:`Store.list_devices`.

    Attributes:
        derived_status: keep devices whose *derived* status is this one: offline
            means never seen, last seen before ``offline_before``, or reporting
            offline; online/updating means seen since and reporting that.
        offline_before: the instant before which a last heartbeat means offline
            (now − 3 heartbeat intervals); required with ``derived_status``.
        online: True keeps devices whose derived status is not offline, False
            those whose derived status is offline; needs ``offline_before``.
        current_version: keep devices reporting exactly this version.
        tag: keep devices carrying this tag.
    """

    derived_status: DeviceStatus | None = None
    offline_before: datetime | None = None
    online: bool | None = None
    current_version: str | None = None
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class NewUpdate:
    """An update to publish; ``package_url`` is the blob store key of its objects.

    ``targets`` (device uuids) and ``target_tags`` (a device with any of them)
    name the devices it is meant for; both None: every device.
    """

    version: str
    version_numbers: tuple[int, int, int]
    update_type: UpdateType
    description: str
    package_url: str
    system_packages: tuple[str, ...]
    app: str
    key_id: str
    archive_size: int
    archive_sha256: str
    manifest: bytes
    signature: bytes
    targets: tuple[uuid.UUID, ...] | None
    target_tags: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class UpdateRecord:
    """A published update (without the manifest and signature bytes)."""

    id: int
    version: str
    created_at: datetime
    update_type: UpdateType
    description: str
    package_url: str
    requires_system_packages: bool
    system_packages: tuple[str, ...]
    app: str
    key_id: str
    archive_size: int
    archive_sha256: str
    targets: tuple[uuid.UUID, ...] | None
    target_tags: tuple[str, ...] | None = None

    def targets_device(self, device_uuid: uuid.UUID, tags: tuple[str, ...] = ()) -> bool:
        """Whether this update is meant for the device (:func:`javia_core.rollouts.targeting.is_targeted`)."""
        return is_targeted(self.targets, self.target_tags, device_uuid, tags)


@dataclass(frozen=True, slots=True)
class NewDeviceUpdate:
    """A ``device_updates`` row to create (status ``pending``); instants UTC."""

    device_id: int
    install_type: UpdateType
    scheduled_for: datetime
    window_end: datetime | None


@dataclass(frozen=True, slots=True)
class SupersededRow:
    """A waiting row (pending or staged) a publish supersedes in its own transaction (DESIGN.md section 4).

    Attributes:
        device_update_id: the row's id.
        reason: its ``error_message``, e.g. ``superseded by v7.0.0``.
    """

    device_update_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class DeviceUpdateRecord:
    """One device's progress on one update, with the names a reader needs."""

    id: int
    device_id: int
    device_uuid: uuid.UUID
    device_name: str | None
    update_id: int
    version: str
    update_type: UpdateType
    install_type: UpdateType
    archive_size: int
    status: UpdateStatus
    scheduled_for: datetime
    window_end: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    #: When a post-install regression was recorded on this completed row (revision 0003).
    regressed_at: datetime | None = None
    #: Why (``application exited with status 1``), recorded with ``regressed_at``.
    regression_reason: str | None = None
    #: Why it failed, as the device reported it (``FailureDetails`` as JSON, revision
    #: 0006); read only by the operator's queries (``with_failure``), else None.
    failure: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class DeviceWithRows:
    """A device and all its update rows, read in one transaction (the heartbeat's first read).

    ``rows``: highest version first, as :meth:`Store.list_device_updates` with
    ``device_id`` alone gives them. ``rows_mark``: ``(rows, revisions)`` of
    those very rows, as :meth:`Store.confirm_device` answers it.
    """

    device: DeviceRecord
    rows: list[DeviceUpdateRecord]
    rows_mark: tuple[int, int]


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """One update's stored rollout (table ``rollouts``, docs/rollouts.md).

    Attributes:
        update_id: the update it rolls out.
        state: where it stands.
        phases: cumulative percentages, e.g. ``(1, 10, 50, 100)``.
        phase_index: the highest open phase (0-based).
        phase_opened_at: when that phase opened (UTC); None while awaiting approval.
        phase_soak_seconds, halt_failure_rate, halt_min_devices, require_approval,
            phase_approval: the policy chosen at publish (``require_approval``
            also when the server's ``JAVIA_APPROVAL_REQUIRED`` asked for it).
        awaiting_phase_approval: the open phase passed its gate and waits for ``approve``.
        halt_reason: why it halted, if it did.
        revision: bumped on every change; writes are conditional on it.
    """

    update_id: int
    state: RolloutState
    phases: tuple[int, ...]
    phase_index: int
    phase_opened_at: datetime | None
    phase_soak_seconds: int
    halt_failure_rate: float
    halt_min_devices: int
    require_approval: bool
    phase_approval: bool
    awaiting_phase_approval: bool
    halt_reason: str | None
    revision: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class NewRollout:
    """The rollout a publish creates (in phase 0), from its policy (docs/rollouts.md)."""

    state: RolloutState
    phases: tuple[int, ...]
    phase_soak_seconds: int
    halt_failure_rate: float
    halt_min_devices: int
    require_approval: bool
    phase_approval: bool


@dataclass(frozen=True, slots=True)
class RolloutDeviceRow:
    """One targeted device's row of a rollout, with what its evaluation needs."""

    device_update_id: int
    device_id: int
    device_uuid: uuid.UUID
    status: UpdateStatus
    window_end: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    regressed_at: datetime | None
    last_seen: datetime | None
    tags: tuple[str, ...] = ()


class RolloutMember(NamedTuple):
    """One targeted device's row of a rollout, as the phase counts and the phase gate read it.

    Lean on purpose (a tuple, the uuid as stored text, no last contact, no tag
    list): it is read for every row of a rollout on each evaluation and view.

    Attributes:
        device_uuid: the device's uuid as stored (canonical text).
        canary: the device carries the ``canary`` tag (phase 0).
        status: the row's status.
        regressed: a post-install regression is recorded on the row.
        completed_at: when the row finished (UTC), None before.
        window_end: the end of the row's maintenance window (UTC), None if it has none.
    """

    device_uuid: str
    canary: bool
    status: UpdateStatus
    regressed: bool
    completed_at: datetime | None
    window_end: datetime | None


@dataclass(frozen=True, slots=True)
class StatusGroup:
    """Rows of a rollout counted by status, recorded regression and silence (one aggregate row).

    ``silent``: the device's last heartbeat is older than the cut-off asked for,
    or it has none.
    """

    status: UpdateStatus
    regressed: bool
    silent: bool
    count: int


@dataclass(frozen=True, slots=True)
class TransitionResult:
    """The row after a transition attempt; ``changed`` False: it was already there or beyond."""

    record: DeviceUpdateRecord
    changed: bool
