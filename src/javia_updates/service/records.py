"""The fleet's stored records as the use cases see them, with the performance plumbing behind them.

:class:`FleetRecords` wraps the metadata store together with the heartbeat
path's in-memory caches (:mod:`javia_updates.backends.cache`), the batched
writer of heartbeat soft state (:mod:`javia_updates.backends.soft_state`) and
the cache of package documents. The rule modules ask it for a device, its
rows or the newest update meant for it, and write a device's rows through it
(:meth:`FleetRecords.add_row`, :meth:`FleetRecords.transition_row`,
:meth:`FleetRecords.reschedule_row`); which answer comes from memory, when the
cache is dropped, when soft state is written and whether a write may happen
at all (:meth:`FleetRecords.without_writes`, the event loop's heartbeat) is
decided here alone, so a rule reads as plain reads and writes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

from javia_core.models import UpdateStatus, UpdateType
from javia_core.rollouts import CANARY_TAG
from javia_core.versioning import Version
from javia_updates.backends.base import (
    AuditEntry,
    DeviceRecord,
    DeviceUpdateRecord,
    DeviceWithRows,
    HeartbeatWrite,
    NewDeviceUpdate,
    Store,
    TransitionResult,
    UpdateRecord,
)
from javia_updates.backends.cache import CATALOG_MAX_AGE_SECONDS, DeviceCache, UpdateCatalog
from javia_updates.backends.soft_state import SoftStateWriter
from javia_updates.service.common import DOCUMENT_CACHE_SIZE, WriteNeeded
from javia_updates.settings import ServerSettings

__all__ = ["FleetRecords"]

#: True while the caller answers without database writes (:meth:`FleetRecords.without_writes`).
_READ_ONLY: ContextVar[bool] = ContextVar("javia_read_only_answer", default=False)


@dataclass(frozen=True, slots=True)
class _RowsReadWithDevice:
    """The rows read in the transaction that authenticated this call's device."""

    found: DeviceWithRows
    generation: int
    row_changes: int
    records: FleetRecords  # the records that read them: never another service's


#: Set by :meth:`FleetRecords.device_by_token_hash` when it read the device from
#: the store: its rows, for this call's :meth:`FleetRecords.device_rows` (a context
#: variable, so it holds for this request only, the device cache on or off).
_ROWS_READ_WITH_DEVICE: ContextVar[_RowsReadWithDevice | None] = ContextVar(
    "javia_rows_read_with_device", default=None
)


class FleetRecords:
    """The store, read through the device cache and update catalog, with batched soft state.

    Args:
        store: the metadata store.
        settings: ``device_cache_seconds`` and ``heartbeat_flush_seconds``.

    Attributes:
        store: the metadata store, for the writes the rules make.
        cache: devices by token hash and their rows (:class:`DeviceCache`).
        catalog: the published updates (:class:`UpdateCatalog`).
        soft_state: the batched writer of heartbeat soft state.
    """

    def __init__(self, store: Store, settings: ServerSettings) -> None:
        self.store = store
        self.cache = DeviceCache(settings.device_cache_seconds)
        self.catalog = UpdateCatalog(
            store.update_ids,
            store.get_update,
            max_age_seconds=CATALOG_MAX_AGE_SECONDS,
            load_rollouts=store.list_rollouts,
        )
        self.soft_state = SoftStateWriter(
            store.record_heartbeats, flush_seconds=settings.heartbeat_flush_seconds
        )
        self._documents: dict[int, tuple[bytes, bytes]] = {}
        self._documents_lock = threading.Lock()

    # ------------------------------------------------------------------ soft state
    def start(self) -> None:
        """Start the batched writes of heartbeat soft state."""
        self.soft_state.start()

    def close(self) -> None:
        """Write the soft state still queued and stop the writer.

        Raises:
            BackendError: that final write failed.
        """
        self.soft_state.close()

    def flush(self) -> None:
        """Write queued soft state now, so reads see every heartbeat answered so far.

        Raises:
            BackendError: the write failed.
        """
        self.soft_state.flush()

    def record_heartbeat(self, device: DeviceRecord, now: datetime) -> None:
        """Queue ``device``'s soft state as of its heartbeat at ``now`` and cache the device.

        Written at most ``heartbeat_flush_seconds`` later (a crash loses at
        most that much, which the device sends again).
        """
        self.soft_state.record(
            HeartbeatWrite(device.id, now, device.current_version, device.status, device.metadata)
        )
        self.cache.refresh_device(device)

    # ------------------------------------------------------------------ devices
    def device_by_token_hash(self, token_hash: str) -> DeviceRecord | None:
        """The device whose token hashes to ``token_hash``: from the cache when possible.

        On a database that other processes write too (``store.exclusive``
        False: replicas, or workers of one server), a cached device is
        confirmed with one indexed query
        (:meth:`~javia_updates.backends.base.Store.confirm_device`): its
        token, and whether its cached update rows are still the database's.
        A device that is not cached (with the cache off: every device) is
        read together with its update rows in one transaction
        (:meth:`~javia_updates.backends.base.Store.find_device_with_rows`);
        :meth:`device_rows` of the same request uses those rows unless rows
        changed since or the update catalog moved on.

        Raises:
            BackendError: the database cannot be read.
        """
        device = self.cache.device(token_hash)
        if device is not None and not self.store.exclusive:
            mark = self.store.confirm_device(device.id, token_hash)
            if mark is None:
                self.cache.forget(device.id)
                device = None
            else:
                self.cache.confirm_rows(device.id, mark)
        if device is None:
            # The device and its rows in one read transaction; taken before
            # it, the catalog's generation and the cache's count of row
            # changes say later whether the rows may still be used.
            generation = self.catalog.generation
            row_changes = self.cache.row_changes
            found = self.store.find_device_with_rows(token_hash)
            if found is None:
                return None
            device = found.device
            self.cache.put_device_with_rows(token_hash, found, generation, row_changes)
            _ROWS_READ_WITH_DEVICE.set(_RowsReadWithDevice(found, generation, row_changes, self))
        return device

    def cached_device(self, token_hash: str) -> DeviceRecord | None:
        """The cached device for ``token_hash`` (no I/O); None if other replicas write the store."""
        if not self.store.exclusive:
            return None
        return self.cache.device(token_hash)

    def token_replaced(self, device: DeviceRecord) -> None:
        """``device``'s token was revoked or rotated: forget what is cached of it."""
        self.cache.forget(device.id)

    def tags_changed(self, device: DeviceRecord) -> None:
        """``device``'s tags changed: forget it, so its next heartbeat reads them (and joins)."""
        self.cache.forget(device.id)

    # ------------------------------------------------------------------ rows
    def device_rows(self, device: DeviceRecord) -> list[DeviceUpdateRecord]:
        """All update rows of ``device``, from the cache if fresh."""
        generation = self.catalog.current_generation()
        rows = self.cache.rows(device.id, generation)
        if rows is None:
            rows = self._rows_read_with(device, generation)
        if rows is None:
            epoch = self.cache.rows_epoch(device.id)
            rows = self.store.list_device_updates(device_id=device.id).items
            self.cache.put_rows(device.id, generation, rows, epoch)
        return rows

    def _rows_read_with(
        self, device: DeviceRecord, generation: int
    ) -> list[DeviceUpdateRecord] | None:
        """The rows read with ``device`` in this call, if nothing changed rows since (else None)."""
        read = _ROWS_READ_WITH_DEVICE.get()
        if (
            read is None
            or read.records is not self
            or read.found.device.id != device.id
            or read.generation != generation
            or read.row_changes != self.cache.row_changes
        ):
            return None
        return read.found.rows

    def device_update(self, device: DeviceRecord, update_id: int) -> DeviceUpdateRecord:
        """The row of ``device`` for ``update_id``: from the cached rows, else the store.

        A cached row's status may lag behind another replica's write by the
        cache's lifetime; callers use it only to find the row (status changes
        are conditional in the store).

        Raises:
            NotFoundError: the device has no row for that update.
        """
        for row in self.device_rows(device):
            if row.update_id == update_id:
                return row
        return self.store.get_device_update(device.id, update_id)

    # ------------------------------------------------------------------ row writes
    @contextmanager
    def without_writes(self) -> Iterator[None]:
        """Within this block a row write raises :class:`WriteNeeded` before touching anything.

        The event loop answers the ordinary heartbeat this way (no thread hop);
        a heartbeat that must reconcile, supersede or re-plan a row is answered
        again off the event loop. A context variable, so it holds for this
        call only, whatever else runs on the loop or in threads.
        """
        token = _READ_ONLY.set(True)
        try:
            yield
        finally:
            _READ_ONLY.reset(token)

    def _rows_changing(self, device: DeviceRecord) -> None:
        if _READ_ONLY.get():
            raise WriteNeeded
        self.cache.forget_rows(device.id)

    def add_row(
        self,
        device: DeviceRecord,
        update_id: int,
        row: NewDeviceUpdate,
        *,
        now: datetime,
        audit: AuditEntry,
    ) -> None:
        """Create ``device``'s row for ``update_id`` (:meth:`Store.add_device_update`).

        Raises:
            WriteNeeded: inside :meth:`without_writes`.
        """
        self._rows_changing(device)
        self.store.add_device_update(update_id, row, now=now, audit=audit)

    def transition_row(
        self,
        device: DeviceRecord,
        row_id: int,
        status: UpdateStatus,
        *,
        now: datetime,
        error_message: str | None,
        audit: AuditEntry,
    ) -> TransitionResult:
        """Move ``device``'s row ``row_id`` to ``status`` (:meth:`Store.transition`).

        Raises:
            WriteNeeded: inside :meth:`without_writes`.
        """
        self._rows_changing(device)
        return self.store.transition(
            row_id, status, now=now, error_message=error_message, audit=audit
        )

    def record_regression(
        self, device: DeviceRecord, row: DeviceUpdateRecord, reason: str, *, now: datetime
    ) -> bool:
        """Record a post-install regression on ``device``'s completed ``row`` (:meth:`Store.record_regression`).

        Returns:
            True if it was recorded now (False: not completed, or recorded before).

        Raises:
            WriteNeeded: inside :meth:`without_writes`.
        """
        self._rows_changing(device)
        return self.store.record_regression(
            row.id,
            reason,
            now=now,
            audit=AuditEntry(
                "server",
                "device_update.regressed",
                {
                    "device_uuid": str(device.device_uuid),
                    "update_id": row.update_id,
                    "version": row.version,
                    "reason": reason,
                },
            ),
        )

    def reschedule_row(
        self,
        device: DeviceRecord,
        row_id: int,
        *,
        install_type: UpdateType,
        scheduled_for: datetime,
        window_end: datetime | None,
        now: datetime,
    ) -> bool:
        """Re-plan ``device``'s pending row ``row_id`` (:meth:`Store.reschedule`).

        Returns:
            True if the row was still pending and was re-planned.

        Raises:
            WriteNeeded: inside :meth:`without_writes`.
        """
        self._rows_changing(device)
        return self.store.reschedule(
            row_id,
            install_type=install_type,
            scheduled_for=scheduled_for,
            window_end=window_end,
            now=now,
        )

    def row_reported(self, device: DeviceRecord, result: TransitionResult) -> None:
        """A device's status report was applied to the store (``result``): cache it."""
        if result.changed:
            self.cache.replace_row(result.record)
            if result.record.status is UpdateStatus.COMPLETED:
                self.cache.raise_version(device.id, result.record.version, result.record.updated_at)

    # ------------------------------------------------------------------ updates
    def newest_targeting(
        self, device: DeviceRecord, running: Version | None
    ) -> UpdateRecord | None:
        """The newest published update that targets ``device`` and is newer than ``running``."""
        numbers = None if running is None else (running.major, running.minor, running.patch)
        return self.catalog.newest_targeting(device.device_uuid, numbers, device.tags)

    def update(self, update_id: int) -> UpdateRecord:
        """The published update ``update_id``, from the catalog if it has it.

        Raises:
            NotFoundError: no such update.
        """
        cached = self.catalog.get(update_id)
        return cached if cached is not None else self.store.get_update(update_id)

    def update_published(self) -> None:
        """An update was published: every device's next heartbeat must see it."""
        self.catalog.invalidate()

    def rollout_changed(self, *, rows: bool = False) -> None:
        """A rollout changed on this replica: the next heartbeat's offer gate must see it.

        ``rows``: the change rewrote device rows too (a cancel): drop every cached row.
        """
        self.catalog.invalidate(rows=rows)

    def may_start(self, device: DeviceRecord, update_id: int) -> bool:
        """The offer gate: may ``device`` start ``update_id`` now (docs/rollouts.md)? No I/O."""
        return self.catalog.may_start(
            update_id, device.device_uuid, canary=CANARY_TAG in device.tags
        )

    def package_documents(self, update_id: int) -> tuple[bytes, bytes]:
        """The exact stored ``manifest.json`` and ``manifest.sig`` bytes of ``update_id``.

        Kept in memory for the most recent :data:`DOCUMENT_CACHE_SIZE` updates
        asked for: an update never changes once published, and every device
        of a rollout fetches the same two documents.
        """
        documents = self._documents.get(update_id)
        if documents is None:
            documents = self.store.get_package_documents(update_id)
            with self._documents_lock:
                self._documents[update_id] = documents
                while len(self._documents) > DOCUMENT_CACHE_SIZE:
                    del self._documents[next(iter(self._documents))]
        return documents
