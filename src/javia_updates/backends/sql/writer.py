"""The write path of the shared writes, chosen once per store from the dialect (DESIGN.md section 5).

Status reports, registrations and reconciled rows are small writes that
arrive from many requests at once. How they reach the database depends only
on the database, so the store picks a :class:`Writer` when it is built and
its methods never ask again:

- SQLite (:class:`GroupCommitWriter`): one writer at a time per file, and
  every commit is an fsync of the write-ahead log. Concurrent requests share
  transactions through :class:`~javia_updates.backends.group_commit.GroupCommit`:
  one commit for all, and a coroutine waits without holding a thread.
- PostgreSQL (:class:`TransactionWriter`): concurrent transactions commit in
  parallel (the server groups their WAL flushes itself); sharing a
  transaction would only make replicas lock rows in different orders and
  deadlock. Each unit of work is its own transaction; a coroutine runs it in
  a worker thread.

Either way ``IntegrityError`` passes through for the store to map to
:class:`~javia_core.errors.ConflictError` (or the like); any other database
failure becomes :class:`~javia_core.errors.BackendError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from javia_core.errors import BackendError
from javia_updates.backends.group_commit import GroupCommit
from javia_updates.backends.sql.engine import is_sqlite, short_message

__all__ = ["GroupCommitWriter", "TransactionWriter", "Writer", "writer_for"]

T = TypeVar("T")

#: Opens one write transaction and yields its connection (the store's ``_write``).
WriteTransaction = Callable[[], AbstractContextManager[Connection]]


class Writer(Protocol):
    """Runs units of work (``work(connection) -> result``) in write transactions."""

    def run(self, work: Callable[[Connection], T]) -> T:
        """``work`` in a committed write transaction, from a thread; its result or its exception.

        Raises:
            IntegrityError: a constraint refused the write (the store maps it).
            BackendError: the database failed.
        """
        ...

    async def run_async(self, work: Callable[[Connection], T]) -> T:
        """:meth:`run` for a coroutine on the event loop; raises as :meth:`run`."""
        ...

    def close(self) -> None:
        """Commit what is held and stop any writer thread."""
        ...


class GroupCommitWriter:
    """SQLite: concurrent units of work share one transaction and one commit."""

    def __init__(self, write: WriteTransaction) -> None:
        self._group = GroupCommit(write)

    def run(self, work: Callable[[Connection], T]) -> T:
        """See :meth:`Writer.run`."""
        try:
            return self._group.run(work)
        except IntegrityError:
            raise
        except SQLAlchemyError as error:
            raise BackendError(f"database write failed: {short_message(error)}") from error

    async def run_async(self, work: Callable[[Connection], T]) -> T:
        """See :meth:`Writer.run_async`: waits on the event loop, holding no thread."""
        try:
            return await self._group.run_async(work)
        except IntegrityError:
            raise
        except SQLAlchemyError as error:
            raise BackendError(f"database write failed: {short_message(error)}") from error

    def close(self) -> None:
        """Commit what the group commit holds and stop its writer thread."""
        self._group.close()


class TransactionWriter:
    """PostgreSQL: each unit of work in its own transaction (a worker thread for coroutines)."""

    def __init__(self, write: WriteTransaction) -> None:
        self._write = write

    def run(self, work: Callable[[Connection], T]) -> T:
        """See :meth:`Writer.run`."""
        with self._write() as connection:
            return work(connection)

    async def run_async(self, work: Callable[[Connection], T]) -> T:
        """See :meth:`Writer.run_async`: runs in a worker thread."""
        return await asyncio.to_thread(self.run, work)

    def close(self) -> None:
        """Nothing is held between units of work."""


def writer_for(engine: Engine, write: WriteTransaction) -> Writer:
    """The writer for ``engine``'s dialect: group commit on SQLite, plain transactions otherwise."""
    return GroupCommitWriter(write) if is_sqlite(engine) else TransactionWriter(write)
