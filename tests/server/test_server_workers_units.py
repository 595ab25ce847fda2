"""The pieces of ``javia server --workers`` that need no server: settings, flags, cache, lock,
the simulator's reading of a server's processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from javia_cli.main import app as javia_app
from javia_devtools.simulation_report import (
    process_cpu_seconds,
    process_rss_bytes,
    process_tree,
    process_tree_cpu_seconds,
    process_tree_rss_bytes,
)
from javia_updates.backends.cache import DeviceCache
from javia_updates.backends.sql.write_lock import SQLiteWriteLock
from javia_updates.server.__main__ import main as server_module_main
from javia_updates.settings import ServerSettings, available_cores


def test_workers_default_to_the_cores_and_come_from_the_environment(monkeypatch):
    assert ServerSettings().workers is None
    assert ServerSettings().resolved_workers() == available_cores() >= 1
    monkeypatch.setenv("JAVIA_WORKERS", "3")
    assert ServerSettings().resolved_workers() == 3
    assert ServerSettings(workers=1).resolved_workers() == 1  # the flag wins


@pytest.mark.parametrize("workers", [0, -1, 257])
def test_a_number_of_workers_out_of_range_is_refused(workers):
    with pytest.raises(ValidationError):
        ServerSettings(workers=workers)


def test_the_workers_flag_out_of_range_is_one_line_and_exit_2(capsys):
    result = CliRunner().invoke(javia_app, ["server", "--workers", "0"])
    assert result.exit_code == 2
    assert "--workers" in result.output and "Traceback" not in result.output
    with pytest.raises(SystemExit) as stopped:
        server_module_main(["--workers", "0"])
    assert stopped.value.code == 2
    assert "expected 1 to 256" in capsys.readouterr().err


def test_rows_confirmed_under_another_mark_are_dropped_and_older_reads_refused() -> None:
    cache = DeviceCache(30, clock=lambda: 0.0)
    device: Any = type("D", (), {"id": 7})()
    cache.put_device("hash", device)
    cache.confirm_rows(7, (1, 1))
    cache.put_rows(7, 1, ["pending row"], cache.rows_epoch(7))  # type: ignore[list-item]
    cache.confirm_rows(7, (1, 1))
    assert cache.rows(7, 1) == ["pending row"], "the database's rows are the cached ones"

    epoch = cache.rows_epoch(7)  # a heartbeat starts reading the rows
    cache.confirm_rows(7, (1, 3))  # another worker moved the row twice
    assert cache.rows(7, 1) is None
    cache.put_rows(7, 1, ["pending row"], epoch)  # type: ignore[list-item]
    assert cache.rows(7, 1) is None, "rows read before the confirmation are not stored"


def test_the_sqlite_writer_lock_holds_across_open_files(tmp_path: Path) -> None:
    """Two locks on one database (as two worker processes hold) never write at once."""
    database = tmp_path / "javia.db"
    first, second = SQLiteWriteLock(database), SQLiteWriteLock(database)
    inside: list[str] = []

    def write(lock: SQLiteWriteLock, name: str) -> None:
        with lock:
            inside.append(f"{name} in")
            time.sleep(0.05)
            inside.append(f"{name} out")

    with first:
        other = threading.Thread(target=write, args=(second, "second"))
        other.start()
        time.sleep(0.1)
        assert inside == [], "the second writer waits for the first"
    other.join(timeout=5)
    assert inside == ["second in", "second out"]
    assert (tmp_path / "javia.db-writer.lock").exists()
    first.close()
    second.close()
    with SQLiteWriteLock(None):  # an in-memory database: a thread lock only
        pass


def test_the_simulator_counts_the_cpu_of_a_server_and_its_workers() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in process_tree(os.getpid())
        own = process_cpu_seconds(os.getpid())
        total = process_tree_cpu_seconds(os.getpid())
        assert own is not None and total is not None and total >= own
        assert (process_tree_rss_bytes(os.getpid()) or 0) > (process_rss_bytes(os.getpid()) or 0)
    finally:
        child.kill()
        child.wait()
