"""What the dashboard's JSON endpoints answer, read through :class:`UpdateService`.

Each function returns plain JSON-ready dicts built from the API's wire models
(``javia_core.models``), so the dashboard shows exactly what ``javia devices``
and ``javia updates`` show, fields added on other branches included.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from javia_core.models import DeviceStatus, RolloutOut, RolloutState, UpdateStatus
from javia_core.rollouts import TRANSITIONS, Effect, RolloutEvent
from javia_updates.backends.base import RolloutRecord
from javia_updates.service import UpdateService
from javia_updates.service.views import update_out

__all__ = [
    "DASHBOARD_COMMANDS",
    "actions_for",
    "device_detail",
    "fleet_overview",
    "recent_updates",
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
    return actions_for(rollout.state, awaiting_phase_approval=rollout.awaiting_phase_approval)


def actions_for(state: RolloutState, *, awaiting_phase_approval: bool) -> list[str]:
    """:func:`rollout_actions` from a rollout's state and whether its open phase waits."""
    offered = []
    for command in DASHBOARD_COMMANDS:
        move = TRANSITIONS[(state, command)]
        if move.effect in (Effect.REFUSE, Effect.STAY):
            continue
        if move.effect is Effect.APPROVE_PHASE and not awaiting_phase_approval:
            continue
        offered.append(command.value)
    return offered


def _rollout_summary(record: RolloutRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "state": record.state.value,
        "phase": record.phase_index,
        "phases": list(record.phases),
        "awaiting_phase_approval": record.awaiting_phase_approval,
        "halt_reason": record.halt_reason,
    }


def recent_updates(service: UpdateService, *, limit: int) -> tuple[list[dict[str, Any]], int]:
    """The ``limit`` newest updates with per-status counts, rollout state and phase, and actions;
    and how many updates there are.

    Three queries whatever the fleet's size (the updates, one grouped count of
    their rows, their rollouts): the overview is polled, so it leaves out the
    per-phase counts and cohort health of :meth:`UpdateService.get_update`,
    which read one row per device (the rollout page shows them for one update).
    """
    store = service.store
    page = store.list_updates(limit=limit, offset=0)
    ids = [update.id for update in page.items]
    counts = store.status_counts(ids)
    rollouts = store.list_rollouts(ids)
    items = []
    for update in page.items:
        body = update_out(update, counts.get(update.id, {})).model_dump(mode="json")
        record = rollouts.get(update.id)
        body["rollout"] = _rollout_summary(record)
        body["actions"] = (
            []
            if record is None
            else actions_for(record.state, awaiting_phase_approval=record.awaiting_phase_approval)
        )
        items.append(body)
    return items, page.total


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

    Counts are one counting query each (``limit=1``), the updates come from
    :func:`recent_updates`, so the page stays cheap on a large fleet;
    ``versions`` counts the devices on each of the :data:`OVERVIEW_UPDATES`
    newest published versions, the rest as ``other``.

    Raises:
        InvalidRequestError: ``tag`` is not a valid tag.
    """
    total = service.list_devices(now=now, limit=1).total
    counts = {"total": total}
    for each in DeviceStatus:
        counts[each.value] = service.list_devices(now=now, status=each, limit=1).total
    updates, updates_total = recent_updates(service, limit=OVERVIEW_UPDATES)
    versions: list[dict[str, Any]] = []
    counted = 0
    for update in updates:
        on_version = service.list_devices(now=now, version=update["version"], limit=1).total
        versions.append({"version": update["version"], "devices": on_version})
        counted += on_version
    devices = service.list_devices(now=now, status=status, tag=tag, limit=OVERVIEW_DEVICES)
    return {
        "server_time": now.isoformat(),
        "counts": counts,
        "versions": versions,
        "other_versions": max(total - counted, 0),
        "devices": {
            "items": [device.model_dump(mode="json") for device in devices.items],
            "total": devices.total,
        },
        "updates": updates,
        "updates_total": updates_total,
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
