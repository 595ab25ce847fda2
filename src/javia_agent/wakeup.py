"""The wake-up channel: one held request beside the heartbeat (docs/agent.md, "The wake-up channel").

A daemon thread keeps one ``GET /api/v1/devices/{uuid}/wakeup?wait=N``
open; when the server answers that something concerns the device (an update,
a rollout change, its token), the thread tells the main loop to heartbeat now
(``wake``, :meth:`javia_agent.agent.Agent.wake`). The heartbeat stays the
source of truth and the fallback: whatever the channel does, the main loop
still heartbeats every interval, and nothing in a wake-up answer is trusted
beyond "heartbeat now, maybe after a bounded spread".

Against a hostile or broken server or proxy:

- the answer is validated in :meth:`~javia_agent.client.DeviceClient._parse`
  (:class:`~javia_core.wakeup.WakeupAnswer`), read within a deadline of the
  hold plus :data:`DEADLINE_MARGIN_SECONDS` and at most
  :data:`~javia_agent.transport.MAX_ANSWER_BYTES`; a server that never
  answers is cut at the deadline;
- every failure (no answer, a cut connection, an error status, a refused
  answer) backs off exponentially with jitter (2 s doubling to 300 s,
  :func:`~javia_core.wakeup.reconnect_delay`), at least the ``Retry-After``
  of a 503; an answer that came back within :data:`QUICK_ANSWER_SECONDS`
  counts as a failure too (a legitimate one then costs a reconnect delay
  of 1-2 s, nothing else), so a proxy cutting the request every few seconds
  or a server answering at once cannot make it busy-loop;
- wake-ups reach the main loop at most once per :data:`MIN_WAKE_SPACING_SECONDS`.

Time and waiting are injected (``monotonic``, ``wait``), so the rules are
tested without sleeps (:meth:`WakeupChannel.step`).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from javia_agent.client import DeviceClient
from javia_agent.config import AgentConfig, read_token
from javia_agent.errors import AgentError, AuthenticationError
from javia_core.wakeup import WakeupAnswer, reconnect_delay

__all__ = [
    "DEADLINE_MARGIN_SECONDS",
    "MIN_WAKE_SPACING_SECONDS",
    "QUICK_ANSWER_SECONDS",
    "WakeupChannel",
]

logger = logging.getLogger(__name__)

#: The request's deadline is the hold asked for plus this, in seconds.
DEADLINE_MARGIN_SECONDS = 15.0
#: An answer sooner than this after asking counts as a failure (the reconnect delays grow).
QUICK_ANSWER_SECONDS = 1.0
#: Wake-ups are requested of the main loop at most once per this many seconds.
MIN_WAKE_SPACING_SECONDS = 2.0


class WakeupChannel:
    """Holds the wake-up request and wakes the main loop (module docstring).

    Args:
        wait_for_wakeup: one held request (:meth:`DeviceClient.wait_for_wakeup`).
        wake: tells the main loop to heartbeat after the given seconds (thread-safe;
            :meth:`javia_agent.agent.Agent.wake`).
        wait_seconds: the hold asked of the server, in seconds.
        stop: set when the agent stops.
        wait: blocks up to the given seconds, returns early (True) when
            stopping (default: ``stop.wait``).
        monotonic: seconds on a clock that never jumps.
        rng: randomness for jitter and spread.
    """

    def __init__(
        self,
        wait_for_wakeup: Callable[[int], WakeupAnswer],
        wake: Callable[[float], None],
        *,
        wait_seconds: int,
        stop: threading.Event,
        wait: Callable[[float], bool] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._wait_for_wakeup = wait_for_wakeup
        self._wake = wake
        self.wait_seconds = wait_seconds
        self._stop = stop
        self._wait = wait or stop.wait
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._thread: threading.Thread | None = None
        self._last_wake: float | None = None
        #: Failures in a row (the backoff's exponent).
        self.failures = 0
        #: Wake-ups handed to the main loop, and held requests sent (for tests and status).
        self.wakeups = 0
        self.requests = 0

    @classmethod
    def from_config(
        cls, config: AgentConfig, wake: Callable[[float], None], stop: threading.Event
    ) -> WakeupChannel:
        """A channel with its own client, whose deadlines fit the hold.

        Raises:
            ConfigError: the server URL is insecure or the token unreadable.
        """
        longest = config.wakeup_wait_seconds + DEADLINE_MARGIN_SECONDS
        client = DeviceClient(
            config.server_url or "",
            device_uuid=config.device_uuid,
            token=read_token(config.token_file),
            ca_bundle=config.ca_bundle,
            allow_insecure_http=config.allow_insecure_http,
            timeout_seconds=longest,
            request_deadline_seconds=longest,
            user_agent="javia-agent wake-up",
            token_source=lambda: read_token(config.token_file),
            should_stop=stop.is_set,
        )
        return cls(client.wait_for_wakeup, wake, wait_seconds=config.wakeup_wait_seconds, stop=stop)

    # -- the thread ---------------------------------------------------------------------

    def start(self) -> None:
        """Hold the channel in a daemon thread until ``stop`` is set."""
        self._thread = threading.Thread(target=self.run, name="javia-wakeup", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Hold, wake, reconnect until stopped; never raises."""
        while not self._stop.is_set():
            try:
                delay = self.step()
            except Exception:  # noqa: BLE001 - a bug here must not end the channel for good
                self.failures += 1
                delay = reconnect_delay(None, self.failures, self._rng)
                logger.exception("wake-up channel failed (retry in %.0f s)", delay)
            if self._wait(delay):
                return

    # -- one request --------------------------------------------------------------------

    def step(self) -> float:
        """Send one held request, act on its answer; the seconds to wait before the next."""
        asked_at = self._monotonic()
        self.requests += 1
        try:
            answer = self._wait_for_wakeup(self.wait_seconds)
        except AuthenticationError as error:
            # The heartbeat finds out too and says so; here only wait long.
            self.failures = max(self.failures + 1, 6)
            delay = reconnect_delay(error.retry_after_seconds, self.failures, self._rng)
            logger.warning("wake-up: %s (retry in %.0f s)", error, delay)
            return delay
        except AgentError as error:
            self.failures += 1
            delay = reconnect_delay(error.retry_after_seconds, self.failures, self._rng)
            log = logger.info if self.failures <= 1 else logger.warning
            log("wake-up channel: %s (reconnecting in %.0f s)", error, delay)
            return delay
        quick = self._monotonic() - asked_at < QUICK_ANSWER_SECONDS
        if answer.heartbeat:
            self._wake_main_loop(answer)
        # An answer at once counts as a failure (a proxy cutting, a server answering
        # again and again): the delays grow; an answer after a real hold resets them.
        self.failures = self.failures + 1 if quick else 0
        return reconnect_delay(answer.reconnect_after_seconds, self.failures, self._rng)

    def _wake_main_loop(self, answer: WakeupAnswer) -> None:
        """Ask the main loop to heartbeat after the answer's spread, at most once per spacing.

        Never blocks: the main loop keeps the due time, so this thread holds
        the next request at once (a pause may follow a publish).
        """
        now = self._monotonic()
        delay = self._rng.uniform(0.0, answer.spread_seconds) if answer.spread_seconds else 0.0
        if self._last_wake is not None:
            delay = max(delay, self._last_wake + MIN_WAKE_SPACING_SECONDS - now)
        self._last_wake = now
        self.wakeups += 1
        logger.info("wake-up (%s): heartbeat in %.1f s", answer.reason.value, delay)
        self._wake(delay)
