"""Delta routes: a package's delta index, per-file objects, patches; the download counters.

- ``GET /api/v1/updates/{ref}/delta-index`` (admin or a targeted device): the
  :class:`~javia_core.deltas.DeltaIndex` stored at publish; 404 for a package
  published before per-file objects existed (devices then download the archive).
- ``GET /api/v1/objects/{sha256}`` (admin or any device): one file's bytes as a
  zstd frame (``application/zstd``).
- ``GET /api/v1/patches/{base}/{target}`` (admin or any device): ``target``
  as a zstd frame against ``base`` as raw-content dictionary.
- ``GET /api/v1/downloads/stats`` (admin): this process's package downloads
  in flight, refused (503) and bytes sent per kind.

Objects and patches are named by SHA-256; their bytes are checked on the
device against the signed manifest, so these routes need no per-update
authorization beyond a device token: a device could only ask for a file it
can already name by its hash.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from javia_core.deltas import DELTA_INDEX_NAME
from javia_updates.delta_objects import OBJECT_NAME, PATCH_NAME, object_key, patch_key
from javia_updates.server.auth import (
    Caller,
    get_service,
    require_admin,
    require_admin_or_device,
)
from javia_updates.server.download_slots import DownloadCounters
from javia_updates.server.routes.updates import _device_readable_update
from javia_updates.service import UpdateService

__all__ = ["router"]

router = APIRouter(tags=["deltas"])

Service = Annotated[UpdateService, Depends(get_service)]
AnyCaller = Annotated[Caller, Depends(require_admin_or_device)]
Sha256 = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="a SHA-256, 64 hex digits")]
Reference = Annotated[
    str, Path(max_length=80, description="the update's id (e.g. 4) or version (e.g. v1.2.3)")
]


@router.get("/updates/{reference}/delta-index", response_class=Response)
async def delta_index(reference: Reference, service: Service, caller: AnyCaller) -> Response:
    """The package's delta index (JSON); 404 when it has none (published without objects)."""
    update = await _device_readable_update(service, reference, caller)
    blobs = service.blobs

    def read() -> bytes:
        size = blobs.size(update.package_url, DELTA_INDEX_NAME)
        return b"".join(blobs.iter_range(update.package_url, DELTA_INDEX_NAME, 0, size))

    return Response(await run_in_threadpool(read), media_type="application/json")


async def _stream(service: UpdateService, key: str, name: str) -> Response:
    blobs = service.blobs
    size = await run_in_threadpool(blobs.size, key, name)
    chunks = await run_in_threadpool(blobs.iter_range, key, name, 0, size)
    return StreamingResponse(
        chunks,
        media_type="application/zstd",
        headers={"Content-Length": str(size), "Cache-Control": "private, max-age=31536000"},
    )


@router.get("/objects/{sha256}", response_class=StreamingResponse)
async def get_object(sha256: Sha256, service: Service, _: AnyCaller) -> Response:
    """One file as a zstd frame; 404 when the server holds no such object."""
    return await _stream(service, object_key(sha256), OBJECT_NAME)


@router.get("/patches/{base}/{target}", response_class=StreamingResponse)
async def get_patch(base: Sha256, target: Sha256, service: Service, _: AnyCaller) -> Response:
    """``target`` as a zstd frame against the file ``base`` (``--patch-from``); 404 if absent."""
    return await _stream(service, patch_key(base, target), PATCH_NAME)


@router.get("/downloads/stats")
async def download_stats(request: Request, _: Annotated[Caller, Depends(require_admin)]) -> Any:
    """This process's package downloads: in flight, refused with 503, requests and bytes per kind."""
    counters: DownloadCounters = request.app.state.download_counters
    return counters.snapshot()
