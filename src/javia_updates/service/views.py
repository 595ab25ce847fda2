"""Wire views: stored records (:mod:`javia_updates.backends.base`) as API models.

The operator's and the device's view of a record, and the one derived value
they carry, a device's ``offline`` status (:func:`derive_status`). No I/O.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel

from javia_core import scheduling
from javia_core.input_rules import sanitize_json
from javia_core.models import (
    DeviceOut,
    DeviceRegistered,
    DeviceStatus,
    DeviceUpdateOut,
    EnrollmentTokenOut,
    PlanEntry,
    UpdateOut,
)
from javia_updates.backends.base import (
    DeviceRecord,
    DeviceUpdateRecord,
    EnrollmentTokenRecord,
    UpdateRecord,
)
from javia_updates.service.common import API_PREFIX, OFFLINE_AFTER_INTERVALS

M = TypeVar("M", bound=BaseModel)

__all__ = [
    "derive_status",
    "device_out",
    "device_registered",
    "device_update_out",
    "enrollment_out",
    "from_record",
    "offline_before",
    "plan_entry",
    "update_out",
]


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


def offline_before(now: datetime, heartbeat_interval_seconds: float) -> datetime:
    """Devices last seen before this instant are shown offline (see :func:`derive_status`)."""
    return now - timedelta(seconds=OFFLINE_AFTER_INTERVALS * heartbeat_interval_seconds)


def from_record(model: type[M], record: object, **values: Any) -> M:
    """``model`` built from ``record``: each field the record has an attribute for, by name.

    The one converter from stored records to wire models: a field named in
    ``values`` takes that value instead (a derived or renamed one); a field
    the record lacks keeps its default or must be in ``values``.

    Raises:
        pydantic.ValidationError: a required field has no value, or a value
            does not fit the model (a programming error).
    """
    for name in model.model_fields:
        if name not in values and hasattr(record, name):
            values[name] = getattr(record, name)
    return model(**values)


def device_out(
    device: DeviceRecord, *, now: datetime, heartbeat_interval_seconds: float
) -> DeviceOut:
    """The operator's view of ``device`` with its derived status."""
    return from_record(
        DeviceOut,
        device,
        status=derive_status(
            device, now=now, heartbeat_interval_seconds=heartbeat_interval_seconds
        ),
        # Rows stored before the input rules existed may hold JSON no
        # answer can carry (lone surrogates, 256-deep lists): shown cleaned.
        metadata=sanitize_json(device.metadata),
    )


def device_registered(device: DeviceRecord, token: str) -> DeviceRegistered:
    """The answer to a registration or rotation: the device and its new ``token``."""
    return from_record(DeviceRegistered, device, device_token=token)


def update_out(update: UpdateRecord, counts: dict[str, int]) -> UpdateOut:
    """The operator's view of ``update`` with its per-status device ``counts``."""
    return from_record(
        UpdateOut,
        update,
        # The record's package_url is the blob key; operators get the download path.
        package_url=f"{API_PREFIX}/updates/{update.id}/download",
        size=update.archive_size,
        status_counts=counts,
    )


def device_update_out(row: DeviceUpdateRecord) -> DeviceUpdateOut:
    """One device's progress row on one update (with its failure, if it was read)."""
    from javia_updates.service.failures import stored_failure

    out = DeviceUpdateOut.model_validate(replace(row, failure=None), from_attributes=True)
    if row.failure is not None:
        out.failure = stored_failure(row.failure)
    return out


def enrollment_out(record: EnrollmentTokenRecord, now: datetime) -> EnrollmentTokenOut:
    """An enrollment token (never the token itself) and whether it is usable at ``now``."""
    return from_record(
        EnrollmentTokenOut,
        record,
        usable=record.revoked_at is None
        and record.uses < record.max_uses
        and now < record.expires_at,
    )


def plan_entry(plan: scheduling.DevicePlan, **changes: Any) -> PlanEntry:
    """One line of a rollout plan; ``changes`` override the planned values."""
    return from_record(PlanEntry, plan, **changes)
