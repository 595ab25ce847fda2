"""The server's use cases: register, heartbeat, check, report, publish, list, plan.

:class:`UpdateService` is a thin façade over one module per responsibility:

* :mod:`~javia_updates.service.devices`: registration, device and enrollment tokens, device listings;
* :mod:`~javia_updates.service.heartbeat`: heartbeat, update check, reconciliation, supersession;
* :mod:`~javia_updates.service.reports`: status reports;
* :mod:`~javia_updates.service.updates`: published updates and package downloads;
* :mod:`~javia_updates.service.publishing`: publish (and storage clean-up on failure);
* :mod:`~javia_updates.service.planning`: rollout plans;
* :mod:`~javia_updates.service.views`: stored records as wire models;
* :mod:`~javia_updates.service.records`: the store behind the caches and batched writes;
* :mod:`~javia_updates.service.tokens` and :mod:`~javia_updates.service.common`:
  token helpers, limits, errors.

The façade keeps the full docstrings of the public methods (the reference of
the use cases, with their errors), which is most of its length; the methods
only hand over.

No HTTP here: the FastAPI routes (:mod:`javia_updates.server`) translate
requests into these calls and errors into status codes. Every method that
depends on the time takes ``now`` (an aware datetime: the injected clock), so
the update-type rules are tested without sleeps.

The rules (DESIGN.md section 4), where they are applied:

* **publish** (:meth:`UpdateService.publish_update`): scheduled and urgent
  updates get a pending row for every targeted device, timed by
  :func:`javia_core.scheduling.plan_install`; instant updates only for
  targeted devices seen within ``instant_online_seconds`` (inclusive), to
  install at once. Devices that already run the version or a newer one get no
  row. The update and all its rows are written in one transaction.
* **heartbeat / check** (:meth:`UpdateService.heartbeat`,
  :meth:`UpdateService.check_update`), in this order:

  1. *reconciliation*: if the newest update that targets the device and is
     newer than what it runs has no row for it (registered after the publish,
     or offline during an instant publish), the row is created now with that
     update's rule;
  2. waiting rows (``pending``, or ``staged`` ahead of the window) for
     versions the device already runs become ``superseded``;
  3. if a row is ``downloading`` or ``installing``, that one is the directive
     and nothing else changes until it finishes; so is a ``retrying`` row
     while its rollout lets the device start, unless a higher waiting version
     may start (that one supersedes it);
  4. *supersession*: the highest waiting version wins; it takes the most
     urgent timing among the waiting rows (instant > urgent > scheduled,
     :func:`javia_core.scheduling.most_urgent`), then the others become
     ``superseded``;
  5. a scheduled/urgent row whose window has closed is re-planned for the next
     window (:func:`javia_core.scheduling.current_install_plan`);
  6. *admission*: a ``pending`` winner due now is offered at the pace of
     install starts the server keeps up with (a token bucket slowed while the
     process is busy: its event loop late, or more than
     ``install_admission_requests`` other requests in progress;
     :mod:`~javia_updates.service.admission`); refused, the answer carries no
     directive and the row stays ``pending`` for a later heartbeat.

  No directive, but a ``staged`` or ``retrying`` row of a paused rollout: the
  answer names it ``held`` (the device keeps its work and installs nothing,
  docs/rollouts.md, "Device statuses").

  A ``failed`` or ``rolled_back`` row is final: that version is never offered
  to that device again, a newer one is.
* **status reports** (:meth:`UpdateService.report_status`) move a row only
  forward (:data:`javia_core.status_rules.ALLOWED_PREVIOUS`). Repeating
  the current status, or reporting one the row is already past (a late or
  duplicated report, e.g. ``downloading`` after ``completed``), is answered
  with the stored status and ``changed=False`` rather than an error: the
  agent's report queue then drains instead of retrying forever, and the row
  keeps its final status.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from javia_core.failures import FailureGroupsOut
from javia_core.models import (
    DeviceOut,
    DeviceRegistered,
    DeviceRegisterRequest,
    DeviceStatus,
    DeviceTagsChange,
    DeviceUpdateOut,
    EnrollmentTokenCreated,
    EnrollmentTokenOut,
    HeartbeatRequest,
    HeartbeatResponse,
    PlanEntry,
    RevertSource,
    StatusReport,
    StatusReportResult,
    UpdateCheckResponse,
    UpdateOut,
    UpdateStatus,
    UpdateType,
)
from javia_core.rollouts import RolloutPolicy
from javia_updates.backends.base import (
    AuditRecord,
    Backend,
    DeviceRecord,
    Page,
    UpdateRecord,
)
from javia_updates.backends.wakeup_bus import wakeup_bus_for
from javia_updates.service.admission import InstallAdmission
from javia_updates.service.common import (
    API_PREFIX,
    DOCUMENT_CACHE_SIZE,
    MAX_DATABASE_INTEGER,
    MAX_METADATA_BYTES,
    OFFLINE_AFTER_INTERVALS,
    DamagedPackageError,
    InvalidRequestError,
    WriteNeeded,
)
from javia_updates.service.devices import Devices
from javia_updates.service.heartbeat import Heartbeats
from javia_updates.service.planning import Planning
from javia_updates.service.publishing import PackageUpload, Publishing
from javia_updates.service.records import FleetRecords
from javia_updates.service.reports import StatusReports
from javia_updates.service.revert import RevertSources
from javia_updates.service.rollouts import Rollouts
from javia_updates.service.tokens import (
    ENROLLMENT_TOKEN_PREFIX,
    hash_token,
    is_enrollment_token,
    new_device_token,
    new_enrollment_token,
)
from javia_updates.service.updates import Updates
from javia_updates.service.views import derive_status
from javia_updates.service.wakeups import DeviceWakeups
from javia_updates.settings import ServerSettings

__all__ = [
    "API_PREFIX",
    "DOCUMENT_CACHE_SIZE",
    "ENROLLMENT_TOKEN_PREFIX",
    "MAX_DATABASE_INTEGER",
    "MAX_METADATA_BYTES",
    "OFFLINE_AFTER_INTERVALS",
    "DamagedPackageError",
    "EnrollmentTokenCreated",
    "EnrollmentTokenOut",
    "FleetRecords",
    "InvalidRequestError",
    "PackageUpload",
    "PlanEntry",
    "UpdateService",
    "WriteNeeded",
    "derive_status",
    "hash_token",
    "is_enrollment_token",
    "new_device_token",
    "new_enrollment_token",
]


class UpdateService:
    """The use cases of the update server, over one :class:`~javia_updates.backends.base.Backend`.

    A façade: each method hands over to the module of its responsibility
    (see this package's docstring).

    Args:
        backend: metadata store and blob store (already prepared/migrated).
        settings: intervals, window and limits.
        keyring: trusted public keys by key id for the server-side signature
            check at publish; None loads ``settings.trusted_keys_dir`` if set,
            else signatures are only checked for form (the agent enforces trust).

    Raises:
        SigningKeyError: ``settings.trusted_keys_dir`` cannot be read.
    """

    def __init__(
        self,
        backend: Backend,
        settings: ServerSettings,
        *,
        keyring: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> None:
        self.backend = backend
        self.store = backend.store
        self.blobs = backend.blobs
        self.settings = settings
        if keyring is None and settings.trusted_keys_dir is not None:
            from javia_core.keys import load_keyring

            keyring = load_keyring(settings.trusted_keys_dir)
        self.keyring = keyring
        self.records = FleetRecords(self.store, settings)
        # The caches and the soft-state writer, for the server and the tests that look inside.
        self.cache = self.records.cache
        self.catalog = self.records.catalog
        self.soft_state = self.records.soft_state
        self._devices = Devices(self.records, settings)
        #: Wakes devices' held wake-up requests on every server process (docs/agent.md).
        self.wakeups = DeviceWakeups(wakeup_bus_for(self.store))
        self._rollouts = Rollouts(self.records, settings, wakeups=self.wakeups)
        #: Admits the start of installs (None when ``install_admission_requests`` is 0).
        self.install_admission: InstallAdmission | None = (
            InstallAdmission(
                limit=settings.install_admission_requests,
                max_loop_lag_seconds=settings.install_admission_loop_lag_seconds,
            )
            if settings.install_admission_requests > 0
            else None
        )
        self._heartbeats = Heartbeats(
            self.records,
            settings,
            regressed=self._evaluate_rollout,
            admission=self.install_admission,
        )
        self._reports = StatusReports(self.records, finished=self._evaluate_rollout)
        self._updates = Updates(self.records, self.blobs, self._rollouts)
        self._publishing = Publishing(self.records, self.blobs, settings, keyring, self._rollouts)
        self._planning = Planning(self.records, self._updates, settings)
        self._revert_sources = RevertSources(self.records, self._updates)

    def _evaluate_rollout(self, update_id: int, now: datetime) -> None:
        """A row of ``update_id`` finished or regressed: halt, advance or complete its rollout now."""
        self._rollouts.row_finished(self.records.update(update_id), now)

    def evaluate_rollouts(self, *, now: datetime) -> None:
        """Evaluate every running rollout: soaks, silent devices, phase gates (the periodic task).

        Raises:
            BackendError: the database failed (the next run tries again).
        """
        self._rollouts.evaluate_running(now)

    def rollout_command(
        self,
        reference: str | int,
        action: str,
        *,
        reason: str | None,
        now: datetime,
        actor: str = "admin",
    ) -> UpdateOut:
        """Pause, resume, cancel, approve or advance an update's rollout (docs/rollouts.md).

        Idempotent: a command already in effect returns the update unchanged.
        Audited as ``rollout.<action>`` with ``actor`` and ``reason``.

        Args:
            reference: the update's id or version.
            action: ``pause``, ``resume``, ``cancel``, ``approve`` or ``advance``.
            reason: the operator's words for the audit log, or None.
            now: the server's clock.
            actor: who commands.

        Returns:
            The update with its rollout after the command.

        Raises:
            ConflictError: the move is illegal in the rollout's state (one line: what and why).
            NotFoundError, VersionError, InvalidRequestError: see :meth:`resolve_update`.
        """
        update = self.resolve_update(reference)
        self._rollouts.command(update, action, reason=reason, actor=actor, now=now)
        return self._updates.get_update(update.id, now=now)

    def start(self) -> None:
        """Start the batched writes of heartbeat soft state (server start-up).

        Until this is called (and with ``heartbeat_flush_seconds`` 0), every
        heartbeat is written before it is answered.
        """
        self.records.start()

    def close(self) -> None:
        """Write the heartbeat soft state still queued and stop the writer (server shutdown).

        Raises:
            BackendError: that final write failed.
        """
        self.records.close()

    def flush_soft_state(self) -> None:
        """Write queued heartbeat soft state now, so reads see every heartbeat answered so far.

        Raises:
            BackendError: the write failed.
        """
        self.records.flush()

    def find_device(self, device_uuid: uuid.UUID) -> DeviceRecord:
        """The stored device.

        Raises:
            NotFoundError: not registered.
        """
        return self.store.get_device(device_uuid)

    def audit_log(self, *, limit: int = 100, offset: int = 0) -> Page[AuditRecord]:
        """Audit log lines (registrations, publishes, status changes), newest first."""
        return self.store.list_audit(limit=limit, offset=offset)

    def device_out(self, device: DeviceRecord, *, now: datetime) -> DeviceOut:
        """The operator's view of ``device`` with its derived status."""
        return self._devices.device_out(device, now=now)

    def register_device(
        self,
        request: DeviceRegisterRequest,
        *,
        now: datetime,
        actor: str = "admin",
        enrollment_token: str | None = None,
    ) -> DeviceRegistered:
        """Register a device and return its token, which is shown this once only.

        Args:
            request: the registration body.
            now: the server's clock.
            actor: who registers (audit log), e.g. ``admin``.
            enrollment_token: register with this enrollment token instead of
                as the operator; one use is counted atomically with the insert.

        Raises:
            ConflictError: the uuid is already registered.
            InvalidRequestError: the metadata is too large or not plain JSON.
            EnrollmentError: ``enrollment_token`` is unknown, revoked, expired
                or used up.
        """
        return self._devices.register_device(
            request, now=now, actor=actor, enrollment_token=enrollment_token
        )

    def revoke_device_token(
        self, device_uuid: uuid.UUID, *, now: datetime, actor: str = "admin"
    ) -> DeviceOut:
        """Revoke the device's token: from now on it authenticates nothing (401).

        The stored hash is replaced by the hash of a fresh token that is thrown
        away at once, so no token matches the device until
        :meth:`rotate_device_token` issues a new one. Its records and update
        history stay.

        Raises:
            NotFoundError: the device is not registered.
        """
        revoked = self._devices.revoke_device_token(device_uuid, now=now, actor=actor)
        self.wakeups.token_changed(device_uuid)
        return revoked

    def rotate_device_token(
        self, device_uuid: uuid.UUID, *, now: datetime, actor: str = "admin"
    ) -> DeviceRegistered:
        """Issue a new token for the device (shown this once); the old one stops working.

        Also re-admits a device whose token was revoked.

        Raises:
            NotFoundError: the device is not registered.
        """
        rotated = self._devices.rotate_device_token(device_uuid, now=now, actor=actor)
        self.wakeups.token_changed(device_uuid)
        return rotated

    def create_enrollment_token(
        self,
        *,
        max_uses: int,
        expires_in_seconds: float,
        label: str | None,
        now: datetime,
        actor: str = "admin",
    ) -> EnrollmentTokenCreated:
        """Create an enrollment token; the answer holds the token, shown this once only.

        Args:
            max_uses: how many devices may register with it (at least 1).
            expires_in_seconds: how long it is valid from ``now``, in seconds.
            label: an operator's note, e.g. the batch of devices it is for.
            now: the server's clock.
            actor: who creates it (audit log).

        Raises:
            InvalidRequestError: ``max_uses`` below 1 or ``expires_in_seconds`` not positive.
        """
        return self._devices.create_enrollment_token(
            max_uses=max_uses,
            expires_in_seconds=expires_in_seconds,
            label=label,
            now=now,
            actor=actor,
        )

    def list_enrollment_tokens(
        self, *, now: datetime, limit: int = 100, offset: int = 0
    ) -> Page[EnrollmentTokenOut]:
        """Enrollment tokens, newest first, with whether each is usable at ``now``."""
        return self._devices.list_enrollment_tokens(now=now, limit=limit, offset=offset)

    def revoke_enrollment_token(
        self, token_id: int, *, now: datetime, actor: str = "admin"
    ) -> EnrollmentTokenOut:
        """Revoke an enrollment token; devices it registered keep their own tokens.

        Raises:
            NotFoundError: no such token.
        """
        return self._devices.revoke_enrollment_token(token_id, now=now, actor=actor)

    def authenticate_device(self, token: str) -> DeviceRecord | None:
        """The device holding ``token``, or None for an unknown or malformed token.

        Served from the device cache when possible (see :mod:`javia_updates.backends.cache`).
        On a database that other replicas write too (``store.exclusive`` False),
        a cached device is confirmed with one primary-key query
        (:meth:`~javia_updates.backends.base.Store.token_is_current`): a token
        revoked or rotated through any replica is refused by every replica at
        its next request.

        Raises:
            BackendError: the database cannot be read.
        """
        return self._devices.authenticate_device(token)

    def cached_device(self, token: str) -> DeviceRecord | None:
        """The device holding ``token`` if it is in the device cache (no I/O), else None.

        Always None when other replicas may write the database
        (``store.exclusive`` False): a cached device must then be confirmed
        there (:meth:`authenticate_device`), which is I/O.
        """
        return self._devices.cached_device(token)

    def get_device(self, device_uuid: uuid.UUID, *, now: datetime) -> DeviceOut:
        """One device as operators see it.

        Raises:
            NotFoundError: not registered.
        """
        return self._devices.get_device(device_uuid, now=now)

    def list_devices(
        self,
        *,
        now: datetime,
        status: DeviceStatus | None = None,
        version: str | None = None,
        online: bool | None = None,
        tag: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[DeviceOut]:
        """Devices in registration order, filtered by derived status, version, online, tag.

        Raises:
            VersionError: ``version`` is not ``vX.Y.Z``.
            InvalidRequestError: ``tag`` is not a valid tag.
        """
        return self._devices.list_devices(
            now=now,
            status=status,
            version=version,
            online=online,
            tag=tag,
            limit=limit,
            offset=offset,
        )

    def change_device_tags(
        self,
        device_uuid: uuid.UUID,
        change: DeviceTagsChange,
        *,
        now: datetime,
        actor: str = "admin",
    ) -> DeviceOut:
        """Add and remove a device's tags (audited); the device joins updates targeting a new tag
        at its next heartbeat (docs/rollouts.md, "Tags"). Repeating a change changes nothing.

        Raises:
            NotFoundError: not registered.
            ConflictError: the device would carry more than 32 tags.
        """
        return self._devices.change_device_tags(device_uuid, change, now=now, actor=actor)

    def device_history(
        self,
        device_uuid: uuid.UUID,
        *,
        status: UpdateStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[DeviceUpdateOut]:
        """A device's update rows, highest version first.

        Raises:
            NotFoundError: not registered.
        """
        return self._devices.device_history(device_uuid, status=status, limit=limit, offset=offset)

    def heartbeat(
        self,
        device: DeviceRecord,
        request: HeartbeatRequest,
        *,
        now: datetime,
    ) -> HeartbeatResponse:
        """Record a heartbeat and answer with the server's clock and any install directive.

        Sets ``last_seen = now``, the reported version (kept if the device
        sends none) and status, and merges the reported metadata into the
        stored one (top-level keys; the device's values win). That soft state
        is written in batches (:class:`~javia_updates.backends.soft_state.SoftStateWriter`,
        at most ``heartbeat_flush_seconds`` later; a crash loses at most that
        much, which the device sends again). Then reconciles and picks the
        directive as described in this module's docstring, from the caches
        where they are fresh.

        Args:
            device: the authenticated device.
            request: what it reported.
            now: the server's clock.

        Raises:
            InvalidRequestError: the metadata is too large or not plain JSON.
        """
        return self._heartbeats.heartbeat(device, request, now=now)

    def heartbeat_without_writes(
        self, device: DeviceRecord, request: HeartbeatRequest, *, now: datetime
    ) -> HeartbeatResponse | None:
        """:meth:`heartbeat` if it needs no database write (the event loop's answer), else None.

        None means nothing was written or queued: answer with :meth:`heartbeat`
        off the event loop (a row must be reconciled, superseded or re-planned).

        Raises:
            InvalidRequestError: the metadata is too large or not plain JSON.
        """
        try:
            with self.records.without_writes():
                return self._heartbeats.heartbeat(device, request, now=now)
        except WriteNeeded:
            return None

    def check_update(self, device: DeviceRecord, *, now: datetime) -> UpdateCheckResponse:
        """The pending update of ``device`` and when it may install (reconciles like a heartbeat)."""
        return self._heartbeats.check_update(device, now=now)

    def report_status(
        self, device: DeviceRecord, update_id: int, report: StatusReport, *, now: datetime
    ) -> StatusReportResult:
        """Apply a device's progress report on ``update_id``; idempotent.

        Returns:
            The row's status after the report; ``changed`` is False when the row
            already had that status or was past it (see the module docstring).

        Raises:
            NotFoundError: the device has no row for that update.
        """
        return self._reports.report_status(device, update_id, report, now=now)

    async def report_status_async(
        self, device: DeviceRecord, update_id: int, report: StatusReport, *, now: datetime
    ) -> StatusReportResult:
        """:meth:`report_status` for the event loop: the write is committed before it returns.

        With local reads (SQLite) the row is found on the loop and the write
        waits in the store's group commit without holding a thread; otherwise
        the whole report runs in a worker thread.

        Raises:
            NotFoundError: the device has no row for that update.
        """
        return await self._reports.report_status_async(device, update_id, report, now=now)

    def resolve_update(self, reference: str | int) -> UpdateRecord:
        """The update named by an id (``4``) or a version (``v1.2.3``).

        Raises:
            NotFoundError: no such update.
            VersionError: it starts with ``v`` but is not ``vX.Y.Z``.
            InvalidRequestError: it is neither.
        """
        return self._updates.resolve_update(reference)

    def get_update(self, reference: str | int, *, now: datetime | None = None) -> UpdateOut:
        """One update with its per-status device counts and its rollout.

        ``now`` (the server's clock; None: the system's) judges silent devices.

        Raises:
            NotFoundError, VersionError, InvalidRequestError: see :meth:`resolve_update`.
        """
        return self._updates.get_update(reference, now=now)

    def list_updates(
        self,
        *,
        update_type: UpdateType | None = None,
        limit: int = 100,
        offset: int = 0,
        now: datetime | None = None,
    ) -> Page[UpdateOut]:
        """Updates, highest version first, with per-status device counts and rollouts."""
        return self._updates.list_updates(
            update_type=update_type, limit=limit, offset=offset, now=now
        )

    def update_devices(
        self,
        reference: str | int,
        *,
        status: UpdateStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[DeviceUpdateOut]:
        """Per-device progress rows of one update.

        Raises:
            NotFoundError, VersionError, InvalidRequestError: see :meth:`resolve_update`.
        """
        return self._updates.update_devices(reference, status=status, limit=limit, offset=offset)

    def update_failures(self, reference: str | int) -> FailureGroupsOut:
        """The update's failed and rolled back devices grouped by cause (issue 15).

        Raises:
            NotFoundError, VersionError, InvalidRequestError: see :meth:`resolve_update`.
        """
        from javia_updates.service.failures import failure_groups

        return failure_groups(self.store, self.resolve_update(reference))

    def device_may_read(self, device: DeviceRecord, update_id: int) -> bool:
        """Whether ``device`` has a row for ``update_id`` (and so may fetch its package)."""
        return self._updates.device_may_read(device, update_id)

    def package_documents(self, update: UpdateRecord) -> tuple[bytes, bytes]:
        """The exact stored ``manifest.json`` and ``manifest.sig`` bytes.

        Kept in memory for the most recent :data:`DOCUMENT_CACHE_SIZE` updates
        asked for: an update never changes once published, and every device
        of a rollout fetches the same two documents.
        """
        return self._updates.package_documents(update)

    def payload_range(self, update: UpdateRecord, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of the payload archive, in chunks.

        The stored object's size is compared with ``update.archive_size``
        first, so a caller that declared that size never sends too little.

        Raises:
            NotFoundError: the blob store has lost the object.
            DamagedPackageError: the stored object's size differs from the
                recorded archive size (republish the version).
        """
        return self._updates.payload_range(update, start, end)

    def upload_dir(self) -> Path:
        """Where a streamed upload should be written before :meth:`publish_update`."""
        return self._updates.upload_dir()

    def publish_update(
        self,
        upload: PackageUpload,
        *,
        now: datetime,
        targets: Sequence[uuid.UUID] | None = None,
        update_type: UpdateType | None = None,
        actor: str = "admin",
        tags: Sequence[str] | None = None,
        policy: RolloutPolicy | None = None,
    ) -> UpdateOut:
        """Publish a signed package and create its rollout and device rows, atomically.

        The checks, in order: the signature file's form; the manifest (its
        version must be ``vX.Y.Z``); the signature itself if the server has a
        keyring; ``update_type`` equals the signed one if given (the signed type
        is what devices obey); the payload's size and SHA-256 equal the
        manifest's ``archive``; the version is not published yet; every target
        is registered. Only then are the objects stored (under a blob key of
        this publish alone) and the rows written. A publish that fails after
        storing objects deletes them again (best effort, logged if that fails
        too); it never deletes objects of another update.

        Args:
            upload: the three objects; ``upload.payload_path`` is consumed.
            now: the server's clock.
            targets: device uuids to update; None means every registered device
                (unless ``tags`` are given).
            update_type: the type the operator asked for, or None.
            actor: who publishes, for the audit log.
            tags: a device carrying any of these tags is targeted too, at
                publish and at its heartbeats (a device tagged later joins).
            policy: how it rolls out (phases, soak, halt, approval); None: the
                defaults, one phase of 100 % (docs/rollouts.md). It starts
                awaiting approval if the policy or ``JAVIA_APPROVAL_REQUIRED``
                asks for it.

        Returns:
            The update with per-status counts of the rows just created.

        Raises:
            SignatureError: malformed signature file, or (with a keyring) an
                untrusted key or a signature that does not verify.
            ManifestError: the manifest is malformed (bad version included).
            VersionError: a version number does not fit the database.
            PackageError: requested type differs from the signed one, or the
                payload does not match the manifest (expected vs actual).
            ConflictError: the version is already published, or a higher
                version is (a rollback is a roll-forward).
            NotFoundError: a target is not a registered device.
            InvalidRequestError: ``targets`` or ``tags`` is an empty list, a tag
                is malformed, or no device carries one (``unknown tag ...``).
            StorageTooLargeError: the blob store refused an object as too large
                (the message names the limit); API 413.
            StorageRefusedError: the blob store refused an object otherwise
                (key, bucket, request); API 502.
            BackendError: the blob store or the database is unreachable or
                failed; API 503.
        """
        published = self._publishing.publish_update(
            upload,
            now=now,
            targets=targets,
            update_type=update_type,
            actor=actor,
            tags=tags,
            policy=policy,
        )
        self.wakeups.published(published.update_type, targets)
        return published

    def plan_new_update(
        self,
        update_type: UpdateType,
        version: str,
        targets: Sequence[uuid.UUID] | None,
        *,
        now: datetime,
        tags: Sequence[str] | None = None,
        policy: RolloutPolicy | None = None,
    ) -> list[PlanEntry]:
        """Dry run: who would install ``version`` when, if published now.

        With ``targets`` or ``tags`` every device is listed, each saying why
        it is in or out ("tagged kitchen; ...", "not tagged kitchen"). Each
        targeted device has its phase under ``policy`` (the default: one phase)
        and says why the rollout would hold it back ("waits for approval",
        "phase 2 of 2, opens after phase 1 soaks"; docs/rollouts.md).

        Raises:
            VersionError: ``version`` is not ``vX.Y.Z``.
            ConflictError: ``version`` is already published, or a higher
                version is.
            NotFoundError: a target is not registered.
            InvalidRequestError: a tag is malformed or no device carries it.
        """
        return self._planning.plan_new_update(
            update_type, version, targets, now=now, tags=tags, policy=policy
        )

    def plan_published(self, reference: str | int, *, now: datetime) -> list[PlanEntry]:
        """Who installs a published update when, from its rows (and the rules for devices without one).

        Raises:
            NotFoundError, VersionError, InvalidRequestError: see :meth:`resolve_update`.
        """
        return self._planning.plan_published(reference, now=now)

    def revert_source(self, reference: str | int) -> RevertSource:
        """What ``javia updates revert`` rolls forward to: the affected devices and the healthy release.

        The rule is :mod:`javia_updates.service.revert` (docs/rollouts.md, "Revert").

        Raises:
            NotFoundError, VersionError, InvalidRequestError: see :meth:`resolve_update`.
            ConflictError: no device runs or installs the update, or none of
                them completed an earlier release that was not halted or cancelled,
                or a newer release already reaches all of them (reverted before).
        """
        return self._revert_sources.revert_source(reference)
