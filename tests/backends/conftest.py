"""Fixtures for the backend tests: every backend, built as a server would build it.

``backend_kind`` names one of:

- ``sqlite``: the ``local`` backend as shipped (SQLite file + package files);
- ``postgresql``: the ``local`` backend with ``database_url`` on a real
  PostgreSQL server (tables in the ``javia`` schema) + package files;
- ``supabase``: the ``supabase`` backend: the same PostgreSQL server as
  Supabase's database, and Supabase Storage played by the contract server of
  ``tests/test_supabase_storage.py`` (Storage's documented HTTP API).

Every test gets a fresh database (a new one on the session's PostgreSQL
cluster) and, for ``supabase``, its own bucket, so tests stay independent
under ``pytest -n 2``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import javia_updates.backends.supabase  # noqa: F401 - registers the supabase backend
from javia_updates.backends import Backend, create_backend
from javia_updates.service import UpdateService
from javia_updates.settings import ServerSettings
from shared_helpers import Package, app_files, build_package, isolate_javia_environment
from test_supabase_storage import SECRET_KEY, StorageContract

API_KEY = "backend-tests-admin-key-0123456789"
BACKEND_KINDS = ["sqlite", "postgresql", "supabase"]
DATABASE_KINDS = ["sqlite", "postgresql"]


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No JAVIA_* variable or settings file of the machine running the tests leaks in."""
    isolate_javia_environment(monkeypatch, tmp_path)


def _require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        from postgres import report_unavailable

        report_unavailable("the psycopg driver is not installed (pip install 'psycopg[binary]')")


@pytest.fixture
def new_postgres_url(request: pytest.FixtureRequest) -> Callable[[], str]:
    """Makes a fresh, empty database on the session's PostgreSQL cluster; returns its URL."""

    def make() -> str:
        _require_psycopg()
        cluster = request.getfixturevalue("postgres_cluster")
        return str(cluster.create_database(f"javia_{uuid.uuid4().hex[:16]}"))

    return make


@pytest.fixture(scope="session")
def storage_contract(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageContract]:
    """Supabase Storage's HTTP API on 127.0.0.1, for the whole session (tests use own buckets)."""
    contract = StorageContract(tmp_path_factory.mktemp("storage-contract"))
    contract.start()
    try:
        yield contract
    finally:
        contract.stop()


def settings_for(
    kind: str,
    data_dir: Path,
    *,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str | None = None,
) -> ServerSettings:
    """Server settings selecting backend ``kind``, as an operator would write them.

    For ``supabase`` the Storage settings go into the environment
    (``JAVIA_SUPABASE_*``), where a server reads them.
    """
    if kind == "sqlite":
        return ServerSettings(api_key=API_KEY, data_dir=data_dir, database_url=database_url)
    if database_url is None:
        database_url = request.getfixturevalue("new_postgres_url")()
    if kind == "postgresql":
        return ServerSettings(api_key=API_KEY, data_dir=data_dir, database_url=database_url)
    contract: StorageContract = request.getfixturevalue("storage_contract")
    monkeypatch.setenv("JAVIA_SUPABASE_URL", contract.url)
    monkeypatch.setenv("JAVIA_SUPABASE_SERVICE_KEY", SECRET_KEY)
    monkeypatch.setenv("JAVIA_SUPABASE_BUCKET", f"javia-{uuid.uuid4().hex[:12]}")
    # Supabase's dashboard shows postgresql://…; the backend reads it as psycopg 3.
    plain = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    return ServerSettings(
        api_key=API_KEY, backend="supabase", data_dir=data_dir, database_url=plain
    )


@pytest.fixture(params=BACKEND_KINDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    """Each backend in turn."""
    return str(request.param)


@pytest.fixture
def settings(
    backend_kind: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> ServerSettings:
    """Settings for ``backend_kind`` on a fresh database."""
    return settings_for(backend_kind, tmp_path / "data", request=request, monkeypatch=monkeypatch)


@pytest.fixture
def backend(settings: ServerSettings) -> Iterator[Backend]:
    """The backend the settings name, built and prepared through the registry, as the server does."""
    built = create_backend(settings)
    built.prepare()
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def service(backend: Backend, settings: ServerSettings) -> UpdateService:
    """The server's use cases over ``backend``."""
    return UpdateService(backend, settings)


# --------------------------------------------------------------------------- packages


@pytest.fixture
def make_package(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Callable[..., Package]:
    """make_package(version, update_type, extra_bytes=0) -> a signed :class:`Package`.

    ``extra_bytes`` adds a file of that many incompressible bytes, to make a
    payload span several download chunks.
    """
    directory = tmp_path / "packages-in"
    directory.mkdir(exist_ok=True)

    def build(
        version: str = "v1.1.0", update_type: str = "scheduled", extra_bytes: int = 0
    ) -> Package:
        files = app_files(version)
        if extra_bytes:
            blocks = (
                hashlib.sha256(f"{version}:{i}".encode()).digest()
                for i in range(extra_bytes // 32 + 1)
            )
            files["data.bin"] = b"".join(blocks)[:extra_bytes]
        return build_package(
            version, update_type, signing_key=signing_key, files=files, directory=directory
        )

    return build
