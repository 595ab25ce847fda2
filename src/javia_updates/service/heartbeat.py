"""Heartbeat and reconciliation: what a device is told to install, and when.

The rules (DESIGN.md section 4) in the order :meth:`Heartbeats.directive_for`
applies them are listed in :mod:`javia_updates.service`: reconciliation of a
missing row, supersession of rows for versions the device already runs, a
row in flight first, supersession by the highest pending version with the
most urgent timing, re-planning of a closed window. A timing inherited by
supersession comes with the superseded update that proves it
(``urgency_from``, :func:`urgency_evidence`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from javia_core import scheduling
from javia_core.input_rules import check_json, sanitize_json
from javia_core.models import (
    HeartbeatRequest,
    HeartbeatResponse,
    HeldUpdate,
    InstallDirective,
    RolloutState,
    UpdateCheckResponse,
    UpdateStatus,
    UpdateType,
    UrgencyEvidence,
)
from javia_core.rollouts import post_install_regression
from javia_core.rollouts.statuses import HELD_BY_PAUSE
from javia_core.status_rules import IN_FLIGHT_STATUSES, WAITING_STATUSES
from javia_core.versioning import Version
from javia_updates.backends.base import (
    AuditEntry,
    DeviceRecord,
    DeviceUpdateRecord,
    NewDeviceUpdate,
)
from javia_updates.metrics import count_install_deferred
from javia_updates.service.admission import InstallAdmission
from javia_updates.service.common import (
    API_PREFIX,
    MAX_METADATA_BYTES,
    check_metadata,
    version_or_none,
)
from javia_updates.service.records import FleetRecords
from javia_updates.service.supersession import winner_plan
from javia_updates.settings import ServerSettings

__all__ = ["Heartbeats", "urgency_evidence"]

#: Rows the device has not begun installing: offered while their rollout lets them start.
_WAITING = WAITING_STATUSES


class Heartbeats:
    """The heartbeat and update-check use cases.

    Args:
        records: the store with its caches and the soft-state writer.
        settings: heartbeat interval, install window, idle seconds.
        regressed: called with the update id after a heartbeat recorded a
            post-install regression on one of its rows (the rollout is then
            evaluated: it may halt).
        admission: paces the start of installs (:mod:`~javia_updates.service.admission`);
            None: every due install starts at once.
    """

    def __init__(
        self,
        records: FleetRecords,
        settings: ServerSettings,
        *,
        regressed: Callable[[int, datetime], None] | None = None,
        admission: InstallAdmission | None = None,
    ) -> None:
        self.records = records
        self.store = records.store
        self.settings = settings
        self.regressed = regressed
        self.admission = admission

    def heartbeat(
        self,
        device: DeviceRecord,
        request: HeartbeatRequest,
        *,
        now: datetime,
    ) -> HeartbeatResponse:
        """See :meth:`javia_updates.service.UpdateService.heartbeat`."""
        try:
            metadata = check_json(
                {**device.metadata, **request.metadata}, "metadata", max_bytes=MAX_METADATA_BYTES
            )
        except ValueError:
            # The stored part may predate the input rules: clean it (the write
            # below then repairs the row), and refuse only what the device sent.
            metadata = check_metadata({**sanitize_json(device.metadata), **request.metadata})
        current = replace(
            device,
            last_seen=now,
            current_version=request.current_version or device.current_version,
            status=request.status,
            metadata=metadata,
            updated_at=now,
        )
        directive = self.directive_for(current, now)
        if request.application is not None and (
            request.application.restarts > 0
            or request.application.last_exit_status not in (None, 0)
        ):
            self._application_trouble(current, request, now)
        self.records.record_heartbeat(current, now)
        return HeartbeatResponse(
            server_time=now,
            heartbeat_interval_seconds=self.settings.heartbeat_interval_seconds,
            update=directive,
            held=None if directive is not None else self.held_for(current),
        )

    def held_for(self, device: DeviceRecord) -> HeldUpdate | None:
        """The update ``device`` took whose rollout is paused, when it has no directive.

        A ``staged`` or ``retrying`` row (:data:`~javia_core.rollouts.statuses.HELD_BY_PAUSE`)
        of a paused rollout, for a version above the one the device runs; the
        highest such. The device keeps its work on it and installs nothing
        until the rollout resumes (docs/rollouts.md, "Device statuses"). No I/O:
        the device's cached rows and the cached rollouts.
        """
        running = version_or_none(device.current_version)
        held = [
            row
            for row in self.records.device_rows(device)
            if row.status in HELD_BY_PAUSE
            and (running is None or Version.parse(row.version) > running)
            and (rollout := self.records.catalog.rollout(row.update_id)) is not None
            and rollout.state is RolloutState.PAUSED
        ]
        if not held:
            return None
        row = max(held, key=lambda row: Version.parse(row.version))
        return HeldUpdate(update_id=row.update_id, version=Version.parse(row.version))

    def _application_trouble(
        self, device: DeviceRecord, request: HeartbeatRequest, now: datetime
    ) -> None:
        """The application restarted or crashed: a regression of the rollout the device completed.

        Only a completed row of a rollout, not yet regressed and inside its soak
        (from the row's completion) counts (docs/rollouts.md, halt); the row is
        the one whose version the device runs. Cheap: the device's cached rows.
        """
        application = request.application
        assert application is not None
        for row in self.records.device_rows(device):
            if (
                row.status is not UpdateStatus.COMPLETED
                or row.regressed_at is not None
                or row.completed_at is None
                or row.version != device.current_version
            ):
                continue
            rollout = self.records.catalog.rollout(row.update_id)
            if rollout is None or now - row.completed_at >= timedelta(
                seconds=rollout.phase_soak_seconds
            ):
                continue
            reason = post_install_regression(
                completed_at=row.completed_at,
                last_seen=now,
                heartbeat_interval_seconds=self.settings.heartbeat_interval_seconds,
                soak_seconds=rollout.phase_soak_seconds,
                restarts_at_completion=None,
                restarts_reported=application.restarts,
                exit_status=application.last_exit_status,
                now=now,
            )
            if reason is None or not self.records.record_regression(device, row, reason, now=now):
                continue
            if self.regressed is not None:
                self.regressed(row.update_id, now)

    def check_update(self, device: DeviceRecord, *, now: datetime) -> UpdateCheckResponse:
        """See :meth:`javia_updates.service.UpdateService.check_update`."""
        directive = self.directive_for(device, now)
        return UpdateCheckResponse(
            device_uuid=device.device_uuid,
            server_time=now,
            current_version=(
                None if device.current_version is None else Version.parse(device.current_version)
            ),
            update_available=directive is not None,
            update=directive,
        )

    # ------------------------------------------------------------------ the rules
    def directive_for(self, device: DeviceRecord, now: datetime) -> InstallDirective | None:
        """Reconcile ``device``'s rows (module docstring) and return its directive, if any.

        Raises:
            WriteNeeded: a row must be written inside
                :meth:`~javia_updates.service.records.FleetRecords.without_writes`.
        """
        running = version_or_none(device.current_version)

        def load() -> list[DeviceUpdateRecord]:
            return self.store.list_device_updates(device_id=device.id).items

        rows = self.records.device_rows(device)

        # 1. Reconciliation: the newest update meant for this device, if it has no row.
        newest = self.records.newest_targeting(device, running)
        if newest is not None and all(row.update_id != newest.id for row in rows):
            self.records.add_row(
                device,
                newest.id,
                self._new_row(newest.update_type, device, now),
                now=now,
                audit=AuditEntry(
                    "server",
                    "device_update.reconciled",
                    {
                        "device_uuid": str(device.device_uuid),
                        "update_id": newest.id,
                        "version": newest.version,
                    },
                ),
            )
            # Reload whether this call or another replica (at the same moment)
            # created the row: either way it is this device's directive now.
            rows = load()

        # 2. Pending rows for versions the device already runs are done with.
        # A staged row (downloaded and prepared ahead of its window) is still
        # waiting like a pending one: offered on, superseded or re-planned alike.
        live: list[DeviceUpdateRecord] = []
        for row in rows:
            if row.status not in _WAITING:
                continue
            if running is not None and Version.parse(row.version) <= running:
                self._supersede(row, device, f"device already runs {running}", now)
            else:
                live.append(row)

        # 3. A row in flight finishes first; it stays the directive. So does a
        # row the device is retrying after a transient fault (docs/agent.md)
        # while its rollout lets it start, unless a newer version waits: that
        # one supersedes it (nothing of the retrying one was installed).
        in_flight = [row for row in rows if row.status in IN_FLIGHT_STATUSES]
        retrying = [row for row in rows if row.status is UpdateStatus.RETRYING]
        if not in_flight and retrying:
            retried = max(retrying, key=lambda row: Version.parse(row.version))
            newer = [
                row for row in live if Version.parse(row.version) > Version.parse(retried.version)
            ]
            if newer and any(self.records.may_start(device, row.update_id) for row in newer):
                latest = max(newer, key=lambda row: Version.parse(row.version))
                self._supersede(retried, device, f"superseded by {latest.version}", now)
            elif self.records.may_start(device, retried.update_id):
                in_flight = [retried]
            # Otherwise its rollout holds it like a staged row: paused, the
            # device keeps its work (held_for); halted or cancelled, it never
            # installs (docs/rollouts.md, "Device statuses").
        if in_flight:
            return self._directive(
                max(in_flight, key=lambda row: Version.parse(row.version)), rows, running
            )
        # The offer gate (docs/rollouts.md): a row not started is offered only
        # while its rollout lets the device's phase start; the others wait as
        # they are (they neither supersede nor are superseded). O(1), no I/O.
        live = [row for row in live if self.records.may_start(device, row.update_id)]
        if not live:
            return None

        # 4. Supersession: the highest version, with the most urgent timing.
        outcome = scheduling.supersede(live)
        winner, kind = outcome.winner, outcome.timing
        # 5. Re-plan a closed window (and adopt the donor's timing).
        plan = winner_plan(outcome, self.settings, device, now=now)
        timing = (kind, plan.install_at, plan.window_end)
        if timing != (winner.install_type, winner.scheduled_for, winner.window_end):
            still_pending = self.records.reschedule_row(
                device,
                winner.id,
                install_type=kind,
                scheduled_for=plan.install_at,
                window_end=plan.window_end,
                now=now,
            )
            winner = self.store.get_device_update(device.id, winner.update_id)
            if not still_pending and winner.status not in IN_FLIGHT_STATUSES:
                return None
        for row in outcome.superseded:
            self._supersede(row, device, f"superseded by {winner.version}", now)
        # 6. Admission (module javia_updates.service.admission): an install that
        # would begin now is offered at the pace the server keeps up with;
        # refused, the row stays pending and is offered at a later heartbeat.
        if (
            self.admission is not None
            and winner.status is UpdateStatus.PENDING
            and (winner.scheduled_for is None or winner.scheduled_for <= now)
            and not self.admission.admit(device.device_uuid)
        ):
            count_install_deferred()
            return None
        return self._directive(winner, rows, running)

    def _new_row(
        self, update_type: UpdateType, device: DeviceRecord, now: datetime
    ) -> NewDeviceUpdate:
        plan = scheduling.plan_install(
            update_type,
            now=now,
            timezone=device.timezone,
            device_uuid=device.device_uuid,
            window_start=self.settings.window_start,
            window_seconds=self.settings.window_seconds,
            idle_seconds=self.settings.urgent_idle_seconds,
        )
        return NewDeviceUpdate(device.id, update_type, plan.install_at, plan.window_end)

    def _supersede(
        self, row: DeviceUpdateRecord, device: DeviceRecord, reason: str, now: datetime
    ) -> None:
        self.records.transition_row(
            device,
            row.id,
            UpdateStatus.SUPERSEDED,
            now=now,
            error_message=reason,
            audit=AuditEntry(
                "server",
                "device_update.superseded",
                {
                    "device_uuid": str(device.device_uuid),
                    "update_id": row.update_id,
                    "reason": reason,
                },
            ),
        )

    def _directive(
        self,
        row: DeviceUpdateRecord,
        rows: Sequence[DeviceUpdateRecord] = (),
        running: Version | None = None,
    ) -> InstallDirective:
        """The directive for ``row``; ``rows`` (the device's) supply ``urgency_from``.

        When the row's timing (``install_type``) is more urgent than its
        update's signed type, it was inherited by supersession (DESIGN.md
        section 4) and the device follows it only with a signature to prove it:
        ``urgency_from`` names the superseded update (:func:`urgency_evidence`).
        """
        base = f"{API_PREFIX}/updates/{row.update_id}"
        evidence = None
        if scheduling.most_urgent((row.install_type, row.update_type)) is not row.update_type:
            evidence = urgency_evidence(row, rows, running)
        return InstallDirective(
            update_id=row.update_id,
            version=Version.parse(row.version),
            update_type=row.install_type,
            status=row.status,
            install_at=row.scheduled_for,
            window_end=row.window_end,
            idle_seconds_required=(
                self.settings.urgent_idle_seconds if row.install_type is UpdateType.URGENT else None
            ),
            size=row.archive_size,
            manifest_url=f"{base}/manifest",
            signature_url=f"{base}/signature",
            download_url=f"{base}/download",
            urgency_from=evidence,
        )


def urgency_evidence(
    row: DeviceUpdateRecord, rows: Sequence[DeviceUpdateRecord], running: Version | None
) -> UrgencyEvidence | None:
    """The superseded update that proves ``row``'s inherited timing, if the device has one.

    Among the device's other pending or superseded rows whose version lies
    strictly between ``running`` and ``row``'s, one whose update was
    *signed* at least as urgent as ``row.install_type``: the most urgent
    signed type, then the newest version. Inherited timings come from
    signed types only (publish and reconciliation plan rows with their
    update's type; supersession takes the most urgent of those), so an
    honest server always finds one while the device still runs a version
    older than it. The device is allowed to fetch its manifest and
    signature (it has a row for that update); None when there is none.
    """
    version = Version.parse(row.version)
    candidates = [
        other
        for other in rows
        if other.update_id != row.update_id
        and other.status in (UpdateStatus.PENDING, UpdateStatus.SUPERSEDED)
        and scheduling.most_urgent((other.update_type, row.install_type)) is other.update_type
        and (running is None or Version.parse(other.version) > running)
        and Version.parse(other.version) < version
    ]
    if not candidates:
        return None
    rank = {UpdateType.SCHEDULED: 0, UpdateType.URGENT: 1, UpdateType.INSTANT: 2}
    best = max(
        candidates, key=lambda other: (rank[other.update_type], Version.parse(other.version))
    )
    base = f"{API_PREFIX}/updates/{best.update_id}"
    return UrgencyEvidence(
        update_id=best.update_id,
        version=Version.parse(best.version),
        manifest_url=f"{base}/manifest",
        signature_url=f"{base}/signature",
    )
