"""Publishing: check a signed package, store its objects, write the update and its device rows.

A publish that fails after storing objects deletes them again (best effort,
logged if that fails too); it never deletes objects of another update.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from javia_core import scheduling
from javia_core.errors import BackendError, ConflictError, NotFoundError, PackageError
from javia_core.manifest import (
    MANIFEST_NAME,
    PAYLOAD_NAME,
    SIGNATURE_NAME,
    Manifest,
    Signature,
    check_description,
    verify_manifest,
)
from javia_core.models import UpdateOut, UpdateType, check_tags
from javia_core.rollouts import CANARY_TAG, RolloutPolicy, device_may_start, phase_of
from javia_core.versioning import Version
from javia_updates.backends.base import (
    AuditEntry,
    BlobStore,
    NewDeviceUpdate,
    NewRollout,
    NewUpdate,
    PublishTarget,
    Store,
    SupersededRow,
)
from javia_updates.delta_objects import DeltaObjects, store_delta_objects
from javia_updates.package_archive import sha256_of
from javia_updates.service import supersession, views
from javia_updates.service.common import (
    InvalidRequestError,
    check_version_range,
    version_or_none,
)
from javia_updates.service.records import FleetRecords
from javia_updates.service.rollouts import Rollouts, new_rollout
from javia_updates.settings import ServerSettings

__all__ = ["PackageUpload", "Publishing", "known_target_tags", "refuse_unpublishable"]


_publish_log = logging.getLogger("javia.server.publish")


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


def refuse_unpublishable(store: Store, text: str, version: Version) -> None:
    """Refuse a version that is published already, or lower than one that is.

    Versions only go up (DESIGN.md section 2): a rollback is a roll-forward.

    Args:
        store: the metadata store.
        text: the version as looked up (``vX.Y.Z``).
        version: the same version, parsed.

    Raises:
        ConflictError: ``text`` is already published, or a higher version is.
    """
    try:
        existing = store.get_update_by_version(text)
    except NotFoundError:
        pass
    else:
        raise ConflictError(
            f"version {text} is already published (update {existing.id}); publish a higher version"
        )
    higher = store.updates_newer_than((version.major, version.minor, version.patch))
    if higher:
        highest = higher[0].version
        raise ConflictError(
            f"{version} is lower than {highest}, already published: publish a higher "
            "version (a rollback is a roll-forward: republish the old content as a new version)"
        )


def known_target_tags(store: Store, tags: Sequence[str] | None) -> tuple[str, ...] | None:
    """A publish's ``tags``, checked, de-duplicated and sorted; None stays None.

    A tag no device carries is refused: it is more likely a typo than a tag
    meant for devices not yet tagged (docs/rollouts.md, "Tags").

    Raises:
        InvalidRequestError: an empty list, a malformed tag, more than
            ``MAX_TAGS``, or ``unknown tag kitchen: no device has it``.
    """
    if tags is None:
        return None
    if not tags:
        raise InvalidRequestError(
            "tags is empty: give comma-separated tags, or omit tags to target by uuid or everyone"
        )
    try:
        checked = check_tags(list(tags))
    except ValueError as error:
        raise InvalidRequestError(f"tags: {error}") from None
    in_use = store.tags_in_use(checked)
    for tag in checked:
        if tag not in in_use:
            raise InvalidRequestError(
                f"unknown tag {tag}: no device has it (tag devices first: "
                f"javia devices tag UUID --add {tag})"
            )
    return tuple(checked)


@dataclass(frozen=True, slots=True)
class _Target:
    """A targeted device with open rows, as supersession reads it (no full device record)."""

    id: int
    device_uuid: uuid.UUID
    timezone: str
    current_version: str | None
    tags: tuple[str, ...]


class Publishing:
    """The publish use case.

    Args:
        records: the store with its caches.
        blobs: where package objects are stored.
        settings: install window and the instant-update online limit.
        keyring: trusted public keys by key id, or None to check signatures
            for form only.
    """

    def __init__(
        self,
        records: FleetRecords,
        blobs: BlobStore,
        settings: ServerSettings,
        keyring: Mapping[str, Ed25519PublicKey] | None,
        rollouts: Rollouts,
    ) -> None:
        self.records = records
        self.store = records.store
        self.blobs = blobs
        self.settings = settings
        self.keyring = keyring
        self.rollouts = rollouts

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
        """See :meth:`javia_updates.service.UpdateService.publish_update`."""
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
            check_version_range(version)
            if update_type is not None and update_type is not manifest.update_type:
                raise PackageError(
                    f"update_type {update_type.value} was requested but the signed manifest says "
                    f"{manifest.update_type.value}: omit update_type, or sign a package of type "
                    f"{update_type.value}"
                )
            check_description(manifest.description)
            self._check_payload(manifest, upload, payload_path)
            if targets is not None and not targets:
                raise InvalidRequestError(
                    "targets is empty: give device uuids, or omit targets to update every device"
                )
            refuse_unpublishable(self.store, manifest.version, version)
            target_tags = known_target_tags(self.store, tags)
            unique_targets = None if targets is None else tuple(dict.fromkeys(targets))
            self.records.flush()  # "seen within 300 s" must count every heartbeat answered
            seen_since = None
            if manifest.update_type is UpdateType.INSTANT:
                seen_since = now - timedelta(seconds=self.settings.instant_online_seconds)
            devices = self.store.publish_targets(
                unique_targets, tags=target_tags, seen_since=seen_since
            )
            rows = self._rows_for_publish(manifest.update_type, version, devices, now)
            rollout = new_rollout(
                policy or RolloutPolicy(),
                manifest.update_type,
                self.settings.approval_required_types,
            )
            rows, superseded = self._supersede_at_publish(
                manifest.version, rows, devices, rollout, now
            )

            # A key of this publish alone (manifest digest + random suffix): a
            # failed publish deletes its objects and can never touch those of an
            # update published before or alongside it.
            key = (
                f"{manifest.version}/{hashlib.sha256(upload.manifest_bytes).hexdigest()[:16]}"
                f"-{secrets.token_hex(4)}"
            )
            delta = DeltaObjects()  # per-file objects for delta downloads (docs/architecture.md)
            try:
                self.blobs.put_bytes(key, MANIFEST_NAME, upload.manifest_bytes)
                self.blobs.put_bytes(key, SIGNATURE_NAME, upload.signature_bytes)
                delta = store_delta_objects(
                    self.blobs, key, payload_path, manifest, self._earlier_manifests(manifest)
                )
                self.blobs.put_file(key, PAYLOAD_NAME, payload_path)
            except BaseException:
                delta.discard(self.blobs)
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
                target_tags=target_tags,
            )
            try:
                update = self.store.create_update(
                    new_update,
                    rows,
                    now=now,
                    rollout=rollout,
                    superseded=superseded,
                    audit=AuditEntry(
                        actor,
                        "update.publish",
                        {
                            "version": manifest.version,
                            "update_type": manifest.update_type.value,
                            "devices": len(rows),
                            "superseded": len(superseded),
                            "rollout": {
                                "state": rollout.state.value,
                                "phases": list(rollout.phases),
                                "phase_soak_seconds": rollout.phase_soak_seconds,
                                "halt_failure_rate": rollout.halt_failure_rate,
                                "halt_min_devices": rollout.halt_min_devices,
                                "phase_approval": rollout.phase_approval,
                            },
                            "targets": None
                            if unique_targets is None
                            else [str(t) for t in unique_targets],
                            "target_tags": None if target_tags is None else list(target_tags),
                        },
                    ),
                )
            except BaseException:
                if self._discard_unless_used(manifest.version, key):
                    delta.discard(self.blobs)
                raise
        finally:
            payload_path.unlink(missing_ok=True)
        self.records.update_published()  # every device's next heartbeat sees the new update
        self.rollouts.evaluate(update, now)  # a phase without devices opens the next at once
        counts = self.store.status_counts([update.id])[update.id]
        out = views.update_out(update, counts)
        out.rollout = self.rollouts.view(update, now)
        return out

    def _earlier_manifests(self, manifest: Manifest) -> list[Manifest]:
        """Manifests of the same application's releases below ``manifest``, highest first.

        The patch bases of :func:`~javia_updates.delta_objects.store_delta_objects`
        (at most :data:`~javia_core.deltas.PATCH_BASE_RELEASES`).
        """
        from javia_core.deltas import PATCH_BASE_RELEASES

        version = manifest.parsed_version
        earlier: list[Manifest] = []
        for update in self.store.list_updates(limit=50, offset=0).items:
            if len(earlier) >= PATCH_BASE_RELEASES:
                break
            if update.app != manifest.app or Version.parse(update.version) >= version:
                continue
            try:
                documents = self.store.get_package_documents(update.id)
                earlier.append(Manifest.from_bytes(documents[0]))
            except (BackendError, ValueError):
                continue
        return earlier

    def _supersede_at_publish(
        self,
        version: str,
        rows: list[NewDeviceUpdate],
        targets: Sequence[PublishTarget],
        rollout: NewRollout,
        now: datetime,
    ) -> tuple[list[NewDeviceUpdate], list[SupersededRow]]:
        """The heartbeat's supersession, applied at publish (DESIGN.md section 4).

        A device whose new row may start at once (the new rollout's gate in
        its first phase) has its live pending rows superseded by it in the
        publish's own transaction, and the new row takes the most urgent
        timing among them (:func:`javia_core.scheduling.supersede`, the
        heartbeat's rule): an operator reading ``updates show`` or ``plan``
        right after publishing sees what the devices will do. Devices whose
        new row waits (approval, a later phase) keep their rows until their
        heartbeat, which applies the same rule.

        Returns:
            The rows to create (timings adopted) and the rows to supersede.
        """
        open_rows = supersession.open_rows(self.records, {row.device_id for row in rows})
        if not open_rows.by_device:
            return rows, []
        canaries = {device.id for device in self.store.devices_for_targets(None, [CANARY_TAG])}
        devices = {
            target.id: _Target(
                target.id,
                uuid.UUID(target.device_uuid),
                target.timezone,
                target.current_version,
                (CANARY_TAG,) if target.id in canaries else (),
            )
            for target in targets
            if target.id in open_rows.by_device
        }
        created: list[NewDeviceUpdate] = []
        superseded: list[SupersededRow] = []
        for row in rows:
            device = devices.get(row.device_id)
            if device is None:
                created.append(row)
                continue
            canary = CANARY_TAG in device.tags
            phase = phase_of(device.device_uuid, version, rollout.phases, canary=canary)
            live = open_rows.live(self.records, device)
            if not live or not device_may_start(rollout.state, phase, 0):
                created.append(row)
                continue
            candidate = supersession.ImaginedRow(
                version, row.install_type, row.scheduled_for, row.window_end
            )
            weighed: list[scheduling.SupersessionCandidate] = [*live, candidate]
            outcome = scheduling.supersede(weighed)
            if outcome.winner is not candidate:  # a higher version meanwhile: the heartbeat decides
                created.append(row)
                continue
            if outcome.inherited:
                plan = supersession.winner_plan(outcome, self.settings, device, now=now)
                row = NewDeviceUpdate(
                    row.device_id, outcome.timing, plan.install_at, plan.window_end
                )
            created.append(row)
            superseded.extend(SupersededRow(old.id, f"superseded by {version}") for old in live)
        return created, superseded

    def _discard_unless_used(self, version: str, key: str) -> bool:
        """After a failed database write: delete this publish's objects unless it was recorded.

        The write may have committed although it reported a failure (a
        connection lost during COMMIT); then the row names ``key`` and the
        objects stay. When the database cannot tell, they stay too, with a log
        line: an update without its objects would be worse than a leftover.
        Returns whether they were deleted.
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
            return False
        if not recorded:
            self._discard_objects(version, key)
        return not recorded

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
                sha256, size = sha256_of(payload_path)
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
                running = version_or_none(device.current_version)
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
