"""Copy an installation's data to another database and blob store (``javia db migrate-data``).

The usual move is a ``local`` installation (SQLite file + package files) to
the ``supabase`` backend (PostgreSQL + Storage), but any pair works, including
back to SQLite for a self-contained copy. What moves:

- every row of every table javia defines (devices with their token hashes,
  updates with their manifest and signature bytes, device_updates, the audit
  log, and any table later revisions add), with the **same ids**, so devices
  keep their tokens and their progress, and the update ids devices hold in
  their state files stay valid;
- the id sequences, set past the highest id the source ever handed out, so new
  rows never reuse an id;
- the package objects (``manifest.json``, ``manifest.sig``, ``payload.tar.gz``)
  when the blob store changes, each checked against the size and SHA-256 the
  database records before it is stored.

Rules that make it safe to run again after a failure:

1. the source must be at this javia's newest migration (run ``javia db
   upgrade`` against it first) and is only read, inside one transaction (a
   consistent snapshot);
2. the target is migrated to the newest revision, then must hold no rows at
   all: a non-empty target is refused, never merged into;
3. package objects are copied first; an object already in the target with the
   recorded size is left as it is (objects are written atomically, so a
   present object is complete);
4. all rows are inserted in ONE target transaction, with the sequences reset
   in the same transaction: the target database ends up with everything or
   nothing.

Stop the servers writing to the source while copying: rows written after the
snapshot are not copied.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, false, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from javia_core.errors import BackendError, NotFoundError
from javia_core.manifest import MANIFEST_NAME, PAYLOAD_NAME, SIGNATURE_NAME
from javia_updates.backends.base import BlobStore
from javia_updates.backends.schema import Tables, build_tables, default_schema
from javia_updates.backends.sql.engine import make_engine, redact_url

__all__ = [
    "PACKAGE_OBJECTS",
    "DataMigrationError",
    "DataMigrationResult",
    "migrate_data",
    "table_counts",
]

#: The objects every published package has in the blob store.
PACKAGE_OBJECTS = (MANIFEST_NAME, SIGNATURE_NAME, PAYLOAD_NAME)
_BATCH_ROWS = 1000
_COPY_CHUNK_BYTES = 1024 * 1024

Progress = Callable[[str], None]


class DataMigrationError(BackendError):
    """The data cannot be copied as asked; nothing was written to the target database.

    For example: the source is not at the newest migration, the target
    already holds rows, source and target are the same database, or a source
    package object is missing or does not match what the database records.
    """


@dataclass
class DataMigrationResult:
    """What :func:`migrate_data` copied.

    Attributes:
        rows: rows copied per table name, in the order the tables were copied.
        packages: packages (published updates) whose objects were checked.
        objects_copied: package objects written to the target blob store.
        objects_present: package objects the target already held (same size).
        bytes_copied: bytes of the objects written, in bytes.
        packages_moved: False when no blob store copy was asked for (the
            blob store stays where it is).
    """

    rows: dict[str, int] = field(default_factory=dict)
    packages: int = 0
    objects_copied: int = 0
    objects_present: int = 0
    bytes_copied: int = 0
    packages_moved: bool = False


def _quiet(_message: str) -> None:
    return None


def _tables_in_order(tables: Tables) -> list[Table]:
    """Every table, parents before children (foreign keys), so inserts never dangle."""
    return list(tables.metadata.sorted_tables)


def _id_column(table: Table) -> Any | None:
    """The integer ``id`` primary key that a sequence fills, if the table has one."""
    columns = list(table.primary_key.columns)
    if len(columns) == 1 and columns[0].name == "id" and columns[0].autoincrement:
        return columns[0]
    return None


def _same_database(first: str, second: str) -> bool:
    one, two = make_url(first), make_url(second)
    if one.get_backend_name() == two.get_backend_name() == "sqlite":
        return bool(one.database) and (
            Path(one.database or "").expanduser().resolve()
            == Path(two.database or "").expanduser().resolve()
        )
    keep = ("host", "port", "database")
    return one.get_backend_name() == two.get_backend_name() and all(
        getattr(one, name) == getattr(two, name) for name in keep
    )


def _require_source(source_url: str) -> None:
    from javia_updates.backends.migrations import current_revision, head_revision

    url = make_url(source_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or not Path(database).expanduser().is_file():
            raise DataMigrationError(
                f"source database {redact_url(source_url)} does not exist: expected the local "
                "server's database file, e.g. sqlite:////var/lib/javia-server/javia.db"
            )
    revision = current_revision(source_url)
    head = head_revision()
    if revision is None:
        raise DataMigrationError(
            f"source database {redact_url(source_url)} holds no javia tables (no migration was "
            "applied): check --from"
        )
    if revision != head:
        raise DataMigrationError(
            f"source database {redact_url(source_url)} is at migration {revision}, this javia "
            f"writes {head}: bring the source up to date first (javia db upgrade with "
            "JAVIA_DATABASE_URL set to the source), then copy again"
        )


def table_counts(engine: Engine) -> dict[str, int]:
    """Rows per javia table in the database of ``engine`` (schema: the dialect's default).

    Raises:
        BackendError: the database cannot be read.
    """
    tables = build_tables(default_schema(engine.dialect.name))
    try:
        with engine.connect() as connection:
            return {
                table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
                for table in _tables_in_order(tables)
            }
    except SQLAlchemyError as error:
        raise BackendError(
            f"cannot count the rows of {redact_url(str(engine.url))}: {error}"
        ) from None


def _describe_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in counts.items() if count)


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """A read transaction that sees one consistent state of the source."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            yield connection


def _high_water_marks(connection: Connection, tables: Tables) -> dict[str, int]:
    """Per table, the highest id ever handed out (deleted rows included), where knowable.

    SQLite's ``AUTOINCREMENT`` keeps it in ``sqlite_sequence``; PostgreSQL in
    the column's sequence. Without either, the highest id present counts.
    """
    marks: dict[str, int] = {}
    dialect = connection.dialect.name
    for table in _tables_in_order(tables):
        column = _id_column(table)
        if column is None:
            continue
        highest = connection.execute(select(func.max(column))).scalar_one() or 0
        if dialect == "sqlite":
            used = connection.execute(
                text("SELECT seq FROM sqlite_sequence WHERE name = :name"), {"name": table.name}
            ).scalar_one_or_none()
        elif dialect == "postgresql":
            sequence = connection.execute(
                select(func.pg_get_serial_sequence(table.fullname, "id"))
            ).scalar_one_or_none()
            used = None
            if sequence is not None:  # a name PostgreSQL quoted itself, safe to interpolate
                last_value, is_called = connection.execute(
                    text(f"SELECT last_value, is_called FROM {sequence}")
                ).one()
                # Not yet called (fresh, or set by setval(..., false)): last_value is the next id.
                used = last_value if is_called else last_value - 1
        else:  # pragma: no cover - javia runs on SQLite and PostgreSQL only
            used = None
        marks[table.name] = max(int(highest), int(used or 0))
    return marks


def _set_sequences(connection: Connection, tables: Tables, marks: dict[str, int]) -> None:
    """Make the next id of every table ``mark + 1`` (1 for an empty table)."""
    dialect = connection.dialect.name
    for table in _tables_in_order(tables):
        if _id_column(table) is None:
            continue
        mark = marks.get(table.name, 0)
        if dialect == "postgresql":
            sequence = func.pg_get_serial_sequence(table.fullname, "id")
            connection.execute(select(func.setval(sequence, mark + 1, false())))
        elif dialect == "sqlite" and mark > 0:
            # Inserting explicit ids already raised sqlite_sequence to the
            # highest copied id; a higher mark (deleted rows) is set by hand.
            updated = connection.execute(
                text("UPDATE sqlite_sequence SET seq = :mark WHERE name = :name AND seq < :mark"),
                {"mark": mark, "name": table.name},
            )
            if updated.rowcount == 0:
                present = connection.execute(
                    text("SELECT count(*) FROM sqlite_sequence WHERE name = :name"),
                    {"name": table.name},
                ).scalar_one()
                if not present:
                    connection.execute(
                        text("INSERT INTO sqlite_sequence (name, seq) VALUES (:name, :mark)"),
                        {"mark": mark, "name": table.name},
                    )


def _copy_rows(
    source: Connection,
    target: Connection,
    source_tables: Tables,
    target_tables: Tables,
    batch_rows: int,
    progress: Progress,
) -> dict[str, int]:
    copied: dict[str, int] = {}
    targets_by_name = {table.name: table for table in _tables_in_order(target_tables)}
    for table in _tables_in_order(source_tables):
        destination = targets_by_name[table.name]
        order = _id_column(table)
        query = select(table)
        if order is not None:
            query = query.order_by(order)
        result = source.execution_options(yield_per=batch_rows).execute(query)
        count = 0
        for batch in result.partitions():
            target.execute(destination.insert(), [dict(row._mapping) for row in batch])
            count += len(batch)
        copied[table.name] = count
        progress(f"copied {count} rows of {table.name}")
    return copied


def _expected_objects(source: Connection, tables: Tables) -> list[tuple[str, str, str, int, str]]:
    """(package key, version, object name, size, SHA-256 hex) of every package object."""
    u = tables.updates
    rows = source.execute(
        select(
            u.c.package_url,
            u.c.version,
            u.c.manifest,
            u.c.signature,
            u.c.archive_size,
            u.c.archive_sha256,
        ).order_by(u.c.id)
    ).all()
    expected = []
    for row in rows:
        manifest, signature = bytes(row.manifest), bytes(row.signature)
        expected += [
            (
                row.package_url,
                row.version,
                MANIFEST_NAME,
                len(manifest),
                hashlib.sha256(manifest).hexdigest(),
            ),
            (
                row.package_url,
                row.version,
                SIGNATURE_NAME,
                len(signature),
                hashlib.sha256(signature).hexdigest(),
            ),
            (row.package_url, row.version, PAYLOAD_NAME, row.archive_size, row.archive_sha256),
        ]
    return expected


def _copy_object(
    source: BlobStore,
    target: BlobStore,
    key: str,
    version: str,
    name: str,
    size: int,
    sha256: str,
) -> bool:
    """Copy one object after checking it; False if the target already has it."""
    try:
        stored = source.size(key, name)
    except NotFoundError:
        raise DataMigrationError(
            f"package {version} has no {name} in the source blob store (key {key}): restore it "
            "from a backup, then copy again"
        ) from None
    if stored != size:
        raise DataMigrationError(
            f"package {version}: {name} in the source blob store is {stored} bytes, the database "
            f"records {size}: the source's package is damaged; restore it from a backup"
        )
    try:
        if target.size(key, name) == size:
            return False
    except NotFoundError:
        pass
    spool = target.upload_dir() / f".migrate-{uuid.uuid4().hex}.part"
    digest = hashlib.sha256()
    try:
        with open(spool, "wb") as handle:
            for chunk in source.iter_range(key, name, 0, size, chunk_size=_COPY_CHUNK_BYTES):
                digest.update(chunk)
                handle.write(chunk)
    except OSError as error:
        spool.unlink(missing_ok=True)
        raise BackendError(
            f"cannot spool {name} of {version} to {spool}: {error.strerror}"
        ) from None
    except BaseException:
        spool.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != sha256:
        spool.unlink(missing_ok=True)
        raise DataMigrationError(
            f"package {version}: {name} in the source blob store does not match the SHA-256 the "
            "database records: the source's package is damaged; restore it from a backup"
        )
    target.put_file(key, name, spool)  # consumes the spool file
    return True


def migrate_data(
    source_url: str,
    target_url: str,
    *,
    source_blobs: BlobStore | None = None,
    target_blobs: BlobStore | None = None,
    batch_rows: int = _BATCH_ROWS,
    progress: Progress | None = None,
) -> DataMigrationResult:
    """Copy every row from ``source_url`` to ``target_url``, and the packages between blob stores.

    See the module docstring for what is copied and the rules that make a
    second run after a failure safe. Tables live in each dialect's default
    schema (``javia`` on PostgreSQL).

    Args:
        source_url: SQLAlchemy URL of the database to read, e.g.
            ``sqlite:////var/lib/javia-server/javia.db``.
        target_url: SQLAlchemy URL of the database to fill, e.g.
            ``postgresql+psycopg://…``; migrated here if needed.
        source_blobs: where the packages are now; with ``target_blobs``, every
            package object is copied. None (either): rows only.
        target_blobs: where the packages go.
        batch_rows: rows read and inserted per round trip.
        progress: called with one line per step (tables, packages).

    Returns:
        Counts of what was copied.

    Raises:
        DataMigrationError: source and target are the same database; the
            source is missing, empty or not at the newest migration; the target
            already holds rows; a source package object is missing or damaged.
        BackendError: a database or blob store failed; the target database
            then holds no copied rows (its transaction rolled back).
    """
    from javia_updates.backends.database import upgrade_serialized

    say = progress or _quiet
    if _same_database(source_url, target_url):
        raise DataMigrationError(
            f"source and target are the same database ({redact_url(source_url)}): --to must name "
            "another, empty database"
        )
    _require_source(source_url)
    upgrade_serialized(target_url)
    say(f"target database {redact_url(target_url)} is at the newest migration")

    source_engine = make_engine(source_url)
    target_engine = make_engine(target_url)
    try:
        present = table_counts(target_engine)
        if any(present.values()):
            raise DataMigrationError(
                f"target database {redact_url(target_url)} already holds {_describe_counts(present)}: "
                "migrate-data copies into an empty javia database only, so that every id stays "
                "the same; point --to at a new database (or, if it holds nothing you need, drop "
                "javia's tables there: DROP SCHEMA javia CASCADE on PostgreSQL) and run it again"
            )
        source_tables = build_tables(default_schema(source_engine.dialect.name))
        target_tables = build_tables(default_schema(target_engine.dialect.name))
        moving = source_blobs is not None and target_blobs is not None
        result = DataMigrationResult(packages_moved=moving)
        try:
            with _snapshot(source_engine) as source:
                objects = _expected_objects(source, source_tables)
                result.packages = len(objects) // len(PACKAGE_OBJECTS)
                if moving:
                    assert source_blobs is not None and target_blobs is not None
                    for key, version, name, size, sha256 in objects:
                        if _copy_object(
                            source_blobs, target_blobs, key, version, name, size, sha256
                        ):
                            result.objects_copied += 1
                            result.bytes_copied += size
                            say(f"copied {name} of {version} ({size} bytes)")
                        else:
                            result.objects_present += 1
                marks = _high_water_marks(source, source_tables)
                with target_engine.connect() as target, target.begin():
                    rows = _copy_rows(source, target, source_tables, target_tables, batch_rows, say)
                    _set_sequences(target, target_tables, marks)
                    result.rows.update(rows)
        except SQLAlchemyError as error:
            raise BackendError(
                f"copying {redact_url(source_url)} to {redact_url(target_url)} failed, the target "
                f"database is unchanged: {str(getattr(error, 'orig', error)).splitlines()[0][:300]}"
            ) from None
        copied = table_counts(target_engine)
        if copied != result.rows:  # pragma: no cover - a concurrent writer on the target
            raise DataMigrationError(
                f"target database {redact_url(target_url)} holds {_describe_counts(copied)} after the "
                f"copy, expected {_describe_counts(result.rows)}: was a server writing to it?"
            )
        return result
    finally:
        source_engine.dispose()
        target_engine.dispose()
