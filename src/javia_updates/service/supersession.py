"""Supersession outside the heartbeat: at publish, and in the plans.

The rule itself is :func:`javia_core.scheduling.supersede` (DESIGN.md
section 4), the one the heartbeat applies
(:meth:`javia_updates.service.heartbeat.Heartbeats.directive_for`). This
module gathers what it needs for many devices at once: each device's open
rows (pending, staged, retrying, or in flight), which of them the heartbeat
would weigh (the *live* ones), and the plan the winner then carries. No writes.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from javia_core import scheduling
from javia_core.models import UpdateStatus, UpdateType
from javia_core.rollouts import CANARY_TAG
from javia_core.status_rules import IN_FLIGHT_STATUSES, WAITING_STATUSES
from javia_core.versioning import Version
from javia_updates.backends.base import DeviceUpdateRecord
from javia_updates.service.common import version_or_none
from javia_updates.service.records import FleetRecords
from javia_updates.settings import ServerSettings

__all__ = ["Device", "ImaginedRow", "OpenRows", "open_rows", "winner_plan", "with_supersession"]

Row = TypeVar("Row", bound=scheduling.SupersessionCandidate)


class Device(Protocol):
    """What supersession reads of a device (a :class:`DeviceRecord` has it all)."""

    @property
    def id(self) -> int:
        """The device's row id."""
        ...

    @property
    def device_uuid(self) -> uuid.UUID:
        """Its uuid (its phase in a rollout, its slot in the window)."""
        ...

    @property
    def timezone(self) -> str:
        """Its IANA timezone."""
        ...

    @property
    def current_version(self) -> str | None:
        """The version it last reported."""
        ...

    @property
    def tags(self) -> tuple[str, ...]:
        """Its operator tags (``canary`` goes first in a rollout)."""
        ...


@dataclass(frozen=True, slots=True)
class ImaginedRow:
    """A pending row a publish would create (a candidate for :func:`scheduling.supersede`).

    Attributes:
        version: the update's version, ``vX.Y.Z``.
        install_type: its type.
        scheduled_for: its planned install instant (aware UTC).
        window_end: the planned window's end (aware UTC), None for instant.
    """

    version: str
    install_type: UpdateType
    scheduled_for: datetime
    window_end: datetime | None


@dataclass(frozen=True, slots=True)
class OpenRows:
    """Every device's open rows (pending or in flight), read once.

    Attributes:
        by_device: device row id -> its open rows.
    """

    by_device: dict[int, list[DeviceUpdateRecord]]

    def live(self, records: FleetRecords, device: Device) -> list[DeviceUpdateRecord] | None:
        """The rows the device's next heartbeat weighs for supersession; None while one is in flight.

        As the heartbeat: a row in flight finishes first (nothing is
        superseded meanwhile: None), and so does a row the device is
        ``retrying`` while its rollout lets it start, unless a higher waiting
        version may start (then the heartbeat supersedes the retrying row);
        waiting rows (pending, or staged ahead of the window) for versions
        the device already runs are set aside (the heartbeat supersedes them
        for that reason, they lend no timing); a row whose rollout does not
        let the device start yet neither supersedes nor is superseded (the
        offer gate, docs/rollouts.md).
        """
        rows = self.by_device.get(device.id, [])
        if any(row.status in IN_FLIGHT_STATUSES for row in rows):
            return None
        running = version_or_none(device.current_version)
        canary = CANARY_TAG in device.tags

        def may_start(row: DeviceUpdateRecord) -> bool:
            return records.catalog.may_start(row.update_id, device.device_uuid, canary=canary)

        live = [
            row
            for row in rows
            if row.status in WAITING_STATUSES
            and (running is None or Version.parse(row.version) > running)
            and may_start(row)
        ]
        retrying = [row for row in rows if row.status is UpdateStatus.RETRYING]
        if retrying:
            retried = max(retrying, key=lambda row: Version.parse(row.version))
            newer = [
                row for row in live if Version.parse(row.version) > Version.parse(retried.version)
            ]
            if not newer and may_start(retried):
                return None
        return live


def open_rows(records: FleetRecords, device_ids: set[int] | None = None) -> OpenRows:
    """Every open row (pending, staged, retrying, downloading, installing), grouped by device.

    Also brings the update catalog's rollouts up to date, so that
    :meth:`OpenRows.live` gates rows by the rollouts as they are now.

    Args:
        records: the store with its caches.
        device_ids: keep only these devices' rows; None: every device's.
    """
    records.catalog.current_generation()
    by_device: dict[int, list[DeviceUpdateRecord]] = defaultdict(list)
    for status in sorted(WAITING_STATUSES | IN_FLIGHT_STATUSES | {UpdateStatus.RETRYING}):
        for row in records.store.list_device_updates(status=status).items:
            if device_ids is None or row.device_id in device_ids:
                by_device[row.device_id].append(row)
    return OpenRows(dict(by_device))


def winner_plan(
    outcome: scheduling.Supersession[Row],
    settings: ServerSettings,
    device: Device,
    *,
    now: datetime,
) -> scheduling.InstallPlan:
    """The plan the winner carries: the donor's stored timing, re-planned if its window closed.

    Args:
        outcome: :func:`scheduling.supersede`'s answer.
        settings: the server's window and idle settings.
        device: the device (its timezone, and its uuid for its slot in the window).
        now: the server's clock (aware).
    """
    return scheduling.current_install_plan(
        outcome.timing,
        outcome.donor.scheduled_for,
        outcome.donor.window_end,
        now=now,
        timezone=device.timezone,
        device_uuid=device.device_uuid,
        window_start=settings.window_start,
        window_seconds=settings.window_seconds,
        idle_seconds=settings.urgent_idle_seconds,
    )


def with_supersession(outcome: scheduling.Supersession[Row], reason: str) -> str:
    """The plan's ``reason`` with what the winner supersedes, in the plan's words.

    ``supersedes pending v6.0.1, takes the instant timing of v6.0.1: instant:
    installs at its next check`` when the timing is inherited;
    ``<reason>; supersedes pending v6.0.1`` when it is the winner's own
    (``staged v6.0.1`` for a row staged ahead of its window);
    ``reason`` alone when nothing is superseded.
    """
    if not outcome.superseded:
        return reason
    by_status: dict[str, list[str]] = {}
    for row in outcome.superseded:
        status = getattr(row, "status", UpdateStatus.PENDING)  # an imagined row is pending
        by_status.setdefault(status.value, []).append(row.version)
    words = "supersedes " + ", ".join(
        f"{status} {', '.join(versions)}" for status, versions in by_status.items()
    )
    if outcome.inherited:
        return (
            f"{words}, takes the {outcome.timing.value} timing of {outcome.donor.version}: {reason}"
        )
    return f"{reason}; {words}"
