"""The rollout part of ``javia updates show``: state, halt reason, a bar per phase, the A/B health.

Built from :class:`javia_core.models.RolloutOut` (docs/rollouts.md). Phases are
shown 1-based (``phase 1 of 4``), as the gate's messages name them. Everything
the server sent is shown as text (:class:`~javia_updates.cli.common.SafeTable`,
:func:`~javia_updates.cli.common.cell`).
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from javia_core.models import Cohort, RolloutOut, RolloutState
from javia_core.rollouts import format_duration
from javia_core.rollouts.statuses import FINISHED, TOOK_OFFER
from javia_updates.cli.common import SafeTable, cell, wire_time

__all__ = ["BAR_WIDTH", "PhaseProgress", "phase_bar", "rollout_view"]

#: Characters of a phase's progress bar.
BAR_WIDTH = 30

STATE_STYLE = {
    RolloutState.AWAITING_APPROVAL: "yellow",
    RolloutState.ACTIVE: "green",
    RolloutState.PAUSED: "yellow",
    RolloutState.HALTED: "bold red",
    RolloutState.CANCELLED: "red",
    RolloutState.COMPLETED: "green",
}

#: Took the offer, not finished: downloading, staged (waits for its window), retrying, installing.
_IN_FLIGHT = tuple(sorted(status.value for status in TOOK_OFFER - FINISHED))
_FAILED = ("failed", "rolled_back")


class PhaseProgress:
    """One phase's devices by outcome, from one entry of ``RolloutOut.phase_counts``:: ``completed``,
    ``failed`` (failed, rolled back, or completed and then regressed: ``regressions``, from
    ``RolloutOut.phase_regressions``), ``in_flight`` (took the update, not finished:
    downloading, ``staged`` ahead of the window, ``retrying`` a transient fault,
    installing; ``staged`` and ``retrying`` also apart) and ``devices`` (every row of
    the phase)."""

    def __init__(self, counts: dict[str, int], regressions: int = 0) -> None:
        self.completed = counts.get("completed", 0) - regressions
        self.failed = sum(counts.get(status, 0) for status in _FAILED) + regressions
        self.in_flight = sum(counts.get(status, 0) for status in _IN_FLIGHT)
        self.staged = counts.get("staged", 0)
        self.retrying = counts.get("retrying", 0)
        self.devices = sum(counts.values())

    def in_flight_text(self) -> str:
        """``5``, or ``5 (2 staged, 1 retrying)`` when some wait for their window or retry."""
        apart = [
            f"{count} {name}"
            for count, name in ((self.staged, "staged"), (self.retrying, "retrying"))
            if count
        ]
        return f"{self.in_flight} ({', '.join(apart)})" if apart else str(self.in_flight)


def phase_bar(progress: PhaseProgress, width: int = BAR_WIDTH) -> Text:
    """A bar of ``width`` characters: completed ``█`` (green), failed ``▓`` (red), in flight
    ``▒`` (yellow), the rest ``░``; readable without colours too.

    Each part's length is its share of the phase's devices, rounded down, but
    at least one character when it is not zero; an empty phase is all rest.
    """
    total = progress.devices
    parts: list[tuple[int, str, str]] = []
    for count, char, style in (
        (progress.completed, "█", "green"),
        (progress.failed, "▓", "red"),
        (progress.in_flight, "▒", "yellow"),
    ):
        length = 0 if total == 0 or count == 0 else max(1, count * width // total)
        parts.append((length, char, style))
    used = sum(length for length, _, _ in parts)
    if used > width:  # the at-least-one rule overflowed: trim the longest part
        longest = max(range(len(parts)), key=lambda index: parts[index][0])
        length, char, style = parts[longest]
        parts[longest] = (length - (used - width), char, style)
        used = width
    bar = Text()
    for length, char, style in parts:
        bar.append(char * length, style=style)
    bar.append("░" * (width - used), style="dim")
    return bar


def _phase_state(rollout: RolloutOut, index: int) -> Text:
    if index < rollout.phase:
        return cell("open", "green")
    if index > rollout.phase:
        return cell("not yet open", "dim")
    if rollout.awaiting_phase_approval:
        return cell("open, next waits for approve", "yellow")
    return cell("open (current)", "bold")


def _phases_table(rollout: RolloutOut) -> Table:
    table = SafeTable(title="phases", title_justify="left")
    for column in ("phase", "share", "progress", "completed", "failed", "in flight", "devices"):
        table.add_column(column)
    table.add_column("state")
    count = len(rollout.phases)
    for index, share in enumerate(rollout.phases):
        counts = rollout.phase_counts[index] if index < len(rollout.phase_counts) else {}
        regressed = rollout.phase_regressions
        progress = PhaseProgress(counts, regressed[index] if index < len(regressed) else 0)
        table.add_row(
            f"{index + 1} of {count}",
            f"{share}%",
            phase_bar(progress),
            cell(progress.completed, "green"),
            cell(progress.failed, "red" if progress.failed else ""),
            cell(progress.in_flight_text(), "yellow" if progress.retrying else ""),
            str(progress.devices),
            _phase_state(rollout, index),
        )
    return table


def _cohort_row(name: str, cohort: Cohort) -> list[str | Text]:
    return [
        name,
        str(cohort.devices),
        str(cohort.finished),
        cell(f"{cohort.failure_rate:.1f}%", "red" if cohort.failure_rate else ""),
        str(cohort.failed),
        str(cohort.rolled_back),
        str(cohort.regressions),
        str(cohort.silent),
    ]


def _health_table(rollout: RolloutOut) -> Table:
    table = SafeTable(title="health: exposed vs previous version", title_justify="left")
    for column in (
        "cohort",
        "devices",
        "finished",
        "failure rate",
        "failed",
        "rolled back",
        "regressions",
        "silent",
    ):
        table.add_column(column)
    table.add_row(*_cohort_row("exposed (started this update)", rollout.health.exposed))
    table.add_row(*_cohort_row("previous (still on the old version)", rollout.health.previous))
    return table


def _summary(rollout: RolloutOut) -> Text:
    count = len(rollout.phases)
    line = Text("rollout: ")
    line.append(rollout.state.value, style=STATE_STYLE.get(rollout.state, ""))
    if rollout.state is RolloutState.AWAITING_APPROVAL:
        line.append(": awaiting approval: nothing offered")
    elif count:
        line.append(
            f", phase {rollout.phase + 1} of {count} ({rollout.phases[rollout.phase]}%) open"
            if 0 <= rollout.phase < count
            else f", phase {rollout.phase + 1} of {count}"
        )
    opened = wire_time(rollout.phase_opened_at)
    if opened:
        line.append(f" since {opened[:19]} UTC")
    line.append(
        f"; soak {format_duration(rollout.phase_soak_seconds)}, halts at {rollout.halt_failure_rate:g}% "
        f"once {rollout.halt_min_devices} device(s) finished"
    )
    if rollout.target_tags:
        line.append("; tags ")
        line.append_text(cell(", ".join(rollout.target_tags)))
    return line


def rollout_view(rollout: RolloutOut) -> RenderableType:
    """The rollout's summary line, its halt reason, the phases table and the health table."""
    parts: list[RenderableType] = [_summary(rollout)]
    if rollout.halt_reason:
        reason = Text("halt reason: ", style="bold red")
        reason.append_text(cell(rollout.halt_reason))
        parts.append(reason)
    parts.extend([_phases_table(rollout), _health_table(rollout)])
    return Group(*parts)
