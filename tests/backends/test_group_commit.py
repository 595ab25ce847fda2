"""Group commit on a real SQLite database: concurrent writers share commits, none is lost."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select

from javia_updates.backends.group_commit import GroupCommit
from javia_updates.backends.sql_store import make_engine

metadata = MetaData()
reports = Table(
    "reports",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("device", String, unique=True, nullable=False),
)

WRITERS = 20


@pytest.fixture
def engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'group.db'}")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def _transaction(engine):
    @contextmanager
    def begin():
        with engine.connect() as connection, connection.begin():
            yield connection

    return begin


def _stored(engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(select(reports.c.device)).scalars())


def _wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


def _insert(name: str):
    def work(connection) -> str:
        connection.execute(reports.insert().values(device=name))
        return name

    return work


def test_writers_queued_behind_a_commit_share_the_next_one(engine) -> None:
    group = GroupCommit(_transaction(engine))
    entered, release = threading.Event(), threading.Event()

    def first(connection) -> str:
        entered.set()
        release.wait(10)  # the other writers queue up meanwhile
        return _insert("device-00")(connection)

    with ThreadPoolExecutor(WRITERS) as pool:
        futures = [pool.submit(group.run, first)]
        assert entered.wait(10)
        futures += [pool.submit(group.run, _insert(f"device-{i:02d}")) for i in range(1, WRITERS)]
        _wait_until(lambda: group.pending() == WRITERS - 1)
        release.set()
        results = [future.result(timeout=10) for future in futures]

    assert results == [f"device-{i:02d}" for i in range(WRITERS)]
    assert _stored(engine) == results  # every answer was durable
    assert group.commits == 2  # the first alone, then the 19 that queued behind it together
    assert group.units == WRITERS


def test_a_failing_unit_is_rolled_back_alone(engine) -> None:
    group = GroupCommit(_transaction(engine))
    entered, release = threading.Event(), threading.Event()

    def first(connection) -> str:
        entered.set()
        release.wait(10)
        return _insert("first")(connection)

    def duplicate(connection) -> str:
        connection.execute(reports.insert().values(device="shared"))
        raise ValueError("refused after writing")

    with ThreadPoolExecutor(4) as pool:
        head = pool.submit(group.run, first)
        assert entered.wait(10)
        ok = pool.submit(group.run, _insert("kept"))
        bad = pool.submit(group.run, duplicate)
        _wait_until(lambda: group.pending() == 2)
        release.set()
        assert head.result(timeout=10) == "first"
        assert ok.result(timeout=10) == "kept"
        with pytest.raises(ValueError, match="refused after writing"):
            bad.result(timeout=10)

    assert _stored(engine) == ["first", "kept"]  # the refused unit's insert is gone


def test_a_failed_commit_fails_every_unit_and_stores_nothing(engine) -> None:
    @contextmanager
    def failing_commit():
        with engine.connect() as connection:
            transaction = connection.begin()
            yield connection
            transaction.rollback()
            raise OSError("disk gone at commit")

    group = GroupCommit(failing_commit, max_batch=8)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(group.run, _insert(f"d{i}")) for i in range(8)]
        for future in futures:
            with pytest.raises(OSError, match="disk gone at commit"):
                future.result(timeout=10)
    assert _stored(engine) == []
    assert group.commits == 0


def test_max_batch_bounds_a_transaction_and_every_writer_finishes(engine) -> None:
    group = GroupCommit(_transaction(engine), max_batch=3)
    with ThreadPoolExecutor(16) as pool:
        names = [f"d{i:02d}" for i in range(40)]
        results = list(pool.map(lambda name: group.run(_insert(name)), names))
    assert results == names
    assert _stored(engine) == sorted(names)
    assert group.units == 40
    assert group.commits >= 40 / 3


def test_max_batch_must_be_positive(engine) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(_transaction(engine), max_batch=0)


def test_coroutines_wait_for_their_commit_without_threads(engine) -> None:
    group = GroupCommit(_transaction(engine))

    async def report_all() -> list[str]:
        return await asyncio.gather(
            *(group.run_async(_insert(f"async-{i:02d}")) for i in range(WRITERS))
        )

    results = asyncio.run(report_all())
    assert results == [f"async-{i:02d}" for i in range(WRITERS)]
    assert _stored(engine) == results
    assert group.commits < WRITERS  # queued together while the first commit ran
    group.close()


def test_an_error_reaches_the_awaiting_coroutine(engine) -> None:
    group = GroupCommit(_transaction(engine))

    def refused(connection) -> None:
        raise LookupError("no such row")

    async def report() -> None:
        await group.run_async(refused)

    with pytest.raises(LookupError, match="no such row"):
        asyncio.run(report())
    group.close()


def test_close_commits_what_is_queued_and_a_later_write_starts_a_new_writer(engine) -> None:
    group = GroupCommit(_transaction(engine))
    entered, release = threading.Event(), threading.Event()

    def slow(connection) -> str:
        entered.set()
        release.wait(10)
        return _insert("queued-before-close")(connection)

    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(group.run, slow)
        assert entered.wait(10)
        queued = pool.submit(group.run, _insert("queued-behind"))
        _wait_until(lambda: group.pending() == 1)
        release.set()
        group.close()
        assert running.result(timeout=10) == "queued-before-close"
        assert queued.result(timeout=10) == "queued-behind"
    group.close()  # idempotent
    assert group.run(_insert("after-close")) == "after-close"
    group.close()
    assert _stored(engine) == ["after-close", "queued-before-close", "queued-behind"]
