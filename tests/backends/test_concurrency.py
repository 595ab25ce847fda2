"""Correctness under concurrency: server replicas sharing one database (DESIGN.md section 5).

Each "replica" here is its own backend object with its own connection pool
over the same database and package directory, exactly what two ``javia
server`` processes hold; threads make them act at the same moment (psycopg
and sqlite3 release the GIL while waiting on the database). The rules:

- a status report is never lost and a row never moves backwards, whichever
  replica's write lands first;
- of two conflicting final reports exactly one wins, and says so;
- a publish and its device rows appear together or not at all;
- publishing to a fleet of 100,000 devices inserts the rows in one batch,
  not one statement per device.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import pytest
from sqlalchemy import event, insert, select, text

from javia_core.models import (
    FINAL_STATUSES,
    DeviceRegisterRequest,
    HeartbeatRequest,
    StatusReport,
    UpdateStatus,
    UpdateType,
)
from javia_updates.backends.base import AuditEntry, NewDeviceUpdate, NewUpdate
from javia_updates.backends.local import LocalBackend
from javia_updates.service import UpdateService
from javia_updates.settings import ServerSettings

from .conftest import API_KEY, DATABASE_KINDS

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
S = UpdateStatus


@pytest.fixture(params=DATABASE_KINDS)
def replicas(request, tmp_path: Path) -> Iterator[tuple[UpdateService, UpdateService]]:  # type: ignore[no-untyped-def]
    """Two replicas' services over one database and one package directory."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'data' / 'javia.db'}"
    else:
        url = request.getfixturevalue("new_postgres_url")()
    settings = ServerSettings(api_key=API_KEY, data_dir=tmp_path / "data", database_url=url)
    first, second = LocalBackend.from_settings(settings), LocalBackend.from_settings(settings)
    first.prepare()
    second.prepare()
    try:
        yield UpdateService(first, settings), UpdateService(second, settings)
    finally:
        first.close()
        second.close()


def _fleet(service: UpdateService, count: int) -> list:  # type: ignore[type-arg]
    devices = []
    for _ in range(count):
        registered = service.register_device(DeviceRegisterRequest(), now=NOW)
        device = service.find_device(registered.device_uuid)
        service.heartbeat(device, HeartbeatRequest(current_version="v1.0.0"), now=NOW)
        devices.append(service.find_device(registered.device_uuid))
    return devices


def _race(
    pairs: list[tuple[tuple[UpdateService, object, int, UpdateStatus], ...]],
) -> list[list[bool]]:
    """Send every pair's reports at the same moment (one barrier for all); their ``changed`` flags."""
    senders = [sender for pair in pairs for sender in pair]
    barrier = threading.Barrier(len(senders))

    def send(sender: tuple[UpdateService, object, int, UpdateStatus]) -> bool:
        service, device, update_id, status = sender
        barrier.wait(timeout=30)
        return service.report_status(
            device, update_id, StatusReport(status=status), now=NOW
        ).changed  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=len(senders)) as pool:
        flags = list(pool.map(send, senders))
    width = len(pairs[0])
    return [flags[i : i + width] for i in range(0, len(flags), width)]


def test_racing_replicas_never_move_a_row_backwards_nor_lose_a_report(replicas, make_package):
    one, two = replicas
    devices = _fleet(one, 12)
    update = one.publish_update(make_package("v1.1.0", "instant").upload(), now=NOW)
    audit_before = one.audit_log(limit=1).total

    # Half the devices: 'completed' reaches one replica while a retried, late
    # 'downloading' reaches the other. The rest: 'completed' and 'failed' at once.
    late = [
        ((one, d, update.id, S.COMPLETED), (two, d, update.id, S.DOWNLOADING)) for d in devices[:6]
    ]
    final = [((one, d, update.id, S.COMPLETED), (two, d, update.id, S.FAILED)) for d in devices[6:]]
    flags = _race(late + final)

    rows = {row.device_id: row for row in two.store.list_device_updates(update_id=update.id).items}
    for device, (completed, _downloading) in zip(devices[:6], flags[:6], strict=True):
        assert completed is True  # whichever landed first, 'completed' is never lost
        assert rows[device.id].status is S.COMPLETED
        assert one.find_device(device.device_uuid).current_version == "v1.1.0"
    for device, (completed, failed) in zip(devices[6:], flags[6:], strict=True):
        assert completed != failed  # exactly one final report wins, and it is told so
        assert rows[device.id].status is (S.COMPLETED if completed else S.FAILED)
        expected_version = "v1.1.0" if completed else "v1.0.0"
        assert two.find_device(device.device_uuid).current_version == expected_version
    assert all(row.status in FINAL_STATUSES for row in rows.values())
    # One audit line per write that happened: none lost, none invented (the
    # rollout's own lines, a halt or its completion, are not reports).
    writes = sum(flag for pair in flags for flag in pair)
    added = one.audit_log(limit=one.audit_log(limit=1).total - audit_before).items
    assert sum(not line.action.startswith("rollout.") for line in added) == writes


def _heartbeat_race(replicas, make_package):  # type: ignore[no-untyped-def]
    """One device's heartbeat reaching both replicas twice at once, right after a publish."""
    one, two = replicas
    update = one.publish_update(make_package("v1.1.0", "scheduled").upload(), now=NOW)
    registered = two.register_device(DeviceRegisterRequest(), now=NOW)
    device = one.find_device(registered.device_uuid)
    barrier = threading.Barrier(4)

    def heartbeat(service: UpdateService):  # type: ignore[no-untyped-def]
        barrier.wait(timeout=30)
        return service.heartbeat(device, HeartbeatRequest(current_version="v1.0.0"), now=NOW)

    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(heartbeat, [one, two, one, two]))
    return update, device, answers


def test_replicas_reconciling_one_device_at_once_create_one_row(replicas, make_package):
    update, device, answers = _heartbeat_race(replicas, make_package)

    assert replicas[0].store.list_device_updates(device_id=device.id).total == 1
    given = {answer.update.update_id for answer in answers if answer.update is not None}
    assert given <= {update.id}
    assert replicas[1].heartbeat(device, HeartbeatRequest(current_version="v1.0.0"), now=NOW).update


def test_every_concurrent_heartbeat_answer_carries_the_reconciled_directive(replicas, make_package):
    update, _device, answers = _heartbeat_race(replicas, make_package)

    assert [answer.update and answer.update.update_id for answer in answers] == [update.id] * 4


def test_a_publish_and_its_rows_appear_together_to_every_replica(replicas, make_package):
    one, two = replicas
    devices = _fleet(one, 40)
    seen_counts: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            page = two.store.list_updates(limit=1, offset=0)
            if page.items:
                counts = two.store.status_counts([page.items[0].id])[page.items[0].id]
                seen_counts.append(sum(counts.values()))
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        one.publish_update(make_package("v1.1.0", "scheduled").upload(), now=NOW)
    finally:
        watcher.join(timeout=30)
        done.set()
    assert seen_counts == [len(devices)]  # never the update without all of its rows


# --------------------------------------------------------------------------- fleet-sized publish


class StatementLog:
    """Records what reaches the database driver: one entry per cursor call.

    Counted below the ORM and Core layers (``before_cursor_execute``), so it
    sees the same thing however the store builds its statements: an
    ``executemany`` is one entry carrying all its parameter sets.
    """

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.cursor: list[tuple[str, bool, int]] = []  # (SQL, executemany, parameter sets)

    def _on_cursor(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        self.cursor.append((statement, executemany, len(parameters) if executemany else 1))

    def __enter__(self) -> Self:
        event.listen(self.engine, "before_cursor_execute", self._on_cursor)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on_cursor)

    def inserts_into(self, table: str) -> list[tuple[str, bool, int]]:
        """The cursor calls that insert into ``table``."""

        def match(sql: str) -> bool:
            return sql.lstrip().upper().startswith("INSERT INTO") and f"{table} (" in sql

        return [call for call in self.cursor if match(call[0])]


def test_publishing_through_the_service_hands_every_row_to_one_insert(
    service, backend, make_package
):
    for _ in range(150):
        registered = service.register_device(
            DeviceRegisterRequest(timezone="Europe/Berlin"), now=NOW
        )
    assert registered

    with StatementLog(backend.store.engine) as log:
        update = service.publish_update(make_package("v1.1.0", "scheduled").upload(), now=NOW)

    inserts = log.inserts_into("device_updates")
    assert [(many, rows) for _sql, many, rows in inserts] == [(True, 150)]  # one executemany
    assert update.status_counts == {"pending": 150}


FLEET = 100_000


def _insert_fleet(connection, schema: str) -> None:  # type: ignore[no-untyped-def]
    """100,000 registered devices, generated inside PostgreSQL (test data, not under test)."""
    connection.execute(
        text(
            f"""
            INSERT INTO {schema}.devices (device_uuid, device_name, registered_at, last_seen,
                current_version, timezone, status, metadata, token_hash, created_at, updated_at)
            SELECT md5('device' || n)::uuid::text, 'pi-' || n, :now, :now, 'v1.0.0',
                   'Europe/Berlin', 'online', '{{}}'::jsonb, md5('a' || n) || md5('b' || n),
                   :now, :now
            FROM generate_series(1, :count) AS n
            """
        ),
        {"now": NOW, "count": FLEET},
    )


@pytest.mark.parametrize("backend_kind", ["postgresql"], indirect=True)
def test_publish_to_100k_devices_writes_the_rows_in_one_executemany_batch(backend):
    store = backend.store
    with store.engine.begin() as connection:
        _insert_fleet(connection, store.schema)
        device_ids = connection.execute(select(store.tables.devices.c.id)).scalars().all()
    assert len(device_ids) == FLEET
    window = (NOW + timedelta(hours=14), NOW + timedelta(hours=17))
    rows = [NewDeviceUpdate(i, UpdateType.SCHEDULED, *window) for i in device_ids]
    update = NewUpdate(
        version="v1.1.0",
        version_numbers=(1, 1, 0),
        update_type=UpdateType.SCHEDULED,
        description="fleet-wide",
        package_url="v1.1.0/0123456789abcdef",
        system_packages=(),
        app="assistant",
        key_id="0123456789abcdef",
        archive_size=1,
        archive_sha256="0" * 64,
        manifest=b"{}",
        signature=b"{}",
        targets=None,
    )

    with StatementLog(store.engine) as log:
        published = store.create_update(
            update, rows, now=NOW, audit=AuditEntry("admin", "update.publish")
        )

    inserts = log.inserts_into("device_updates")
    # One executemany batch (or pages of at least 1000 rows), never row by row.
    assert all(many for _sql, many, _rows in inserts)
    assert sum(rows for _sql, _many, rows in inserts) == FLEET
    assert 1 <= len(inserts) <= FLEET // 1000
    assert len(log.cursor) < 10 + FLEET // 1000  # the whole publish: a handful of statements
    assert store.status_counts([published.id]) == {published.id: {"pending": FLEET}}
    with store.engine.connect() as connection:
        linked = connection.execute(
            select(store.tables.device_updates.c.device_id)
            .where(store.tables.device_updates.c.update_id == published.id)
            .distinct()
        ).all()
    assert len(linked) == FLEET  # one row per device, none twice


def test_statement_log_sees_a_row_by_row_publish(tmp_path):
    """The counting above can fail: rows inserted one by one show up as many executions."""
    settings = ServerSettings(api_key=API_KEY, data_dir=tmp_path)
    backend = LocalBackend.from_settings(settings)
    backend.prepare()
    try:
        table = backend.store.tables.audit_log
        with (
            StatementLog(backend.store.engine) as log,
            backend.store.engine.connect() as connection,
        ):
            for _ in range(3):
                connection.execute(
                    insert(table).values(at=NOW, actor="test", action="test", details={})
                )
            connection.rollback()
        assert [(many, rows) for _sql, many, rows in log.inserts_into("audit_log")] == [
            (False, 1)
        ] * 3
    finally:
        backend.close()
