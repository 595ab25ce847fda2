"""The FastAPI application (DESIGN.md section 6): ``create_app(settings)``.

Start-up builds the backend named in the settings, creates its directories,
runs the database migrations and refuses to start without an admin API key.
Request bodies are capped (413) and heartbeats rate-limited per device (429),
see :mod:`javia_updates.server.limits`. Ordinary heartbeats are answered by
:mod:`javia_updates.server.fast_path` before FastAPI; heartbeat soft state is
written in batches (:mod:`javia_updates.backends.soft_state`), flushed at
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI

from javia_core.errors import BackendError
from javia_updates import __version__
from javia_updates.backends import Backend, create_backend
from javia_updates.server.download_slots import DownloadCounters, DownloadSlotsMiddleware
from javia_updates.server.errors import install_error_handlers
from javia_updates.server.fast_path import HeartbeatFastPath
from javia_updates.server.limits import HeartbeatRateLimiter, RequestBodyLimitMiddleware
from javia_updates.server.routes import audit, devices, enrollment, health, objects, updates
from javia_updates.service import API_PREFIX, UpdateService
from javia_updates.settings import ServerSettings

__all__ = ["create_app", "utc_now"]

logger = logging.getLogger(__name__)


def utc_now() -> datetime:
    """The real clock: now, aware UTC."""
    return datetime.now(UTC)


def create_app(
    settings: ServerSettings,
    *,
    clock: Callable[[], datetime] | None = None,
    backend: Backend | None = None,
) -> FastAPI:
    """Build the server application.

    Args:
        settings: server settings; ``api_key`` must be set.
        clock: returns the current aware UTC time; tests inject a fixed one.
        backend: an already built backend (default: the one named in settings);
            it is prepared (directories, migrations) here either way.

    Returns:
        The FastAPI app; OpenAPI docs at ``/docs``.

    Raises:
        SettingsError: no admin API key is configured.
        BackendError: the backend is unknown or its storage cannot be prepared.
        SigningKeyError: ``trusted_keys_dir`` is set but cannot be read.
    """
    api_key = settings.require_api_key()
    backend = backend if backend is not None else create_backend(settings)
    backend.prepare()
    service = UpdateService(backend, settings)

    now_of = clock or utc_now

    async def evaluate_rollouts() -> None:
        """Every ``rollout_evaluation_seconds``: soaks, silent devices, phase gates (docs/rollouts.md)."""
        while True:
            await asyncio.sleep(settings.rollout_evaluation_seconds)
            try:
                await asyncio.to_thread(service.evaluate_rollouts, now=now_of())
            except BackendError as error:
                logger.warning("evaluating rollouts failed (the next run retries): %s", error)
            except Exception:  # the task must outlive one bad evaluation
                logger.exception("evaluating rollouts failed (the next run retries)")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        evaluation = asyncio.create_task(evaluate_rollouts())
        try:
            yield
        finally:
            evaluation.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await evaluation
            try:
                service.close()  # the last batch of heartbeat soft state
            except BackendError as error:
                logger.error("writing the last heartbeats failed: %s", error)
            backend.close()

    app = FastAPI(
        title="javia update server",
        version=__version__,
        description="Over-the-air updates for a fleet of Raspberry Pi voice assistants.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.clock = now_of
    app.state.api_key = api_key
    app.state.heartbeat_limiter = HeartbeatRateLimiter(
        burst=settings.heartbeat_burst, interval_seconds=settings.heartbeat_interval_seconds
    )
    install_error_handlers(app)
    app.state.download_counters = DownloadCounters()
    for module in (health, devices, updates, objects, audit, enrollment):
        app.include_router(module.router, prefix=API_PREFIX)
    app.add_middleware(
        RequestBodyLimitMiddleware,
        max_bytes=settings.max_request_body_bytes,
        upload_max_bytes=settings.max_upload_bytes,
        upload_paths=(f"{API_PREFIX}/updates/", f"{API_PREFIX}/updates"),
    )
    app.add_middleware(
        DownloadSlotsMiddleware,
        limit=settings.max_concurrent_downloads,
        retry_after_seconds=settings.download_busy_retry_seconds,
        api_prefix=API_PREFIX,
        counters=app.state.download_counters,
    )
    app.add_middleware(  # added last: runs first, before the body limit and routing
        HeartbeatFastPath,
        service=service,
        limiter=app.state.heartbeat_limiter,
        clock=app.state.clock,
        max_body_bytes=settings.max_request_body_bytes,
    )
    return app
