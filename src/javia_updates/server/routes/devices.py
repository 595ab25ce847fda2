"""Device routes: registration and lists (operator), heartbeat, check and status (device),
token revocation and rotation (operator)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from javia_core.models import (
    DeviceOut,
    DeviceRegistered,
    DeviceRegisterRequest,
    DeviceStatus,
    DeviceTagsChange,
    HeartbeatRequest,
    HeartbeatResponse,
    StatusReport,
    StatusReportResult,
    UpdateCheckResponse,
    UpdateStatus,
)
from javia_updates.backends.base import DeviceRecord
from javia_updates.metrics import count_status_report
from javia_updates.server.auth import (
    Caller,
    Registrar,
    ensure_same_device,
    get_now,
    get_service,
    require_admin,
    require_admin_or_device,
    require_admin_or_enrollment,
    require_device,
)
from javia_updates.server.fast_path import ADMITTED_SCOPE_KEY
from javia_updates.server.limits import limit_heartbeat
from javia_updates.server.schemas import DevicePage, DeviceUpdatePage
from javia_updates.service import MAX_DATABASE_INTEGER, UpdateService

router = APIRouter(prefix="/devices", tags=["devices"])

Service = Annotated[UpdateService, Depends(get_service)]
Now = Annotated[datetime, Depends(get_now)]
Admin = Annotated[Caller, Depends(require_admin)]
AnyCaller = Annotated[Caller, Depends(require_admin_or_device)]
Device = Annotated[DeviceRecord, Depends(require_device)]
DeviceUuid = Annotated[uuid.UUID, Path(description="the device's uuid")]
UpdateId = Annotated[int, Path(ge=1, le=MAX_DATABASE_INTEGER, description="the update's id")]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_DATABASE_INTEGER, description="items to skip")]


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=DeviceRegistered)
def register_device(
    body: DeviceRegisterRequest,
    service: Service,
    now: Now,
    registrar: Annotated[Registrar, Depends(require_admin_or_enrollment)],
) -> DeviceRegistered:
    """Register a device; the answer holds its token, shown this once only (409 if the uuid exists).

    The operator's ``X-API-Key``, or ``Authorization: Bearer <enrollment token>``
    (401 if it is unknown, revoked, expired or used up).
    """
    return service.register_device(body, now=now, enrollment_token=registrar.enrollment_token)


@router.get("/", response_model=DevicePage)
def list_devices(
    service: Service,
    now: Now,
    _: Admin,
    status_filter: Annotated[DeviceStatus | None, Query(alias="status")] = None,
    version: Annotated[
        str | None, Query(max_length=80, description="vX.Y.Z the device runs")
    ] = None,
    online: Annotated[bool | None, Query(description="derived status is not offline")] = None,
    tag: Annotated[
        str | None, Query(max_length=64, description="devices carrying this tag")
    ] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> DevicePage:
    """Devices in registration order; ``status`` is derived (offline after 3 silent intervals)."""
    page = service.list_devices(
        now=now,
        status=status_filter,
        version=version,
        online=online,
        tag=tag,
        limit=limit,
        offset=offset,
    )
    return DevicePage(items=page.items, total=page.total, limit=limit, offset=offset)


@router.get("/{device_uuid}", response_model=DeviceOut)
def get_device(device_uuid: DeviceUuid, service: Service, now: Now, _: Admin) -> DeviceOut:
    """One device."""
    return service.get_device(device_uuid, now=now)


@router.post("/{device_uuid}/revoke", response_model=DeviceOut)
def revoke_device_token(device_uuid: DeviceUuid, service: Service, now: Now, _: Admin) -> DeviceOut:
    """Revoke the device's token at once (it then gets 401); rotate-token re-admits it."""
    return service.revoke_device_token(device_uuid, now=now)


@router.post("/{device_uuid}/tags", response_model=DeviceOut)
def change_device_tags(
    device_uuid: DeviceUuid, body: DeviceTagsChange, service: Service, now: Now, _: Admin
) -> DeviceOut:
    """Add and remove the device's tags (idempotent, audited); it joins updates targeting a new
    tag at its next heartbeat. 404 unknown device, 409 above 32 tags, 422 a malformed tag."""
    return service.change_device_tags(device_uuid, body, now=now)


@router.post("/{device_uuid}/rotate-token", response_model=DeviceRegistered)
def rotate_device_token(
    device_uuid: DeviceUuid, service: Service, now: Now, _: Admin
) -> DeviceRegistered:
    """Issue a new device token, shown this once; the old one stops working at once."""
    return service.rotate_device_token(device_uuid, now=now)


@router.get("/{device_uuid}/updates", response_model=DeviceUpdatePage)
def device_history(
    device_uuid: DeviceUuid,
    service: Service,
    caller: AnyCaller,
    status_filter: Annotated[UpdateStatus | None, Query(alias="status")] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> DeviceUpdatePage:
    """A device's update rows, highest version first (the operator, or that device)."""
    if caller.device is not None:
        ensure_same_device(caller.device, device_uuid)
    page = service.device_history(device_uuid, status=status_filter, limit=limit, offset=offset)
    return DeviceUpdatePage(items=page.items, total=page.total, limit=limit, offset=offset)


@router.post("/{device_uuid}/heartbeat", response_model=HeartbeatResponse)
async def heartbeat(
    device_uuid: DeviceUuid,
    request: Request,
    device: Device,
    body: Annotated[HeartbeatRequest | None, Body()] = None,
) -> Response:
    """Record the device's heartbeat; answer with the server's clock and any install directive.

    429 with ``Retry-After`` when the device heartbeats far faster than the
    interval it was told (``heartbeat_burst`` per interval).

    The hot path of the server (issue 7): the ordinary heartbeat is answered
    by :class:`~javia_updates.server.fast_path.HeartbeatFastPath` before it
    reaches FastAPI; this route answers the rest (and every error). It runs
    on the event loop when no row must be written and the store's reads are
    local, otherwise in the thread pool. The soft state is written in
    batches (``heartbeat_flush_seconds``).
    """
    service: UpdateService = request.app.state.service
    now: datetime = request.app.state.clock()
    ensure_same_device(device, device_uuid)
    if not request.scope.get(ADMITTED_SCOPE_KEY):
        limit_heartbeat(request.app.state.heartbeat_limiter, device.id, now)
    report = body or HeartbeatRequest()
    answer: HeartbeatResponse | None = None
    if service.store.local_reads:
        answer = service.heartbeat_without_writes(device, report, now=now)
    if answer is None:
        answer = await run_in_threadpool(service.heartbeat, device, report, now=now)
    return Response(answer.model_dump_json(), media_type="application/json")


@router.get("/{device_uuid}/updates/check", response_model=UpdateCheckResponse)
def check_update(
    device_uuid: DeviceUuid, service: Service, now: Now, caller: AnyCaller
) -> UpdateCheckResponse:
    """The device's pending update and when it may install (the operator, or that device)."""
    if caller.device is not None:
        ensure_same_device(caller.device, device_uuid)
        device = caller.device
    else:
        device = service.find_device(device_uuid)
    return service.check_update(device, now=now)


@router.post("/{device_uuid}/updates/{update_id}/status", response_model=StatusReportResult)
async def report_status(
    device_uuid: DeviceUuid,
    update_id: UpdateId,
    body: StatusReport,
    service: Service,
    now: Now,
    device: Device,
) -> StatusReportResult:
    """The device reports progress on an update; repeated or late reports answer ``changed: false``.

    The report is committed before the answer (reports arriving together
    share one commit, see :mod:`javia_updates.backends.group_commit`).
    """
    ensure_same_device(device, device_uuid)
    result = await service.report_status_async(device, update_id, body, now=now)
    count_status_report(body.status.value)
    return result
