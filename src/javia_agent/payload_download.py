"""The payload's streaming download: resumable, size-bounded, rate-limited (DESIGN.md section 6).

The middle of the client's three layers: :func:`download_payload` streams a
package through an :class:`~javia_agent.transport.HttpSession` and never holds
it in memory. The payload arrives in chunks in ``<dest>.partial``, stops the
moment more bytes than the signed size arrive, and resumes an interrupted
download with ``Range: bytes=N-`` (RFC 9110 section 14). A server that answers
a resume with 200 and the whole body gets the partial file truncated and
written from the start — never appended to, which would corrupt it. Failed
attempts are retried as the session's :class:`~javia_agent.transport.RetryPolicy`
says; a download rate limit in bytes per second is optional.
:meth:`javia_agent.client.DeviceClient.download_payload` is the public entry.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import httpx

from javia_agent.bandwidth import TokenBucket
from javia_agent.errors import (
    DownloadCancelledError,
    DownloadError,
    DownloadTooLargeError,
    NetworkError,
    ServerError,
)
from javia_agent.transport import ConfusedServerError, HttpSession, retryable, unusable_answer

__all__ = ["download_payload"]

logger = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
#: Times one download may start over because of confusing range answers.
_MAX_RESTARTS = 3


def download_payload(
    session: HttpSession,
    target: str,
    dest: Path,
    expected_size: int,
    *,
    resume: bool,
    should_stop: Callable[[], bool] | None,
    progress: Callable[[int, int], None] | None,
    bandwidth: TokenBucket | None,
    what: str = "payload download",
) -> Path:
    """Stream ``target`` (a checked path) to ``dest`` via ``dest.partial``, never past ``expected_size`` bytes.

    ``bandwidth`` caps the speed (``None``: no cap); one bucket serves every
    request of a download, objects and patches included. ``what`` names the
    download in messages. The
    rest — arguments, retries, return value and errors — is
    :meth:`javia_agent.client.DeviceClient.download_payload`'s.
    """
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
            restart = _stream_payload(
                session,
                target,
                partial,
                offset,
                expected_size,
                should_stop,
                progress,
                bandwidth,
                what,
            )
        except (NetworkError, ServerError, DownloadError) as error:
            if error.status_code == 401 and not reloaded and session.reload_token():
                reloaded = True
                offset = _file_size(partial)
                continue
            if not retryable(error):
                raise
            offset = _file_size(partial)
            if offset > before:
                streak = 0  # progress: a flaky link, not a dead one
            streak += 1
            policy = session.retry
            if streak >= policy.attempts or attempts >= policy.max_total_attempts:
                raise
            delay = session.retry_delay(error, streak)
            logger.warning("%s (retrying in %.1f s from byte %d)", error, delay, offset)
            on_wait = None
            if progress is not None:
                on_wait = functools.partial(progress, offset, expected_size)
            session.wait_to_retry(delay, should_stop, on_wait, what)
            continue
        if restart is None:
            os.replace(partial, dest)
            return dest
        restarts += 1
        if restarts > _MAX_RESTARTS:
            raise ConfusedServerError(
                f"{what}: the server's range answers made no sense; try again later"
            )
        offset = restart


def _stream_payload(
    session: HttpSession,
    target: str,
    partial: Path,
    offset: int,
    expected_size: int,
    should_stop: Callable[[], bool] | None,
    progress: Callable[[int, int], None] | None,
    limiter: TokenBucket | None,
    what: str,
) -> int | None:
    """One GET into ``partial`` from ``offset``. Returns None when complete, else the offset to retry from."""
    headers = {**session.auth(), "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    received = offset
    try:
        with session.http.stream("GET", target, headers=headers) as response:
            session.note_local_address(response)
            status = response.status_code
            if status == 416 and offset:
                logger.info("server refused to resume at byte %d; starting over", offset)
                return 0
            if status >= 400:
                deadline = session.monotonic() + session.request_deadline_seconds
                raise session.read_error(response, what, deadline, should_stop)
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
                raise ConfusedServerError(f"{what}: unexpected HTTP {status}")
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
                        if should_stop is not None and should_stop() and received < expected_size:
                            raise DownloadCancelledError(
                                f"{what} stopped at {received} of {expected_size} bytes; will resume"
                            )
                        if limiter is not None:
                            limiter.take(len(chunk))
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
        raise unusable_answer(what, error) from None
    if received < expected_size:
        raise DownloadError(f"{what} ended at {received} of {expected_size} bytes; will resume")
    return None


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
        raise ConfusedServerError(
            f"payload download: the server's object is {total} bytes, "
            f"but the signed size is {expected_size}: refused"
        )
    if first != offset:
        logger.warning("server resumed at byte %d instead of %d; starting over", first, offset)
        return 0
    return None
