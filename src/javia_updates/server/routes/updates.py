"""Update routes: publish, list, plan (operator); package objects (operator or a targeted device)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from javia_core.failures import FailureGroupsOut
from javia_core.manifest import PAYLOAD_NAME
from javia_core.models import (
    RevertSource,
    RolloutCommand,
    UpdateOut,
    UpdateStatus,
    UpdateType,
    check_tags,
)
from javia_core.rollouts import (
    RolloutError,
    RolloutPolicy,
    parse_halt_failure_rate,
    parse_halt_min_devices,
    parse_phase_soak,
    parse_phases,
)
from javia_updates.backends.base import UpdateRecord
from javia_updates.server.auth import (
    Caller,
    get_now,
    get_service,
    require_admin,
    require_admin_or_device,
    run_store_read,
)
from javia_updates.server.ranges import RangeNotSatisfiableError, parse_byte_range
from javia_updates.server.schemas import DeviceUpdatePage, PlanList, PlanRequest, UpdatePage
from javia_updates.server.uploads import receive_package_upload
from javia_updates.service import (
    MAX_DATABASE_INTEGER,
    InvalidRequestError,
    PackageUpload,
    UpdateService,
)

__all__ = ["router"]

router = APIRouter(prefix="/updates", tags=["updates"])

Service = Annotated[UpdateService, Depends(get_service)]
Now = Annotated[datetime, Depends(get_now)]
Admin = Annotated[Caller, Depends(require_admin)]
AnyCaller = Annotated[Caller, Depends(require_admin_or_device)]
Reference = Annotated[
    str, Path(max_length=80, description="the update's id (e.g. 4) or version (e.g. v1.2.3)")
]


class RolloutCommandName(StrEnum):
    """The rollout commands an operator posts (docs/rollouts.md, states)."""

    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    APPROVE = "approve"
    ADVANCE = "advance"


Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_DATABASE_INTEGER, description="items to skip")]


def _parse_targets(text: str | None) -> list[uuid.UUID] | None:
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise InvalidRequestError(
            "targets is empty: give comma-separated device uuids, or omit it to update every device"
        )
    targets = []
    for item in items:
        try:
            targets.append(uuid.UUID(item))
        except ValueError:
            raise InvalidRequestError(
                f"targets: {item[:60]!r} is not a device uuid "
                "(expected e.g. 3f2b8c1e-5d4a-4e2f-9a7b-1c2d3e4f5a6b, comma-separated)"
            ) from None
    return targets


def _parse_tags(text: str | None) -> list[str] | None:
    """The publish form's ``tags``: comma-separated, each a valid tag (422 naming the bad one)."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        return check_tags(items) if items else []
    except ValueError as error:
        raise InvalidRequestError(f"tags: {error}") from None


def _parse_update_type(text: str | None) -> UpdateType | None:
    if text is None or not text.strip():
        return None
    return UpdateType.parse(text.strip())


def _parse_policy(fields: Mapping[str, str]) -> RolloutPolicy:
    """The rollout policy of the publish form (docs/rollouts.md); a 422 names the field."""
    values: dict[str, Any] = {}
    parsers: dict[str, Callable[[str], Any]] = {
        "phases": parse_phases,
        "phase_soak_seconds": lambda text: parse_phase_soak(text, bare_seconds=True),
        "halt_failure_rate": parse_halt_failure_rate,
        "halt_min_devices": parse_halt_min_devices,
        "require_approval": _boolean,
        "phase_approval": _boolean,
    }
    for name, parse in parsers.items():
        text = fields.get(name, "").strip()
        if not text:
            continue
        try:
            values[name] = parse(text)
        except RolloutError as error:
            raise InvalidRequestError(f"{name}: {error}") from None
    try:
        return RolloutPolicy(**values)
    except RolloutError as error:
        raise InvalidRequestError(str(error)) from None


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise RolloutError(f"{text[:20]!r} is not a boolean: expected true or false")


@router.get("/", response_model=UpdatePage)
def list_updates(
    service: Service,
    now: Now,
    _: Admin,
    update_type: Annotated[UpdateType | None, Query()] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> UpdatePage:
    """Published updates, highest version first, with per-status device counts and rollouts."""
    page = service.list_updates(update_type=update_type, limit=limit, offset=offset, now=now)
    return UpdatePage(items=page.items, total=page.total, limit=limit, offset=offset)


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    response_model=UpdateOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["manifest", "signature", "payload"],
                        "properties": {
                            "manifest": {"type": "string", "format": "binary"},
                            "signature": {"type": "string", "format": "binary"},
                            "payload": {"type": "string", "format": "binary"},
                            "targets": {"type": "string", "description": "comma-separated uuids"},
                            "tags": {"type": "string", "description": "comma-separated tags"},
                            "update_type": {
                                "type": "string",
                                "enum": [t.value for t in UpdateType],
                            },
                            "phases": {"type": "string", "description": "e.g. 1,10,50,100"},
                            "phase_soak_seconds": {
                                "type": "string",
                                "description": "seconds, or a duration such as 30m or 2h",
                            },
                            "halt_failure_rate": {"type": "number"},
                            "halt_min_devices": {"type": "integer"},
                            "require_approval": {"type": "boolean"},
                            "phase_approval": {"type": "boolean"},
                        },
                    }
                }
            },
        }
    },
)
async def publish_update(request: Request, service: Service, now: Now, _: Admin) -> UpdateOut:
    """Publish a signed package: multipart files manifest, signature, payload; fields targets, update_type, tags.

    ``tags``: a device carrying any of them is targeted (now and when tagged
    later); a tag no device carries is a 422.

    The payload is streamed to disk while hashed; 400 if it does not match the
    manifest, 409 if the version exists, 413 above the upload limit.
    """
    settings = service.settings
    upload_dir = await run_in_threadpool(service.upload_dir)
    received = await receive_package_upload(
        request, upload_dir=upload_dir, max_bytes=settings.max_upload_bytes
    )
    try:
        targets = _parse_targets(received.fields.get("targets"))
        update_type = _parse_update_type(received.fields.get("update_type"))
        tags = _parse_tags(received.fields.get("tags"))
        policy = _parse_policy(received.fields)
    except BaseException:
        received.payload_path.unlink(missing_ok=True)
        raise
    return await run_in_threadpool(
        service.publish_update,
        PackageUpload(
            manifest_bytes=received.manifest,
            signature_bytes=received.signature,
            payload_path=received.payload_path,
            payload_size=received.payload_size,
            payload_sha256=received.payload_sha256,
        ),
        now=now,
        targets=targets,
        update_type=update_type,
        tags=tags,
        policy=policy,
    )


@router.post("/plan", response_model=PlanList)
def plan_new_update(body: PlanRequest, service: Service, now: Now, _: Admin) -> PlanList:
    """Dry run of a publish: who would install when, and why (with the publish form's policy)."""
    policy = _parse_policy(body.policy_fields())
    return PlanList(
        items=service.plan_new_update(
            body.update_type, body.version, body.targets, now=now, tags=body.tags, policy=policy
        )
    )


@router.get("/{reference}", response_model=UpdateOut)
def get_update(reference: Reference, service: Service, now: Now, _: Admin) -> UpdateOut:
    """One update (by id or by version) with per-status device counts and its rollout."""
    return service.get_update(reference, now=now)


@router.post("/{reference}/{command}", response_model=UpdateOut)
def rollout_command(
    reference: Reference,
    command: Annotated[RolloutCommandName, Path(description="what to do with the rollout")],
    service: Service,
    now: Now,
    _: Admin,
    body: RolloutCommand | None = None,
) -> UpdateOut:
    """Pause, resume, cancel, approve or advance the update's rollout (docs/rollouts.md).

    Idempotent: a command already in effect is 200 and changes nothing. An
    illegal move (pausing a completed rollout, approving one that needs no
    approval) is 409 with one line saying what and why. Audited with the reason;
    an empty body means no reason.
    """
    reason = None if body is None else body.reason
    return service.rollout_command(reference, command.value, reason=reason, now=now)


@router.get("/{reference}/devices", response_model=DeviceUpdatePage)
def update_devices(
    reference: Reference,
    service: Service,
    _: Admin,
    status_filter: Annotated[UpdateStatus | None, Query(alias="status")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> DeviceUpdatePage:
    """Per-device progress of one update."""
    page = service.update_devices(reference, status=status_filter, limit=limit, offset=offset)
    return DeviceUpdatePage(items=page.items, total=page.total, limit=limit, offset=offset)


@router.get("/{reference}/failures", response_model=FailureGroupsOut)
def update_failures(reference: Reference, service: Service, _: Admin) -> FailureGroupsOut:
    """The update's failed and rolled back devices grouped by cause, most devices first.

    A cause is the failure's class with its reason and last output line
    normalised (numbers, versions, addresses, hashes: docs/cli.md,
    ``javia updates failures``); each group has a count and an example device.
    """
    return service.update_failures(reference)


@router.get("/{reference}/plan", response_model=PlanList)
def plan_published(reference: Reference, service: Service, now: Now, _: Admin) -> PlanList:
    """Who installs a published update when, from its rows."""
    return PlanList(items=service.plan_published(reference, now=now))


@router.get("/{reference}/revert-source", response_model=RevertSource)
def revert_source(reference: Reference, service: Service, _: Admin) -> RevertSource:
    """What a revert rolls forward to: the devices running the update and their healthy release.

    409 with one line when no device runs it or none completed an earlier
    release that was not halted or cancelled (docs/rollouts.md, "Revert").
    """
    return service.revert_source(reference)


def _readable_update(service: UpdateService, reference: str, caller: Caller) -> UpdateRecord:
    update = service.resolve_update(reference)
    if caller.device is not None and not service.device_may_read(caller.device, update.id):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"update {update.id} is not assigned to this device"
        )
    return update


async def _device_readable_update(
    service: UpdateService, reference: str, caller: Caller
) -> UpdateRecord:
    return await run_store_read(service, _readable_update, service, reference, caller)


@router.get("/{reference}/manifest", response_class=Response)
async def get_manifest(reference: Reference, service: Service, caller: AnyCaller) -> Response:
    """The exact ``manifest.json`` bytes that were signed."""
    update = await _device_readable_update(service, reference, caller)
    manifest, _signature = await run_store_read(service, service.package_documents, update)
    return Response(manifest, media_type="application/json")


@router.get("/{reference}/signature", response_class=Response)
async def get_signature(reference: Reference, service: Service, caller: AnyCaller) -> Response:
    """The exact ``manifest.sig`` bytes."""
    update = await _device_readable_update(service, reference, caller)
    _manifest, signature = await run_store_read(service, service.package_documents, update)
    return Response(signature, media_type="application/json")


@router.get("/{reference}/download", response_class=StreamingResponse)
async def download(
    reference: Reference, request: Request, service: Service, caller: AnyCaller
) -> Response:
    """``payload.tar.gz``, streamed; honours ``Range: bytes=N-`` / ``bytes=N-M`` (206) and ``If-Range``.

    The ETag is the archive's SHA-256 (the same bytes always have the same
    tag); an ``If-Range`` with another tag gets the whole object (200).
    """
    update = await _device_readable_update(service, reference, caller)
    size = update.archive_size
    etag = f'"{update.archive_sha256}"'
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Content-Disposition": f'attachment; filename="{update.version}-{PAYLOAD_NAME}"',
    }
    try:
        byte_range = parse_byte_range(request.headers.get("range"), size)
    except RangeNotSatisfiableError:
        return JSONResponse(
            {
                "detail": f"requested range is outside the payload of {size} bytes: expected bytes=N- with N < {size}"
            },
            status_code=416,
            headers={**headers, "Content-Range": f"bytes */{size}"},
        )
    if_range = request.headers.get("if-range")
    if byte_range is not None and if_range is not None and if_range.strip() != etag:
        byte_range = None
    if byte_range is None:
        chunks = await run_in_threadpool(service.payload_range, update, 0, size)
        headers["Content-Length"] = str(size)
        return StreamingResponse(chunks, media_type="application/gzip", headers=headers)
    first, last = byte_range
    chunks = await run_in_threadpool(service.payload_range, update, first, last + 1)
    headers["Content-Length"] = str(last - first + 1)
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return StreamingResponse(
        chunks,
        status_code=status.HTTP_206_PARTIAL_CONTENT,
        media_type="application/gzip",
        headers=headers,
    )
