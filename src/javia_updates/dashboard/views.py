"""What the dashboard's JSON endpoints answer, read through :class:`UpdateService`.

Each function returns plain JSON-ready dicts built from the API's wire models
(``javia_core.models``), so the dashboard shows exactly what ``javia devices``
and ``javia updates`` show, fields added on other branches included.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from javia_core.models import DeviceStatus, RolloutOut, UpdateStatus
from javia_core.rollouts import TRANSITIONS, Effect, RolloutEvent
from javia_updates.service import UpdateService

__all__ = [
    "DASHBOARD_COMMANDS",
    "device_detail",
    "fleet_overview",
    "rollout_actions",
    "rollout_detail",
]

#: The rollout commands the dashboard offers (docs/rollouts.md, states).
DASHBOARD_COMMANDS = (
    RolloutEvent.APPROVE,
    RolloutEvent.PAUSE,
    RolloutEvent.RESUME,
    RolloutEvent.CANCEL,
)
#: Updates shown on the overview, newest first; their versions are counted on the fleet.
OVERVIEW_UPDATES = 20
#: Devices listed on the overview (the counts cover the whole fleet).
OVERVIEW_DEVICES = 200
#: Device rows listed on a rollout's page.
ROLLOUT_DEVICES = 500
#: History rows listed on a device's page.
DEVICE_HISTORY = 100


def rollout_actions(rollout: RolloutOut | None) -> list[str]:
    """The commands that would change ``rollout`` now, in :data:`DASHBOARD_COMMANDS` order.

    From the state table (:data:`javia_core.rollouts.TRANSITIONS`): a refused
    or no-op move is not offered; ``approve`` of an active rollout only when its
    open phase waits for approval. No rollout: nothing.
    """
    if rollout is None:
        return []
    offered = []
    for command in DASHBOARD_COMMANDS:
        move = TRANSITIONS[(rollout.state, command)]
        if move.effect in (Effect.REFUSE, Effect.STAY):
            continue
        if move.effect is Effect.APPROVE_PHASE and not rollout.awaiting_phase_approval:
            continue
        offered.append(command.value)
    return offered


def _update_json(service: UpdateService, reference: str | int, now: datetime) -> dict[str, Any]:
    update = service.get_update(reference, now=now)
    body = update.model_dump(mode="json")
    body["actions"] = rollout_actions(update.rollout)
    return body


def fleet_overview(
    service: UpdateService,
    *,
    now: datetime,
    status: DeviceStatus | None = None,
    tag: str | None = None,
) -> dict[str, Any]:
    """The fleet page: counts by derived status, devices per recent version, devices, rollouts.

    Counts are one counting query each (``limit=1``), so the page stays cheap
    on a large fleet; ``versions`` counts the devices on each of the
    :data:`OVERVIEW_UPDATES` newest published versions, the rest as ``other``.

    Raises:
        InvalidRequestError: ``tag`` is not a valid tag.
    """
    total = service.list_devices(now=now, limit=1).total
    counts = {"total": total}
    for each in DeviceStatus:
        counts[each.value] = service.list_devices(now=now, status=each, limit=1).total
    updates = service.list_updates(limit=OVERVIEW_UPDATES, now=now)
    versions: list[dict[str, Any]] = []
    counted = 0
    for update in updates.items:
        on_version = service.list_devices(now=now, version=update.version, limit=1).total
        versions.append({"version": update.version, "devices": on_version})
        counted += on_version
    devices = service.list_devices(now=now, status=status, tag=tag, limit=OVERVIEW_DEVICES)
    rollouts = []
    for update in updates.items:
        body = update.model_dump(mode="json")
        body["actions"] = rollout_actions(update.rollout)
        rollouts.append(body)
    return {
        "server_time": now.isoformat(),
        "counts": counts,
        "versions": versions,
        "other_versions": max(total - counted, 0),
        "devices": {
            "items": [device.model_dump(mode="json") for device in devices.items],
            "total": devices.total,
        },
        "updates": rollouts,
        "updates_total": updates.total,
    }


def rollout_detail(
    service: UpdateService,
    reference: str,
    *,
    now: datetime,
    status: UpdateStatus | None = None,
) -> dict[str, Any]:
    """A rollout's page: the update with its rollout and offered actions, and its device rows.

    Raises:
        NotFoundError, VersionError, InvalidRequestError: no such update (see
        :meth:`UpdateService.resolve_update`).
    """
    update = _update_json(service, reference, now)
    rows = service.update_devices(reference, status=status, limit=ROLLOUT_DEVICES)
    return {
        "server_time": now.isoformat(),
        "update": update,
        "devices": {
            "items": [row.model_dump(mode="json") for row in rows.items],
            "total": rows.total,
        },
    }


def device_detail(
    service: UpdateService, device_uuid: uuid.UUID, *, now: datetime
) -> dict[str, Any]:
    """A device's page: the device and its update history (failures included).

    Raises:
        NotFoundError: the device is not registered.
    """
    device = service.get_device(device_uuid, now=now)
    history = service.device_history(device_uuid, limit=DEVICE_HISTORY)
    return {
        "server_time": now.isoformat(),
        "device": device.model_dump(mode="json"),
        "history": {
            "items": [row.model_dump(mode="json") for row in history.items],
            "total": history.total,
        },
    }
