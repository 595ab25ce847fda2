"""The ``supabase`` backend itself: selection by settings, its schema, its bucket, its migrations.

What every backend must do is in ``test_conformance.py``; here is what only
this one promises: it is chosen with ``backend = "supabase"``, reads its
Storage settings like every server setting, keeps its tables in the ``javia``
schema, keeps packages in a private bucket and nothing on local disk, accepts
the connection string as Supabase shows it, and lets replicas that start
together migrate one at a time.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from javia_core.errors import BackendError
from javia_devtools.demo import free_port
from javia_updates.backends import backend_names, create_backend, get_backend_class
from javia_updates.backends import database as database_module
from javia_updates.backends.database import (
    MIGRATION_LOCK_KEY,
    normalize_database_url,
    upgrade_serialized,
)
from javia_updates.backends.migrations import current_revision, head_revision
from javia_updates.backends.sql_store import make_engine
from javia_updates.backends.supabase import SupabaseBackend, SupabaseSettings
from javia_updates.backends.supabase_storage import SupabaseStorageError
from javia_updates.settings import ServerSettings, SettingsError
from test_supabase_storage import SECRET_KEY

from .conftest import API_KEY
from .test_conformance import NOW


@pytest.fixture
def supabase_settings(tmp_path, request, monkeypatch) -> ServerSettings:  # type: ignore[no-untyped-def]
    from .conftest import settings_for

    return settings_for("supabase", tmp_path / "data", request=request, monkeypatch=monkeypatch)


def test_backend_supabase_is_registered_and_chosen_by_the_backend_setting(supabase_settings):
    assert {"local", "supabase"} <= set(backend_names())
    assert get_backend_class("supabase") is SupabaseBackend

    backend = create_backend(supabase_settings)
    try:
        assert isinstance(backend, SupabaseBackend)
        assert backend.store.schema == "javia"
        # The dashboard's postgresql:// URL is opened with psycopg 3.
        assert make_url(backend.database_url).drivername == "postgresql+psycopg"
        assert backend.blobs.bucket.startswith("javia-")
    finally:
        backend.close()


def test_prepare_puts_the_tables_in_the_javia_schema_and_makes_a_private_bucket(
    supabase_settings, storage_contract
):
    backend = create_backend(supabase_settings)
    try:
        backend.prepare()
        backend.prepare()  # every replica start runs it again: harmless
        inspector = inspect(backend.store.engine)
        assert {"devices", "updates", "device_updates", "audit_log"} <= set(
            inspector.get_table_names(schema="javia")
        )
        assert inspector.get_table_names(schema="public") == []
        assert current_revision(backend.database_url) == head_revision()
        assert storage_contract.buckets[backend.blobs.bucket]["public"] is False
    finally:
        backend.close()


def test_a_public_bucket_stops_the_server_from_starting(supabase_settings, storage_contract):
    backend = create_backend(supabase_settings)
    storage_contract.buckets[backend.blobs.bucket] = {
        "id": backend.blobs.bucket,
        "name": backend.blobs.bucket,
        "public": True,
    }
    try:
        with pytest.raises(SupabaseStorageError, match="is public"):
            backend.prepare()
    finally:
        backend.close()


def test_packages_live_in_the_bucket_and_nothing_stays_on_local_disk(
    supabase_settings, storage_contract, make_package
):
    from javia_updates.service import UpdateService

    backend = create_backend(supabase_settings)
    backend.prepare()
    try:
        service = UpdateService(backend, supabase_settings)
        package = make_package("v1.1.0", extra_bytes=10_000)
        update = service.publish_update(package.upload(), now=NOW)
        key = service.resolve_update(update.id).package_url
    finally:
        backend.close()

    stored = {
        path: file.read_bytes()
        for (bucket, path), file in storage_contract.objects.items()
        if bucket == backend.blobs.bucket
    }
    # Per-file objects and the delta index live in the bucket too (docs/architecture.md).
    assert stored.pop(f"{key}/delta-index.json").startswith(b"{")
    assert all(path.startswith("objects/") for path in stored if not path.startswith(f"{key}/"))
    stored = {path: data for path, data in stored.items() if path.startswith(f"{key}/")}
    assert stored == {
        f"{key}/manifest.json": package.manifest,
        f"{key}/manifest.sig": package.signature,
        f"{key}/payload.tar.gz": package.payload,
    }
    data_dir = Path(supabase_settings.data_dir)
    assert sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")) == ["uploads"]


def test_missing_or_wrong_settings_are_refused_with_the_setting_named(
    tmp_path, monkeypatch, new_postgres_url
):
    def settings(**values) -> ServerSettings:  # type: ignore[no-untyped-def]
        return ServerSettings(api_key=API_KEY, backend="supabase", data_dir=tmp_path, **values)

    with pytest.raises(SettingsError, match="JAVIA_DATABASE_URL"):
        create_backend(settings())
    with pytest.raises(BackendError, match="PostgreSQL"):
        create_backend(settings(database_url=f"sqlite:///{tmp_path / 'javia.db'}"))
    url = new_postgres_url()
    with pytest.raises(SettingsError, match="JAVIA_SUPABASE_URL"):
        create_backend(settings(database_url=url))
    monkeypatch.setenv("JAVIA_SUPABASE_URL", "https://abcdefghijklmnop.supabase.co")
    with pytest.raises(SettingsError, match="JAVIA_SUPABASE_SERVICE_KEY"):
        create_backend(settings(database_url=url))
    monkeypatch.setenv("JAVIA_SUPABASE_SERVICE_KEY", SECRET_KEY)
    monkeypatch.setenv("JAVIA_SUPABASE_SIGNED_URL_SECONDS", "0")
    with pytest.raises(SettingsError, match="supabase_signed_url_seconds"):
        create_backend(settings(database_url=url))


def test_storage_settings_come_from_the_environment_over_the_servers_toml_file(
    tmp_path, monkeypatch
):
    config = tmp_path / "server.toml"
    config.write_text(
        'supabase_url = "https://fromfile.supabase.co"\n'
        'supabase_service_key = "sb_secret_fromfile"\n'
        'supabase_bucket = "file-bucket"\n'
        "supabase_signed_urls = true\n"
    )
    monkeypatch.setenv("JAVIA_CONFIG", str(config))
    monkeypatch.setenv("JAVIA_SUPABASE_BUCKET", "env-bucket")

    read = SupabaseSettings.for_server(SimpleNamespace())
    assert read.supabase_url == "https://fromfile.supabase.co"
    assert read.supabase_service_key.get_secret_value() == "sb_secret_fromfile"
    assert (read.supabase_bucket, read.supabase_signed_urls) == ("env-bucket", True)
    # A server settings object that declares a value itself wins over both.
    assert (
        SupabaseSettings.for_server(SimpleNamespace(supabase_bucket="own")).supabase_bucket == "own"
    )
    blobs = read.blob_store(tmp_path / "uploads")
    try:
        assert (blobs.storage_url, blobs.signed_urls) == (
            "https://fromfile.supabase.co/storage/v1",
            True,
        )
        assert "sb_secret_fromfile" not in repr(blobs)
    finally:
        blobs.close()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://postgres.ref:p%40ss@host:5432/postgres?sslmode=require",
         "postgresql+psycopg://postgres.ref:p%40ss@host:5432/postgres?sslmode=require"),
        ("postgres://u:pw@db.ref.supabase.co:5432/postgres",
         "postgresql+psycopg://u:pw@db.ref.supabase.co:5432/postgres"),
        ("postgresql+psycopg://u:pw@h/db", "postgresql+psycopg://u:pw@h/db"),
        ("sqlite:////var/lib/javia-server/javia.db", "sqlite:////var/lib/javia-server/javia.db"),
    ],
)  # fmt: skip
def test_connection_strings_as_supabase_shows_them_are_read_with_psycopg(given, expected):
    assert normalize_database_url(given) == expected


def test_a_malformed_database_url_is_refused_without_echoing_it():
    with pytest.raises(BackendError, match="malformed database URL") as raised:
        normalize_database_url("not a url with secret-password")
    assert "secret-password" not in str(raised.value)


def test_replicas_starting_together_migrate_one_at_a_time(new_postgres_url, tmp_path):
    url = new_postgres_url()
    environment = {"PATH": "/usr/bin:/bin", "JAVIA_CONFIG": str(tmp_path / "none.toml")}
    command = [
        sys.executable,
        "-m",
        "javia_cli.main",
        "db",
        "upgrade",
        "--database-url",
        url,
    ]
    processes = [
        subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(3)
    ]
    outputs = [(process.wait(timeout=120), process.stdout.read()) for process in processes]  # type: ignore[union-attr]

    assert [code for code, _ in outputs] == [0, 0, 0], outputs
    assert current_revision(url) == head_revision()


def test_a_migration_waits_for_the_lock_and_gives_up_with_a_clear_message(
    new_postgres_url, monkeypatch
):
    url = new_postgres_url()
    monkeypatch.setattr(database_module, "MIGRATION_LOCK_TIMEOUT_SECONDS", 1)
    engine = make_engine(url)
    try:
        with engine.connect() as holder:  # another process, stuck mid-migration
            holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            with pytest.raises(BackendError, match="held the migration lock for 1 s"):
                upgrade_serialized(url)
            assert current_revision(url) is None  # nothing ran without the lock
    finally:
        engine.dispose()
    upgrade_serialized(url)  # the lock went with the holder's session
    assert current_revision(url) == head_revision()


# The registry learns the supabase backend when its module is imported; the
# launcher imports it before running the CLI, exactly as `javia` does once the
# backend is registered on import of javia_updates.backends.
_LAUNCHER = (
    "import sys, javia_updates.backends.supabase; "
    "from javia_cli.main import run; sys.argv[0] = 'javia'; run()"
)


def test_a_real_server_on_the_supabase_backend_serves_packages_out_of_storage(
    tmp_path, new_postgres_url, storage_contract, make_package
):
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "JAVIA_CONFIG": str(tmp_path / "none.toml"),
        "JAVIA_API_KEY": API_KEY,
        "JAVIA_BACKEND": "supabase",
        "JAVIA_DATABASE_URL": new_postgres_url().replace("postgresql+psycopg://", "postgresql://"),
        "JAVIA_SUPABASE_URL": storage_contract.url,
        "JAVIA_SUPABASE_SERVICE_KEY": SECRET_KEY,
        "JAVIA_SUPABASE_BUCKET": "server-process",
    }
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, "server", "--port", str(port), "--data-dir", str(tmp_path / "replica")],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/v1"
    admin = {"X-API-Key": API_KEY}
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not answer within 30 s"
            time.sleep(0.1)
        registered = httpx.post(f"{base}/devices/register", json={}, headers=admin).json()
        package = make_package("v1.1.0", "scheduled", extra_bytes=400_000)
        files = {
            "manifest": ("manifest.json", package.manifest, "application/json"),
            "signature": ("manifest.sig", package.signature, "application/json"),
            "payload": ("payload.tar.gz", package.payload, "application/gzip"),
        }
        published = httpx.post(f"{base}/updates/", files=files, headers=admin, timeout=60)
        assert published.status_code == 201, published.text
        device = {"Authorization": f"Bearer {registered['device_token']}"}
        download = f"{base}/updates/{published.json()['id']}/download"
        whole = httpx.get(download, headers=device, timeout=60)
        resumed = httpx.get(download, headers={**device, "Range": "bytes=300000-"}, timeout=60)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
        log.close()

    assert storage_contract.buckets["server-process"]["public"] is False  # created at start
    assert (whole.status_code, whole.content) == (200, package.payload)
    assert (resumed.status_code, resumed.content) == (206, package.payload[300_000:])
    kept = [p for p in (tmp_path / "replica").rglob("*") if p.is_file()]
    assert kept == []  # the replica keeps no package on its own disk
