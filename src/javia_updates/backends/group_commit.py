"""Group commit: many threads' small writes share one transaction and one commit (issue 7).

A status report must be durable before the device gets its answer, and on
SQLite every commit is an ``fsync`` of the write-ahead log (about a
millisecond here, ten on an SD card) taken under the database's single
write lock. With a few thousand devices reporting at once, requests queue
behind each other's commits. :class:`GroupCommit` keeps every report
durable before its answer but commits them together: the first thread to
arrive becomes the leader and runs, in one transaction, the work of every
thread that queued while the previous commit was running; the others wait
for that commit and take their own result. The technique is the classic
group commit of database logs (PostgreSQL's ``commit_delay``, MySQL's
binary log group commit), without any added delay: a lone writer commits
at once.

Each unit of work runs in its own savepoint, so one that raises (a
conflict, a refused enrollment) is rolled back alone and its exception
reaches its own caller; the rest of the batch commits. If the commit
itself fails, every unit of the batch gets that error and nothing of it is
stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Generic, TypeVar

from sqlalchemy import Connection

__all__ = ["DEFAULT_MAX_BATCH", "GroupCommit"]

T = TypeVar("T")

#: Most units of work in one transaction (bounds the time one commit holds the lock).
DEFAULT_MAX_BATCH = 256


class _Work(Generic[T]):
    __slots__ = ("error", "finished", "result", "work")

    def __init__(self, work: Callable[[Connection], T]) -> None:
        self.work = work
        self.result: T | None = None
        self.error: BaseException | None = None
        self.finished = False

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit:
    """Runs units of work from many threads in shared write transactions.

    Args:
        transaction: opens one write transaction and yields its connection;
            it commits when the block ends without an exception (for the SQL
            store: its ``_write``, which also takes SQLite's write lock).
        max_batch: most units of work per transaction.

    Thread-safe; never starts a thread of its own.
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
        self._condition = threading.Condition()
        self._queue: list[_Work[object]] = []
        self._committing = False
        #: Transactions committed and units of work run (for tests and benchmarks).
        self.commits = 0
        self.units = 0

    def pending(self) -> int:
        """Units of work queued for the next transaction (not counting one being committed)."""
        with self._condition:
            return len(self._queue)

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(connection)`` inside a committed transaction; returns what it returned.

        Blocks until the transaction holding ``work`` has committed (or failed).

        Raises:
            Exception: whatever ``work`` raised (its savepoint was rolled back,
                the rest of its batch committed), or whatever opening or
                committing the transaction raised (nothing of the batch stored).
        """
        item: _Work[T] = _Work(work)
        with self._condition:
            self._queue.append(item)  # type: ignore[arg-type]
        while True:
            with self._condition:
                while self._committing and not item.finished:
                    self._condition.wait()
                if item.finished:
                    return item.outcome()
                self._committing = True
                batch = self._queue[: self.max_batch]
                del self._queue[: len(batch)]
            try:
                self._commit(batch)
            finally:
                with self._condition:
                    for queued in batch:
                        queued.finished = True
                    self._committing = False
                    self._condition.notify_all()

    def _commit(self, batch: list[_Work[object]]) -> None:
        try:
            with self._transaction() as connection:
                for queued in batch:
                    try:
                        with connection.begin_nested():
                            queued.result = queued.work(connection)
                    except Exception as error:  # noqa: BLE001 - handed to its own caller
                        queued.error = error
        except BaseException as error:
            for queued in batch:
                if queued.error is None:
                    queued.error = error
                    queued.result = None
            if not isinstance(error, Exception):
                raise
            return
        self.commits += 1
        self.units += len(batch)
