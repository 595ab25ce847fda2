"""The cold heartbeat (device cache off, issue 14): the device and its rows in one read.

With ``device_cache_seconds`` 0 every heartbeat reads the database; it reads
the device behind the token and the device's update rows in one transaction
(``Store.find_device_with_rows``), on SQLite and on PostgreSQL, and never
answers from rows that a write made after that read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from javia_core.models import (
    DeviceRegisterRequest,
    HeartbeatRequest,
    StatusReport,
    UpdateStatus,
)
from javia_updates.backends.base import Backend, DeviceRecord, DeviceWithRows, create_backend
from javia_updates.backends.cache import DeviceCache
from javia_updates.service import UpdateService
from javia_updates.service.tokens import hash_token

from .conftest import DATABASE_KINDS, settings_for

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
RUNNING = HeartbeatRequest(current_version="v1.0.0")


@pytest.fixture(params=DATABASE_KINDS)
def cold_backend(request, tmp_path: Path, monkeypatch) -> Iterator[tuple[Backend, UpdateService]]:  # type: ignore[no-untyped-def]
    """A backend on SQLite or PostgreSQL and a service with the device cache off."""
    settings = settings_for(
        request.param, tmp_path / "data", request=request, monkeypatch=monkeypatch
    ).model_copy(update={"device_cache_seconds": 0.0})
    backend = create_backend(settings)
    backend.prepare()
    try:
        yield backend, UpdateService(backend, settings)
    finally:
        backend.close()


def _counted(monkeypatch: pytest.MonkeyPatch, store: Any, names: list[str]) -> Counter[str]:
    """Count the calls of the store's ``names`` (they still run)."""
    calls: Counter[str] = Counter()
    for name in names:
        method = getattr(store, name)

        def counting(*args: Any, _name: str = name, _method: Any = method, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _method(*args, **kwargs)

        monkeypatch.setattr(store, name, counting)
    return calls


def test_one_read_gives_what_the_separate_reads_give(cold_backend, make_package) -> None:  # type: ignore[no-untyped-def]
    backend, service = cold_backend
    registered = service.register_device(DeviceRegisterRequest(), now=NOW)
    device = service.authenticate_device(registered.device_token)
    assert device is not None
    store, token_hash = backend.store, hash_token(registered.device_token)
    assert store.find_device_with_rows(token_hash) == DeviceWithRows(device, [], (0, 0))
    service.publish_update(make_package("v1.1.0", "instant").upload(), now=NOW)
    answer = service.heartbeat(device, RUNNING, now=NOW)
    assert answer.update is not None
    service.report_status(
        device, answer.update.update_id, StatusReport(status=UpdateStatus.DOWNLOADING), now=NOW
    )

    found = store.find_device_with_rows(token_hash)

    assert found == DeviceWithRows(
        store.find_device_by_token_hash(token_hash),  # type: ignore[arg-type]
        store.list_device_updates(device_id=device.id).items,
        store.confirm_device(device.id, token_hash),  # type: ignore[arg-type]
    )
    assert [row.status for row in found.rows] == [UpdateStatus.DOWNLOADING]
    assert found.rows_mark == (1, 2), "one row, created (1) and moved once (2)"
    assert store.find_device_with_rows(hash_token("not-a-token")) is None


def test_a_cold_heartbeat_reads_once_and_never_answers_from_rows_older_than_a_write(
    cold_backend, make_package, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    backend, service = cold_backend
    registered = service.register_device(DeviceRegisterRequest(), now=NOW)
    update = service.publish_update(make_package("v1.1.0", "instant").upload(), now=NOW)
    first = service.authenticate_device(registered.device_token)
    assert first is not None
    assert service.heartbeat(first, RUNNING, now=NOW).update is not None  # the row is created
    calls = _counted(
        monkeypatch,
        backend.store,
        ["find_device_with_rows", "find_device_by_token_hash", "list_device_updates"],
    )

    device = service.authenticate_device(registered.device_token)
    assert device is not None
    answer = service.heartbeat_without_writes(device, RUNNING, now=NOW)
    assert answer is not None and answer.update is not None
    assert answer.update.status is UpdateStatus.PENDING
    assert calls == {"find_device_with_rows": 1}, "one read for the device and its rows"

    # A status report commits between this request's read and its answer.
    device = service.authenticate_device(registered.device_token)
    assert isinstance(device, DeviceRecord)
    service.report_status(device, update.id, StatusReport(status=UpdateStatus.DOWNLOADING), now=NOW)
    answer = service.heartbeat_without_writes(device, RUNNING, now=NOW)
    assert answer is not None and answer.update is not None
    assert answer.update.status is UpdateStatus.DOWNLOADING, "the rows are read again"
    assert calls["list_device_updates"] >= 1


def _found(device_id: int, rows: list[Any], mark: tuple[int, int]) -> DeviceWithRows:
    device: Any = type("D", (), {"id": device_id})()
    return DeviceWithRows(device, rows, mark)


def test_rows_read_with_the_device_are_cached_only_if_no_rows_changed_meanwhile() -> None:
    cache = DeviceCache(30, clock=lambda: 0.0)
    before = cache.row_changes
    cache.put_device_with_rows("seven", _found(7, ["row"], (1, 1)), 4, before)
    assert cache.rows(7, 4) == ["row"]
    cache.confirm_rows(7, (1, 1))
    assert cache.rows(7, 4) == ["row"], "the mark of the read is the database's: kept"
    cache.confirm_rows(7, (1, 2))
    assert cache.rows(7, 4) is None, "another process moved a row"

    before = cache.row_changes
    cache.forget_rows(9)  # a write to a device that is not cached, during the read
    cache.put_device_with_rows("eight", _found(8, ["old"], (1, 1)), 4, before)
    assert cache.rows(8, 4) is None, "rows read before a write are not kept"
    assert cache.device("eight") is not None, "the device itself is"

    off = DeviceCache(0)
    off.put_device_with_rows("seven", _found(7, [], (0, 0)), 4, off.row_changes)
    assert off.device("seven") is None and off.rows(7, 4) is None
