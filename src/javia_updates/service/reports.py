"""Status reports: a device's progress on one update, moved only forward.

The store applies the forward-only rule
(:data:`javia_core.status_rules.ALLOWED_PREVIOUS`); a repeated or late
report is answered with the stored status and ``changed=False`` (see
:mod:`javia_updates.service`).
"""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime
from typing import Any

from javia_core.models import StatusReport, StatusReportResult
from javia_updates.backends.base import (
    AuditEntry,
    DeviceRecord,
    DeviceUpdateRecord,
    TransitionResult,
)
from javia_updates.service.records import FleetRecords

__all__ = ["StatusReports"]


class StatusReports:
    """The status-report use case, blocking and on the event loop.

    Args:
        records: the store with its caches.
    """

    def __init__(self, records: FleetRecords) -> None:
        self.records = records
        self.store = records.store

    def report_status(
        self, device: DeviceRecord, update_id: int, report: StatusReport, *, now: datetime
    ) -> StatusReportResult:
        """See :meth:`javia_updates.service.UpdateService.report_status`."""
        row = self.records.device_update(device, update_id)
        result = self.store.transition(
            row.id, report.status, **self._status_change(device, row, report, now)
        )
        return self._status_reported(device, update_id, result)

    async def report_status_async(
        self, device: DeviceRecord, update_id: int, report: StatusReport, *, now: datetime
    ) -> StatusReportResult:
        """See :meth:`javia_updates.service.UpdateService.report_status_async`."""
        if not self.store.local_reads:
            return await asyncio.to_thread(
                functools.partial(self.report_status, device, update_id, report, now=now)
            )
        row = self.records.device_update(device, update_id)
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
        self.records.row_reported(device, result)
        return StatusReportResult(
            update_id=update_id,
            device_uuid=device.device_uuid,
            status=result.record.status,
            changed=result.changed,
        )
