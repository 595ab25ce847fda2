"""Why a device's update failed: the failure classes, the wire object, redaction, causes. Pure.

On ``failed`` and ``rolled_back`` the agent sends a :class:`FailureDetails`
with its status report (``StatusReport.failure``): the :class:`FailureClass`,
the step it failed in, the application's exit code or signal, the last lines
of the application's output and of the health command, and the agent's own
reason. Everything in it comes from a device, so the server validates it as
hostile input (sizes, characters: :mod:`javia_core.input_rules`); the agent
redacts secrets from every text before it leaves the device
(:func:`redact`), and fits the object into :data:`MAX_FAILURE_COMPRESSED_BYTES`
(:func:`fit_failure`).

:func:`cause_of` reduces a failure to its cause (class + the reason and the
output's last line with numbers, versions, hashes, uuids and paths under
temporary directories normalised), so ``javia updates failures`` collapses a
thousand failures into the handful of distinct causes.

Source: issue 15 "Why a device failed"; DESIGN.md section 10 (which failures
mark a version failed); docs/agent.md "Failure classes".
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from javia_core.input_rules import check_text

__all__ = [
    "FailureClass",
    "FailureDetails",
    "FailureGroup",
    "FailureGroupsOut",
    "MAX_FAILURE_COMPRESSED_BYTES",
    "MAX_FAILURE_JSON_BYTES",
    "MAX_OUTPUT_TAIL_CHARS",
    "MAX_REASON_CHARS",
    "REDACTED",
    "cause_of",
    "failure_size",
    "fit_failure",
    "normalise_text",
    "redact",
]


class FailureClass(StrEnum):
    """What kind of failure ended an update on a device (a released name never changes)."""

    SIGNATURE = "signature"  # no trusted key, a signature or manifest that did not verify
    DOWNLOAD = "download"  # the payload never arrived whole, or did not match its signed hash
    DISK_SPACE = "disk_space"  # not enough free space (transient: retried until the deadline)
    PACKAGE = "package"  # a verified archive whose members broke the signed manifest
    DEPENDENCIES = "dependencies"  # building the Python environment (pip) failed
    APT = "apt"  # installing the signed system packages failed
    SETUP = "setup"  # the setup command failed
    START = "start"  # stopping the old or starting the new release failed
    HEALTH_CHECK = "health_check"  # the health command failed or timed out
    CRASH_AFTER_START = "crash_after_start"  # the new release stopped during its health window
    CRASH_LOOP = "crash_loop"  # the agent itself kept dying at one step (loop breaker)
    ROLLBACK = "rollback"  # the rollback could not complete (the device needs attention)
    CONFIGURATION = "configuration"  # the device's own configuration is at fault
    NETWORK = "network"  # the deadline passed while the network or a mirror stayed down
    OTHER = "other"  # none of the above


#: Longest ``reason`` of a failure, in characters (the status report's own limit).
MAX_REASON_CHARS = 4000
#: Longest output tail (application or health command), in characters.
MAX_OUTPUT_TAIL_CHARS = 64 * 1024
#: Largest failure object as canonical JSON, in bytes: bounds what the server
#: decompresses, stores and shows, whatever the compression ratio.
MAX_FAILURE_JSON_BYTES = 192 * 1024
#: Largest failure object as zlib-compressed canonical JSON, in bytes (issue 15).
MAX_FAILURE_COMPRESSED_BYTES = 64 * 1024

_STEP = re.compile(r"[a-z][a-z_]{0,31}")


class FailureDetails(BaseModel):
    """A structured failure, sent with a ``failed`` or ``rolled_back`` status report.

    Attributes:
        failure_class: what kind of failure (:class:`FailureClass`).
        step: the agent's step it happened in (``staging``, ``health_check``, ...):
            lower-case letters and ``_``, at most 32 characters.
        reason: the agent's own one-paragraph reason (at most 4,000 characters).
        exit_code: the application's (or the failing command's) exit code, 0-255.
        signal: the signal number that ended it, 1-64.
        output_tail: the last lines of the application's output (or of the
            failing command: pip, apt, the setup command), secrets redacted.
        output_source: where those lines come from (``journal``, ``app.log``,
            ``pip``, ``apt``, ``setup``), at most 32 characters.
        health_output_tail: the last lines of the health command's output.

    Every text: valid Unicode without NUL (:func:`javia_core.input_rules.check_text`).
    The whole object: at most :data:`MAX_FAILURE_JSON_BYTES` as canonical
    JSON and :data:`MAX_FAILURE_COMPRESSED_BYTES` compressed.
    """

    model_config = ConfigDict(extra="forbid")

    failure_class: FailureClass
    step: str = Field(max_length=32)
    reason: str = Field(max_length=MAX_REASON_CHARS)
    exit_code: int | None = Field(default=None, ge=0, le=255, strict=True)
    signal: int | None = Field(default=None, ge=1, le=64, strict=True)
    output_tail: str | None = Field(default=None, max_length=MAX_OUTPUT_TAIL_CHARS)
    output_source: str | None = Field(default=None, max_length=32)
    health_output_tail: str | None = Field(default=None, max_length=MAX_OUTPUT_TAIL_CHARS)

    @field_validator("step", "output_source")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and _STEP.fullmatch(value) is None:
            raise ValueError(
                f"{value[:40]!r} is not a step name: expected lower-case letters and '_'"
            )
        return value

    @field_validator("reason", "output_tail", "health_output_tail")
    @classmethod
    def _storable(cls, value: str | None, info: object) -> str | None:
        name = getattr(info, "field_name", "failure")
        return None if value is None else check_text(value, f"failure.{name}")

    @model_validator(mode="after")
    def _bounded(self) -> FailureDetails:
        raw, compressed = failure_size(self)
        if raw > MAX_FAILURE_JSON_BYTES:
            raise ValueError(
                f"failure is {raw} bytes as JSON: at most {MAX_FAILURE_JSON_BYTES} are accepted"
            )
        if compressed > MAX_FAILURE_COMPRESSED_BYTES:
            raise ValueError(
                f"failure is {compressed} bytes compressed: at most "
                f"{MAX_FAILURE_COMPRESSED_BYTES} are accepted"
            )
        return self


def _canonical(failure: FailureDetails) -> bytes:
    body = failure.model_dump(mode="json", exclude_none=True)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def failure_size(failure: FailureDetails) -> tuple[int, int]:
    """(canonical JSON bytes, zlib-compressed bytes) of ``failure``."""
    raw = _canonical(failure)
    return len(raw), len(zlib.compress(raw, 6))


def fit_failure(
    failure_class: FailureClass,
    step: str,
    reason: str,
    *,
    exit_code: int | None = None,
    signal: int | None = None,
    output_tail: str | None = None,
    output_source: str | None = None,
    health_output_tail: str | None = None,
    secrets: Iterable[str] = (),
) -> FailureDetails:
    """A :class:`FailureDetails` that fits the bounds, every text redacted and storable.

    Texts are redacted (:func:`redact`, with the device's ``secrets``), NUL and
    lone surrogates become U+FFFD, the reason keeps its last 4,000 characters
    and each tail its last :data:`MAX_OUTPUT_TAIL_CHARS`; while the object is
    still over a bound, the oldest half of the longer tail is dropped (the
    last lines are where the error is).

    Args:
        failure_class, step, reason, exit_code, signal, output_tail,
        output_source, health_output_tail: see :class:`FailureDetails`;
            ``exit_code``/``signal`` out of range are dropped.
        secrets: exact strings to remove wherever they appear (the device
            token, the application's environment values).
    """
    known = tuple(secrets)

    def clean(text: str | None, limit: int) -> str | None:
        if text is None:
            return None
        text = redact(_last_lines(text, limit), known)
        text = _UNSTORABLE.sub("\ufffd", text)
        return text[-limit:] if len(text) > limit else text

    tails = [
        clean(output_tail, MAX_OUTPUT_TAIL_CHARS),
        clean(health_output_tail, MAX_OUTPUT_TAIL_CHARS),
    ]
    if step and _STEP.fullmatch(step) is None:
        step = "other"
    if output_source is not None and _STEP.fullmatch(output_source) is None:
        output_source = None
    while True:
        candidate = FailureDetails.model_construct(
            failure_class=failure_class,
            step=step or "other",
            reason=clean(reason, MAX_REASON_CHARS) or "failed",
            exit_code=exit_code if exit_code is not None and 0 <= exit_code <= 255 else None,
            signal=signal if signal is not None and 1 <= signal <= 64 else None,
            output_tail=tails[0],
            output_source=output_source,
            health_output_tail=tails[1],
        )
        raw, compressed = failure_size(candidate)
        if raw <= MAX_FAILURE_JSON_BYTES and compressed <= MAX_FAILURE_COMPRESSED_BYTES:
            return FailureDetails.model_validate(candidate.model_dump())
        longest = 0 if len(tails[0] or "") >= len(tails[1] or "") else 1
        text = tails[longest] or ""
        tails[longest] = text[len(text) // 2 :] if len(text) > 64 else None


def _last_lines(text: str, limit: int) -> str:
    """The whole lines at the end of ``text`` within ``limit`` characters.

    Cut at a line start, never inside a line, so no ``NAME=value`` loses the
    name that makes its value a secret; a last line longer than ``limit`` is
    left out whole.
    """
    if len(text) <= limit:
        return text
    window = text[-limit:]
    newline = window.find("\n")
    if newline < 0:
        return f"[a line of {len(text)} characters was left out]"
    return window[newline + 1 :]


# -- redaction ------------------------------------------------------------------------

#: What a redacted secret is replaced with.
REDACTED = "[REDACTED]"
_WITHHELD = "[output withheld: it still contained a secret after redaction]"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]{0,64}-----.*?(?:-----END [A-Z0-9 ]{0,64}-----|\Z)", re.DOTALL
)
# A tail that starts inside a PEM block: everything up to its END line.
_PEM_CUT = re.compile(r"\A(?:(?!-----BEGIN )[\s\S])*?-----END [A-Z0-9 ]{0,64}-----")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,20}://[^\s/@:]*:)[^\s/@]+@")
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=-]{6,}")
_SECRET_WORD = (
    r"(?:key|token|secret|passw(?:or)?d|passwd|pwd|passphrase|credential|auth|cookie|session)"
)
_SECRET_WORD_ANYWHERE = re.compile(_SECRET_WORD, re.IGNORECASE)
_WORD = r"[A-Za-z0-9_.-]"
# Tried only where a word starts, and only if the word holds a secret word (the
# lookahead stays inside the word): linear in the text's length, no backtracking
# over long runs of word characters.
_ASSIGNMENT = re.compile(
    rf"(?i)(?<!{_WORD})(?={_WORD}*?{_SECRET_WORD})(?P<name>{_WORD}++)"
    r"(?P<quote>[\"']?)(?P<sep>[ \t]*[:=][ \t]*)"
    r"(?P<value>\[REDACTED\](?![^\s\"',;&}\])])|\"(?:[^\"\\\n]|\\.)*+\"?|'[^'\n]*+'?|[^\s\"',;&}\])]++)"
)
_TOKEN_SHAPES = re.compile(
    r"\b(?:"
    r"gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|sk-[A-Za-z0-9_-]{20,}"  # API keys of several services
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JSON web tokens
    r"|jvd_[A-Za-z0-9_-]{16,}|jve_[A-Za-z0-9_-]{16,}"  # javia tokens
    r")"
)
_MIN_KNOWN_SECRET_CHARS = 6


def _redact_assignment(match: re.Match[str]) -> str:
    value = match.group("value")
    quote = value[0] if value[:1] in ("'", '"') else ""
    closing = quote if quote and len(value) > 1 and value.endswith(quote) else ""
    return (
        f"{match.group('name')}{match.group('quote')}{match.group('sep')}{quote}{REDACTED}{closing}"
    )


def _redact_once(text: str, known: tuple[str, ...]) -> str:
    for secret in known:
        text = text.replace(secret, REDACTED)
    if "-----" in text:
        text = _PEM.sub("[REDACTED PEM BLOCK]", text)
        text = _PEM_CUT.sub("[REDACTED PEM BLOCK]", text)
    if "://" in text:
        text = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _TOKEN_SHAPES.sub(REDACTED, text)
    if _SECRET_WORD_ANYWHERE.search(text) is None:
        return text
    return _ASSIGNMENT.sub(_redact_assignment, text)


def _still_secret(text: str, known: tuple[str, ...]) -> bool:
    if any(secret in text for secret in known):
        return True
    if _PEM.search(text) or _PEM_CUT.search(text) or _TOKEN_SHAPES.search(text):
        return True
    if _SECRET_WORD_ANYWHERE.search(text) is None:
        return False
    if any(m.group(1) + REDACTED + "@" != m.group(0) for m in _URL_CREDENTIALS.finditer(text)):
        return True
    if any(not m.group(0).endswith(REDACTED) for m in _BEARER.finditer(text)):
        return True
    return any(_redact_assignment(m) != m.group(0) for m in _ASSIGNMENT.finditer(text))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with secrets replaced by ``[REDACTED]``.

    Removed: every occurrence of a known secret (``secrets``: the device
    token, the application's environment values; those under 6 characters
    are ignored, they would redact ordinary words); PEM blocks (``-----BEGIN
    ... PRIVATE KEY-----`` to its END line, or to the end of a cut-off text);
    the password of a URL (``https://user:pw@host``); bearer, basic and token
    authorisation values; token shapes (GitHub, GitLab, Slack, AWS key ids,
    ``sk-`` API keys, JSON web tokens, javia tokens); and the value of every
    assignment whose name says key, token, secret, password, passphrase,
    credentials, auth, cookie or session (``API_KEY=...``, ``"db_password":
    "..."``, ``Authorization: ...``), quoted or not.

    The result is checked again; a text that still holds a secret after a few
    passes (a secret overlapping the marker) is withheld whole. So no secret
    the rules name survives (``tests/test_failures.py`` checks it with
    hypothesis).

    Args:
        text: any text (an application's output, a reason).
        secrets: exact strings that must not survive.

    Returns:
        The redacted text (unchanged if nothing matched).
    """
    known = tuple(
        sorted({s for s in secrets if len(s) >= _MIN_KNOWN_SECRET_CHARS}, key=len, reverse=True)
    )
    for _ in range(4):
        text = _redact_once(text, known)
        if not _still_secret(text, known):
            return text
    return _WITHHELD


# -- causes ---------------------------------------------------------------------------

_NORMALISERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\[REDACTED[^\]]*\]"), "<secret>"),
    (
        re.compile(
            r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
        ),
        "<uuid>",
    ),
    (re.compile(r"\bv\d+\.\d+\.\d+\b"), "<version>"),
    (re.compile(r"(?:/tmp|/var/tmp|/proc)/[^\s:'\"]*"), "<path>"),
    (re.compile(r"\b(?:0x)?[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<address>"),
    (re.compile(r"\d+(?:[.,]\d+)*"), "<n>"),
    (re.compile(r"[ \t]+"), " "),
)
_CAUSE_CHARS = 300


def normalise_text(text: str) -> str:
    """``text`` with what varies between devices replaced by placeholders.

    Secrets' markers, uuids, versions, paths under ``/tmp``, ``/var/tmp`` and
    ``/proc``, hex strings of 8 or more digits, IP addresses and every number
    become ``<secret>``, ``<uuid>``, ``<version>``, ``<path>``, ``<hex>``,
    ``<address>``, ``<n>``; runs of blanks one space; at most 300 characters.
    """
    for pattern, placeholder in _NORMALISERS:
        text = pattern.sub(placeholder, text)
    return text.strip()[:_CAUSE_CHARS]


def _last_line(text: str | None) -> str:
    for line in reversed((text or "").splitlines()):
        if line.strip():
            return line
    return ""


def cause_of(
    failure_class: str | None, reason: str | None, output_tail: str | None = None
) -> tuple[str, str]:
    """The cause of a failure: (class, normalised reason | normalised last output line).

    Two failures have the same cause when their class and these normalised
    texts are equal: the same pip error on 1,000 devices with different
    versions, durations and addresses is one cause.

    Args:
        failure_class: the class (``None``: a report without a failure object,
            ``unknown``).
        reason: the agent's reason or the row's ``error_message``.
        output_tail: the application's or command's output, if any.
    """
    cause = normalise_text(_last_line(reason) if "\n" in (reason or "") else reason or "")
    last = normalise_text(_last_line(output_tail))
    if last:
        cause = f"{cause} | {last}" if cause else last
    return failure_class or "unknown", cause


# -- grouped failures (GET /api/v1/updates/{update}/failures) -----------------------


class FailureGroup(BaseModel):
    """One cause among an update's failures, with how many devices it hit.

    Attributes:
        failure_class: the class (``unknown``: reports without a failure object).
        cause: the normalised reason and last output line (:func:`cause_of`).
        count: devices whose failure has this cause.
        statuses: how many of them ended ``failed`` and ``rolled_back``.
        example_device_uuid, example_device_name: one device with this cause
            (the latest to report it).
        example: that device's failure (None: it sent only ``error_message``).
        example_reason: its reason (the failure's, else the row's message).
        last_reported_at: when the latest of them reported it (UTC).
    """

    failure_class: str
    cause: str
    count: int
    statuses: dict[str, int]
    example_device_uuid: str
    example_device_name: str | None
    example_reason: str | None
    example: FailureDetails | None
    last_reported_at: str


class FailureGroupsOut(BaseModel):
    """An update's failed and rolled back devices, grouped by cause (most devices first)."""

    update_id: int
    version: str
    total: int = Field(description="failed and rolled back devices")
    groups: list[FailureGroup]
