"""HTTP client for the device API (DESIGN.md section 6), over httpx.

The agent's "fetcher" (STYLE.md, python-tuf): network only, no policy. The
``httpx.Client`` (or just its transport) is injectable, so tests run against
an in-memory app or a local server.

Downloads never hold a whole package in memory: the payload streams in
chunks to ``<dest>.partial``, stops the moment more bytes than the signed size
arrive, and resumes an interrupted download with ``Range: bytes=N-``
(RFC 9110 section 14). A server that answers a resume with 200 and the whole
body gets the partial file truncated and written from the start — never
appended to, which would corrupt it.

Errors: :class:`~javia_agent.errors.NetworkError` (no answer),
:class:`~javia_agent.errors.ServerError` / ``AuthenticationError`` (an HTTP
error status, in ``status_code``), :class:`~javia_agent.errors.DownloadError`
(a short or oversized body).
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from javia_agent.config import check_server_url
from javia_agent.errors import (
    AgentError,
    AuthenticationError,
    DownloadCancelledError,
    DownloadError,
    DownloadTooLargeError,
    NetworkError,
    ServerError,
)
from javia_updates.manifest import MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES
from javia_updates.models import (
    DeviceRegistered,
    DeviceRegisterRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    StatusReport,
    StatusReportResult,
    UpdateCheckResponse,
)

__all__ = ["API_PREFIX", "DeviceClient"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

M = TypeVar("M", bound=BaseModel)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text
    text = detail if isinstance(detail, str) else str(detail)
    return " ".join(text.split())[:300] or response.reason_phrase


def _http_error(response: httpx.Response, what: str) -> ServerError:
    status = response.status_code
    message = f"{what}: server answered HTTP {status}: {_detail(response)}"
    if status in (401, 403):
        return AuthenticationError(message, status_code=status)
    return ServerError(message, status_code=status)


class DeviceClient:
    """The device side of the javia HTTP API (DESIGN.md section 6).

    Args:
        server_url: the server's base URL, e.g. ``https://updates.example.org``.
        device_uuid: this device's id (needed for every call but :meth:`register`).
        token: this device's bearer token (likewise).
        http_client: a ready ``httpx.Client`` whose ``base_url`` is the server;
            when given, ``transport``, ``ca_bundle`` and the timeout are unused.
        transport: an httpx transport for the client built here (tests pass a
            ``MockTransport`` or an ASGI/WSGI transport).
        ca_bundle: PEM file of CA certificates to trust instead of the system's.
        allow_insecure_http: allow plain ``http://`` to a non-loopback host.
        timeout_seconds: connect/read timeout for each request.

    Raises:
        ConfigError: ``server_url`` is malformed or insecure (see
            :func:`javia_agent.config.check_server_url`).
    """

    def __init__(
        self,
        server_url: str,
        *,
        device_uuid: uuid.UUID | str | None = None,
        token: str | None = None,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        ca_bundle: Path | None = None,
        allow_insecure_http: bool = False,
        timeout_seconds: float = 30.0,
        user_agent: str = "javia-agent",
    ) -> None:
        self.base_url = check_server_url(server_url, allow_insecure_http=allow_insecure_http)
        self.device_uuid = uuid.UUID(str(device_uuid)) if device_uuid is not None else None
        self._token = token
        self._owns_client = http_client is None
        if http_client is None:
            http_client = httpx.Client(
                base_url=self.base_url,
                transport=transport,
                verify=str(ca_bundle) if ca_bundle else True,
                timeout=httpx.Timeout(timeout_seconds),
                follow_redirects=False,
                headers={"User-Agent": user_agent},
            )
        self._http = http_client
        self._origin = urlsplit(self.base_url)
        #: The local IP address of the last connection to the server, if known.
        self.local_address: str | None = None

    def close(self) -> None:
        """Close the underlying ``httpx.Client`` if this object created it."""
        if self._owns_client:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------

    def _device_path(self, suffix: str) -> str:
        if self.device_uuid is None:
            raise AgentError("this device is not registered: no device uuid configured")
        return f"{API_PREFIX}/devices/{self.device_uuid}{suffix}"

    def _auth(self) -> dict[str, str]:
        if not self._token:
            raise AgentError("this device is not registered: no device token configured")
        return {"Authorization": f"Bearer {self._token}"}

    def _resolve(self, url: str) -> str:
        """A directive URL as a request target; refuses another host (the token would leak)."""
        parts = urlsplit(url)
        if parts.scheme or parts.netloc:
            same = (
                parts.scheme == self._origin.scheme
                and parts.hostname == self._origin.hostname
                and parts.port == self._origin.port
            )
            if not same:
                raise DownloadError(
                    f"refusing to download from {parts.scheme}://{parts.netloc}: "
                    f"expected a path on {self.base_url}"
                )
            return url
        if not url.startswith("/"):
            raise DownloadError(
                f"invalid download URL {url[:200]!r}: expected a path such as /api/v1/..."
            )
        return url

    def _note_local_address(self, response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        if stream is None:
            return
        try:
            address = stream.get_extra_info("client_addr")
        except Exception:  # noqa: BLE001 - informative only
            return
        if isinstance(address, tuple) and address:
            self.local_address = str(address[0])

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        headers: dict[str, str],
        json: Any = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, headers=headers, json=json)
        except httpx.TransportError as error:
            raise NetworkError(
                f"{what}: cannot reach {self.base_url}: {error or type(error).__name__}"
            ) from None
        self._note_local_address(response)
        if response.status_code >= 400:
            raise _http_error(response, what)
        return response

    @staticmethod
    def _parse(response: httpx.Response, model: type[M], what: str) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as error:
            raise ServerError(
                f"{what}: unexpected answer from the server ({error.error_count()} invalid fields)",
                status_code=response.status_code,
            ) from None

    # -- API calls --------------------------------------------------------------

    def register(self, api_key: str, request: DeviceRegisterRequest) -> DeviceRegistered:
        """``POST /api/v1/devices/register`` with the admin key (used once per device).

        Returns:
            The device's uuid and its token (shown this once; store it).

        Raises:
            AuthenticationError: the admin key was refused.
            ServerError: another HTTP error. NetworkError: no answer.
        """
        response = self._request(
            "POST",
            f"{API_PREFIX}/devices/register",
            "register",
            headers={"X-API-Key": api_key},
            json=request.model_dump(mode="json"),
        )
        registered = self._parse(response, DeviceRegistered, "register")
        self.device_uuid = registered.device_uuid
        self._token = registered.device_token
        return registered

    def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResponse:
        """``POST /api/v1/devices/{uuid}/heartbeat``: report in, learn the server time and any update.

        Raises:
            AuthenticationError, ServerError, NetworkError: as for every call.
        """
        response = self._request(
            "POST",
            self._device_path("/heartbeat"),
            "heartbeat",
            headers=self._auth(),
            json=request.model_dump(mode="json"),
        )
        return self._parse(response, HeartbeatResponse, "heartbeat")

    def check(self) -> UpdateCheckResponse:
        """``GET /api/v1/devices/{uuid}/updates/check``: the pending update, if any."""
        response = self._request(
            "GET", self._device_path("/updates/check"), "update check", headers=self._auth()
        )
        return self._parse(response, UpdateCheckResponse, "update check")

    def report_status(self, update_id: int, report: StatusReport) -> StatusReportResult:
        """``POST /api/v1/devices/{uuid}/updates/{update_id}/status`` (idempotent on the server).

        Raises:
            ServerError: e.g. 404 (unknown update) or 409 (status would move
                backwards); AuthenticationError; NetworkError.
        """
        what = f"status report for update {update_id}"
        response = self._request(
            "POST",
            self._device_path(f"/updates/{int(update_id)}/status"),
            what,
            headers=self._auth(),
            json=report.model_dump(mode="json", exclude_none=True),
        )
        return self._parse(response, StatusReportResult, what)

    def _download_small(self, url: str, limit: int, what: str) -> bytes:
        target = self._resolve(url)
        try:
            with self._http.stream("GET", target, headers=self._auth()) as response:
                self._note_local_address(response)
                if response.status_code >= 400:
                    response.read()
                    raise _http_error(response, what)
                if response.status_code != 200:
                    raise DownloadError(f"{what}: unexpected HTTP {response.status_code}")
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise DownloadTooLargeError(f"{what} is larger than {limit} bytes: refused")
                return bytes(data)
        except httpx.TransportError as error:
            raise NetworkError(
                f"{what}: download interrupted: {error or type(error).__name__}"
            ) from None

    def download_manifest(self, url: str) -> bytes:
        """Download ``manifest.json`` bytes (at most 16 MiB).

        Raises:
            DownloadTooLargeError: the body exceeds the cap.
            ServerError, AuthenticationError, NetworkError, DownloadError.
        """
        return self._download_small(url, MAX_MANIFEST_BYTES, "manifest download")

    def download_signature(self, url: str) -> bytes:
        """Download ``manifest.sig`` bytes (at most 4 KiB). Raises as :meth:`download_manifest`."""
        return self._download_small(url, MAX_SIGNATURE_BYTES, "signature download")

    def download_payload(
        self,
        url: str,
        dest: Path,
        expected_size: int,
        *,
        resume: bool = True,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Stream the payload to ``dest`` via ``dest.partial``, never past ``expected_size`` bytes.

        Args:
            url: the directive's ``download_url`` (a path on this server).
            dest: the final file; written only once ``expected_size`` bytes arrived.
            expected_size: the signed archive size in bytes (manifest ``archive.size``).
            resume: continue an existing ``dest.partial`` with ``Range: bytes=N-``.
            should_stop: polled between chunks; when it returns True the
                download stops, keeping the partial file for a later resume.
            progress: called with (bytes so far, expected_size).

        Returns:
            ``dest``, holding exactly ``expected_size`` bytes. Size and SHA-256
            are *not* checked here: the caller verifies the archive.

        Raises:
            DownloadTooLargeError: the server sent more than ``expected_size``
                bytes; the partial file is deleted.
            DownloadCancelledError: ``should_stop`` asked to stop; partial kept.
            DownloadError: the body ended short or the answer made no sense;
                the partial file is kept for a resume.
            NetworkError: the connection failed or broke; partial kept.
            ServerError, AuthenticationError: an HTTP error status.
        """
        if expected_size < 0:
            raise ValueError("expected_size must be a non-negative number of bytes")
        target = self._resolve(url)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        if dest.exists():
            if dest.stat().st_size == expected_size:
                return dest
            dest.unlink()
        offset = partial.stat().st_size if resume and partial.exists() else 0
        if offset > expected_size:
            offset = 0
        if offset == expected_size and partial.exists():
            os.replace(partial, dest)
            return dest
        for _ in range(3):
            restart = self._stream_payload(
                target, partial, offset, expected_size, should_stop, progress
            )
            if restart is None:
                os.replace(partial, dest)
                return dest
            offset = restart
        raise DownloadError(
            "payload download: the server's range answers made no sense; try again later"
        )

    def _stream_payload(
        self,
        target: str,
        partial: Path,
        offset: int,
        expected_size: int,
        should_stop: Callable[[], bool] | None,
        progress: Callable[[int, int], None] | None,
    ) -> int | None:
        """One GET into ``partial`` from ``offset``. Returns None when complete, else the offset to retry from."""
        what = "payload download"
        headers = {**self._auth(), "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        received = offset
        try:
            with self._http.stream("GET", target, headers=headers) as response:
                self._note_local_address(response)
                status = response.status_code
                if status == 416 and offset:
                    logger.info("server refused to resume at byte %d; starting over", offset)
                    return 0
                if status >= 400:
                    response.read()
                    raise _http_error(response, what)
                if status == 206 and offset:
                    match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                    if match is None or int(match.group(1)) != offset:
                        logger.warning("server resumed at the wrong byte; starting over")
                        return 0
                elif status == 200:
                    if offset:
                        logger.info("server answered the resume with the whole file; starting over")
                    received = offset = 0
                else:
                    raise DownloadError(f"{what}: unexpected HTTP {status}")
                declared = response.headers.get("Content-Length")
                if (
                    declared is not None
                    and declared.isdigit()
                    and offset + int(declared) > expected_size
                ):
                    partial.unlink(missing_ok=True)
                    raise DownloadTooLargeError(
                        f"{what}: server announces {offset + int(declared)} bytes, "
                        f"but the signed size is {expected_size}: refused"
                    )
                flags = os.O_WRONLY | os.O_CREAT
                descriptor = os.open(partial, flags, 0o644)
                with os.fdopen(descriptor, "wb") as handle:
                    handle.truncate(offset)  # 200: from scratch; 206: drop anything past offset
                    handle.seek(offset)
                    try:
                        for chunk in response.iter_raw():
                            if received + len(chunk) > expected_size:
                                handle.close()
                                partial.unlink(missing_ok=True)
                                raise DownloadTooLargeError(
                                    f"{what}: server sent more than the signed size of "
                                    f"{expected_size} bytes: stopped and discarded"
                                )
                            handle.write(chunk)
                            received += len(chunk)
                            if progress is not None:
                                progress(received, expected_size)
                            if (
                                should_stop is not None
                                and should_stop()
                                and received < expected_size
                            ):
                                raise DownloadCancelledError(
                                    f"{what} stopped at {received} of {expected_size} bytes; will resume"
                                )
                    finally:
                        if not handle.closed:
                            handle.flush()
                            os.fsync(handle.fileno())
        except httpx.TransportError as error:
            raise NetworkError(
                f"{what} interrupted at {received} of {expected_size} bytes "
                f"({error or type(error).__name__}); will resume"
            ) from None
        if received < expected_size:
            raise DownloadError(f"{what} ended at {received} of {expected_size} bytes; will resume")
        return None
