"""Status reports: a device's progress on one update, moved only forward.

The store applies the forward-only rule
(:data:`javia_core.status_rules.ALLOWED_PREVIOUS`); a repeated or late
report is answered with the stored status and ``changed=False`` (see
:mod:`javia_updates.service`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from javia_core.failures import FailureDetails
from javia_core.models import RolloutState, StatusReport, StatusReportResult, UpdateStatus
from javia_updates.backends.base import (
    AuditEntry,
    DeviceRecord,
    DeviceUpdateRecord,
    TransitionResult,
)
from javia_updates.service.records import FleetRecords

__all__ = ["AUDITED_TAIL_CHARS", "FINISHED", "StatusReports", "audited_failure"]

#: Characters of each output tail the audit line (and so the ``device.failed``
#: / ``device.rolled_back`` webhook event) carries: the last ones. The whole
#: failure stays on the device's row (``javia devices show --json``).
AUDITED_TAIL_CHARS = 2000

#: A report moving a row here finishes it: its rollout is evaluated at once.
FINISHED = frozenset({UpdateStatus.COMPLETED, UpdateStatus.FAILED, UpdateStatus.ROLLED_BACK})
_SETTLED = frozenset({RolloutState.HALTED, RolloutState.CANCELLED})


def audited_failure(failure: FailureDetails) -> dict[str, Any]:
    """``failure`` as the audit line and its webhook event carry it (docs/webhooks.md).

    Every field of :class:`~javia_core.failures.FailureDetails` as JSON, with
    ``output_tail`` and ``health_output_tail`` cut to their last
    :data:`AUDITED_TAIL_CHARS` characters, so one event stays a few kB while a
    stored failure may be 64 KiB compressed.
    """
    carried = failure.model_dump(mode="json")
    for name in ("output_tail", "health_output_tail"):
        tail = carried.get(name)
        if isinstance(tail, str) and len(tail) > AUDITED_TAIL_CHARS:
            carried[name] = tail[-AUDITED_TAIL_CHARS:]
    return carried


class StatusReports:
    """The status-report use case, blocking and on the event loop.

    Args:
        records: the store with its caches.
        finished: called with the update id and ``now`` after a report moved a
            row to a final status (its rollout is evaluated: a halt lands within
            that report); None: nothing.
    """

    def __init__(
        self,
        records: FleetRecords,
        *,
        finished: Callable[[int, datetime], None] | None = None,
    ) -> None:
        self.records = records
        self.store = records.store
        self.finished = finished

    def report_status(
        self, device: DeviceRecord, update_id: int, report: StatusReport, *, now: datetime
    ) -> StatusReportResult:
        """See :meth:`javia_updates.service.UpdateService.report_status`."""
        row = self.records.device_update(device, update_id)
        result = self.store.transition(
            row.id, report.status, **self._status_change(device, row, report, now)
        )
        reported = self._status_reported(device, update_id, result)
        if self._finishes(result):
            assert self.finished is not None
            self.finished(update_id, now)
        return reported

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
        reported = self._status_reported(device, update_id, result)
        if self._finishes(result):
            assert self.finished is not None
            await asyncio.to_thread(self.finished, update_id, now)
        return reported

    def _finishes(self, result: TransitionResult) -> bool:
        """Whether the report finished a row of a rollout that evaluation may still move."""
        if self.finished is None or not result.changed or result.record.status not in FINISHED:
            return False
        rollout = self.records.catalog.rollout(result.record.update_id)
        return rollout is None or rollout.state not in _SETTLED

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
                **(
                    {
                        "failure_class": report.failure.failure_class.value,
                        "failure": audited_failure(report.failure),
                    }
                    if report.failure is not None
                    else {}
                ),
            },
        )
        failure = None if report.failure is None else report.failure.model_dump(mode="json")
        return {
            "now": now,
            "error_message": report.error_message,
            "audit": audit,
            "failure": failure,
        }

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
