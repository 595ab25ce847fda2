"""The ``supabase`` backend: Supabase's PostgreSQL plus Supabase Storage (DESIGN.md section 5).

Metadata lives in the project's PostgreSQL database, in the ``javia`` schema
(out of reach of Supabase's public data API, which serves ``public``), through
the same SQLAlchemy Core store as the ``local`` backend
(:class:`~javia_updates.backends.sql.SQLStore`). Packages live in a
private Storage bucket (:class:`~javia_updates.backends.supabase_storage.SupabaseStorageBlobStore`).
No server replica keeps state of its own, so any number of them can run
behind a load balancer (docs/backends.md).

Settings (environment ``JAVIA_*`` over the server's TOML file, like every
server setting):

==============================  =====================================================
``database_url``                the project's connection string; ``postgresql://``
                                and ``postgres://`` are read as psycopg 3
                                (``postgresql+psycopg://``)
``supabase_url``                ``https://<project-ref>.supabase.co``
``supabase_service_key``        the project's secret (``sb_secret_…``) or legacy
                                ``service_role`` key
``supabase_bucket``             bucket for packages (default ``javia-packages``)
``supabase_signed_urls``        hand devices signed Storage URLs (default false)
``supabase_signed_url_seconds`` lifetime of a signed URL in seconds (default 300)
==============================  =====================================================

:class:`SupabaseSettings` reads the Supabase values; values set on the
server's own settings object take precedence, so this module works whether or
not :class:`~javia_updates.settings.ServerSettings` declares them itself.

Several replicas may start at the same moment:
:func:`~javia_updates.backends.database.upgrade_serialized` runs the
migrations under a PostgreSQL advisory lock, so they take turns instead of
racing each other through ``CREATE TABLE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict
from sqlalchemy.engine import make_url

from javia_core.errors import BackendError
from javia_core.settings_sources import EnvOverTomlSettings
from javia_updates.backends.base import Backend, register_backend
from javia_updates.backends.database import normalize_database_url, upgrade_serialized
from javia_updates.backends.schema import POSTGRES_SCHEMA
from javia_updates.backends.sql import SQLStore, make_engine
from javia_updates.backends.sql.engine import redact_url
from javia_updates.backends.supabase_storage import (
    DEFAULT_BUCKET,
    DEFAULT_SIGNED_URL_SECONDS,
    SupabaseStorageBlobStore,
)
from javia_updates.settings import SettingsError, config_path

if TYPE_CHECKING:
    from javia_updates.settings import ServerSettings

__all__ = ["SupabaseBackend", "SupabaseSettings"]

_URL_EXAMPLE = (
    "postgresql://postgres.<project-ref>:PASSWORD@aws-0-<region>.pooler.supabase.com:5432/"
    "postgres?sslmode=require"
)


class SupabaseSettings(EnvOverTomlSettings):
    """The Supabase Storage settings of the ``supabase`` backend.

    Read like every server setting: keyword arguments over the environment
    (``JAVIA_SUPABASE_URL``, ``JAVIA_SUPABASE_SERVICE_KEY``, …) over the
    server's TOML file (``$JAVIA_CONFIG``, default ``~/.config/javia/server.toml``).

    Attributes:
        supabase_url: the project URL, ``https://<project-ref>.supabase.co``.
        supabase_service_key: the project's secret key (``sb_secret_…``) or its
            legacy ``service_role`` key; never the publishable/anon key.
        supabase_bucket: the private bucket holding packages.
        supabase_signed_urls: whether devices may download packages straight
            from Storage through signed URLs.
        supabase_signed_url_seconds: lifetime of a signed URL, in seconds.
    """

    model_config = SettingsConfigDict(env_prefix="JAVIA_", extra="ignore")

    supabase_url: str | None = None
    supabase_service_key: SecretStr | None = None
    supabase_bucket: str = DEFAULT_BUCKET
    supabase_signed_urls: bool = False
    supabase_signed_url_seconds: int = Field(
        default=DEFAULT_SIGNED_URL_SECONDS, ge=1, le=7 * 86_400
    )

    @classmethod
    def toml_config_path(cls) -> Path:
        """The server's settings file (:func:`~javia_updates.settings.config_path`)."""
        return config_path()

    @classmethod
    def for_server(cls, settings: ServerSettings | Any) -> SupabaseSettings:
        """The Supabase settings, taking any the server's settings object already holds.

        Raises:
            SettingsError: a value is malformed (e.g. a signed URL lifetime
                below 1 s); the message names the setting.
        """
        given = {
            name: getattr(settings, name)
            for name in cls.model_fields
            if getattr(settings, name, None) is not None
        }
        try:
            return cls(**given)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
                for item in error.errors()
            )
            raise SettingsError(f"invalid Supabase settings: {problems}") from None

    def blob_store(self, upload_dir: Path) -> SupabaseStorageBlobStore:
        """The Storage blob store these settings describe.

        Args:
            upload_dir: local directory for publish uploads in progress.

        Raises:
            SettingsError: the project URL or the key is missing.
            BackendError: a value is malformed (see
                :class:`~javia_updates.backends.supabase_storage.SupabaseStorageBlobStore`).
        """
        key = self.supabase_service_key
        if not self.supabase_url or key is None or not key.get_secret_value().strip():
            raise SettingsError(
                "the supabase backend needs supabase_url (JAVIA_SUPABASE_URL, "
                "https://<project-ref>.supabase.co) and supabase_service_key "
                "(JAVIA_SUPABASE_SERVICE_KEY, the project's secret or service_role key)"
            )
        return SupabaseStorageBlobStore(
            self.supabase_url,
            key,
            self.supabase_bucket,
            upload_dir=upload_dir,
            signed_urls=self.supabase_signed_urls,
            signed_url_seconds=self.supabase_signed_url_seconds,
        )


@register_backend
class SupabaseBackend(Backend):
    """Supabase's PostgreSQL (schema ``javia``) for metadata, Supabase Storage for packages.

    Example::

        settings = ServerSettings(
            backend="supabase",
            database_url="postgresql://postgres.<ref>:PASSWORD@<pooler host>:5432/postgres",
            supabase_url="https://<ref>.supabase.co",
            supabase_service_key="sb_secret_…",
        )
        backend = create_backend(settings)  # a SupabaseBackend
        backend.prepare()  # migrations (one replica at a time) + the private bucket

    Args:
        store: the SQL store on the project's database (schema ``javia``).
        blobs: the Storage blob store.
        database_url: the store's URL, for the migrations.
    """

    NAME = "supabase"

    def __init__(self, store: SQLStore, blobs: SupabaseStorageBlobStore, database_url: str) -> None:
        super().__init__(store, blobs)
        self.store: SQLStore = store
        self.blobs: SupabaseStorageBlobStore = blobs
        self.database_url = database_url

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> SupabaseBackend:
        """Open the project's database and Storage as the settings describe (no I/O yet).

        Raises:
            SettingsError: ``database_url``, ``supabase_url`` or
                ``supabase_service_key`` is missing, or a value is malformed.
            BackendError: the database URL is not PostgreSQL, cannot be parsed,
                or names a driver that is not installed.
        """
        if not settings.database_url:
            raise SettingsError(
                "the supabase backend needs database_url (JAVIA_DATABASE_URL): the project's "
                f"connection string from the dashboard's Connect button, e.g. {_URL_EXAMPLE}"
            )
        database_url = normalize_database_url(settings.database_url)
        if make_url(database_url).get_backend_name() != "postgresql":
            raise BackendError(
                f"the supabase backend keeps its metadata in Supabase's PostgreSQL, but "
                f"database_url is {redact_url(database_url)}: expected e.g. {_URL_EXAMPLE}"
            )
        supabase = SupabaseSettings.for_server(settings)
        blobs = supabase.blob_store(Path(settings.data_dir).expanduser() / "uploads")
        store = SQLStore(make_engine(database_url), schema=POSTGRES_SCHEMA)
        return cls(store, blobs, database_url)

    def prepare(self) -> None:
        """Migrate the database (one process at a time) and find or create the private bucket.

        Safe on every start of every replica.

        Raises:
            BackendError: the database cannot be reached or migrated.
            SupabaseStorageError: Storage is unreachable, refuses the key, or
                the bucket is public.
        """
        upgrade_serialized(self.database_url, schema=POSTGRES_SCHEMA)
        self.blobs.prepare()

    def close(self) -> None:
        """Close the database pool and the Storage client's connections."""
        try:
            self.store.close()
        finally:
            self.blobs.close()
