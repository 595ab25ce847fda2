"""The throwaway PostgreSQL cluster the backend tests rely on (DESIGN.md section 5)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from postgres import PostgresCluster, find_server_binaries, report_unavailable


def _uid_of(pid: int) -> int:
    """Real uid of process ``pid``, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for process {pid}")


def test_round_trips_jsonb_through_a_real_server(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://javia:")
    assert "@127.0.0.1:" in postgres_url and postgres_url.endswith("/javia_test")
    engine = sa.create_engine(postgres_url)
    metadata = sa.MetaData()
    table = sa.Table(
        "fixture_round_trip",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("details", JSONB, nullable=False),
    )
    value = {
        "device": "küche-01",
        "versions": ["v1.2.3", "v1.10.0"],
        "nested": {"ok": True, "n": None},
    }
    try:
        metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(table.insert(), {"id": 1, "details": value})
        with engine.connect() as connection:
            stored = connection.execute(
                sa.select(table.c.details).where(table.c.id == 1)
            ).scalar_one()
            matched = connection.execute(
                sa.select(table.c.id).where(table.c.details["nested"]["ok"].as_boolean())
            ).scalar_one()
            server = connection.execute(sa.text("SHOW server_version")).scalar_one()
        assert stored == value
        assert matched == 1
        assert int(server.split(".")[0]) >= 12
    finally:
        metadata.drop_all(engine)
        engine.dispose()


def test_application_role_is_not_a_superuser(postgres_url: str) -> None:
    # Like Supabase's role: migrations must not rely on superuser rights.
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            is_superuser = connection.execute(
                sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            ).scalar_one()
            connection.execute(sa.text("CREATE SCHEMA IF NOT EXISTS fixture_owned_schema"))
            connection.execute(sa.text("DROP SCHEMA fixture_owned_schema"))
    finally:
        engine.dispose()
    assert is_superuser is False


def test_server_processes_never_run_as_root(postgres_cluster: PostgresCluster) -> None:
    engine = sa.create_engine(postgres_cluster.url())
    try:
        with engine.connect() as connection:
            backend_pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            backend_uid = _uid_of(backend_pid)
    finally:
        engine.dispose()
    postmaster_uid = _uid_of(postgres_cluster.postmaster_pid())
    assert postmaster_uid != 0
    assert backend_uid == postmaster_uid
    if os.geteuid() == 0:
        assert postgres_cluster.run_as == "postgres"


def test_listens_on_loopback_with_its_socket_in_a_temporary_directory(
    postgres_cluster: PostgresCluster,
) -> None:
    assert (postgres_cluster.socket_dir / f".s.PGSQL.{postgres_cluster.port}").is_socket()
    assert "/var/run/postgresql" not in str(postgres_cluster.socket_dir)
    assert postgres_cluster.sql("SHOW listen_addresses") == "127.0.0.1"
    assert postgres_cluster.sql("SHOW fsync") == "off"


def test_create_database_gives_an_isolated_database(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.create_database(f"fixture_extra_{os.getpid()}")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            assert (
                connection.execute(sa.text("SELECT current_database()")).scalar_one()
                == url.rsplit("/", 1)[1]
            )
    finally:
        engine.dispose()
    with pytest.raises(ValueError, match="lower-case identifier"):
        postgres_cluster.create_database("Robert'); DROP TABLE students;--")


def test_stop_removes_the_cluster_and_is_idempotent(tmp_path: Path) -> None:
    # A second, short-lived cluster: stop must end the server and delete its files.
    from postgres import start_cluster

    bin_dir = find_server_binaries()
    if bin_dir is None:
        report_unavailable("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
    cluster = start_cluster(bin_dir)
    pid = cluster.postmaster_pid()
    cluster.stop()
    cluster.stop()
    assert not cluster.base_dir.exists()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_picks_the_highest_major_version(tmp_path: Path) -> None:
    for version in ("9.6", "15", "16", "100"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        names = ("initdb", "pg_ctl", "postgres", "psql") if version != "100" else ("initdb",)
        for name in names:
            program = bin_dir / name
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    # 100 lacks pg_ctl, so it does not count; 16 beats 15 and 9.6 numerically.
    assert find_server_binaries(tmp_path) == tmp_path / "16" / "bin"
    assert find_server_binaries(tmp_path / "missing") is None


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_missing_binaries_fail_loudly_in_ci(ci: str) -> None:
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI: no binaries"):
        report_unavailable("no binaries", {"CI": ci})


def test_missing_binaries_skip_outside_ci() -> None:
    with pytest.raises(pytest.skip.Exception, match="skipped: no binaries"):
        report_unavailable("no binaries", {})
    with pytest.raises(pytest.skip.Exception):
        report_unavailable("no binaries", {"CI": "false"})
