"""Publish one update to 100,000 registered devices, vs raw sqlite3 executemany.

Set-up (not timed): a SQLite database migrated by javia, with 100,000
devices in 8 timezones, all seen a minute ago and running v1.0.0, and a
signed package of the example app at v1.1.0.

Timed, on a fresh copy of that database each run:

- javia: a real ``javia server`` answers ``POST /api/v1/updates/`` for a
  **scheduled** update (every device gets a ``device_updates`` row with its
  own maintenance window, DESIGN.md section 4): upload, checks, window
  planning, one transaction. Timed from request to answer.
- reference: Python's ``sqlite3`` inserting the very same rows (read back
  from javia's run) with one ``executemany`` in one transaction, with the
  same pragmas (WAL, ``synchronous=FULL``, foreign keys on).

Target (issue 7): ≤ 2 × reference and ≤ 2 s.

Run alone: ``python bench/bench_publish.py [--runs 3] [--devices 100000]``.
"""

from __future__ import annotations

import secrets
import shutil
import sqlite3
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import BenchResult, Row, summarize
from javia_devtools.demo import LocalFleet, example_app_dir
from javia_updates.admin_client import AdminClient

TIMEZONES = [
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Asia/Kolkata",
]


def build_database(path: Path, devices: int) -> None:
    """Migrate a fresh SQLite database with javia's migrations and insert ``devices`` devices."""
    from sqlalchemy import create_engine

    from javia_updates.backends.migrations import upgrade
    from javia_updates.backends.schema import build_tables

    url = f"sqlite:///{path}"
    upgrade(url)
    tables = build_tables()
    now = datetime.now(UTC)
    seen = now - timedelta(minutes=1)
    rows = [
        {
            "device_uuid": str(uuid.uuid4()),
            "device_name": f"pi-{index:06d}",
            "registered_at": now,
            "last_seen": seen,
            "current_version": "v1.0.0",
            "timezone": TIMEZONES[index % len(TIMEZONES)],
            "status": "online",
            "metadata": {},
            "token_hash": secrets.token_hex(32),
            "created_at": now,
            "updated_at": now,
        }
        for index in range(devices)
    ]
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(tables.devices.insert(), rows)
    engine.dispose()
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def fresh_copy(template: Path, data_dir: Path) -> Path:
    """Copy the template database into ``data_dir``."""
    data_dir.mkdir(parents=True)
    target = data_dir / "javia.db"
    shutil.copyfile(template, target)
    return target


def reference_insert(
    database: Path,
    update_row: tuple,
    rows: list[tuple],
    columns: list[str],
    update_columns: list[str],
) -> float:
    """Seconds for raw sqlite3 to insert the update and its rows in one transaction."""
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        for pragma in (
            "busy_timeout = 5000",
            "foreign_keys = ON",
            "journal_mode = WAL",
            "synchronous = FULL",
        ):
            connection.execute(f"PRAGMA {pragma}")
        update_sql = f"INSERT INTO updates ({', '.join(update_columns)}) VALUES ({', '.join('?' * len(update_columns))})"
        rows_sql = f"INSERT INTO device_updates ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        started = time.perf_counter()
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(update_sql, update_row)
        connection.executemany(rows_sql, rows)
        connection.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        connection.close()


def read_back(database: Path) -> tuple[tuple, list[tuple], list[str], list[str]]:
    """The update row and device rows javia wrote (without ids)."""
    with sqlite3.connect(database) as connection:
        update_cursor = connection.execute("SELECT * FROM updates")
        update_columns = [d[0] for d in update_cursor.description if d[0] != "id"]
        update = connection.execute(f"SELECT {', '.join(update_columns)} FROM updates").fetchone()
        cursor = connection.execute("SELECT * FROM device_updates LIMIT 1")
        columns = [d[0] for d in cursor.description if d[0] != "id"]
        rows = connection.execute(
            f"SELECT {', '.join(columns)} FROM device_updates ORDER BY id"
        ).fetchall()
    return update, rows, columns, update_columns


def main() -> None:
    """Measure, print the table, write JSON if asked."""
    args = benchlib.main_arguments(
        __doc__.splitlines()[0],
        lambda parser: parser.add_argument("--devices", type=int, default=100_000),
    )
    started = time.perf_counter()
    result = BenchResult(
        name="publish",
        title=f"Publish one scheduled update to {args.devices:,} registered devices",
        command="python bench/bench_publish.py",
    )
    javia_seconds: list[float] = []
    reference_seconds: list[float] = []
    row_counts: list[int] = []
    with benchlib.scratch_dir("publish") as root:
        template = root / "template.db"
        build_database(template, args.devices)
        builder = LocalFleet(root / "builder")
        builder.generate_key()
        app_dir = root / "app"
        shutil.copytree(example_app_dir(), app_dir, ignore=shutil.ignore_patterns("__pycache__"))
        package = builder.build_package(app_dir, "v1.1.0", "scheduled", root / "package")
        for run in range(args.runs):
            fleet = LocalFleet(root / f"run{run}", heartbeat_seconds=300)
            database = fresh_copy(template, fleet.root / "server")
            try:
                fleet.start_server(timeout=60)
                with AdminClient(fleet.url, fleet.api_key, timeout=120) as admin:
                    admin.list_updates()  # warm the connection and the server's code paths
                    begun = time.perf_counter()
                    published = admin.publish(
                        manifest_path=package / "manifest.json",
                        signature_path=package / "manifest.sig",
                        payload_path=package / "payload.tar.gz",
                    )
                    javia_seconds.append(time.perf_counter() - begun)
                    row_counts.append(sum(published.status_counts.values()))
            finally:
                fleet.stop()
            update, rows, columns, update_columns = read_back(database)
            reference_db = fresh_copy(template, root / f"reference{run}")
            reference_seconds.append(
                reference_insert(reference_db, update, rows, columns, update_columns)
            )
            shutil.rmtree(fleet.root, ignore_errors=True)
            shutil.rmtree(reference_db.parent, ignore_errors=True)

    measured = summarize(javia_seconds)
    reference = summarize(reference_seconds)
    ratio = measured.median / reference.median
    result.rows.append(
        Row(
            f"javia publish (HTTP, {row_counts[0]:,} rows)",
            measured.show(2, "s"),
            reference=f"{reference.show(2, 's')} (sqlite3 executemany)",
            ratio=f"{ratio:.2f} ×",
            target="≤ 2 × reference and ≤ 2 s",
            met=ratio <= 2
            and measured.median <= 2
            and all(count == args.devices for count in row_counts),
            values={
                "javia_seconds": javia_seconds,
                "reference_seconds": reference_seconds,
                "rows": row_counts,
                "ratio": ratio,
            },
        )
    )
    result.notes.append(
        f"median (min–max) of {args.runs} runs, each on a fresh copy of the same {args.devices:,}-device database; "
        "devices in 8 timezones, so every row has its own maintenance window"
    )
    benchlib.finish(result, args, started)


if __name__ == "__main__":
    main()
