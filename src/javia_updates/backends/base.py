"""Storage behind one interface (DESIGN.md section 5).

A :class:`Backend` is a metadata :class:`Store` (devices, updates,
device_updates, audit log) plus a :class:`BlobStore` (package objects). The
service layer talks only to these two interfaces; implementations register by
``NAME``::

    @register_backend
    class MyBackend(Backend):
        NAME = "mine"

        @classmethod
        def from_settings(cls, settings):
            return cls(MyStore(settings.database_url), MyBlobStore(...))

Built-in backends register on import of :mod:`javia_updates.backends`; others
can do the same from an entry point in the ``javia.backends`` group.

Update progress moves only forward (:data:`javia_core.status_rules.ALLOWED_PREVIOUS`,
the one table of legal transitions). Every store must apply a transition as one conditional
write (``UPDATE ... WHERE status IN (allowed previous)``), so that concurrent
server replicas can never move a row backwards.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from javia_core.errors import BackendError, JaviaError, NotFoundError
from javia_core.models import DeviceStatus, UpdateStatus, UpdateType

if TYPE_CHECKING:
    from javia_updates.settings import ServerSettings

__all__ = [
    "AuditEntry",
    "AuditRecord",
    "Backend",
    "BlobStore",
    "DeviceQuery",
    "DeviceRecord",
    "DeviceUpdateRecord",
    "EnrollmentError",
    "EnrollmentTokenRecord",
    "HeartbeatWrite",
    "NewDevice",
    "NewDeviceUpdate",
    "NewEnrollmentToken",
    "NewUpdate",
    "Page",
    "PublishTarget",
    "Store",
    "TransitionResult",
    "UpdateRecord",
    "backend_names",
    "create_backend",
    "get_backend_class",
    "register_backend",
]

T = TypeVar("T")


class EnrollmentError(JaviaError):
    """An enrollment token is unknown, revoked, expired or used up (HTTP 401).

    Not a :class:`BackendError`: the store worked, the credential did not.
    """


# --------------------------------------------------------------------------- records


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
    """A device to register. ``token_hash`` is the SHA-256 hex of its token."""

    device_uuid: uuid.UUID
    device_name: str | None
    timezone: str
    metadata: dict[str, Any]
    token_hash: str


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A stored device. ``status`` is what it last reported, not yet the derived one."""

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
    """

    derived_status: DeviceStatus | None = None
    offline_before: datetime | None = None
    online: bool | None = None
    current_version: str | None = None


@dataclass(frozen=True, slots=True)
class NewUpdate:
    """An update to publish; ``package_url`` is the blob store key of its objects."""

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

    def targets_device(self, device_uuid: uuid.UUID) -> bool:
        """Whether this update is meant for ``device_uuid`` (None targets every device)."""
        return self.targets is None or device_uuid in self.targets


@dataclass(frozen=True, slots=True)
class NewDeviceUpdate:
    """A ``device_updates`` row to create (status ``pending``); instants UTC."""

    device_id: int
    install_type: UpdateType
    scheduled_for: datetime
    window_end: datetime | None


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


@dataclass(frozen=True, slots=True)
class TransitionResult:
    """The row after a transition attempt; ``changed`` False: it was already there or beyond."""

    record: DeviceUpdateRecord
    changed: bool


# --------------------------------------------------------------------------- interfaces


class Store(ABC):
    """Metadata storage: devices, updates, device_updates and the audit log.

    Every method is one transaction. Instants are aware UTC datetimes.
    Methods raise :class:`~javia_core.errors.NotFoundError` for a missing
    row, :class:`~javia_core.errors.ConflictError` for a write that
    conflicts with what is stored, and :class:`BackendError` when the database
    itself fails.

    Attributes:
        local_reads: whether reads are local and fast enough (SQLite in this
            process, a fraction of a millisecond) to run on the server's event
            loop; False sends them to a worker thread.
        exclusive: whether this server process is the only writer of the
            database (SQLite: one server per file, docs/backends.md), so that
            its caches see every change as it makes it. False (PostgreSQL,
            shared by replicas): a device found in the device cache is checked
            against the database at every request (:meth:`token_is_current`),
            so a token revoked or rotated on any replica is refused on every
            replica at once.
    """

    local_reads: bool = False
    exclusive: bool = False

    # devices ---------------------------------------------------------------
    @abstractmethod
    def create_device(self, device: NewDevice, *, now: datetime, audit: AuditEntry) -> DeviceRecord:
        """Register ``device`` and write ``audit``, atomically.

        Raises:
            ConflictError: the uuid (or, astronomically unlikely, token hash) exists.
        """

    @abstractmethod
    def get_device(self, device_uuid: uuid.UUID) -> DeviceRecord:
        """The device with ``device_uuid``.

        Raises:
            NotFoundError: no such device.
        """

    @abstractmethod
    def find_device_by_token_hash(self, token_hash: str) -> DeviceRecord | None:
        """The device whose token hashes to ``token_hash`` (SHA-256 hex), if any."""

    def token_is_current(self, device_id: int, token_hash: str) -> bool:
        """Whether device ``device_id`` still holds the token hashing to ``token_hash``.

        False once the token was revoked or rotated, by any server. Stores
        override this with a cheaper query than the default (a full lookup).
        """
        device = self.find_device_by_token_hash(token_hash)
        return device is not None and device.id == device_id

    @abstractmethod
    def replace_device_token(
        self,
        device_uuid: uuid.UUID,
        *,
        token_hash: str,
        revoked: bool,
        now: datetime,
        audit: AuditEntry,
    ) -> DeviceRecord:
        """Replace the device's token hash and write ``audit``, atomically.

        The old token stops working at once. ``revoked`` True records ``now``
        as ``token_revoked_at`` (the caller passes the hash of a token nobody
        holds); False clears it (a new token was issued).

        Raises:
            NotFoundError: no such device.
        """

    @abstractmethod
    def create_device_with_enrollment(
        self, token_hash: str, device: NewDevice, *, now: datetime, audit: AuditEntry
    ) -> DeviceRecord:
        """Use the enrollment token once and register ``device``, in ONE transaction.

        The use is counted with one conditional write (``uses < max_uses``, not
        revoked, not expired at ``now``), so concurrent registrations on any
        number of server replicas never exceed ``max_uses``. A registration that
        fails (the uuid exists) does not use the token up.

        Raises:
            EnrollmentError: the token is unknown, revoked, expired or used up;
                the message says which.
            ConflictError: the device uuid is already registered.
        """

    @abstractmethod
    def create_enrollment_token(
        self, token: NewEnrollmentToken, *, now: datetime, audit: AuditEntry
    ) -> EnrollmentTokenRecord:
        """Store a new enrollment token (its hash) with ``audit``, atomically."""

    @abstractmethod
    def list_enrollment_tokens(self, *, limit: int, offset: int) -> Page[EnrollmentTokenRecord]:
        """Enrollment tokens, newest first."""

    @abstractmethod
    def revoke_enrollment_token(
        self, token_id: int, *, now: datetime, audit: AuditEntry
    ) -> EnrollmentTokenRecord:
        """Revoke an enrollment token (idempotent: the first revocation time is kept).

        Raises:
            NotFoundError: no such token.
        """

    @abstractmethod
    def list_devices(self, query: DeviceQuery, *, limit: int, offset: int) -> Page[DeviceRecord]:
        """Devices matching ``query``, oldest registration first."""

    @abstractmethod
    def devices_for_targets(self, targets: Sequence[uuid.UUID] | None) -> list[DeviceRecord]:
        """Every device named in ``targets`` (None: every registered device).

        Raises:
            NotFoundError: a uuid in ``targets`` is not registered; the message lists them.
        """

    def publish_targets(
        self, targets: Sequence[uuid.UUID] | None, *, seen_since: datetime | None = None
    ) -> list[PublishTarget]:
        """:meth:`devices_for_targets`, reduced to what a publish needs, in registration order.

        Args:
            targets: device uuids, or None for every registered device.
            seen_since: mark devices whose ``last_seen`` is at or after this
                instant (``seen``); an instant update reaches only those.

        Raises:
            NotFoundError: a uuid in ``targets`` is not registered; the message lists them.
        """
        return [
            PublishTarget(
                device.id,
                str(device.device_uuid),
                device.timezone,
                device.current_version,
                seen_since is not None
                and device.last_seen is not None
                and device.last_seen >= seen_since,
            )
            for device in self.devices_for_targets(targets)
        ]

    @abstractmethod
    def record_heartbeat(
        self,
        device_id: int,
        *,
        now: datetime,
        current_version: str | None,
        status: DeviceStatus,
        metadata: dict[str, Any],
    ) -> DeviceRecord:
        """Store a heartbeat: last_seen = ``now`` and what the device reported."""

    def record_heartbeats(self, writes: Sequence[HeartbeatWrite]) -> None:
        """Store many heartbeats' soft state in one transaction (newest per device).

        A write whose ``now`` is older than the device's ``updated_at`` keeps the
        stored ``current_version`` (a completed update raised it meanwhile);
        devices deleted meanwhile are skipped. This default stores them one by
        one; stores override it with one batched statement.

        Raises:
            BackendError: the write failed (nothing of the batch is stored).
        """
        for write in writes:
            try:
                self.record_heartbeat(
                    write.device_id,
                    now=write.now,
                    current_version=write.current_version,
                    status=write.status,
                    metadata=write.metadata,
                )
            except NotFoundError:
                continue

    # updates ---------------------------------------------------------------
    @abstractmethod
    def create_update(
        self,
        update: NewUpdate,
        rows: Sequence[NewDeviceUpdate],
        *,
        now: datetime,
        audit: AuditEntry,
    ) -> UpdateRecord:
        """Publish ``update`` with its pending device rows and ``audit``, in ONE transaction.

        Raises:
            ConflictError: the version is already published; the message names
                the existing update's id.
        """

    @abstractmethod
    def get_update(self, update_id: int) -> UpdateRecord:
        """The update with ``update_id``.

        Raises:
            NotFoundError: no such update.
        """

    @abstractmethod
    def get_update_by_version(self, version: str) -> UpdateRecord:
        """The update published as ``version`` (``vX.Y.Z``).

        Raises:
            NotFoundError: no such update.
        """

    @abstractmethod
    def get_package_documents(self, update_id: int) -> tuple[bytes, bytes]:
        """The exact stored ``manifest.json`` and ``manifest.sig`` bytes.

        Raises:
            NotFoundError: no such update.
        """

    @abstractmethod
    def list_updates(
        self, *, limit: int, offset: int, update_type: UpdateType | None = None
    ) -> Page[UpdateRecord]:
        """Updates, highest version first."""

    def update_ids(self) -> list[int]:
        """The ids of every published update (cheap: for caches to notice a publish).

        This default reads the updates; stores override it with an id-only query.
        """
        return [update.id for update in self.updates_newer_than(None)]

    @abstractmethod
    def updates_newer_than(self, version: tuple[int, int, int] | None) -> list[UpdateRecord]:
        """Every update with a version above ``version`` (None: all), highest first."""

    @abstractmethod
    def status_counts(self, update_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Per update, how many device rows are in each status."""

    # device updates ----------------------------------------------------------
    @abstractmethod
    def list_device_updates(
        self,
        *,
        update_id: int | None = None,
        device_id: int | None = None,
        status: UpdateStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> Page[DeviceUpdateRecord]:
        """Rows filtered by update, device and status; highest version first, then device."""

    @abstractmethod
    def get_device_update(self, device_id: int, update_id: int) -> DeviceUpdateRecord:
        """The row of ``device_id`` for ``update_id``.

        Raises:
            NotFoundError: the device has no row for that update.
        """

    @abstractmethod
    def add_device_update(
        self, update_id: int, row: NewDeviceUpdate, *, now: datetime, audit: AuditEntry
    ) -> bool:
        """Create one pending row (reconciliation); False if the row already existed."""

    @abstractmethod
    def transition(
        self,
        device_update_id: int,
        status: UpdateStatus,
        *,
        now: datetime,
        error_message: str | None = None,
        audit: AuditEntry,
    ) -> TransitionResult:
        """Move a row to ``status`` if :data:`ALLOWED_PREVIOUS` allows it; atomic.

        A row already in ``status``, or past it, is left alone (``changed`` False).
        ``started_at`` is set on the first move off ``pending``, ``completed_at``
        on reaching a final status, and on ``completed`` the device's
        ``current_version`` becomes the update's version if that is newer
        (:func:`javia_core.status_rules.raises_version`). A move writes ``audit`` with ``from`` added
        to its details: the status the row had, read in the same transaction.

        Raises:
            NotFoundError: no such row.
        """

    async def transition_async(
        self,
        device_update_id: int,
        status: UpdateStatus,
        *,
        now: datetime,
        error_message: str | None = None,
        audit: AuditEntry,
    ) -> TransitionResult:
        """:meth:`transition` for a coroutine; by default it runs in a worker thread.

        Stores that can wait for a write without holding a thread (the SQLite
        store's group commit) override it. Raises as :meth:`transition`.
        """
        return await asyncio.to_thread(
            functools.partial(
                self.transition,
                device_update_id,
                status,
                now=now,
                error_message=error_message,
                audit=audit,
            )
        )

    @abstractmethod
    def reschedule(
        self,
        device_update_id: int,
        *,
        install_type: UpdateType,
        scheduled_for: datetime,
        window_end: datetime | None,
        now: datetime,
    ) -> bool:
        """Change the timing of a row that is still pending; False if it no longer is."""

    # audit -------------------------------------------------------------------
    @abstractmethod
    def list_audit(self, *, limit: int, offset: int) -> Page[AuditRecord]:
        """Audit log lines, newest first."""

    # lifecycle ---------------------------------------------------------------
    def close(self) -> None:  # noqa: B027 - optional hook: a store without connections keeps it
        """Release connections."""


class BlobStore(ABC):
    """Package objects, kept per package under a key (e.g. ``v1.2.3/ab12...``).

    Names are plain file names (``manifest.json``, ``manifest.sig``,
    ``payload.tar.gz``). Writes are atomic: an object is either absent or
    complete, never half written.
    """

    @abstractmethod
    def put_bytes(self, key: str, name: str, data: bytes) -> None:
        """Store ``data`` as object ``name`` of package ``key``."""

    @abstractmethod
    def put_file(self, key: str, name: str, source: Path) -> None:
        """Store the file ``source`` as object ``name``; ``source`` is consumed (moved or removed)."""

    @abstractmethod
    def size(self, key: str, name: str) -> int:
        """The object's size in bytes.

        Raises:
            NotFoundError: no such object.
        """

    @abstractmethod
    def iter_range(
        self, key: str, name: str, start: int, end: int, *, chunk_size: int = 256 * 1024
    ) -> Iterator[bytes]:
        """Yield bytes ``start`` to ``end`` (exclusive) of the object, in chunks.

        Raises:
            NotFoundError: no such object (raised before the first chunk).
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove every object of package ``key`` (nothing if absent)."""

    @abstractmethod
    def upload_dir(self) -> Path:
        """A local directory for streaming uploads into, on the same file system if possible."""


class Backend(ABC):
    """A named pair of :class:`Store` and :class:`BlobStore`.

    Subclasses set ``NAME`` and implement :meth:`from_settings`.
    """

    NAME: ClassVar[str]

    def __init__(self, store: Store, blobs: BlobStore) -> None:
        self.store = store
        self.blobs = blobs

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: ServerSettings) -> Backend:
        """Build the backend from server settings (does not create the schema)."""

    def prepare(self) -> None:  # noqa: B027 - optional hook: the default needs no preparation
        """Bring storage up to date (run migrations, create directories)."""

    def close(self) -> None:
        """Release connections and files."""
        self.store.close()


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Backend]] = {}
_ENTRY_POINT_GROUP = "javia.backends"
_entry_points_loaded = False


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Register a backend class under its ``NAME`` (usable as a class decorator).

    Raises:
        BackendError: ``NAME`` is missing or empty, or already registered by another class.
    """
    name = getattr(cls, "NAME", None)
    if not isinstance(name, str) or not name:
        raise BackendError(f"backend class {cls.__qualname__} has no NAME")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise BackendError(
            f"backend name {name!r} is already registered by {existing.__module__}."
            f"{existing.__qualname__}: choose another NAME"
        )
    _REGISTRY[name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for entry_point in entry_points(group=_ENTRY_POINT_GROUP):
        cls = entry_point.load()
        if _REGISTRY.get(str(getattr(cls, "NAME", ""))) is not cls:
            register_backend(cls)


def backend_names() -> list[str]:
    """Names of every registered backend, sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def get_backend_class(name: str) -> type[Backend]:
    """The backend class registered as ``name``.

    Raises:
        BackendError: no backend of that name; the message lists the known ones.
    """
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise BackendError(f"unknown backend {name!r}: expected one of {known}") from None


def create_backend(settings: ServerSettings) -> Backend:
    """Build the backend named by ``settings.backend``.

    Raises:
        BackendError: unknown backend name, or it cannot be opened.
    """
    return get_backend_class(settings.backend).from_settings(settings)
