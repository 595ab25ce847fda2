"""Receive a publish request's multipart body without holding the payload in memory.

The payload part is streamed into a temporary file in the blob store's upload
directory (same file system as the packages, so storing it is a rename) while
its SHA-256 and size are computed; the manifest and signature parts are small
and kept in memory up to their documented limits. The whole body is capped at
``max_upload_bytes`` (413 beyond), checked against ``Content-Length`` before
reading and counted while reading.

Form parts (``multipart/form-data``, RFC 7578):

========== ======== ===============================================
name       kind     content
========== ======== ===============================================
manifest   file     ``manifest.json`` (at most 16 MiB)
signature  file     ``manifest.sig`` (at most 4 KiB)
payload    file     ``payload.tar.gz``
targets    field    comma-separated device uuids (absent: every device)
update_type field   scheduled, urgent or instant (must equal the signed type)
tags       field    comma-separated device tags (a device with any of them)
phases, phase_soak_seconds, halt_failure_rate, halt_min_devices,
require_approval, phase_approval: fields, the rollout policy (docs/rollouts.md)
========== ======== ===============================================
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from javia_core.errors import JaviaError
from javia_core.manifest import MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES

__all__ = ["ReceivedUpload", "UploadError", "UploadTooLargeError", "receive_package_upload"]

FILE_PARTS = ("manifest", "signature", "payload")
#: The rollout policy's fields (docs/rollouts.md), all optional.
ROLLOUT_FIELD_PARTS = (
    "phases",
    "phase_soak_seconds",
    "halt_failure_rate",
    "halt_min_devices",
    "require_approval",
    "phase_approval",
)
FIELD_PARTS = ("targets", "update_type", "tags", *ROLLOUT_FIELD_PARTS)
MAX_FIELD_BYTES = 4 * 1024 * 1024
_LIMITS = {"manifest": MAX_MANIFEST_BYTES, "signature": MAX_SIGNATURE_BYTES}
_EXPECTED_PARTS = (
    "expected multipart/form-data with files manifest (manifest.json), signature "
    "(manifest.sig) and payload (payload.tar.gz), and optional fields targets, update_type, "
    "tags and the rollout's " + ", ".join(ROLLOUT_FIELD_PARTS)
)


class UploadError(JaviaError, ValueError):
    """The publish request's body is not the expected multipart form (HTTP 422)."""


class UploadTooLargeError(JaviaError):
    """The request body, or one part of it, is larger than allowed (HTTP 413)."""


@dataclass
class ReceivedUpload:
    """A received publish form. ``payload_path`` is a temporary file the caller must consume."""

    manifest: bytes
    signature: bytes
    payload_path: Path
    payload_size: int
    payload_sha256: str
    fields: dict[str, str] = field(default_factory=dict)


class _Receiver:
    """Callbacks for :class:`MultipartParser`; collects parts, spools the payload."""

    def __init__(self, upload_dir: Path) -> None:
        self.upload_dir = upload_dir
        self.parts: dict[str, bytearray] = {}
        self.seen: set[str] = set()
        self.payload_file: BinaryIO | None = None
        self.payload_path: Path | None = None
        self.payload_size = 0
        self.digest = hashlib.sha256()
        self.pending_payload: list[bytes] = []
        self.finished = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._current: str | None = None

    # parser callbacks ------------------------------------------------------
    def on_part_begin(self) -> None:
        self._headers = {}
        self._current = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").strip().lower()] = bytes(
            self._header_value
        )
        self._header_field = bytearray()
        self._header_value = bytearray()

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get("content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise UploadError(f"a form part has no Content-Disposition name: {_EXPECTED_PARTS}")
        name = options[b"name"].decode("utf-8", "replace")
        if name not in FILE_PARTS + FIELD_PARTS:
            raise UploadError(f"unexpected form part {name[:40]!r}: {_EXPECTED_PARTS}")
        if name in self.seen:
            raise UploadError(f"form part {name!r} is given twice: send it once")
        self.seen.add(name)
        self._current = name
        if name == "payload":
            descriptor, temp_name = tempfile.mkstemp(
                prefix="payload-", suffix=".part", dir=self.upload_dir
            )
            self.payload_file = os.fdopen(descriptor, "wb")
            self.payload_path = Path(temp_name)
        else:
            self.parts[name] = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        name = self._current
        if name is None:
            return
        chunk = data[start:end]
        if name == "payload":
            self.pending_payload.append(bytes(chunk))
            return
        buffer = self.parts[name]
        buffer += chunk
        limit = _LIMITS.get(name, MAX_FIELD_BYTES)
        if len(buffer) > limit:
            raise UploadTooLargeError(f"form part {name!r} is larger than {limit} bytes")

    def on_part_end(self) -> None:
        self._current = None

    def on_end(self) -> None:
        self.finished = True

    # payload spooling ------------------------------------------------------
    def flush_payload(self) -> None:
        """Hash and write what the parser handed over (run in a worker thread)."""
        if not self.pending_payload:
            return
        assert self.payload_file is not None
        for chunk in self.pending_payload:
            self.digest.update(chunk)
            self.payload_file.write(chunk)
            self.payload_size += len(chunk)
        self.pending_payload = []

    def close(self, *, discard: bool) -> None:
        if self.payload_file is not None:
            self.payload_file.close()
        if discard and self.payload_path is not None:
            self.payload_path.unlink(missing_ok=True)


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        raise UploadError(
            f"wrong Content-Type {content_type.decode('latin-1')[:60]!r}: {_EXPECTED_PARTS}"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(f"the multipart Content-Type has no boundary: {_EXPECTED_PARTS}")
    return boundary


async def receive_package_upload(
    request: Request, *, upload_dir: Path, max_bytes: int
) -> ReceivedUpload:
    """Read a publish form from ``request``, spooling the payload to ``upload_dir``.

    Args:
        request: the incoming request (its body is consumed).
        upload_dir: directory for the payload's temporary file.
        max_bytes: largest accepted body in bytes.

    Returns:
        The parts; the caller owns (and must consume or delete) ``payload_path``.

    Raises:
        UploadError: not multipart/form-data, malformed, a part missing,
            unknown or repeated, or a field that is not UTF-8.
        UploadTooLargeError: the body is larger than ``max_bytes`` or a part
            larger than its limit.
    """
    limit_text = f"{max_bytes} bytes ({max_bytes / 1024**3:.2f} GiB)"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise UploadTooLargeError(f"upload of {declared} bytes exceeds the limit of {limit_text}")
    boundary = _boundary(request)
    receiver = _Receiver(upload_dir)
    try:
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": receiver.on_part_begin,
                "on_part_data": receiver.on_part_data,
                "on_part_end": receiver.on_part_end,
                "on_header_field": receiver.on_header_field,
                "on_header_value": receiver.on_header_value,
                "on_header_end": receiver.on_header_end,
                "on_headers_finished": receiver.on_headers_finished,
                "on_end": receiver.on_end,
            },
        )
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise UploadTooLargeError(f"upload exceeds the limit of {limit_text}")
            parser.write(chunk)
            if receiver.pending_payload:
                await run_in_threadpool(receiver.flush_payload)
        parser.finalize()
        if not receiver.finished:
            raise UploadError(
                f"the multipart body ended before its closing boundary: {_EXPECTED_PARTS}"
            )
        missing = [name for name in FILE_PARTS if name not in receiver.seen]
        if missing:
            raise UploadError(f"missing form part {', '.join(missing)}: {_EXPECTED_PARTS}")
        assert receiver.payload_file is not None and receiver.payload_path is not None
        await run_in_threadpool(receiver.flush_payload)
        fields: dict[str, str] = {}
        for name in FIELD_PARTS:
            if name in receiver.parts:
                try:
                    fields[name] = receiver.parts[name].decode("utf-8")
                except UnicodeDecodeError:
                    raise UploadError(f"form field {name!r} is not UTF-8 text") from None
    except FormParserError as error:
        receiver.close(discard=True)
        raise UploadError(f"malformed multipart body ({error}): {_EXPECTED_PARTS}") from None
    except BaseException:
        receiver.close(discard=True)
        raise
    receiver.close(discard=False)
    return ReceivedUpload(
        manifest=bytes(receiver.parts["manifest"]),
        signature=bytes(receiver.parts["signature"]),
        payload_path=receiver.payload_path,
        payload_size=receiver.payload_size,
        payload_sha256=receiver.digest.hexdigest(),
        fields=fields,
    )
