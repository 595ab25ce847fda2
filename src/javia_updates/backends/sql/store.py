"""The :class:`~javia_updates.backends.store.Store` on SQLAlchemy Core: the aggregates combined.

One implementation for SQLite (the ``local`` backend) and PostgreSQL
(``supabase``): only portable SQL, tables from
:mod:`javia_updates.backends.schema`. Every public method is one
transaction. What differs between the two databases is chosen once, when
the store is built: the connection set-up
(:mod:`~javia_updates.backends.sql.engine`) and the write path of the
shared writes (:mod:`~javia_updates.backends.sql.writer`: group commit on
SQLite, a transaction per write on PostgreSQL).
"""

from __future__ import annotations

from javia_updates.backends.sql.audit import AuditStore
from javia_updates.backends.sql.devices import DeviceStore
from javia_updates.backends.sql.enrollment import EnrollmentStore
from javia_updates.backends.sql.progress import ProgressStore
from javia_updates.backends.sql.rollouts import RolloutStore
from javia_updates.backends.sql.updates import UpdateStore
from javia_updates.backends.store import Store

__all__ = ["SQLStore"]


class SQLStore(DeviceStore, EnrollmentStore, UpdateStore, RolloutStore, ProgressStore, AuditStore):
    """The :class:`~javia_updates.backends.store.Store` on SQLAlchemy Core.

    Args:
        engine: from :func:`~javia_updates.backends.sql.engine.make_engine`;
            the schema must exist (run the migrations first,
            :func:`javia_updates.backends.migrations.upgrade`).
        schema: the schema holding the tables; None: the dialect's default
            (``javia`` on PostgreSQL, none on SQLite), as the migrations use.

    Each aggregate is one module of :mod:`javia_updates.backends.sql`
    (devices, enrollment, updates, rollouts, progress, audit), all on
    :class:`~javia_updates.backends.sql.common.SQLStoreBase`: a method call
    is a plain method call, with no layer between the caller and its SQL.
    """


# mypy checks the SQL store against the Store protocol here.
_CHECKED: type[Store] = SQLStore
