"""The metadata store on SQLAlchemy Core, one module per aggregate (DESIGN.md section 5).

- :mod:`~javia_updates.backends.sql.engine`: engines, SQLite pragmas, error messages;
- :mod:`~javia_updates.backends.sql.writer`: the write path, chosen once per dialect;
- :mod:`~javia_updates.backends.sql.common`: tables, transactions, statements built once;
- :mod:`~javia_updates.backends.sql.batch`: many rows in one ``executemany``;
- :mod:`~javia_updates.backends.sql.devices`, :mod:`~javia_updates.backends.sql.enrollment`,
  :mod:`~javia_updates.backends.sql.updates`, :mod:`~javia_updates.backends.sql.progress`
  (``device_updates`` and transitions), :mod:`~javia_updates.backends.sql.audit`;
- :mod:`~javia_updates.backends.sql.store`: :class:`SQLStore`, combining them.
"""

from javia_updates.backends.sql.engine import SQLITE_BUSY_TIMEOUT_MS, make_engine
from javia_updates.backends.sql.store import SQLStore

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "SQLStore", "make_engine"]
