"""Writes of computed personas to the relational store, shared by the full rebuild and the refresh.

Each function reads tables of a DuckDB connection (``users``/``raw_affinity_ids``/``affinity_keys`` after
``compute_raw_affinities``, ``persona_users``/``persona_affinity_ids`` after ``compute_personas``) and
streams per-user rows into the store one uid range at a time: DuckDB builds the JSON of the next range
while this thread writes the current one, so memory holds about two ranges whatever the number of users,
and the two cores work at once. ``only_users`` = None replaces the whole table; a list replaces just
those users' rows (in one transaction either way).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

import duckdb
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from persona_assets.compute import affinities
from persona_assets.compute.duck import memory_limit_bytes
from persona_assets.stores import relational

_DELETE_CHUNK = 500

# Memory one user's rows may take on their way to the store (Arrow, then Python lists), generously: a
# wide user's legacy row is a few KiB. A range being written, one waiting and one being made.
_BYTES_PER_USER = 48 * 1024
_MIN_RANGE_USERS = 1_000
# Small ranges keep the store busy from the start: DuckDB's first range is all the writer waits for, and the
# last write is all DuckDB waits for (at 100k users, 65,000-user ranges left two ranges and a rebuild 20 %
# slower than 20,000-user ones; docs/benchmarks.md).
_MAX_RANGE_USERS = 20_000


def users_per_range(con: duckdb.DuckDBPyConnection) -> int:
    """How many users' rows go to the store at a time under ``con``'s memory limit (20,000; fewer under
    1GiB: 512MiB about 10,900)."""
    budget = memory_limit_bytes(con) // _BYTES_PER_USER
    return max(_MIN_RANGE_USERS, min(_MAX_RANGE_USERS, budget))


def _delete_rows(conn: Connection, table: sa.Table, column: str, only_users: Sequence[str] | None) -> None:
    if only_users is None:
        conn.execute(table.delete())
        return
    for start in range(0, len(only_users), _DELETE_CHUNK):
        conn.execute(table.delete().where(table.c[column].in_(only_users[start : start + _DELETE_CHUNK])))


#: One range's rows as Python lists, one per result column (what the DB-API binds).
Columns = dict[str, list]


def _ranges_in_background(
    con: duckdb.DuckDBPyConnection, sql: str, ranges: list[tuple[int, int]], stop: threading.Event
) -> Iterator[Columns]:
    """The result of ``sql`` for each uid range, computed one range ahead on a cursor of its own and turned
    into Python lists there too: the writer's driver releases the GIL while the store works, so making the
    next range's objects overlaps with it (they were a fifth of the writer's profile at 100k)."""
    results: queue.Queue[Columns | BaseException | None] = queue.Queue(maxsize=1)

    def hand_over(item: Columns | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        cursor = con.cursor()
        try:
            for first, last in ranges:
                table = cursor.sql(sql, params={"first": first, "last": last}).to_arrow_table()
                if not hand_over(table.to_pydict()):
                    return
            hand_over(None)
        except BaseException as error:  # handed to the consumer, which raises it
            hand_over(error)
        finally:
            cursor.close()

    thread = threading.Thread(target=produce, name="persona-rows", daemon=True)
    thread.start()
    try:
        while (item := results.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _renamed(rows: Columns, columns: Mapping[str, str]) -> Columns:
    """The ``columns`` of ``rows`` (table column <- column of ``rows``), under the table's names."""
    return {name: rows[source] for name, source in columns.items()}


#: Writes the rows of one range into a table beside the replaced one, in the same transaction.
BesideWrite = Callable[[Connection, Columns], object]


def _write_ranges(
    conn: Connection,
    table: sa.Table,
    con: duckdb.DuckDBPyConnection,
    sql: str,
    *,
    upsert_columns: Sequence[str] = (),
    columns: Mapping[str, str] | None = None,
    beside: BesideWrite | None = None,
) -> int:
    ranges = affinities.user_ranges(con, users_per_range(con))
    written = 0
    for rows in _ranges_in_background(con, sql, ranges, threading.Event()):
        mine = rows if columns is None else _renamed(rows, columns)
        written += relational.insert_columns(conn, table, mine, upsert_columns=upsert_columns)
        if beside is not None:
            beside(conn, rows)
    return written


def _replace_rows(
    engine: Engine,
    table: sa.Table,
    con: duckdb.DuckDBPyConnection,
    sql: str,
    only_users: Sequence[str] | None,
    *,
    columns: Mapping[str, str] | None = None,
    beside: BesideWrite | None = None,
) -> int:
    """Replace the rows of ``only_users`` (or of everyone) with the rows ``sql`` gives (the ``columns`` named,
    table column <- result column; all when None), in one transaction, which ``beside`` writes into too.

    Everyone: every row is upserted in key order, which rewrites a table in place (deleting a million rows
    of JSON first cost more than writing them), then the rows of users who have no events any more go.
    """
    (key,) = [column.name for column in table.primary_key.columns]
    with engine.begin() as conn:
        if only_users is not None:
            _delete_rows(conn, table, key, only_users)
            return _write_ranges(conn, table, con, sql, columns=columns, beside=beside)
        others = [column.name for column in table.columns if column.name != key]
        written = _write_ranges(conn, table, con, sql, upsert_columns=others, columns=columns, beside=beside)
        _delete_users_without_rows(conn, table, key, con, written)
        return written


def _delete_users_without_rows(
    conn: Connection, table: sa.Table, key: str, con: duckdb.DuckDBPyConnection, expected: int
) -> None:
    """After a full upsert of ``expected`` rows: delete the rows whose user is not in DuckDB's ``users``."""
    stored = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    if stored == expected:
        return
    # The stored tables' binary collation: under the server's default one, ids that differ only in Unicode
    # normalisation or case (café / cafe + U+0301) are one key, and the insert fails on a duplicate.
    current = sa.Table(
        "current_users",
        sa.MetaData(),
        sa.Column("ext_id", relational.ID, primary_key=True),
        prefixes=["TEMPORARY"],
        **relational.MYSQL_TABLE_OPTIONS,
    )
    current.create(conn)
    try:
        relational.insert_arrow(conn, current, con.sql("SELECT ext_id FROM users").to_arrow_table())
        conn.execute(table.delete().where(table.c[key].not_in(sa.select(current.c.ext_id))))
    finally:
        current.drop(conn)


def write_personas(
    engine: Engine,
    con: duckdb.DuckDBPyConnection,
    only_users: Sequence[str] | None = None,
    *,
    has_changed: sa.ColumnElement | None = None,
) -> int:
    """Each user's normalised persona (``user_personas``) and legacy columns (``user_persona``: raw maps and
    latest search texts), both from one DuckDB pass per uid range (``affinities.persona_rows_sql``), in one
    transaction. Needs the tables of ``affinities.compute_personas`` and ``user_queries``.

    ``user_personas`` is replaced as :func:`_replace_rows` does. The legacy rows are upserted and their
    flags left alone, unless ``has_changed`` gives the value an existing row's flag takes in the same write
    (the rebuild's 1 → 2, ``changes.calculated_since_rebuild_snapshot``): a second UPDATE of every row would
    rewrite a table of kilobyte rows once more.
    """
    legacy_columns = affinities.LEGACY_COLUMNS
    updated = [name for name in legacy_columns if name != "extId"]
    update = {} if has_changed is None else {"hasChanged": has_changed}

    def write_legacy(conn: Connection, rows: Columns) -> None:
        relational.insert_columns(
            conn, relational.user_persona, _renamed(rows, legacy_columns), upsert_columns=updated, update=update
        )

    return _replace_rows(
        engine,
        relational.user_personas,
        con,
        affinities.persona_rows_sql(),
        only_users,
        columns=affinities.PERSONA_COLUMNS,
        beside=write_legacy,
    )


def write_activity(
    engine: Engine,
    con: duckdb.DuckDBPyConnection,
    only_users: Sequence[str] | None = None,
) -> int:
    """Each user's products and search texts (needs ``users``, ``user_products`` and ``user_queries``: the
    tables of ``affinities.compute_raw_affinities``, or their files through ``load_raw_affinities``)."""
    return _replace_rows(engine, relational.user_activity, con, affinities.USER_ACTIVITY_SQL, only_users)


def current_vocabulary(engine: Engine) -> pd.DataFrame:
    """The vocabulary of the last full rebuild (what a refresh normalises against)."""
    return relational.read_frame(engine, sa.select(relational.attribute_vocabulary))
