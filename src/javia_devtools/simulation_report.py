"""What ``javia simulate`` measured, and the ``/proc`` readings behind it.

:class:`SimulationReport` holds the run's numbers (durations in seconds,
sizes in bytes); :func:`process_cpu_seconds` and :func:`process_rss_bytes`
read a process's CPU time and resident memory from Linux's ``/proc`` (None
elsewhere); :func:`percentiles` summarises per-device timings.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SimulationReport", "percentiles", "process_cpu_seconds", "process_rss_bytes"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class SimulationReport:
    """What a simulation measured. Durations in seconds, sizes in bytes.

    Attributes:
        devices: simulated devices.
        heartbeat_seconds: the heartbeat interval devices were told.
        register_seconds: registering every device through the admin API.
        publish_seconds: the publish request (upload + creating device rows).
        completed: devices that reported ``completed`` in time.
        failed: devices that reported ``failed`` (the simulated bad release).
        server_completed: the server's own count of ``completed`` rows.
        seconds_to_all_completed: from the publish answer until the last device
            reported ``completed``; None if not all did.
        completion_percentiles: per-device seconds to ``completed`` since the
            publish answer: keys ``p50``, ``p90``, ``p99``, ``max``.
        requests: requests sent, by kind (heartbeat, status, manifest, ...).
        errors: failures by kind and cause, e.g. ``"heartbeat: HTTP 500"``.
        heartbeat_latency_ms: heartbeat round trips in milliseconds (``p50``,
            ``p99``, ``max``).
        server_cpu_seconds: CPU the server used from publish to the end (None
            without ``/proc``).
        server_cpu_percent: that CPU as a share of one core over the same time.
        server_rss_bytes: the server's resident memory at the end (None without
            ``/proc``).
        simulator_cpu_seconds: CPU this simulator process used over the same
            time as ``server_cpu_seconds`` (the two share the machine's cores).
        wall_seconds: the whole run, server start included.
        started: devices that started the update (reported ``downloading``):
            the devices exposed to the release.
        server_started: the server's count of rows past ``pending`` (started).
        started_after_halt: devices that started after the rollout was seen
            ``halted`` (a halt lets installs in flight finish; it offers
            nothing new, so this should be devices already offered).
        rollout_state: the rollout's state at the end (docs/rollouts.md).
        halt_reason: why it halted, None if it did not.
        first_phase_devices: devices the server placed in the first phase.
        seconds_to_halt: from the publish answer until the rollout was seen
            ``halted`` (read every 0.5 s through the admin API); None if not.
        seconds_first_failure_to_halt: from the first failure signal sent (a
            ``failed`` report or a heartbeat reporting a crash) until the
            rollout was seen ``halted``; None if either did not happen.
        seconds_last_failure_to_halt: from the last failure signal sent before
            the halt was seen (the one that crossed the threshold, or a later
            one) until then; None as above.
        in_flight_at_halt: devices that had started and not finished when the
            halt was seen.
        installs_deferred: heartbeat answers the server gave without the
            directive of an install due now because it was busy (install
            admission, docs/architecture.md; ``javia_installs_deferred_total``
            of its ``/metrics`` at the end); None if it could not be read.
    """

    devices: int
    heartbeat_seconds: float
    register_seconds: float
    publish_seconds: float
    completed: int
    server_completed: int
    seconds_to_all_completed: float | None
    completion_percentiles: dict[str, float]
    requests: dict[str, int]
    errors: dict[str, int]
    heartbeat_latency_ms: dict[str, float]
    server_cpu_seconds: float | None
    server_cpu_percent: float | None
    server_rss_bytes: int | None
    wall_seconds: float
    simulator_cpu_seconds: float | None = None
    failed: int = 0
    started: int = 0
    server_started: int = 0
    started_after_halt: int = 0
    rollout_state: str | None = None
    halt_reason: str | None = None
    first_phase_devices: int | None = None
    seconds_to_halt: float | None = None
    seconds_first_failure_to_halt: float | None = None
    seconds_last_failure_to_halt: float | None = None
    in_flight_at_halt: int = 0
    installs_deferred: int | None = None

    @property
    def error_count(self) -> int:
        """All failed requests and verifications."""
        return sum(self.errors.values())

    @property
    def succeeded(self) -> bool:
        """Every device completed, the server agrees, and nothing failed."""
        return (
            self.completed == self.devices
            and self.server_completed == self.devices
            and self.error_count == 0
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return {**asdict(self), "error_count": self.error_count, "succeeded": self.succeeded}


def percentiles(values: list[float], names: dict[str, float]) -> dict[str, float]:
    """The value at each named fraction of the sorted ``values``, rounded to 3 decimals.

    Nearest rank: ``{"p50": 0.5, "max": 1.0}`` gives the median and the
    largest value. An empty ``values`` gives ``{}``.
    """
    if not values:
        return {}
    ordered = sorted(values)
    result = {}
    for name, fraction in names.items():
        index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
        result[name] = round(ordered[index], 3)
    return result


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by process ``pid``, from ``/proc/PID/stat``.

    Returns None where ``/proc`` is not available or the process is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces: fields after its closing ')'.
    fields = data.rsplit(")", 1)[-1].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux ``/proc``; empty without it)."""
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
                children.extend(int(child) for child in handle.read().split())
        except (OSError, ValueError):
            continue
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (a server's worker processes), from ``/proc``."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(_children(current))
    return found


def process_tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` and its live descendants (``javia server --workers``); None: gone.

    Workers that died and were replaced during the run are not counted.
    """
    own = process_cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(process_cpu_seconds(child) or 0.0 for child in process_tree(pid)[1:])


def process_tree_rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` and its live descendants, in bytes (shared pages counted twice)."""
    own = process_rss_bytes(pid)
    if own is None:
        return None
    return own + sum(process_rss_bytes(child) or 0 for child in process_tree(pid)[1:])


def process_rss_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid`` in bytes (``VmRSS``), or None without ``/proc``."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None
