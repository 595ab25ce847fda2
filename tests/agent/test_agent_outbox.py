"""Status reports queued on disk: order, redelivery after reconnects, poison reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from javia_agent.errors import AuthenticationError, NetworkError, ServerError
from javia_agent.outbox import Outbox
from javia_core.models import StatusReport, UpdateStatus


class FlakyServer:
    """Accepts reports unless ``down``; ``refuse`` maps a status to an HTTP error code."""

    def __init__(self) -> None:
        self.down = False
        self.refuse: dict[UpdateStatus, int] = {}
        self.received: list[tuple[int, UpdateStatus]] = []

    def deliver(self, update_id: int, report: StatusReport) -> None:
        if self.down:
            raise NetworkError("cannot reach server")
        code = self.refuse.get(report.status)
        if code in (401, 403):
            raise AuthenticationError("token refused", status_code=code)
        if code is not None:
            raise ServerError(f"HTTP {code}", status_code=code)
        self.received.append((update_id, report.status))


def _queue(outbox: Outbox, *statuses: UpdateStatus) -> None:
    for status in statuses:
        outbox.enqueue(3, StatusReport(status=status))


def test_reports_are_delivered_in_order_and_deleted(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    server = FlakyServer()
    _queue(outbox, UpdateStatus.DOWNLOADING, UpdateStatus.INSTALLING, UpdateStatus.COMPLETED)
    assert len(outbox) == 3
    assert outbox.flush(server.deliver) == 3
    assert server.received == [
        (3, UpdateStatus.DOWNLOADING),
        (3, UpdateStatus.INSTALLING),
        (3, UpdateStatus.COMPLETED),
    ]
    assert len(outbox) == 0


def test_reports_queued_while_offline_survive_a_restart_and_are_redelivered(tmp_path: Path) -> None:
    server = FlakyServer()
    server.down = True
    outbox = Outbox(tmp_path / "outbox")
    _queue(outbox, UpdateStatus.DOWNLOADING, UpdateStatus.INSTALLING)
    assert outbox.flush(server.deliver) == 0
    _queue(outbox, UpdateStatus.ROLLED_BACK)

    server.down = False
    restarted = Outbox(tmp_path / "outbox")  # a new agent process
    assert restarted.flush(server.deliver) == 3
    assert [status for _, status in server.received] == [
        UpdateStatus.DOWNLOADING,
        UpdateStatus.INSTALLING,
        UpdateStatus.ROLLED_BACK,
    ]


@pytest.mark.parametrize("code", [500, 503, 429, 401])
def test_a_temporary_refusal_stops_the_flush_and_keeps_the_order(tmp_path: Path, code: int) -> None:
    outbox = Outbox(tmp_path / "outbox")
    server = FlakyServer()
    server.refuse[UpdateStatus.INSTALLING] = code
    _queue(outbox, UpdateStatus.DOWNLOADING, UpdateStatus.INSTALLING, UpdateStatus.COMPLETED)
    assert outbox.flush(server.deliver) == 1
    assert [report.report.status for report in outbox.pending()] == [
        UpdateStatus.INSTALLING,
        UpdateStatus.COMPLETED,
    ]
    del server.refuse[UpdateStatus.INSTALLING]
    assert outbox.flush(server.deliver) == 2
    assert [status for _, status in server.received] == [
        UpdateStatus.DOWNLOADING,
        UpdateStatus.INSTALLING,
        UpdateStatus.COMPLETED,
    ]


def test_a_report_the_server_refuses_for_good_does_not_block_the_queue(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    server = FlakyServer()
    server.refuse[UpdateStatus.DOWNLOADING] = 409  # would move the status backwards
    _queue(outbox, UpdateStatus.DOWNLOADING, UpdateStatus.COMPLETED)
    assert outbox.flush(server.deliver) == 2
    assert server.received == [(3, UpdateStatus.COMPLETED)]
    assert len(outbox) == 0


def test_sequence_numbers_keep_growing_after_deliveries(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    _queue(outbox, UpdateStatus.DOWNLOADING, UpdateStatus.INSTALLING)
    first, second = outbox.pending()
    first.path.unlink()  # delivered
    third = outbox.enqueue(3, StatusReport(status=UpdateStatus.COMPLETED))
    assert third.sequence > second.sequence


def test_an_unreadable_report_file_is_dropped(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    _queue(outbox, UpdateStatus.DOWNLOADING)
    (tmp_path / "outbox" / "000000000002.json").write_text("{not json")
    _queue(outbox, UpdateStatus.COMPLETED)
    server = FlakyServer()
    assert outbox.flush(server.deliver) == 2
    assert [status for _, status in server.received] == [
        UpdateStatus.DOWNLOADING,
        UpdateStatus.COMPLETED,
    ]
