"""What a publish answers when the blob store or the database refuses it, and what it leaves behind.

Through the real server app (FastAPI, the ``supabase`` backend pointed at the
Storage imitation of ``tests/test_supabase_storage.py``, the ``local`` backend
on SQLite and PostgreSQL):

- a package over Storage's size limit is 413 naming the limit, not "503, retry";
- any other refusal by Storage (a 4xx: key, bucket, request) is 502 with
  Storage's message; only an unreachable or failing Storage (connection
  refused, 5xx) is 503;
- a publish that fails after some objects were stored (a refused payload, a
  failing database insert) leaves no object behind, on every backend; if even
  the clean-up fails, the answer still names the real failure and the log
  names the leftover.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from fastapi.testclient import TestClient
from sqlalchemy import text

from javia_devtools.demo import free_port, javia_command
from javia_updates.backends import Backend, create_backend
from javia_updates.server import create_app
from javia_updates.settings import ServerSettings
from shared_helpers import Package
from test_supabase_storage import (
    ANON_KEY,
    StorageContract,
    gateway_error,
    storage_error,
)

from .conftest import API_KEY, BACKEND_KINDS, settings_for

ADMIN = {"X-API-Key": API_KEY}
KIB = 1024


@pytest.fixture
def supabase_settings(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> ServerSettings:
    return settings_for("supabase", tmp_path / "data", request=request, monkeypatch=monkeypatch)


@pytest.fixture
def supabase_server(
    supabase_settings: ServerSettings, storage_contract: StorageContract
) -> Iterator[tuple[TestClient, str]]:
    """The server app on the supabase backend (its bucket created at start) and the bucket name."""
    storage_contract.intercept = None
    with TestClient(create_app(supabase_settings)) as client:
        yield client, os.environ["JAVIA_SUPABASE_BUCKET"]
    storage_contract.intercept = None


def _publish(client: TestClient, package: Package):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/updates/", files=package.files(), headers=ADMIN)


def _count_updates(client: TestClient) -> int:
    listed = client.get("/api/v1/updates/", headers=ADMIN)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    return len(body["items"] if isinstance(body, dict) else body)


# --------------------------------------------------------------------------- size limit


def test_a_package_over_the_buckets_size_limit_is_413_naming_the_limit_and_leaves_no_object(
    supabase_server, storage_contract: StorageContract, make_package
) -> None:
    client, bucket = supabase_server
    storage_contract.buckets[bucket]["file_size_limit"] = 64 * KIB  # the dashboard's setting
    package = make_package("v1.1.0", extra_bytes=100 * KIB)
    assert len(package.manifest) < 64 * KIB < len(package.payload)  # manifest and sig fit

    refused = _publish(client, package)

    assert refused.status_code == 413, refused.text
    detail = refused.json()["detail"]
    assert f"file size limit of bucket {bucket!r}, {64 * KIB} bytes" in detail
    assert f"{len(package.payload)} bytes" in detail
    # manifest.json and manifest.sig were stored before the payload was refused: gone again.
    assert storage_contract.requests_to("POST", "manifest.sig")
    assert storage_contract.bucket_objects(bucket) == {}
    assert _count_updates(client) == 0

    storage_contract.buckets[bucket]["file_size_limit"] = None  # the operator raises it
    published = _publish(client, package)
    assert published.status_code == 201, published.text
    names = sorted(path.rsplit("/", 1)[1] for path in storage_contract.bucket_objects(bucket))
    # The package's three objects and its delta index; per-file objects for delta downloads.
    assert [name for name in names if name != "object.zst"] == [
        "delta-index.json",
        "manifest.json",
        "manifest.sig",
        "payload.tar.gz",
    ]
    assert "object.zst" in names


def test_the_operators_cli_shows_the_413_with_the_limit_as_one_red_line(
    tmp_path: Path,
    supabase_settings: ServerSettings,
    storage_contract: StorageContract,
    signing_key,  # type: ignore[no-untyped-def]
) -> None:
    app_dir = tmp_path / "pi_client"
    app_dir.mkdir()
    (app_dir / "VERSION").write_text("v1.0.0\n")
    (app_dir / "assistant.py").write_text("print('hello')\n")
    (app_dir / "model.bin").write_bytes(secrets.token_bytes(200 * KIB))  # incompressible
    key = tmp_path / "signing.pem"
    key.write_bytes(signing_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    key.chmod(0o600)
    bucket = os.environ["JAVIA_SUPABASE_BUCKET"]

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(supabase_settings), host="127.0.0.1", port=port, log_level="critical"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.02)
        storage_contract.buckets[bucket]["file_size_limit"] = 100 * KIB
        environment = {k: v for k, v in os.environ.items() if not k.startswith("JAVIA_")}
        environment["JAVIA_OPERATOR_CONFIG"] = str(tmp_path / "none.toml")
        result = subprocess.run(
            [
                *javia_command(), "publish", str(app_dir), "--version", "v1.1.0",
                "--type", "scheduled", "--key", str(key), "--yes",
                "--server", f"http://127.0.0.1:{port}", "--api-key", API_KEY,
            ],
            capture_output=True, text=True, env=environment, stdin=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: server refused (413): ")
    assert f"{100 * KIB} bytes (0.1 MiB)" in lines[0]
    assert "retry" not in lines[0].lower()
    assert (app_dir / "VERSION").read_text() == "v1.0.0\n"  # nothing was published
    assert storage_contract.bucket_objects(bucket) == {}


# --------------------------------------------------------------------------- other refusals


def _rotate_key(storage: StorageContract, gateway: str) -> None:
    storage.gateway = gateway
    storage.service_key = "sb_secret_" + secrets.token_urlsafe(24)  # the server's key is now wrong


def _server_key_is_anon(storage: StorageContract, gateway: str) -> None:
    storage.anon_key = storage.service_key  # row-level security now refuses the server's writes
    storage.service_key = "sb_secret_" + secrets.token_urlsafe(24)


def _payload_key_refused(storage: StorageContract, gateway: str) -> None:
    def refuse(method: str, path: str):  # type: ignore[no-untyped-def]
        if method == "POST" and path.endswith("/payload.tar.gz"):
            return storage_error(400, "InvalidKey", f"Invalid key: {path.rsplit('/', 3)[-3]}")
        return None

    storage.intercept = refuse


@pytest.mark.parametrize(
    ("provoke", "gateway", "message"),
    [
        (_rotate_key, "platform", "Invalid API key"),
        (_rotate_key, "kong", "Invalid authentication credentials"),
        (_server_key_is_anon, "platform", "new row violates row-level security policy"),
        (_payload_key_refused, "platform", "InvalidKey"),
    ],
    ids=["rotated-key", "rotated-key-self-hosted", "anon-key-403", "invalid-key-400"],
)
def test_other_storage_refusals_are_502_with_storages_message_and_leave_no_object(
    supabase_server,
    storage_contract: StorageContract,
    make_package,
    provoke: Callable[[StorageContract, str], None],
    gateway: str,
    message: str,
) -> None:
    client, bucket = supabase_server
    server_key = storage_contract.service_key
    provoke(storage_contract, gateway)
    try:
        refused = _publish(client, make_package("v1.1.0"))
    finally:
        storage_contract.service_key, storage_contract.anon_key = server_key, ANON_KEY
        storage_contract.gateway, storage_contract.intercept = "platform", None

    assert refused.status_code == 502, refused.text
    detail = refused.json()["detail"]
    assert message in detail
    assert server_key not in detail
    assert storage_contract.bucket_objects(bucket) == {}
    assert _count_updates(client) == 0


def test_a_bucket_deleted_under_a_running_server_is_502_naming_the_bucket(
    supabase_server, storage_contract: StorageContract, make_package
) -> None:
    client, bucket = supabase_server
    del storage_contract.buckets[bucket]

    refused = _publish(client, make_package("v1.1.0"))

    assert refused.status_code == 502, refused.text
    assert f"bucket {bucket!r} does not exist" in refused.json()["detail"]


# --------------------------------------------------------------------------- unavailable


def test_unreachable_storage_is_503(
    supabase_settings: ServerSettings, tmp_path: Path, make_package, monkeypatch
) -> None:
    storage = StorageContract(tmp_path / "storage")
    storage.root.mkdir()
    storage.start()
    monkeypatch.setenv("JAVIA_SUPABASE_URL", storage.url)
    with TestClient(create_app(supabase_settings)) as client:
        storage.stop()  # Storage goes away under the running server: its port is closed

        answer = _publish(client, make_package("v1.1.0"))

    assert answer.status_code == 503, answer.text
    assert f"Supabase Storage at {storage.url}/storage/v1 is unreachable" in answer.json()["detail"]


@pytest.mark.parametrize(
    "answer",
    [
        lambda: storage_error(500, "InternalError", "Internal server error"),
        lambda: gateway_error(502, "An invalid response was received from the upstream server"),
    ],
    ids=["storage-500", "gateway-502"],
)
def test_failing_storage_is_503(
    supabase_server, storage_contract: StorageContract, make_package, answer
) -> None:
    client, bucket = supabase_server
    storage_contract.intercept = lambda method, path: answer() if method == "POST" else None

    refused = _publish(client, make_package("v1.1.0"))

    assert refused.status_code == 503, refused.text
    assert storage_contract.bucket_objects(bucket) == {}


# --------------------------------------------------------------------------- database step


def _refuse_update_inserts(backend: Backend) -> None:
    """Make the database refuse every new update row, as a full disk or a read-only one would."""
    engine = backend.store.engine  # type: ignore[attr-defined]
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(
                text(
                    "CREATE TRIGGER refuse_publish BEFORE INSERT ON updates "
                    "BEGIN SELECT RAISE(ABORT, 'disk quota exceeded'); END"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE FUNCTION javia.refuse_publish() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'disk quota exceeded'; END $$"
                )
            )
            connection.execute(
                text(
                    "CREATE TRIGGER refuse_publish BEFORE INSERT ON javia.updates "
                    "FOR EACH ROW EXECUTE FUNCTION javia.refuse_publish()"
                )
            )


def _stored_objects(kind: str, settings: ServerSettings, storage: StorageContract) -> list[str]:
    if kind == "supabase":
        return sorted(storage.bucket_objects(os.environ["JAVIA_SUPABASE_BUCKET"]))
    packages = Path(settings.data_dir) / "packages"
    return sorted(p.relative_to(packages).as_posix() for p in packages.rglob("*"))


@pytest.mark.parametrize("kind", BACKEND_KINDS)
def test_a_publish_failing_at_the_database_step_leaves_no_object(
    kind: str, tmp_path, request, monkeypatch, storage_contract: StorageContract, make_package
) -> None:
    settings = settings_for(kind, tmp_path / "data", request=request, monkeypatch=monkeypatch)
    backend = create_backend(settings)
    backend.prepare()
    _refuse_update_inserts(backend)
    with TestClient(create_app(settings, backend=backend)) as client:
        refused = _publish(client, make_package("v1.1.0"))
        assert refused.status_code == 503, refused.text
        assert "disk quota exceeded" in refused.json()["detail"]
        assert _count_updates(client) == 0

    assert _stored_objects(kind, settings, storage_contract) == []


def test_when_the_clean_up_fails_too_the_answer_names_the_database_and_the_log_the_leftover(
    tmp_path, request, monkeypatch, storage_contract: StorageContract, make_package, caplog
) -> None:
    settings = settings_for("supabase", tmp_path / "data", request=request, monkeypatch=monkeypatch)
    backend = create_backend(settings)
    backend.prepare()
    _refuse_update_inserts(backend)
    storage_contract.intercept = lambda method, path: (
        storage_error(500, "InternalError", "Internal server error") if method == "DELETE" else None
    )
    try:
        app = create_app(settings, backend=backend)
        with caplog.at_level(logging.ERROR), TestClient(app) as client:
            refused = _publish(client, make_package("v1.1.0"))
    finally:
        storage_contract.intercept = None

    assert refused.status_code == 503, refused.text
    assert "disk quota exceeded" in refused.json()["detail"]
    left = _stored_objects("supabase", settings, storage_contract)
    # The package's three objects and its delta index (per-file objects aside).
    left = [path for path in left if not path.startswith(("objects/", "patches/"))]
    assert len(left) == 4
    key = left[0].rsplit("/", 1)[0]
    assert any(
        "could not be removed" in record.getMessage() and key in record.getMessage()
        for record in caplog.records
    ), caplog.text


def test_a_failed_publish_never_deletes_the_objects_of_a_published_update(
    supabase_server, storage_contract: StorageContract, make_package
) -> None:
    client, bucket = supabase_server
    published = _publish(client, make_package("v1.1.0"))
    assert published.status_code == 201, published.text
    kept = storage_contract.bucket_objects(bucket)
    storage_contract.buckets[bucket]["file_size_limit"] = 8 * KIB

    # The very same package again (same manifest bytes), and a larger next version.
    again = _publish(client, make_package("v1.1.0"))
    larger = _publish(client, make_package("v1.2.0", extra_bytes=20 * KIB))

    assert again.status_code == 409, again.text
    assert larger.status_code == 413, larger.text
    assert storage_contract.bucket_objects(bucket) == kept
