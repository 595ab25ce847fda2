"""The SQL store's former module name, kept for importers: see :mod:`javia_updates.backends.sql`."""

from javia_updates.backends.sql import SQLITE_BUSY_TIMEOUT_MS, SQLStore, make_engine

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "SQLStore", "make_engine"]
