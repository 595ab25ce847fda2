"""The FastAPI application (DESIGN.md section 6): ``create_app(settings)``.

Start-up builds the backend named in the settings, creates its directories,
runs the database migrations and refuses to start without an admin API key.
Request bodies are capped (413) and heartbeats rate-limited per device (429),
see :mod:`javia_updates.server.limits`. Ordinary heartbeats are answered by
:mod:`javia_updates.server.fast_path` before FastAPI; heartbeat soft state is
written in batches (:mod:`javia_updates.backends.soft_state`), flushed at
shutdown. Held wake-up requests (:mod:`javia_updates.server.wakeup`) receive
the notices of the wake-up bus from start-up and are answered at shutdown.
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
from javia_core.wakeup import WakeupReason
from javia_updates import __version__
from javia_updates.backends import Backend, create_backend
from javia_updates.backends.wakeup_bus import WakeupNotice
from javia_updates.dashboard import install_dashboard
from javia_updates.server.download_slots import DownloadCounters, DownloadSlotsMiddleware
from javia_updates.server.errors import install_error_handlers
from javia_updates.server.fast_path import HeartbeatFastPath
from javia_updates.server.limits import HeartbeatRateLimiter, RequestBodyLimitMiddleware
from javia_updates.server.metrics import RequestMetrics
from javia_updates.server.metrics import router as metrics_router
from javia_updates.server.routes import (
    audit,
    devices,
    enrollment,
    health,
    objects,
    updates,
    webhooks,
)
from javia_updates.server.wakeup import WakeupHub
from javia_updates.server.wakeup import router as wakeup_router
from javia_updates.server.webhooks import webhook_deliverer
from javia_updates.service import API_PREFIX, UpdateService
from javia_updates.service.admission import InstallAdmission
from javia_updates.settings import ServerSettings

__all__ = ["create_app", "utc_now"]

logger = logging.getLogger(__name__)

#: How often the event loop's lag is sampled for install admission, seconds.
LOOP_LAG_PERIOD_SECONDS = 0.05
#: How often devices refused by install admission are woken at its pace, seconds.
ADMISSION_WAKE_PERIOD_SECONDS = 0.5


def utc_now() -> datetime:
    """The real clock: now, aware UTC."""
    return datetime.now(UTC)


def create_app(
    settings: ServerSettings,
    *,
    clock: Callable[[], datetime] | None = None,
    backend: Backend | None = None,
    prepare: bool = True,
    shared_database: bool = False,
) -> FastAPI:
    """Build the server application.

    Args:
        settings: server settings; ``api_key`` must be set.
        clock: returns the current aware UTC time; tests inject a fixed one.
        backend: an already built backend (default: the one named in settings);
            it is prepared (directories, migrations) here unless ``prepare`` is
            False.
        prepare: False when the caller prepared the backend already (the
            supervisor of ``--workers``, :mod:`javia_updates.server.workers`).
        shared_database: other processes of this server (its workers) write
            the same database: every cached device is confirmed with it at
            each request, as on a database shared by replicas
            (``store.exclusive`` False, docs/architecture.md "Processes").

    Returns:
        The FastAPI app; OpenAPI docs at ``/docs``.

    Raises:
        SettingsError: no admin API key is configured, or the dashboard's session
            secret cannot be kept in ``data_dir``.
        BackendError: the backend is unknown or its storage cannot be prepared.
        SigningKeyError: ``trusted_keys_dir`` is set but cannot be read.
    """
    api_key = settings.require_api_key()
    backend = backend if backend is not None else create_backend(settings)
    if prepare:
        backend.prepare()
    if shared_database:
        backend.store.exclusive = False
    service = UpdateService(backend, settings)

    now_of = clock or utc_now
    wakeups = WakeupHub(
        hold_seconds=settings.wakeup_hold_seconds,
        admissions_per_second=settings.wakeup_admissions_per_second,
        reconnect_seconds=settings.wakeup_reconnect_seconds,
    )

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

    deliverer = webhook_deliverer(service, settings, now_of)

    async def watch_loop_lag(admission: InstallAdmission) -> None:
        """Every 50 ms: how late the event loop woke this task (install admission's signal)."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(LOOP_LAG_PERIOD_SECONDS)
            admission.observe_loop_lag(loop.time() - asked - LOOP_LAG_PERIOD_SECONDS)

    async def wake_waiting_devices(admission: InstallAdmission) -> None:
        """Twice a second: wake the devices install admission refused, at its pace."""
        while True:
            await asyncio.sleep(ADMISSION_WAKE_PERIOD_SECONDS)
            waiting = admission.devices_to_wake(ADMISSION_WAKE_PERIOD_SECONDS)
            if waiting:
                service.wakeups.notify_devices(
                    WakeupReason.UPDATE, waiting, spread_seconds=ADMISSION_WAKE_PERIOD_SECONDS
                )

    def on_wakeup(notice: WakeupNotice) -> None:
        """A notice from any process: this process's catalog sees the change first, so the
        devices it wakes (behind a balancer, on any replica) find it at their heartbeat."""
        if notice.reason in (WakeupReason.UPDATE, WakeupReason.ROLLOUT):
            service.records.rollout_changed(rows=notice.reason is WakeupReason.ROLLOUT)
        wakeups.deliver(notice)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        wakeups.attach(asyncio.get_running_loop())
        wakeups.chain_sigterm()  # held requests end at once on a graceful stop
        service.wakeups.bus.start(on_wakeup)
        evaluation = asyncio.create_task(evaluate_rollouts())
        delivery = asyncio.create_task(deliverer.run_forever())
        tasks = [evaluation, delivery]
        if service.install_admission is not None:
            tasks.append(asyncio.create_task(watch_loop_lag(service.install_admission)))
            tasks.append(asyncio.create_task(wake_waiting_devices(service.install_admission)))
        try:
            yield
        finally:
            wakeups.close_all()
            service.wakeups.bus.close()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
    app.state.webhooks = deliverer.store
    app.state.wakeups = wakeups
    app.state.heartbeat_limiter = HeartbeatRateLimiter(
        burst=settings.heartbeat_burst, interval_seconds=settings.heartbeat_interval_seconds
    )
    install_error_handlers(app)
    app.state.download_counters = DownloadCounters()
    for module in (health, devices, updates, objects, audit, enrollment, webhooks):
        app.include_router(module.router, prefix=API_PREFIX)
    install_dashboard(
        app,
        service,
        api_key=api_key,
        data_dir=settings.data_dir,
        clock=now_of,
        configured_secret=(
            settings.dashboard_secret.get_secret_value() if settings.dashboard_secret else None
        ),
        keep_on_disk=settings.backend == "local",
    )
    app.include_router(wakeup_router, prefix=API_PREFIX)
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
    app.include_router(metrics_router)  # GET /metrics, outside the API prefix (docs/metrics.md)
    # outermost: times the fast path's heartbeats too, and counts them in progress
    app.add_middleware(RequestMetrics, admission=service.install_admission)
    return app
