"""Status reports queued on disk until the server has them (DESIGN.md section 7).

Each report is one JSON file in ``<state_dir>/outbox/``, named by a sequence
number (``000000000042.json``) and written crash-safely (temp file → fsync →
rename → fsync directory). :meth:`Outbox.flush` delivers them in sequence
order and deletes each once the server accepted it; the server accepts a
repeated report idempotently (DESIGN.md section 5), so a crash between
delivery and deletion is harmless.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from javia_agent._fs import atomic_write
from javia_agent.errors import AuthenticationError, NetworkError, ServerError
from javia_core.models import StatusReport

__all__ = ["Outbox", "QueuedReport"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^([0-9]{12})\.json$")

#: Delivers one report; raises NetworkError/ServerError like DeviceClient.report_status.
Deliver = Callable[[int, StatusReport], object]


@dataclass(frozen=True)
class QueuedReport:
    """One report waiting in the outbox."""

    sequence: int
    update_id: int
    report: StatusReport
    path: Path


class Outbox:
    """The on-disk queue of status reports.

    Args:
        directory: ``<state_dir>/outbox``; created on first use.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _names(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def enqueue(self, update_id: int, report: StatusReport) -> QueuedReport:
        """Queue ``report`` for update ``update_id`` behind every queued report.

        Returns:
            The queued report with its sequence number.

        Raises:
            OSError: the report cannot be written.
        """
        names = self._names()
        sequence = names[-1][0] + 1 if names else 1
        path = self.directory / f"{sequence:012d}.json"
        body = {"update_id": update_id, "report": report.model_dump(mode="json")}
        atomic_write(path, json.dumps(body, sort_keys=True).encode("utf-8"), mode=0o644)
        return QueuedReport(sequence, update_id, report, path)

    def pending(self) -> list[QueuedReport]:
        """The queued reports, oldest first. Unreadable files are dropped with a log line."""
        reports = []
        for sequence, path in self._names():
            try:
                body = json.loads(path.read_bytes())
                update_id = int(body["update_id"])
                report = StatusReport.model_validate(body["report"])
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError, ValidationError) as error:
                logger.error("dropping unreadable queued report %s: %s", path.name, error)
                path.unlink(missing_ok=True)
                continue
            reports.append(QueuedReport(sequence, update_id, report, path))
        return reports

    def flush(self, deliver: Deliver) -> int:
        """Deliver queued reports in order, deleting each one the server accepted.

        Stops at the first report that cannot be delivered now (network error,
        HTTP 5xx, 401/403), keeping it and everything after it for the next
        flush, so the server sees the reports in order. A report the server
        refuses for good (another 4xx, e.g. the update no longer exists or the
        status would move backwards) is dropped with a log line, so one bad
        report cannot block the queue forever.

        Args:
            deliver: sends one report; ``DeviceClient.report_status``.

        Returns:
            How many reports were delivered or dropped.
        """
        done = 0
        for queued in self.pending():
            try:
                deliver(queued.update_id, queued.report)
            except (NetworkError, AuthenticationError):
                break
            except ServerError as error:
                if (
                    error.status_code is None
                    or error.status_code >= 500
                    or error.status_code == 429
                ):
                    break
                logger.warning(
                    "server refused report %s for update %s (%s): dropped",
                    queued.report.status,
                    queued.update_id,
                    error,
                )
            else:
                logger.info("reported %s for update %s", queued.report.status, queued.update_id)
            queued.path.unlink(missing_ok=True)
            done += 1
        return done

    def __len__(self) -> int:
        return len(self._names())
