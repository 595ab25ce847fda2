"""Why devices failed an update: the rows' failures grouped by cause (issue 15).

``javia updates failures VERSION`` and ``GET /api/v1/updates/{update}/failures``:
every ``failed`` and ``rolled_back`` row of the update, grouped by
:func:`javia_core.failures.cause_of` (class + normalised reason and last output
line), so a thousand failures collapse into the handful of distinct causes,
each with its count and the latest device that hit it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from javia_core.failures import FailureDetails, FailureGroup, FailureGroupsOut, cause_of
from javia_core.models import UpdateStatus
from javia_updates.backends.records import DeviceUpdateRecord, UpdateRecord
from javia_updates.backends.store import Store

__all__ = ["FAILED_STATUSES", "failure_groups", "stored_failure"]

logger = logging.getLogger(__name__)

#: The statuses whose rows are grouped.
FAILED_STATUSES = (UpdateStatus.FAILED, UpdateStatus.ROLLED_BACK)


def stored_failure(value: dict[str, Any] | None) -> FailureDetails | None:
    """A stored failure as the model (validated on the way in; None if it no longer parses)."""
    if value is None:
        return None
    try:
        return FailureDetails.model_validate(value)
    except ValidationError:
        logger.warning("a stored failure does not parse any more; shown without it")
        return None


@dataclass
class _Group:
    rows: list[tuple[DeviceUpdateRecord, FailureDetails | None]] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)


def failure_groups(store: Store, update: UpdateRecord) -> FailureGroupsOut:
    """``update``'s failed and rolled back rows grouped by cause, most devices first.

    Ties are ordered by class and cause, so the answer is stable.
    """
    groups: dict[tuple[str, str], _Group] = {}
    total = 0
    for status in FAILED_STATUSES:
        rows = store.list_device_updates(update_id=update.id, status=status, with_failure=True)
        for row in rows.items:
            failure = stored_failure(row.failure)
            if failure is None:
                key = cause_of(None, row.error_message)
            else:
                tail = failure.output_tail or failure.health_output_tail
                key = cause_of(failure.failure_class.value, failure.reason, tail)
            group = groups.setdefault(key, _Group())
            group.rows.append((row, failure))
            group.statuses[status.value] = group.statuses.get(status.value, 0) + 1
            total += 1
    out = []
    for (failure_class, cause), group in groups.items():
        row, failure = max(group.rows, key=lambda item: (item[0].updated_at, item[0].device_id))
        out.append(
            FailureGroup(
                failure_class=failure_class,
                cause=cause,
                count=len(group.rows),
                statuses=group.statuses,
                example_device_uuid=str(row.device_uuid),
                example_device_name=row.device_name,
                example_reason=failure.reason if failure is not None else row.error_message,
                example=failure,
                last_reported_at=row.updated_at.isoformat(),
            )
        )
    out.sort(key=lambda group: (-group.count, group.failure_class, group.cause))
    return FailureGroupsOut(update_id=update.id, version=update.version, total=total, groups=out)
