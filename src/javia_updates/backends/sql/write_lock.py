"""SQLite's one writer at a time, across the threads and the processes of a server.

SQLite lets one connection write a database file at a time. A connection
that finds the file locked waits in SQLite's busy handler, which sleeps
between retries (up to 100 ms each) even when the lock is free again after
a millisecond, and gives up with "database is locked" after
``busy_timeout``. With several server processes on one file (``javia server
--workers N``) that is what their writers would meet under load: latency
spikes, and under a long queue an error.

:class:`SQLiteWriteLock` queues writers before they touch SQLite instead:
threads of one process on a :class:`threading.Lock`, processes on an
exclusive ``flock`` of ``<database>-writer.lock`` next to the database
file. A waiting writer wakes the moment the lock is released; a process
that dies releases its lock with it (the kernel closes its descriptor), so
a crashed worker never blocks the others. Readers are not involved (WAL:
readers never wait for the writer). An in-memory database has no file and
no other process: the thread lock alone.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType

from sqlalchemy import Engine

__all__ = ["SQLiteWriteLock", "sqlite_file"]


def sqlite_file(engine: Engine) -> Path | None:
    """The database file of a SQLite ``engine``; None for an in-memory database."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


class SQLiteWriteLock:
    """Held around every write transaction of a SQLite store (a context manager).

    Args:
        database: the database file (the lock file sits beside it), or None
            for an in-memory database (no file lock).

    The lock file is opened at the first write, in the process that writes
    (a server's worker processes each open their own).
    """

    def __init__(self, database: Path | None) -> None:
        self.path = None if database is None else database.with_name(database.name + "-writer.lock")
        self._threads = threading.Lock()
        self._descriptor: int | None = None
        self._pid = 0

    def _file(self) -> int | None:
        if self.path is None:
            return None
        if self._descriptor is None or self._pid != os.getpid():
            self._descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._descriptor

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            descriptor = self._file()
            if descriptor is not None:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._descriptor is not None and self._pid == os.getpid():
                fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        """Close the lock file (the store is closed)."""
        with self._threads:
            if self._descriptor is not None and self._pid == os.getpid():
                os.close(self._descriptor)
            self._descriptor = None
