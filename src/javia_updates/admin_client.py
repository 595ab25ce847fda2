"""HTTP client for the operator's side of the API (DESIGN.md section 6).

Used by ``javia publish``, ``javia devices``, ``javia updates`` and ``javia demo``.
Every call carries the admin key in ``X-API-Key`` and returns the route's wire
model (:mod:`javia_core.models`); ``model_dump(mode="json")`` gives back the
server's JSON. Errors become :class:`ApiError` with the HTTP status and the
server's ``detail`` message, :class:`ServerUnreachableError` when no HTTP
answer came back, or :class:`UnexpectedAnswerError` when an answer does not
fit its model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from javia_core.addresses import SERVER_URL_EXAMPLE, check_server_url
from javia_core.errors import JaviaError
from javia_core.failures import FailureGroupsOut
from javia_core.models import (
    DeviceOut,
    DeviceRegistered,
    DeviceUpdateOut,
    EnrollmentTokenCreated,
    EnrollmentTokenOut,
    PlanEntry,
    RevertSource,
    UpdateOut,
)
from javia_updates.webhooks.models import DeliveryOut, TestEventOut, WebhookCreated, WebhookOut

__all__ = ["AdminClient", "ApiError", "ServerUnreachableError", "UnexpectedAnswerError"]

ProgressCallback = Callable[[int], None]
M = TypeVar("M", bound=BaseModel)


class ApiError(JaviaError):
    """The server answered with an error status.

    Attributes:
        status_code: the HTTP status (4xx: the request was wrong; 5xx: a server bug).
        detail: the server's explanation.
    """

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"server refused ({status_code}): {detail}")
        self.status_code = status_code
        self.detail = detail


class ServerUnreachableError(JaviaError):
    """No HTTP answer: connection refused, DNS failure or timeout."""


class UnexpectedAnswerError(JaviaError):
    """A successful answer that does not fit the route's model (another server version?)."""


class _ProgressReader:
    """A read-only file wrapper that reports bytes read to ``progress``."""

    def __init__(self, handle: BinaryIO, progress: ProgressCallback | None) -> None:
        self._handle = handle
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        if chunk and self._progress is not None:
            self._progress(len(chunk))
        return chunk

    def fileno(self) -> int:
        """Lets httpx size the upload (Content-Length) without reading it."""
        return self._handle.fileno()

    def __iter__(self) -> Iterator[bytes]:  # httpx streams iterables chunk by chunk
        while chunk := self.read(64 * 1024):
            yield chunk


def _segment(value: object) -> str:
    """``value`` as one path segment: ``/``, ``..``, ``?``, ``#`` and control bytes escaped.

    An operator's argument (a device uuid, an update's version or id) can never
    become another path or a malformed URL (``updates show ../../etc`` asks for
    the update named ``../../etc`` and gets the server's 404).
    """
    text = str(value)
    quoted = quote(text, safe="")
    return quoted.replace(".", "%2E") if text in (".", "..") else quoted


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}" for item in detail
        )
    return str(detail)


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}"


class AdminClient:
    """Operator access to a javia server.

    Args:
        server_url: base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: the admin API key (``JAVIA_API_KEY`` on the server).
        timeout: seconds for connect and each read; uploads get no overall limit.
        transport: an ``httpx`` transport, for tests against an in-process app.

    Raises:
        AddressError: ``server_url`` is not ``http://`` or ``https://`` with a
            host (:func:`javia_core.addresses.check_server_url`); no request is sent.
        ServerUnreachableError: ``server_url`` is a URL httpx cannot use.
    """

    def __init__(
        self,
        server_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server_url = check_server_url(server_url)
        try:
            httpx.URL(self.server_url)
        except httpx.InvalidURL as error:
            raise ServerUnreachableError(
                f"invalid server URL {server_url[:200]!r}: {error}; "
                f"expected e.g. {SERVER_URL_EXAMPLE}"
            ) from None
        self._client = httpx.Client(
            base_url=self.server_url,
            headers={"X-API-Key": api_key},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _one(self, model: type[M], method: str, path: str, **kwargs: Any) -> M:
        """The answer to one request, parsed as ``model``."""
        body = self._request(method, path, **kwargs)
        try:
            return model.model_validate(body)
        except ValidationError as error:
            raise UnexpectedAnswerError(
                f"unexpected answer from {method} {path}: {_first_error(error)}"
            ) from None

    def _items(self, model: type[M], method: str, path: str, **kwargs: Any) -> list[M]:
        """The ``items`` of a page or list answer (or a bare list), each parsed as ``model``."""
        body = self._request(method, path, **kwargs)
        items = body["items"] if isinstance(body, dict) and "items" in body else body
        if not isinstance(items, list):
            raise UnexpectedAnswerError(f"unexpected answer from {method} {path}: expected a list")
        try:
            return [model.model_validate(item) for item in items]
        except ValidationError as error:
            raise UnexpectedAnswerError(
                f"unexpected answer from {method} {path}: {_first_error(error)}"
            ) from None

    def _request(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Any:
        """The answer's JSON (None if empty), or with ``raw`` its exact bytes."""
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ServerUnreachableError(
                f"cannot reach the javia server at {self.server_url}: {error or type(error).__name__}"
            ) from None
        except httpx.InvalidURL as error:
            raise ServerUnreachableError(
                f"invalid server URL {self.server_url!r}: {error}; expected e.g. http://127.0.0.1:8000"
            ) from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, _detail(response))
        if raw:
            return response.content
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # Devices -------------------------------------------------------------
    def list_devices(
        self, *, limit: int = 1000, offset: int = 0, **filters: Any
    ) -> list[DeviceOut]:
        """``GET /api/v1/devices/``: devices as JSON objects (see ``models.DeviceOut``)."""
        params = {
            "limit": limit,
            "offset": offset,
            **{k: v for k, v in filters.items() if v is not None},
        }
        return self._items(DeviceOut, "GET", "/api/v1/devices/", params=params)

    def get_device(self, device_uuid: str) -> DeviceOut:
        """``GET /api/v1/devices/{uuid}``."""
        return self._one(DeviceOut, "GET", f"/api/v1/devices/{_segment(device_uuid)}")

    def device_history(self, device_uuid: str) -> list[DeviceUpdateOut]:
        """``GET /api/v1/devices/{uuid}/updates``: the device's update rows, newest first."""
        return self._items(
            DeviceUpdateOut, "GET", f"/api/v1/devices/{_segment(device_uuid)}/updates"
        )

    def register_device(self, **body: Any) -> DeviceRegistered:
        """``POST /api/v1/devices/register``; the answer holds the one-time device token."""
        return self._one(DeviceRegistered, "POST", "/api/v1/devices/register", json=body)

    def revoke_device_token(self, device_uuid: str) -> DeviceOut:
        """``POST /api/v1/devices/{uuid}/revoke``: the device's token stops working at once."""
        return self._one(DeviceOut, "POST", f"/api/v1/devices/{_segment(device_uuid)}/revoke")

    def change_device_tags(
        self, device_uuid: str, *, add: Sequence[str] = (), remove: Sequence[str] = ()
    ) -> DeviceOut:
        """``POST /api/v1/devices/{uuid}/tags``: add and remove tags; the device afterwards."""
        return self._one(
            DeviceOut,
            "POST",
            f"/api/v1/devices/{_segment(device_uuid)}/tags",
            json={"add": list(add), "remove": list(remove)},
        )

    def rotate_device_token(self, device_uuid: str) -> DeviceRegistered:
        """``POST /api/v1/devices/{uuid}/rotate-token``: a new token, shown once; the old one stops working."""
        return self._one(
            DeviceRegistered, "POST", f"/api/v1/devices/{_segment(device_uuid)}/rotate-token"
        )

    # Enrollment tokens -----------------------------------------------------
    def create_enrollment_token(
        self, *, max_uses: int, expires_in_seconds: int, label: str | None = None
    ) -> EnrollmentTokenCreated:
        """``POST /api/v1/enrollment-tokens/``; the answer holds the token, shown once."""
        body: dict[str, Any] = {"max_uses": max_uses, "expires_in_seconds": expires_in_seconds}
        if label is not None:
            body["label"] = label
        return self._one(EnrollmentTokenCreated, "POST", "/api/v1/enrollment-tokens/", json=body)

    def list_enrollment_tokens(
        self, *, limit: int = 1000, offset: int = 0
    ) -> list[EnrollmentTokenOut]:
        """``GET /api/v1/enrollment-tokens/``: tokens (never the secrets), newest first."""
        params = {"limit": limit, "offset": offset}
        return self._items(EnrollmentTokenOut, "GET", "/api/v1/enrollment-tokens/", params=params)

    def revoke_enrollment_token(self, token_id: int) -> EnrollmentTokenOut:
        """``POST /api/v1/enrollment-tokens/{id}/revoke``."""
        return self._one(
            EnrollmentTokenOut, "POST", f"/api/v1/enrollment-tokens/{_segment(token_id)}/revoke"
        )

    # Webhooks (docs/webhooks.md) -----------------------------------------
    def add_webhook(self, url: str, events: list[str]) -> WebhookCreated:
        """``POST /api/v1/webhooks/``: the new webhook with its secret (shown once)."""
        body = {"url": url, "events": events}
        return self._one(WebhookCreated, "POST", "/api/v1/webhooks/", json=body)

    def list_webhooks(self) -> list[WebhookOut]:
        """``GET /api/v1/webhooks/``: webhooks with deliveries by state."""
        return self._items(WebhookOut, "GET", "/api/v1/webhooks/")

    def remove_webhook(self, webhook_id: int) -> None:
        """``DELETE /api/v1/webhooks/{id}``."""
        self._request("DELETE", f"/api/v1/webhooks/{_segment(webhook_id)}")

    def test_webhook(self, webhook_id: int) -> TestEventOut:
        """``POST /api/v1/webhooks/{id}/test``: queue a test event."""
        return self._one(TestEventOut, "POST", f"/api/v1/webhooks/{_segment(webhook_id)}/test")

    def webhook_deliveries(self, webhook_id: int | None, *, limit: int = 50) -> list[DeliveryOut]:
        """``GET /api/v1/webhooks/deliveries``: newest first, with attempts."""
        params: dict[str, int] = {"limit": limit}
        if webhook_id is not None:
            params["webhook_id"] = webhook_id
        return self._items(DeliveryOut, "GET", "/api/v1/webhooks/deliveries", params=params)

    # Updates -------------------------------------------------------------
    def list_updates(self, *, limit: int = 1000, offset: int = 0) -> list[UpdateOut]:
        """``GET /api/v1/updates/``: published updates with per-status counts."""
        params = {"limit": limit, "offset": offset}
        return self._items(UpdateOut, "GET", "/api/v1/updates/", params=params)

    def get_update(self, update: str | int) -> UpdateOut:
        """``GET /api/v1/updates/{id or vX.Y.Z}``."""
        return self._one(UpdateOut, "GET", f"/api/v1/updates/{_segment(update)}")

    def update_devices(self, update: str | int) -> list[DeviceUpdateOut]:
        """``GET /api/v1/updates/{id}/devices``: per-device progress rows."""
        return self._items(
            DeviceUpdateOut,
            "GET",
            f"/api/v1/updates/{_segment(update)}/devices",
            params={"limit": 1000},
        )

    def update_failures(self, update: str | int) -> FailureGroupsOut:
        """``GET /api/v1/updates/{id}/failures``: failed devices grouped by cause."""
        return self._one(FailureGroupsOut, "GET", f"/api/v1/updates/{_segment(update)}/failures")

    def rollout_command(self, reference: str, action: str, reason: str | None) -> UpdateOut:
        """``POST /api/v1/updates/{reference}/{action}``: pause, resume, cancel, approve or advance.

        Args:
            reference: the update's id or version (``v1.5.0``).
            action: ``pause``, ``resume``, ``cancel``, ``approve`` or ``advance``.
            reason: the operator's words for the audit log, or None.

        Returns:
            The update with its rollout after the command (unchanged when the
            command was already in effect).

        Raises:
            ApiError: 409 with one line when the rollout's state refuses the
                move, 404 for an unknown update.
        """
        return self._one(
            UpdateOut,
            "POST",
            f"/api/v1/updates/{_segment(reference)}/{_segment(action)}",
            json={"reason": reason},
        )

    def plan_update(self, update: str | int) -> list[PlanEntry]:
        """``GET /api/v1/updates/{id}/plan``: who installs a published update, when and why."""
        return self._items(PlanEntry, "GET", f"/api/v1/updates/{_segment(update)}/plan")

    def revert_source(self, update: str | int) -> RevertSource:
        """``GET /api/v1/updates/{id or vX.Y.Z}/revert-source``: what a revert rolls forward to.

        Raises:
            ApiError: 409 when no device runs the update or none has a healthy earlier release.
        """
        return self._one(RevertSource, "GET", f"/api/v1/updates/{_segment(update)}/revert-source")

    def download_package(
        self, update: str | int, directory: Path, progress: ProgressCallback | None = None
    ) -> Path:
        """Download a published package (manifest, signature, payload) into ``directory``.

        Writes ``manifest.json``, ``manifest.sig`` and ``payload.tar.gz`` there
        exactly as stored (nothing is verified here); ``progress(n)`` is called
        with each payload chunk's size in bytes.

        Returns:
            ``directory``.

        Raises:
            ApiError: the update does not exist (404) or the server failed.
            ServerUnreachableError: the connection failed.
        """
        from javia_core.manifest import MANIFEST_NAME, PAYLOAD_NAME, SIGNATURE_NAME

        base = f"/api/v1/updates/{_segment(update)}"
        directory.mkdir(parents=True, exist_ok=True)
        for name, route in ((MANIFEST_NAME, "manifest"), (SIGNATURE_NAME, "signature")):
            (directory / name).write_bytes(self._request("GET", f"{base}/{route}", raw=True))
        try:
            with (
                self._client.stream("GET", f"{base}/download", timeout=None) as response,
                (directory / PAYLOAD_NAME).open("wb") as payload,
            ):
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(response.status_code, _detail(response))
                for chunk in response.iter_bytes(64 * 1024):
                    payload.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
        except httpx.TransportError as error:
            raise ServerUnreachableError(
                f"download from {self.server_url} broke off: {error or type(error).__name__}"
            ) from None
        return directory

    def plan_new_update(
        self,
        *,
        update_type: str,
        version: str,
        targets: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
        rollout: Mapping[str, str] | None = None,
    ) -> list[PlanEntry]:
        """``POST /api/v1/updates/plan``: the dry run of a publish.

        ``rollout``: the policy fields as the publish form carries them
        (``{"phases": "1,100", "require_approval": "true"}``).
        """
        payload: dict[str, Any] = {
            "update_type": update_type,
            "version": version,
            **(rollout or {}),
        }
        if targets:
            payload["targets"] = list(targets)
        if tags:
            payload["tags"] = list(tags)
        return self._items(PlanEntry, "POST", "/api/v1/updates/plan", json=payload)

    def publish(
        self,
        *,
        manifest_path: Path,
        signature_path: Path,
        payload_path: Path,
        update_type: str | None = None,
        targets: Sequence[str] | None = None,
        progress: ProgressCallback | None = None,
        tags: Sequence[str] | None = None,
        rollout: Mapping[str, str] | None = None,
    ) -> UpdateOut:
        """``POST /api/v1/updates/``: upload the three package objects.

        The payload is streamed from disk; ``progress(n)`` is called with each
        chunk's size in bytes. ``rollout``: the policy's form fields
        (``phases``, ``phase_soak_seconds``, ``halt_failure_rate``,
        ``halt_min_devices``, ``require_approval``, ``phase_approval``), as text.

        Raises:
            ApiError: 409 when the version exists, 400/422 for a bad package.
            ServerUnreachableError: when the upload could not be sent.
        """
        data: dict[str, str] = {}
        if update_type:
            data["update_type"] = update_type
        if targets:
            data["targets"] = ",".join(targets)
        if tags:
            data["tags"] = ",".join(tags)
        data.update(rollout or {})
        with payload_path.open("rb") as payload:
            files = {
                "manifest": ("manifest.json", manifest_path.read_bytes(), "application/json"),
                "signature": ("manifest.sig", signature_path.read_bytes(), "application/json"),
                "payload": (
                    payload_path.name,
                    _ProgressReader(payload, progress),
                    "application/gzip",
                ),
            }
            return self._one(
                UpdateOut,
                "POST",
                "/api/v1/updates/",
                data=data,
                files=files,
                timeout=httpx.Timeout(self._client.timeout.connect, read=None, write=None),
            )

    @staticmethod
    def file_size(path: Path) -> int:
        """Size of ``path`` in bytes (for progress bars)."""
        return os.stat(path).st_size
