"""Published updates as operators and devices read them: lookup, listings, package downloads."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from javia_core.addresses import AddressError, parse_update_reference
from javia_core.errors import NotFoundError
from javia_core.manifest import PAYLOAD_NAME
from javia_core.models import DeviceUpdateOut, UpdateOut, UpdateStatus, UpdateType
from javia_core.versioning import Version
from javia_updates.backends.base import BlobStore, DeviceRecord, Page, UpdateRecord
from javia_updates.service import views
from javia_updates.service.common import (
    MAX_DATABASE_INTEGER,
    DamagedPackageError,
    InvalidRequestError,
)
from javia_updates.service.records import FleetRecords
from javia_updates.service.rollouts import Rollouts

__all__ = ["Updates"]


class Updates:
    """Reads of published updates and their packages.

    Args:
        records: the store with its caches.
        blobs: the blob store holding the packages.
        rollouts: the rollouts, for the ``rollout`` of every update view.
    """

    def __init__(self, records: FleetRecords, blobs: BlobStore, rollouts: Rollouts) -> None:
        self.records = records
        self.store = records.store
        self.blobs = blobs
        self.rollouts = rollouts

    def resolve_update(self, reference: str | int) -> UpdateRecord:
        """See :meth:`javia_updates.service.UpdateService.resolve_update`."""
        if isinstance(reference, int):
            update_id = reference
        else:
            try:
                parsed = parse_update_reference(reference)
            except AddressError as error:
                raise InvalidRequestError(str(error)) from None
            if isinstance(parsed, Version):
                return self.store.get_update_by_version(str(parsed))
            update_id = parsed
        if not 1 <= update_id <= MAX_DATABASE_INTEGER:
            raise NotFoundError(f"update {update_id} does not exist")
        return self.records.update(update_id)

    def get_update(self, reference: str | int, *, now: datetime | None = None) -> UpdateOut:
        """See :meth:`javia_updates.service.UpdateService.get_update`."""
        update = self.resolve_update(reference)
        return self.update_out(update, self.store.status_counts([update.id])[update.id], now)

    def update_out(
        self, update: UpdateRecord, counts: dict[str, int], now: datetime | None
    ) -> UpdateOut:
        """The operator's view of ``update``, with its rollout."""
        out = views.update_out(update, counts)
        out.rollout = self.rollouts.view(update, now or datetime.now(UTC))
        return out

    def list_updates(
        self,
        *,
        update_type: UpdateType | None = None,
        limit: int = 100,
        offset: int = 0,
        now: datetime | None = None,
    ) -> Page[UpdateOut]:
        """See :meth:`javia_updates.service.UpdateService.list_updates`."""
        page = self.store.list_updates(limit=limit, offset=offset, update_type=update_type)
        counts = self.store.status_counts([update.id for update in page.items])
        return Page(
            [self.update_out(update, counts[update.id], now) for update in page.items], page.total
        )

    def update_devices(
        self,
        reference: str | int,
        *,
        status: UpdateStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> Page[DeviceUpdateOut]:
        """See :meth:`javia_updates.service.UpdateService.update_devices`."""
        update = self.resolve_update(reference)
        page = self.store.list_device_updates(
            update_id=update.id, status=status, limit=limit, offset=offset, with_failure=True
        )
        return Page([views.device_update_out(row) for row in page.items], page.total)

    def device_may_read(self, device: DeviceRecord, update_id: int) -> bool:
        """See :meth:`javia_updates.service.UpdateService.device_may_read`."""
        try:
            self.records.device_update(device, update_id)
        except NotFoundError:
            return False
        return True

    def package_documents(self, update: UpdateRecord) -> tuple[bytes, bytes]:
        """See :meth:`javia_updates.service.UpdateService.package_documents`."""
        return self.records.package_documents(update.id)

    def payload_range(self, update: UpdateRecord, start: int, end: int) -> Iterator[bytes]:
        """See :meth:`javia_updates.service.UpdateService.payload_range`."""
        stored = self.blobs.size(update.package_url, PAYLOAD_NAME)
        if stored != update.archive_size:
            raise DamagedPackageError(
                f"package object for {update.version} is damaged: {stored} bytes stored, "
                f"{update.archive_size} expected; republish it"
            )
        return self.blobs.iter_range(update.package_url, PAYLOAD_NAME, start, end)

    def upload_dir(self) -> Path:
        """See :meth:`javia_updates.service.UpdateService.upload_dir`."""
        return self.blobs.upload_dir()
