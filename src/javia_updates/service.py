"""The server's use cases: register, heartbeat, check, report, publish, list, plan.

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
  2. pending rows for versions the device already runs become ``superseded``;
  3. if a row is ``downloading`` or ``installing``, that one is the directive
     and nothing else changes until it finishes;
  4. *supersession*: the highest pending version wins; it takes the most
     urgent timing among the pending rows (instant > urgent > scheduled,
     :func:`javia_core.scheduling.most_urgent`), then the others become
     ``superseded``;
  5. a scheduled/urgent row whose window has closed is re-planned for the next
     window (:func:`javia_core.scheduling.current_install_plan`).

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

import asyncio
import functools
import hashlib
import logging
import secrets
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from javia_core import input_rules, scheduling
from javia_core.errors import (
    BackendError,
    ConflictError,
    JaviaError,
    NotFoundError,
    PackageError,
    VersionError,
)
from javia_core.input_rules import check_json, sanitize_json
from javia_core.manifest import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    SIGNATURE_NAME,
    Manifest,
    Signature,
    verify_manifest,
)
from javia_core.models import (
    DeviceOut,
    DeviceRegistered,
    DeviceRegisterRequest,
    DeviceStatus,
    DeviceUpdateOut,
    EnrollmentTokenCreated,
    EnrollmentTokenOut,
    HeartbeatRequest,
    HeartbeatResponse,
    InstallDirective,
    PlanEntry,
    StatusReport,
    StatusReportResult,
    UpdateCheckResponse,
    UpdateOut,
    UpdateStatus,
    UpdateType,
    UrgencyEvidence,
    check_no_control_characters,
)
from javia_core.status_rules import IN_FLIGHT_STATUSES
from javia_core.versioning import EXPECTED_FORM, MAX_COMPONENT, Version
from javia_updates.backends.base import (
    AuditEntry,
    AuditRecord,
    Backend,
    DeviceQuery,
    DeviceRecord,
    DeviceUpdateRecord,
    EnrollmentTokenRecord,
    HeartbeatWrite,
    NewDevice,
    NewDeviceUpdate,
    NewEnrollmentToken,
    NewUpdate,
    Page,
    PublishTarget,
    TransitionResult,
    UpdateRecord,
)
from javia_updates.backends.cache import CATALOG_MAX_AGE_SECONDS, DeviceCache, UpdateCatalog
from javia_updates.backends.soft_state import SoftStateWriter
from javia_updates.settings import ServerSettings

__all__ = [
    "API_PREFIX",
    "ENROLLMENT_TOKEN_PREFIX",
    "MAX_METADATA_BYTES",
    "OFFLINE_AFTER_INTERVALS",
    "DamagedPackageError",
    "EnrollmentTokenCreated",
    "EnrollmentTokenOut",
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

API_PREFIX = "/api/v1"
#: A device silent for more than this many heartbeat intervals is shown offline.
OFFLINE_AFTER_INTERVALS = 3
#: Largest ``metadata`` object a device or operator may store, as JSON bytes.
MAX_METADATA_BYTES = input_rules.MAX_METADATA_BYTES
#: Row ids and version numbers must fit a signed 64-bit integer column.
MAX_DATABASE_INTEGER = 2**63 - 1
#: Updates whose manifest and signature bytes are kept in memory (a few KiB each).
DOCUMENT_CACHE_SIZE = 64
#: Enrollment tokens start with this, so the server (and a secret scanner) can
#: tell them from device tokens at a glance.
ENROLLMENT_TOKEN_PREFIX = "javia_enroll_"
_HASH_CHUNK = 1024 * 1024

_publish_log = logging.getLogger("javia.server.publish")


class WriteNeeded(Exception):
    """Raised by :meth:`UpdateService.heartbeat` with ``allow_writes=False`` when
    answering needs a database write (a reconciled, superseded or re-planned
    row): the caller retries with writes allowed, off the event loop."""


class DamagedPackageError(BackendError):
    """A stored payload archive's size differs from the size recorded at publish.

    A server-side fault (the object was truncated or damaged on disk or in
    the bucket): the download is refused before the first byte rather than
    declaring the recorded ``Content-Length`` and then sending too little.
    Maps to HTTP 503 (a :class:`~javia_core.errors.BackendError`).
    """


class InvalidRequestError(JaviaError, ValueError):
    """A request's input is invalid in a way no narrower error names.

    For example an empty target list, oversized metadata, or an update
    reference that is neither an id nor a version. Maps to HTTP 422.
    """


# --------------------------------------------------------------------------- helpers


def new_device_token() -> str:
    """A fresh device token: 32 random bytes (256 bits), URL-safe base64."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """SHA-256 hex of ``token``: what the database stores instead of the token.

    A plain (unsalted, fast) hash is enough: tokens are 256 random bits, so
    nobody can guess one from its hash, and lookups stay one indexed query.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_enrollment_token() -> str:
    """A fresh enrollment token: :data:`ENROLLMENT_TOKEN_PREFIX` and 256 random bits, URL-safe."""
    return ENROLLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)


def is_enrollment_token(token: str) -> bool:
    """Whether ``token`` has the form of an enrollment token (not whether it is valid)."""
    return token.startswith(ENROLLMENT_TOKEN_PREFIX)


def derive_status(
    device: DeviceRecord, *, now: datetime, heartbeat_interval_seconds: float
) -> DeviceStatus:
    """The status operators see: ``offline`` if never seen or silent too long, else the reported one.

    A device is offline when its last heartbeat is *more* than
    ``OFFLINE_AFTER_INTERVALS`` (3) heartbeat intervals before ``now``; exactly
    three intervals ago still counts as online (hawkBit's "overdue" idea, with
    a margin for two lost heartbeats).
    """
    if device.last_seen is None:
        return DeviceStatus.OFFLINE
    limit = timedelta(seconds=OFFLINE_AFTER_INTERVALS * heartbeat_interval_seconds)
    if now - device.last_seen > limit:
        return DeviceStatus.OFFLINE
    return device.status


def _version_or_none(text: str | None) -> Version | None:
    if text is None or not Version.is_valid(text):
        return None
    return Version.parse(text)


def _check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` if it is device JSON within bounds (:func:`javia_core.input_rules.check_json`).

    The request models check each request's metadata; this checks what is
    stored: a heartbeat's metadata merged into the device's.

    Raises:
        InvalidRequestError: naming the place in ``metadata`` and the rule (API 422).
    """
    try:
        return check_json(metadata, "metadata", max_bytes=MAX_METADATA_BYTES)
    except ValueError as error:
        raise InvalidRequestError(str(error)) from None


def _check_version_range(version: Version) -> None:
    # Version.parse already refuses numbers above MAX_COMPONENT (the one bound);
    # this guards a Version built directly from integers.
    if max(version.major, version.minor, version.patch) > MAX_COMPONENT:
        raise VersionError(
            f"version {str(version)[:60]} has a number above {MAX_COMPONENT}: expected {EXPECTED_FORM}"
        )


def _file_size_and_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


@dataclass(frozen=True)
class PackageUpload:
    """The three package objects of a publish request.

    Attributes:
        manifest_bytes: the exact ``manifest.json`` bytes (what was signed).
        signature_bytes: the ``manifest.sig`` bytes.
        payload_path: a file holding ``payload.tar.gz``, preferably in the blob
            store's upload directory; :meth:`UpdateService.publish_update`
            consumes it (moves it into the blob store or deletes it).
        payload_size: its size in bytes if already measured while receiving.
        payload_sha256: its SHA-256 hex if already computed while receiving.
    """

    manifest_bytes: bytes
    signature_bytes: bytes
    payload_path: Path
    payload_size: int | None = None
    payload_sha256: str | None = None


# --------------------------------------------------------------------------- service


class UpdateService:
    """The use cases of the update server, over one :class:`~javia_updates.backends.base.Backend`.

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
        self.cache = DeviceCache(settings.device_cache_seconds)
        self.catalog = UpdateCatalog(
            self.store.update_ids,
            self.store.get_update,
            max_age_seconds=CATALOG_MAX_AGE_SECONDS,
        )
        self._documents: dict[int, tuple[bytes, bytes]] = {}
        self._documents_lock = threading.Lock()
        self.soft_state = SoftStateWriter(
            self.store.record_heartbeats, flush_seconds=settings.heartbeat_flush_seconds
        )

    def start(self) -> None:
        """Start the batched writes of heartbeat soft state (server start-up).

        Until this is called (and with ``heartbeat_flush_seconds`` 0), every
        heartbeat is written before it is answered.
        """
        self.soft_state.start()

    def close(self) -> None:
        """Write the heartbeat soft state still queued and stop the writer (server shutdown).

        Raises:
            BackendError: that final write failed.
        """
        self.soft_state.close()

    def flush_soft_state(self) -> None:
        """Write queued heartbeat soft state now, so reads see every heartbeat answered so far.

        Raises:
            BackendError: the write failed.
        """
        self.soft_state.flush()

    # ------------------------------------------------------------------ conversions
    def _status(self, device: DeviceRecord, now: datetime) -> DeviceStatus:
        return derive_status(
            device, now=now, heartbeat_interval_seconds=self.settings.heartbeat_interval_seconds
        )

    def _offline_before(self, now: datetime) -> datetime:
        return now - timedelta(
            seconds=OFFLINE_AFTER_INTERVALS * self.settings.heartbeat_interval_seconds
        )

    def device_out(self, device: DeviceRecord, *, now: datetime) -> DeviceOut:
        """The operator's view of ``device`` with its derived status."""
        return DeviceOut(
            id=device.id,
            device_uuid=device.device_uuid,
            device_name=device.device_name,
            registered_at=device.registered_at,
            last_seen=device.last_seen,
            current_version=device.current_version,
            timezone=device.timezone,
            status=self._status(device, now),
            # Rows stored before the input rules existed may hold JSON no
            # answer can carry (lone surrogates, 256-deep lists): shown cleaned.
            metadata=sanitize_json(device.metadata),
            created_at=device.created_at,
            updated_at=device.updated_at,
            token_revoked_at=device.token_revoked_at,
        )

    @staticmethod
    def _update_out(update: UpdateRecord, counts: dict[str, int]) -> UpdateOut:
        return UpdateOut(
            id=update.id,
            version=update.version,
            created_at=update.created_at,
            update_type=update.update_type,
            description=update.description,
            package_url=f"{API_PREFIX}/updates/{update.id}/download",
            requires_system_packages=update.requires_system_packages,
            system_packages=list(update.system_packages),
            size=update.archive_size,
            key_id=update.key_id,
            targets=None if update.targets is None else list(update.targets),
            status_counts=counts,
        )

    @staticmethod
    def _device_update_out(row: DeviceUpdateRecord) -> DeviceUpdateOut:
        return DeviceUpdateOut(
            device_uuid=row.device_uuid,
            device_name=row.device_name,
            update_id=row.update_id,
            version=row.version,
            status=row.status,
            scheduled_for=row.scheduled_for,
            started_at=row.started_at,
            completed_at=row.completed_at,
            error_message=row.error_message,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def _directive(
        self,
        row: DeviceUpdateRecord,
        rows: Sequence[DeviceUpdateRecord] = (),
        running: Version | None = None,
    ) -> InstallDirective:
        """The directive for ``row``; ``rows`` (the device's) supply ``urgency_from``.

        When the row's timing (``install_type``) is more urgent than its
        update's signed type, it was inherited by supersession (DESIGN.md
        section 4) and the device follows it only with a signature to prove it:
        ``urgency_from`` names the superseded update (:meth:`_urgency_evidence`).
        """
        base = f"{API_PREFIX}/updates/{row.update_id}"
        evidence = None
        if scheduling.most_urgent((row.install_type, row.update_type)) is not row.update_type:
            evidence = self._urgency_evidence(row, rows, running)
        return InstallDirective(
            update_id=row.update_id,
            version=Version.parse(row.version),
            update_type=row.install_type,
            status=row.status,
            install_at=row.scheduled_for,
            window_end=row.window_end,
            idle_seconds_required=(
                self.settings.urgent_idle_seconds if row.install_type is UpdateType.URGENT else None
            ),
            size=row.archive_size,
            manifest_url=f"{base}/manifest",
            signature_url=f"{base}/signature",
            download_url=f"{base}/download",
            urgency_from=evidence,
        )

    @staticmethod
    def _urgency_evidence(
        row: DeviceUpdateRecord, rows: Sequence[DeviceUpdateRecord], running: Version | None
    ) -> UrgencyEvidence | None:
        """The superseded update that proves ``row``'s inherited timing, if the device has one.

        Among the device's other pending or superseded rows whose version lies
        strictly between ``running`` and ``row``'s, one whose update was
        *signed* at least as urgent as ``row.install_type``: the most urgent
        signed type, then the newest version. Inherited timings come from
        signed types only (publish and reconciliation plan rows with their
        update's type; supersession takes the most urgent of those), so an
        honest server always finds one while the device still runs a version
        older than it. The device is allowed to fetch its manifest and
        signature (it has a row for that update); None when there is none.
        """
        version = Version.parse(row.version)
        candidates = [
            other
            for other in rows
            if other.update_id != row.update_id
            and other.status in (UpdateStatus.PENDING, UpdateStatus.SUPERSEDED)
            and scheduling.most_urgent((other.update_type, row.install_type)) is other.update_type
            and (running is None or Version.parse(other.version) > running)
            and Version.parse(other.version) < version
        ]
        if not candidates:
            return None
        rank = {UpdateType.SCHEDULED: 0, UpdateType.URGENT: 1, UpdateType.INSTANT: 2}
        best = max(
            candidates, key=lambda other: (rank[other.update_type], Version.parse(other.version))
        )
        base = f"{API_PREFIX}/updates/{best.update_id}"
        return UrgencyEvidence(
            update_id=best.update_id,
            version=Version.parse(best.version),
            manifest_url=f"{base}/manifest",
            signature_url=f"{base}/signature",
        )

    def _plan(
        self, update_type: UpdateType, device: DeviceRecord, now: datetime
    ) -> scheduling.InstallPlan:
        return scheduling.plan_install(
            update_type,
            now=now,
            timezone=device.timezone,
            device_uuid=device.device_uuid,
            window_start=self.settings.window_start,
            window_seconds=self.settings.window_seconds,
            idle_seconds=self.settings.urgent_idle_seconds,
        )

    def _new_row(
        self, update_type: UpdateType, device: DeviceRecord, now: datetime
    ) -> NewDeviceUpdate:
        plan = self._plan(update_type, device, now)
        return NewDeviceUpdate(device.id, update_type, plan.install_at, plan.window_end)

    # ------------------------------------------------------------------ devices
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
        device_uuid = request.device_uuid or uuid.uuid4()
        token = new_device_token()
        new = NewDevice(
            device_uuid=device_uuid,
            device_name=request.device_name,
            timezone=request.timezone,
            metadata=_check_metadata(request.metadata),
            token_hash=hash_token(token),
        )
        details: dict[str, Any] = {
            "device_uuid": str(device_uuid),
            "device_name": request.device_name,
        }
        if enrollment_token is None:
            device = self.store.create_device(
                new, now=now, audit=AuditEntry(actor, "device.register", details)
            )
        else:
            device = self.store.create_device_with_enrollment(
                hash_token(enrollment_token),
                new,
                now=now,
                audit=AuditEntry("enrollment", "device.register", details),
            )
        return DeviceRegistered(
            device_uuid=device.device_uuid,
            device_token=token,
            device_name=device.device_name,
            timezone=device.timezone,
            registered_at=device.registered_at,
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
        device = self.store.replace_device_token(
            device_uuid,
            token_hash=hash_token(new_device_token()),
            revoked=True,
            now=now,
            audit=AuditEntry(actor, "device.token_revoke", {"device_uuid": str(device_uuid)}),
        )
        self.cache.forget(device.id)
        return self.device_out(device, now=now)

    def rotate_device_token(
        self, device_uuid: uuid.UUID, *, now: datetime, actor: str = "admin"
    ) -> DeviceRegistered:
        """Issue a new token for the device (shown this once); the old one stops working.

        Also re-admits a device whose token was revoked.

        Raises:
            NotFoundError: the device is not registered.
        """
        token = new_device_token()
        device = self.store.replace_device_token(
            device_uuid,
            token_hash=hash_token(token),
            revoked=False,
            now=now,
            audit=AuditEntry(actor, "device.token_rotate", {"device_uuid": str(device_uuid)}),
        )
        self.cache.forget(device.id)
        return DeviceRegistered(
            device_uuid=device.device_uuid,
            device_token=token,
            device_name=device.device_name,
            timezone=device.timezone,
            registered_at=device.registered_at,
        )

    # ------------------------------------------------------------------ enrollment tokens
    @staticmethod
    def _enrollment_out(record: EnrollmentTokenRecord, now: datetime) -> EnrollmentTokenOut:
        return EnrollmentTokenOut(
            id=record.id,
            label=record.label,
            created_at=record.created_at,
            expires_at=record.expires_at,
            max_uses=record.max_uses,
            uses=record.uses,
            revoked_at=record.revoked_at,
            usable=record.revoked_at is None
            and record.uses < record.max_uses
            and now < record.expires_at,
        )

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
        if max_uses < 1:
            raise InvalidRequestError(
                f"max_uses is {max_uses}: an enrollment token needs at least 1 use"
            )
        if not expires_in_seconds > 0:
            raise InvalidRequestError("expires_in_seconds must be positive, e.g. 86400 for a day")
        token = new_enrollment_token()
        record = self.store.create_enrollment_token(
            NewEnrollmentToken(
                token_hash=hash_token(token),
                label=label,
                expires_at=now + timedelta(seconds=expires_in_seconds),
                max_uses=max_uses,
            ),
            now=now,
            audit=AuditEntry(
                actor,
                "enrollment_token.create",
                {"label": label, "max_uses": max_uses, "expires_in_seconds": expires_in_seconds},
            ),
        )
        return EnrollmentTokenCreated(**self._enrollment_out(record, now).model_dump(), token=token)

    def list_enrollment_tokens(
        self, *, now: datetime, limit: int = 100, offset: int = 0
    ) -> Page[EnrollmentTokenOut]:
        """Enrollment tokens, newest first, with whether each is usable at ``now``."""
        page = self.store.list_enrollment_tokens(limit=limit, offset=offset)
        return Page([self._enrollment_out(record, now) for record in page.items], page.total)

    def revoke_enrollment_token(
        self, token_id: int, *, now: datetime, actor: str = "admin"
    ) -> EnrollmentTokenOut:
        """Revoke an enrollment token; devices it registered keep their own tokens.

        Raises:
            NotFoundError: no such token.
        """
        record = self.store.revoke_enrollment_token(
            token_id,
            now=now,
            audit=AuditEntry(actor, "enrollment_token.revoke", {"token_id": token_id}),
        )
        return self._enrollment_out(record, now)

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
        if not token or len(token) > 512:
            return None
        token_hash = hash_token(token)
        device = self.cache.device(token_hash)
        if (
            device is not None
            and not self.store.exclusive
            and not self.store.token_is_current(device.id, token_hash)
        ):
            self.cache.forget(device.id)
            device = None
        if device is None:
            device = self.store.find_device_by_token_hash(token_hash)
            if device is not None:
                self.cache.put_device(token_hash, device)
        return device

    def cached_device(self, token: str) -> DeviceRecord | None:
        """The device holding ``token`` if it is in the device cache (no I/O), else None.

        Always None when other replicas may write the database
        (``store.exclusive`` False): a cached device must then be confirmed
        there (:meth:`authenticate_device`), which is I/O.
        """
        if not token or len(token) > 512 or not self.store.exclusive:
            return None
        return self.cache.device(hash_token(token))

    def find_device(self, device_uuid: uuid.UUID) -> DeviceRecord:
        """The stored device.

        Raises:
            NotFoundError: not registered.
        """
        return self.store.get_device(device_uuid)

    def get_device(self, device_uuid: uuid.UUID, *, now: datetime) -> DeviceOut:
        """One device as operators see it.

        Raises:
            NotFoundError: not registered.
        """
        self.flush_soft_state()
        return self.device_out(self.store.get_device(device_uuid), now=now)

    def list_devices(
        self,
        *,
        now: datetime,
        status: DeviceStatus | None = None,
        version: str | None = None,
        online: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[DeviceOut]:
        """Devices in registration order, filtered by derived status, version, online.

        Raises:
            VersionError: ``version`` is not ``vX.Y.Z``.
        """
        if version is not None:
            Version.parse(version)
        self.flush_soft_state()
        query = DeviceQuery(
            derived_status=status,
            offline_before=self._offline_before(now),
            online=online,
            current_version=version,
        )
        page = self.store.list_devices(query, limit=limit, offset=offset)
        return Page([self.device_out(device, now=now) for device in page.items], page.total)

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
        device = self.store.get_device(device_uuid)
        page = self.store.list_device_updates(
            device_id=device.id, status=status, limit=limit, offset=offset
        )
        return Page([self._device_update_out(row) for row in page.items], page.total)

    def heartbeat(
        self,
        device: DeviceRecord,
        request: HeartbeatRequest,
        *,
        now: datetime,
        allow_writes: bool = True,
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
            allow_writes: False to answer only if no database write is needed
                (the event loop's fast path); otherwise :class:`WriteNeeded`.

        Raises:
            InvalidRequestError: the metadata is too large or not plain JSON.
            WriteNeeded: ``allow_writes`` is False and a row must be written.
        """
        try:
            metadata = check_json(
                {**device.metadata, **request.metadata}, "metadata", max_bytes=MAX_METADATA_BYTES
            )
        except ValueError:
            # The stored part may predate the input rules: clean it (the write
            # below then repairs the row), and refuse only what the device sent.
            metadata = _check_metadata({**sanitize_json(device.metadata), **request.metadata})
        current = replace(
            device,
            last_seen=now,
            current_version=request.current_version or device.current_version,
            status=request.status,
            metadata=metadata,
            updated_at=now,
        )
        directive = self._directive_for(current, now, allow_writes=allow_writes)
        self.soft_state.record(
            HeartbeatWrite(current.id, now, current.current_version, current.status, metadata)
        )
        self.cache.refresh_device(current)
        return HeartbeatResponse(
            server_time=now,
            heartbeat_interval_seconds=self.settings.heartbeat_interval_seconds,
            update=directive,
        )

    def check_update(self, device: DeviceRecord, *, now: datetime) -> UpdateCheckResponse:
        """The pending update of ``device`` and when it may install (reconciles like a heartbeat)."""
        directive = self._directive_for(device, now)
        return UpdateCheckResponse(
            device_uuid=device.device_uuid,
            server_time=now,
            current_version=(
                None if device.current_version is None else Version.parse(device.current_version)
            ),
            update_available=directive is not None,
            update=directive,
        )

    def _newest_targeting(
        self, device: DeviceRecord, running: Version | None
    ) -> UpdateRecord | None:
        numbers = None if running is None else (running.major, running.minor, running.patch)
        return self.catalog.newest_targeting(device.device_uuid, numbers)

    def _device_rows(self, device: DeviceRecord) -> list[DeviceUpdateRecord]:
        generation = self.catalog.current_generation()
        rows = self.cache.rows(device.id, generation)
        if rows is None:
            epoch = self.cache.rows_epoch(device.id)
            rows = self.store.list_device_updates(device_id=device.id).items
            self.cache.put_rows(device.id, generation, rows, epoch)
        return rows

    def _supersede(
        self, row: DeviceUpdateRecord, device: DeviceRecord, reason: str, now: datetime
    ) -> None:
        self.store.transition(
            row.id,
            UpdateStatus.SUPERSEDED,
            now=now,
            error_message=reason,
            audit=AuditEntry(
                "server",
                "device_update.superseded",
                {
                    "device_uuid": str(device.device_uuid),
                    "update_id": row.update_id,
                    "reason": reason,
                },
            ),
        )

    def _directive_for(
        self, device: DeviceRecord, now: datetime, *, allow_writes: bool = True
    ) -> InstallDirective | None:
        running = _version_or_none(device.current_version)

        def writing() -> None:
            if not allow_writes:
                raise WriteNeeded
            self.cache.forget_rows(device.id)

        def load() -> list[DeviceUpdateRecord]:
            return self.store.list_device_updates(device_id=device.id).items

        rows = self._device_rows(device)

        # 1. Reconciliation: the newest update meant for this device, if it has no row.
        newest = self._newest_targeting(device, running)
        if newest is not None and all(row.update_id != newest.id for row in rows):
            writing()
            self.store.add_device_update(
                newest.id,
                self._new_row(newest.update_type, device, now),
                now=now,
                audit=AuditEntry(
                    "server",
                    "device_update.reconciled",
                    {
                        "device_uuid": str(device.device_uuid),
                        "update_id": newest.id,
                        "version": newest.version,
                    },
                ),
            )
            # Reload whether this call or another replica (at the same moment)
            # created the row: either way it is this device's directive now.
            rows = load()

        # 2. Pending rows for versions the device already runs are done with.
        live: list[DeviceUpdateRecord] = []
        for row in rows:
            if row.status is not UpdateStatus.PENDING:
                continue
            if running is not None and Version.parse(row.version) <= running:
                writing()
                self._supersede(row, device, f"device already runs {running}", now)
            else:
                live.append(row)

        # 3. A row in flight finishes first; it stays the directive.
        in_flight = [row for row in rows if row.status in IN_FLIGHT_STATUSES]
        if in_flight:
            return self._directive(
                max(in_flight, key=lambda row: Version.parse(row.version)), rows, running
            )
        if not live:
            return None

        # 4. Supersession: the highest version, with the most urgent timing.
        winner = max(live, key=lambda row: Version.parse(row.version))
        kind = scheduling.most_urgent(row.install_type for row in live)
        donor = winner
        if kind is not winner.install_type:
            donor = min(
                (row for row in live if row.install_type is kind), key=lambda row: row.scheduled_for
            )
        # 5. Re-plan a closed window (and adopt the donor's timing).
        plan = scheduling.current_install_plan(
            kind,
            donor.scheduled_for,
            donor.window_end,
            now=now,
            timezone=device.timezone,
            device_uuid=device.device_uuid,
            window_start=self.settings.window_start,
            window_seconds=self.settings.window_seconds,
            idle_seconds=self.settings.urgent_idle_seconds,
        )
        timing = (kind, plan.install_at, plan.window_end)
        if timing != (winner.install_type, winner.scheduled_for, winner.window_end):
            writing()
            still_pending = self.store.reschedule(
                winner.id,
                install_type=kind,
                scheduled_for=plan.install_at,
                window_end=plan.window_end,
                now=now,
            )
            winner = self.store.get_device_update(device.id, winner.update_id)
            if not still_pending and winner.status not in IN_FLIGHT_STATUSES:
                return None
        for row in live:
            if row.id != winner.id:
                writing()
                self._supersede(row, device, f"superseded by {winner.version}", now)
        return self._directive(winner, rows, running)

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
        row = self._device_update(device, update_id)
        result = self.store.transition(
            row.id, report.status, **self._status_change(device, row, report, now)
        )
        return self._status_reported(device, update_id, result)

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
        if not self.store.local_reads:
            return await asyncio.to_thread(
                functools.partial(self.report_status, device, update_id, report, now=now)
            )
        row = self._device_update(device, update_id)
        result = await self.store.transition_async(
            row.id, report.status, **self._status_change(device, row, report, now)
        )
        return self._status_reported(device, update_id, result)

    @staticmethod
    def _status_change(
        device: DeviceRecord, row: DeviceUpdateRecord, report: StatusReport, now: datetime
    ) -> dict[str, Any]:
        """The keyword arguments of :meth:`Store.transition` for a device's report."""
        audit = AuditEntry(
            f"device:{device.device_uuid}",
            "device_update.status",
            {
                "update_id": row.update_id,
                "version": row.version,
                "to": report.status.value,
                "error_message": report.error_message,
            },
        )
        return {"now": now, "error_message": report.error_message, "audit": audit}

    def _status_reported(
        self, device: DeviceRecord, update_id: int, result: TransitionResult
    ) -> StatusReportResult:
        if result.changed:
            self.cache.replace_row(result.record)
            if result.record.status is UpdateStatus.COMPLETED:
                self.cache.raise_version(device.id, result.record.version, result.record.updated_at)
        return StatusReportResult(
            update_id=update_id,
            device_uuid=device.device_uuid,
            status=result.record.status,
            changed=result.changed,
        )

    # ------------------------------------------------------------------ updates
    def resolve_update(self, reference: str | int) -> UpdateRecord:
        """The update named by an id (``4``) or a version (``v1.2.3``).

        Raises:
            NotFoundError: no such update.
            VersionError: it starts with ``v`` but is not ``vX.Y.Z``.
            InvalidRequestError: it is neither.
        """
        if isinstance(reference, int):
            update_id = reference
        else:
            text = reference.strip()
            if text.startswith("v"):
                return self.store.get_update_by_version(str(Version.parse(text)))
            if not (text.isascii() and text.isdigit()) or len(text) > 19:
                raise InvalidRequestError(
                    f"invalid update reference {text[:40]!r}: expected an update id such as 4 "
                    "or a version such as v1.2.3"
                )
            update_id = int(text)
        if not 1 <= update_id <= MAX_DATABASE_INTEGER:
            raise NotFoundError(f"update {update_id} does not exist")
        cached = self.catalog.get(update_id)
        return cached if cached is not None else self.store.get_update(update_id)

    def get_update(self, reference: str | int) -> UpdateOut:
        """One update with its per-status device counts.

        Raises:
            NotFoundError, VersionError, InvalidRequestError: see :meth:`resolve_update`.
        """
        update = self.resolve_update(reference)
        return self._update_out(update, self.store.status_counts([update.id])[update.id])

    def list_updates(
        self, *, update_type: UpdateType | None = None, limit: int = 100, offset: int = 0
    ) -> Page[UpdateOut]:
        """Updates, highest version first, with per-status device counts."""
        page = self.store.list_updates(limit=limit, offset=offset, update_type=update_type)
        counts = self.store.status_counts([update.id for update in page.items])
        return Page(
            [self._update_out(update, counts[update.id]) for update in page.items], page.total
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
        update = self.resolve_update(reference)
        page = self.store.list_device_updates(
            update_id=update.id, status=status, limit=limit, offset=offset
        )
        return Page([self._device_update_out(row) for row in page.items], page.total)

    def device_may_read(self, device: DeviceRecord, update_id: int) -> bool:
        """Whether ``device`` has a row for ``update_id`` (and so may fetch its package)."""
        try:
            self._device_update(device, update_id)
        except NotFoundError:
            return False
        return True

    def _device_update(self, device: DeviceRecord, update_id: int) -> DeviceUpdateRecord:
        """The row of ``device`` for ``update_id``: from the cached rows, else the store.

        A cached row's status may lag behind another replica's write by the
        cache's lifetime; callers use it only to find the row (status changes
        are conditional in the store).

        Raises:
            NotFoundError: the device has no row for that update.
        """
        for row in self._device_rows(device):
            if row.update_id == update_id:
                return row
        return self.store.get_device_update(device.id, update_id)

    def package_documents(self, update: UpdateRecord) -> tuple[bytes, bytes]:
        """The exact stored ``manifest.json`` and ``manifest.sig`` bytes.

        Kept in memory for the most recent :data:`DOCUMENT_CACHE_SIZE` updates
        asked for: an update never changes once published, and every device
        of a rollout fetches the same two documents.
        """
        documents = self._documents.get(update.id)
        if documents is None:
            documents = self.store.get_package_documents(update.id)
            with self._documents_lock:
                self._documents[update.id] = documents
                while len(self._documents) > DOCUMENT_CACHE_SIZE:
                    del self._documents[next(iter(self._documents))]
        return documents

    def payload_range(self, update: UpdateRecord, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``[start, end)`` of the payload archive, in chunks.

        The stored object's size is compared with ``update.archive_size``
        first, so a caller that declared that size never sends too little.

        Raises:
            NotFoundError: the blob store has lost the object.
            DamagedPackageError: the stored object's size differs from the
                recorded archive size (republish the version).
        """
        stored = self.blobs.size(update.package_url, PAYLOAD_NAME)
        if stored != update.archive_size:
            raise DamagedPackageError(
                f"package object for {update.version} is damaged: {stored} bytes stored, "
                f"{update.archive_size} expected; republish it"
            )
        return self.blobs.iter_range(update.package_url, PAYLOAD_NAME, start, end)

    def audit_log(self, *, limit: int = 100, offset: int = 0) -> Page[AuditRecord]:
        """Audit log lines (registrations, publishes, status changes), newest first."""
        return self.store.list_audit(limit=limit, offset=offset)

    def upload_dir(self) -> Path:
        """Where a streamed upload should be written before :meth:`publish_update`."""
        return self.blobs.upload_dir()

    def publish_update(
        self,
        upload: PackageUpload,
        *,
        now: datetime,
        targets: Sequence[uuid.UUID] | None = None,
        update_type: UpdateType | None = None,
        actor: str = "admin",
    ) -> UpdateOut:
        """Publish a signed package and create its device rows, atomically.

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
            targets: device uuids to update; None means every registered device.
            update_type: the type the operator asked for, or None.
            actor: who publishes, for the audit log.

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
            InvalidRequestError: ``targets`` is an empty list.
            StorageTooLargeError: the blob store refused an object as too large
                (the message names the limit); API 413.
            StorageRefusedError: the blob store refused an object otherwise
                (key, bucket, request); API 502.
            BackendError: the blob store or the database is unreachable or
                failed; API 503.
        """
        payload_path = Path(upload.payload_path)
        try:
            Signature.from_bytes(upload.signature_bytes)
            if self.keyring is not None:
                manifest = verify_manifest(
                    upload.manifest_bytes, upload.signature_bytes, self.keyring
                )
            else:
                manifest = Manifest.from_bytes(upload.manifest_bytes)
            version = manifest.parsed_version
            _check_version_range(version)
            if update_type is not None and update_type is not manifest.update_type:
                raise PackageError(
                    f"update_type {update_type.value} was requested but the signed manifest says "
                    f"{manifest.update_type.value}: omit update_type, or sign a package of type "
                    f"{update_type.value}"
                )
            try:
                check_no_control_characters(manifest.description, "description")
            except ValueError as error:
                raise InvalidRequestError(f"manifest {error}") from None
            self._check_payload(manifest, upload, payload_path)
            if targets is not None and not targets:
                raise InvalidRequestError(
                    "targets is empty: give device uuids, or omit targets to update every device"
                )
            try:
                existing = self.store.get_update_by_version(manifest.version)
            except NotFoundError:
                pass
            else:
                raise self._version_conflict(manifest.version, existing.id)
            self._refuse_lower_than_published(version)
            unique_targets = None if targets is None else tuple(dict.fromkeys(targets))
            self.flush_soft_state()  # "seen within 300 s" must count every heartbeat answered
            seen_since = None
            if manifest.update_type is UpdateType.INSTANT:
                seen_since = now - timedelta(seconds=self.settings.instant_online_seconds)
            devices = self.store.publish_targets(unique_targets, seen_since=seen_since)
            rows = self._rows_for_publish(manifest.update_type, version, devices, now)

            # A key of this publish alone (manifest digest + random suffix): a
            # failed publish deletes its objects and can never touch those of an
            # update published before or alongside it.
            key = (
                f"{manifest.version}/{hashlib.sha256(upload.manifest_bytes).hexdigest()[:16]}"
                f"-{secrets.token_hex(4)}"
            )
            try:
                self.blobs.put_bytes(key, MANIFEST_NAME, upload.manifest_bytes)
                self.blobs.put_bytes(key, SIGNATURE_NAME, upload.signature_bytes)
                self.blobs.put_file(key, PAYLOAD_NAME, payload_path)
            except BaseException:
                self._discard_objects(manifest.version, key)
                raise
            new_update = NewUpdate(
                version=manifest.version,
                version_numbers=(version.major, version.minor, version.patch),
                update_type=manifest.update_type,
                description=manifest.description,
                package_url=key,
                system_packages=tuple(manifest.system_packages),
                app=manifest.app,
                key_id=Signature.from_bytes(upload.signature_bytes).key_id,
                archive_size=manifest.archive.size,
                archive_sha256=manifest.archive.sha256,
                manifest=upload.manifest_bytes,
                signature=upload.signature_bytes,
                targets=unique_targets,
            )
            try:
                update = self.store.create_update(
                    new_update,
                    rows,
                    now=now,
                    audit=AuditEntry(
                        actor,
                        "update.publish",
                        {
                            "version": manifest.version,
                            "update_type": manifest.update_type.value,
                            "devices": len(rows),
                            "targets": None
                            if unique_targets is None
                            else [str(t) for t in unique_targets],
                        },
                    ),
                )
            except BaseException:
                self._discard_unless_used(manifest.version, key)
                raise
        finally:
            payload_path.unlink(missing_ok=True)
        self.catalog.invalidate()  # every device's next heartbeat sees the new update
        counts = self.store.status_counts([update.id])[update.id]
        return self._update_out(update, counts)

    def _refuse_lower_than_published(self, version: Version) -> None:
        """Versions only go up (DESIGN.md section 2): a rollback is a roll-forward.

        Raises:
            ConflictError: a higher version is already published.
        """
        higher = self.store.updates_newer_than((version.major, version.minor, version.patch))
        if higher:
            highest = higher[0].version
            raise ConflictError(
                f"{version} is lower than {highest}, already published: publish a higher "
                "version (a rollback is a roll-forward: republish the old content as a new version)"
            )

    @staticmethod
    def _version_conflict(version: str, update_id: int) -> ConflictError:
        return ConflictError(
            f"version {version} is already published (update {update_id}); publish a higher version"
        )

    def _discard_unless_used(self, version: str, key: str) -> None:
        """After a failed database write: delete this publish's objects unless it was recorded.

        The write may have committed although it reported a failure (a
        connection lost during COMMIT); then the row names ``key`` and the
        objects stay. When the database cannot tell, they stay too, with a log
        line: an update without its objects would be worse than a leftover.
        """
        try:
            recorded = self.store.get_update_by_version(version).package_url == key
        except NotFoundError:
            recorded = False
        except Exception as error:  # noqa: BLE001 - the caller re-raises the real failure
            _publish_log.error(
                "publish of %s failed and the database cannot tell whether it was recorded "
                "(%s); its objects under blob key %s are kept: delete them if %s is not "
                "published",
                version,
                error,
                key,
                version,
            )
            return
        if not recorded:
            self._discard_objects(version, key)

    def _discard_objects(self, version: str, key: str) -> None:
        """Delete the objects a failed publish stored under ``key``; log (never raise) if that fails.

        The caller re-raises the error that failed the publish, which is what
        the operator must see; a leftover is named in the log instead.
        """
        try:
            self.blobs.delete(key)
        except Exception as error:  # noqa: BLE001 - best effort, see above
            _publish_log.error(
                "publish of %s failed and its objects under blob key %s could not be removed "
                "(%s): delete them by hand",
                version,
                key,
                error,
            )

    @staticmethod
    def _check_payload(manifest: Manifest, upload: PackageUpload, payload_path: Path) -> None:
        if upload.payload_size is not None and upload.payload_sha256 is not None:
            size, sha256 = upload.payload_size, upload.payload_sha256
        else:
            try:
                size, sha256 = _file_size_and_sha256(payload_path)
            except OSError as error:
                raise PackageError(f"cannot read the payload: {error.strerror}") from None
        expected = manifest.archive
        problems = []
        if size != expected.size:
            problems.append(f"size is {size} bytes, the manifest says {expected.size}")
        if sha256 != expected.sha256:
            problems.append(f"sha256 is {sha256}, the manifest says {expected.sha256}")
        if problems:
            raise PackageError(
                f"{PAYLOAD_NAME} does not match the signed manifest: "
                + "; ".join(problems)
                + " (upload the payload built together with this manifest)"
            )

    def _rows_for_publish(
        self,
        update_type: UpdateType,
        version: Version,
        devices: Sequence[PublishTarget],
        now: datetime,
    ) -> list[NewDeviceUpdate]:
        """The rows a publish creates (DESIGN.md section 4), planned in bulk.

        Devices already at ``version`` or newer get none; an instant update
        reaches only devices ``seen`` within ``instant_online_seconds``
        (inclusive, as :func:`javia_core.scheduling.is_online`: the store
        compared ``last_seen`` with ``now`` minus that).
        """
        behind: dict[str | None, bool] = {}

        def needs(device: PublishTarget) -> bool:
            known = behind.get(device.current_version)
            if known is None:
                running = _version_or_none(device.current_version)
                known = behind[device.current_version] = running is None or running < version
            return known

        if update_type is UpdateType.INSTANT:
            return [
                NewDeviceUpdate(device.id, UpdateType.INSTANT, now, None)
                for device in devices
                if device.seen and needs(device)
            ]
        eligible = [device for device in devices if needs(device)]
        times = scheduling.install_times(
            update_type,
            now=now,
            devices=[(device.timezone, device.device_uuid) for device in eligible],
            window_start=self.settings.window_start,
            window_seconds=self.settings.window_seconds,
        )
        return [
            NewDeviceUpdate(device.id, update_type, install_at, window_end)
            for device, (install_at, window_end) in zip(eligible, times, strict=True)
        ]

    # ------------------------------------------------------------------ plans
    def _facts(self, device: DeviceRecord) -> scheduling.DeviceFacts:
        return scheduling.DeviceFacts(
            device_uuid=device.device_uuid,
            device_name=device.device_name,
            timezone=device.timezone,
            last_seen=device.last_seen,
            current_version=device.current_version,
        )

    def _rollout(
        self, update_type: UpdateType, version: str, devices: Sequence[DeviceRecord], now: datetime
    ) -> list[scheduling.DevicePlan]:
        return scheduling.plan_rollout(
            update_type,
            version,
            [self._facts(device) for device in devices],
            now=now,
            window_start=self.settings.window_start,
            window_seconds=self.settings.window_seconds,
            idle_seconds=self.settings.urgent_idle_seconds,
            online_within_seconds=self.settings.instant_online_seconds,
        )

    @staticmethod
    def _entry(plan: scheduling.DevicePlan, **changes: Any) -> PlanEntry:
        values: dict[str, Any] = {
            "device_uuid": plan.device_uuid,
            "device_name": plan.device_name,
            "timezone": plan.timezone,
            "gets_row": plan.gets_row,
            "install_at_utc": plan.install_at_utc,
            "install_at_local": plan.install_at_local,
            "reason": plan.reason,
        }
        values.update(changes)
        return PlanEntry(**values)

    def plan_new_update(
        self,
        update_type: UpdateType,
        version: str,
        targets: Sequence[uuid.UUID] | None,
        *,
        now: datetime,
    ) -> list[PlanEntry]:
        """Dry run: who would install ``version`` when, if published now.

        Raises:
            VersionError: ``version`` is not ``vX.Y.Z``.
            ConflictError: ``version`` is already published, or a higher
                version is.
            NotFoundError: a target is not registered.
        """
        parsed = Version.parse(version)
        try:
            existing = self.store.get_update_by_version(str(parsed))
        except NotFoundError:
            pass
        else:
            raise self._version_conflict(str(parsed), existing.id)
        self._refuse_lower_than_published(parsed)
        self.flush_soft_state()
        devices = self.store.devices_for_targets(
            None if targets is None else tuple(dict.fromkeys(targets))
        )
        return [self._entry(plan) for plan in self._rollout(update_type, str(parsed), devices, now)]

    def plan_published(self, reference: str | int, *, now: datetime) -> list[PlanEntry]:
        """Who installs a published update when, from its rows (and the rules for devices without one).

        Raises:
            NotFoundError, VersionError, InvalidRequestError: see :meth:`resolve_update`.
        """
        update = self.resolve_update(reference)
        self.flush_soft_state()
        if update.targets is None:
            devices = self.store.devices_for_targets(None)
        else:
            devices = self.store.devices_for_targets(update.targets)
        rows = {
            row.device_id: row for row in self.store.list_device_updates(update_id=update.id).items
        }
        by_uuid = {
            plan.device_uuid: plan
            for plan in self._rollout(update.update_type, update.version, devices, now)
        }
        entries: list[PlanEntry] = []
        for device in devices:
            plan = by_uuid[device.device_uuid]
            row = rows.get(device.id)
            if row is None:
                reason = plan.reason
                if plan.gets_row:
                    reason = f"no row yet: gets it at its next heartbeat; {reason}"
                entries.append(self._entry(plan, gets_row=False, reason=reason))
                continue
            if row.status is UpdateStatus.PENDING:
                current = scheduling.current_install_plan(
                    row.install_type,
                    row.scheduled_for,
                    row.window_end,
                    now=now,
                    timezone=device.timezone,
                    device_uuid=device.device_uuid,
                    window_start=self.settings.window_start,
                    window_seconds=self.settings.window_seconds,
                    idle_seconds=self.settings.urgent_idle_seconds,
                )
                at: datetime | None = current.install_at
                reason = current.reason
            else:
                at = row.completed_at or row.started_at
                reason = row.status.value + (f": {row.error_message}" if row.error_message else "")
            local = None if at is None else at.astimezone(ZoneInfo(device.timezone))
            entries.append(
                self._entry(
                    plan,
                    gets_row=True,
                    status=row.status,
                    install_at_utc=at,
                    install_at_local=local,
                    reason=reason,
                )
            )
        return entries
