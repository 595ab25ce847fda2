"""HTTP client for the device API (DESIGN.md section 6), over httpx.

The agent's "fetcher" (STYLE.md, python-tuf): network only, no policy. Three
layers in three modules, like python-tuf's ``ngclient``:

- :mod:`javia_agent.transport`: the HTTP session — deadlines, small answers
  read within them, retries with backoff and jitter, ``Retry-After`` capped,
  the device token, TLS trust; every httpx failure becomes an agent error;
- :mod:`javia_agent.payload_download`: the payload's resumable, size-bounded,
  rate-limited streaming download;
- this module: the device API's calls (register, heartbeat, update check,
  status report, wake-up, manifest, signature, payload), each a typed request and a
  typed answer. :meth:`DeviceClient._parse` is the one place a server answer
  becomes typed values (docs/security.md).

The ``httpx.Client`` (or just its transport) is injectable, so tests run
against an in-memory app or a local server.

Errors: :class:`~javia_agent.errors.NetworkError` (no answer),
:class:`~javia_agent.errors.ServerError` / ``AuthenticationError`` (an HTTP
error status, in ``status_code``), :class:`~javia_agent.errors.DownloadError`
(a short or oversized body).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from javia_agent import payload_download
from javia_agent.bandwidth import TokenBucket
from javia_agent.config import check_server_url
from javia_agent.errors import AgentError, DownloadError, ServerError
from javia_agent.transport import DEFAULT_REQUEST_DEADLINE_SECONDS, HttpSession, RetryPolicy
from javia_core.models import (
    DeviceRegistered,
    DeviceRegisterRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    StatusReport,
    StatusReportResult,
    UpdateCheckResponse,
)
from javia_core.wakeup import WakeupAnswer

if TYPE_CHECKING:
    from javia_core.deltas import DeltaIndex

__all__ = ["API_PREFIX", "DeviceClient"]

API_PREFIX = "/api/v1"

M = TypeVar("M", bound=BaseModel)


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
        ca_bundle: PEM file of CA certificates to trust instead of the system's
            (:func:`~javia_agent.transport.server_trust`).
        allow_insecure_http: allow plain ``http://`` to a non-loopback host.
        timeout_seconds: connect/read timeout for each request.
        request_deadline_seconds: time limit for a whole small request (API
            calls, manifest, signature), answer included; an answer still
            arriving then is cut off (:class:`NetworkError`).
        retry: how downloads are retried (default :class:`~javia_agent.transport.RetryPolicy`).
        download_rate_limit: cap on the payload download speed in bytes per
            second; ``None`` for no cap.
        token_source: returns the current device token (the agent re-reads
            its token file). On HTTP 401 it is called once; if it gives a new
            token, the request is sent once more with it, so a token rotated
            with ``javia devices rotate-token`` and written to the file is
            used without restarting the agent.
        should_stop: polled while an answer streams in and while waiting to
            retry (default for calls given none); True ends the call.
        keepalive: called for every piece of an answer and while waiting to
            retry (the systemd watchdog ping).
        sleep: blocks for the given seconds (backoff waits, rate limit).
        monotonic: seconds on a clock that never jumps (rate limit, deadlines).
        rng: randomness for the backoff jitter.

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
        request_deadline_seconds: float = DEFAULT_REQUEST_DEADLINE_SECONDS,
        user_agent: str = "javia-agent",
        retry: RetryPolicy | None = None,
        download_rate_limit: float | None = None,
        token_source: Callable[[], str] | None = None,
        should_stop: Callable[[], bool] | None = None,
        keepalive: Callable[[], object] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if download_rate_limit is not None and download_rate_limit <= 0:
            raise ValueError("download_rate_limit must be a positive number of bytes per second")
        if not request_deadline_seconds > 0:
            raise ValueError("request_deadline_seconds must be a positive number of seconds")
        self.download_rate_limit = download_rate_limit
        #: One token bucket for every download of this client (archive, objects, patches).
        self.bandwidth = (
            TokenBucket(download_rate_limit, monotonic=monotonic, sleep=sleep)
            if download_rate_limit is not None
            else None
        )
        self.base_url = check_server_url(server_url, allow_insecure_http=allow_insecure_http)
        self.device_uuid = uuid.UUID(str(device_uuid)) if device_uuid is not None else None
        #: The HTTP session every call goes through (token, limits, retries).
        self.session = HttpSession(
            self.base_url,
            http_client=http_client,
            transport=transport,
            ca_bundle=ca_bundle,
            timeout_seconds=timeout_seconds,
            request_deadline_seconds=request_deadline_seconds,
            user_agent=user_agent,
            retry=retry or RetryPolicy(),
            token=token,
            token_source=token_source,
            should_stop=should_stop,
            keepalive=keepalive,
            sleep=sleep,
            monotonic=monotonic,
            rng=rng or random.Random(),
        )

    @property
    def request_deadline_seconds(self) -> float:
        """Time limit for a whole small request, answer included, in seconds."""
        return self.session.request_deadline_seconds

    @property
    def local_address(self) -> str | None:
        """The local IP address of the last connection to the server, if known."""
        return self.session.local_address

    def close(self) -> None:
        """Close the underlying ``httpx.Client`` if this object created it."""
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _device_path(self, suffix: str) -> str:
        if self.device_uuid is None:
            raise AgentError("this device is not registered: no device uuid configured")
        return f"{API_PREFIX}/devices/{self.device_uuid}{suffix}"

    @staticmethod
    def _resolve(url: str) -> str:
        """A directive URL as a request target: a plain path on the configured server.

        The models already refuse anything else (:func:`javia_core.models.check_api_path`);
        this is the second line, next to the request: another scheme or host
        would receive the device token, and ``..`` would leave the API.
        """
        from javia_core.models import check_api_path

        try:
            return check_api_path(url)
        except ValueError as error:
            raise DownloadError(f"refusing to download: {error}") from None

    @staticmethod
    def _parse(response: httpx.Response, model: type[M], what: str) -> M:
        """The one place a server answer becomes typed values (the response models' rules).

        Raises:
            ServerError: the answer is not the expected JSON, or a field is
                out of its rules; the message names the fields ("server fault").
        """
        try:
            return model.model_validate_json(response.content)
        except ValidationError as error:
            problems = []
            for item in error.errors(include_url=False, include_input=False)[:3]:
                where = ".".join(str(part) for part in item["loc"]) or "body"
                problems.append(f"{where}: {item['msg']}")
            more = error.error_count() - len(problems)
            detail = "; ".join(problems) + (f"; and {more} more" if more > 0 else "")
            raise ServerError(
                f"{what}: server fault: unexpected answer, refused and nothing of it used "
                f"({detail[:600]})",
                status_code=response.status_code,
            ) from None

    # -- API calls --------------------------------------------------------------

    def register(
        self,
        api_key: str | None,
        request: DeviceRegisterRequest,
        *,
        enrollment_token: str | None = None,
    ) -> DeviceRegistered:
        """``POST /api/v1/devices/register`` (used once per device).

        Authenticates with the admin key, or with an enrollment token
        (``Authorization: Bearer``) when one is given, so a Pi can enrol
        itself without ever holding the admin key.

        Returns:
            The device's uuid and its token (shown this once; store it).

        Raises:
            AuthenticationError: the key or enrollment token was refused
                (expired, used up, revoked).
            ServerError: another HTTP error. NetworkError: no answer.
        """
        if enrollment_token is not None:
            headers = {"Authorization": f"Bearer {enrollment_token}"}
        elif api_key is not None:
            headers = {"X-API-Key": api_key}
        else:
            raise ValueError("register needs an admin key or an enrollment token")
        response = self.session.request(
            "POST",
            f"{API_PREFIX}/devices/register",
            "register",
            headers=headers,
            json=request.model_dump(mode="json"),
        )
        registered = self._parse(response, DeviceRegistered, "register")
        self.device_uuid = registered.device_uuid
        self.session.token = registered.device_token
        return registered

    def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResponse:
        """``POST /api/v1/devices/{uuid}/heartbeat``: report in, learn the server time and any update.

        ``application`` is left out of the body while it is unknown (``None``).

        Raises:
            AuthenticationError, ServerError, NetworkError: as for every call.
        """
        unknown = {"application"} if request.application is None else None
        response = self.session.request(
            "POST",
            self._device_path("/heartbeat"),
            "heartbeat",
            json=request.model_dump(mode="json", exclude=unknown),
        )
        return self._parse(response, HeartbeatResponse, "heartbeat")

    def check(self) -> UpdateCheckResponse:
        """``GET /api/v1/devices/{uuid}/updates/check``: the pending update, if any."""
        response = self.session.request("GET", self._device_path("/updates/check"), "update check")
        return self._parse(response, UpdateCheckResponse, "update check")

    def report_status(self, update_id: int, report: StatusReport) -> StatusReportResult:
        """``POST /api/v1/devices/{uuid}/updates/{update_id}/status`` (idempotent on the server).

        Raises:
            ServerError: e.g. 404 (unknown update) or 409 (status would move
                backwards); AuthenticationError; NetworkError.
        """
        what = f"status report for update {update_id}"
        response = self.session.request(
            "POST",
            self._device_path(f"/updates/{int(update_id)}/status"),
            what,
            json=report.model_dump(mode="json", exclude_none=True),
        )
        return self._parse(response, StatusReportResult, what)

    def wait_for_wakeup(self, wait_seconds: int) -> WakeupAnswer:
        """``GET /api/v1/devices/{uuid}/wakeup?wait=N``: held until something concerns the device.

        The server answers at the latest after ``wait_seconds`` (or its own
        shorter hold); this client's ``request_deadline_seconds`` must exceed
        that (:class:`javia_agent.wakeup.WakeupChannel` builds such a client).

        Raises:
            ServerError: an error status (503 carries ``retry_after_seconds``)
                or an answer outside :class:`~javia_core.wakeup.WakeupAnswer`'s rules.
            AuthenticationError, NetworkError: as for every call.
        """
        response = self.session.request(
            "GET", self._device_path(f"/wakeup?wait={int(wait_seconds)}"), "wake-up"
        )
        return self._parse(response, WakeupAnswer, "wake-up")

    # -- downloads ----------------------------------------------------------------

    def download_manifest(
        self, url: str, *, should_stop: Callable[[], bool] | None = None
    ) -> bytes:
        """Download ``manifest.json`` bytes (at most 16 MiB), retrying as the session's ``retry`` says.

        Raises:
            DownloadTooLargeError: the body exceeds the cap.
            ServerError, AuthenticationError, NetworkError, DownloadError:
                after the retries (a 4xx other than 408/429 is not retried).
            DownloadCancelledError: ``should_stop`` asked to stop while waiting.
        """
        # Imported here: javia_core.manifest loads cryptography, which an idle agent never needs.
        from javia_core.manifest import MAX_MANIFEST_BYTES

        return self.session.download_small(
            self._resolve(url), MAX_MANIFEST_BYTES, "manifest download", should_stop
        )

    def download_signature(
        self, url: str, *, should_stop: Callable[[], bool] | None = None
    ) -> bytes:
        """Download ``manifest.sig`` bytes (at most 4 KiB). Raises as :meth:`download_manifest`."""
        from javia_core.manifest import MAX_SIGNATURE_BYTES

        return self.session.download_small(
            self._resolve(url), MAX_SIGNATURE_BYTES, "signature download", should_stop
        )

    def delta_index(
        self, update_id: int, *, should_stop: Callable[[], bool] | None = None
    ) -> DeltaIndex | None:
        """``GET /api/v1/updates/{id}/delta-index``: what the server holds per file, or ``None``.

        ``None`` when the server has no index for the update (404: published
        before per-file objects, or a server without them); the index is
        parsed here (:meth:`_parse`) and only steers what is fetched.

        Raises:
            ServerError: another error status, or an index out of its rules;
                DownloadTooLargeError, AuthenticationError, NetworkError as
                for every download.
        """
        from javia_core.deltas import MAX_DELTA_INDEX_BYTES, DeltaIndex

        if type(update_id) is not int or update_id < 1:
            raise ValueError(f"invalid update id {update_id!r}")
        try:
            body = self.session.download_small(
                f"/api/v1/updates/{update_id}/delta-index",
                MAX_DELTA_INDEX_BYTES,
                "delta index download",
                should_stop,
            )
        except ServerError as error:
            if error.status_code == 404:
                return None
            raise
        return self._parse(httpx.Response(200, content=body), DeltaIndex, "delta index")

    def download_delta_part(
        self,
        target: str,
        dest: Path,
        announced_size: int,
        *,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Path:
        """Stream one object or patch (``target`` from :func:`javia_core.deltas.object_path`
        or :func:`~javia_core.deltas.patch_path`) to ``dest``, exactly ``announced_size`` bytes.

        The same resumable, rate-limited, size-capped download as
        :meth:`download_payload` (retries, ``Retry-After`` with jitter); the
        caller checks the content against the signed manifest.

        Raises:
            As :meth:`download_payload`.
        """
        return payload_download.download_payload(
            self.session,
            self._resolve(target),
            dest,
            announced_size,
            resume=True,
            should_stop=should_stop,
            progress=progress,
            bandwidth=self.bandwidth,
            what="object download" if "/objects/" in target else "patch download",
        )

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

        A broken connection, a short body, HTTP 408/429/5xx are retried after
        an exponential backoff with jitter (:class:`~javia_agent.transport.RetryPolicy`), or after the
        server's ``Retry-After`` when it is longer; each retry resumes with
        ``Range: bytes=N-``. An attempt that added bytes resets the backoff, so
        a link that drops every few megabytes still finishes; only
        ``retry.attempts`` failures in a row *without* progress give up
        (keeping the partial file for a later resume). A resume answered with
        200 and the whole body (a server ignoring ``Range``) truncates the
        partial file and starts over; it is never appended.

        Args:
            url: the directive's ``download_url`` (a path on this server).
            dest: the final file; written only once ``expected_size`` bytes arrived.
            expected_size: the signed archive size in bytes (manifest ``archive.size``).
            resume: continue an existing ``dest.partial`` with ``Range: bytes=N-``.
            should_stop: polled between chunks and while waiting to retry; when
                it returns True the download stops, keeping the partial file.
            progress: called with (bytes so far, expected_size) after each
                chunk and about once a second while waiting to retry.

        Returns:
            ``dest``, holding exactly ``expected_size`` bytes. Size and SHA-256
            are *not* checked here: the caller verifies the archive.

        Raises:
            DownloadTooLargeError: the server sent (or announced) more than
                ``expected_size`` bytes; the partial file is deleted.
            DownloadCancelledError: ``should_stop`` asked to stop; partial kept.
            DownloadError: the body still ended short after the retries, or the
                server's answers made no sense; the partial file is kept.
            NetworkError: the connection failed after the retries; partial kept.
            ServerError, AuthenticationError: an HTTP error status that is not
                retried (4xx), or still there after the retries; ``Retry-After``
                longer than ``retry.max_retry_after_seconds`` is raised at once
                with ``retry_after_seconds`` set.
        """
        if expected_size < 0:
            raise ValueError("expected_size must be a non-negative number of bytes")
        return payload_download.download_payload(
            self.session,
            self._resolve(url),
            dest,
            expected_size,
            resume=resume,
            should_stop=should_stop,
            progress=progress,
            bandwidth=self.bandwidth,
        )
