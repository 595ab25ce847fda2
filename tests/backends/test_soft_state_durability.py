"""Soft state is committed without an ``fsync``; everything else keeps ``synchronous = FULL``.

Heartbeats' soft state (``last_seen``, reported version and metadata) may be
lost by a crash by design (``heartbeat_flush_seconds``), so on SQLite its
batch commits with ``synchronous = NORMAL``. The connection must be back at
``FULL`` when the pool hands it to the next writer: a status report or a
publish on a connection left at NORMAL would silently lose its durability.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from javia_core.models import DeviceStatus
from javia_updates.backends import Backend, create_backend
from javia_updates.backends.base import AuditEntry, HeartbeatWrite, NewDevice

from .conftest import settings_for

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
AUDIT = AuditEntry("test", "device.register")
#: ``PRAGMA synchronous`` answers 2 for FULL, 1 for NORMAL.
FULL, NORMAL = 2, 1


@pytest.fixture
def sqlite_backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    built = create_backend(
        settings_for("sqlite", tmp_path / "data", request=request, monkeypatch=monkeypatch)
    )
    built.prepare()
    try:
        yield built
    finally:
        built.close()


def _synchronous_levels(backend: Backend) -> list[int]:
    """``PRAGMA synchronous`` of every connection the pool holds (checked out together)."""
    engine = backend.store.engine  # type: ignore[attr-defined]
    connections = [engine.connect() for _ in range(3)]
    try:
        return [c.execute(text("PRAGMA synchronous")).scalar_one() for c in connections]
    finally:
        for connection in connections:
            connection.close()


def test_a_soft_state_flush_is_stored_and_leaves_every_connection_durable(
    sqlite_backend: Backend,
) -> None:
    store = sqlite_backend.store
    device = store.create_device(
        NewDevice(uuid.uuid4(), None, "UTC", {}, uuid.uuid4().hex * 2), now=NOW, audit=AUDIT
    )
    levels_inside: list[int] = []
    write_rows = store._heartbeat_rows  # type: ignore[attr-defined]

    def observed(connection, writes):  # type: ignore[no-untyped-def]
        levels_inside.append(connection.execute(text("PRAGMA synchronous")).scalar_one())
        return write_rows(connection, writes)

    store._heartbeat_rows = observed  # type: ignore[attr-defined]
    later = NOW + timedelta(seconds=30)
    store.record_heartbeats(
        [HeartbeatWrite(device.id, later, "v1.2.0", DeviceStatus.ONLINE, {"room": "kitchen"})]
    )
    stored = store.get_device(device.device_uuid)
    assert stored.last_seen == later
    assert stored.metadata == {"room": "kitchen"}
    assert levels_inside == [NORMAL]  # committed without an fsync
    assert _synchronous_levels(sqlite_backend) == [FULL, FULL, FULL]


def test_a_failed_soft_state_flush_leaves_every_connection_durable(
    sqlite_backend: Backend,
) -> None:
    store = sqlite_backend.store

    def failing(connection, writes):  # type: ignore[no-untyped-def]
        raise RuntimeError("the database refused the batch")

    store._heartbeat_rows = failing  # type: ignore[attr-defined]
    # The batch fails, then each row alone fails and is dropped with a warning.
    store.record_heartbeats([HeartbeatWrite(1, NOW, "v1.0.0", DeviceStatus.ONLINE, {})])
    assert _synchronous_levels(sqlite_backend) == [FULL, FULL, FULL]


def test_a_durable_write_commits_with_full_synchronous(sqlite_backend: Backend) -> None:
    store = sqlite_backend.store
    with store._write() as connection:  # type: ignore[attr-defined]
        assert connection.execute(text("PRAGMA synchronous")).scalar_one() == FULL
