"""``javia server --workers N``: N server processes sharing one listening socket.

One Python process answers on one core. :func:`run_workers` uses the whole
machine the way uvicorn's own ``--workers`` does, with javia's start-up
around it:

1. the supervisor (this process) prepares the backend once — directories
   and database migrations — so N workers never race to migrate;
2. it binds the socket and starts N worker processes (uvicorn's
   :class:`~uvicorn.supervisors.Multiprocess`, ``spawn``): each builds its own
   application with :func:`worker_app` (its own caches, soft-state batcher,
   rollout evaluation and, on SQLite, its own group-commit writer) and
   accepts connections from the shared socket, the kernel spreading them;
3. a worker that dies, or does not answer the supervisor's ping within
   :data:`WORKER_HEALTHCHECK_SECONDS`, is replaced (uvicorn's supervision;
   logged as "Child process [pid] died"); one that fails while starting
   stops the whole server;
4. SIGTERM or SIGINT to the supervisor stops every worker gracefully (each
   writes its last batch of heartbeat soft state) and then the supervisor.
   A worker whose supervisor is killed outright (SIGKILL) is sent SIGTERM by
   the kernel (``PR_SET_PDEATHSIG``), so no worker outlives its server.

What stays consistent across workers (they share only the database and the
package files) is told in docs/architecture.md, "Processes": every worker
confirms a cached device with the database at each request
(:meth:`~javia_updates.backends.store.Store.confirm_device`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import signal
import sys

from fastapi import FastAPI

from javia_core.errors import BackendError
from javia_updates.backends import create_backend
from javia_updates.server import warn_if_signatures_unchecked
from javia_updates.server.app import create_app
from javia_updates.settings import ServerSettings

__all__ = ["WORKER_HEALTHCHECK_SECONDS", "run_workers", "worker_app"]

logger = logging.getLogger("uvicorn.error")

#: Seconds a worker may take to answer the supervisor's ping, start-up included
#: (importing the server takes seconds on a busy machine); one silent longer is
#: taken as hung, killed and replaced.
WORKER_HEALTHCHECK_SECONDS = 30

#: ``prctl`` option: the signal this process gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1


def _die_with(supervisor_pid: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: supervision only
            logger.warning("cannot ask to be stopped with the supervisor (prctl unavailable)")
    if os.getppid() != supervisor_pid:
        raise SystemExit(0)  # the supervisor died while this worker started


def worker_app(settings: ServerSettings, supervisor_pid: int) -> FastAPI:
    """Build one worker's application (the factory each worker process calls).

    The supervisor prepared the backend already: no migrations here. The
    download cap is shared out between the workers (:func:`_share_of`). The
    store is marked as shared (``exclusive`` False) even on SQLite, so every
    cached device is confirmed with the database at each request.

    Args:
        settings: the supervisor's settings (pickled to the worker).
        supervisor_pid: the supervisor's process id; the worker exits if it
            is no longer its parent.
    """
    _die_with(supervisor_pid)
    return create_app(_share_of(settings), prepare=False, shared_database=True)


def _share_of(settings: ServerSettings) -> ServerSettings:
    """One worker's share of the server-wide download cap.

    ``max_concurrent_downloads`` is the server's number (docs/backends.md):
    each of N workers admits ``ceil(cap / N)`` downloads at once (0: no cap).
    """
    cap, workers = settings.max_concurrent_downloads, settings.resolved_workers()
    if cap <= 0 or workers <= 1:
        return settings
    return settings.model_copy(update={"max_concurrent_downloads": -(-cap // workers)})


def run_workers(
    settings: ServerSettings,
    *,
    host: str,
    port: int,
    workers: int,
    log_level: str = "info",
    banner: str = "",
) -> None:
    """Serve with ``workers`` processes on ``host``:``port`` until SIGTERM or SIGINT.

    Args:
        settings: server settings (``api_key`` set).
        host: address to listen on.
        port: TCP port.
        workers: worker processes, at least 2 (1: use :func:`javia_updates.server.run`).
        log_level: uvicorn's log level.
        banner: one line logged once the supervisor's logging is set up.

    Raises:
        SettingsError: no admin API key.
        BackendError: storage cannot be prepared, or a worker failed to start.
    """
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    settings.require_api_key()
    backend = create_backend(settings)
    try:
        backend.prepare()  # migrations: once, here, before any worker starts
    finally:
        backend.close()
    config = uvicorn.Config(
        functools.partial(worker_app, settings, os.getpid()),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=settings.access_log,
        server_header=False,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
    )
    if banner:
        logger.info(banner)
    warn_if_signatures_unchecked(settings)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise BackendError("a server worker failed to start: its error is logged above")
