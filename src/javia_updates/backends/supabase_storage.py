"""Package objects in a private Supabase Storage bucket (DESIGN.md section 5).

The blob store of the ``supabase`` backend: every server replica reads and
writes the same bucket over Supabase Storage's HTTP API (``/storage/v1``), so
no replica keeps package files of its own. Objects live at
``<bucket>/<key>/<name>``, e.g. ``javia-packages/v1.2.3/ab12cd34ef567890/payload.tar.gz``.

Endpoints used (Supabase Storage API):

============================================================  ==========================================
``GET    /storage/v1/bucket/{bucket}``                         does the bucket exist, is it private
``POST   /storage/v1/bucket``                                  create it (``"public": false``)
``POST   /storage/v1/object/{bucket}/{path}``                  upload, raw body, ``x-upsert: true``
``GET    /storage/v1/object/authenticated/{bucket}/{path}``    download, honours ``Range`` (206)
``GET    /storage/v1/object/info/authenticated/{bucket}/{path}``  object size
``POST   /storage/v1/object/list/{bucket}``                    objects of one package (``prefix``)
``DELETE /storage/v1/object/{bucket}``                         delete, body ``{"prefixes": [...]}``
``POST   /storage/v1/object/sign/{bucket}/{path}``             signed download URL (``expiresIn`` s)
============================================================  ==========================================

Authentication: the project's *secret* key (``sb_secret_…``) or the legacy
``service_role`` key, both of which bypass row-level security. It is sent in
the ``apikey`` header; a legacy key, being a JWT, also as ``Authorization:
Bearer``, while a secret key must not be (Supabase refuses it there). The key
is held as a :class:`~pydantic.SecretStr` and never appears in messages.

Storage reports most errors with HTTP 400 (500 stays 500) and the real
status in a JSON body, ``{"statusCode": "413", "code": "EntityTooLarge",
"error": "Payload too large", "message": "The object exceeded the maximum
allowed size"}`` (older servers send no ``code``); its API gateway answers
401 with ``{"message": "Invalid API key"}`` (Supabase's platform) or
``{"message": "No API key found in request"}`` / ``{"message": "Invalid
authentication credentials"}`` (the self-hosted Kong gateway). Every error
becomes a :class:`SupabaseStorageError` carrying both statuses, the code and
Supabase's message, of the class that tells the server what to answer:

- 404 from Storage (not the gateway), except a missing bucket:
  :class:`StorageObjectNotFoundError` (API 404);
- 413 or ``EntityTooLarge``: :class:`SupabaseStorageTooLargeError` (API 413,
  naming the limit);
- any other 4xx but 408 and 429 (a refused key, a missing bucket, a bad
  request), or an answer that makes no sense: :class:`SupabaseStorageRefusedError`
  (API 502: retrying will not help);
- 5xx, 408, 429, or no answer at all (connection refused, timeout): the base
  :class:`SupabaseStorageError` (API 503: try again later).

The status is Storage's ``statusCode`` when the body has one, else the HTTP status.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from javia_core.errors import (
    BackendError,
    NotFoundError,
    StorageRefusedError,
    StorageTooLargeError,
)
from javia_updates.backends.base import BlobStore

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

_UPLOAD_CHUNK_BYTES = 1024 * 1024
_LIST_PAGE = 1000  # Storage's largest list page and delete batch
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_KEY_HINT = (
    "check supabase_service_key: it must be the project's secret key (sb_secret_…) or its "
    "legacy service_role key, not the publishable/anon key"
)


class SupabaseStorageError(BackendError):
    """Supabase Storage could not be reached, timed out, or failed (its 5xx): a 503.

    The subclasses are Storage's refusals (see the module's table).

    Attributes:
        status_code: HTTP status of the response (None: no response at all).
        storage_status: the ``statusCode`` of Storage's JSON error body, which
            carries the real status when the HTTP status is a generic 400
            (e.g. 404, 403, 409, 413); None when the body has none.
        code: the body's ``code`` (``NoSuchKey``, ``EntityTooLarge``, …;
            None from older servers and the gateway).
        error: the body's ``error`` field (``not_found``, ``Unauthorized``, …).
        storage_message: the body's ``message`` (or the first 200 characters
            of a body that is not JSON).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        storage_status: int | None = None,
        code: str | None = None,
        error: str | None = None,
        storage_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.storage_status = storage_status
        self.code = code
        self.error = error
        self.storage_message = storage_message


class SupabaseStorageRefusedError(SupabaseStorageError, StorageRefusedError):
    """Storage refused the request (a 4xx: key, bucket, request) or answered nonsense: a 502."""


class SupabaseStorageTooLargeError(SupabaseStorageRefusedError, StorageTooLargeError):
    """Storage refused an object over a file size limit (413 ``EntityTooLarge``): a 413.

    Attributes:
        limit_bytes: the bucket's ``file_size_limit`` in bytes when that is the
            limit the object exceeded; None when it is the project's global
            limit, which Storage's API does not tell.
        size_bytes: the refused object's size in bytes (None if unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        limit_bytes: int | None = None,
        size_bytes: int | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, **details)
        self.limit_bytes = limit_bytes
        self.size_bytes = size_bytes


class StorageObjectNotFoundError(SupabaseStorageError, NotFoundError):
    """The package object does not exist in the bucket (Storage's ``statusCode`` 404)."""


def _check_segment(value: str, what: str) -> str:
    if not _SEGMENT.fullmatch(value) or value in (".", ".."):
        raise BackendError(
            f"invalid blob {what} {value[:80]!r}: expected letters, digits, '.', '_' or '-'"
        )
    return value


def _is_jwt(key: str) -> bool:
    """Whether ``key`` is a JWT (legacy anon/service_role key): three base64url parts."""
    parts = key.split(".")
    return len(parts) == 3 and all(re.fullmatch(r"[A-Za-z0-9_-]+", part) for part in parts)


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


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
        base = project_url.strip().rstrip("/")
        base = base.removesuffix("/storage/v1")
        if not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", base):
            raise BackendError(
                f"invalid Supabase project URL {project_url[:80]!r}: expected "
                "https://<project-ref>.supabase.co"
            )
        if not _BUCKET.fullmatch(bucket):
            raise BackendError(
                f"invalid Supabase bucket name {bucket[:80]!r}: expected 2-63 lower-case letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
        key = service_key if isinstance(service_key, SecretStr) else SecretStr(service_key)
        if not key.get_secret_value().strip():
            raise BackendError(f"no Supabase service key: {_KEY_HINT}")
        if signed_url_seconds < 1:
            raise BackendError(
                f"signed URL lifetime {signed_url_seconds} s: expected at least 1 second"
            )
        self.storage_url = f"{base}/storage/v1"
        self.bucket = bucket
        self.signed_urls = signed_urls
        self.signed_url_seconds = signed_url_seconds
        self._key = key
        self._upload_dir = Path(upload_dir)
        self._owns_client = client is None
        self._client = client or httpx.Client(
            timeout=timeout, transport=httpx.HTTPTransport(retries=2)
        )

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

    # ------------------------------------------------------------------ HTTP

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        key = self._key.get_secret_value()
        headers = {"apikey": key}
        if _is_jwt(key):
            headers["Authorization"] = f"Bearer {key}"
        if extra:
            headers.update(extra)
        return headers

    def _object_path(self, key: str, name: str) -> str:
        parts = key.split("/")
        for part in parts:
            _check_segment(part, "key")
        _check_segment(name, "name")
        return "/".join([*parts, name])

    def _url(self, *segments: str) -> str:
        return "/".join([self.storage_url, *(quote(segment, safe="/") for segment in segments)])

    def _send(
        self,
        method: str,
        url: str,
        *,
        action: str,
        target: str,
        stream: bool = False,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send one request; raise :class:`SupabaseStorageError` unless it succeeded."""
        request = self._client.build_request(method, url, headers=self._headers(headers), **kwargs)
        try:
            response = self._client.send(request, stream=stream)
        except httpx.HTTPError as error:
            raise SupabaseStorageError(
                f"cannot {action} {target}: Supabase Storage at {self.storage_url} is "
                f"unreachable ({type(error).__name__}: {error})"
            ) from None
        if response.is_success:
            return response
        try:
            response.read()
        except httpx.HTTPError:
            pass
        finally:
            response.close()
        raise self._error(response, action, target)

    def _error(self, response: httpx.Response, action: str, target: str) -> SupabaseStorageError:
        """Turn an error response into the exception its status calls for (module table)."""
        storage_status = error = message = code = None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            storage_status = _int_or_none(body.get("statusCode"))
            error = body.get("error") if isinstance(body.get("error"), str) else None
            code = body.get("code") if isinstance(body.get("code"), str) else None
            text = body.get("message") or body.get("msg")
            message = str(text)[:300] if text is not None else None
        else:
            message = response.text.strip()[:200] or None
        status = storage_status or response.status_code
        described = f"HTTP {response.status_code}"
        if storage_status is not None and storage_status != response.status_code:
            described += f", statusCode {storage_status}"
        described += "".join(f" {name}" for name in dict.fromkeys((code, error)) if name)
        text = (
            f"Supabase Storage could not {action} {target}: {described}: {message or 'no message'}"
        )
        bucket_missing = code == "NoSuchBucket" or (error or "").lower() == "bucket not found"
        kind: type[SupabaseStorageError] = SupabaseStorageRefusedError
        if status == 404 and bucket_missing:
            text += (
                f"; bucket {self.bucket!r} does not exist: start the server once to create it, "
                "or create it (private) in the Supabase dashboard"
            )
        elif status == 404 and storage_status is not None:
            kind = StorageObjectNotFoundError
        elif status == 404:  # not Storage's answer, e.g. the gateway's "no Route matched"
            text += (
                f"; is Supabase Storage at {self.storage_url}? check supabase_url: "
                "https://<project-ref>.supabase.co"
            )
        elif status in (401, 403):
            text += f"; {_KEY_HINT}"
        elif status == 413 or code == "EntityTooLarge":
            kind = SupabaseStorageTooLargeError
        elif status >= 500 or status in (408, 429):
            kind = SupabaseStorageError  # Storage is down, busy or slow: try again later
        return kind(
            text,
            status_code=response.status_code,
            storage_status=storage_status,
            code=code,
            error=error,
            storage_message=message,
        )

    # ------------------------------------------------------------------ bucket

    def _get_bucket(self) -> dict[str, Any] | None:
        try:
            response = self._send(
                "GET", self._url("bucket", self.bucket), action="read bucket", target=self.bucket
            )
        except SupabaseStorageError as error:
            if (error.storage_status or error.status_code) == 404:
                return None
            raise
        body = response.json()
        return body if isinstance(body, dict) else {}

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
        bucket = self._get_bucket()
        if bucket is None:
            try:
                self._send(
                    "POST",
                    self._url("bucket"),
                    action="create bucket",
                    target=self.bucket,
                    json={"id": self.bucket, "name": self.bucket, "public": False},
                )
            except SupabaseStorageError as error:
                if (error.storage_status or error.status_code) != 409:
                    raise
            bucket = self._get_bucket()
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
        path = self._object_path(key, name)
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
            path = self._object_path(key, name)
            try:
                with open(source, "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    self._upload(path, _file_chunks(handle, size, source), size)
            except OSError as error:
                raise BackendError(f"cannot read {source}: {error.strerror}") from None
        finally:
            source.unlink(missing_ok=True)

    def _upload(self, path: str, content: bytes | Iterator[bytes], size: int) -> None:
        target = f"{self.bucket}/{path}"
        try:
            self._send(
                "POST",
                self._url("object", self.bucket, path),
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
            bucket = self._get_bucket() or {}
        except SupabaseStorageError:
            bucket = {}
        limit = _int_or_none(bucket.get("file_size_limit"))
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
        path = self._object_path(key, name)
        response = self._send(
            "GET",
            self._url("object", "info", "authenticated", self.bucket, path),
            action="read the size of",
            target=f"{self.bucket}/{path}",
        )
        size = _int_or_none(response.json().get("size"))
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
        path = self._object_path(key, name)
        target = f"{self.bucket}/{path}"
        if end == start:
            self.size(key, name)  # existence check only
            return iter(())
        response = self._send(
            "GET",
            self._url("object", "authenticated", self.bucket, path),
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
        return _ObjectStream(
            response, skip=skip, length=end - start, chunk_size=chunk_size, target=target
        )

    def delete(self, key: str) -> None:
        """Delete every object of package ``key`` (nothing if it has none).

        Raises:
            SupabaseStorageError: Storage refused listing or deleting, or is unreachable.
            BackendError: ``key`` is malformed.
        """
        for part in key.split("/"):
            _check_segment(part, "key")
        names: list[str] = []
        offset = 0
        while True:
            response = self._send(
                "POST",
                self._url("object", "list", self.bucket),
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
            self._send(
                "DELETE",
                self._url("object", self.bucket),
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
        path = self._object_path(key, name)
        response = self._send(
            "POST",
            self._url("object", "sign", self.bucket, path),
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


def _file_chunks(handle: BinaryIO, size: int, source: Path) -> Iterator[bytes]:
    """Exactly ``size`` bytes of ``handle`` in 1 MiB chunks.

    Raises:
        BackendError: the file is shorter or longer than ``size`` (it changed).
    """
    remaining = size
    while remaining > 0:
        chunk = handle.read(min(_UPLOAD_CHUNK_BYTES, remaining))
        if not chunk:
            raise BackendError(f"{source} shrank while it was uploaded: {remaining} bytes missing")
        remaining -= len(chunk)
        yield chunk
    if handle.read(1):
        raise BackendError(f"{source} grew while it was uploaded: expected {size} bytes")


class _ObjectStream(Iterator[bytes]):
    """Exactly ``length`` bytes of a streamed response, after dropping ``skip`` bytes.

    Closes the response when done, on error, on :meth:`close`, or when
    garbage-collected unfinished.
    """

    def __init__(
        self, response: httpx.Response, *, skip: int, length: int, chunk_size: int, target: str
    ) -> None:
        self._response = response
        self._chunks = response.iter_bytes(chunk_size)
        self._skip = skip
        self._length = length
        self._remaining = length
        self._target = target

    def __iter__(self) -> _ObjectStream:
        return self

    def __next__(self) -> bytes:
        while self._remaining > 0:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                received = self._length - self._remaining
                self.close()
                raise SupabaseStorageError(
                    f"download of {self._target} from Supabase Storage ended after "
                    f"{received} of {self._length} bytes"
                ) from None
            except httpx.HTTPError as error:
                received = self._length - self._remaining
                self.close()
                raise SupabaseStorageError(
                    f"download of {self._target} from Supabase Storage broke off after "
                    f"{received} of {self._length} bytes ({type(error).__name__}: {error})"
                ) from None
            if self._skip:
                dropped = min(self._skip, len(chunk))
                self._skip -= dropped
                chunk = chunk[dropped:]
            if not chunk:
                continue
            chunk = chunk[: self._remaining]
            self._remaining -= len(chunk)
            if self._remaining == 0:
                self.close()
            return chunk
        self.close()
        raise StopIteration

    def close(self) -> None:
        """Release the connection; the iterator yields nothing more."""
        self._remaining = 0
        self._response.close()

    def __del__(self) -> None:
        # Best effort, maybe at interpreter shutdown: any failure is ignored.
        with contextlib.suppress(Exception):
            self._response.close()
