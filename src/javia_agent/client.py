"""HTTP client for the device API (DESIGN.md section 6), over httpx.

The agent's "fetcher" (STYLE.md, python-tuf): network only, no policy. The
``httpx.Client`` (or just its transport) is injectable, so tests run against
an in-memory app or a local server.

Downloads never hold a whole package in memory: the payload streams in
chunks to ``<dest>.partial``, stops the moment more bytes than the signed size
arrive, and resumes an interrupted download with ``Range: bytes=N-``
(RFC 9110 section 14). A server that answers a resume with 200 and the whole
body gets the partial file truncated and written from the start — never
appended to, which would corrupt it. Failed attempts are retried with
exponential backoff and jitter, honouring ``Retry-After`` on 429 and 503
(:class:`RetryPolicy`) up to :data:`MAX_SERVER_DELAY_SECONDS`; a download
rate limit in bytes per second is optional.

Every request asks for ``Accept-Encoding: identity``; a small answer (API
call, manifest, signature) that comes encoded anyway is refused before any
byte of it is decoded, and must arrive whole within the request deadline.
While such an answer streams in, the ``keepalive`` callback is called and
``should_stop`` is polled for every piece, so a server trickling bytes can
neither starve the systemd watchdog nor delay a stop. Any httpx failure is
turned into the agent's own errors here, never passed on.

Errors: :class:`~javia_agent.errors.NetworkError` (no answer),
:class:`~javia_agent.errors.ServerError` / ``AuthenticationError`` (an HTTP
error status, in ``status_code``), :class:`~javia_agent.errors.DownloadError`
(a short or oversized body).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import re
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
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
from javia_core.models import (
    DeviceRegistered,
    DeviceRegisterRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    StatusReport,
    StatusReportResult,
    UpdateCheckResponse,
)

__all__ = [
    "API_PREFIX",
    "DEFAULT_REQUEST_DEADLINE_SECONDS",
    "MAX_SERVER_DELAY_SECONDS",
    "DeviceClient",
    "RetryPolicy",
    "parse_retry_after",
    "server_trust",
]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
#: HTTP statuses worth retrying: timeout, too many requests, server-side trouble.
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Times one download may start over because of confusing range answers.
_MAX_RESTARTS = 3
#: Largest JSON answer read from the server, in bytes (decoded); a longer one is a server fault.
MAX_ANSWER_BYTES = 1024 * 1024
#: Longest wait a server may impose (``Retry-After``, on any route), in seconds;
#: a longer one is cut to this, so one answer cannot silence the device for good.
MAX_SERVER_DELAY_SECONDS = 3600.0
#: Default time limit, in seconds, for one small request from sending it to the
#: last byte of the answer (``request_deadline_seconds`` in the agent config).
DEFAULT_REQUEST_DEADLINE_SECONDS = 60.0
#: ``Retry-After`` delay-seconds longer than this many digits exceed any cap.
_MAX_DELAY_DIGITS = 12


@dataclass(frozen=True)
class RetryPolicy:
    """How failed downloads are retried (exponential backoff with jitter).

    The n-th failure in a row waits a random time between half and all of
    ``min(max_delay_seconds, base_delay_seconds * 2 ** (n - 1))``, or the
    server's ``Retry-After`` if that is longer. An attempt that received bytes
    resets the count.

    Attributes:
        attempts: failed attempts in a row without progress before giving up
            (the partial file is kept; the agent tries again later).
        base_delay_seconds: the first wait, in seconds.
        max_delay_seconds: the longest backoff wait, in seconds.
        max_retry_after_seconds: the longest ``Retry-After`` waited out here;
            a longer one ends the attempt at once with the error, whose
            ``retry_after_seconds`` the agent's main loop honours.
        max_total_attempts: attempts per download call, progress or not.
    """

    attempts: int = 6
    base_delay_seconds: float = 2.0
    max_delay_seconds: float = 60.0
    max_retry_after_seconds: float = 600.0
    max_total_attempts: int = 200

    def backoff_seconds(self, failures: int, rng: random.Random) -> float:
        """The wait after ``failures`` failures in a row (1 or more), in seconds."""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** max(0, failures - 1))
        return rng.uniform(ceiling / 2, ceiling)


M = TypeVar("M", bound=BaseModel)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except (ValueError, RecursionError):
        detail = response.text
    text = detail if isinstance(detail, str) else str(detail)
    return " ".join(text.split())[:300] or response.reason_phrase


def _loaded(streamed: httpx.Response, body: bytes) -> httpx.Response:
    """A copy of a streamed answer with its (unencoded, already read) body."""
    return httpx.Response(
        streamed.status_code, headers=streamed.headers, content=body, request=streamed.request
    )


def _unusable_answer(what: str, error: httpx.HTTPError) -> ServerError:
    """An httpx failure that is not the network's (e.g. an undecodable body): a server fault."""
    return ServerError(
        f"{what}: server fault: unusable answer ({error or type(error).__name__}): refused"
    )


def _http_error(response: httpx.Response, what: str) -> ServerError:
    status = response.status_code
    message = f"{what}: server answered HTTP {status}: {_detail(response)}"
    if status in (401, 403):
        return AuthenticationError(message, status_code=status)
    retry_after = None
    if status in (429, 503):
        retry_after = parse_retry_after(
            response.headers.get("Retry-After"), date=response.headers.get("Date")
        )
        if retry_after is not None:
            message += f" (retry after {retry_after:.0f} s)"
    return ServerError(message, status_code=status, retry_after_seconds=retry_after)


def server_trust(ca_bundle: Path | None) -> ssl.SSLContext | bool:
    """What verifies the server's TLS certificate: ``ca_bundle``, else a CA directory.

    A CA directory (``$SSL_CERT_DIR``, else OpenSSL's default: ``/etc/ssl/certs``
    on Debian and Raspberry Pi OS, kept current by the ``ca-certificates``
    package and its security updates) is hashed by subject, so OpenSSL reads
    one certificate from it when a handshake needs it. A bundle file (httpx's
    default, certifi's; or ``$SSL_CERT_FILE``) is parsed whole into the TLS
    context: about 1.2 MiB that the idle agent would keep (docs/benchmarks.md,
    agent idle memory). Either way the certificate chain and the host name are
    verified (``ssl.create_default_context``); with both variables set only the
    directory is trusted.

    Args:
        ca_bundle: a PEM file of CA certificates to trust alone (a private CA).

    Returns:
        A TLS context for ``ca_bundle`` or the CA directory; ``True`` (httpx's
        default: ``$SSL_CERT_FILE``, else certifi's bundle) when only
        ``$SSL_CERT_FILE`` is set or no hashed CA directory exists.
    """
    if ca_bundle:
        return ssl.create_default_context(cafile=str(ca_bundle))
    directory = os.environ.get("SSL_CERT_DIR")
    if not directory:
        if os.environ.get("SSL_CERT_FILE"):
            return True
        directory = ssl.get_default_verify_paths().capath
    try:
        hashed = directory is not None and any(
            entry.name.endswith(".0") for entry in os.scandir(directory)
        )
    except OSError:
        hashed = False
    return ssl.create_default_context(capath=directory) if hashed else True


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
            (:func:`server_trust`).
        allow_insecure_http: allow plain ``http://`` to a non-loopback host.
        timeout_seconds: connect/read timeout for each request.
        request_deadline_seconds: time limit for a whole small request (API
            calls, manifest, signature), answer included; an answer still
            arriving then is cut off (:class:`NetworkError`).
        retry: how downloads are retried (default :class:`RetryPolicy`).
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
        self.request_deadline_seconds = float(request_deadline_seconds)
        self._timeout_seconds = float(timeout_seconds)
        self._should_stop = should_stop
        self._keepalive = keepalive
        self.retry = retry or RetryPolicy()
        self.download_rate_limit = download_rate_limit
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self.base_url = check_server_url(server_url, allow_insecure_http=allow_insecure_http)
        self.device_uuid = uuid.UUID(str(device_uuid)) if device_uuid is not None else None
        self._token = token
        self._token_source = token_source
        self._owns_client = http_client is None
        if http_client is None:
            http_client = httpx.Client(
                base_url=self.base_url,
                transport=transport,
                verify=server_trust(ca_bundle),
                timeout=httpx.Timeout(timeout_seconds),
                follow_redirects=False,
                headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
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

    def _reload_token(self) -> bool:
        """After a 401: re-read the token; True if it changed (then retry the request once)."""
        if self._token_source is None:
            return False
        try:
            token = self._token_source()
        except AgentError as error:
            logger.warning(
                "the server refused the device token and re-reading it failed: %s", error
            )
            return False
        if not token or token == self._token:
            return False
        logger.info("the server refused the device token; retrying with the token file's new token")
        self._token = token
        return True

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
        headers: dict[str, str] | None = None,
        json: Any = None,
    ) -> httpx.Response:
        """Send one API request; ``headers`` None means the device's bearer token.

        With the device token, a 401 re-reads it once (``token_source``) and,
        if it changed, sends the request once more.

        Raises:
            NetworkError: no answer. ServerError / AuthenticationError: an
            HTTP error status, or an answer above :data:`MAX_ANSWER_BYTES`.
        """
        device_auth = headers is None
        response = self._send(method, path, what, headers or self._auth(), json)
        if response.status_code == 401 and device_auth and self._reload_token():
            response = self._send(method, path, what, self._auth(), json)
        if response.status_code >= 400:
            raise _http_error(response, what)
        return response

    def _send(
        self, method: str, path: str, what: str, headers: dict[str, str], json: Any
    ) -> httpx.Response:
        """One request; the body is read up to :data:`MAX_ANSWER_BYTES` within the deadline."""
        deadline = self._monotonic() + self.request_deadline_seconds
        self._ping()
        try:
            with self._http.stream(
                method, path, headers={**headers, "Accept-Encoding": "identity"}, json=json
            ) as streamed:
                self._note_local_address(streamed)
                body = self._read_small(
                    streamed,
                    what,
                    MAX_ANSWER_BYTES,
                    deadline,
                    self._should_stop,
                    too_large=ServerError,
                    stopped=NetworkError,
                )
                return _loaded(streamed, body)
        except httpx.TransportError as error:
            raise NetworkError(
                f"{what}: cannot reach {self.base_url}: {error or type(error).__name__}"
            ) from None
        except httpx.HTTPError as error:
            raise _unusable_answer(what, error) from None

    def _ping(self) -> None:
        if self._keepalive is not None:
            self._keepalive()

    def _read_small(
        self,
        response: httpx.Response,
        what: str,
        limit: int,
        deadline: float,
        should_stop: Callable[[], bool] | None,
        *,
        too_large: type[AgentError],
        stopped: type[AgentError],
    ) -> bytes:
        """The body of a small answer: unencoded, at most ``limit`` bytes, whole by ``deadline``.

        Each piece of the body pings the keepalive callback; while more is
        due, ``should_stop`` is polled and the deadline (monotonic seconds)
        checked, so a server trickling bytes neither starves the watchdog nor
        delays a stop (a silent one is cut by the read timeout). A complete
        answer is never thrown away for a stop.

        Raises:
            ServerError: the answer is encoded (``Content-Encoding``) although
                the device asked for ``identity``; nothing of it is decoded.
            too_large: more than ``limit`` bytes arrived.
            stopped: ``should_stop`` returned True.
            NetworkError: the deadline passed before the answer was whole.
        """
        status = response.status_code
        coding = response.headers.get("Content-Encoding", "")
        if any(part.strip().lower() not in ("", "identity") for part in coding.split(",")):
            raise ServerError(
                f"{what}: server fault: the answer is encoded "
                f"(Content-Encoding: {' '.join(coding.split())[:60]}) although the device "
                "asked for identity: refused"
            )
        declared = response.headers.get("Content-Length", "").strip()
        expected = (
            int(declared)
            if declared.isascii() and declared.isdigit() and len(declared) < 19
            else None
        )
        if self._monotonic() > deadline:
            raise self._overrun(what)
        body = bytearray()
        for chunk in response.iter_bytes():  # no Content-Encoding: the raw bytes
            body += chunk
            if len(body) > limit:
                raise too_large(
                    f"{what}: server fault: the answer is larger than {limit} bytes: refused",
                    status_code=status,
                )
            self._ping()
            if expected is not None and len(body) >= expected:
                continue  # whole: only the end of the message is left
            if should_stop is not None and should_stop():
                raise stopped(f"{what}: stopped while the answer was arriving")
            if self._monotonic() > deadline:
                raise self._overrun(what)
        return bytes(body)

    def _overrun(self, what: str) -> NetworkError:
        return NetworkError(
            f"{what}: the answer did not arrive whole within "
            f"{self.request_deadline_seconds:.0f} s: cut off"
        )

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
        response = self._request(
            "POST",
            f"{API_PREFIX}/devices/register",
            "register",
            headers=headers,
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
            json=request.model_dump(mode="json"),
        )
        return self._parse(response, HeartbeatResponse, "heartbeat")

    def check(self) -> UpdateCheckResponse:
        """``GET /api/v1/devices/{uuid}/updates/check``: the pending update, if any."""
        response = self._request("GET", self._device_path("/updates/check"), "update check")
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
            json=report.model_dump(mode="json", exclude_none=True),
        )
        return self._parse(response, StatusReportResult, what)

    # -- downloads ------------------------------------------------------------------

    def _retry_delay(self, error: AgentError, streak: int) -> float:
        """Seconds to wait before the next attempt; re-raises ``error`` if the server asks too much."""
        policy = self.retry
        delay = policy.backoff_seconds(streak, self._rng)
        asked = error.retry_after_seconds
        if asked is not None:
            if asked > policy.max_retry_after_seconds:
                raise error
            delay = max(delay, asked)
        return delay

    def _wait_to_retry(
        self,
        seconds: float,
        should_stop: Callable[[], bool] | None,
        on_wait: Callable[[], None] | None,
        what: str,
    ) -> None:
        """Sleep ``seconds``; in slices of at most one second when someone polls or listens."""
        if self._keepalive is not None:
            on_wait = functools.partial(_both, self._keepalive, on_wait)
        if should_stop is None and on_wait is None:
            self._sleep(seconds)
            return
        remaining = seconds
        while remaining > 0:
            if should_stop is not None and should_stop():
                raise DownloadCancelledError(f"{what} stopped while waiting to retry; will resume")
            step = min(1.0, remaining)
            self._sleep(step)
            remaining -= step
            if on_wait is not None:
                on_wait()
        if should_stop is not None and should_stop():
            raise DownloadCancelledError(f"{what} stopped while waiting to retry; will resume")

    def _download_small(
        self, url: str, limit: int, what: str, should_stop: Callable[[], bool] | None = None
    ) -> bytes:
        target = self._resolve(url)
        should_stop = should_stop or self._should_stop
        streak = 0
        reloaded = False
        while True:
            try:
                return self._fetch_small(target, limit, what, should_stop)
            except (NetworkError, ServerError) as error:
                if error.status_code == 401 and not reloaded and self._reload_token():
                    reloaded = True
                    continue
                if not _retryable(error):
                    raise
                streak += 1
                if streak >= self.retry.attempts:
                    raise
                delay = self._retry_delay(error, streak)
                logger.warning("%s (attempt %d; retrying in %.1f s)", error, streak, delay)
                self._wait_to_retry(delay, should_stop, None, what)

    def _fetch_small(
        self, target: str, limit: int, what: str, should_stop: Callable[[], bool] | None
    ) -> bytes:
        deadline = self._monotonic() + self.request_deadline_seconds
        self._ping()
        headers = {**self._auth(), "Accept-Encoding": "identity"}
        try:
            with self._http.stream("GET", target, headers=headers) as response:
                self._note_local_address(response)
                if response.status_code >= 400:
                    body = self._read_small(
                        response,
                        what,
                        MAX_ANSWER_BYTES,
                        deadline,
                        should_stop,
                        too_large=ServerError,
                        stopped=DownloadCancelledError,
                    )
                    raise _http_error(_loaded(response, body), what)
                if response.status_code != 200:
                    raise DownloadError(f"{what}: unexpected HTTP {response.status_code}")
                return self._read_small(
                    response,
                    what,
                    limit,
                    deadline,
                    should_stop,
                    too_large=DownloadTooLargeError,
                    stopped=DownloadCancelledError,
                )
        except httpx.TransportError as error:
            raise NetworkError(
                f"{what}: download interrupted: {error or type(error).__name__}"
            ) from None
        except httpx.HTTPError as error:
            raise _unusable_answer(what, error) from None

    def download_manifest(
        self, url: str, *, should_stop: Callable[[], bool] | None = None
    ) -> bytes:
        """Download ``manifest.json`` bytes (at most 16 MiB), retrying as :attr:`retry` says.

        Raises:
            DownloadTooLargeError: the body exceeds the cap.
            ServerError, AuthenticationError, NetworkError, DownloadError:
                after the retries (a 4xx other than 408/429 is not retried).
            DownloadCancelledError: ``should_stop`` asked to stop while waiting.
        """
        # Imported here: javia_core.manifest loads cryptography, which an idle agent never needs.
        from javia_core.manifest import MAX_MANIFEST_BYTES

        return self._download_small(url, MAX_MANIFEST_BYTES, "manifest download", should_stop)

    def download_signature(
        self, url: str, *, should_stop: Callable[[], bool] | None = None
    ) -> bytes:
        """Download ``manifest.sig`` bytes (at most 4 KiB). Raises as :meth:`download_manifest`."""
        from javia_core.manifest import MAX_SIGNATURE_BYTES

        return self._download_small(url, MAX_SIGNATURE_BYTES, "signature download", should_stop)

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
        an exponential backoff with jitter (:class:`RetryPolicy`), or after the
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
        target = self._resolve(url)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        if dest.exists():
            if dest.stat().st_size == expected_size:
                return dest
            dest.unlink()
        offset = _file_size(partial) if resume else 0
        if offset > expected_size:
            offset = 0
        if offset == expected_size and partial.exists():
            os.replace(partial, dest)
            return dest
        if offset:
            logger.info("resuming the payload download at byte %d of %d", offset, expected_size)
        streak = restarts = attempts = 0
        reloaded = False
        while True:
            attempts += 1
            before = offset
            try:
                restart = self._stream_payload(
                    target, partial, offset, expected_size, should_stop, progress
                )
            except (NetworkError, ServerError, DownloadError) as error:
                if error.status_code == 401 and not reloaded and self._reload_token():
                    reloaded = True
                    offset = _file_size(partial)
                    continue
                if not _retryable(error):
                    raise
                offset = _file_size(partial)
                if offset > before:
                    streak = 0  # progress: a flaky link, not a dead one
                streak += 1
                if streak >= self.retry.attempts or attempts >= self.retry.max_total_attempts:
                    raise
                delay = self._retry_delay(error, streak)
                logger.warning("%s (retrying in %.1f s from byte %d)", error, delay, offset)
                on_wait = None
                if progress is not None:
                    on_wait = functools.partial(progress, offset, expected_size)
                self._wait_to_retry(delay, should_stop, on_wait, "payload download")
                continue
            if restart is None:
                os.replace(partial, dest)
                return dest
            restarts += 1
            if restarts > _MAX_RESTARTS:
                raise _ConfusedServerError(
                    "payload download: the server's range answers made no sense; try again later"
                )
            offset = restart

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
        limiter = (
            _RateLimiter(self.download_rate_limit, self._monotonic, self._sleep)
            if self.download_rate_limit
            else None
        )
        try:
            with self._http.stream("GET", target, headers=headers) as response:
                self._note_local_address(response)
                status = response.status_code
                if status == 416 and offset:
                    logger.info("server refused to resume at byte %d; starting over", offset)
                    return 0
                if status >= 400:
                    body = self._read_small(
                        response,
                        what,
                        MAX_ANSWER_BYTES,
                        self._monotonic() + self.request_deadline_seconds,
                        should_stop,
                        too_large=ServerError,
                        stopped=DownloadCancelledError,
                    )
                    raise _http_error(_loaded(response, body), what)
                if status == 206 and offset:
                    restart = _check_content_range(
                        response.headers.get("Content-Range", ""), offset, expected_size
                    )
                    if restart is not None:
                        return restart
                elif status == 200:
                    if offset:
                        logger.info("server answered the resume with the whole file; starting over")
                    received = offset = 0
                else:
                    raise _ConfusedServerError(f"{what}: unexpected HTTP {status}")
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
                        for chunk in response.iter_raw(limiter.chunk_bytes if limiter else None):
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
                            if limiter is not None:
                                limiter.consumed(len(chunk))
                    finally:
                        if not handle.closed:
                            handle.flush()
                            os.fsync(handle.fileno())
        except httpx.TransportError as error:
            # The answer had started: the body was cut short (a DownloadError, which
            # counts towards giving up on a package that never arrives whole), unlike
            # a failure to connect at all (NetworkError, which never counts).
            if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout)):
                raise NetworkError(
                    f"{what}: cannot connect ({error or type(error).__name__}); will resume"
                ) from None
            raise DownloadError(
                f"{what} interrupted at {received} of {expected_size} bytes "
                f"({error or type(error).__name__}); will resume"
            ) from None
        except httpx.HTTPError as error:
            raise _unusable_answer(what, error) from None
        if received < expected_size:
            raise DownloadError(f"{what} ended at {received} of {expected_size} bytes; will resume")
        return None


class _ConfusedServerError(DownloadError):
    """The server's answers do not fit the request; retrying now would not help."""


def _retryable(error: AgentError) -> bool:
    """Whether a failed request is worth retrying after a backoff."""
    if isinstance(error, (DownloadTooLargeError, DownloadCancelledError, _ConfusedServerError)):
        return False
    if isinstance(error, AuthenticationError):
        return False
    if isinstance(error, ServerError):
        return error.status_code is None or error.status_code in _RETRYABLE_STATUSES
    return isinstance(error, (NetworkError, DownloadError))


def _both(first: Callable[[], object], then: Callable[[], object] | None) -> None:
    first()
    if then is not None:
        then()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _check_content_range(header: str, offset: int, expected_size: int) -> int | None:
    """Check a 206 answer to ``Range: bytes=offset-`` (RFC 9110 section 14.4).

    Returns:
        ``None`` when the answer starts at ``offset``; ``0`` (start over) when
        it starts elsewhere or the header is missing or malformed.

    Raises:
        DownloadTooLargeError: the server's object is larger than the signed size.
        DownloadError: it is smaller (it cannot be the signed payload).
    """
    match = _CONTENT_RANGE.match(header.strip())
    if match is None:
        logger.warning("server answered a resume without a valid Content-Range; starting over")
        return 0
    first, total = int(match.group(1)), match.group(3)
    if total != "*" and int(total) != expected_size:
        if int(total) > expected_size:
            raise DownloadTooLargeError(
                f"payload download: the server's object is {total} bytes, "
                f"but the signed size is {expected_size}: refused"
            )
        raise _ConfusedServerError(
            f"payload download: the server's object is {total} bytes, "
            f"but the signed size is {expected_size}: refused"
        )
    if first != offset:
        logger.warning("server resumed at byte %d instead of %d; starting over", first, offset)
        return 0
    return None


class _RateLimiter:
    """Keeps a stream at or under ``rate`` bytes per second by sleeping after chunks."""

    def __init__(
        self, rate: float, monotonic: Callable[[], float], sleep: Callable[[float], None]
    ) -> None:
        self.rate = float(rate)
        self._monotonic = monotonic
        self._sleep = sleep
        self._started = monotonic()
        self._bytes = 0
        # About eight chunks a second: smooth, and should_stop is polled often.
        self.chunk_bytes = max(1024, min(64 * 1024, int(self.rate / 8)))

    def consumed(self, count: int) -> None:
        self._bytes += count
        ahead = self._bytes / self.rate - (self._monotonic() - self._started)
        if ahead > 0:
            self._sleep(ahead)


def parse_retry_after(value: str | None, *, date: str | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 section 10.2.3).

    Args:
        value: the header: delay-seconds (``"120"``) or an HTTP-date
            (``"Wed, 21 Oct 2015 07:28:00 GMT"``).
        date: the response's ``Date`` header. An HTTP-date is measured from
            it — the server's own clock — because a Raspberry Pi has no
            real-time clock and its wall clock may be years off; without it
            the device's wall clock is the fallback.

    Returns:
        Seconds, from 0 to :data:`MAX_SERVER_DELAY_SECONDS` (a longer delay is
        cut to it), or ``None`` when the header is missing or malformed.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        if len(text.lstrip("0")) > _MAX_DELAY_DIGITS:
            return MAX_SERVER_DELAY_SECONDS
        return min(MAX_SERVER_DELAY_SECONDS, float(int(text)))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference: datetime | None = None
    if date:
        try:
            reference = parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError, OverflowError):
            reference = None
        if reference is not None and reference.tzinfo is None:
            reference = reference.replace(tzinfo=UTC)
    if reference is None:
        reference = datetime.now(UTC)
    try:
        seconds = (when - reference).total_seconds()
    except OverflowError:
        return MAX_SERVER_DELAY_SECONDS
    return min(MAX_SERVER_DELAY_SECONDS, max(0.0, seconds))
