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
from typing import Any
from zoneinfo import ZoneInfo

from javia_core import scheduling
from javia_core.models import PlanEntry, RolloutState, UpdateStatus, UpdateType
from javia_core.rollouts import (
    CANARY_TAG,
    RolloutPolicy,
    phase_of,
    rollout_at_publish,
    waiting_reason,
)
from javia_core.rollouts.statuses import HELD_BY_PAUSE
from javia_core.rollouts.targeting import targeting_reason
from javia_core.status_rules import WAITING_STATUSES
from javia_core.versioning import Version
from javia_updates.backends.base import DeviceRecord, DeviceUpdateRecord
from javia_updates.service import supersession, views
from javia_updates.service.publishing import known_target_tags, refuse_unpublishable
from javia_updates.service.records import FleetRecords
from javia_updates.service.rollouts import rollout_of
from javia_updates.service.updates import Updates
from javia_updates.settings import ServerSettings

__all__ = ["Planning"]

#: Why a targeted device whose token is revoked gets no row (the publish leaves it out too).
REVOKED_LEFT_OUT = "token revoked: the device cannot fetch updates"


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
        policy: RolloutPolicy | None = None,
    ) -> list[PlanEntry]:
        """See :meth:`javia_updates.service.UpdateService.plan_new_update`."""
        parsed = Version.parse(version)
        refuse_unpublishable(self.store, str(parsed), parsed)
        target_tags = known_target_tags(self.store, tags)
        policy = policy or RolloutPolicy()
        start = rollout_at_publish(policy, update_type, self.settings.approval_required_types)
        self.records.flush()
        unique = None if targets is None else tuple(dict.fromkeys(targets))
        devices = self.store.devices_for_targets(unique, target_tags)  # unknown uuids: NotFound
        everyone = unique is None and target_tags is None
        if not everyone:
            devices = self.store.devices_for_targets(None)
        entries = []
        open_rows = supersession.open_rows(self.records)
        for device, plan in zip(
            devices, self._rollout(update_type, str(parsed), devices, now), strict=True
        ):
            targeted, why = targeting_reason(unique, target_tags, device.device_uuid, device.tags)
            if not targeted:
                entries.append(_left_out(plan, why))
                continue
            if device.token_revoked_at is not None:
                entries.append(_left_out(plan, REVOKED_LEFT_OUT))
                continue
            phase = phase_of(
                device.device_uuid, str(parsed), policy.phases, canary=CANARY_TAG in device.tags
            )
            wait = waiting_reason(start, phase, phase_approval=policy.phase_approval)
            prefix = "" if everyone else f"{why}; "
            shown = phase if len(policy.phases) > 1 else None
            changes: dict[str, Any] = {}
            reason = plan.reason
            if wait is None and plan.gets_row and plan.install_at_utc is not None:
                # The new row supersedes the device's pending ones at once (the
                # publish writes it), taking the most urgent timing among them.
                candidate = supersession.ImaginedRow(
                    str(parsed), update_type, plan.install_at_utc, None
                )
                changes, reason = self._superseding(device, candidate, open_rows, now, reason)
            entries.append(_gated(plan, shown, wait, start.state, prefix, reason, **changes))
        return entries

    def _superseding(
        self,
        device: DeviceRecord,
        candidate: supersession.ImaginedRow,
        open_rows: supersession.OpenRows,
        now: datetime,
        reason: str,
    ) -> tuple[dict[str, Any], str]:
        """A new update's plan line for ``device`` once its pending rows are weighed with it.

        Returns the plan changes (another install time when it inherits a
        more urgent timing) and the reason, naming what it supersedes.
        """
        live = open_rows.live(self.records, device)
        if not live:
            return {}, reason
        rows: list[scheduling.SupersessionCandidate] = [*live, candidate]
        outcome = scheduling.supersede(rows)
        if not outcome.inherited:
            return {}, supersession.with_supersession(outcome, reason)
        inherited = supersession.winner_plan(outcome, self.settings, device, now=now)
        at = inherited.install_at
        changes = {
            "install_at_utc": at,
            "install_at_local": at.astimezone(ZoneInfo(device.timezone)),
        }
        return changes, supersession.with_supersession(outcome, inherited.reason)

    def plan_published(self, reference: str | int, *, now: datetime) -> list[PlanEntry]:
        """See :meth:`javia_updates.service.UpdateService.plan_published`."""
        update = self.updates.resolve_update(reference)
        self.records.flush()
        devices = self.store.devices_for_targets(None)
        everyone = update.targets is None and update.target_tags is None
        rows = {
            row.device_id: row for row in self.store.list_device_updates(update_id=update.id).items
        }
        record = self.store.get_rollout(update.id)
        rollout = None if record is None else rollout_of(record)
        by_uuid = {
            plan.device_uuid: plan
            for plan in self._rollout(update.update_type, update.version, devices, now)
        }
        open_rows = supersession.open_rows(self.records)
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
            phase = wait = None
            if record is not None and rollout is not None:
                canary = CANARY_TAG in device.tags
                phase = self.records.catalog.phase(
                    update.id, device.device_uuid, record, canary=canary
                )
                wait = waiting_reason(rollout, phase, phase_approval=record.phase_approval)
                if len(record.phases) == 1:
                    phase = None  # one phase: every device is in it, nothing to show
            state = None if rollout is None else rollout.state
            if row is None:
                reason = plan.reason
                if plan.gets_row:
                    reason = f"no row yet: gets it at its next heartbeat; {reason}"
                entries.append(_gated(plan, phase, wait, state, prefix, reason, gets_row=False))
                continue
            gets_row = True
            if row.status in WAITING_STATUSES:  # pending, or staged ahead of its window
                outcome = self._pending_outcome(device, row, open_rows)
                if outcome.winner.id != row.id:  # superseded at the device's next heartbeat
                    gets_row, wait, at = False, None, None
                    reason = (
                        f"{row.status.value}, superseded by {outcome.winner.version} "
                        "at its next heartbeat"
                    )
                else:
                    current = supersession.winner_plan(outcome, self.settings, device, now=now)
                    at = current.install_at
                    reason = supersession.with_supersession(outcome, current.reason)
                    if row.status is UpdateStatus.STAGED:
                        reason = f"staged: {reason}"
            elif row.status in (UpdateStatus.SUPERSEDED, UpdateStatus.CANCELLED):
                gets_row, wait, at = False, None, None  # it never installs this one
                reason = row.status.value + (f": {row.error_message}" if row.error_message else "")
            else:
                if row.status not in HELD_BY_PAUSE:
                    wait = None  # installing or finished: the rollout no longer holds it back
                at = row.completed_at or row.started_at
                reason = row.status.value + (f": {row.error_message}" if row.error_message else "")
            local = None if at is None else at.astimezone(ZoneInfo(device.timezone))
            entries.append(
                _gated(
                    plan,
                    phase,
                    wait,
                    state,
                    prefix,
                    reason,
                    gets_row=gets_row,
                    status=row.status,
                    install_at_utc=at,
                    install_at_local=local,
                )
            )
        return entries

    def _pending_outcome(
        self,
        device: DeviceRecord,
        row: DeviceUpdateRecord,
        open_rows: supersession.OpenRows,
    ) -> scheduling.Supersession[DeviceUpdateRecord]:
        """What the device's next heartbeat does with its pending ``row`` (the heartbeat's rule).

        The row alone when nothing competes with it (a row in flight, or no
        other live row); else :func:`scheduling.supersede` over the live rows.
        """
        live = open_rows.live(self.records, device)
        if not live or all(other.id != row.id for other in live):
            return scheduling.supersede([row])
        return scheduling.supersede(live)

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


def _left_out(plan: scheduling.DevicePlan, why: str) -> PlanEntry:
    """The plan line of a device the update does not target: no row, no time, ``why``."""
    return views.plan_entry(
        plan, gets_row=False, install_at_utc=None, install_at_local=None, reason=why
    )


def _gated(
    plan: scheduling.DevicePlan,
    phase: int | None,
    wait: str | None,
    state: RolloutState | None,
    prefix: str,
    reason: str,
    **changes: Any,
) -> PlanEntry:
    """The plan line of a targeted device, held back by its rollout when ``wait`` says why.

    A held device has no install time yet; a halted or cancelled rollout's
    reason replaces the schedule's (it never installs), any other wait comes
    first: ``waits for approval, then online: installs at its next check``.
    """
    if wait is not None:
        changes.update(install_at_utc=None, install_at_local=None)
        final = state in (RolloutState.HALTED, RolloutState.CANCELLED)
        reason = wait if final else f"{wait}, then {reason}"
    return views.plan_entry(plan, phase=phase, reason=prefix + reason, **changes)
