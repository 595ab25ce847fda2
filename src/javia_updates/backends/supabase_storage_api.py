"""Supabase Storage's HTTP contract: requests, authentication and errors (DESIGN.md section 5).

The wire side of :class:`~javia_updates.backends.supabase_storage.SupabaseStorageBlobStore`:
:class:`StorageApi` builds URLs, authenticates and sends one request; an
error answer becomes the exception class its status calls for. Which
requests make up an upload, a ranged download or a delete is the blob
store's business; how bodies are streamed is
:mod:`javia_updates.backends.supabase_storage_streams`.

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

import re
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from javia_core.errors import (
    BackendError,
    NotFoundError,
    StorageRefusedError,
    StorageTooLargeError,
)

__all__ = [
    "KEY_HINT",
    "StorageApi",
    "StorageObjectNotFoundError",
    "SupabaseStorageError",
    "SupabaseStorageRefusedError",
    "SupabaseStorageTooLargeError",
    "check_bucket_name",
    "check_package_key",
    "int_or_none",
    "object_path",
    "secret_key",
    "storage_url_of",
]

#: What to check when Storage refuses the key (or none is set).
KEY_HINT = (
    "check supabase_service_key: it must be the project's secret key (sb_secret_…) or its "
    "legacy service_role key, not the publishable/anon key"
)
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")


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


def object_path(key: str, name: str) -> str:
    """The object's path inside the bucket, ``<key>/<name>``.

    Raises:
        BackendError: a segment of ``key`` or ``name`` is not letters, digits,
            ``.``, ``_`` or ``-`` (at most 128 characters, not ``.``/``..``).
    """
    check_package_key(key)
    _check_segment(name, "name")
    return f"{key}/{name}"


def check_package_key(key: str) -> None:
    """Refuse a malformed package key before anything is sent.

    Raises:
        BackendError: a segment of ``key`` is malformed (see :func:`object_path`).
    """
    for part in key.split("/"):
        _check_segment(part, "key")


def storage_url_of(project_url: str) -> str:
    """Storage's base URL, ``<project URL>/storage/v1``.

    Args:
        project_url: ``https://<project-ref>.supabase.co`` (a trailing ``/`` or
            ``/storage/v1`` is accepted).

    Raises:
        BackendError: the URL is not http(s).
    """
    base = project_url.strip().rstrip("/")
    base = base.removesuffix("/storage/v1")
    if not re.match(r"^https?://[^/\s]+(/[^\s]*)?$", base):
        raise BackendError(
            f"invalid Supabase project URL {project_url[:80]!r}: expected "
            "https://<project-ref>.supabase.co"
        )
    return f"{base}/storage/v1"


def check_bucket_name(bucket: str) -> str:
    """Return ``bucket`` if it is a valid bucket name.

    Raises:
        BackendError: not 2-63 lower-case letters, digits, ``.``, ``_`` or ``-``.
    """
    if not _BUCKET.fullmatch(bucket):
        raise BackendError(
            f"invalid Supabase bucket name {bucket[:80]!r}: expected 2-63 lower-case letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
        )
    return bucket


def secret_key(service_key: SecretStr | str) -> SecretStr:
    """The service key as a :class:`~pydantic.SecretStr`.

    Raises:
        BackendError: the key is empty.
    """
    key = service_key if isinstance(service_key, SecretStr) else SecretStr(service_key)
    if not key.get_secret_value().strip():
        raise BackendError(f"no Supabase service key: {KEY_HINT}")
    return key


def _is_jwt(key: str) -> bool:
    """Whether ``key`` is a JWT (legacy anon/service_role key): three base64url parts."""
    parts = key.split(".")
    return len(parts) == 3 and all(re.fullmatch(r"[A-Za-z0-9_-]+", part) for part in parts)


def int_or_none(value: Any) -> int | None:
    """An int from a JSON int or digit string (Storage sends both), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


class StorageApi:
    """One bucket of Supabase Storage over an httpx client: send a request, map its errors.

    Args:
        storage_url: Storage's base URL (see :func:`storage_url_of`).
        bucket: the bucket name (see :func:`check_bucket_name`).
        key: the project's secret or legacy service_role key.
        client: the httpx client that sends every request.
    """

    def __init__(self, storage_url: str, bucket: str, key: SecretStr, client: httpx.Client) -> None:
        self.storage_url = storage_url
        self.bucket = bucket
        self._key = key
        self._client = client

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        key = self._key.get_secret_value()
        headers = {"apikey": key}
        if _is_jwt(key):
            headers["Authorization"] = f"Bearer {key}"
        if extra:
            headers.update(extra)
        return headers

    def url(self, *segments: str) -> str:
        """``<storage_url>/<segments…>``, each segment percent-quoted (``/`` kept)."""
        return "/".join([self.storage_url, *(quote(segment, safe="/") for segment in segments)])

    def send(
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
        raise self.error(response, action, target)

    def error(self, response: httpx.Response, action: str, target: str) -> SupabaseStorageError:
        """Turn an error response into the exception its status calls for (module table)."""
        storage_status = error = message = code = None
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            storage_status = int_or_none(body.get("statusCode"))
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
            text += f"; {KEY_HINT}"
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

    def get_bucket(self) -> dict[str, Any] | None:
        """The bucket's settings (``public``, ``file_size_limit``, …), or None if it is missing."""
        try:
            response = self.send(
                "GET", self.url("bucket", self.bucket), action="read bucket", target=self.bucket
            )
        except SupabaseStorageError as error:
            if (error.storage_status or error.status_code) == 404:
                return None
            raise
        body = response.json()
        return body if isinstance(body, dict) else {}
