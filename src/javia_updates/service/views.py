"""Wire views: stored records (:mod:`javia_updates.backends.base`) as API models.

The operator's and the device's view of a record, and the one derived value
they carry, a device's ``offline`` status (:func:`derive_status`). No I/O.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from javia_updates import scheduling
from javia_updates.backends.base import (
    DeviceRecord,
    DeviceUpdateRecord,
    EnrollmentTokenRecord,
    UpdateRecord,
)
from javia_updates.input_rules import sanitize_json
from javia_updates.models import (
    DeviceOut,
    DeviceRegistered,
    DeviceStatus,
    DeviceUpdateOut,
    EnrollmentTokenOut,
    PlanEntry,
    UpdateOut,
)
from javia_updates.service.common import API_PREFIX, OFFLINE_AFTER_INTERVALS

__all__ = [
    "derive_status",
    "device_out",
    "device_registered",
    "device_update_out",
    "enrollment_out",
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


def device_out(
    device: DeviceRecord, *, now: datetime, heartbeat_interval_seconds: float
) -> DeviceOut:
    """The operator's view of ``device`` with its derived status."""
    return DeviceOut(
        id=device.id,
        device_uuid=device.device_uuid,
        device_name=device.device_name,
        registered_at=device.registered_at,
        last_seen=device.last_seen,
        current_version=device.current_version,
        timezone=device.timezone,
        status=derive_status(
            device, now=now, heartbeat_interval_seconds=heartbeat_interval_seconds
        ),
        # Rows stored before the input rules existed may hold JSON no
        # answer can carry (lone surrogates, 256-deep lists): shown cleaned.
        metadata=sanitize_json(device.metadata),
        created_at=device.created_at,
        updated_at=device.updated_at,
        token_revoked_at=device.token_revoked_at,
    )


def device_registered(device: DeviceRecord, token: str) -> DeviceRegistered:
    """The answer to a registration or rotation: the device and its new ``token``."""
    return DeviceRegistered(
        device_uuid=device.device_uuid,
        device_token=token,
        device_name=device.device_name,
        timezone=device.timezone,
        registered_at=device.registered_at,
    )


def update_out(update: UpdateRecord, counts: dict[str, int]) -> UpdateOut:
    """The operator's view of ``update`` with its per-status device ``counts``."""
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


def device_update_out(row: DeviceUpdateRecord) -> DeviceUpdateOut:
    """One device's progress row on one update."""
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


def enrollment_out(record: EnrollmentTokenRecord, now: datetime) -> EnrollmentTokenOut:
    """An enrollment token (never the token itself) and whether it is usable at ``now``."""
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


def plan_entry(plan: scheduling.DevicePlan, **changes: Any) -> PlanEntry:
    """One line of a rollout plan; ``changes`` override the planned values."""
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
