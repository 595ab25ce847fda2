"""Errors raised by the javia agent (DESIGN.md sections 1 and 7).

Every error derives from :class:`javia_core.errors.JaviaError`, so the
``javia agent`` commands turn it into one red line and a non-zero exit. As in
python-tuf there are two families: the server or network failed
(:class:`NetworkError`, :class:`ServerError`, :class:`DownloadError`) — worth a
retry later — and the device itself cannot proceed (:class:`ConfigError`,
:class:`ServiceError`, :class:`StateError`). Bad package *data* is reported
with the shared :class:`~javia_core.errors.PackageError`,
:class:`~javia_core.errors.SignatureError` and
:class:`~javia_core.errors.ManifestError`.
"""

from __future__ import annotations

from javia_core.errors import JaviaError

__all__ = [
    "AgentError",
    "AuthenticationError",
    "CommandFailedError",
    "ConfigError",
    "CrashLoopError",
    "DiskSpaceError",
    "DownloadCancelledError",
    "DownloadError",
    "DownloadTooLargeError",
    "InstallError",
    "NetworkError",
    "PackageManagerLockError",
    "ServerError",
    "ServiceError",
    "StateError",
    "command_output",
]


class AgentError(JaviaError):
    """Root of the agent's own errors.

    Attributes:
        status_code: the HTTP status of the server's answer when the error
            comes from one, else ``None``.
        retry_after_seconds: how long the server asked the device to wait
            before trying again (its ``Retry-After`` header on a 429 or 503,
            RFC 9110 section 10.2.3), in seconds; ``None`` when it did not say.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_seconds = retry_after_seconds


class ConfigError(AgentError):
    """The agent configuration is missing, unreadable or invalid."""


class NetworkError(AgentError):
    """The server could not be reached, or the connection broke (no HTTP status)."""


class ServerError(AgentError):
    """The server answered with an HTTP error status (``status_code`` is set)."""


class AuthenticationError(ServerError):
    """The server refused the device token or admin key (HTTP 401 or 403)."""


class DownloadError(AgentError):
    """A download ended short, or the server's answer did not fit the request."""


class DownloadTooLargeError(DownloadError):
    """The server sent more bytes than the signed size (DESIGN.md section 3)."""


class DownloadCancelledError(DownloadError):
    """The download was stopped on request (the agent is shutting down); the partial file is kept."""


class ServiceError(AgentError):
    """The application service could not be stopped, started or queried."""


class InstallError(AgentError):
    """A staging step failed: installing signed system packages or the setup command."""


class CommandFailedError(InstallError):
    """A command of the install (pip, apt, the setup or health command) failed.

    Attributes:
        kind: which command: ``venv``, ``pip``, ``apt``, ``setup``, ``health``.
        exit_code: its exit status (negative: minus the signal), None if it
            did not finish (timeout) or could not run.
        output: the end of its output (stderr, then stdout), at most 64 KiB.
    """

    def __init__(
        self, message: str, *, kind: str, exit_code: int | None = None, output: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code
        self.output = output


def command_output(
    stdout: bytes | str | None, stderr: bytes | str | None, limit: int = 64 * 1024
) -> str:
    """The end of a command's output: stdout then stderr, decoded, at most ``limit`` characters.

    Either stream may be bytes (a finished command) or text (``TimeoutExpired``).
    """
    text = _decoded(stdout)
    error_text = _decoded(stderr)
    joined = f"{text.rstrip()}\n{error_text}" if text and error_text else text or error_text
    return joined[-limit:]


def _decoded(stream: bytes | str | None) -> str:
    if isinstance(stream, bytes):
        return stream.decode("utf-8", "replace")
    return stream or ""


class DiskSpaceError(InstallError):
    """Not enough free disk space for the download and the unpacked release.

    Raised before the payload is downloaded (or, for a package directory,
    before it is unpacked); the message gives the bytes needed and free.
    """


class PackageManagerLockError(InstallError):
    """The dpkg lock stayed held by another process past the wait limit.

    The message names the holder (pid and command) when the kernel says who
    it is.
    """


class StateError(AgentError):
    """The persisted update state is unreadable, or an install is already running."""


class CrashLoopError(StateError):
    """One update saved its state too often: the agent is in a crash loop.

    Raised when a step would exceed the cap on state saves per update (a
    Mender-style loop breaker, STYLE.md); the update is then failed or rolled
    back to the old release.
    """
