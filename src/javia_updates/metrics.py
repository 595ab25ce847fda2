"""The server process's own counters and histograms, for ``GET /metrics`` (docs/metrics.md).

What happens inside a server process is counted here: heartbeats and status
reports received, request latencies by route template, package bytes sent,
the group-commit writer's transactions. The fleet's numbers (devices by
status and version, rollout progress) are not counted at all: they are read
from the database at scrape time (:mod:`javia_updates.server.metrics`).

Several worker processes (``javia server --workers N``) must add up to one
server. :func:`prepare_metrics_directory` gives each server start its own
empty directory and sets ``PROMETHEUS_MULTIPROC_DIR`` to it *before* the
workers start and before ``prometheus_client`` is imported (the library
decides at import whether values live in memory or in per-process files
there); every worker then writes its counts to its own files and a scrape of
any worker sums them. Without that variable (an app built in a test, an
embedding) the values stay in this process's memory.

``prometheus_client`` is imported on first use only, so importing this module
costs nothing and decides nothing.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "MULTIPROCESS_ENV",
    "Recorders",
    "count_download_bytes",
    "count_heartbeat",
    "count_install_deferred",
    "count_status_report",
    "multiprocess_directory",
    "observe_request",
    "observe_write_batch",
    "prepare_metrics_directory",
    "recorders",
]

#: The variable ``prometheus_client`` reads to keep values in per-process files.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Request latency buckets, in seconds: a heartbeat answers in well under a
#: millisecond, a publish of a large package takes minutes.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    120.0,
)

#: Units of work per group-commit transaction (``DEFAULT_MAX_BATCH`` is 256).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def prepare_metrics_directory() -> Path:
    """Give this server start a fresh, empty multiprocess directory (before workers start).

    Creates ``javia-metrics-*`` under the system's temporary directory, sets
    ``PROMETHEUS_MULTIPROC_DIR`` to it in this process's environment (which
    the workers inherit) and removes it when this process exits: normally, by
    an exception, by SIGINT or by SIGTERM (systemd's stop;
    :func:`_remove_on_terminate`). Counts of a previous run are never read:
    every start begins at zero, as a Prometheus counter reset expects.

    Returns:
        The directory.
    """
    directory = Path(tempfile.mkdtemp(prefix="javia-metrics-"))
    os.environ[MULTIPROCESS_ENV] = str(directory)
    atexit.register(shutil.rmtree, directory, True)
    _remove_on_terminate(directory)
    if "prometheus_client.values" in sys.modules:
        # Imported before the variable was set (an embedding imported it early):
        # choose the per-process file values now, before any value exists.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return directory


def _remove_on_terminate(directory: Path) -> None:
    """Remove ``directory`` when SIGTERM ends this process, which then still dies by SIGTERM.

    SIGTERM's default action ends the process without ``atexit`` (uvicorn
    handles it during serving, then raises it again once shut down). The
    handler removes the directory, restores the default action and raises
    the signal again, so the exit status stays "killed by SIGTERM". Only in
    the process that created the directory, and only where SIGTERM has its
    default action (another handler ends the process its own way and
    ``atexit`` runs).
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers are set from the main thread only
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    owner = os.getpid()

    def terminate(signum: int, frame: object) -> None:
        if os.getpid() == owner:
            shutil.rmtree(directory, ignore_errors=True)
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, terminate)


def multiprocess_directory() -> Path | None:
    """The multiprocess directory in use, or None (values in this process's memory)."""
    value = os.environ.get(MULTIPROCESS_ENV)
    return Path(value) if value else None


class Recorders:
    """The process's counters and histograms (names and labels: docs/metrics.md).

    Attributes:
        registry: where they are registered (used for scrapes without a
            multiprocess directory).
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        self.heartbeats = Counter(
            "javia_heartbeats_received",
            "Heartbeats answered with 2xx (refused ones count only in the latency histogram).",
            registry=self.registry,
        )
        self.status_reports = Counter(
            "javia_status_reports_received",
            "Status reports answered, by the reported status.",
            ["status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "javia_http_request_duration_seconds",
            "Time from a request's arrival to its answer's first byte, in seconds.",
            ["method", "route", "status_class"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.download_bytes = Counter(
            "javia_download_bytes",
            "Payload bytes sent to devices and operators (package downloads).",
            registry=self.registry,
        )
        self.write_lock_wait_seconds = Histogram(
            "javia_db_write_lock_wait_seconds",
            "Time a write transaction waited for SQLite's one writer (threads and worker "
            "processes), in seconds; always 0 on PostgreSQL.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.write_transaction_seconds = Histogram(
            "javia_db_write_transaction_seconds",
            "Time from a write transaction's start to its commit (what holds SQLite's writer), "
            "in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.installs_deferred = Counter(
            "javia_installs_deferred",
            "Heartbeat answers without the directive of an install due now because the "
            "server process was busy (install_admission_requests).",
            registry=self.registry,
        )
        self.write_batches = Histogram(
            "javia_db_write_batch_units",
            "Units of work per group-commit transaction (its _count is the commits).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )


@functools.cache
def recorders() -> Recorders:
    """This process's :class:`Recorders`, created on first use."""
    return Recorders()


def count_heartbeat() -> None:
    """One heartbeat answered with 2xx."""
    recorders().heartbeats.inc()


def count_status_report(status: str) -> None:
    """One status report answered; ``status`` is the reported status (a closed set)."""
    recorders().status_reports.labels(status=status).inc()


def observe_request(method: str, route: str, status_code: int, seconds: float) -> None:
    """One request's latency; ``route`` is a route template, never a raw path."""
    recorders().request_seconds.labels(
        method=method, route=route, status_class=f"{status_code // 100}xx"
    ).observe(seconds)


def count_install_deferred() -> None:
    """One directive withheld by install admission (the server process was busy)."""
    recorders().installs_deferred.inc()


def count_download_bytes(size: int) -> None:
    """``size`` payload bytes sent."""
    recorders().download_bytes.inc(size)


def observe_write_batch(units: int) -> None:
    """One group-commit transaction of ``units`` units of work committed."""
    recorders().write_batches.observe(units)


def observe_write_transaction(lock_wait_seconds: float, transaction_seconds: float) -> None:
    """One write transaction: how long it waited for the writer lock, then how long it ran."""
    found = recorders()
    found.write_lock_wait_seconds.observe(lock_wait_seconds)
    found.write_transaction_seconds.observe(transaction_seconds)
