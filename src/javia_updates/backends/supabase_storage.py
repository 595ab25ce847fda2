"""Package objects in a private Supabase Storage bucket (DESIGN.md section 5).

The blob store of the ``supabase`` backend: every server replica reads and
writes the same bucket over Supabase Storage's HTTP API (``/storage/v1``), so
no replica keeps package files of its own. Objects live at
``<bucket>/<key>/<name>``, e.g. ``javia-packages/v1.2.3/ab12cd34ef567890/payload.tar.gz``.

This module is the :class:`~javia_updates.backends.base.BlobStore` adapter:
which requests make up a bucket check, an upload, a ranged download, a
delete or a signed URL. Storage's endpoints, authentication and error
classes are :mod:`javia_updates.backends.supabase_storage_api` (the error
classes are re-exported here); streamed bodies are
:mod:`javia_updates.backends.supabase_storage_streams`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from pydantic import SecretStr

from javia_core.errors import BackendError
from javia_updates.backends.base import BlobStore
from javia_updates.backends.supabase_storage_api import (
    StorageApi,
    StorageObjectNotFoundError,
    SupabaseStorageError,
    SupabaseStorageRefusedError,
    SupabaseStorageTooLargeError,
    check_bucket_name,
    check_package_key,
    int_or_none,
    object_path,
    secret_key,
    storage_url_of,
)
from javia_updates.backends.supabase_storage_streams import ObjectStream, file_chunks

if TYPE_CHECKING:
    from javia_updates.settings import ServerSettings

__all__ = [
    "DEFAULT_BUCKET",
    "DEFAULT_SIGNED_URL_SECONDS",
    "StorageObjectNotFoundError",
    "SupabaseStorageBlobStore",
    "SupabaseStorageError",
    "SupabaseStorageRefusedError",
    "SupabaseStorageTooLargeError",
]

#: Bucket name used when the settings name none.
DEFAULT_BUCKET = "javia-packages"
#: Lifetime of a signed download URL, in seconds.
DEFAULT_SIGNED_URL_SECONDS = 300
#: Connect/pool waits are short; reads and writes of one chunk may take a while
#: on a slow link (seconds).
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)

_LIST_PAGE = 1000  # Storage's largest list page and delete batch
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


class SupabaseStorageBlobStore(BlobStore):
    """Package objects in one private Supabase Storage bucket, over httpx.

    Example::

        blobs = SupabaseStorageBlobStore(
            "https://abcdefghijklmnop.supabase.co",
            SecretStr(service_key),
            "javia-packages",
            upload_dir=Path("/var/lib/javia-server/uploads"),
        )
        blobs.prepare()  # creates the private bucket if missing
        blobs.put_file("v1.2.3/ab12cd34ef567890", "payload.tar.gz", Path("/tmp/upload.part"))

    Uploads stream from disk in 1 MiB chunks with a ``Content-Length``, and
    downloads stream in ``chunk_size`` pieces, so a package is never held in
    memory whole. Uploads use ``x-upsert: true``: storing an object again
    replaces it, which makes a retried publish harmless. Storage writes an
    object only once its upload completes, so an object is either absent or
    complete (the :class:`BlobStore` contract).

    Args:
        project_url: the project URL, ``https://<project-ref>.supabase.co``
            (a trailing ``/`` or ``/storage/v1`` is accepted).
        service_key: the project's secret or legacy service_role key.
        bucket: bucket name: lower-case letters, digits, ``.``, ``_``, ``-``.
        upload_dir: local directory that publish uploads are spooled into
            before they are sent to Storage.
        signed_urls: whether :meth:`download_url` hands out signed URLs, so
            devices download straight from Storage instead of through the server.
        signed_url_seconds: lifetime of a signed URL, in seconds (at least 1).
        client: an httpx client to use (tests, proxies); by default one with
            :data:`DEFAULT_TIMEOUT` that retries failed connection attempts twice.
        timeout: timeouts of the default client.

    Raises:
        BackendError: the project URL is not http(s), the bucket name is
            malformed, the key is empty, or ``signed_url_seconds`` < 1.
    """

    def __init__(
        self,
        project_url: str,
        service_key: SecretStr | str,
        bucket: str = DEFAULT_BUCKET,
        *,
        upload_dir: Path,
        signed_urls: bool = False,
        signed_url_seconds: int = DEFAULT_SIGNED_URL_SECONDS,
        client: httpx.Client | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        storage_url = storage_url_of(project_url)
        check_bucket_name(bucket)
        key = secret_key(service_key)
        if signed_url_seconds < 1:
            raise BackendError(
                f"signed URL lifetime {signed_url_seconds} s: expected at least 1 second"
            )
        self.storage_url = storage_url
        self.bucket = bucket
        self.signed_urls = signed_urls
        self.signed_url_seconds = signed_url_seconds
        self._upload_dir = Path(upload_dir)
        self._owns_client = client is None
        self._client = client or httpx.Client(
            timeout=timeout, transport=httpx.HTTPTransport(retries=2)
        )
        self._api = StorageApi(storage_url, bucket, key, self._client)

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> SupabaseStorageBlobStore:
        """Build the store from the server settings.

        Reads ``supabase_url``, ``supabase_service_key`` (a ``SecretStr``),
        ``supabase_bucket`` (default :data:`DEFAULT_BUCKET`),
        ``supabase_signed_urls`` (default False), ``supabase_signed_url_seconds``
        (default 300) and spools uploads under ``<data_dir>/uploads``.

        Raises:
            SettingsError: the URL or the key is not set; the message names the
                environment variables.
            BackendError: a value is malformed (see the class).
        """
        from javia_updates.settings import SettingsError

        url = getattr(settings, "supabase_url", None)
        key = getattr(settings, "supabase_service_key", None)
        secret = key.get_secret_value() if isinstance(key, SecretStr) else (key or "")
        if not url or not str(secret).strip():
            raise SettingsError(
                "the supabase backend needs supabase_url (JAVIA_SUPABASE_URL, "
                "https://<project-ref>.supabase.co) and supabase_service_key "
                "(JAVIA_SUPABASE_SERVICE_KEY, the project's secret or service_role key)"
            )
        return cls(
            str(url),
            key if isinstance(key, SecretStr) else SecretStr(str(secret)),
            getattr(settings, "supabase_bucket", None) or DEFAULT_BUCKET,
            upload_dir=Path(settings.data_dir) / "uploads",
            signed_urls=bool(getattr(settings, "supabase_signed_urls", False)),
            signed_url_seconds=int(
                getattr(settings, "supabase_signed_url_seconds", None) or DEFAULT_SIGNED_URL_SECONDS
            ),
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(storage_url={self.storage_url!r}, bucket={self.bucket!r})"

    # ------------------------------------------------------------------ bucket

    def prepare(self) -> None:
        """Create the upload directory, and the bucket (private) if it is missing.

        Safe to run on every start and from several replicas at once: a bucket
        created by another replica in between (``statusCode`` 409) is accepted.

        Raises:
            SupabaseStorageError: Storage is unreachable or refuses the key, or
                the bucket exists but is public (packages must not be
                downloadable without a key or a signed URL).
            BackendError: the upload directory cannot be created.
        """
        try:
            self._upload_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as error:
            raise BackendError(f"cannot create {self._upload_dir}: {error.strerror}") from None
        bucket = self._api.get_bucket()
        if bucket is None:
            try:
                self._api.send(
                    "POST",
                    self._api.url("bucket"),
                    action="create bucket",
                    target=self.bucket,
                    json={"id": self.bucket, "name": self.bucket, "public": False},
                )
            except SupabaseStorageError as error:
                if (error.storage_status or error.status_code) != 409:
                    raise
            bucket = self._api.get_bucket()
            if bucket is None:
                raise SupabaseStorageRefusedError(
                    f"Supabase Storage bucket {self.bucket!r} is still missing after creating it"
                )
        if bucket.get("public"):
            raise SupabaseStorageRefusedError(
                f"Supabase Storage bucket {self.bucket!r} is public: anyone could download "
                "packages without a key; make it private in the dashboard (Storage, bucket "
                "settings) or choose another supabase_bucket"
            )

    # ------------------------------------------------------------------ BlobStore

    def put_bytes(self, key: str, name: str, data: bytes) -> None:
        """Upload ``data`` as object ``name`` of package ``key``, replacing any earlier one.

        Raises:
            SupabaseStorageError: Storage refused the upload or is unreachable.
            BackendError: ``key`` or ``name`` is malformed (nothing is sent).
        """
        path = object_path(key, name)
        self._upload(path, data, len(data))

    def put_file(self, key: str, name: str, source: Path) -> None:
        """Stream the file ``source`` to Storage, then remove it (also when the upload fails).

        Raises:
            SupabaseStorageError: Storage refused the upload or is unreachable.
            BackendError: ``key`` or ``name`` is malformed, or ``source`` cannot
                be read or changed size while it was sent.
        """
        source = Path(source)
        try:
            path = object_path(key, name)
            try:
                with open(source, "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    self._upload(path, file_chunks(handle, size, source), size)
            except OSError as error:
                raise BackendError(f"cannot read {source}: {error.strerror}") from None
        finally:
            source.unlink(missing_ok=True)

    def _upload(self, path: str, content: bytes | Iterator[bytes], size: int) -> None:
        target = f"{self.bucket}/{path}"
        try:
            self._api.send(
                "POST",
                self._api.url("object", self.bucket, path),
                action="upload",
                target=target,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                    "x-upsert": "true",
                },
                content=content,
            ).close()
        except SupabaseStorageTooLargeError as error:
            raise self._too_large(error, target, size) from None

    def _too_large(
        self, error: SupabaseStorageTooLargeError, target: str, size: int
    ) -> SupabaseStorageTooLargeError:
        """Name the limit an upload of ``size`` bytes exceeded: the bucket's, or the project's.

        Storage's 413 does not say which limit; the bucket's ``file_size_limit``
        is read (best effort) and named when the object is over it.
        """
        try:
            bucket = self._api.get_bucket() or {}
        except SupabaseStorageError:
            bucket = {}
        limit = int_or_none(bucket.get("file_size_limit"))
        said = f" (Storage: {error.storage_message})" if error.storage_message else ""
        if limit is not None and size > limit:
            text = (
                f"Supabase Storage refused {target}: {size} bytes ({_mib(size)}) is over the "
                f"file size limit of bucket {self.bucket!r}, {limit} bytes ({_mib(limit)}){said}; "
                "raise the bucket's file size limit (dashboard: Storage, bucket settings) or "
                "publish a smaller package"
            )
        else:
            limit = None
            text = (
                f"Supabase Storage refused {target}: {size} bytes ({_mib(size)}) is over the "
                f"project's upload file size limit{said}; raise it (dashboard: Storage "
                "settings; FILE_SIZE_LIMIT on a self-hosted Storage) or publish a smaller package"
            )
        return SupabaseStorageTooLargeError(
            text,
            limit_bytes=limit,
            size_bytes=size,
            status_code=error.status_code,
            storage_status=error.storage_status,
            code=error.code,
            error=error.error,
            storage_message=error.storage_message,
        )

    def size(self, key: str, name: str) -> int:
        """The object's size in bytes, from Storage's object info.

        Raises:
            StorageObjectNotFoundError: no such object (a :class:`NotFoundError`).
            SupabaseStorageError: any other failure.
        """
        path = object_path(key, name)
        response = self._api.send(
            "GET",
            self._api.url("object", "info", "authenticated", self.bucket, path),
            action="read the size of",
            target=f"{self.bucket}/{path}",
        )
        size = int_or_none(response.json().get("size"))
        if size is None:
            raise SupabaseStorageRefusedError(
                f"Supabase Storage gave no size for {self.bucket}/{path}: expected a 'size' field"
            )
        return size

    def iter_range(
        self, key: str, name: str, start: int, end: int, *, chunk_size: int = 256 * 1024
    ) -> Iterator[bytes]:
        """Request bytes ``[start, end)`` now and return an iterator over them.

        Sends ``Range: bytes=start-(end-1)`` and expects 206 with a matching
        ``Content-Range``; should Storage (or a proxy) answer 200 with the
        whole object, the bytes before ``start`` are skipped, never passed on.
        The iterator yields exactly ``end - start`` bytes or raises.

        Raises:
            StorageObjectNotFoundError: no such object (raised by this call,
                before the first chunk).
            SupabaseStorageError: any other failure; from the iterator, when
                the download breaks off or Storage sends a different range.
            ValueError: ``start`` < 0 or ``end`` < ``start``.
        """
        if start < 0 or end < start:
            raise ValueError(f"byte range [{start}, {end}): expected 0 <= start <= end")
        path = object_path(key, name)
        target = f"{self.bucket}/{path}"
        if end == start:
            self.size(key, name)  # existence check only
            return iter(())
        response = self._api.send(
            "GET",
            self._api.url("object", "authenticated", self.bucket, path),
            action="download",
            target=target,
            stream=True,
            headers={"Range": f"bytes={start}-{end - 1}"},
        )
        skip = start
        if response.status_code == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if match is None or int(match.group(1)) != start:
                response.close()
                raise SupabaseStorageRefusedError(
                    f"Supabase Storage answered the range request for {target} with Content-Range "
                    f"{response.headers.get('content-range')!r}: "
                    f"expected bytes {start}-{end - 1}/…"
                )
            skip = 0
        return ObjectStream(
            response, skip=skip, length=end - start, chunk_size=chunk_size, target=target
        )

    def delete(self, key: str) -> None:
        """Delete every object of package ``key`` (nothing if it has none).

        Raises:
            SupabaseStorageError: Storage refused listing or deleting, or is unreachable.
            BackendError: ``key`` is malformed.
        """
        check_package_key(key)
        names: list[str] = []
        offset = 0
        while True:
            response = self._api.send(
                "POST",
                self._api.url("object", "list", self.bucket),
                action="list",
                target=f"{self.bucket}/{key}/",
                json={"prefix": key, "limit": _LIST_PAGE, "offset": offset},
            )
            page = response.json()
            if not isinstance(page, list):
                raise SupabaseStorageRefusedError(
                    f"Supabase Storage listed {self.bucket}/{key}/ as {type(page).__name__}: "
                    "expected a JSON array"
                )
            # Entries without an id are folders, not objects.
            names += [
                f"{key}/{entry['name']}"
                for entry in page
                if isinstance(entry, dict) and entry.get("id") and entry.get("name")
            ]
            if len(page) < _LIST_PAGE:
                break
            offset += len(page)
        for first in range(0, len(names), _LIST_PAGE):
            self._api.send(
                "DELETE",
                self._api.url("object", self.bucket),
                action="delete",
                target=f"{self.bucket}/{key}/",
                json={"prefixes": names[first : first + _LIST_PAGE]},
            )

    def upload_dir(self) -> Path:
        """The local directory publish uploads are spooled into before they go to Storage."""
        self._upload_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        return self._upload_dir

    # ------------------------------------------------------------------ signed URLs

    def signed_url(self, key: str, name: str, *, expires_in_seconds: int | None = None) -> str:
        """An absolute URL that downloads the object without a key until it expires.

        The URL honours ``Range`` like an authenticated download. Anyone holding
        it can download the object until then, so hand it only to a caller who
        may read the package (a targeted device).

        Args:
            key: the package key.
            name: the object name.
            expires_in_seconds: lifetime in seconds; default ``signed_url_seconds``.

        Raises:
            StorageObjectNotFoundError: no such object.
            SupabaseStorageError: any other failure.
            ValueError: ``expires_in_seconds`` < 1.
        """
        seconds = self.signed_url_seconds if expires_in_seconds is None else expires_in_seconds
        if seconds < 1:
            raise ValueError(f"signed URL lifetime {seconds} s: expected at least 1 second")
        path = object_path(key, name)
        response = self._api.send(
            "POST",
            self._api.url("object", "sign", self.bucket, path),
            action="sign a URL for",
            target=f"{self.bucket}/{path}",
            json={"expiresIn": seconds},
        )
        signed = response.json().get("signedURL") or response.json().get("signedUrl")
        if not isinstance(signed, str) or not signed:
            raise SupabaseStorageRefusedError(
                f"Supabase Storage returned no signedURL for {self.bucket}/{path}"
            )
        if signed.startswith(("https://", "http://")):
            return signed
        return f"{self.storage_url}/{signed.lstrip('/')}"

    def download_url(self, key: str, name: str) -> str | None:
        """Where a device should download the object: a signed URL, or None.

        None (the default, ``signed_urls`` off) means: stream it through the
        server with :meth:`iter_range`. With ``signed_urls`` on, the server can
        answer a download with a redirect to the returned URL, taking the
        transfer off the replicas; the device's HTTP client must follow it.

        Raises:
            StorageObjectNotFoundError: no such object (only with ``signed_urls``).
            SupabaseStorageError: signing failed (only with ``signed_urls``).
        """
        if not self.signed_urls:
            return None
        return self.signed_url(key, name)

    def close(self) -> None:
        """Close the HTTP client's connections (if this store created the client)."""
        if self._owns_client:
            self._client.close()
