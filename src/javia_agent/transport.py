"""The device's HTTP session: deadlines, small answers, retries (DESIGN.md section 6).

The lowest of the client's three layers (python-tuf's fetcher): network only,
no API paths and no policy. :class:`HttpSession` owns the ``httpx.Client``
(injectable, so tests run against an in-memory app or a local server), the
device token and the limits; :mod:`javia_agent.payload_download` streams a
package through it and :class:`javia_agent.client.DeviceClient` turns its
answers into typed values.

Every request asks for ``Accept-Encoding: identity``; a small answer (API
call, manifest, signature) that comes encoded anyway is refused before any
byte of it is decoded, and must arrive whole within the request deadline.
While such an answer streams in, the ``keepalive`` callback is called and
``should_stop`` is polled for every piece, so a server trickling bytes can
neither starve the systemd watchdog nor delay a stop. Failed attempts are
retried with exponential backoff and jitter, honouring ``Retry-After`` on 429
and 503 (:class:`RetryPolicy`) up to :data:`MAX_SERVER_DELAY_SECONDS`. Any
httpx failure is turned into the agent's own errors here, never passed on.

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
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from javia_agent.errors import (
    AgentError,
    AuthenticationError,
    DownloadCancelledError,
    DownloadError,
    DownloadTooLargeError,
    NetworkError,
    ServerError,
)

__all__ = [
    "DEFAULT_REQUEST_DEADLINE_SECONDS",
    "MAX_ANSWER_BYTES",
    "MAX_SERVER_DELAY_SECONDS",
    "ConfusedServerError",
    "HttpSession",
    "RetryPolicy",
    "http_error",
    "loaded",
    "parse_retry_after",
    "retryable",
    "server_trust",
    "unusable_answer",
]

logger = logging.getLogger(__name__)

#: HTTP statuses worth retrying: timeout, too many requests, server-side trouble.
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Largest JSON answer read from the server, in bytes (decoded); a longer one is a server fault.
MAX_ANSWER_BYTES = 1024 * 1024
#: Longest wait a server may impose (``Retry-After``, on any route), in seconds;
#: a longer one is cut to this, so one answer cannot silence the device for good.
MAX_SERVER_DELAY_SECONDS = 3600.0
#: Share of a ``Retry-After`` added at random to it before asking again.
RETRY_AFTER_JITTER = 0.25
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


class ConfusedServerError(DownloadError):
    """The server's answers do not fit the request; retrying now would not help."""


def retryable(error: AgentError) -> bool:
    """Whether a failed request is worth retrying after a backoff."""
    if isinstance(error, (DownloadTooLargeError, DownloadCancelledError, ConfusedServerError)):
        return False
    if isinstance(error, AuthenticationError):
        return False
    if isinstance(error, ServerError):
        return error.status_code is None or error.status_code in _RETRYABLE_STATUSES
    return isinstance(error, (NetworkError, DownloadError))


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except (ValueError, RecursionError):
        detail = response.text
    text = detail if isinstance(detail, str) else str(detail)
    return " ".join(text.split())[:300] or response.reason_phrase


def loaded(streamed: httpx.Response, body: bytes) -> httpx.Response:
    """A copy of a streamed answer with its (unencoded, already read) body."""
    return httpx.Response(
        streamed.status_code, headers=streamed.headers, content=body, request=streamed.request
    )


def unusable_answer(what: str, error: httpx.HTTPError) -> ServerError:
    """An httpx failure that is not the network's (e.g. an undecodable body): a server fault."""
    return ServerError(
        f"{what}: server fault: unusable answer ({error or type(error).__name__}): refused"
    )


def http_error(response: httpx.Response, what: str) -> ServerError:
    """The agent's error for an HTTP error status (``Retry-After`` read on 429 and 503)."""
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


def _both(first: Callable[[], object], then: Callable[[], object] | None) -> None:
    first()
    if then is not None:
        then()


class HttpSession:
    """One server, one device token, one set of limits: the requests of :class:`~javia_agent.client.DeviceClient`.

    Args:
        base_url: the server's checked base URL. The other arguments are
            :class:`~javia_agent.client.DeviceClient`'s of the same names
            (``retry`` and ``rng`` already defaulted).
    """

    def __init__(
        self,
        base_url: str,
        *,
        http_client: httpx.Client | None,
        transport: httpx.BaseTransport | None,
        ca_bundle: Path | None,
        timeout_seconds: float,
        request_deadline_seconds: float,
        user_agent: str,
        retry: RetryPolicy,
        token: str | None,
        token_source: Callable[[], str] | None,
        should_stop: Callable[[], bool] | None,
        keepalive: Callable[[], object] | None,
        sleep: Callable[[float], None],
        monotonic: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.base_url = base_url
        self.request_deadline_seconds = float(request_deadline_seconds)
        self.retry = retry
        self.token = token
        self.token_source = token_source
        self.should_stop = should_stop
        self.keepalive = keepalive
        self.sleep = sleep
        self.monotonic = monotonic
        self.rng = rng
        self._owns_client = http_client is None
        if http_client is None:
            http_client = httpx.Client(
                base_url=base_url,
                transport=transport,
                verify=server_trust(ca_bundle),
                timeout=httpx.Timeout(timeout_seconds),
                follow_redirects=False,
                headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
            )
        self.http = http_client
        #: The local IP address of the last connection to the server, if known.
        self.local_address: str | None = None

    def close(self) -> None:
        """Close the underlying ``httpx.Client`` if this object created it."""
        if self._owns_client:
            self.http.close()

    # -- the device token -----------------------------------------------------------

    def auth(self) -> dict[str, str]:
        """The device's ``Authorization`` header.

        Raises:
            AgentError: no device token is configured.
        """
        if not self.token:
            raise AgentError("this device is not registered: no device token configured")
        return {"Authorization": f"Bearer {self.token}"}

    def reload_token(self) -> bool:
        """After a 401: re-read the token; True if it changed (then retry the request once)."""
        if self.token_source is None:
            return False
        try:
            token = self.token_source()
        except AgentError as error:
            logger.warning(
                "the server refused the device token and re-reading it failed: %s", error
            )
            return False
        if not token or token == self.token:
            return False
        logger.info("the server refused the device token; retrying with the token file's new token")
        self.token = token
        return True

    def note_local_address(self, response: httpx.Response) -> None:
        """Remember the local IP address of ``response``'s connection (informative)."""
        stream = response.extensions.get("network_stream")
        if stream is None:
            return
        try:
            address = stream.get_extra_info("client_addr")
        except Exception:  # noqa: BLE001 - informative only
            return
        if isinstance(address, tuple) and address:
            self.local_address = str(address[0])

    # -- small answers --------------------------------------------------------------

    def request(
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
        response = self._send(method, path, what, headers or self.auth(), json)
        if response.status_code == 401 and device_auth and self.reload_token():
            response = self._send(method, path, what, self.auth(), json)
        if response.status_code >= 400:
            raise http_error(response, what)
        return response

    def _send(
        self, method: str, path: str, what: str, headers: dict[str, str], json: Any
    ) -> httpx.Response:
        """One request; the body is read up to :data:`MAX_ANSWER_BYTES` within the deadline."""
        deadline = self.monotonic() + self.request_deadline_seconds
        self.ping()
        try:
            with self.http.stream(
                method, path, headers={**headers, "Accept-Encoding": "identity"}, json=json
            ) as streamed:
                self.note_local_address(streamed)
                body = self.read_small(
                    streamed,
                    what,
                    MAX_ANSWER_BYTES,
                    deadline,
                    self.should_stop,
                    too_large=ServerError,
                    stopped=NetworkError,
                )
                return loaded(streamed, body)
        except httpx.TransportError as error:
            raise NetworkError(
                f"{what}: cannot reach {self.base_url}: {error or type(error).__name__}"
            ) from None
        except httpx.HTTPError as error:
            raise unusable_answer(what, error) from None

    def ping(self) -> None:
        """Call the keepalive callback (the systemd watchdog), if any."""
        if self.keepalive is not None:
            self.keepalive()

    def read_small(
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
        if self.monotonic() > deadline:
            raise self._overrun(what)
        body = bytearray()
        for chunk in response.iter_bytes():  # no Content-Encoding: the raw bytes
            body += chunk
            if len(body) > limit:
                raise too_large(
                    f"{what}: server fault: the answer is larger than {limit} bytes: refused",
                    status_code=status,
                )
            self.ping()
            if expected is not None and len(body) >= expected:
                continue  # whole: only the end of the message is left
            if should_stop is not None and should_stop():
                raise stopped(f"{what}: stopped while the answer was arriving")
            if self.monotonic() > deadline:
                raise self._overrun(what)
        return bytes(body)

    def _overrun(self, what: str) -> NetworkError:
        return NetworkError(
            f"{what}: the answer did not arrive whole within "
            f"{self.request_deadline_seconds:.0f} s: cut off"
        )

    def read_error(
        self,
        response: httpx.Response,
        what: str,
        deadline: float,
        should_stop: Callable[[], bool] | None,
    ) -> ServerError:
        """The error for a download answered with an HTTP error status (its body read as a small answer)."""
        body = self.read_small(
            response,
            what,
            MAX_ANSWER_BYTES,
            deadline,
            should_stop,
            too_large=ServerError,
            stopped=DownloadCancelledError,
        )
        return http_error(loaded(response, body), what)

    # -- retries --------------------------------------------------------------------

    def retry_delay(self, error: AgentError, streak: int) -> float:
        """Seconds to wait before the next attempt; re-raises ``error`` if the server asks too much.

        A ``Retry-After`` is waited out plus up to :data:`RETRY_AFTER_JITTER`
        of it again (random), so devices refused together (503 from a server
        at its download cap) do not come back in the same second.
        """
        policy = self.retry
        delay = policy.backoff_seconds(streak, self.rng)
        asked = error.retry_after_seconds
        if asked is not None:
            if asked > policy.max_retry_after_seconds:
                raise error
            jittered = asked * (1 + self.rng.uniform(0, RETRY_AFTER_JITTER))
            delay = max(delay, min(jittered, policy.max_retry_after_seconds))
        return delay

    def wait_to_retry(
        self,
        seconds: float,
        should_stop: Callable[[], bool] | None,
        on_wait: Callable[[], None] | None,
        what: str,
    ) -> None:
        """Sleep ``seconds``; in slices of at most one second when someone polls or listens.

        Raises:
            DownloadCancelledError: ``should_stop`` asked to stop.
        """
        if self.keepalive is not None:
            on_wait = functools.partial(_both, self.keepalive, on_wait)
        if should_stop is None and on_wait is None:
            self.sleep(seconds)
            return
        remaining = seconds
        while remaining > 0:
            if should_stop is not None and should_stop():
                raise DownloadCancelledError(f"{what} stopped while waiting to retry; will resume")
            step = min(1.0, remaining)
            self.sleep(step)
            remaining -= step
            if on_wait is not None:
                on_wait()
        if should_stop is not None and should_stop():
            raise DownloadCancelledError(f"{what} stopped while waiting to retry; will resume")

    def download_small(
        self, target: str, limit: int, what: str, should_stop: Callable[[], bool] | None
    ) -> bytes:
        """GET ``target`` (a checked path) whole, at most ``limit`` bytes, retrying as :attr:`retry` says.

        Raises:
            DownloadTooLargeError: the body exceeds ``limit``.
            ServerError, AuthenticationError, NetworkError, DownloadError:
                after the retries (a 4xx other than 408/429 is not retried).
            DownloadCancelledError: ``should_stop`` asked to stop.
        """
        should_stop = should_stop or self.should_stop
        streak = 0
        reloaded = False
        while True:
            try:
                return self._fetch_small(target, limit, what, should_stop)
            except (NetworkError, ServerError) as error:
                if error.status_code == 401 and not reloaded and self.reload_token():
                    reloaded = True
                    continue
                if not retryable(error):
                    raise
                streak += 1
                if streak >= self.retry.attempts:
                    raise
                delay = self.retry_delay(error, streak)
                logger.warning("%s (attempt %d; retrying in %.1f s)", error, streak, delay)
                self.wait_to_retry(delay, should_stop, None, what)

    def _fetch_small(
        self, target: str, limit: int, what: str, should_stop: Callable[[], bool] | None
    ) -> bytes:
        deadline = self.monotonic() + self.request_deadline_seconds
        self.ping()
        headers = {**self.auth(), "Accept-Encoding": "identity"}
        try:
            with self.http.stream("GET", target, headers=headers) as response:
                self.note_local_address(response)
                if response.status_code >= 400:
                    raise self.read_error(response, what, deadline, should_stop)
                if response.status_code != 200:
                    raise DownloadError(f"{what}: unexpected HTTP {response.status_code}")
                return self.read_small(
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
            raise unusable_answer(what, error) from None


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
