"""Many rows in one ``executemany``, each distinct value converted once (the bulk writes).

A publish to 100,000 devices inserts 100,000 ``device_updates`` rows; a
heartbeat batch updates thousands of devices. :func:`execute_converted` is
why neither spends its time in SQLAlchemy's per-row bind processors.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table

from javia_core.errors import BackendError

__all__ = ["execute_converted", "insert_many", "inserted_id"]


def insert_many(
    connection: Connection,
    table: Table,
    constants: dict[str, Any],
    keys: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """Insert many rows with one ``executemany`` (see :func:`execute_converted`).

    Args:
        connection: inside the caller's transaction.
        table: the table to insert into.
        constants: column → the same value for every row.
        keys: the varying columns, in the order of each row's values.
        rows: one sequence of values per row.
    """
    if not rows:
        return
    varying = list(zip(*rows, strict=True))
    columns: list[tuple[str, Any, Sequence[Any]]] = [
        (key, table.c[key].type, values) for key, values in zip(keys, varying, strict=True)
    ]
    columns += [
        (name, table.c[name].type, itertools.repeat(value, len(rows)))  # type: ignore[misc]
        for name, value in constants.items()
    ]
    execute_converted(connection, table.insert(), columns, count=len(rows))


def execute_converted(
    connection: Connection,
    statement: Any,
    columns: Sequence[tuple[str, Any, Sequence[Any]]],
    *,
    count: int | None = None,
) -> None:
    """Run ``statement`` once per row with one ``executemany``, converting each distinct value once.

    SQLAlchemy's ``connection.execute(statement, [dict, ...])`` runs every
    parameter's bind processor (for a :class:`UTCDateTime`: normalise, then
    format for SQLite; for JSON: serialise) on every row, in Python, holding
    the GIL: most of the time of a publish to 100,000 devices, and the
    latency spikes of the heartbeat batches. Here the statement is compiled
    once by the dialect, each parameter's values go through its processor
    once per distinct value (values that cannot be hashed, such as metadata
    dictionaries, once each), and the driver gets plain tuples (or dicts, for
    named parameter styles).

    Args:
        connection: inside the caller's transaction.
        statement: an INSERT or UPDATE whose bound parameters are named as in ``columns``.
        columns: ``(parameter name, SQL type or None, one value per row)``.
        count: rows, when every ``columns`` entry is an iterator.
    """
    dialect = connection.dialect
    names = [name for name, _type, _values in columns]
    compiled = statement.compile(dialect=dialect, column_keys=names)
    converted: list[Any] = []
    for _name, type_, values in columns:
        processor = None if type_ is None else type_.dialect_impl(dialect).bind_processor(dialect)
        if processor is None:
            converted.append(values)
            continue
        values = list(values)
        try:
            memo = {value: processor(value) for value in set(values) if value is not None}
            converted.append(list(map(memo.get, values)))
        except TypeError:  # unhashable values (dictionaries): convert each one
            converted.append([None if value is None else processor(value) for value in values])
    if compiled.positional:
        order = [names.index(name) for name in compiled.positiontup or ()]
        params: list[Any] = list(zip(*(converted[i] for i in order), strict=count is None))
    else:
        params = [dict(zip(names, row, strict=True)) for row in zip(*converted, strict=False)]
    if params:
        connection.exec_driver_sql(compiled.string, params)


def inserted_id(result: Any) -> int:
    """The primary key of the row an ``INSERT`` result inserted."""
    key = result.inserted_primary_key
    if key is None or key[0] is None:  # pragma: no cover - every table has an id column
        raise BackendError("the database returned no id for the inserted row")
    return int(key[0])
