"""The local backend: migrations, SQLite set-up, atomic writes, forward-only transitions, blobs."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import event, inspect, text

from javia_core.errors import BackendError, ConflictError, NotFoundError
from javia_core.models import FINAL_STATUSES, UpdateStatus, UpdateType
from javia_core.status_rules import ALLOWED_PREVIOUS
from javia_updates.backends import (
    Backend,
    backend_names,
    create_backend,
    get_backend_class,
    register_backend,
)
from javia_updates.backends.base import (
    AuditEntry,
    NewDevice,
    NewDeviceUpdate,
)
from javia_updates.backends.files import FileBlobStore
from javia_updates.backends.migrations import current_revision, head_revision, offline_sql, upgrade
from javia_updates.backends.schema import build_tables, default_schema
from javia_updates.backends.sql_store import SQLStore, make_engine
from javia_updates.settings import ServerSettings
from shared_helpers import store_update

ZONE_PLUS_5 = timezone(timedelta(hours=5))
NOW = datetime.fromisoformat("2027-01-15T12:00:00+00:00")
AUDIT = AuditEntry("test", "test")


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """An empty database: a SQLite file, or a fresh database on the throwaway PostgreSQL cluster."""
    if request.param == "sqlite":
        return _url(tmp_path / "javia.db")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        from postgres import report_unavailable

        report_unavailable("the psycopg driver is not installed (pip install 'psycopg[binary]')")
    cluster = request.getfixturevalue("postgres_cluster")
    return cluster.create_database(f"javia_{uuid.uuid4().hex[:16]}")


# --------------------------------------------------------------------------- migrations


def test_migrations_build_the_schema_from_empty_and_rerun_as_a_no_op(database_url):
    assert current_revision(database_url) is None

    upgrade(database_url)
    first = current_revision(database_url)
    upgrade(database_url)  # second run: nothing to do, nothing breaks

    assert first == current_revision(database_url) == head_revision()
    engine = make_engine(database_url)
    schema = default_schema(engine.dialect.name)
    try:
        tables = set(inspect(engine).get_table_names(schema=schema))
        assert {"devices", "updates", "device_updates", "audit_log", "alembic_version"} <= tables
        version_table = f"{schema}.alembic_version" if schema else "alembic_version"
        with engine.connect() as connection:
            assert (
                connection.execute(text(f"SELECT count(*) FROM {version_table}")).scalar_one() == 1
            )
    finally:
        engine.dispose()


def test_sqlite_migration_creates_missing_directories(tmp_path):
    url = _url(tmp_path / "nested" / "deeper" / "javia.db")
    upgrade(url)
    assert (tmp_path / "nested" / "deeper" / "javia.db").is_file()


def test_migrated_database_equals_the_table_definitions(database_url):
    upgrade(database_url)
    engine = make_engine(database_url)
    schema = default_schema(engine.dialect.name)
    try:
        with engine.connect() as connection:
            # Alembic reports the connection's default schema as None; the
            # test cluster's "javia" role has "javia" first on its search_path.
            compared = None if connection.dialect.default_schema_name == schema else schema
            context = MigrationContext.configure(
                connection,
                opts={
                    "include_schemas": bool(schema),
                    "version_table_schema": compared,
                },
            )
            differences = compare_metadata(context, build_tables(compared).metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_offline_sql_for_postgres_puts_every_table_in_the_javia_schema():
    sql = offline_sql("postgresql://user@localhost/fleet", schema="javia")
    assert 'CREATE SCHEMA IF NOT EXISTS "javia"' in sql
    for table in ("devices", "updates", "device_updates", "audit_log", "alembic_version"):
        assert f"CREATE TABLE javia.{table} " in sql
    assert "JSONB" in sql and "TIMESTAMP WITH TIME ZONE" in sql


def test_an_unreachable_database_is_a_backend_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BackendError, match="cannot migrate database"):
        upgrade(_url(blocker / "sub" / "javia.db"))


# --------------------------------------------------------------------------- SQLite set-up


@pytest.fixture
def store(database_url):  # type: ignore[no-untyped-def]
    """A migrated store on every database the backend supports."""
    upgrade(database_url)
    store = SQLStore(make_engine(database_url))
    yield store
    store.close()


@pytest.fixture
def sqlite_store(tmp_path):  # type: ignore[no-untyped-def]
    url = _url(tmp_path / "javia.db")
    upgrade(url)
    store = SQLStore(make_engine(url))
    yield store
    store.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgres_tables_live_in_the_javia_schema(store):
    assert store.schema == "javia"
    assert "devices" not in inspect(store.engine).get_table_names(schema="public")


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(sqlite_store):
    store = sqlite_store
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 5000
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1


def test_foreign_keys_are_enforced(store):
    row = NewDeviceUpdate(
        device_id=999, install_type=UpdateType.INSTANT, scheduled_for=NOW, window_end=None
    )
    update = _publish(store, "v1.0.0", [])
    with pytest.raises(BackendError, match="(?i)foreign key"):
        store.add_device_update(update.id, row, now=NOW, audit=AUDIT)
    assert store.list_device_updates(update_id=update.id).total == 0


def test_naive_datetimes_are_refused(store):
    with pytest.raises(BackendError):
        store.create_device(_device(), now=datetime(2027, 1, 1), audit=AUDIT)


def test_times_come_back_aware_utc(store):
    device = store.create_device(_device(), now=NOW.astimezone(ZONE_PLUS_5), audit=AUDIT)
    assert device.registered_at == NOW and device.registered_at.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------- writes


def _device(name: str | None = None) -> NewDevice:
    token = uuid.uuid4().hex * 2
    return NewDevice(uuid.uuid4(), name, "UTC", {}, token[:64])


def _publish(
    store: SQLStore, version: str, device_ids: list[int], update_type=UpdateType.SCHEDULED
):  # type: ignore[no-untyped-def]
    rows = [
        NewDeviceUpdate(device_id, update_type, NOW, NOW + timedelta(hours=3))
        for device_id in device_ids
    ]
    return store_update(store, version, now=NOW, update_type=update_type, rows=rows)


def test_publish_inserts_all_device_rows_with_one_bulk_statement(store):
    device_ids = [store.create_device(_device(), now=NOW, audit=AUDIT).id for _ in range(60)]
    statements: list[tuple[str, bool]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append((statement, executemany))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        update = _publish(store, "v1.0.0", device_ids)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)

    inserts = [
        (sql, many) for sql, many in statements if "INSERT INTO" in sql and "device_updates" in sql
    ]
    assert len(inserts) == 1  # one statement for all 60 rows, not one per row
    if store.engine.dialect.name == "sqlite":
        assert inserts[0][1] is True  # sent as one executemany
    assert store.status_counts([update.id]) == {update.id: {"pending": 60}}


def test_publish_is_atomic_when_a_device_row_fails(store):
    device = store.create_device(_device(), now=NOW, audit=AUDIT)
    with pytest.raises(BackendError, match="(?i)foreign key") as caught:
        _publish(store, "v1.0.0", [device.id, 424242])  # the second row breaks a foreign key
    assert not isinstance(caught.value, ConflictError)
    with pytest.raises(NotFoundError):
        store.get_update_by_version("v1.0.0")
    assert store.list_audit(limit=10, offset=0).items[0].action != "update.publish"


def test_duplicate_version_conflicts_and_names_the_existing_update(store):
    first = _publish(store, "v1.2.3", [])
    with pytest.raises(ConflictError, match=rf"already published \(update {first.id}\)"):
        _publish(store, "v1.2.3", [])


def test_duplicate_device_uuid_conflicts(store):
    device = _device()
    store.create_device(device, now=NOW, audit=AUDIT)
    again = NewDevice(device.device_uuid, None, "UTC", {}, "f" * 64)
    with pytest.raises(ConflictError, match="already registered"):
        store.create_device(again, now=NOW, audit=AUDIT)


def test_two_replicas_never_move_a_row_backwards(store, tmp_path):
    device = store.create_device(_device(), now=NOW, audit=AUDIT)
    update = _publish(store, "v1.0.0", [device.id])
    row = store.get_device_update(device.id, update.id)
    other = SQLStore(
        make_engine(store.engine.url.render_as_string(hide_password=False))
    )  # a second server
    try:
        assert store.transition(row.id, UpdateStatus.COMPLETED, now=NOW, audit=AUDIT).changed
        late = other.transition(row.id, UpdateStatus.DOWNLOADING, now=NOW, audit=AUDIT)
    finally:
        other.close()
    assert (late.changed, late.record.status) == (False, UpdateStatus.COMPLETED)


def test_concurrent_reports_change_a_row_exactly_once(store):
    device = store.create_device(_device(), now=NOW, audit=AUDIT)
    update = _publish(store, "v1.0.0", [device.id])
    row = store.get_device_update(device.id, update.id)
    results: list[bool] = []

    def send() -> None:
        results.append(
            store.transition(row.id, UpdateStatus.DOWNLOADING, now=NOW, audit=AUDIT).changed
        )

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_transition_table_has_no_way_out_of_a_final_status():
    for target, previous in ALLOWED_PREVIOUS.items():
        assert not previous & FINAL_STATUSES, target
        assert target not in previous
    # Only rows nothing of which was installed may be superseded or cancelled.
    never_installed = {UpdateStatus.PENDING, UpdateStatus.STAGED, UpdateStatus.RETRYING}
    assert ALLOWED_PREVIOUS[UpdateStatus.SUPERSEDED] == never_installed
    assert ALLOWED_PREVIOUS[UpdateStatus.CANCELLED] == never_installed


_RANK = {
    UpdateStatus.PENDING: 0,
    UpdateStatus.RETRYING: 0,  # waits to try again, like pending
    UpdateStatus.DOWNLOADING: 1,
    UpdateStatus.STAGED: 2,
    UpdateStatus.INSTALLING: 3,
    **{status: 4 for status in FINAL_STATUSES},
}


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):  # type: ignore[no-untyped-def]
    url = _url(tmp_path_factory.mktemp("hypothesis") / "javia.db")
    upgrade(url)
    store = SQLStore(make_engine(url))
    yield store
    store.close()


_counter = iter(range(1, 10**9))


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(reports=st.lists(st.sampled_from(list(UpdateStatus)), min_size=1, max_size=8))
def test_any_report_sequence_only_moves_forward(shared_store, reports):
    device = shared_store.create_device(_device(), now=NOW, audit=AUDIT)
    update = _publish(shared_store, f"v0.0.{next(_counter)}", [device.id])
    row = shared_store.get_device_update(device.id, update.id)
    status = UpdateStatus.PENDING
    for wanted in reports:
        result = shared_store.transition(row.id, wanted, now=NOW, audit=AUDIT)
        assert result.changed == (status in ALLOWED_PREVIOUS[wanted])
        if result.changed:
            # forward, or back to retrying after a transient fault (never out of a final status)
            assert _RANK[wanted] > _RANK[status] or (
                wanted is UpdateStatus.RETRYING and status not in FINAL_STATUSES
            )
            status = wanted
        assert result.record.status is status


def test_completion_raises_the_device_version_but_never_lowers_it(store):
    device = store.create_device(_device(), now=NOW, audit=AUDIT)
    store.record_heartbeat(
        device.id, now=NOW, current_version="v2.0.0", status=device.status, metadata={}
    )
    update = _publish(store, "v1.5.0", [device.id])
    row = store.get_device_update(device.id, update.id)
    store.transition(row.id, UpdateStatus.COMPLETED, now=NOW, audit=AUDIT)
    assert store.get_device(device.device_uuid).current_version == "v2.0.0"


def test_audit_log_records_each_change(store):
    device = store.create_device(_device(), now=NOW, audit=AuditEntry("admin", "device.register"))
    update = _publish(store, "v1.0.0", [device.id])
    row = store.get_device_update(device.id, update.id)
    store.transition(
        row.id,
        UpdateStatus.DOWNLOADING,
        now=NOW,
        audit=AuditEntry("device:x", "device_update.status"),
    )
    store.transition(
        row.id,
        UpdateStatus.DOWNLOADING,
        now=NOW,
        audit=AuditEntry("device:x", "device_update.status"),
    )
    actions = [entry.action for entry in store.list_audit(limit=10, offset=0).items]
    assert actions == [
        "device_update.status",
        "update.publish",
        "device.register",
    ]  # the repeat wrote nothing


# --------------------------------------------------------------------------- blobs


def test_blob_store_writes_atomically_and_serves_ranges(tmp_path):
    blobs = FileBlobStore(tmp_path)
    blobs.prepare()
    source = blobs.upload_dir() / "incoming"
    source.write_bytes(bytes(range(256)) * 4)

    blobs.put_bytes("v1.0.0/abcd", "manifest.json", b"{}")
    blobs.put_file("v1.0.0/abcd", "payload.tar.gz", source)

    directory = tmp_path / "packages" / "v1.0.0" / "abcd"
    assert sorted(p.name for p in directory.iterdir()) == [
        "manifest.json",
        "payload.tar.gz",
    ]  # no temp files
    assert not source.exists()
    assert blobs.size("v1.0.0/abcd", "payload.tar.gz") == 1024
    assert b"".join(
        blobs.iter_range("v1.0.0/abcd", "payload.tar.gz", 250, 260, chunk_size=3)
    ) == bytes(range(250, 256)) + bytes(range(4))
    blobs.delete("v1.0.0/abcd")
    assert not (tmp_path / "packages" / "v1.0.0").exists()
    with pytest.raises(NotFoundError):
        blobs.size("v1.0.0/abcd", "payload.tar.gz")


def test_prepare_removes_uploads_abandoned_for_a_day(tmp_path):
    import os

    blobs = FileBlobStore(tmp_path)
    blobs.prepare()
    abandoned = blobs.upload_dir() / "payload-old.part"
    recent = blobs.upload_dir() / "payload-new.part"
    abandoned.write_bytes(b"x")
    recent.write_bytes(b"y")
    now = recent.stat().st_mtime
    os.utime(abandoned, (now - 24 * 3600 - 1, now - 24 * 3600 - 1))
    blobs.prepare(now=now)
    assert [path.name for path in blobs.upload_dir().iterdir()] == ["payload-new.part"]


@pytest.mark.parametrize("key", ["../etc", "/abs", "a/../b", "", "a//b", ".hidden"])
def test_blob_keys_cannot_escape_the_data_directory(tmp_path, key):
    with pytest.raises(BackendError, match="invalid blob key"):
        FileBlobStore(tmp_path).put_bytes(key, "manifest.json", b"{}")


# --------------------------------------------------------------------------- registry


def test_local_backend_is_registered_and_unknown_names_are_refused(tmp_path):
    assert "local" in backend_names()
    settings = ServerSettings(
        api_key="backend-test-admin-key-0123456789", data_dir=tmp_path, backend="nosuch"
    )
    with pytest.raises(BackendError, match="unknown backend 'nosuch': expected one of .*local"):
        create_backend(settings)


def test_registry_refuses_a_second_class_under_a_taken_name():
    class Impostor(Backend):
        NAME = "local"

        @classmethod
        def from_settings(cls, settings):  # type: ignore[no-untyped-def]
            raise AssertionError

    with pytest.raises(BackendError, match="already registered"):
        register_backend(Impostor)
    assert get_backend_class("local").__name__ == "LocalBackend"


# --------------------------------------------------------------------------- the service on every database


def test_update_rules_run_the_same_on_every_database(database_url, tmp_path, make_package):
    from javia_core.models import DeviceRegisterRequest, HeartbeatRequest, StatusReport
    from javia_updates.backends.local import LocalBackend
    from javia_updates.service import UpdateService

    settings = ServerSettings(
        api_key="backend-test-admin-key-0123456789",
        data_dir=tmp_path / "data",
        database_url=database_url,
    )
    backend = LocalBackend.from_settings(settings)
    backend.prepare()
    service = UpdateService(backend, settings)
    try:
        registered = service.register_device(
            DeviceRegisterRequest(timezone="Europe/Berlin"), now=NOW
        )
        device = service.find_device(registered.device_uuid)
        assert service.authenticate_device(registered.device_token) == device
        service.heartbeat(device, HeartbeatRequest(current_version="v1.0.0"), now=NOW)
        service.publish_update(make_package("v1.1.0", "instant").upload(), now=NOW)
        service.publish_update(make_package("v1.2.0", "scheduled").upload(), now=NOW)

        later = NOW + timedelta(seconds=30)
        directive = service.heartbeat(
            device, HeartbeatRequest(current_version="v1.0.0"), now=later
        ).update
        assert (str(directive.version), directive.update_type) == ("v1.2.0", UpdateType.INSTANT)

        result = service.report_status(
            device, directive.update_id, StatusReport(status=UpdateStatus.COMPLETED), now=later
        )
        assert result.changed
        again = service.report_status(
            device, directive.update_id, StatusReport(status=UpdateStatus.DOWNLOADING), now=later
        )
        assert (again.changed, again.status) == (False, UpdateStatus.COMPLETED)
        assert service.get_device(device.device_uuid, now=later).current_version == "v1.2.0"
        counts = {u.version: u.status_counts for u in service.list_updates().items}
        assert counts == {"v1.2.0": {"completed": 1}, "v1.1.0": {"superseded": 1}}
        assert [u.version for u in service.list_updates().items] == ["v1.2.0", "v1.1.0"]
        assert service.list_devices(now=later, online=True).total == 1
        assert service.list_devices(now=later + timedelta(hours=1), online=True).total == 0
    finally:
        backend.close()
