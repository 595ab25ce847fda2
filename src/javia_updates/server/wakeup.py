"""The wake-up channel's server side: held requests, admission, the route (docs/agent.md).

``GET /api/v1/devices/{uuid}/wakeup?wait=N`` (the device's own token, like
the heartbeat) is held by :class:`WakeupHub` until a wake-up notice names the
device (or every device), the device disconnects, or the hold ends (``wait``,
at most ``wakeup_hold_seconds``); the answer is a
:class:`~javia_core.wakeup.WakeupAnswer`: why, whether to heartbeat, a spread
and the suggested reconnect delay. Holding costs one future and one small
task on the event loop, no thread.

Admission: new held requests are admitted at ``wakeup_admissions_per_second``
(a token bucket with one second of burst); beyond it the answer is 503 with a
``Retry-After`` spread over the backlog, so a fleet reconnecting after a
server restart comes back over seconds, not in one burst. Heartbeats are not
affected.

Notices arrive from the :mod:`wake-up bus <javia_updates.backends.wakeup_bus>`
on any thread and are handed to the event loop. At SIGTERM (chained before
uvicorn's own handler) every held request is answered ``shutdown`` at once, so
a graceful stop does not wait for the holds to run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, Field

from javia_core.wakeup import MAX_WAIT_SECONDS, MIN_WAIT_SECONDS, WakeupAnswer, WakeupReason
from javia_updates.backends.base import DeviceRecord
from javia_updates.backends.wakeup_bus import WakeupNotice
from javia_updates.server.auth import Caller, ensure_same_device, require_admin, require_device

__all__ = ["WakeupHub", "WakeupStats", "router"]

logger = logging.getLogger(__name__)


class WakeupHub:
    """The held wake-up requests of one server process.

    Args:
        hold_seconds: the longest hold, in seconds (a device's ``wait`` is cut to it).
        admissions_per_second: new held requests admitted per second (also the
            burst); 0 admits every one.
        reconnect_seconds: the reconnect delay suggested in every answer, in seconds.
        clock: monotonic seconds (the admission bucket).
        rng: randomness for the 503's ``Retry-After`` spread.
    """

    def __init__(
        self,
        *,
        hold_seconds: float,
        admissions_per_second: float,
        reconnect_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.hold_seconds = hold_seconds
        self.admissions_per_second = admissions_per_second
        self.reconnect_seconds = reconnect_seconds
        self._clock = clock
        self._rng = rng or random.Random()
        self._waiters: dict[uuid.UUID, set[asyncio.Future[WakeupNotice]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tokens = admissions_per_second
        self._refilled_at = clock()
        self._refused_recently = 0.0
        self._closing = False
        #: Notices received (from every process), for tests and the benchmark.
        self.notices = 0

    # -- lifecycle --------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver notices on ``loop`` (the server's event loop) from now on."""
        self._loop = loop
        self._closing = False

    def deliver(self, notice: WakeupNotice) -> None:
        """Hand ``notice`` to the event loop (any thread); dropped before :meth:`attach`."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._wake, notice)

    def close_all(self) -> None:
        """Answer every held request ``shutdown`` (any thread) and admit no new one."""
        self._closing = True
        self.deliver(WakeupNotice(WakeupReason.SHUTDOWN))

    def chain_sigterm(self) -> None:
        """Answer the held requests at SIGTERM before the previous handler runs (main thread only)."""
        try:
            previous = signal.getsignal(signal.SIGTERM)
        except ValueError:
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            self.close_all()
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.raise_signal(signal.SIGTERM)

        with contextlib.suppress(ValueError):  # not the main thread (an in-process test server)
            signal.signal(signal.SIGTERM, on_sigterm)

    @property
    def held(self) -> int:
        """Requests held now."""
        return sum(len(waiters) for waiters in self._waiters.values())

    # -- notices ----------------------------------------------------------------------

    def _wake(self, notice: WakeupNotice) -> None:
        self.notices += 1
        if notice.devices is None:
            groups = list(self._waiters.values())
        else:
            groups = [self._waiters[d] for d in notice.devices if d in self._waiters]
        for waiters in groups:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(notice)

    # -- admission --------------------------------------------------------------------

    def admit(self) -> int | None:
        """Admit one new held request: None if admitted, else the ``Retry-After`` in whole seconds.

        The refused are told a random delay over the backlog (refusals in
        the last seconds / rate), so they do not all come back together.
        """
        rate = self.admissions_per_second
        if self._closing:
            return 1 + self._rng.randrange(5)
        if rate <= 0:
            return None
        now = self._clock()
        elapsed = max(0.0, now - self._refilled_at)
        self._refilled_at = now
        self._tokens = min(rate, self._tokens + elapsed * rate)
        self._refused_recently *= math.exp(-elapsed / 10.0)  # forget over ~10 s
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        self._refused_recently += 1.0
        backlog_seconds = self._refused_recently / rate
        return 1 + self._rng.randrange(max(1, math.ceil(backlog_seconds)) + 1)

    # -- holding ----------------------------------------------------------------------

    async def hold(
        self, device_uuid: uuid.UUID, wait_seconds: float, disconnected: asyncio.Future[Any]
    ) -> WakeupNotice | None:
        """Wait for a notice concerning ``device_uuid``, at most ``wait_seconds``.

        Args:
            device_uuid: the device holding the request.
            wait_seconds: the hold, in seconds (already cut to :attr:`hold_seconds`).
            disconnected: completes when the client went away.

        Returns:
            The notice, or None if the hold ended (or the client left) without one.
        """
        if self._closing:
            return WakeupNotice(WakeupReason.SHUTDOWN)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[WakeupNotice] = loop.create_future()
        waiters = self._waiters.setdefault(device_uuid, set())
        waiters.add(waiter)
        try:
            await asyncio.wait(
                (waiter, disconnected), timeout=wait_seconds, return_when="FIRST_COMPLETED"
            )
        finally:
            waiters.discard(waiter)
            if not waiters:
                self._waiters.pop(device_uuid, None)
        return waiter.result() if waiter.done() else None

    def answer(self, notice: WakeupNotice | None) -> WakeupAnswer:
        """The answer for a hold that ended with ``notice`` (None: nothing happened)."""
        reason = WakeupReason.IDLE if notice is None else notice.reason
        heartbeat = reason not in (WakeupReason.IDLE, WakeupReason.SHUTDOWN)
        reconnect = self.reconnect_seconds
        if reason is WakeupReason.SHUTDOWN:
            reconnect = max(reconnect, 5.0)
        return WakeupAnswer(
            reason=reason,
            heartbeat=heartbeat,
            spread_seconds=0.0 if notice is None else notice.spread_seconds,
            reconnect_after_seconds=reconnect,
        )


async def _client_gone(request: Request) -> None:
    """Complete when the client disconnects (uvicorn's ``receive`` blocks until then)."""
    receive = request.receive
    while (await receive())["type"] != "http.disconnect":
        pass


router = APIRouter(tags=["devices"])


class WakeupStats(BaseModel):
    """``GET /api/v1/wakeups``: this server process's wake-up channel."""

    process_id: int = Field(description="the server process answering (one of several workers)")
    held: int = Field(description="wake-up requests held now by this process")
    notices: int = Field(description="wake-up notices this process received since it started")


@router.get("/wakeups", response_model=WakeupStats)
async def wakeup_stats(
    request: Request, _: Annotated[Caller, Depends(require_admin)]
) -> WakeupStats:
    """The operator: how many devices hold the wake-up channel on the answering process."""
    hub: WakeupHub = request.app.state.wakeups
    return WakeupStats(process_id=os.getpid(), held=hub.held, notices=hub.notices)


@router.get(
    "/devices/{device_uuid}/wakeup",
    response_model=WakeupAnswer,
    responses={503: {"description": "too many held requests opened now; retry after Retry-After"}},
)
async def wakeup(
    device_uuid: Annotated[uuid.UUID, Path(description="the device's uuid")],
    request: Request,
    device: Annotated[DeviceRecord, Depends(require_device)],
    wait: Annotated[
        int,
        Query(
            ge=MIN_WAIT_SECONDS,
            le=MAX_WAIT_SECONDS,
            description="longest hold the device wants, in seconds (cut to the server's)",
        ),
    ] = 90,
) -> Response:
    """Held until something concerns the device: then heartbeat now (the wake-up channel).

    Answered at once when an update is published that may concern it, its
    rollout changes (pause, resume, cancel, halt, approve, a phase opens), or
    its token is revoked or rotated; otherwise ``idle`` after the hold
    (``wait``, at most the server's ``wakeup_hold_seconds``). 503 with
    ``Retry-After`` when more held requests are being opened than the server
    admits per second (``wakeup_admissions_per_second``).
    """
    ensure_same_device(device, device_uuid)
    hub: WakeupHub = request.app.state.wakeups
    retry_after = hub.admit()
    if retry_after is not None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"too many wake-up requests being opened: retry after {retry_after} s "
            "(heartbeats are not affected)",
            headers={"Retry-After": str(retry_after)},
        )
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        notice = await hub.hold(device.device_uuid, min(float(wait), hub.hold_seconds), gone)
    finally:
        gone.cancel()
    answer = hub.answer(notice)
    return Response(answer.model_dump_json(), media_type="application/json")
