"""Server faults on an offered update: report them, and back off before trying again.

A server fault is an offer the device cannot use through no fault of the
package: a downgrade, a maintenance window that is not one, signed metadata
or a payload that does not verify (DESIGN.md section 7). The version is never
marked failed on the device: :class:`ServerFaults` reports the fault (through
the outbox) and holds that update back for an exponential backoff with
jitter, doubling per fault in a row, before the agent's loop tries it again.
"""

from __future__ import annotations

import logging
import random

from javia_agent.clock import Clock
from javia_agent.outbox import Deliver, Outbox
from javia_agent.systemd import SystemdNotifier
from javia_core.errors import JaviaError
from javia_core.models import InstallDirective, StatusReport, UpdateStatus

__all__ = ["SERVER_FAULT_BASE_SECONDS", "SERVER_FAULT_MAX_SECONDS", "ServerFaults"]

logger = logging.getLogger(__name__)

#: After a server fault on an update (its metadata or payload did not verify),
#: the first wait before trying that update again, in seconds; doubles per
#: fault in a row, with jitter, up to SERVER_FAULT_MAX_SECONDS.
SERVER_FAULT_BASE_SECONDS = 60.0
SERVER_FAULT_MAX_SECONDS = 6 * 3600.0


class ServerFaults:
    """Server faults in a row for one update, and the monotonic time to retry it.

    Args:
        clock: the monotonic clock the backoff runs on (and the reports' wall clock).
        rng: randomness for the jitter (the agent's, seeded in tests).
    """

    def __init__(self, clock: Clock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng
        self._key: tuple[int, str] | None = None
        self._count = 0
        self._until = 0.0

    def holds_back(self, key: tuple[int, str]) -> bool:
        """Whether update ``key`` (update id, version) is still in its backoff."""
        return self._key == key and self.clock.monotonic() < self._until

    def seconds_left(self) -> float:
        """Seconds until the last faulty update may be tried again (negative when past)."""
        return self._until - self.clock.monotonic()

    def note(self, key: tuple[int, str]) -> None:
        """Count a server fault for ``key`` and set when to try that update again."""
        self._count = self._count + 1 if self._key == key else 1
        self._key = key
        ceiling = min(SERVER_FAULT_MAX_SECONDS, SERVER_FAULT_BASE_SECONDS * 2 ** (self._count - 1))
        self._until = self.clock.monotonic() + self.rng.uniform(ceiling / 2, ceiling)

    def clear(self) -> None:
        """Forget the faults: an install reached an end (completed, failed, rolled back, abandoned)."""
        self._key, self._count = None, 0

    def report(
        self,
        directive: InstallDirective,
        reason: str,
        *,
        status: UpdateStatus,
        outbox: Outbox,
        deliver: Deliver,
        notifier: SystemdNotifier,
    ) -> int:
        """Log and report (as ``status``) a server fault on ``directive``; back off.

        The version is never marked failed on the device: it is tried again
        after the backoff (:meth:`note`), and reported once per try.

        Args:
            directive: the offer at fault.
            reason: what is wrong with it, for the log and the report.
            status: the status to report (``downloading``; ``failed`` for a
                downgrade, which can never succeed here).
            outbox: where the report is queued.
            deliver: sends one queued report (``DeviceClient.report_status``).
            notifier: the systemd status line.

        Returns:
            Queued reports delivered now.
        """
        message = (
            f"server fault: {reason} ({directive.version} is not marked failed on the "
            "device; it is tried again later)"
        )
        logger.error("update %s (%s): %s", directive.version, directive.update_id, message)
        notifier.status(f"update {directive.version}: server fault; retrying later")
        self.note((directive.update_id, str(directive.version)))
        try:
            outbox.enqueue(
                directive.update_id,
                StatusReport.from_device(status, message, self.clock.wall()),
            )
        except (OSError, JaviaError) as error:
            logger.error("could not queue the report of the server fault: %s", error)
            return 0
        return outbox.flush(deliver)
