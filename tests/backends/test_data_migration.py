"""Moving an installation to another backend: ``javia db migrate-data`` (docs/backends.md).

A ``local`` installation (SQLite + package files), used through the service
the way a server uses it, is copied to the ``supabase`` backend (PostgreSQL +
Storage's HTTP contract) and back to SQLite. Afterwards the fleet must not
notice: same ids, device tokens still valid, progress and audit kept,
packages byte for byte, and new rows never reuse an id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from javia_core.models import (
    DeviceRegisterRequest,
    HeartbeatRequest,
    StatusReport,
    UpdateStatus,
)
from javia_updates.backends import create_backend
from javia_updates.backends.data_migration import DataMigrationError, migrate_data, table_counts
from javia_updates.backends.files import FileBlobStore
from javia_updates.backends.migrations import upgrade
from javia_updates.backends.schema import build_tables, default_schema
from javia_updates.backends.sql_store import make_engine
from javia_updates.service import UpdateService
from javia_updates.settings import ServerSettings
from test_supabase_storage import SECRET_KEY

from .conftest import API_KEY
from .test_conformance import NOW


def populate(service: UpdateService, make_package) -> dict:  # type: ignore[no-untyped-def]
    """A small fleet with history: tokens, heartbeats, two updates, progress of every kind."""
    tokens = {}
    for name, zone in (
        ("kitchen", "Europe/Berlin"),
        ("hall", "America/New_York"),
        ("attic", "UTC"),
    ):
        registered = service.register_device(
            DeviceRegisterRequest(device_name=name, timezone=zone, metadata={"room": name}), now=NOW
        )
        tokens[name] = registered.device_token
        device = service.find_device(registered.device_uuid)
        service.heartbeat(device, HeartbeatRequest(current_version="v1.0.0"), now=NOW)
    packages = {"v1.1.0": make_package("v1.1.0", "instant", extra_bytes=300_000)}
    first = service.publish_update(packages["v1.1.0"].upload(), now=NOW)
    kitchen = service.authenticate_device(tokens["kitchen"])
    hall = service.authenticate_device(tokens["hall"])
    for status in (UpdateStatus.DOWNLOADING, UpdateStatus.COMPLETED):
        service.report_status(kitchen, first.id, StatusReport(status=status), now=NOW)
    service.report_status(
        hall, first.id, StatusReport(status=UpdateStatus.FAILED, error_message="disk full"), now=NOW
    )
    packages["v1.2.0"] = make_package("v1.2.0", "scheduled")
    service.publish_update(packages["v1.2.0"].upload(), now=NOW)
    return {"tokens": tokens, "packages": packages}


def dump(url: str) -> dict[str, list[dict]]:
    """Every row of every javia table, by table, in primary-key order."""
    engine = make_engine(url)
    tables = build_tables(default_schema(engine.dialect.name))
    try:
        with engine.connect() as connection:
            return {
                table.name: [
                    dict(row._mapping)
                    for row in connection.execute(
                        select(table).order_by(*table.primary_key.columns)
                    )
                ]
                for table in tables.metadata.sorted_tables
            }
    finally:
        engine.dispose()


@pytest.fixture
def local_installation(tmp_path, make_package):  # type: ignore[no-untyped-def]
    """A used ``local`` installation in ``tmp_path/old`` (its server stopped)."""
    settings = ServerSettings(api_key=API_KEY, data_dir=tmp_path / "old")
    backend = create_backend(settings)
    backend.prepare()
    try:
        history = populate(UpdateService(backend, settings), make_package)
    finally:
        backend.close()
    return settings, history


def run_javia(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("JAVIA_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "javia_cli.main", *args],
        check=False,
        env=environment,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_a_local_installation_moves_to_supabase_and_the_fleet_does_not_notice(
    local_installation, tmp_path, new_postgres_url, storage_contract, monkeypatch
):
    old_settings, history = local_installation
    source_url = old_settings.resolved_database_url()
    target_url = new_postgres_url()
    env = {
        "JAVIA_CONFIG": str(tmp_path / "none.toml"),
        "JAVIA_BACKEND": "supabase",
        "JAVIA_DATABASE_URL": target_url.replace("postgresql+psycopg://", "postgresql://"),
        "JAVIA_DATA_DIR": str(tmp_path / "new"),
        "JAVIA_SUPABASE_URL": storage_contract.url,
        "JAVIA_SUPABASE_SERVICE_KEY": SECRET_KEY,
        "JAVIA_SUPABASE_BUCKET": "moved-packages",
    }
    before = dump(source_url)

    result = run_javia("db", "migrate-data", "--from", source_url, "--json", env=env)

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["rows"]["devices"] == 3 and summary["rows"]["updates"] == 2
    assert (summary["packages"], summary["objects_copied"], summary["objects_present"]) == (2, 6, 0)
    assert dump(target_url) == before  # every row of every table, ids and token hashes included
    assert dump(source_url) == before  # the source was only read

    for name in ("JAVIA_SUPABASE_URL", "JAVIA_SUPABASE_SERVICE_KEY", "JAVIA_SUPABASE_BUCKET"):
        monkeypatch.setenv(name, env[name])
    settings = ServerSettings(
        api_key=API_KEY,
        backend="supabase",
        data_dir=tmp_path / "new",
        database_url=env["JAVIA_DATABASE_URL"],
    )
    backend = create_backend(settings)
    backend.prepare()
    try:
        service = UpdateService(backend, settings)
        # Tokens issued by the old server still work; progress is where it was.
        kitchen = service.authenticate_device(history["tokens"]["kitchen"])
        attic = service.authenticate_device(history["tokens"]["attic"])
        assert kitchen is not None and attic is not None
        assert service.get_device(kitchen.device_uuid, now=NOW).current_version == "v1.1.0"
        directive = service.heartbeat(
            attic, HeartbeatRequest(current_version="v1.0.0"), now=NOW
        ).update
        assert directive is not None and str(directive.version) == "v1.2.0"
        for version, package in history["packages"].items():
            update = service.resolve_update(version)
            assert (
                b"".join(service.payload_range(update, 0, update.archive_size)) == package.payload
            )
            assert service.package_documents(update) == (package.manifest, package.signature)
        # New rows continue after the copied ids.
        newcomer = service.register_device(DeviceRegisterRequest(), now=NOW + timedelta(hours=1))
        assert (
            service.find_device(newcomer.device_uuid).id
            == max(d["id"] for d in before["devices"]) + 1
        )
        assert service.audit_log(limit=1).items[0].id > max(a["id"] for a in before["audit_log"])
    finally:
        backend.close()

    again = run_javia("db", "migrate-data", "--from", source_url, env=env)
    assert again.returncode == 1
    assert "already holds" in again.stderr and "Traceback" not in again.stderr + again.stdout
    assert len(dump(target_url)["devices"]) == 4  # refused: nothing merged, nothing duplicated

    # And back out of Supabase into a self-contained SQLite copy (docs: "Other moves").
    backup = tmp_path / "backup"
    back = run_javia(
        "db", "migrate-data", "--from", env["JAVIA_DATABASE_URL"], "--from-backend", "supabase",
        "--to", f"sqlite:///{backup / 'javia.db'}", "--to-backend", "local",
        "--to-data-dir", str(backup), env=env,
    )  # fmt: skip
    assert back.returncode == 0, back.stderr
    assert dump(f"sqlite:///{backup / 'javia.db'}") == dump(target_url)
    copied = {p.read_bytes() for p in (backup / "packages").rglob("payload.tar.gz")}
    assert copied == {package.payload for package in history["packages"].values()}


def test_postgresql_back_to_sqlite_keeps_ids_past_deleted_rows(
    local_installation, tmp_path, new_postgres_url
):
    old_settings, history = local_installation
    source_url = old_settings.resolved_database_url()
    engine = make_engine(source_url)
    with engine.begin() as connection:  # an id handed out and then removed
        connection.execute(text("DELETE FROM audit_log WHERE id = (SELECT max(id) FROM audit_log)"))
    engine.dispose()
    high_water = len(dump(source_url)["audit_log"]) + 1
    pg_url = new_postgres_url()
    old_blobs = FileBlobStore(Path(old_settings.data_dir))
    middle_blobs = FileBlobStore(tmp_path / "middle")
    back_blobs = FileBlobStore(tmp_path / "back")

    first = migrate_data(source_url, pg_url, source_blobs=old_blobs, target_blobs=middle_blobs)
    back_url = f"sqlite:///{tmp_path / 'back' / 'javia.db'}"
    second = migrate_data(pg_url, back_url, source_blobs=middle_blobs, target_blobs=back_blobs)

    assert first.rows == second.rows and second.objects_copied == 6
    assert dump(back_url) == dump(pg_url) == dump(source_url)
    for target_url, blobs in ((pg_url, middle_blobs), (back_url, back_blobs)):
        settings = ServerSettings(api_key=API_KEY, data_dir=blobs.root, database_url=target_url)
        backend = create_backend(settings)
        backend.prepare()
        try:
            service = UpdateService(backend, settings)
            service.register_device(DeviceRegisterRequest(), now=NOW)
            assert service.audit_log(limit=1).items[0].id == high_water + 1  # never reused
            update = service.resolve_update("v1.1.0")
            payload = history["packages"]["v1.1.0"].payload
            assert b"".join(service.payload_range(update, 0, update.archive_size)) == payload
        finally:
            backend.close()


def test_a_damaged_source_package_is_refused_before_any_row_is_written(
    local_installation, tmp_path, new_postgres_url
):
    old_settings, _ = local_installation
    (payload,) = [
        p
        for p in Path(old_settings.data_dir, "packages").rglob("payload.tar.gz")
        if "v1.1.0" in str(p)
    ]
    damaged = bytearray(payload.read_bytes())
    damaged[1000] ^= 0xFF
    payload.write_bytes(bytes(damaged))
    target_url = new_postgres_url()

    with pytest.raises(DataMigrationError, match="v1.1.0.*does not match the SHA-256"):
        migrate_data(
            old_settings.resolved_database_url(),
            target_url,
            source_blobs=FileBlobStore(Path(old_settings.data_dir)),
            target_blobs=FileBlobStore(tmp_path / "new"),
        )
    assert not any(table_counts(make_engine(target_url)).values())


def test_sources_that_cannot_be_copied_are_refused_with_the_way_out(local_installation, tmp_path):
    old_settings, _ = local_installation
    source_url = old_settings.resolved_database_url()
    target_url = f"sqlite:///{tmp_path / 'copy' / 'javia.db'}"

    with pytest.raises(DataMigrationError, match="same database"):
        migrate_data(source_url, source_url)
    with pytest.raises(DataMigrationError, match="does not exist"):
        migrate_data(f"sqlite:///{tmp_path / 'nothing.db'}", target_url)
    behind = f"sqlite:///{tmp_path / 'behind' / 'javia.db'}"
    upgrade(behind, revision="0001")
    with pytest.raises(DataMigrationError, match="javia db upgrade"):
        migrate_data(behind, target_url)
    assert not Path(tmp_path / "nothing.db").exists()  # the check created no empty file


def test_rows_only_when_the_packages_stay_where_they_are(
    local_installation, tmp_path, new_postgres_url
):
    old_settings, history = local_installation
    target_url = new_postgres_url()
    env = {
        "JAVIA_CONFIG": str(tmp_path / "none.toml"),
        "JAVIA_DATABASE_URL": target_url,
        "JAVIA_DATA_DIR": str(old_settings.data_dir),  # local backend, same package directory
    }

    result = run_javia(
        "db", "migrate-data", "--from", old_settings.resolved_database_url(), env=env
    )

    assert result.returncode == 0, result.stderr
    assert "left where they are" in result.stdout
    assert dump(target_url) == dump(old_settings.resolved_database_url())
    settings = ServerSettings(
        api_key=API_KEY, data_dir=old_settings.data_dir, database_url=target_url
    )
    backend = create_backend(settings)
    try:
        service = UpdateService(backend, settings)
        update = service.resolve_update("v1.2.0")
        payload = history["packages"]["v1.2.0"].payload
        assert b"".join(service.payload_range(update, 0, update.archive_size)) == payload
    finally:
        backend.close()
