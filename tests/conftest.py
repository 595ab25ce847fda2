"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

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
