"""``GET /metrics``: the Prometheus text format (docs/metrics.md).

Two kinds of numbers:

* the process's counters and histograms (:mod:`javia_updates.metrics`):
  heartbeats and status reports received, request latencies by route
  template, package bytes sent, group-commit transactions. With several
  worker processes they are summed over every worker
  (``prometheus_client``'s multiprocess mode, set up by
  :func:`javia_updates.metrics.prepare_metrics_directory`);
* the fleet, read from the database at scrape time by :class:`FleetCollector`
  with aggregate queries (``GROUP BY``; no device row is loaded): devices by
  status and version, each update's device rows by status and its rollout's
  state and phase.

Readable with the admin key (``X-API-Key``) or the read-only metrics token
(``Authorization: Bearer <JAVIA_METRICS_TOKEN>``), both compared in constant
time; anything else is 401. :class:`RequestMetrics` is the ASGI middleware
that times every request by its route template (never the raw path, whose
uuids would make one series per device).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import case, func, literal, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from javia_core.models import DeviceStatus
from javia_updates import metrics
from javia_updates.backends.sql.common import SQLStoreBase
from javia_updates.server.download_slots import download_kind
from javia_updates.service import API_PREFIX, UpdateService
from javia_updates.service.admission import InstallAdmission
from javia_updates.service.views import offline_before

__all__ = [
    "DOWNLOAD_ROUTE",
    "HEARTBEAT_ROUTE",
    "FleetCollector",
    "RequestMetrics",
    "counts_for_admission",
    "router",
    "scrape",
]

#: Route templates the middleware counts specially.
HEARTBEAT_ROUTE = f"{API_PREFIX}/devices/{{device_uuid}}/heartbeat"
DOWNLOAD_ROUTE = f"{API_PREFIX}/updates/{{reference}}/download"
#: The newest updates whose rollouts are shown (older ones are history: their rows
#: would make every scrape read a row per device per release ever published).
UPDATES_SHOWN = 20
#: ``javia_devices``'s status for a device whose token is revoked (``javia devices list`` says so).
REVOKED_STATUS = "revoked"
#: The route label of a request no route matched (404s of scanners, typos).
UNMATCHED_ROUTE = "unmatched"

router = APIRouter(tags=["metrics"])


def _authorized(request: Request) -> bool:
    """The admin key in ``X-API-Key`` or the metrics token as a bearer, compared in constant time."""
    api_key = request.headers.get("x-api-key")
    if api_key is not None:
        expected: str = request.app.state.api_key
        return hmac.compare_digest(api_key.encode("utf-8"), expected.encode("utf-8"))
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = request.app.state.settings.metrics_token
    if scheme.lower() != "bearer" or token is None or not credentials.strip():
        return False
    return hmac.compare_digest(
        credentials.strip().encode("utf-8"), token.get_secret_value().encode("utf-8")
    )


@router.get("/metrics", response_class=Response)
def get_metrics(request: Request) -> Response:
    """The Prometheus text format; 401 without the admin key or the metrics token."""
    if not _authorized(request):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "metrics need X-API-Key (admin) or 'Authorization: Bearer <metrics token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    service: UpdateService = request.app.state.service
    body = scrape(service, now=request.app.state.clock())
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def scrape(service: UpdateService, *, now: datetime) -> bytes:
    """One scrape's exposition: every worker's counters and the fleet at ``now``.

    Raises:
        BackendError: the database cannot be read.
    """
    service.flush_soft_state()  # the heartbeats answered so far count in last_seen
    registry = CollectorRegistry(auto_describe=False)
    if metrics.multiprocess_directory() is not None:
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ProcessRecorders())
    registry.register(FleetCollector(service, now=now))
    return generate_latest(registry)


class _ProcessRecorders:
    """This process's recorders, when no multiprocess directory is set."""

    def collect(self) -> Iterator[Metric]:
        yield from metrics.recorders().registry.collect()


class FleetCollector:
    """The fleet at scrape time, from three aggregate queries (names: docs/metrics.md).

    Rollout gauges cover the :data:`UPDATES_SHOWN` (20) newest updates.

    Args:
        service: the server's service (its store must be the SQL store;
            another store yields no fleet metrics).
        now: the server's clock, aware UTC (who counts as offline).
    """

    def __init__(self, service: UpdateService, *, now: datetime) -> None:
        self.service = service
        self.now = now

    def collect(self) -> Iterator[Metric]:
        store = self.service.store
        if not isinstance(store, SQLStoreBase):
            return
        devices = GaugeMetricFamily(
            "javia_devices",
            "Registered devices by derived status (offline after 3 silent heartbeat intervals, "
            "revoked once the token is revoked) and running version ('none' before the first "
            "report).",
            labels=["status", "version"],
        )
        rows = GaugeMetricFamily(
            "javia_update_devices",
            "Device rows of each published update by status (rollout progress).",
            labels=["version", "status"],
        )
        rollouts = GaugeMetricFamily(
            "javia_rollout_state",
            "1 for each update's current rollout state.",
            labels=["version", "state"],
        )
        phases = GaugeMetricFamily(
            "javia_rollout_phase",
            "The rollout's open phase, counted from 1.",
            labels=["version"],
        )
        cutoff = offline_before(self.now, self.service.settings.heartbeat_interval_seconds)
        tables = store.tables
        d, du, u, r = tables.devices, tables.device_updates, tables.updates, tables.rollouts
        derived = case(
            # As ``javia devices list`` shows it: a revoked token wins over the last report.
            (d.c.token_revoked_at.is_not(None), literal(REVOKED_STATUS)),
            (d.c.last_seen.is_(None), literal(DeviceStatus.OFFLINE.value)),
            (d.c.last_seen < cutoff, literal(DeviceStatus.OFFLINE.value)),
            else_=d.c.status,
        ).label("derived")
        with store._read() as connection:
            fleet = connection.execute(
                select(derived, d.c.current_version, func.count()).group_by(
                    derived, d.c.current_version
                )
            ).all()
            releases = connection.execute(
                select(u.c.id, u.c.version, r.c.state, r.c.phase_index)
                .select_from(u.outerjoin(r, r.c.update_id == u.c.id))
                .order_by(u.c.id.desc())
                .limit(UPDATES_SHOWN)
            ).all()
            progress = connection.execute(
                select(du.c.update_id, du.c.status, func.count())
                .where(du.c.update_id.in_([release.id for release in releases]))
                .group_by(du.c.update_id, du.c.status)
            ).all()
        for derived_status, version, count in fleet:
            devices.add_metric([derived_status, version or "none"], count)
        versions: dict[int, str] = {}
        for update_id, version, state, phase_index in releases:
            versions[update_id] = version
            if state is not None:
                rollouts.add_metric([version, state], 1)
                phases.add_metric([version], phase_index + 1)
        for update_id, row_status, count in progress:
            if update_id in versions:
                rows.add_metric([versions[update_id], row_status], count)
        yield from (devices, rows, rollouts, phases)


class RequestMetrics:
    """ASGI middleware: each request's duration by method, route template and status class.

    Added outermost, so it also sees the heartbeats the fast path answers
    (they carry no matched route: a POST to a heartbeat path is labelled
    with :data:`HEARTBEAT_ROUTE`). Counts answered heartbeats (2xx) and the
    body bytes of package downloads.

    Args:
        app: the application inside.
        clock: a monotonic clock in seconds (injectable).
        admission: counts every request in progress but package downloads and
            held wake-up requests (:func:`counts_for_admission`), to admit the
            start of installs (:mod:`javia_updates.service.admission`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        clock: Callable[[], float] = time.perf_counter,
        admission: InstallAdmission | None = None,
    ) -> None:
        self.app = app
        self.clock = clock
        self.admission = admission
        metrics.recorders()  # every metric is in the first scrape, at zero

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        answer: dict[str, Any] = {"status": 500, "bytes": 0}

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["bytes"] += len(message.get("body", b""))
            await send(message)

        admission = self.admission
        if admission is not None and not counts_for_admission(scope.get("path", "")):
            admission = None
        if admission is not None:
            admission.request_started()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            if admission is not None:
                admission.request_finished()
            route = _route_template(scope)
            code: int = answer["status"]
            metrics.observe_request(scope["method"], route, code, self.clock() - started)
            if route == HEARTBEAT_ROUTE and 200 <= code < 300:
                metrics.count_heartbeat()
            elif route == DOWNLOAD_ROUTE and answer["bytes"]:
                metrics.count_download_bytes(answer["bytes"])


def counts_for_admission(path: str) -> bool:
    """Whether a request to ``path`` counts as work in progress for install admission.

    Everything but package downloads (archive, objects, patches: their time
    is the transfer's, capped by ``max_concurrent_downloads``) and held
    wake-up requests (they wait by design).
    """
    return download_kind(path, API_PREFIX) is None and not (
        path.startswith(f"{API_PREFIX}/devices/") and path.endswith("/wakeup")
    )


def _route_template(scope: Scope) -> str:
    """The matched route's template (``/api/v1/devices/{device_uuid}``), never the raw path."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    path: str = scope.get("path", "")
    if isinstance(template, str):
        # FastAPI versions differ in whether an included route's path holds
        # the prefix it was included under: add it if the request had it.
        if path.startswith(API_PREFIX) and not template.startswith(API_PREFIX):
            template = API_PREFIX + template
        return template
    if (
        scope.get("method") == "POST"
        and path.startswith(f"{API_PREFIX}/devices/")
        and path.endswith("/heartbeat")
        and path.count("/") == 5
    ):
        return HEARTBEAT_ROUTE  # answered by the fast path, before routing
    return UNMATCHED_ROUTE
