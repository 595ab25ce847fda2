"""Is a rollout failing? Post-install regressions and the automatic halt (docs/rollouts.md, halt). Pure.

Failures count ``failed`` and ``rolled_back`` rows and post-install
regressions: a device that reported ``completed`` and, within the soak, fell
silent or reported its application restarting or crashing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from javia_core.rollouts.policy import RolloutError, RolloutPolicy, check_aware
from javia_core.scheduling import describe_duration

__all__ = [
    "HALT_CONFIDENCE",
    "SILENT_HEARTBEAT_INTERVALS",
    "Tally",
    "failure_rate_lower_bound",
    "halt_decision",
    "post_install_regression",
]

#: A completed device silent for more than this many heartbeat intervals regressed.
SILENT_HEARTBEAT_INTERVALS = 3
#: How sure the halt rule must be that the failure rate reached the threshold (one-sided).
HALT_CONFIDENCE = 0.95
#: The standard normal quantile of :data:`HALT_CONFIDENCE` (1.645).
_Z = 1.6448536269514722


def failure_rate_lower_bound(failures: int, finished: int) -> float:
    """The Wilson score lower bound of the true failure rate, in percent, at :data:`HALT_CONFIDENCE`.

    With ``failures`` of ``finished`` devices failed, the true rate of the
    release is at least this with 95 % confidence (one-sided; Wilson, 1927).
    Unlike the observed rate it grows with evidence: 1 of 10 (observed 10 %)
    gives 2.3 %, 3 of 10 gives 12.7 %, 5 of 5 gives 64.9 %, 10 of 100 gives 6.1 %.

    Args:
        failures: failed + rolled back + regressed devices, 0..finished.
        finished: devices with a final outcome, >= 0.

    Returns:
        Percent in [0, 100); 0.0 when nothing finished.
    """
    if finished <= 0:
        return 0.0
    n = finished
    p = failures / n
    z2 = _Z * _Z
    centre = p + z2 / (2 * n)
    margin = _Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z2 / n)) * 100


@dataclass(frozen=True, slots=True)
class Tally:
    """Counts of one phase or of a whole rollout, in devices.

    Attributes:
        targeted: devices in the phase (or rollout), finished or not.
        completed: reported ``completed``, regressed ones included.
        failed: reported ``failed``.
        rolled_back: reported ``rolled_back``.
        regressions: completed devices with a post-install regression
            (:func:`post_install_regression`); at most ``completed``.

    Raises:
        RolloutError: a negative count, more regressions than completions or
            more finished devices than targeted ones.
    """

    targeted: int
    completed: int = 0
    failed: int = 0
    rolled_back: int = 0
    regressions: int = 0

    def __post_init__(self) -> None:
        counts = (self.targeted, self.completed, self.failed, self.rolled_back, self.regressions)
        if any(count < 0 for count in counts):
            raise RolloutError(f"device counts cannot be negative: {self}")
        if self.regressions > self.completed:
            raise RolloutError(f"more regressions than completed devices: {self}")
        if self.finished > self.targeted:
            raise RolloutError(f"more finished devices than targeted ones: {self}")

    @property
    def finished(self) -> int:
        """Devices that reached a final outcome: completed, failed or rolled back."""
        return self.completed + self.failed + self.rolled_back

    @property
    def failures(self) -> int:
        """Failed + rolled back + post-install regressions."""
        return self.failed + self.rolled_back + self.regressions

    @property
    def healthy(self) -> int:
        """Completed devices without a regression."""
        return self.completed - self.regressions

    def fails_at(self, rate: float) -> bool:
        """Whether failures are at least ``rate`` percent of the finished devices (none: no)."""
        return self.finished > 0 and self.failures * 100 >= rate * self.finished

    def describe_failures(self, rate: float, *, lower_bound: float | None = None) -> str:
        """``3 of 5 finished devices failed (60%) >= 10%: 2 failed, 1 rolled back``.

        Args:
            rate: the threshold in percent the failures are compared with.
            lower_bound: the rate's 95 % lower bound in percent, shown when given
                (``(60%; at least 23.1% with 95% confidence)``).
        """
        percent = self.failures * 100 / self.finished if self.finished else 0.0
        shown = f"{percent:.3g}%"
        if lower_bound is not None:
            shown += f"; at least {lower_bound:.3g}% with 95% confidence"
        parts = [
            f"{count} {label}"
            for count, label in (
                (self.failed, "failed"),
                (self.rolled_back, "rolled back"),
                (self.regressions, "regressed after install"),
            )
            if count
        ]
        return (
            f"{self.failures} of {self.finished} finished devices failed ({shown}) "
            f">= {rate:g}%: {', '.join(parts)}"
        )


def halt_decision(policy: RolloutPolicy, tally: Tally) -> str | None:
    """Whether a rollout must halt now, and why (docs/rollouts.md, halt).

    It halts when at least ``halt_min_devices`` devices have finished and the
    failures (failed + rolled back + post-install regressions) show, with 95 %
    confidence, a failure rate of at least ``halt_failure_rate`` percent: the
    Wilson lower bound of the rate (:func:`failure_rate_lower_bound`) reaches
    the threshold, or every finished device failed. A release that fails
    everywhere halts at ``halt_min_devices`` as with a plain threshold, while
    a good release's rare random failure (1 in the first 10 finished devices,
    5 % of rollouts at 0.5 % failures) no longer halts it by chance. The server
    asks after every status report and heartbeat that changes the tally, so a
    halt lands within one report.

    Args:
        policy: the rollout's policy.
        tally: the counts of the whole rollout.

    Returns:
        The reason, e.g. ``3 of 5 finished devices failed (60%; at least 27.2%
        with 95% confidence) >= 10%: 2 failed, 1 rolled back``, or None to go on.
    """
    if tally.finished < policy.halt_min_devices or not tally.failures:
        return None
    bound = failure_rate_lower_bound(tally.failures, tally.finished)
    if bound < policy.halt_failure_rate and tally.failures < tally.finished:
        return None
    every_one = tally.failures == tally.finished  # "(100%)" says it all
    return tally.describe_failures(
        policy.halt_failure_rate, lower_bound=None if every_one else bound
    )


def post_install_regression(
    *,
    completed_at: datetime,
    last_seen: datetime | None,
    heartbeat_interval_seconds: float,
    soak_seconds: int,
    restarts_at_completion: int | None,
    restarts_reported: int | None,
    exit_status: int | None,
    now: datetime,
) -> str | None:
    """Whether a device that completed the update has since regressed (docs/rollouts.md, halt).

    A completed device regressed when, within the soak window that starts at its
    completion, either

    * it fell silent (its last contact, the later of ``last_seen`` and
      ``completed_at``, lies inside the window) and ``now`` is more than three
      heartbeat intervals past that contact; a device that comes back clears it;
    * it reported its application restarting (restart count above the count it
      reported at completion) or crashing (a non-zero exit status).

    Args:
        completed_at: when the server recorded its ``completed`` report (aware).
        last_seen: its last heartbeat (aware), None if none since.
        heartbeat_interval_seconds: the heartbeat interval it was told, seconds > 0.
        soak_seconds: the policy's soak, seconds.
        restarts_at_completion: the application's restart count it reported with
            (or right after) completion; None if unknown (then any count reported
            above 0 counts as a restart).
        restarts_reported: the latest restart count it reported during the soak,
            None if none.
        exit_status: the application's last exit status reported during the soak,
            None if it has not exited.
        now: an aware datetime, the server's clock.

    Returns:
        A one-line reason, e.g. ``silent for 20 min (> 3 heartbeat intervals of
        5 min) since 2 min after installing``, or None when healthy.

    Raises:
        RolloutError: a naive datetime or a non-positive interval.
    """
    for name, value in (("completed_at", completed_at), ("now", now), ("last_seen", last_seen)):
        check_aware(name, value)
    if not heartbeat_interval_seconds > 0:
        raise RolloutError(
            f"heartbeat interval must be above 0 seconds, got {heartbeat_interval_seconds!r}"
        )
    if exit_status is not None and exit_status != 0:
        return f"application exited with status {exit_status} after installing"
    baseline = restarts_at_completion or 0
    if restarts_reported is not None and restarts_reported > baseline:
        return f"application restarted {restarts_reported - baseline} time(s) after installing"
    contact = completed_at if last_seen is None else max(last_seen, completed_at)
    silent_for = now - contact
    limit = timedelta(seconds=SILENT_HEARTBEAT_INTERVALS * heartbeat_interval_seconds)
    if contact - completed_at < timedelta(seconds=soak_seconds) and silent_for > limit:
        return (
            f"silent for {describe_duration(silent_for.total_seconds())} "
            f"(> {SILENT_HEARTBEAT_INTERVALS} heartbeat intervals of "
            f"{describe_duration(heartbeat_interval_seconds)}) since "
            f"{describe_duration((contact - completed_at).total_seconds())} after installing"
        )
    return None
