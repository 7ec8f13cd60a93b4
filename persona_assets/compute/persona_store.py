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
from collections.abc import Iterator, Mapping, Sequence

import duckdb
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from persona_assets.compute import affinities
from persona_assets.compute.duck import memory_limit_bytes
from persona_assets.stores import relational

_DELETE_CHUNK = 500

# Memory one user's rows may take on their way to the store (Arrow, then Python tuples), generously: a
# wide user's legacy row is a few KiB. Two ranges are in flight at a time.
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


def _ranges_in_background(
    con: duckdb.DuckDBPyConnection, sql: str, ranges: list[tuple[int, int]], stop: threading.Event
) -> Iterator[pa.Table]:
    """The result of ``sql`` for each uid range, computed one range ahead on a cursor of its own."""
    results: queue.Queue[pa.Table | BaseException | None] = queue.Queue(maxsize=1)

    def hand_over(item: pa.Table | BaseException | None) -> bool:
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
                if not hand_over(table):
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


def _write_ranges(
    conn: Connection,
    table: sa.Table,
    con: duckdb.DuckDBPyConnection,
    sql: str,
    *,
    upsert_columns: Sequence[str] = (),
    update: Mapping[str, sa.ColumnElement] | None = None,
) -> int:
    ranges = affinities.user_ranges(con, users_per_range(con))
    written = 0
    for rows in _ranges_in_background(con, sql, ranges, threading.Event()):
        written += relational.insert_arrow(conn, table, rows, upsert_columns=upsert_columns, update=update)
    return written


def write_legacy_columns(
    engine: Engine,
    con: duckdb.DuckDBPyConnection,
    *,
    has_changed: sa.ColumnElement | None = None,
) -> int:
    """The raw maps and latest search texts into the legacy ``user_persona`` columns (upsert; needs the
    tables of ``affinities.compute_raw_affinities``).

    The flags are left alone, unless ``has_changed`` gives the value an existing row's flag takes in the
    same write (the rebuild's 1 → 2, ``changes.calculated_since_rebuild_snapshot``): a second UPDATE of
    every row would rewrite a table of kilobyte rows once more.
    """
    columns = [c.name for c in relational.user_persona.columns if c.name not in ("extId", "hasChanged", "change_seq")]
    update = {} if has_changed is None else {"hasChanged": has_changed}
    with engine.begin() as conn:
        return _write_ranges(
            conn, relational.user_persona, con, affinities.legacy_rows_sql(), upsert_columns=columns, update=update
        )


def _replace_rows(
    engine: Engine,
    table: sa.Table,
    con: duckdb.DuckDBPyConnection,
    sql: str,
    only_users: Sequence[str] | None,
) -> int:
    """Replace the rows of ``only_users`` (or of everyone) with the rows ``sql`` gives, in one transaction.

    Everyone: every row is upserted in key order, which rewrites a table in place (deleting a million rows
    of JSON first cost more than writing them), then the rows of users who have no events any more go.
    """
    (key,) = [column.name for column in table.primary_key.columns]
    with engine.begin() as conn:
        if only_users is not None:
            _delete_rows(conn, table, key, only_users)
            return _write_ranges(conn, table, con, sql)
        others = [column.name for column in table.columns if column.name != key]
        written = _write_ranges(conn, table, con, sql, upsert_columns=others)
        _delete_users_without_rows(conn, table, key, con, written)
        return written


def _delete_users_without_rows(
    conn: Connection, table: sa.Table, key: str, con: duckdb.DuckDBPyConnection, expected: int
) -> None:
    """After a full upsert of ``expected`` rows: delete the rows whose user is not in DuckDB's ``users``."""
    stored = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    if stored == expected:
        return
    current = sa.Table(
        "current_users", sa.MetaData(), sa.Column("ext_id", relational.ID, primary_key=True), prefixes=["TEMPORARY"]
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
) -> int:
    return _replace_rows(engine, relational.user_personas, con, affinities.persona_rows_sql(), only_users)


def write_activity(
    engine: Engine,
    con: duckdb.DuckDBPyConnection,
    only_users: Sequence[str] | None = None,
) -> int:
    """Each user's products and search texts (``users`` and ``user_queries`` must exist; the products
    table is built here)."""
    affinities.create_user_products(con)
    return _replace_rows(engine, relational.user_activity, con, affinities.USER_ACTIVITY_SQL, only_users)


def current_vocabulary(engine: Engine) -> pd.DataFrame:
    """The vocabulary of the last full rebuild (what a refresh normalises against)."""
    return relational.read_frame(engine, sa.select(relational.attribute_vocabulary))
