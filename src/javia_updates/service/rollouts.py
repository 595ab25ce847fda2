"""Rollouts the operator steers: commands, evaluation and the rollout view (docs/rollouts.md).

The rules are :mod:`javia_core.rollouts` (pure); this module reads the store,
asks them and writes what they decide:

* **Commands** (:meth:`Rollouts.command`): pause, resume, cancel, approve and
  advance through :func:`~javia_core.rollouts.apply_event`, with who and why
  in the audit log. A refused move is a :class:`ConflictError` (409) with the
  table's one line; a move already in effect succeeds and changes nothing.
* **Evaluation** (:meth:`Rollouts.evaluate`): post-install regressions by
  silence (recorded on the completed row), the automatic halt over the whole
  rollout, then the phase gate of the open phase (advance, wait for approval,
  complete). Run after every status report that finishes a row, after a
  heartbeat that records a regression, and every
  ``rollout_evaluation_seconds`` by the server's periodic task
  (:meth:`Rollouts.evaluate_running`).
* **Races**: every write is conditional on the rollout's ``revision``; the
  loser of a race re-reads and applies its event again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from javia_core.errors import ConflictError
from javia_core.models import (
    Cohort,
    RolloutHealth,
    RolloutOut,
    RolloutState,
    UpdateStatus,
    UpdateType,
)
from javia_core.rollouts import (
    SILENT_HEARTBEAT_INTERVALS,
    GateVerdict,
    Rollout,
    RolloutEvent,
    RolloutPolicy,
    RolloutStateError,
    Tally,
    apply_event,
    halt_decision,
    phase_gate,
    phase_of,
    post_install_regression,
    rollout_at_publish,
)
from javia_core.rollouts.statuses import FINISHED, NOT_TARGETED, TOOK_OFFER
from javia_updates.backends.base import (
    AuditEntry,
    NewRollout,
    RolloutMember,
    RolloutRecord,
    StatusGroup,
    UpdateRecord,
)
from javia_updates.backends.cache import PHASE_MEMO_SIZE
from javia_updates.service.records import FleetRecords
from javia_updates.service.wakeups import DeviceWakeups
from javia_updates.settings import ServerSettings

__all__ = ["COMMANDS", "Rollouts", "new_rollout", "policy_of", "rollout_of"]

#: The operator commands of ``POST /api/v1/updates/{reference}/{command}``.
COMMANDS: dict[str, RolloutEvent] = {
    event.value: event
    for event in (
        RolloutEvent.PAUSE,
        RolloutEvent.RESUME,
        RolloutEvent.CANCEL,
        RolloutEvent.APPROVE,
        RolloutEvent.ADVANCE,
    )
}
#: After a report, the full evaluation (one lean row per device) runs at most this often per update, seconds.
FULL_EVALUATION_SECONDS = 1.0
#: A conditional write lost this many times in a row is reported as a conflict.
MAX_RACE_RETRIES = 8
_FINISHED = FINISHED
_NOT_TARGETED = NOT_TARGETED
#: The exposed cohort: every device that took the offer, staged and retrying ones included.
_STARTED = TOOK_OFFER
#: States in which evaluation has nothing to decide.
_SETTLED = frozenset({RolloutState.AWAITING_APPROVAL, RolloutState.HALTED, RolloutState.CANCELLED})


def new_rollout(
    policy: RolloutPolicy, update_type: UpdateType, approval_required_for: frozenset[UpdateType]
) -> NewRollout:
    """The rollout row a publish stores (:func:`~javia_core.rollouts.rollout_at_publish`)."""
    start = rollout_at_publish(policy, update_type, approval_required_for)
    return NewRollout(
        state=start.state,
        phases=policy.phases,
        phase_soak_seconds=policy.phase_soak_seconds,
        halt_failure_rate=float(policy.halt_failure_rate),
        halt_min_devices=policy.halt_min_devices,
        require_approval=start.state is RolloutState.AWAITING_APPROVAL,
        phase_approval=policy.phase_approval,
    )


def policy_of(record: RolloutRecord) -> RolloutPolicy:
    """The stored rollout's policy."""
    return RolloutPolicy(
        phases=record.phases,
        phase_soak_seconds=record.phase_soak_seconds,
        halt_failure_rate=record.halt_failure_rate,
        halt_min_devices=record.halt_min_devices,
        phase_approval=record.phase_approval,
        require_approval=record.require_approval,
    )


def rollout_of(record: RolloutRecord) -> Rollout:
    """The stored rollout as :func:`~javia_core.rollouts.apply_event` reads it."""
    return Rollout(
        record.state,
        phase=record.phase_index,
        phase_count=len(record.phases),
        uses_approval=record.require_approval or record.phase_approval,
        awaiting_phase_approval=record.awaiting_phase_approval,
        halt_reason=record.halt_reason,
    )


def _tally(members: Sequence[RolloutMember]) -> Tally:
    targeted = [member for member in members if member.status not in _NOT_TARGETED]
    completed = [member for member in targeted if member.status is UpdateStatus.COMPLETED]
    return Tally(
        targeted=len(targeted),
        completed=len(completed),
        failed=sum(member.status is UpdateStatus.FAILED for member in targeted),
        rolled_back=sum(member.status is UpdateStatus.ROLLED_BACK for member in targeted),
        regressions=sum(member.regressed for member in completed),
    )


def _finished_tally(groups: Sequence[StatusGroup]) -> Tally:
    """The tally of the finished rows among counted ``groups``."""
    finished = [group for group in groups if group.status in _FINISHED]

    def count(status: UpdateStatus) -> int:
        return sum(group.count for group in finished if group.status is status)

    return Tally(
        targeted=sum(group.count for group in finished),
        completed=count(UpdateStatus.COMPLETED),
        failed=count(UpdateStatus.FAILED),
        rolled_back=count(UpdateStatus.ROLLED_BACK),
        regressions=sum(
            group.count
            for group in finished
            if group.status is UpdateStatus.COMPLETED and group.regressed
        ),
    )


class Rollouts:
    """The rollout use cases (module docstring).

    Args:
        records: the store with its caches (the catalog holds the rollouts the
            offer gate reads; every change here refreshes it at once).
        settings: the heartbeat interval (silence) and ``approval_required``.
        wakeups: where every committed change wakes the devices (docs/agent.md).
    """

    def __init__(
        self,
        records: FleetRecords,
        settings: ServerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wakeups: DeviceWakeups | None = None,
    ) -> None:
        self.records = records
        self.wakeups = wakeups or DeviceWakeups()
        self.store = records.store
        self.settings = settings
        self._clock = clock
        self._evaluated_at: dict[int, float] = {}
        self._phases: dict[tuple[int, str, bool], int] = {}

    # ------------------------------------------------------------------ writes
    def _change(
        self,
        update: UpdateRecord,
        move: Callable[[Rollout], tuple[Rollout, bool]],
        *,
        now: datetime,
        audit: Callable[[RolloutRecord, Rollout], AuditEntry],
    ) -> RolloutRecord:
        """Apply ``move`` to the stored rollout, conditionally on its revision; retry a lost race.

        Raises:
            ConflictError: the update has no rollout, or the move is refused
                (the rule's one line), or the race was lost too often.
        """
        for _ in range(MAX_RACE_RETRIES):
            record = self.store.get_rollout(update.id)
            if record is None:
                raise ConflictError(f"{update.version} has no rollout to change")
            try:
                after, changed = move(rollout_of(record))
            except RolloutStateError as error:
                raise ConflictError(f"{update.version}: {error}") from None
            if not changed:
                return record
            stored = self.store.change_rollout(
                update.id,
                revision=record.revision,
                rollout=after,
                now=now,
                audit=audit(record, after),
            )
            if stored is not None:
                # A cancel rewrote rows: cached rows are dropped too.
                self.records.rollout_changed(rows=stored.state is RolloutState.CANCELLED)
                self.wakeups.rollout_changed(update.update_type, stored.state)
                return stored
        raise ConflictError(
            f"{update.version}: the rollout kept changing under this command; try again"
        )

    def command(
        self,
        update: UpdateRecord,
        action: str,
        *,
        reason: str | None,
        actor: str,
        now: datetime,
    ) -> RolloutRecord:
        """Apply an operator command (pause, resume, cancel, approve, advance) to ``update``'s rollout.

        Idempotent: a command already in effect succeeds and writes nothing.
        A change is audited as ``rollout.<action>`` with actor, reason and the
        states before and after.

        Raises:
            ConflictError: the move is refused in this state (one line), or the
                update has no rollout.
            KeyError: ``action`` is not one of :data:`COMMANDS` (the route only
                routes those).
        """
        event = COMMANDS[action]

        def audit(before: RolloutRecord, after: Rollout) -> AuditEntry:
            return AuditEntry(
                actor,
                f"rollout.{event.value}",
                {
                    "update_id": update.id,
                    "version": update.version,
                    "reason": reason,
                    "from": before.state.value,
                    "to": after.state.value,
                    "phase": after.phase,
                },
            )

        record = self._change(update, lambda r: apply_event(r, event), now=now, audit=audit)
        if event is not RolloutEvent.CANCEL:
            record = self.evaluate(update, now) or record
        return record

    # ------------------------------------------------------------------ evaluation
    def row_finished(self, update: UpdateRecord, now: datetime) -> RolloutRecord | None:
        """A report finished a row (or a heartbeat recorded a regression) of ``update``.

        The halt is decided at once over the whole rollout's counts (two
        aggregate queries), so it lands within the report that crossed the
        line; the full evaluation (phase gate, silences), which reads one lean
        row per device, runs at most every :data:`FULL_EVALUATION_SECONDS` per update here
        (and whenever every device may have finished), and in the periodic task.
        """
        record = self.records.catalog.rollout(update.id) or self.store.get_rollout(update.id)
        if record is None or record.state in _SETTLED:
            return record
        tally = self._whole_tally(update)
        reason = halt_decision(policy_of(record), tally)
        if reason is not None:
            return self._automatic(update, RolloutEvent.HALT, now, reason=reason)
        last = self._evaluated_at.get(update.id)
        recent = last is not None and self._clock() - last < FULL_EVALUATION_SECONDS
        if recent and tally.finished < tally.targeted:
            return record  # the periodic task or a later report evaluates it
        return self.evaluate(update, now)

    def _whole_tally(self, update: UpdateRecord) -> Tally:
        """The whole rollout's counts: two aggregate queries, no row read."""
        counts = self.store.status_counts([update.id])[update.id]
        return Tally(
            targeted=sum(n for s, n in counts.items() if UpdateStatus(s) not in _NOT_TARGETED),
            completed=counts.get(UpdateStatus.COMPLETED.value, 0),
            failed=counts.get(UpdateStatus.FAILED.value, 0),
            rolled_back=counts.get(UpdateStatus.ROLLED_BACK.value, 0),
            regressions=self.store.regression_count(update.id),
        )

    def evaluate(self, update: UpdateRecord, now: datetime) -> RolloutRecord | None:
        """Regressions, halt, phase gate and completion of ``update``'s rollout (module docstring).

        The halt is decided on aggregate counts; only the silence candidates
        (completed rows not heard from for three heartbeat intervals) and, for
        the gate of a phase before the last, one lean row per device (status,
        phase) are read; the last phase holds every row and its gate needs
        only the whole tally.

        Returns:
            The rollout after evaluation; None if the update has none.
        """
        record = self.store.get_rollout(update.id)
        if record is None or record.state in _SETTLED:
            return record
        self._evaluated_at[update.id] = self._clock()
        policy = policy_of(record)
        self._record_silences(update, record, now)
        whole = self._whole_tally(update)
        reason = halt_decision(policy, whole)
        if reason is not None:
            return self._automatic(update, RolloutEvent.HALT, now, reason=reason)
        members: list[RolloutMember] | None = None
        for _ in range(len(record.phases)):  # an empty phase opens the next at once
            if record.state is not RolloutState.ACTIVE:
                break
            k = record.phase_index
            first_completed_at = window_closed_at = None
            if k == len(record.phases) - 1:
                # The last phase holds every row and its gate asks only whether
                # all finished: the whole tally, no row per device (a one-phase
                # rollout of 10,000 devices is evaluated after finishing reports).
                tally = whole
            else:
                if members is None:
                    members = self.store.rollout_members(update.id)
                in_phase = [
                    member for member in members if self._phase(update, record, member) == k
                ]
                tally = _tally(in_phase)
                first_completed_at = min(
                    (
                        member.completed_at
                        for member in in_phase
                        if member.status is UpdateStatus.COMPLETED
                        and member.completed_at is not None
                    ),
                    default=None,
                )
                opened_at = record.phase_opened_at
                if update.update_type is UpdateType.SCHEDULED and opened_at is not None:
                    window_closed_at = max(
                        (
                            member.window_end
                            for member in in_phase
                            if member.window_end is not None and member.window_end >= opened_at
                        ),
                        default=None,
                    )
            decision = phase_gate(
                policy,
                phase=k,
                tally=tally,
                first_completed_at=first_completed_at,
                now=now,
                window_closed_at=window_closed_at,
            )
            if decision.verdict is GateVerdict.ADVANCE:
                record = self._automatic(update, RolloutEvent.ADVANCE, now, reason=decision.reason)
            elif decision.verdict is GateVerdict.COMPLETE:
                record = self._automatic(update, RolloutEvent.COMPLETE, now, reason=None)
                break
            else:
                if decision.verdict is GateVerdict.AWAIT_APPROVAL:
                    record = self._await_phase_approval(update, now, decision.reason)
                break
        return record

    def _automatic(
        self, update: UpdateRecord, event: RolloutEvent, now: datetime, *, reason: str | None
    ) -> RolloutRecord:
        def audit(before: RolloutRecord, after: Rollout) -> AuditEntry:
            return AuditEntry(
                "server",
                f"rollout.{event.value}",
                {
                    "update_id": update.id,
                    "version": update.version,
                    "reason": reason,
                    "from": before.state.value,
                    "to": after.state.value,
                    "phase": after.phase,
                },
            )

        def move(rollout: Rollout) -> tuple[Rollout, bool]:
            try:
                return apply_event(rollout, event, halt_reason=reason)
            except RolloutStateError:
                return rollout, False  # a racing replica moved it first: nothing to do

        return self._change(update, move, now=now, audit=audit)

    def _await_phase_approval(
        self, update: UpdateRecord, now: datetime, reason: str
    ) -> RolloutRecord:
        def move(rollout: Rollout) -> tuple[Rollout, bool]:
            if rollout.awaiting_phase_approval or rollout.state is not RolloutState.ACTIVE:
                return rollout, False
            return Rollout(
                rollout.state,
                phase=rollout.phase,
                phase_count=rollout.phase_count,
                uses_approval=True,
                awaiting_phase_approval=True,
                halt_reason=rollout.halt_reason,
            ), True

        def audit(before: RolloutRecord, after: Rollout) -> AuditEntry:
            return AuditEntry(
                "server",
                "rollout.awaits_approval",
                {"update_id": update.id, "version": update.version, "reason": reason},
            )

        return self._change(update, move, now=now, audit=audit)

    def _record_silences(self, update: UpdateRecord, record: RolloutRecord, now: datetime) -> None:
        """Record silence regressions of completed rows within the soak.

        Only the candidates are read: completed rows without a regression whose
        completion and last heartbeat are both older than three heartbeat
        intervals (:func:`~javia_core.rollouts.post_install_regression` decides).
        """
        interval = self.settings.heartbeat_interval_seconds
        candidates = self.store.rollout_devices(
            update.id, silent_before=now - self._silence_limit()
        )
        for row in candidates:
            if row.completed_at is None:
                continue
            reason = post_install_regression(
                completed_at=row.completed_at,
                last_seen=row.last_seen,
                heartbeat_interval_seconds=interval,
                soak_seconds=record.phase_soak_seconds,
                restarts_at_completion=None,
                restarts_reported=None,
                exit_status=None,
                now=now,
            )
            if reason is not None and self.store.record_regression(
                row.device_update_id,
                reason,
                now=now,
                audit=AuditEntry(
                    "server",
                    "device_update.regressed",
                    {
                        "device_uuid": str(row.device_uuid),
                        "update_id": update.id,
                        "version": update.version,
                        "reason": reason,
                    },
                ),
            ):
                self.records.cache.forget_rows(row.device_id)

    def _silence_limit(self) -> timedelta:
        """Three heartbeat intervals: a device not heard from for longer is silent."""
        return timedelta(
            seconds=SILENT_HEARTBEAT_INTERVALS * self.settings.heartbeat_interval_seconds
        )

    def _phase(self, update: UpdateRecord, record: RolloutRecord, member: RolloutMember) -> int:
        """The member's phase (:func:`~javia_core.rollouts.phase_of`), memoised by its stored uuid text.

        Keyed by text so a view or evaluation of 10,000 rows parses no uuid
        after the first; bounded like the catalog's memo.
        """
        key = (update.id, member.device_uuid, member.canary)
        found = self._phases.get(key)
        if found is None:
            found = phase_of(
                uuid.UUID(member.device_uuid), update.version, record.phases, canary=member.canary
            )
            if len(self._phases) >= PHASE_MEMO_SIZE:
                self._phases.clear()
            self._phases[key] = found
        return found

    def evaluate_running(self, now: datetime) -> None:
        """Evaluate every rollout that may still change by itself (the periodic task).

        Active and paused rollouts, and completed ones whose last devices may
        still regress (changed within the soak plus three heartbeat intervals).
        """
        self.records.flush()  # silence is judged on every heartbeat answered so far
        margin = self._silence_limit()
        for update_id, record in self.store.list_rollouts().items():
            if record.state in _SETTLED:
                continue
            if (
                record.state is RolloutState.COMPLETED
                and now - record.updated_at > timedelta(seconds=record.phase_soak_seconds) + margin
            ):
                continue
            self.evaluate(self.records.update(update_id), now)

    # ------------------------------------------------------------------ view
    def view(self, update: UpdateRecord, now: datetime) -> RolloutOut | None:
        """The rollout as ``updates show`` presents it: state, counts per phase, cohort health.

        Aggregate queries only for a one-phase rollout; with phases, one lean
        row per device too (its phase), so it stays cheap for a fleet of tens
        of thousands polled every second.
        """
        record = self.store.get_rollout(update.id)
        if record is None:
            return None
        phase_counts: list[dict[str, int]] = [{} for _ in record.phases]
        phase_regressions = [0 for _ in record.phases]
        if len(record.phases) == 1:  # one phase: every row is in it, two aggregates say it all
            phase_counts[0] = self.store.status_counts([update.id])[update.id]
            phase_regressions[0] = self.store.regression_count(update.id)
        else:
            for member in self.store.rollout_members(update.id):
                phase = self._phase(update, record, member)
                counts = phase_counts[phase]
                counts[member.status.value] = counts.get(member.status.value, 0) + 1
                if member.status is UpdateStatus.COMPLETED and member.regressed:
                    phase_regressions[phase] += 1
        groups = self.store.rollout_status_groups(
            update.id, silent_before=now - self._silence_limit()
        )
        exposed = [group for group in groups if group.status in _STARTED]
        waiting = [group for group in groups if group.status is UpdateStatus.PENDING]
        previous_id = self.store.previous_update_id(update.id)
        previous = (
            []
            if previous_id is None or not waiting
            else self.store.previous_status_groups(update.id, previous_id)
        )
        return RolloutOut(
            state=record.state,
            phase=record.phase_index,
            phases=list(record.phases),
            phase_opened_at=record.phase_opened_at,
            phase_soak_seconds=record.phase_soak_seconds,
            halt_failure_rate=record.halt_failure_rate,
            halt_min_devices=record.halt_min_devices,
            require_approval=record.require_approval,
            phase_approval=record.phase_approval,
            awaiting_phase_approval=record.awaiting_phase_approval,
            halt_reason=record.halt_reason,
            target_tags=None if update.target_tags is None else list(update.target_tags),
            phase_counts=phase_counts,
            phase_regressions=phase_regressions,
            health=RolloutHealth(
                exposed=_cohort(exposed, exposed), previous=_cohort(waiting, previous)
            ),
        )


def _cohort(devices: Sequence[StatusGroup], rows: Sequence[StatusGroup]) -> Cohort:
    """A health cohort: its ``devices`` (counted with their silence) and the finished ``rows``."""
    tally = _finished_tally(rows)
    return Cohort(
        devices=sum(group.count for group in devices),
        finished=tally.finished,
        failed=tally.failed,
        rolled_back=tally.rolled_back,
        regressions=tally.regressions,
        silent=sum(group.count for group in devices if group.silent),
        failure_rate=round(tally.failures * 100 / tally.finished, 2) if tally.finished else 0.0,
    )
