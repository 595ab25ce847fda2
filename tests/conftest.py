"""Fixtures shared by every test directory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from postgres import (
    PostgresCluster,
    PostgresUnavailable,
    report_unavailable,
    require_server_binaries,
    start_cluster,
)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster for this test process (see ``tests/postgres.py``).

    Skipped when this machine cannot run one (no server binaries; as root, no
    ``postgres`` user), failed instead when ``CI=true``. A cluster that fails
    to start is an error everywhere. Stopped at the end of the session,
    whatever the tests did.
    """
    bin_dir = require_server_binaries()
    try:
        cluster = start_cluster(bin_dir)
    except PostgresUnavailable as error:
        report_unavailable(str(error))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """SQLAlchemy URL ``postgresql+psycopg://javia:…@127.0.0.1:PORT/javia_test``.

    The ``javia`` role owns the database but is not a superuser, like the role
    a Supabase project hands out.
    """
    return postgres_cluster.url()


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    """The operator's package signing key for this test session."""
    return Ed25519PrivateKey.generate()


_DASHBOARD_TESTS = Path(__file__).parent / "dashboard"


@pytest.fixture(autouse=True)
def no_event_loop_left_running(request: pytest.FixtureRequest) -> None:
    """Fail a test that starts while an earlier test left an asyncio loop running in this thread.

    Such a leak makes every later ``asyncio.run`` in the same worker fail, far from
    its cause and only for some orders of the tests. Playwright's synchronous API
    keeps its loop running while a browser is open, so the dashboard's tests
    (module-scoped browser) are the exception.
    """
    if _DASHBOARD_TESTS in request.path.parents:
        return
    loop = asyncio.events._get_running_loop()
    assert loop is None, (
        f"an earlier test in this worker left {loop!r} running in this thread: "
        "every asyncio.run here would fail"
    )
