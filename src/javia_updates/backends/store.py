"""The storage contracts: the metadata :class:`Store` and the :class:`BlobStore` (DESIGN.md section 5).

:class:`Store` is a :class:`typing.Protocol`: the one place its methods'
shapes, units and exceptions are written down. Its implementation,
:class:`javia_updates.backends.sql.SQLStore` (SQLite and PostgreSQL), is
checked against it by mypy, not by inheritance. :class:`BlobStore` stays an
abstract base class because two classes implement it (on disk,
:class:`~javia_updates.backends.files.FileBlobStore`, and in Supabase
Storage, :class:`~javia_updates.backends.supabase_storage.SupabaseStorageBlobStore`):
a missing method fails when the class is instantiated, not at the first call.

Update progress moves only forward (:data:`javia_core.status_rules.ALLOWED_PREVIOUS`,
the one table of legal transitions). Every store must apply a transition as one conditional
write (``UPDATE ... WHERE status IN (allowed previous)``), so that concurrent
server replicas can never move a row backwards.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from javia_core.errors import JaviaError
from javia_core.models import DeviceStatus, UpdateStatus, UpdateType
from javia_core.rollouts import Rollout
from javia_updates.backends.records import (
    AuditEntry,
    AuditRecord,
    DeviceQuery,
    DeviceRecord,
    DeviceUpdateRecord,
    DeviceWithRows,
    EnrollmentTokenRecord,
    HeartbeatWrite,
    NewDevice,
    NewDeviceUpdate,
    NewEnrollmentToken,
    NewRollout,
    NewUpdate,
    Page,
    PublishTarget,
    RolloutDeviceRow,
    RolloutMember,
    RolloutRecord,
    StatusGroup,
    SupersededRow,
    TransitionResult,
    UpdateRecord,
)

__all__ = ["BlobStore", "EnrollmentError", "Store"]


class EnrollmentError(JaviaError):
    """An enrollment token is unknown, revoked, expired or used up (HTTP 401).

    Not a :class:`BackendError`: the store worked, the credential did not.
    """


class Store(Protocol):
    """Metadata storage: devices, updates, device_updates and the audit log.

    Every method is one transaction. Instants are aware UTC datetimes, sizes
    bytes, ids the rows' integer ids. Methods raise
    :class:`~javia_core.errors.NotFoundError` for a missing row,
    :class:`~javia_core.errors.ConflictError` for a write that conflicts with
    what is stored, and :class:`~javia_core.errors.BackendError` when the
    database itself fails (unreachable, busy, refused).

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

    local_reads: bool
    exclusive: bool

    # devices ---------------------------------------------------------------
    def create_device(self, device: NewDevice, *, now: datetime, audit: AuditEntry) -> DeviceRecord:
        """Register ``device`` and write ``audit``, atomically.

        Raises:
            ConflictError: the uuid (or, astronomically unlikely, token hash) exists.
        """

    def get_device(self, device_uuid: uuid.UUID) -> DeviceRecord:
        """The device with ``device_uuid``.

        Raises:
            NotFoundError: no such device.
        """

    def find_device_by_token_hash(self, token_hash: str) -> DeviceRecord | None:
        """The device whose token hashes to ``token_hash`` (SHA-256 hex), if any."""

    def find_device_with_rows(self, token_hash: str) -> DeviceWithRows | None:
        """The device whose token hashes to ``token_hash`` and all its update rows, if any.

        One read of one snapshot (on SQL: one statement, no ``BEGIN`` on
        SQLite) instead of :meth:`find_device_by_token_hash` and
        :meth:`list_device_updates` one after the other: the heartbeat of a device that is not cached
        (with the device cache off, every heartbeat) needs both. The rows
        are exactly what :meth:`list_device_updates` with ``device_id``
        alone answers, with their ``rows_mark`` (:meth:`confirm_device`).
        """

    def token_is_current(self, device_id: int, token_hash: str) -> bool:
        """Whether device ``device_id`` still holds the token hashing to ``token_hash``.

        False once the token was revoked or rotated, by any server. On the
        heartbeat path of a shared database (``exclusive`` False): one
        primary-key lookup, one boolean back.
        """

    def confirm_device(self, device_id: int, token_hash: str) -> tuple[int, int] | None:
        """Whether device ``device_id`` still holds the token, and where its update rows stand.

        Returns:
            None once the token was revoked or rotated (by any server);
            otherwise ``(rows, revisions)``: how many ``device_updates`` rows the
            device has and the sum of their ``row_revision`` (1 at creation,
            raised by every update of the row). Any write to the device's rows,
            through any server process, changes the pair, so a process that
            cached the rows under another pair reloads them. One indexed
            query, made by the heartbeat path of a shared database
            (``exclusive`` False) instead of :meth:`token_is_current`.
        """

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

    def create_enrollment_token(
        self, token: NewEnrollmentToken, *, now: datetime, audit: AuditEntry
    ) -> EnrollmentTokenRecord:
        """Store a new enrollment token (its hash) with ``audit``, atomically."""

    def list_enrollment_tokens(self, *, limit: int, offset: int) -> Page[EnrollmentTokenRecord]:
        """Enrollment tokens, newest first."""

    def revoke_enrollment_token(
        self, token_id: int, *, now: datetime, audit: AuditEntry
    ) -> EnrollmentTokenRecord:
        """Revoke an enrollment token (idempotent: the first revocation time is kept).

        Raises:
            NotFoundError: no such token.
        """

    def list_devices(self, query: DeviceQuery, *, limit: int, offset: int) -> Page[DeviceRecord]:
        """Devices matching ``query``, oldest registration first."""

    def devices_for_targets(
        self, targets: Sequence[uuid.UUID] | None, tags: Sequence[str] | None = None
    ) -> list[DeviceRecord]:
        """Every device named in ``targets`` or carrying one of ``tags`` (both None: every device).

        Raises:
            NotFoundError: a uuid in ``targets`` is not registered; the message lists them.
        """

    def publish_targets(
        self,
        targets: Sequence[uuid.UUID] | None,
        *,
        tags: Sequence[str] | None = None,
        seen_since: datetime | None = None,
    ) -> list[PublishTarget]:
        """:meth:`devices_for_targets`, reduced to what a publish needs, in registration order.

        A device whose token is revoked is left out: it can never fetch the
        update, so a row for it would stay pending and count in the rollout.

        Args:
            targets: device uuids, or None.
            tags: a device carrying any of them is targeted too, or None;
                ``targets`` and ``tags`` both None: every registered device.
            seen_since: mark devices whose ``last_seen`` is at or after this
                instant (``seen``); an instant update reaches only those.

        Raises:
            NotFoundError: a uuid in ``targets`` is not registered; the message lists them.
        """

    def tags_in_use(self, tags: Sequence[str]) -> set[str]:
        """Those of ``tags`` that at least one registered device carries (a publish's check)."""

    def change_device_tags(
        self,
        device_uuid: uuid.UUID,
        *,
        add: Sequence[str],
        remove: Sequence[str],
        now: datetime,
        audit: AuditEntry,
    ) -> DeviceRecord:
        """Add and remove tags of one device, atomically; returns the device after the change.

        Conditional on the tags read in the same transaction (row locked), so
        two operators racing both take effect; a tag in both lists ends up
        removed. ``audit`` (details gain ``before`` and ``tags``) is written
        only when the tags changed. Heartbeats never change tags.

        Raises:
            NotFoundError: no such device.
            ConflictError: the device would carry more than ``MAX_TAGS`` (32) tags.
        """

    def record_heartbeat(
        self,
        device_id: int,
        *,
        now: datetime,
        current_version: str | None,
        status: DeviceStatus,
        metadata: dict[str, Any],
    ) -> DeviceRecord:
        """Store one heartbeat: ``last_seen`` = ``now`` and what the device reported.

        Raises:
            NotFoundError: the device was deleted meanwhile.
        """

    def record_heartbeats(self, writes: Sequence[HeartbeatWrite]) -> None:
        """Store many heartbeats' soft state in one transaction (newest per device).

        A write whose ``now`` is older than the device's ``updated_at`` keeps the
        stored ``current_version`` (a completed update raised it meanwhile);
        devices deleted meanwhile are skipped. One bad write never costs the
        others theirs: a row the database refuses (say, text PostgreSQL cannot
        store) is dropped with a warning naming the device id, and the rest
        are stored; the device sends its soft state again at its next
        heartbeat.

        Raises:
            BackendError: the database is unreachable, busy or failed as a
                whole (nothing of the batch is stored; the caller retries).
        """

    # updates ---------------------------------------------------------------
    def create_update(
        self,
        update: NewUpdate,
        rows: Sequence[NewDeviceUpdate],
        *,
        now: datetime,
        audit: AuditEntry,
        rollout: NewRollout | None = None,
        superseded: Sequence[SupersededRow] = (),
    ) -> UpdateRecord:
        """Publish ``update`` with its rollout, its pending device rows and ``audit``, in ONE transaction.

        ``rollout`` None stores no rollout row: the update then behaves as an
        active rollout of one phase (as updates published before rollouts).
        ``superseded``: older rows the new ones supersede, moved to
        ``superseded`` (with ``completed_at`` and the reason as
        ``error_message``) in the same transaction, each only if still
        waiting (``pending``, or ``staged`` ahead of its window:
        :data:`~javia_core.status_rules.WAITING_STATUSES`); one audit line
        ``device_update.superseded`` names how many.

        Raises:
            ConflictError: the version is already published; the message names
                the existing update's id.
        """

    def get_update(self, update_id: int) -> UpdateRecord:
        """The update with ``update_id``.

        Raises:
            NotFoundError: no such update.
        """

    def get_update_by_version(self, version: str) -> UpdateRecord:
        """The update published as ``version`` (``vX.Y.Z``).

        Raises:
            NotFoundError: no such update.
        """

    def get_package_documents(self, update_id: int) -> tuple[bytes, bytes]:
        """The exact stored ``manifest.json`` and ``manifest.sig`` bytes.

        Raises:
            NotFoundError: no such update.
        """

    def list_updates(
        self, *, limit: int, offset: int, update_type: UpdateType | None = None
    ) -> Page[UpdateRecord]:
        """Updates, highest version first."""

    def update_ids(self) -> list[int]:
        """The ids of every published update (cheap: for caches to notice a publish).

        An id-only query: the update catalog asks it at least every second.
        """

    def updates_newer_than(self, version: tuple[int, int, int] | None) -> list[UpdateRecord]:
        """Every update with a version above ``version`` (None: all), highest first."""

    def status_counts(self, update_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Per update, how many device rows are in each status."""

    # rollouts (docs/rollouts.md) ---------------------------------------------
    def get_rollout(self, update_id: int) -> RolloutRecord | None:
        """The rollout of ``update_id``; None if the update has none (or does not exist)."""

    def list_rollouts(self, update_ids: Sequence[int] | None = None) -> dict[int, RolloutRecord]:
        """``{update_id: rollout}`` for ``update_ids`` (None: every rollout; the catalog's question).

        One row per update: cheap enough for the update catalog to ask every second.
        """

    def change_rollout(
        self,
        update_id: int,
        *,
        revision: int,
        rollout: Rollout,
        now: datetime,
        audit: AuditEntry | None,
    ) -> RolloutRecord | None:
        """Store ``rollout`` (state, open phase, phase approval, halt reason) if unchanged since read.

        One conditional write (``... WHERE update_id = ? AND revision = ?``) that
        bumps ``revision``; ``phase_opened_at`` becomes ``now`` when the open phase
        changes or the rollout starts. Entering ``cancelled`` turns every
        ``pending`` row of the update into ``cancelled`` in the same transaction.
        ``audit`` (None: none) is written with it.

        Returns:
            The stored rollout, or None when ``revision`` is no longer the stored
            one (another operator or replica changed it first: re-read, re-apply).
        """

    def rollout_devices(
        self, update_id: int, *, silent_before: datetime | None = None
    ) -> list[RolloutDeviceRow]:
        """Device rows of ``update_id`` with the device's ``last_seen`` and tags.

        ``silent_before`` None: every row. Otherwise only the rows that may
        have fallen silent after installing: ``completed``, no regression
        recorded, completed and last heard from before ``silent_before`` (the
        candidates :func:`~javia_core.rollouts.post_install_regression` decides on).
        """

    def rollout_members(self, update_id: int) -> list[RolloutMember]:
        """Every device row of ``update_id``, lean (phase counts and the phase gate); one query."""

    def rollout_status_groups(
        self, update_id: int, *, silent_before: datetime
    ) -> list[StatusGroup]:
        """``update_id``'s rows counted by status, regression and silence (one aggregate query).

        Silent: the device's ``last_seen`` is None or before ``silent_before``.
        """

    def previous_status_groups(self, update_id: int, previous_id: int) -> list[StatusGroup]:
        """Rows of ``previous_id`` of the devices still ``pending`` in ``update_id``, counted.

        One aggregate query; ``silent`` is always False here (the devices'
        silence is counted on ``update_id``'s pending rows).
        """

    def regression_count(self, update_id: int) -> int:
        """How many completed rows of ``update_id`` have a post-install regression (one aggregate)."""

    def previous_update_id(self, update_id: int) -> int | None:
        """The update with the next lower version (the health view's "previous"), or None."""

    def record_regression(
        self, device_update_id: int, reason: str, *, now: datetime, audit: AuditEntry
    ) -> bool:
        """Record a post-install regression (``regressed_at`` = ``now``, the reason) on a completed row.

        Returns:
            False, writing nothing, when the row is not completed or already regressed.
        """

    # device updates ----------------------------------------------------------
    def list_device_updates(
        self,
        *,
        update_id: int | None = None,
        device_id: int | None = None,
        status: UpdateStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
        with_failure: bool = False,
    ) -> Page[DeviceUpdateRecord]:
        """Rows filtered by update, device and status; highest version first, then device.

        ``limit`` None: every match (``total`` is then the number of items).
        Every row of one device (``device_id`` alone) is the heartbeat's
        question: one statement built once. ``with_failure``: each record's
        ``failure`` is read too (else None: it stays out of the hot paths).
        """

    def get_device_update(self, device_id: int, update_id: int) -> DeviceUpdateRecord:
        """The row of ``device_id`` for ``update_id``.

        Raises:
            NotFoundError: the device has no row for that update.
        """

    def add_device_update(
        self, update_id: int, row: NewDeviceUpdate, *, now: datetime, audit: AuditEntry
    ) -> bool:
        """Create one pending row with ``audit`` (reconciliation); False if it already existed.

        Raises:
            BackendError: the row cannot be added for another reason (the
                device or update was deleted meanwhile).
        """

    def transition(
        self,
        device_update_id: int,
        status: UpdateStatus,
        *,
        now: datetime,
        error_message: str | None = None,
        audit: AuditEntry,
        failure: dict[str, Any] | None = None,
    ) -> TransitionResult:
        """Move a row to ``status`` if :data:`ALLOWED_PREVIOUS` allows it; atomic.

        A row already in ``status``, or past it, is left alone (``changed`` False),
        except a repeated report in a status of
        :data:`~javia_core.status_rules.REASON_REFRESHING` (``retrying``) with a
        new ``error_message``: the reason is stored (``changed`` True). A move
        with ``failure`` (the device's ``FailureDetails`` as a dict) stores it.
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
        failure: dict[str, Any] | None = None,
    ) -> TransitionResult:
        """:meth:`transition` for a coroutine (the status route); raises as :meth:`transition`.

        On SQLite it waits on the event loop without holding a thread
        (group commit: concurrent reports share one commit); on PostgreSQL
        it runs in a worker thread.
        """

    def reschedule(
        self,
        device_update_id: int,
        *,
        install_type: UpdateType,
        scheduled_for: datetime,
        window_end: datetime | None,
        now: datetime,
    ) -> bool:
        """Change the timing of a row still pending or staged; False if it no longer is."""

    # audit -------------------------------------------------------------------
    def list_audit(self, *, limit: int, offset: int) -> Page[AuditRecord]:
        """Audit log lines, newest first."""

    # lifecycle ---------------------------------------------------------------
    def close(self) -> None:
        """Commit what is held for a shared commit, then release every connection."""


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
