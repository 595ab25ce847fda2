"""The Supabase Storage blob store against Storage's documented HTTP contract.

Supabase Storage cannot run here, so :class:`StorageContract` plays it: a real
HTTP server on 127.0.0.1 (Starlette under uvicorn, in a thread) implementing
the endpoints the blob store uses the way Supabase's Storage API reference and
server describe them:

- ``POST /storage/v1/bucket`` (body ``{id, name, public}``) and
  ``GET /storage/v1/bucket/{id}``;
- ``POST /storage/v1/object/{bucket}/{path}``: raw body with a
  ``Content-Length``; an existing object is refused unless ``x-upsert: true``;
- ``GET /storage/v1/object/authenticated/{bucket}/{path}`` (and the older
  ``/object/{bucket}/{path}``): honours ``Range`` with 206 and ``Content-Range``;
- ``GET /storage/v1/object/info/authenticated/{bucket}/{path}``: JSON with ``size``;
- ``POST /storage/v1/object/list/{bucket}`` (``prefix``, ``limit``, ``offset``):
  the entries directly under that folder;
- ``DELETE /storage/v1/object/{bucket}`` (body ``{"prefixes": [...]}``);
- ``POST /storage/v1/object/sign/{bucket}/{path}`` (``expiresIn`` seconds):
  ``{"signedURL": "/object/sign/...?token=..."}``, and ``GET`` on that path
  with the token, no key needed, ``Range`` honoured.

Keys: the ``apikey`` header must carry the project's secret key, its legacy
``service_role`` JWT (then also as ``Authorization: Bearer``), or the anon key
(row-level security then refuses writes and hides objects).

Errors are answered the way supabase/storage renders them: HTTP 400 (500
stays 500) with the real status and the machine-readable code in the body,
``{"statusCode": "404", "code": "NoSuchKey", "error": "not_found", "message":
"Object not found"}``. Object keys outside Storage's allowed characters are
400 ``InvalidKey``. Uploads are limited like Storage's: the bucket's
``file_size_limit`` (bytes, set when it is created or in ``buckets``) and the
global limit (``file_size_limit``, Storage's ``FILE_SIZE_LIMIT``, 50 MiB by
default); an object over either is ``statusCode`` 413 ``EntityTooLarge``
(the body is read first, as the gateway buffers it). In front of Storage
stands the API gateway, answering with its own shape, ``{"message": ...}``
and no ``statusCode``: 401 ``No API key found in request``; for a wrong key
401 ``Invalid API key`` (``gateway="platform"``, Supabase's hosted platform)
or 401 ``Invalid authentication credentials`` (``gateway="kong"``, the
self-hosted Kong); 403 ``You cannot consume this service`` for a key Kong's
ACL shuts out (``denied_keys``). ``intercept`` lets a test answer a request
itself (an outage, a refusal Storage would give in situations javia cannot
provoke).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from javia_core.errors import (
    BackendError,
    NotFoundError,
    StorageRefusedError,
    StorageTooLargeError,
)
from javia_updates.backends.supabase_storage import (
    DEFAULT_BUCKET,
    StorageObjectNotFoundError,
    SupabaseStorageBlobStore,
    SupabaseStorageError,
    SupabaseStorageRefusedError,
    SupabaseStorageTooLargeError,
)
from javia_updates.settings import SettingsError

BUCKET = "javia-packages"
KEY = "v1.2.3/ab12cd34ef567890"
MIB = 1024 * 1024


def _jwt_like(role: str) -> str:
    """A legacy-style key: three base64url parts, like Supabase's anon/service_role JWTs."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(b'{"alg":"HS256","typ":"JWT"}')
    payload = part(json.dumps({"role": role, "iss": "supabase"}).encode())
    return f"{header}.{payload}.{part(secrets.token_bytes(32))}"


SECRET_KEY = "sb_secret_" + secrets.token_urlsafe(24)
LEGACY_SERVICE_KEY = _jwt_like("service_role")
ANON_KEY = _jwt_like("anon")


#: Storage's default global upload limit (``FILE_SIZE_LIMIT``), bytes.
DEFAULT_FILE_SIZE_LIMIT = 50 * MIB
#: The characters Storage allows in an object key (supabase/storage ``isValidKey``).
_VALID_KEY = re.compile(r"^[\w/!\-.*'() &$@=;:+,?]*$")


def storage_error(status: int, code: str, message: str, error: str | None = None) -> JSONResponse:
    """Storage's error shape: HTTP 400 (500 stays 500); status and code in the body.

    ``error`` is the older, human name some codes keep (``not_found``,
    ``Payload too large``, ``Duplicate``); otherwise the code itself.
    """
    http_status = 500 if status == 500 else 400
    body = {"statusCode": str(status), "code": code, "error": error or code, "message": message}
    return JSONResponse(body, status_code=http_status)


def gateway_error(status: int, message: str) -> JSONResponse:
    """The API gateway's own shape: ``{"message": ...}``, the status as is."""
    return JSONResponse({"message": message}, status_code=status)


def _no_bucket() -> JSONResponse:
    return storage_error(404, "NoSuchBucket", "Bucket not found", "Bucket not found")


def _no_object() -> JSONResponse:
    return storage_error(404, "NoSuchKey", "Object not found", "not_found")


def _denied(message: str) -> JSONResponse:
    return storage_error(403, "AccessDenied", message, "Unauthorized")


def _duplicate() -> JSONResponse:
    return storage_error(409, "ResourceAlreadyExists", "The resource already exists", "Duplicate")


def _pattern(byte_range: str) -> tuple[int, int | None] | None:
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", byte_range.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)) if match.group(2) else None


@dataclass
class Seen:
    """One request as the contract server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


@dataclass
class StorageContract:
    """An in-process HTTP server speaking Supabase Storage's API; objects in ``root``."""

    root: Path
    service_key: str = SECRET_KEY
    anon_key: str = ANON_KEY
    gateway: str = "platform"  # or "kong": the self-hosted gateway's messages
    denied_keys: set[str] = field(default_factory=set)
    file_size_limit: int = DEFAULT_FILE_SIZE_LIMIT
    ignore_range: bool = False
    clock: Callable[[], float] = time.time
    after_get_bucket: Callable[[str], None] | None = None
    intercept: Callable[[str, str], Response | None] | None = None
    buckets: dict[str, dict[str, Any]] = field(default_factory=dict)
    objects: dict[tuple[str, str], Path] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    _signing_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    port: int = 0

    # -------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = uvicorn.Config(
            self.app(),
            host="127.0.0.1",
            port=0,
            log_level="error",
            lifespan="off",
            access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the contract server did not start")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def reset(self) -> None:
        """Forget every bucket, object and request; back to the default keys and behaviour."""
        for stored in self.objects.values():
            stored.unlink(missing_ok=True)
        self.buckets.clear()
        self.objects.clear()
        self.seen.clear()
        self.service_key, self.anon_key = SECRET_KEY, ANON_KEY
        self.gateway = "platform"
        self.denied_keys = set()
        self.file_size_limit = DEFAULT_FILE_SIZE_LIMIT
        self.ignore_range = False
        self.clock = time.time
        self.after_get_bucket = None
        self.intercept = None

    def bucket_objects(self, bucket: str) -> dict[str, bytes]:
        """Every object of ``bucket``: path → content."""
        return {
            path: stored.read_bytes()
            for (name, path), stored in sorted(self.objects.items())
            if name == bucket
        }

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    def requests_to(self, method: str, fragment: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and fragment in s.path]

    # -------------------------------------------------------------- protocol
    def app(self) -> Callable[..., Any]:
        prefix = "/storage/v1"
        routes = [
            Route(f"{prefix}/bucket", self.create_bucket, methods=["POST"]),
            Route(f"{prefix}/bucket/{{bucket_id}}", self.get_bucket, methods=["GET"]),
            Route(f"{prefix}/object/list/{{bucket}}", self.list_objects, methods=["POST"]),
            Route(
                f"{prefix}/object/sign/{{bucket}}/{{path:path}}", self.sign_url, methods=["POST"]
            ),
            Route(
                f"{prefix}/object/sign/{{bucket}}/{{path:path}}",
                self.get_signed_object,
                methods=["GET"],
            ),
            Route(
                f"{prefix}/object/info/authenticated/{{bucket}}/{{path:path}}",
                self.object_info,
                methods=["GET"],
            ),
            Route(
                f"{prefix}/object/authenticated/{{bucket}}/{{path:path}}",
                self.get_object,
                methods=["GET"],
            ),
            Route(f"{prefix}/object/{{bucket}}/{{path:path}}", self.upload, methods=["POST"]),
            Route(f"{prefix}/object/{{bucket}}/{{path:path}}", self.get_object, methods=["GET"]),
            Route(f"{prefix}/object/{{bucket}}", self.delete_objects, methods=["DELETE"]),
        ]
        inner = Starlette(routes=routes)

        async def recording_app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            entry = Seen(scope["method"], scope["path"], headers)
            self.seen.append(entry)

            async def send_recording_status(message: Any) -> None:
                if message["type"] == "http.response.start":
                    entry.status = message["status"]
                await send(message)

            answer = self.intercept(scope["method"], scope["path"]) if self.intercept else None
            if answer is not None:
                while (await receive()).get("more_body"):
                    pass  # read the request body, as the gateway does, then answer
                await answer(scope, receive, send_recording_status)
                return
            await inner(scope, receive, send_recording_status)

        return recording_app

    def _role(self, request: Request) -> str | Response:
        """The caller's role from ``apikey`` (+ ``Authorization`` for JWT keys), or an error."""
        apikey = request.headers.get("apikey")
        authorization = request.headers.get("authorization")
        if not apikey:
            return gateway_error(401, "No API key found in request")
        if apikey not in (self.service_key, self.anon_key):
            if self.gateway == "kong":
                return gateway_error(401, "Invalid authentication credentials")
            return gateway_error(401, "Invalid API key")
        if apikey in self.denied_keys:
            return gateway_error(403, "You cannot consume this service")
        role = "service_role" if apikey == self.service_key else "anon"
        if apikey.startswith("sb_"):
            if authorization is not None:  # a secret key is not a JWT
                return storage_error(400, "InvalidJWT", "Invalid Compact JWS")
        elif authorization != f"Bearer {apikey}":
            return storage_error(400, "InvalidJWT", "invalid signature")
        return role

    async def create_bucket(self, request: Request) -> Response:
        role = self._role(request)
        if isinstance(role, Response):
            return role
        body = await request.json()
        bucket_id = body.get("id") or body["name"]
        if role != "service_role":
            return _denied("new row violates row-level security policy")
        if bucket_id in self.buckets:
            return storage_error(
                409, "BucketAlreadyExists", "The resource already exists", "Duplicate"
            )
        self.buckets[bucket_id] = {
            "id": bucket_id,
            "name": body["name"],
            "public": bool(body.get("public", False)),
            "file_size_limit": body.get("file_size_limit"),
            "allowed_mime_types": body.get("allowed_mime_types"),
        }
        return JSONResponse({"name": body["name"]})

    async def get_bucket(self, request: Request) -> Response:
        role = self._role(request)
        if isinstance(role, Response):
            return role
        bucket_id = request.path_params["bucket_id"]
        if bucket_id not in self.buckets or role != "service_role":
            response: Response = _no_bucket()
        else:
            response = JSONResponse(
                {"file_size_limit": None, "allowed_mime_types": None, **self.buckets[bucket_id]}
            )
        if self.after_get_bucket is not None:
            self.after_get_bucket(bucket_id)
        return response

    def _find(self, request: Request, role: str) -> tuple[str, str, Path] | Response:
        bucket, path = request.path_params["bucket"], request.path_params["path"]
        if bucket not in self.buckets:
            return _no_bucket()
        if not _VALID_KEY.fullmatch(path):
            return storage_error(400, "InvalidKey", f"Invalid key: {path}")
        stored = self.objects.get((bucket, path))
        # Row-level security hides private objects from the anon role.
        if stored is None or (role != "service_role" and not self.buckets[bucket]["public"]):
            return _no_object()
        return bucket, path, stored

    async def upload(self, request: Request) -> Response:
        role = self._role(request)
        if isinstance(role, Response):
            return role
        bucket, path = request.path_params["bucket"], request.path_params["path"]
        if bucket not in self.buckets:
            return _no_bucket()
        if not _VALID_KEY.fullmatch(path):
            return storage_error(400, "InvalidKey", f"Invalid key: {path}")
        if role != "service_role":
            return _denied("new row violates row-level security policy")
        length = request.headers.get("content-length")
        if length is None:
            return storage_error(
                400, "MissingContentLength", "You must provide the Content-Length HTTP header."
            )
        exists = (bucket, path) in self.objects
        if exists and request.headers.get("x-upsert") != "true":
            return storage_error(
                409, "KeyAlreadyExists", "The resource already exists", "Duplicate"
            )
        limits = [self.file_size_limit, self.buckets[bucket].get("file_size_limit")]
        limit = min(int(value) for value in limits if value is not None)
        temp = self.root / f"upload-{uuid.uuid4().hex}"
        received = 0
        with open(temp, "wb") as handle:  # noqa: ASYNC230 - a test server on local disk
            async for chunk in request.stream():
                received += len(chunk)
                if received <= limit:
                    handle.write(chunk)
        if received > limit:  # the object never appears
            temp.unlink()
            return storage_error(
                413,
                "EntityTooLarge",
                "The object exceeded the maximum allowed size",
                "Payload too large",
            )
        if received != int(length):
            temp.unlink()
            return storage_error(400, "InvalidRequest", "body length differs from Content-Length")
        target = self.root / hashlib.sha256(f"{bucket}/{path}".encode()).hexdigest()
        os.replace(temp, target)  # an object appears only once complete
        self.objects[(bucket, path)] = target
        return JSONResponse({"Key": f"{bucket}/{path}", "Id": str(uuid.uuid4())})

    def _render(self, request: Request, stored: Path) -> Response:
        size = stored.stat().st_size
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "ETag": '"e"',
        }
        byte_range = request.headers.get("range")
        first, last, status = 0, size - 1, 200
        if byte_range and not self.ignore_range:
            parsed = _pattern(byte_range)
            if parsed is None or parsed[0] >= size:
                return storage_error(400, "InvalidRange", "invalid range provided", "invalid_range")
            first = parsed[0]
            last = min(parsed[1] if parsed[1] is not None else size - 1, size - 1)
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(last - first + 1)

        def body() -> Iterator[bytes]:  # Starlette iterates it in a worker thread
            with open(stored, "rb") as handle:
                handle.seek(first)
                remaining = last - first + 1
                while remaining > 0:
                    chunk = handle.read(min(64 * 1024, remaining))
                    if not chunk:
                        return
                    remaining -= len(chunk)
                    yield chunk

        return StreamingResponse(body(), status_code=status, headers=headers)

    async def get_object(self, request: Request) -> Response:
        role = self._role(request)
        if isinstance(role, Response):
            return role
        found = self._find(request, role)
        if isinstance(found, Response):
            return found
        return self._render(request, found[2])

    async def object_info(self, request: Request) -> Response:
        role = self._role(request)
        if isinstance(role, Response):
            return role
        found = self._find(request, role)
        if isinstance(found, Response):
            return found
        bucket, path, stored = found
        return JSONResponse(
            {"name": path, "bucket_id": bucket, "size": stored.stat().st_size, "version": "1"}
        )

    async def list_objects(self, request: Request) -> Response:
        role = self._role(request)
        if isinstance(role, Response):
            return role
        bucket = request.path_params["bucket"]
        if bucket not in self.buckets:
            return _no_bucket()
        body = await request.json()
        folder = body["prefix"].strip("/")
        limit, offset = int(body.get("limit", 100)), int(body.get("offset", 0))
        entries: dict[str, dict[str, Any]] = {}
        for (stored_bucket, path), stored in sorted(self.objects.items()):
            if stored_bucket != bucket or not path.startswith(f"{folder}/"):
                continue
            rest = path[len(folder) + 1 :]
            name, _, deeper = rest.partition("/")
            if deeper:  # a sub-folder: listed with id null, like Storage does
                entries.setdefault(name, {"name": name, "id": None, "metadata": None})
            else:
                entries[name] = {
                    "name": name,
                    "id": str(uuid.uuid4()),
                    "metadata": {"size": stored.stat().st_size},
                }
        return JSONResponse(list(entries.values())[offset : offset + limit])

    async def delete_objects(self, request: Request) -> Response:
        role = self._role(request)
        if isinstance(role, Response):
            return role
        bucket = request.path_params["bucket"]
        if bucket not in self.buckets:
            return _no_bucket()
        if role != "service_role":
            return JSONResponse([])  # row-level security: nothing the anon role may delete
        body = await request.json()
        deleted = []
        for name in body["prefixes"]:
            stored = self.objects.pop((bucket, name), None)
            if stored is not None:
                stored.unlink()
                deleted.append({"name": name, "bucket_id": bucket})
        return JSONResponse(deleted)

    def _token(self, bucket: str, path: str, expires_at: int) -> str:
        message = f"{bucket}/{path}:{expires_at}".encode()
        return f"{expires_at}.{hmac.new(self._signing_secret, message, 'sha256').hexdigest()}"

    async def sign_url(self, request: Request) -> Response:
        role = self._role(request)
        if isinstance(role, Response):
            return role
        found = self._find(request, role)
        if isinstance(found, Response):
            return found
        bucket, path, _ = found
        expires_in = (await request.json())["expiresIn"]
        token = self._token(bucket, path, int(self.clock()) + int(expires_in))
        return JSONResponse({"signedURL": f"/object/sign/{bucket}/{path}?token={token}"})

    async def get_signed_object(self, request: Request) -> Response:
        bucket, path = request.path_params["bucket"], request.path_params["path"]
        token = request.query_params.get("token", "")
        expires_at = token.partition(".")[0]
        if not expires_at.isdigit() or not hmac.compare_digest(
            token, self._token(bucket, path, int(expires_at))
        ):
            return storage_error(400, "InvalidSignature", "The url do not match the signature")
        if int(expires_at) < self.clock():
            return storage_error(400, "InvalidJWT", "jwt expired")
        stored = self.objects.get((bucket, path))
        if stored is None:
            return _no_object()
        return self._render(request, stored)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def storage_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageContract]:
    contract = StorageContract(tmp_path_factory.mktemp("storage"))
    contract.start()
    try:
        yield contract
    finally:
        contract.stop()


@pytest.fixture
def storage(storage_server: StorageContract) -> StorageContract:
    """The contract server, emptied: no buckets, no objects, default keys and behaviour."""
    storage_server.reset()
    return storage_server


def _store(
    storage: StorageContract, tmp_path: Path, key: str = SECRET_KEY, **options: Any
) -> SupabaseStorageBlobStore:
    return SupabaseStorageBlobStore(
        storage.url, SecretStr(key), BUCKET, upload_dir=tmp_path / "uploads", **options
    )


@pytest.fixture
def blobs(storage: StorageContract, tmp_path: Path) -> Iterator[SupabaseStorageBlobStore]:
    store = _store(storage, tmp_path)
    store.prepare()
    try:
        yield store
    finally:
        store.close()


def _payload(path: Path, size: int) -> bytes:
    """``size`` bytes that differ at every offset (a shifted range cannot match)."""
    block = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(size // 32 + 1))
    data = block[:size]
    path.write_bytes(data)
    return data


# ------------------------------------------------------------------ tests


def test_round_trip_of_a_multi_megabyte_package(
    blobs: SupabaseStorageBlobStore, storage: StorageContract, tmp_path: Path
) -> None:
    source = blobs.upload_dir() / "payload.part"
    data = _payload(source, 12 * MIB + 123)
    blobs.put_bytes(KEY, "manifest.json", b'{"format":1}')
    blobs.put_file(KEY, "payload.tar.gz", source)

    assert not source.exists()  # consumed, as the BlobStore contract says
    assert blobs.size(KEY, "payload.tar.gz") == len(data)
    downloaded = b"".join(blobs.iter_range(KEY, "payload.tar.gz", 0, len(data)))
    assert hashlib.sha256(downloaded).digest() == hashlib.sha256(data).digest()
    assert b"".join(blobs.iter_range(KEY, "manifest.json", 0, 12)) == b'{"format":1}'
    upload = storage.requests_to("POST", f"/object/{BUCKET}/{KEY}/payload.tar.gz")[0]
    assert upload.headers["content-length"] == str(len(data))
    assert upload.headers["x-upsert"] == "true"
    assert upload.status == 200


def test_neither_upload_nor_download_holds_the_package_in_memory(
    blobs: SupabaseStorageBlobStore, tmp_path: Path
) -> None:
    source = blobs.upload_dir() / "payload.part"
    size = 24 * MIB
    _payload(source, size)
    tracemalloc.start()
    try:
        blobs.put_file(KEY, "payload.tar.gz", source)
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        for chunk in blobs.iter_range(KEY, "payload.tar.gz", 0, size):
            digest.update(chunk)
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Both peaks include the contract server, which runs in this process too.
    assert upload_peak < 6 * MIB, upload_peak
    assert download_peak < 6 * MIB, download_peak


def test_range_download_asks_for_the_range_and_gets_206(
    blobs: SupabaseStorageBlobStore, storage: StorageContract
) -> None:
    source = blobs.upload_dir() / "payload.part"
    data = _payload(source, 3 * MIB)
    blobs.put_file(KEY, "payload.tar.gz", source)
    storage.seen.clear()

    part = b"".join(blobs.iter_range(KEY, "payload.tar.gz", MIB + 7, 2 * MIB + 11))

    assert part == data[MIB + 7 : 2 * MIB + 11]
    (request,) = storage.requests_to("GET", f"/object/authenticated/{BUCKET}/{KEY}/payload.tar.gz")
    assert request.headers["range"] == f"bytes={MIB + 7}-{2 * MIB + 10}"
    assert request.status == 206


def test_a_server_that_ignores_range_still_yields_exactly_the_requested_bytes(
    blobs: SupabaseStorageBlobStore, storage: StorageContract
) -> None:
    source = blobs.upload_dir() / "payload.part"
    data = _payload(source, 2 * MIB)
    blobs.put_file(KEY, "payload.tar.gz", source)
    storage.ignore_range = True  # e.g. a proxy that strips Range: 200 + the whole object

    part = b"".join(blobs.iter_range(KEY, "payload.tar.gz", 1000, MIB + 5, chunk_size=4096))

    assert part == data[1000 : MIB + 5]
    assert storage.requests_to("GET", "/object/authenticated/")[-1].status == 200


def test_missing_object_is_not_found_with_supabase_status_and_message(
    blobs: SupabaseStorageBlobStore,
) -> None:
    with pytest.raises(NotFoundError) as raised:
        blobs.iter_range(KEY, "payload.tar.gz", 0, 10)  # before any chunk is consumed
    error = raised.value
    assert isinstance(error, StorageObjectNotFoundError)
    assert (error.status_code, error.storage_status, error.code) == (400, 404, "NoSuchKey")
    assert error.storage_message == "Object not found"
    assert f"{BUCKET}/{KEY}/payload.tar.gz" in str(error)
    with pytest.raises(StorageObjectNotFoundError):
        blobs.size(KEY, "payload.tar.gz")
    with pytest.raises(StorageObjectNotFoundError):
        blobs.signed_url(KEY, "payload.tar.gz")


def test_anon_key_instead_of_service_key_is_refused_with_supabase_message(
    storage: StorageContract, tmp_path: Path
) -> None:
    storage.buckets[BUCKET] = {"id": BUCKET, "name": BUCKET, "public": False}
    store = _store(storage, tmp_path, key=ANON_KEY)

    with pytest.raises(BackendError) as raised:
        store.put_bytes(KEY, "manifest.json", b"{}")

    error = raised.value
    assert isinstance(error, SupabaseStorageRefusedError) and not isinstance(error, NotFoundError)
    assert (error.status_code, error.storage_status, error.code) == (400, 403, "AccessDenied")
    assert "row-level security" in str(error)
    assert "service_role" in str(error)  # says which key to use
    assert ANON_KEY not in str(error)


@pytest.mark.parametrize(
    ("gateway", "message"),
    [("platform", "Invalid API key"), ("kong", "Invalid authentication credentials")],
)
def test_invalid_key_is_refused_by_the_gateway(
    storage: StorageContract, tmp_path: Path, gateway: str, message: str
) -> None:
    storage.gateway = gateway
    wrong = "sb_secret_" + secrets.token_urlsafe(24)
    store = _store(storage, tmp_path, key=wrong)

    with pytest.raises(SupabaseStorageError) as raised:
        store.prepare()

    assert isinstance(raised.value, SupabaseStorageRefusedError)  # not "retry later"
    assert raised.value.status_code == 401
    assert raised.value.storage_message == message
    assert "supabase_service_key" in str(raised.value)
    assert wrong not in str(raised.value) and wrong not in repr(store)
    assert storage.buckets == {}


@pytest.mark.parametrize(
    ("key", "sends_bearer"),
    [(SECRET_KEY, False), (LEGACY_SERVICE_KEY, True)],
    ids=["secret", "legacy"],
)
def test_secret_keys_go_in_apikey_only_legacy_jwt_keys_also_as_bearer(
    storage: StorageContract, tmp_path: Path, key: str, sends_bearer: bool
) -> None:
    storage.service_key = key
    store = _store(storage, tmp_path, key=key)
    store.prepare()
    store.put_bytes(KEY, "manifest.sig", b"signature")

    assert b"".join(store.iter_range(KEY, "manifest.sig", 0, 9)) == b"signature"
    for request in storage.seen:
        assert request.headers["apikey"] == key
        assert request.headers.get("authorization") == (f"Bearer {key}" if sends_bearer else None)


def test_prepare_creates_the_bucket_private_once(storage: StorageContract, tmp_path: Path) -> None:
    store = _store(storage, tmp_path)

    store.prepare()
    store.prepare()

    assert storage.buckets[BUCKET]["public"] is False
    assert len(storage.requests_to("POST", "/storage/v1/bucket")) == 1
    assert (tmp_path / "uploads").is_dir()


def test_prepare_accepts_a_bucket_another_replica_just_created(
    storage: StorageContract, tmp_path: Path
) -> None:
    def other_replica_creates_it(bucket_id: str) -> None:
        # Right after our lookup missed it, before our create request.
        storage.buckets.setdefault(bucket_id, {"id": bucket_id, "name": bucket_id, "public": False})
        storage.after_get_bucket = None

    storage.after_get_bucket = other_replica_creates_it
    _store(storage, tmp_path).prepare()

    create = storage.requests_to("POST", "/storage/v1/bucket")
    assert len(create) == 1 and create[0].status == 400  # statusCode 409 Duplicate, accepted
    assert storage.buckets[BUCKET]["public"] is False


def test_prepare_refuses_a_public_bucket(storage: StorageContract, tmp_path: Path) -> None:
    storage.buckets[BUCKET] = {"id": BUCKET, "name": BUCKET, "public": True}

    with pytest.raises(SupabaseStorageError, match="is public.*make it private"):
        _store(storage, tmp_path).prepare()


def test_a_missing_bucket_is_a_storage_error_not_a_missing_package(
    storage: StorageContract, tmp_path: Path
) -> None:
    store = _store(storage, tmp_path)  # prepare() never ran

    with pytest.raises(SupabaseStorageError) as raised:
        store.iter_range(KEY, "payload.tar.gz", 0, 1)

    assert not isinstance(raised.value, NotFoundError)
    assert f"bucket {BUCKET!r} does not exist" in str(raised.value)


def test_signed_url_downloads_without_a_key_honours_range_and_expires(
    blobs: SupabaseStorageBlobStore, storage: StorageContract
) -> None:
    now = [1_900_000_000.0]
    storage.clock = lambda: now[0]
    source = blobs.upload_dir() / "payload.part"
    data = _payload(source, MIB)
    blobs.put_file(KEY, "payload.tar.gz", source)

    url = blobs.signed_url(KEY, "payload.tar.gz", expires_in_seconds=60)

    assert url.startswith(
        f"{storage.url}/storage/v1/object/sign/{BUCKET}/{KEY}/payload.tar.gz?token="
    )
    with httpx.Client() as client:  # a device: no apikey, no Authorization
        whole = client.get(url)
        part = client.get(url, headers={"Range": "bytes=100-199"})
        tampered = client.get(url.replace("payload.tar.gz", "manifest.json"))
        now[0] += 61
        expired = client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert part.status_code == 206 and part.content == data[100:200]
    assert tampered.status_code == 400
    assert expired.status_code == 400 and expired.json()["message"] == "jwt expired"


def test_download_url_is_a_signed_url_only_when_enabled(
    storage: StorageContract, tmp_path: Path
) -> None:
    plain = _store(storage, tmp_path)
    plain.prepare()
    plain.put_bytes(KEY, "payload.tar.gz", b"x" * 10)
    redirecting = _store(storage, tmp_path, signed_urls=True, signed_url_seconds=120)

    assert plain.download_url(KEY, "payload.tar.gz") is None
    url = redirecting.download_url(KEY, "payload.tar.gz")
    assert url is not None and "/object/sign/" in url
    assert httpx.get(url).content == b"x" * 10


def test_upload_again_replaces_the_object(blobs: SupabaseStorageBlobStore) -> None:
    blobs.put_bytes(KEY, "manifest.json", b"first")
    blobs.put_bytes(KEY, "manifest.json", b"second!")

    assert b"".join(blobs.iter_range(KEY, "manifest.json", 0, 7)) == b"second!"
    assert blobs.size(KEY, "manifest.json") == 7


def test_delete_removes_every_object_of_that_package_only(
    blobs: SupabaseStorageBlobStore, storage: StorageContract
) -> None:
    other = "v1.2.4/0011223344556677"
    for name in ("manifest.json", "manifest.sig", "payload.tar.gz"):
        blobs.put_bytes(KEY, name, name.encode())
    blobs.put_bytes(other, "manifest.json", b"keep")

    blobs.delete(KEY)
    blobs.delete(KEY)  # nothing left: no error
    blobs.delete("v9.9.9/ffffffffffffffff")  # never existed: no error

    assert set(storage.objects) == {(BUCKET, f"{other}/manifest.json")}
    with pytest.raises(NotFoundError):
        blobs.size(KEY, "payload.tar.gz")


def test_empty_range_checks_existence_only(blobs: SupabaseStorageBlobStore) -> None:
    blobs.put_bytes(KEY, "manifest.sig", b"abc")

    assert list(blobs.iter_range(KEY, "manifest.sig", 3, 3)) == []
    with pytest.raises(NotFoundError):
        blobs.iter_range(KEY, "missing.bin", 0, 0)
    with pytest.raises(ValueError, match="0 <= start <= end"):
        blobs.iter_range(KEY, "manifest.sig", 2, 1)


def test_put_file_removes_the_source_even_when_the_upload_fails(
    storage: StorageContract, tmp_path: Path
) -> None:
    store = _store(storage, tmp_path)  # no bucket: Storage refuses the upload
    source = tmp_path / "payload.part"
    source.write_bytes(b"data")

    with pytest.raises(SupabaseStorageError, match="Bucket not found"):
        store.put_file(KEY, "payload.tar.gz", source)

    assert not source.exists()


def test_malformed_names_are_refused_before_any_request(
    blobs: SupabaseStorageBlobStore, storage: StorageContract
) -> None:
    storage.seen.clear()
    for key, name in [("../etc", "passwd"), (KEY, "a/b"), (KEY, ".hidden"), ("v1 2", "x")]:
        with pytest.raises(BackendError, match="expected letters, digits"):
            blobs.put_bytes(key, name, b"x")
    assert storage.seen == []


def test_unreachable_storage_names_the_url_not_the_key(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    store = SupabaseStorageBlobStore(
        f"http://127.0.0.1:{closed_port}", SecretStr(SECRET_KEY), upload_dir=tmp_path
    )

    with pytest.raises(SupabaseStorageError) as raised:
        store.size(KEY, "payload.tar.gz")

    assert f"http://127.0.0.1:{closed_port}/storage/v1" in str(raised.value)
    assert "unreachable" in str(raised.value)
    assert raised.value.status_code is None
    assert not isinstance(raised.value, StorageRefusedError)  # retryable: the API's 503
    assert SECRET_KEY not in str(raised.value)


def test_from_settings_needs_url_and_key(tmp_path: Path) -> None:
    missing = SimpleNamespace(data_dir=tmp_path, supabase_url=None, supabase_service_key=None)
    with pytest.raises(SettingsError, match="JAVIA_SUPABASE_URL.*JAVIA_SUPABASE_SERVICE_KEY"):
        SupabaseStorageBlobStore.from_settings(missing)  # type: ignore[arg-type]

    settings = SimpleNamespace(
        data_dir=tmp_path,
        supabase_url="https://abcdefghijklmnop.supabase.co/",
        supabase_service_key=SecretStr(SECRET_KEY),
        supabase_bucket=None,
        supabase_signed_urls=True,
    )
    store = SupabaseStorageBlobStore.from_settings(settings)  # type: ignore[arg-type]
    assert store.storage_url == "https://abcdefghijklmnop.supabase.co/storage/v1"
    assert store.bucket == DEFAULT_BUCKET
    assert store.signed_urls is True and store.signed_url_seconds == 300
    assert store.upload_dir() == tmp_path / "uploads"
    assert SECRET_KEY not in repr(store)
    store.close()


@pytest.mark.parametrize(
    ("url", "bucket", "message"),
    [
        ("abcdefghijklmnop.supabase.co", BUCKET, "expected https://<project-ref>.supabase.co"),
        ("https://x.supabase.co", "Packages!", "invalid Supabase bucket name"),
    ],
)
def test_malformed_settings_are_refused_with_the_expected_form(
    tmp_path: Path, url: str, bucket: str, message: str
) -> None:
    with pytest.raises(BackendError, match=re.escape(message)):
        SupabaseStorageBlobStore(url, SecretStr(SECRET_KEY), bucket, upload_dir=tmp_path)


def test_a_key_the_self_hosted_gateway_shuts_out_is_a_refusal_naming_the_setting(
    storage: StorageContract, tmp_path: Path
) -> None:
    storage.gateway = "kong"
    storage.denied_keys = {SECRET_KEY}

    with pytest.raises(StorageRefusedError) as raised:
        _store(storage, tmp_path).prepare()

    assert raised.value.status_code == 403  # type: ignore[attr-defined]
    assert "You cannot consume this service" in str(raised.value)
    assert "supabase_service_key" in str(raised.value)


def test_an_object_over_the_buckets_size_limit_is_too_large_naming_that_limit(
    storage: StorageContract, tmp_path: Path
) -> None:
    store = _store(storage, tmp_path)
    store.prepare()
    storage.buckets[BUCKET]["file_size_limit"] = MIB
    source = tmp_path / "payload.part"
    _payload(source, MIB + 1)

    with pytest.raises(StorageTooLargeError) as raised:
        store.put_file(KEY, "payload.tar.gz", source)

    error = raised.value
    assert isinstance(error, SupabaseStorageTooLargeError)
    assert (error.limit_bytes, error.size_bytes, error.code) == (MIB, MIB + 1, "EntityTooLarge")
    assert (error.status_code, error.storage_status) == (400, 413)
    assert f"file size limit of bucket {BUCKET!r}, {MIB} bytes (1.0 MiB)" in str(error)
    assert "The object exceeded the maximum allowed size" in str(error)
    assert storage.bucket_objects(BUCKET) == {} and not source.exists()
    store.put_bytes(KEY, "payload.tar.gz", b"x" * MIB)  # at the limit: accepted


def test_an_object_over_the_projects_global_limit_names_that_limit(
    storage: StorageContract, tmp_path: Path
) -> None:
    store = _store(storage, tmp_path)
    store.prepare()
    storage.file_size_limit = 1000  # FILE_SIZE_LIMIT; the bucket has no limit of its own

    with pytest.raises(SupabaseStorageTooLargeError) as raised:
        store.put_bytes(KEY, "payload.tar.gz", b"x" * 1001)

    assert raised.value.limit_bytes is None
    assert "over the project's upload file size limit" in str(raised.value)
    assert "FILE_SIZE_LIMIT" in str(raised.value)


@pytest.mark.parametrize(
    ("answer", "retryable"),
    [
        (lambda: storage_error(500, "InternalError", "Internal server error"), True),
        (lambda: storage_error(503, "DatabaseConnectionLimit", "try again later"), True),
        (lambda: storage_error(429, "SlowDown", "Please reduce your request rate"), True),
        (lambda: gateway_error(502, "An invalid response was received from upstream"), True),
        (lambda: storage_error(400, "InvalidKey", "Invalid key: v1.2.3"), False),
        (lambda: storage_error(409, "ResourceLocked", "The resource is locked"), False),
        (lambda: gateway_error(404, "no Route matched with those values"), False),
    ],
    ids=["500", "503-in-body", "429", "gateway-502", "InvalidKey", "409", "gateway-404"],
)
def test_storage_5xx_and_busy_answers_are_retryable_other_4xx_are_refusals(
    storage: StorageContract, tmp_path: Path, answer: Callable[[], Response], retryable: bool
) -> None:
    store = _store(storage, tmp_path)
    store.prepare()
    storage.intercept = lambda method, path: answer() if method == "POST" else None

    with pytest.raises(SupabaseStorageError) as raised:
        store.put_bytes(KEY, "manifest.json", b"{}")

    assert isinstance(raised.value, StorageRefusedError) is not retryable
    assert not isinstance(raised.value, NotFoundError)
    body = answer().body.decode()
    assert json.loads(body)["message"] in str(raised.value)
