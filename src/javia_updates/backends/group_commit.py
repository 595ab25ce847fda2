"""Group commit: many requests' small writes share one transaction and one commit (issue 7).

A status report must be durable before the device gets its answer, and on
SQLite every commit is an ``fsync`` of the write-ahead log (about a
millisecond here, ten on an SD card) taken under the database's single
write lock. With thousands of devices reporting at once, requests would
queue behind each other's commits, and dozens of threads contending for
SQLite's lock (and Python's) spend more time waking each other than
writing. :class:`GroupCommit` gives the database one writer thread: callers
hand it a unit of work and wait for their own result; the writer takes
every unit queued while its previous commit ran and runs them in one
transaction. Every answer still waits for a commit that holds its write;
a lone writer commits at once, with no added delay. The technique is the
group commit of database logs (PostgreSQL's WAL flush of concurrent
commits, MySQL's binary log group commit).

When several units share a transaction, each runs in its own savepoint,
so one that raises (a conflict, a refused enrollment) is rolled back alone
and its exception reaches its own caller; the rest of the batch commits. A
unit alone in its transaction needs no savepoint: if it raises, its
transaction is rolled back. If the commit itself fails, every unit of the
batch gets that error and nothing of it is stored.

Callers on threads use :meth:`GroupCommit.run`; coroutines on an event
loop use :meth:`GroupCommit.run_async`, which waits without holding a
thread.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection

from javia_updates.metrics import observe_write_batch

__all__ = ["DEFAULT_MAX_BATCH", "GroupCommit"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Most units of work in one transaction (bounds the time one commit holds the lock).
DEFAULT_MAX_BATCH = 256


class _Work(Generic[T]):
    """One unit of work and how its caller is told the outcome."""

    __slots__ = ("error", "result", "tell", "work")

    def __init__(self, work: Callable[[Connection], T], tell: Callable[[], None]) -> None:
        self.work = work
        self.tell = tell
        self.result: T | None = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


_STOP = object()


class GroupCommit:
    """One writer thread running units of work from many callers in shared transactions.

    Args:
        transaction: opens one write transaction and yields its connection;
            it commits when the block ends without an exception (for the SQL
            store: its ``_write``, which also takes SQLite's write lock).
        max_batch: most units of work per transaction.

    The writer thread starts with the first unit of work and ends with
    :meth:`close`. Thread-safe.
    """

    def __init__(
        self,
        transaction: Callable[[], AbstractContextManager[Connection]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._transaction = transaction
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        #: Transactions committed and units of work run in them (for tests and benchmarks).
        self.commits = 0
        self.units = 0

    def pending(self) -> int:
        """Units of work queued and not yet taken by the writer (approximate)."""
        return self._queue.qsize()

    def _submit(self, item: _Work[Any]) -> None:
        with self._lock:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_forever, name="javia-group-commit", daemon=True
                )
                self._writer.start()
            self._queue.put(item)

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(connection)`` inside a committed transaction; returns what it returned.

        Blocks the calling thread until the transaction holding ``work`` has
        committed (or failed). Do not call it from the writer's own work.

        Raises:
            Exception: whatever ``work`` raised (its savepoint was rolled back,
                the rest of its batch committed), or whatever opening or
                committing the transaction raised (nothing of the batch stored).
        """
        done = threading.Event()
        item: _Work[T] = _Work(work, done.set)
        self._submit(item)
        done.wait()
        return item.outcome()

    async def run_async(self, work: Callable[[Connection], T]) -> T:
        """:meth:`run` for a coroutine: waits on the event loop, holding no thread.

        Raises:
            Exception: as :meth:`run`.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def tell() -> None:
            loop.call_soon_threadsafe(_resolve, future)

        item: _Work[T] = _Work(work, tell)
        self._submit(item)
        await future
        return item.outcome()

    def close(self) -> None:
        """Run what is queued, then stop the writer thread.

        Idempotent. Like a closed connection pool, a closed group commit
        starts a new writer if it is used again.
        """
        with self._lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                self._queue.put(_STOP)
        if writer is not None:
            writer.join()

    def _write_forever(self) -> None:
        stop = False
        while not stop:
            batch: list[_Work[Any]] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
                if len(batch) >= self.max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[_Work[Any]]) -> None:
        try:
            with self._transaction() as connection:
                if len(batch) == 1:  # alone: its own transaction is its savepoint
                    batch[0].result = batch[0].work(connection)
                else:
                    for queued in batch:
                        try:
                            with connection.begin_nested():
                                queued.result = queued.work(connection)
                        except Exception as error:  # noqa: BLE001 - handed to its own caller
                            queued.error = error
        except BaseException as error:  # noqa: BLE001 - a lone unit's own error, or the commit's
            for queued in batch:
                if queued.error is None:
                    queued.error = error
                    queued.result = None
        else:
            self.commits += 1
            self.units += len(batch)
            observe_write_batch(len(batch))
        for queued in batch:
            try:
                queued.tell()
            except RuntimeError:  # the caller's event loop is closed: nobody waits
                logger.debug("a group commit caller's event loop closed before its answer")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
