"""How a request names its server, a device and an update: one rule for every side. Pure.

The server reads a device uuid and an update reference from a URL path
(``/api/v1/devices/{uuid}``, ``/api/v1/updates/{reference}``); the operator's
CLI checks the same text with the same functions before it sends anything, so
a malformed argument is refused by name on the operator's terminal instead of
as a URL the server never sees (DESIGN.md section 1: one red line naming the
input and its expected form). The agent and the operator's CLI check a server
URL with :func:`check_server_url` before the first request.

Every function takes text and does no I/O.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from javia_core.errors import JaviaError
from javia_core.versioning import Version

__all__ = [
    "DEVICE_UUID_EXAMPLE",
    "MAX_HOST_LABEL_CHARACTERS",
    "MAX_HOST_NAME_CHARACTERS",
    "MAX_UPDATE_ID_DIGITS",
    "SERVER_URL_EXAMPLE",
    "AddressError",
    "check_server_url",
    "parse_device_uuid",
    "parse_update_reference",
]

#: The device uuid shown in messages as the expected form.
DEVICE_UUID_EXAMPLE = "3f2b8c1e-5d4a-4e2f-9a7b-1c2d3e4f5a6b"
#: The server URL shown in messages as the expected form.
SERVER_URL_EXAMPLE = "https://updates.example.org or http://127.0.0.1:8000"
#: Digits of the largest update id, 2**63 - 1 (a signed 64-bit database integer).
MAX_UPDATE_ID_DIGITS = 19
#: Characters of the input quoted in a message; the rest is cut and its length given.
_SHOWN_CHARACTERS = 60
#: Longest label of a host name and longest host name, in encoded characters (RFC 1035 2.3.4).
MAX_HOST_LABEL_CHARACTERS = 63
MAX_HOST_NAME_CHARACTERS = 253

# The server's own path parameter type: FastAPI validates ``uuid.UUID`` with pydantic.
_DEVICE_UUID = TypeAdapter(uuid.UUID)


class AddressError(JaviaError, ValueError):
    """A server URL, device uuid or update reference that is not of the expected form."""


def _shown(text: str) -> str:
    """``text`` quoted for a message, cut to 60 characters with its length when longer."""
    if len(text) <= _SHOWN_CHARACTERS:
        return repr(text)
    return f"{text[:_SHOWN_CHARACTERS]!r}… ({len(text)} characters)"


def parse_device_uuid(text: str) -> uuid.UUID:
    """The device uuid in ``text``, by the rule the server applies to ``{uuid}`` in a path.

    Raises:
        AddressError: ``text`` is not a uuid; the message quotes it (cut to 60
            characters) and shows the expected form.
    """
    try:
        # 45: the longest form pydantic reads ("urn:uuid:" + 36); longer is never a uuid.
        if len(text) <= 45:
            return _DEVICE_UUID.validate_python(text)
    except ValidationError:
        pass
    raise AddressError(
        f"invalid device uuid {_shown(text)}: expected a uuid such as {DEVICE_UUID_EXAMPLE}"
    )


def parse_update_reference(text: str) -> int | Version:
    """An update's id (``4``) or version (``v1.2.3``) in ``text``, surrounding blanks ignored.

    The rule of ``/api/v1/updates/{reference}``. An id in range but not
    published is the server's to refuse (404), not a form error.

    Raises:
        AddressError: neither a whole number of at most 19 digits nor a
            ``v``-prefixed text; the message shows both expected forms.
        VersionError: ``v``-prefixed but not ``vX.Y.Z``.
    """
    reference = text.strip()
    if reference.startswith("v"):
        return Version.parse(reference)
    if not (reference.isascii() and reference.isdigit()) or len(reference) > MAX_UPDATE_ID_DIGITS:
        raise AddressError(
            f"invalid update reference {_shown(reference)}: expected an update id such as 4 "
            "or a version such as v1.2.3"
        )
    return int(reference)


def _is_encodable_host(host: str) -> bool:
    """Whether a network client can encode ``host`` (an IP address, or a DNS name by IDNA).

    A name is dot-separated labels of 1 to 63 characters, at most 253 in all
    once encoded (RFC 1035 section 2.3.4); one final dot (a fully qualified
    name) is allowed. An IPv6 address (it holds ``:``) is read by ``urlsplit``.
    """
    if ":" in host:
        return True
    name = host.removesuffix(".")
    try:
        encoded = name if name.isascii() else name.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = encoded.split(".")
    return len(encoded) <= MAX_HOST_NAME_CHARACTERS and all(
        0 < len(label) <= MAX_HOST_LABEL_CHARACTERS for label in labels
    )


def check_server_url(url: str) -> str:
    """``url`` without a trailing slash if it is ``http://`` or ``https://`` with a host.

    Only the form: whether plain http is acceptable is the caller's rule
    (the agent's :func:`javia_agent.config.check_server_url` refuses it to
    another machine). The host is an IP address or a name a client can
    encode: labels of 1 to 63 characters, at most 253 in all (RFC 1035).

    Raises:
        AddressError: another scheme (``file://``, ``ftp://``), no host,
            a host name with an empty or over-long label or over 253
            characters, or a URL that cannot be read (an unclosed ``[``, a
            port out of range).
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - reading it checks it: ValueError when out of range
    except ValueError as error:
        raise AddressError(
            f"invalid server URL {_shown(url)}: {error}; expected e.g. {SERVER_URL_EXAMPLE}"
        ) from None
    if parts.scheme not in ("http", "https") or not host:
        raise AddressError(
            "the server URL must be http:// or https:// with a host, got "
            f"{_shown(url)} (e.g. {SERVER_URL_EXAMPLE})"
        )
    if not _is_encodable_host(host):
        raise AddressError(
            f"invalid server URL {_shown(url)}: the host name must be dot-separated labels of 1 to "
            f"{MAX_HOST_LABEL_CHARACTERS} characters, at most {MAX_HOST_NAME_CHARACTERS} in all; "
            f"expected e.g. {SERVER_URL_EXAMPLE}"
        )
    return url.rstrip("/")
