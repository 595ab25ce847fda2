"""What a revert rolls forward to: the affected devices and their last healthy release.

``javia updates revert VERSION`` (docs/rollouts.md, "Revert") asks the server
for the *revert source* of a bad release; the operator's machine then re-signs
that healthy release's content as a new, higher version. The rule, pure in
:func:`affected_devices`, :func:`previous_release` and
:func:`choose_healthy_release`:

* **affected devices**: devices that report the bad version as their current
  one, plus devices whose row for it is in flight (``downloading`` or
  ``installing``: they are about to run it). Devices that have not installed
  it (``pending``, or ``staged`` ahead of the window, or ``retrying`` a
  transient fault) are not affected: cancelling the bad rollout ends their
  rows, and the device deletes what it prepared (docs/rollouts.md, "Device
  statuses").
* a device's **previous release**: the highest published version below the bad
  one that the device *completed* (a ``completed`` row with no post-install
  regression recorded) and whose rollout was not withdrawn (``halted`` or
  ``cancelled``).
* the **healthy release**: the previous release of the most affected devices;
  among equally common ones, the highest version. A fleet whose devices went
  v1.0.0 → v1.1.0 → v1.2.0 (bad) reverts to v1.1.0 even though v1.0.0
  completed on more of them; a device whose own previous release differs
  (v1.1.0 failed there) gets the fleet's healthy content too. Devices with no
  previous release (they came with the bad version) do not vote, but they are
  still targeted.

No affected device, or no affected device with a previous release: a
:class:`~javia_core.errors.ConflictError` (API 409) with one line. So is a
bad release whose affected devices all already have a **newer release** on
its way or installed (a row ``pending``, in flight, ``staged``, ``retrying`` or ``completed`` of a higher
version whose rollout is neither halted nor cancelled,
:func:`superseding_release`): a revert that already happened, or a fix
published since. Running ``revert`` twice, or two operators at once, then
publishes one new version, not two.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from javia_core.errors import ConflictError
from javia_core.models import RevertSource, RolloutState, UpdateStatus
from javia_core.status_rules import IN_FLIGHT_STATUSES
from javia_core.versioning import Version
from javia_updates.backends.base import DeviceQuery, UpdateRecord
from javia_updates.service.records import FleetRecords
from javia_updates.service.updates import Updates

__all__ = [
    "IN_FLIGHT",
    "WITHDRAWN_STATES",
    "Release",
    "RevertSources",
    "affected_devices",
    "choose_healthy_release",
    "previous_release",
    "superseding_release",
]

#: Row statuses of the bad update that make a device affected although it does not run it
#: yet: the rows the revert's cancel cannot end. ``pending``, ``staged`` and ``retrying``
#: rows are not here: the cancel ends them before anything is installed
#: (:data:`~javia_core.rollouts.statuses.STOPPED_BY_CANCEL`), and the device deletes
#: a staged release at its next heartbeat.
IN_FLIGHT = IN_FLIGHT_STATUSES
#: Row statuses of a newer update that mean the device has it on its way or installed
#: (a release staged ahead of its window, or retried after a transient fault, included).
ON_ITS_WAY = frozenset(
    {
        UpdateStatus.PENDING,
        UpdateStatus.DOWNLOADING,
        UpdateStatus.STAGED,
        UpdateStatus.RETRYING,
        UpdateStatus.INSTALLING,
        UpdateStatus.COMPLETED,
    }
)
#: Rollout states whose release is never chosen as the healthy one.
WITHDRAWN_STATES = frozenset({RolloutState.HALTED, RolloutState.CANCELLED})

_PAGE = 1000


@dataclass(frozen=True, slots=True, order=True)
class Release:
    """A published release: its version (ordered first) and its update id."""

    version: Version
    update_id: int


def affected_devices(
    running: Iterable[uuid.UUID], bad_rows: Iterable[tuple[uuid.UUID, UpdateStatus]]
) -> list[uuid.UUID]:
    """The devices a revert targets, sorted.

    Args:
        running: devices whose current version is the bad one.
        bad_rows: ``(device, status)`` of every row of the bad update.

    Returns:
        ``running`` plus the devices whose row is in flight (:data:`IN_FLIGHT`),
        each once, in uuid order.
    """
    affected = set(running)
    affected.update(device for device, status in bad_rows if status in IN_FLIGHT)
    return sorted(affected)


def previous_release(
    bad_version: Version, completed: Iterable[Release], withdrawn: Collection[int]
) -> Release | None:
    """The highest release below ``bad_version`` among ``completed`` not in ``withdrawn``.

    Args:
        bad_version: the version being reverted.
        completed: releases one device completed.
        withdrawn: update ids whose rollout is halted or cancelled.
    """
    candidates = [
        release
        for release in completed
        if release.version < bad_version and release.update_id not in withdrawn
    ]
    return max(candidates, default=None)


def choose_healthy_release(
    bad_version: Version,
    completed_by_device: Mapping[uuid.UUID, Collection[Release]],
    withdrawn: Collection[int],
) -> Release:
    """The release whose content a revert of ``bad_version`` republishes (module docstring).

    Args:
        bad_version: the version being reverted.
        completed_by_device: for each affected device, the releases it completed
            (any version; those at or above ``bad_version`` are ignored).
        withdrawn: update ids whose rollout is halted or cancelled.

    Returns:
        The previous release of the most devices; the highest among ties.

    Raises:
        ConflictError: no affected device, or none completed an earlier release
            that is not withdrawn.
    """
    if not completed_by_device:
        raise ConflictError(
            f"no device runs or is installing {bad_version}: nothing to revert "
            f"(to stop its rollout: javia updates cancel {bad_version})"
        )
    votes = Counter(
        release
        for completed in completed_by_device.values()
        if (release := previous_release(bad_version, completed, withdrawn)) is not None
    )
    if not votes:
        raise ConflictError(f"no earlier release completed on the devices running {bad_version}")
    return max(votes, key=lambda release: (votes[release], release))


def superseding_release(
    affected: Collection[uuid.UUID], newer: Iterable[tuple[Release, Collection[uuid.UUID]]]
) -> Release | None:
    """The newer release that already replaces the bad one on every affected device, if any.

    Args:
        affected: the devices a revert would target (:func:`affected_devices`).
        newer: each release above the bad one whose rollout is neither halted
            nor cancelled, with the devices that have it on its way or
            installed (rows :data:`ON_ITS_WAY`).

    Returns:
        None when some affected device has no such release (a revert still
        helps it) or nothing is affected; else the highest release that covers
        an affected device (a revert done before, or a fix published since).
    """
    covered: set[uuid.UUID] = set()
    covering: list[Release] = []
    for release, devices in newer:
        held = set(devices) & set(affected)
        if held:
            covered |= held
            covering.append(release)
    if not affected or not set(affected) <= covered:
        return None
    return max(covering)


class RevertSources:
    """The store reads behind :func:`choose_healthy_release`.

    Args:
        records: the store with its caches.
        updates: update lookup by id or version.
    """

    def __init__(self, records: FleetRecords, updates: Updates) -> None:
        self.records = records
        self.store = records.store
        self.updates = updates

    def revert_source(self, reference: str | int) -> RevertSource:
        """See :meth:`javia_updates.service.UpdateService.revert_source`."""
        bad = self.updates.resolve_update(reference)
        bad_version = Version.parse(bad.version)
        self.records.flush()  # current versions as of every heartbeat answered so far
        running = self._devices_running(bad.version)
        bad_rows = self.store.list_device_updates(update_id=bad.id).items
        affected = affected_devices(running, ((row.device_uuid, row.status) for row in bad_rows))
        updates = self._updates()
        earlier = [u for u in updates if Version.parse(u.version) < bad_version]
        self._refuse_superseded(
            bad,
            affected,
            [u for u in updates if u.id != bad.id and Version.parse(u.version) > bad_version],
        )
        completed: dict[uuid.UUID, list[Release]] = {device: [] for device in affected}
        for update in earlier:
            release = Release(Version.parse(update.version), update.id)
            rows = self.store.list_device_updates(
                update_id=update.id, status=UpdateStatus.COMPLETED
            )
            for row in rows.items:
                if row.device_uuid in completed and row.regressed_at is None:
                    completed[row.device_uuid].append(release)
        withdrawn = self._withdrawn([update.id for update in earlier])
        healthy = choose_healthy_release(bad_version, completed, withdrawn)
        return RevertSource(
            bad_version=bad.version,
            healthy_version=str(healthy.version),
            healthy_update_id=healthy.update_id,
            devices=affected,
        )

    def _devices_running(self, version: str) -> list[uuid.UUID]:
        query = DeviceQuery(current_version=version)
        devices: list[uuid.UUID] = []
        while True:
            page = self.store.list_devices(query, limit=_PAGE, offset=len(devices))
            devices.extend(device.device_uuid for device in page.items)
            if len(page.items) < _PAGE:
                return devices

    def _updates(self) -> list[UpdateRecord]:
        updates: list[UpdateRecord] = []
        while True:
            page = self.store.list_updates(limit=_PAGE, offset=len(updates))
            updates.extend(page.items)
            if len(page.items) < _PAGE:
                return updates

    def _refuse_superseded(
        self, bad: UpdateRecord, affected: Collection[uuid.UUID], newer: Sequence[UpdateRecord]
    ) -> None:
        """ConflictError when a newer release already reaches every affected device."""
        withdrawn = self._withdrawn([update.id for update in newer])
        candidates = []
        for update in newer:
            if update.id in withdrawn:
                continue
            rows = self.store.list_device_updates(update_id=update.id).items
            devices = {row.device_uuid for row in rows if row.status in ON_ITS_WAY}
            candidates.append((Release(Version.parse(update.version), update.id), devices))
        found = superseding_release(affected, candidates)
        if found is None:
            return
        published = next(u for u in newer if u.id == found.update_id).created_at
        raise ConflictError(
            f"{bad.version} was already reverted/superseded by {found.version} (published "
            f"{published:%Y-%m-%d %H:%M} UTC): follow it with javia updates show {found.version}"
        )

    def _withdrawn(self, update_ids: Sequence[int]) -> set[int]:
        if not update_ids:
            return set()
        rollouts = self.store.list_rollouts(update_ids)
        return {
            update_id
            for update_id, rollout in rollouts.items()
            if rollout.state in WITHDRAWN_STATES
        }
