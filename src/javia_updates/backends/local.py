"""The ``local`` backend: SQLite in WAL mode plus package files (DESIGN.md section 5).

Zero set-up for one server: ``<data_dir>/javia.db`` and ``<data_dir>/packages``.
``database_url`` may point the same code at PostgreSQL (SQLAlchemy Core, see
:mod:`javia_updates.backends.sql`), with packages still on local disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from javia_updates.backends.base import Backend, register_backend
from javia_updates.backends.database import normalize_database_url, upgrade_serialized
from javia_updates.backends.files import FileBlobStore
from javia_updates.backends.sql import SQLStore, make_engine

if TYPE_CHECKING:
    from javia_updates.settings import ServerSettings

__all__ = ["LocalBackend"]


@register_backend
class LocalBackend(Backend):
    """SQLite (or any SQLAlchemy URL) for metadata, files under ``data_dir`` for packages.

    Example::

        backend = LocalBackend.from_settings(ServerSettings(data_dir=Path("/srv/javia")))
        backend.prepare()  # directories + migrations
    """

    NAME = "local"

    def __init__(self, store: SQLStore, blobs: FileBlobStore, database_url: str) -> None:
        super().__init__(store, blobs)
        self.store: SQLStore = store
        self.blobs: FileBlobStore = blobs
        self.database_url = database_url

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> LocalBackend:
        """Open the database named by the settings and the data directory's blob store.

        Raises:
            BackendError: the database URL is malformed or its driver missing.
        """
        url = normalize_database_url(settings.resolved_database_url())
        return cls(SQLStore(make_engine(url)), FileBlobStore(settings.data_dir), url)

    def prepare(self) -> None:
        """Create the data directories and run the database migrations (idempotent).

        On PostgreSQL the migrations take turns with other processes (server
        replicas starting together), see
        :func:`~javia_updates.backends.database.upgrade_serialized`.

        Raises:
            BackendError: a directory cannot be created or a migration fails.
        """
        self.blobs.prepare()
        upgrade_serialized(self.database_url)
