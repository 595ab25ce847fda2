"""Install admission: installs begin at the rate the server keeps up with (issue 14).

An instant update offered to 10,000 devices that heartbeat within the same
30 seconds asks for 60,000 install requests (status reports, manifest,
signature, payload) in those 30 seconds; a server that answers a few
hundred a second then answers every request, heartbeats included, behind a
queue minutes long. A device that has not *begun* an install loses nothing
by being told about it a little later, so the server paces the moment
installs begin, the way TCP paces packets (RFC 5681, section 3.1):

* the **signal** that the server process is busy: its event loop runs late
  (the lag of a timer on the loop, a moving mean: the process is short of
  CPU, from its own work or the machine's — the signal of Node's
  ``toobusy``), or it is working on many requests at once (Little's law:
  arrival rate × time in the server; package downloads, whose time is the
  transfer's and which have their own cap, ``max_concurrent_downloads``, and
  held wake-up requests, which wait by design, are not counted);
* the **pace**: a token bucket of install starts per second. It starts at
  ``initial_rate_per_second``, doubles at every half second in which devices
  were refused or refused devices still wait in line, and the process was
  not busy (slow start), is halved at every half second the process is busy
  and from then on grows by a fixed step only (congestion avoidance:
  additive increase, multiplicative decrease). After ``calm_seconds``
  neither busy nor with devices refused or waiting, it starts over from
  ``initial_rate_per_second`` (or its current pace, if higher) in slow
  start. The bucket holds a second's worth, at least ``burst`` starts, so a
  small fleet (or a test) is never paced;
* a heartbeat whose directive would make the device **begin** an install now
  (a ``pending`` row due now) carries it only with a token; otherwise the
  answer has no directive, the row stays ``pending`` and the device waits
  in line (:meth:`InstallAdmission.devices_to_wake`): twice a second the
  server wakes as many of the waiting devices as the pace admits in that
  time, first refused first, over the wake-up channel; a device that holds
  no channel is offered the update at its next heartbeat
  (:meth:`~javia_updates.service.heartbeat.Heartbeats.directive_for`). The
  answer does not ask the device back sooner: in a 10,000-device simulation
  that hint brought the refused back faster than the pace admitted them,
  and their heartbeats kept the server busy (docs/benchmarks.md);
* a device already downloading, installing, staged or retrying keeps its
  directive: no install is cut in the middle, and the work in progress
  drains at the server's own pace.

Each server process (``--workers``) paces its own share; the rates add up.

Pure: the caller measures (the request middleware,
:class:`~javia_updates.server.metrics.RequestMetrics`, counts requests; a
task on the server's event loop reports its lag); the clock is injected. Thread-safe: heartbeats are answered on the event loop
and in the thread pool.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ADMITTED_MEMORY_SECONDS", "MAX_WAITING_DEVICES", "AdmissionState", "InstallAdmission"]

#: The most devices remembered in line for a wake-up, and the most remembered as
#: admitted (the oldest are forgotten beyond it: a forgotten waiting device is
#: offered the update at its next heartbeat anyway).
MAX_WAITING_DEVICES = 100_000
#: A device admitted this recently is admitted again without a token: it asks
#: again (another heartbeat, an update check) before its first report, seconds.
ADMITTED_MEMORY_SECONDS = 120.0
#: Weight of one new lag sample in the moving mean.
_LAG_SAMPLE_WEIGHT = 0.3


@dataclass(frozen=True)
class AdmissionState:
    """A snapshot of :class:`InstallAdmission`, for tests and benchmarks.

    Attributes:
        rate_per_second: the pace, install starts per second (this process).
        in_progress: requests in progress in this process now (not counting
            package downloads and held wake-up requests).
        loop_lag_seconds: the moving mean of the event loop's lag, seconds.
        admitted: installs admitted since the process started.
        refused: directives withheld since the process started.
        waiting: refused devices waiting in line for a wake-up.
    """

    rate_per_second: float
    in_progress: int
    loop_lag_seconds: float
    admitted: int
    refused: int
    waiting: int


class InstallAdmission:
    """Paces the start of installs by how busy the server process is (module docstring).

    Args:
        limit: other requests in progress in this process at which it counts
            as busy; at least 1.
        max_loop_lag_seconds: the event loop's mean lag above which it counts
            as busy, seconds (> 0).
        initial_rate_per_second: the first pace, install starts per second.
        min_rate_per_second: the slowest pace: a busy server still starts
            some installs, so a rollout never stalls.
        step_per_second: the additive growth per interval after a halving.
        burst: the fewest starts the bucket holds.
        calm_seconds: neither busy nor with devices waiting this long, the pace starts
            over (slow start), seconds.
        interval_seconds: how often the pace is adjusted, seconds.
        clock: a monotonic clock, seconds.

    Raises:
        ValueError: ``limit`` below 1, or a lag, rate or interval not above 0.
    """

    def __init__(
        self,
        *,
        limit: int,
        max_loop_lag_seconds: float,
        initial_rate_per_second: float = 20.0,
        min_rate_per_second: float = 2.0,
        step_per_second: float = 2.0,
        burst: int = 10,
        calm_seconds: float = 30.0,
        interval_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if not (max_loop_lag_seconds > 0 and min_rate_per_second > 0 and interval_seconds > 0):
            raise ValueError(
                "max_loop_lag_seconds, min_rate_per_second and interval_seconds must be above 0"
            )
        self.limit = limit
        self.max_loop_lag_seconds = max_loop_lag_seconds
        self.min_rate_per_second = min_rate_per_second
        self.step_per_second = step_per_second
        self.burst = max(1, burst)
        self.initial_rate_per_second = max(min_rate_per_second, initial_rate_per_second)
        self.calm_seconds = calm_seconds
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._in_progress = 0
        self._loop_lag = 0.0
        self._rate = self.initial_rate_per_second
        self._slow_start = True
        now = clock()
        self._calm_since = now
        self._tokens = float(self.burst)
        self._filled_at = now
        self._interval_started = now
        self._busy_in_interval = False
        self._refused_in_interval = 0
        self._admitted = 0
        self._refused = 0
        self._waiting: dict[uuid.UUID, None] = {}  # insertion-ordered: first refused first
        self._admitted_at: dict[uuid.UUID, float] = {}  # insertion-ordered: oldest first

    # ------------------------------------------------------------------ signals
    def request_started(self) -> None:
        """One request began (call :meth:`request_finished` when it ends, whatever happens)."""
        with self._lock:
            self._in_progress += 1

    def request_finished(self) -> None:
        """One request counted by :meth:`request_started` ended."""
        with self._lock:
            self._in_progress -= 1

    def observe_loop_lag(self, seconds: float) -> None:
        """How late one timer on the server's event loop fired, seconds (0 or more)."""
        with self._lock:
            self._loop_lag += _LAG_SAMPLE_WEIGHT * (max(0.0, seconds) - self._loop_lag)
            if self._loop_lag > self.max_loop_lag_seconds:
                self._busy_in_interval = True

    # ------------------------------------------------------------------ decisions
    def admit(self, device: uuid.UUID | None = None) -> bool:
        """Whether one more install may begin now (a token was left); counts the answer.

        Args:
            device: the device asking; refused, it waits in line for a wake-up
                (:meth:`devices_to_wake`), admitted, it leaves the line. A
                device admitted within :data:`ADMITTED_MEMORY_SECONDS` is
                admitted again without a token (it asked again before its
                first report: the offer must not come and go).
        """
        with self._lock:
            now = self.clock()
            if device is not None:
                self._forget_admitted(now)
                if device in self._admitted_at:
                    return True
            if self._in_progress > self.limit:
                self._busy_in_interval = True
            self._adjust(now)
            capacity = max(float(self.burst), self._rate)
            self._tokens = min(capacity, self._tokens + (now - self._filled_at) * self._rate)
            self._filled_at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                self._admitted += 1
                if device is not None:
                    self._waiting.pop(device, None)
                    if len(self._admitted_at) >= MAX_WAITING_DEVICES:
                        del self._admitted_at[next(iter(self._admitted_at))]
                    self._admitted_at[device] = now
                return True
            self._refused += 1
            self._refused_in_interval += 1
            if device is not None and device not in self._waiting:
                if len(self._waiting) >= MAX_WAITING_DEVICES:
                    del self._waiting[next(iter(self._waiting))]
                self._waiting[device] = None
            return False

    def _forget_admitted(self, now: float) -> None:
        """Drop the admissions older than :data:`ADMITTED_MEMORY_SECONDS` (oldest first)."""
        while self._admitted_at:
            device, at = next(iter(self._admitted_at.items()))
            if now - at < ADMITTED_MEMORY_SECONDS:
                return
            del self._admitted_at[device]

    def devices_to_wake(self, period_seconds: float) -> list[uuid.UUID]:
        """The waiting devices the pace admits in the next ``period_seconds``, first refused first.

        They leave the line; woken, each heartbeats and is admitted or, if
        other devices took the starts meanwhile, refused and back in line.
        At least one device while any waits.
        """
        with self._lock:
            count = min(len(self._waiting), max(1, int(self._rate * period_seconds)))
            chosen = [device for device, _ in zip(self._waiting, range(count), strict=False)]
            for device in chosen:
                del self._waiting[device]
            return chosen

    def state(self) -> AdmissionState:
        """A snapshot (:class:`AdmissionState`)."""
        with self._lock:
            return AdmissionState(
                rate_per_second=self._rate,
                in_progress=self._in_progress,
                loop_lag_seconds=self._loop_lag,
                admitted=self._admitted,
                refused=self._refused,
                waiting=len(self._waiting),
            )

    def _adjust(self, now: float) -> None:
        """Once per interval: halve the pace if the process was busy, grow it if devices waited."""
        if now - self._interval_started < self.interval_seconds:
            return
        busy = self._busy_in_interval or self._loop_lag > self.max_loop_lag_seconds
        # Demand: devices were refused, or refused ones still wait in line. The
        # woken are admitted at the pace and so are not refused again: without
        # the line, a pace halved during a burst would never grow back.
        demand = self._refused_in_interval > 0 or bool(self._waiting)
        if busy:
            self._rate = max(self.min_rate_per_second, self._rate / 2)
            self._slow_start = False
        elif demand:
            self._rate = self._rate * 2 if self._slow_start else self._rate + self.step_per_second
        if busy or demand:
            self._calm_since = now
        elif now - self._calm_since >= self.calm_seconds and not self._slow_start:
            self._rate = max(self._rate, self.initial_rate_per_second)
            self._slow_start = True
        self._interval_started = now
        self._busy_in_interval = False
        self._refused_in_interval = 0
