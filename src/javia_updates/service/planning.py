"""Rollout plans: who would install an update when (a dry run), or will, from its rows.

An update that names devices (by uuid or tag) plans every registered device:
those it does not target appear with ``gets_row`` False and the reason they
are out ("not tagged kitchen or beta"); those it targets say why they are in
("tagged kitchen; ...", "listed by uuid; ...").

A published update in phases gives each targeted device its phase
(:func:`javia_core.rollouts.phase_of`, a ``canary``-tagged device first), and a
pending device whose phase is not open yet says so (docs/rollouts.md, Phases).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from javia_core import scheduling
from javia_core.models import PlanEntry, RolloutState, UpdateStatus, UpdateType
from javia_core.rollouts import CANARY_TAG, phase_of
from javia_core.rollouts.targeting import targeting_reason
from javia_core.versioning import Version
from javia_updates.backends.base import DeviceRecord
from javia_updates.backends.records import RolloutRecord
from javia_updates.service import views
from javia_updates.service.publishing import known_target_tags, refuse_unpublishable
from javia_updates.service.records import FleetRecords
from javia_updates.service.updates import Updates
from javia_updates.settings import ServerSettings

__all__ = ["Planning"]


class Planning:
    """The plan use cases.

    Args:
        records: the store with its caches.
        updates: to resolve an update reference.
        settings: install window, idle seconds, instant-update online limit.
    """

    def __init__(self, records: FleetRecords, updates: Updates, settings: ServerSettings) -> None:
        self.records = records
        self.store = records.store
        self.updates = updates
        self.settings = settings

    def plan_new_update(
        self,
        update_type: UpdateType,
        version: str,
        targets: Sequence[uuid.UUID] | None,
        *,
        now: datetime,
        tags: Sequence[str] | None = None,
    ) -> list[PlanEntry]:
        """See :meth:`javia_updates.service.UpdateService.plan_new_update`."""
        parsed = Version.parse(version)
        refuse_unpublishable(self.store, str(parsed), parsed)
        target_tags = known_target_tags(self.store, tags)
        self.records.flush()
        unique = None if targets is None else tuple(dict.fromkeys(targets))
        devices = self.store.devices_for_targets(unique, target_tags)  # unknown uuids: NotFound
        if unique is None and target_tags is None:
            return [
                views.plan_entry(plan)
                for plan in self._rollout(update_type, str(parsed), devices, now)
            ]
        devices = self.store.devices_for_targets(None)
        entries = []
        for device, plan in zip(
            devices, self._rollout(update_type, str(parsed), devices, now), strict=True
        ):
            targeted, why = targeting_reason(unique, target_tags, device.device_uuid, device.tags)
            if targeted:
                entries.append(views.plan_entry(plan, reason=f"{why}; {plan.reason}"))
            else:
                entries.append(_left_out(plan, why))
        return entries

    def plan_published(self, reference: str | int, *, now: datetime) -> list[PlanEntry]:
        """See :meth:`javia_updates.service.UpdateService.plan_published`."""
        update = self.updates.resolve_update(reference)
        self.records.flush()
        devices = self.store.devices_for_targets(None)
        everyone = update.targets is None and update.target_tags is None
        rows = {
            row.device_id: row for row in self.store.list_device_updates(update_id=update.id).items
        }
        by_uuid = {
            plan.device_uuid: plan
            for plan in self._rollout(update.update_type, update.version, devices, now)
        }
        rollout = self.store.get_rollout(update.id)
        phased = rollout is not None and len(rollout.phases) > 1
        entries: list[PlanEntry] = []
        for device in devices:
            plan = by_uuid[device.device_uuid]
            row = rows.get(device.id)
            targeted, why = targeting_reason(
                update.targets, update.target_tags, device.device_uuid, device.tags
            )
            if row is None and not targeted:
                entries.append(_left_out(plan, why))
                continue
            prefix = "" if everyone else f"{why}; "
            phase = None
            if rollout is not None and phased:
                phase = phase_of(
                    device.device_uuid,
                    update.version,
                    rollout.phases,
                    canary=CANARY_TAG in device.tags,
                )
                prefix += _phase_note(
                    rollout, phase, pending=row is None or row.status is UpdateStatus.PENDING
                )
            if row is None:
                reason = plan.reason
                if plan.gets_row:
                    reason = f"no row yet: gets it at its next heartbeat; {reason}"
                entries.append(
                    views.plan_entry(plan, gets_row=False, reason=prefix + reason, phase=phase)
                )
                continue
            if row.status is UpdateStatus.PENDING:
                current = scheduling.current_install_plan(
                    row.install_type,
                    row.scheduled_for,
                    row.window_end,
                    now=now,
                    timezone=device.timezone,
                    device_uuid=device.device_uuid,
                    window_start=self.settings.window_start,
                    window_seconds=self.settings.window_seconds,
                    idle_seconds=self.settings.urgent_idle_seconds,
                )
                at: datetime | None = current.install_at
                reason = current.reason
            else:
                at = row.completed_at or row.started_at
                reason = row.status.value + (f": {row.error_message}" if row.error_message else "")
            local = None if at is None else at.astimezone(ZoneInfo(device.timezone))
            entries.append(
                views.plan_entry(
                    plan,
                    gets_row=True,
                    status=row.status,
                    install_at_utc=at,
                    install_at_local=local,
                    reason=prefix + reason,
                    phase=phase,
                )
            )
        return entries

    def _rollout(
        self, update_type: UpdateType, version: str, devices: Sequence[DeviceRecord], now: datetime
    ) -> list[scheduling.DevicePlan]:
        return scheduling.plan_rollout(
            update_type,
            version,
            [
                scheduling.DeviceFacts(
                    device_uuid=device.device_uuid,
                    device_name=device.device_name,
                    timezone=device.timezone,
                    last_seen=device.last_seen,
                    current_version=device.current_version,
                )
                for device in devices
            ],
            now=now,
            window_start=self.settings.window_start,
            window_seconds=self.settings.window_seconds,
            idle_seconds=self.settings.urgent_idle_seconds,
            online_within_seconds=self.settings.instant_online_seconds,
        )


def _phase_note(rollout: RolloutRecord, phase: int, *, pending: bool) -> str:
    """``"phase 2 of 3; "``, with ``" (not open yet)"`` for a pending device of a closed phase."""
    closed = pending and rollout.state is not RolloutState.COMPLETED and phase > rollout.phase_index
    return f"phase {phase + 1} of {len(rollout.phases)}{' (not open yet)' if closed else ''}; "


def _left_out(plan: scheduling.DevicePlan, why: str) -> PlanEntry:
    """The plan line of a device the update does not target: no row, no time, ``why``."""
    return views.plan_entry(
        plan, gets_row=False, install_at_utc=None, install_at_local=None, reason=why
    )
