"""In-memory read caches of the heartbeat path (issue 7, "Benchmarks").

A heartbeat needs the device behind a token, the device's update rows and
the list of published updates. :class:`DeviceCache` keeps the first two per
device and :class:`UpdateCatalog` the third, so a steady stream of
heartbeats is answered from memory.

Consistency: every write this server process makes through
:class:`~javia_updates.service.UpdateService` updates or drops the affected
entries at once (a token rotated or revoked, a status report, a publish, a
reconciliation), so one server never answers from stale data. Writes made
elsewhere — another worker process of ``javia server --workers``, another
server replica on the same PostgreSQL database, or a script on the
database — are seen after at most ``ttl_seconds`` (the
``device_cache_seconds`` setting; 0 turns the device cache off); the ids
of the published updates are checked at least every second. Two things are
the exception: on a database other processes write too, the service
confirms a cached device with the database at every request
(:meth:`~javia_updates.backends.store.Store.confirm_device`, one indexed
query): its token, so a revocation or rotation made through any process
holds at once everywhere, and the count and sum of its update rows'
revisions, so rows another process changed (a status report, a cancel) are
reloaded before they are used (:meth:`DeviceCache.confirm_rows`).
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from javia_core.models import RolloutState
from javia_core.rollouts import device_may_start, phase_of
from javia_core.rollouts.targeting import is_targeted
from javia_core.status_rules import raises_version
from javia_core.versioning import Version
from javia_updates.backends.base import (
    DeviceRecord,
    DeviceUpdateRecord,
    DeviceWithRows,
    RolloutRecord,
    UpdateRecord,
)

__all__ = [
    "CATALOG_MAX_AGE_SECONDS",
    "PHASE_MEMO_SIZE",
    "DeviceCache",
    "UpdateCatalog",
]

#: The update list is reloaded at least this often, in seconds.
CATALOG_MAX_AGE_SECONDS = 1.0
#: Devices' phases kept per catalog (update, device) before the memo starts over.
PHASE_MEMO_SIZE = 200_000
#: Rollouts that offer nothing to devices without a row yet (reconciliation skips them).
_CLOSED_ROLLOUTS = frozenset({RolloutState.HALTED, RolloutState.CANCELLED})


_epochs = itertools.count(1)


@dataclass
class _Entry:
    token_hash: str
    device: DeviceRecord
    expires: float
    rows: list[DeviceUpdateRecord] | None = None
    rows_generation: int = -1
    # Changes whenever the rows are dropped, so rows read before a write
    # cannot be stored after it (see DeviceCache.rows_epoch).
    epoch: int = 0
    # The database's (rows, revisions) of the device when last confirmed
    # (DeviceCache.confirm_rows); None: never confirmed.
    rows_mark: tuple[int, int] | None = None


class DeviceCache:
    """Devices by token hash, and each device's update rows, for at most ``ttl_seconds``.

    Args:
        ttl_seconds: how long an entry is trusted, in seconds; 0 caches nothing.
        clock: monotonic seconds (injectable for tests).

    Thread-safe.
    """

    def __init__(self, ttl_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._by_token: dict[str, _Entry] = {}
        self._by_id: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._row_changes = 0

    @property
    def row_changes(self) -> int:
        """How many times any device's rows were dropped or replaced so far, cached or not.

        Take before reading a device's rows together with the device (no id
        known yet, so no :meth:`rows_epoch`); rows read under another count
        may predate a write and are not used (:meth:`put_device_with_rows`).
        """
        return self._row_changes

    @property
    def enabled(self) -> bool:
        """Whether anything is cached at all."""
        return self.ttl_seconds > 0

    def _live(self, entry: _Entry | None) -> _Entry | None:
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._drop(entry)
            return None
        return entry

    def _drop(self, entry: _Entry) -> None:
        if self._by_token.get(entry.token_hash) is entry:
            del self._by_token[entry.token_hash]
        if self._by_id.get(entry.device.id) is entry:
            del self._by_id[entry.device.id]

    def device(self, token_hash: str) -> DeviceRecord | None:
        """The cached device holding the token with this SHA-256 hex, or None (not cached)."""
        with self._lock:
            entry = self._live(self._by_token.get(token_hash))
            return None if entry is None else entry.device

    def put_device(self, token_hash: str, device: DeviceRecord) -> None:
        """Cache ``device`` as the holder of ``token_hash`` (replacing what was there)."""
        if not self.enabled:
            return
        with self._lock:
            old = self._by_id.get(device.id)
            if old is not None:
                self._drop(old)
            entry = _Entry(
                token_hash, device, self._clock() + self.ttl_seconds, epoch=next(_epochs)
            )
            self._by_token[token_hash] = entry
            self._by_id[device.id] = entry

    def put_device_with_rows(
        self, token_hash: str, found: DeviceWithRows, generation: int, row_changes: int
    ) -> None:
        """Cache ``found.device`` as :meth:`put_device` does, and its rows with it.

        The rows count as read under catalog ``generation`` and confirmed at
        ``found.rows_mark``; they are kept only if no rows changed since
        ``row_changes`` (:attr:`row_changes`, taken before the read).
        """
        if not self.enabled:
            return
        self.put_device(token_hash, found.device)
        with self._lock:
            entry = self._by_id.get(found.device.id)
            if entry is not None and self._row_changes == row_changes:
                entry.rows = found.rows
                entry.rows_generation = generation
                entry.rows_mark = found.rows_mark

    def refresh_device(self, device: DeviceRecord) -> None:
        """Replace a cached device's record (its new soft state), keeping token, rows and tags.

        Soft state never changes tags: the cached entry's tags (read after
        any tag change, which drops the entry) win over ``device``'s.
        """
        with self._lock:
            entry = self._by_id.get(device.id)
            if entry is not None:
                if device.tags != entry.device.tags:
                    device = replace(device, tags=entry.device.tags)
                entry.device = device

    def rows(self, device_id: int, generation: int) -> list[DeviceUpdateRecord] | None:
        """The device's cached update rows if loaded under catalog ``generation``, else None."""
        with self._lock:
            entry = self._live(self._by_id.get(device_id))
            if entry is None or entry.rows is None or entry.rows_generation != generation:
                return None
            return entry.rows

    def rows_epoch(self, device_id: int) -> int:
        """Take before reading the device's rows from the store; give to :meth:`put_rows`."""
        with self._lock:
            entry = self._by_id.get(device_id)
            return 0 if entry is None else entry.epoch

    def put_rows(
        self, device_id: int, generation: int, rows: list[DeviceUpdateRecord], epoch: int
    ) -> None:
        """Cache the device's update rows, read under catalog ``generation``.

        Ignored if the rows were dropped since ``epoch`` was taken (a write
        happened while they were read).
        """
        with self._lock:
            entry = self._by_id.get(device_id)
            if entry is not None and entry.epoch == epoch:
                entry.rows = rows
                entry.rows_generation = generation

    def confirm_rows(self, device_id: int, mark: tuple[int, int]) -> None:
        """The database says the device's rows stand at ``mark`` (``Store.confirm_device``).

        If the cached rows were confirmed under another mark (another process
        wrote them since, or this one did), they are dropped, and rows read
        before this call can no longer be stored; rows read after it are at
        least as new as ``mark``.
        """
        with self._lock:
            entry = self._by_id.get(device_id)
            if entry is not None and entry.rows_mark != mark:
                self._row_changes += 1
                entry.rows = None
                entry.epoch = next(_epochs)
                entry.rows_mark = mark

    def raise_version(self, device_id: int, version: str, now: datetime) -> None:
        """A completed update raised the device's version (the store's rule, :func:`raises_version`)."""
        with self._lock:
            entry = self._by_id.get(device_id)
            if entry is not None and raises_version(entry.device.current_version, version):
                entry.device = replace(entry.device, current_version=version, updated_at=now)

    def replace_row(self, row: DeviceUpdateRecord) -> None:
        """Put ``row``, as just committed by this process, in place of its cached copy.

        Rows read before this call can no longer be stored (as after
        :meth:`forget_rows`); a device without cached rows is left alone.
        """
        with self._lock:
            self._row_changes += 1
            entry = self._by_id.get(row.device_id)
            if entry is None:
                return
            entry.epoch = next(_epochs)
            if entry.rows is not None:
                entry.rows = [row if cached.id == row.id else cached for cached in entry.rows]

    def forget_rows(self, device_id: int) -> None:
        """Drop the device's cached rows (they changed)."""
        with self._lock:
            self._row_changes += 1
            entry = self._by_id.get(device_id)
            if entry is not None:
                entry.rows = None
                entry.epoch = next(_epochs)

    def forget(self, device_id: int) -> None:
        """Drop everything cached about the device (its token changed, say)."""
        with self._lock:
            self._row_changes += 1
            entry = self._by_id.get(device_id)
            if entry is not None:
                self._drop(entry)

    def clear(self) -> None:
        """Drop everything."""
        with self._lock:
            self._row_changes += 1
            self._by_token.clear()
            self._by_id.clear()


@dataclass(frozen=True)
class _Published:
    record: UpdateRecord
    numbers: tuple[int, int, int]
    targets: frozenset[uuid.UUID] | None
    target_tags: frozenset[str] | None


class UpdateCatalog:
    """Every published update, highest version first, checked when older than its limit.

    Args:
        load_ids: the ids of every published update (a cheap query).
        load_update: one update by id (updates never change once published).
        max_age_seconds: check the ids again when the copy is older than this,
            in seconds; 0 checks at every use.
        clock: monotonic seconds (injectable for tests).

    :attr:`generation` changes whenever a check finds another set of updates,
    so row caches keyed by it are dropped when an update is published by any
    server. Thread-safe.
    """

    def __init__(
        self,
        load_ids: Callable[[], list[int]],
        load_update: Callable[[int], UpdateRecord],
        *,
        max_age_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        load_rollouts: Callable[[], Mapping[int, RolloutRecord]] | None = None,
    ) -> None:
        self._load_ids = load_ids
        self._load_update = load_update
        self._load_rollouts = load_rollouts
        self._rollouts: Mapping[int, RolloutRecord] = {}
        self._phases: dict[tuple[int, uuid.UUID, bool], int] = {}
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._updates: list[_Published] = []
        self._checked_at: float | None = None
        self.generation = 0
        self._lock = threading.Lock()

    def invalidate(self, *, rows: bool = False) -> None:
        """Check the ids and rollouts at the next use (this process published or changed one).

        ``rows``: device rows changed too (a rollout was cancelled): a new
        :attr:`generation` drops every row cached under the old one.
        """
        with self._lock:
            self._checked_at = None
            if rows:
                self.generation += 1

    def _current(self) -> list[_Published]:
        with self._lock:
            fresh = (
                self._checked_at is not None
                and self.max_age_seconds > 0
                and self._clock() - self._checked_at < self.max_age_seconds
            )
            if fresh:
                return self._updates
            known = {update.record.id: update for update in self._updates}
        ids = set(self._load_ids())
        if self._load_rollouts is not None:
            rollouts = self._load_rollouts()
            with self._lock:
                self._rollouts = rollouts
        if ids == set(known):
            with self._lock:
                self._checked_at = self._clock()
                return self._updates
        updates = [known[update_id] for update_id in ids if update_id in known]
        for update_id in ids - set(known):
            record = self._load_update(update_id)
            version = Version.parse(record.version)
            targets = None if record.targets is None else frozenset(record.targets)
            target_tags = None if record.target_tags is None else frozenset(record.target_tags)
            updates.append(
                _Published(
                    record, (version.major, version.minor, version.patch), targets, target_tags
                )
            )
        updates.sort(key=lambda update: update.numbers, reverse=True)
        with self._lock:
            self._updates = updates
            self._checked_at = self._clock()
            self.generation += 1
            return updates

    def current_generation(self) -> int:
        """The generation, after checking the ids if the copy is old enough."""
        self._current()
        return self.generation

    def get(self, update_id: int) -> UpdateRecord | None:
        """The published update ``update_id`` if the current copy holds it (no I/O), else None.

        Updates never change once published, so a held record is never stale;
        one published since the last check is not held yet (the caller reads
        the store).
        """
        for update in self._updates:
            if update.record.id == update_id:
                return update.record
        return None

    def newest_targeting(
        self,
        device_uuid: uuid.UUID,
        running: tuple[int, int, int] | None,
        tags: tuple[str, ...] = (),
    ) -> UpdateRecord | None:
        """The highest update newer than ``running`` that targets the device, or None.

        Targeted by uuid, by one of the device's ``tags``, or as every device
        (:func:`~javia_core.rollouts.targeting.is_targeted`): O(updates) set
        lookups, no I/O beyond the catalog's own check of the ids.
        """
        for update in self._current():
            if running is not None and update.numbers <= running:
                return None  # highest first: nothing newer follows
            rollout = self._rollouts.get(update.record.id)
            if rollout is not None and rollout.state in _CLOSED_ROLLOUTS:
                continue  # halted or cancelled: offers nothing; a lower one may
            if is_targeted(update.targets, update.target_tags, device_uuid, tags):
                return update.record
        return None

    def rollout(self, update_id: int) -> RolloutRecord | None:
        """The rollout of ``update_id`` as of the last check (no I/O), None if it has none."""
        return self._rollouts.get(update_id)

    def may_start(self, update_id: int, device_uuid: uuid.UUID, *, canary: bool = False) -> bool:
        """Whether a device that has not started ``update_id`` may be offered it now (O(1), no I/O).

        The offer gate of docs/rollouts.md (:func:`device_may_start`) over the
        rollout as of the last check (at most :data:`CATALOG_MAX_AGE_SECONDS`
        old, at once after a change on this replica). An update without a
        rollout row behaves as an active rollout of one phase. The device's
        phase (a SHA-256, :func:`phase_of`) is hashed only when the phase
        matters and is kept per (update, device, canary); ``canary``: the device
        carries the ``canary`` tag (phase 0, :data:`~javia_core.rollouts.CANARY_TAG`).
        """
        rollout = self._rollouts.get(update_id)
        if rollout is None or rollout.state is RolloutState.COMPLETED:
            return True
        if rollout.state is not RolloutState.ACTIVE:
            return False
        if rollout.phase_index == len(rollout.phases) - 1:
            return True  # every phase is open
        return device_may_start(
            rollout.state,
            self.phase(update_id, device_uuid, rollout, canary=canary),
            rollout.phase_index,
        )

    def phase(
        self, update_id: int, device_uuid: uuid.UUID, rollout: RolloutRecord, *, canary: bool
    ) -> int:
        """The device's phase in ``rollout`` (:func:`phase_of` over the update's version), memoised.

        ``canary``: the device carries the ``canary`` tag (always phase 0); part
        of the memo's key, so tagging a device later moves it at once.
        """
        key = (update_id, device_uuid, canary)
        found = self._phases.get(key)
        if found is None:
            version = next(
                (u.record.version for u in self._updates if u.record.id == update_id), None
            )
            if version is None:
                version = self._load_update(update_id).version
            found = phase_of(device_uuid, version, rollout.phases, canary=canary)
            if len(self._phases) >= PHASE_MEMO_SIZE:
                self._phases.clear()
            self._phases[key] = found
        return found
