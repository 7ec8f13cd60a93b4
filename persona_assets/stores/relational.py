"""Relational store: schema (the legacy ``createSchema``) and bulk reads and writes.

Portable SQLAlchemy only, so SQLite (the embedded default) and MySQL/MariaDB run the
same statements; the one dialect-specific piece, the upsert, is chosen by dialect name.
Bulk writes go through the DBAPI's ``executemany`` in chunks, never a row at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.engine import Connection, Engine

metadata = sa.MetaData()

# MySQL/MariaDB: utf8mb4 with a binary collation, so ids and names compare exactly as in SQLite and Python
# ('U1' != 'u1', 'a' != 'a ', code-point order) instead of the default case- and accent-insensitive one.
MYSQL_TABLE_OPTIONS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin", "mysql_engine": "InnoDB"}

# utf8mb4 index keys are limited to 767 bytes on older MySQL: 191 characters. Imports reject longer ids
# and names (see ingest/validation.py), so every backend stores exactly the same rows.
MAX_ID_LENGTH = 191
MAX_NAME_LENGTH = 255
# Titles, category names and search queries: longer ones are rejected rows (a MySQL TEXT holds 64 KiB, four
# bytes a character at worst; a search box or a product title never comes near it).
MAX_TEXT_LENGTH = 2000
ID = sa.String(MAX_ID_LENGTH)
LONG_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

products = sa.Table(
    "products",
    metadata,
    sa.Column("pid", ID, primary_key=True),
    sa.Column("pos", sa.String(MAX_NAME_LENGTH), nullable=False, server_default=""),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("brand", sa.String(MAX_NAME_LENGTH), nullable=False, server_default=""),
    sa.Column("generic_name", sa.String(MAX_NAME_LENGTH), nullable=False, server_default=""),
    sa.Column("gender", sa.String(16), nullable=True),
    sa.Column("cat_l1", sa.BigInteger, nullable=True),
    sa.Column("cat_l2", sa.BigInteger, nullable=True),
    sa.Column("cat_l3", sa.BigInteger, nullable=True),
    sa.Column("price", sa.Text, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

categories = sa.Table(
    "categories",
    metadata,
    sa.Column("cat_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("parent_id", sa.BigInteger, nullable=True),
    # 1, 2, 3 ... from walking parent_id; NULL when the chain is broken or cyclic.
    sa.Column("level", sa.Integer, nullable=True),
    **MYSQL_TABLE_OPTIONS,
)

# The legacy table, legacy column names: legacy readers keep working.
user_persona = sa.Table(
    "user_persona",
    metadata,
    sa.Column("extId", ID, primary_key=True),
    sa.Column("hasChanged", sa.Integer, nullable=False, server_default="1"),
    sa.Column("searchTerms", LONG_TEXT, nullable=True),
    sa.Column("gender", sa.Text, nullable=True),
    sa.Column("city", sa.Text, nullable=True),
    sa.Column("ecomm", sa.Text, nullable=True),
    sa.Column("brandAffinity", LONG_TEXT, nullable=True),
    sa.Column("categoryAffinity", LONG_TEXT, nullable=True),
    sa.Column("genericAffinity", LONG_TEXT, nullable=True),
    # Bumped on every change; a calculation may only clear the flag of the version it read.
    sa.Column("change_seq", sa.BigInteger, nullable=False, server_default="0"),
    **MYSQL_TABLE_OPTIONS,
)
sa.Index("ix_user_persona_has_changed", user_persona.c.hasChanged)

# The normalised personas (contract section 3), one row per user. Each map column is a JSON object of the
# kept keys' raw weights (integers); the normalised value of a key is its weight divided by the sum of the
# map's weights (``normalised_map``), which is exactly the float the rebuild computes and indexes (integer
# sums are exact in float64, and one division is correctly rounded). Weights take ~2.3x fewer bytes than
# 17-digit fractions: at a million users 0.8 instead of 1.9 KB per row, written twice through the WAL.
# Rows written before hold the fractions themselves: their sum is 1 within rounding, so they read back the same
# within an ulp or two.
user_personas = sa.Table(
    "user_personas",
    metadata,
    sa.Column("ext_id", ID, primary_key=True),
    sa.Column("gender", sa.String(16), nullable=False),
    sa.Column("city", sa.Text, nullable=False),
    sa.Column("ecomm", sa.Text, nullable=False),
    sa.Column("brand_affinity", LONG_TEXT, nullable=False),
    sa.Column("generic_affinity", LONG_TEXT, nullable=False),
    sa.Column("category_affinity", LONG_TEXT, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)


def normalised_map(text: str) -> dict[str, float]:
    """One map column of ``user_personas`` as normalised values (each weight divided by the map's sum)."""
    weights = orjson.loads(text)
    total = sum(weights.values())
    return {key: weight / total for key, weight in weights.items()}


attribute_vocabulary = sa.Table(
    "attribute_vocabulary",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("total", sa.Double, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

# The query's read model: one row per user with the distinct products they visited and purchased and the
# distinct texts they searched, each newest first, as JSON. One row per user keeps the rebuild's write to
# ~users rows instead of ~users x products; the order is computed once here, so the times need not be kept
# (half the bytes of [pid, visited_us, purchased_us] entries: ~0.6 instead of 1.2 KB a user at 1M).
user_activity = sa.Table(
    "user_activity",
    metadata,
    sa.Column("ext_id", ID, primary_key=True),
    # {"visited": [pid, ...], "purchased": [pid, ...]} (rows of older builds: [[pid, visited_us | null,
    # purchased_us | null], ...] or objects with those names, still read)
    sa.Column("products", LONG_TEXT, nullable=False),
    # [query, ...] (older: [[query, searched_us], ...] or objects)
    sa.Column("searches", LONG_TEXT, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)


# Users whose document the search index refused (stores.refusals): how often, why, and when the refresh
# sensor may claim them again (back-off); a user past the allowed failures waits here (the dead letter)
# until an operator retries them (`persona dead-letter --retry`) or a rebuild indexes them.
user_refusals = sa.Table(
    "user_refusals",
    metadata,
    sa.Column("extId", ID, primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("last_failed_us", sa.BigInteger, nullable=False),
    # Epoch microseconds before which the user is not claimed; INT64_MAX = dead-lettered.
    sa.Column("retry_after_us", sa.BigInteger, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)


# Every user's change_seq as a full rebuild read it before any event (stores.changes), one set of rows per
# build (the run that computed its raw affinities): two rebuilds at once each keep their own. Kept in the
# store, so a million flags never travel through Python to be compared back.
rebuild_flag_snapshots = sa.Table(
    "rebuild_flag_snapshots",
    metadata,
    sa.Column("build", sa.String(64), primary_key=True),
    sa.Column("extId", ID, primary_key=True),
    sa.Column("change_seq", sa.BigInteger, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)
# Tables of earlier versions that nothing reads any more, dropped by create_schema.
RETIRED_TABLES = ("rebuild_flag_snapshot",)

# Users a refresh run is working on: a user is in at most one run at a time.
user_claims = sa.Table(
    "user_claims",
    metadata,
    sa.Column("extId", ID, primary_key=True),
    sa.Column("claim", sa.String(64), nullable=False, index=True),
    sa.Column("claimed_us", sa.BigInteger, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

imports = sa.Table(
    "imports",
    metadata,
    sa.Column("import_id", sa.String(64), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("summary", LONG_TEXT, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

import_rejects = sa.Table(
    "import_rejects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("import_id", sa.String(64), nullable=False, index=True),
    sa.Column("file", sa.String(64), nullable=False),
    sa.Column("row_number", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(255), nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

CHUNK_ROWS = 20_000
SQLITE_PAGE_SIZE = 16_384
INT64_MAX = 2**63 - 1


def create_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL so readers are not blocked by a rebuild.

    Server connections are pinged when taken from the pool (a server may have dropped them); a SQLite
    file cannot, so its connections are not (a query takes two).
    """
    pre_ping = sa.engine.make_url(url).get_backend_name() != "sqlite"
    engine = sa.create_engine(url, future=True, pool_pre_ping=pre_ping)
    if engine.dialect.name == "sqlite":
        if engine.url.database and engine.url.database != ":memory:":
            Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # Before anything creates the file's first page (a no-op on an existing store): per-user rows of
            # JSON are kilobytes, and 16 KiB pages write them ~1.6x faster than the 4 KiB default (fewer
            # overflow pages), for ~0.1 ms more per 20-key lookup (docs/benchmarks.md).
            cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    return engine


@functools.cache
def store_engine(url: str) -> Engine:
    """The engine of the store at ``url``, its schema created: one per URL in a process (the Dagster resource
    and the command line share it)."""
    engine = create_engine(url)
    create_schema(engine)
    return engine


def create_mysql_database(server_url: str, name: str) -> str:
    """(Re)create database ``name`` (utf8mb4, binary collation) on the server of ``server_url``; its URL.

    For throwaway databases: benchmarks and the tests' per-home stores.
    """
    url = sa.engine.make_url(server_url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
            conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    finally:
        engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def create_schema(engine: Engine) -> None:
    """Create every table that is missing and drop retired ones (idempotent)."""
    from persona_assets.stores import audience_tables  # noqa: F401  (its tables join this metadata)

    metadata.create_all(engine, checkfirst=True)
    retired = [name for name in RETIRED_TABLES if sa.inspect(engine).has_table(name)]
    if retired:
        with engine.begin() as conn:
            for name in retired:
                conn.execute(sa.text(f"DROP TABLE {engine.dialect.identifier_preparer.quote(name)}"))


def _compiled(conn: Connection, stmt: sa.Executable) -> tuple[str, Sequence[str] | None]:
    compiled = stmt.compile(dialect=conn.dialect)
    return str(compiled), compiled.positiontup


def executemany(conn: Connection, stmt: sa.Executable, columns: Sequence[str], rows: Iterable[tuple]) -> int:
    """Run ``stmt`` (bound by column name) for every tuple of ``rows`` through the DBAPI's ``executemany``.

    The fast path of both sqlite3 and PyMySQL (which folds INSERTs into multi-row statements), in chunks
    so memory stays flat.
    """
    sql, positions = _compiled(conn, stmt)
    order = [columns.index(p) for p in positions] if positions else None
    if order == list(range(len(columns))):
        order = None  # already in statement order: hand the tuples over as they are
    named = not positions
    count = 0
    chunk: list[Any] = []
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        for row in rows:
            if named:
                chunk.append(dict(zip(columns, row, strict=True)))
            else:
                chunk.append(row if order is None else tuple(row[i] for i in order))
            if len(chunk) >= CHUNK_ROWS:
                cursor.executemany(sql, chunk)
                count += len(chunk)
                chunk = []
        if chunk:
            cursor.executemany(sql, chunk)
            count += len(chunk)
    finally:
        cursor.close()
    return count


def frame_rows(rows: pd.DataFrame) -> Iterable[tuple]:
    """A DataFrame's rows as tuples with NaN/NaT/NA turned into None."""
    return rows.astype(object).where(rows.notna(), None).itertuples(index=False, name=None)


def bulk_insert(conn: Connection, table: sa.Table, rows: pd.DataFrame) -> int:
    """Insert a DataFrame whose columns are (a subset of) the table's columns."""
    columns = list(rows.columns)
    stmt = sa.insert(table).values({c: sa.bindparam(c) for c in columns})
    return executemany(conn, stmt, columns, frame_rows(rows))


def insert_columns(
    conn: Connection,
    table: sa.Table,
    columns: Mapping[str, Sequence[Any]],
    *,
    upsert_columns: Sequence[str] = (),
    update: Mapping[str, Any] | None = None,
) -> int:
    """Insert rows given as equally long Python lists, one per column of ``table`` (by name).

    With ``upsert_columns``, existing keys get those columns overwritten, and the columns of ``update`` set
    to its expressions (which may bind the incoming row's values by column name: ``sa.bindparam("extId")``).
    """
    names = list(columns)
    values = {c: sa.bindparam(c) for c in names}
    if upsert_columns:
        stmt = upsert_statement(conn, table, values, dict(update or {}), update_from_insert=upsert_columns)
    else:
        stmt = sa.insert(table).values(values)
    return executemany(conn, stmt, names, zip(*columns.values(), strict=True))


def insert_arrow(
    conn: Connection,
    table: sa.Table,
    rows: pa.Table,
    *,
    upsert_columns: Sequence[str] = (),
    update: Mapping[str, Any] | None = None,
) -> int:
    """Insert an Arrow table whose columns are named like ``table``'s (:func:`insert_columns`), a chunk of
    rows at a time (no pandas round trip)."""
    return sum(
        insert_columns(conn, table, batch.to_pydict(), upsert_columns=upsert_columns, update=update)
        for batch in rows.to_batches(CHUNK_ROWS)
    )


def bulk_upsert(conn: Connection, table: sa.Table, rows: pd.DataFrame, update: Sequence[str]) -> int:
    """Insert rows, or overwrite the ``update`` columns of rows whose primary key exists."""
    columns = list(rows.columns)
    stmt = upsert_statement(conn, table, {c: sa.bindparam(c) for c in columns}, {}, update_from_insert=update)
    return executemany(conn, stmt, columns, frame_rows(rows))


def replace_table(engine: Engine, table: sa.Table, rows: pd.DataFrame) -> int:
    """Swap a table's whole content in one transaction (readers see the old or the new)."""
    with engine.begin() as conn:
        conn.execute(table.delete())
        return bulk_insert(conn, table, rows)


def upsert_statement(
    conn: Connection,
    table: sa.Table,
    values: dict[str, Any],
    update: dict[str, Any],
    *,
    update_from_insert: Sequence[str] = (),
) -> sa.Executable:
    """INSERT ... ON CONFLICT / ON DUPLICATE KEY UPDATE for the dialect at hand.

    ``update`` sets columns of an existing row to expressions; ``update_from_insert`` names columns that
    take the value the INSERT carried.
    """
    name = conn.dialect.name
    if name == "sqlite":
        stmt = sqlite.insert(table).values(values)
        keys = [c.name for c in table.primary_key.columns]
        sets = {**update, **{c: stmt.excluded[c] for c in update_from_insert}}
        return stmt.on_conflict_do_update(index_elements=keys, set_=sets)
    if name in ("mysql", "mariadb"):
        stmt = mysql.insert(table).values(values)
        sets = {**update, **{c: stmt.inserted[c] for c in update_from_insert}}
        return stmt.on_duplicate_key_update(**sets)
    raise NotImplementedError(f"upsert is not implemented for dialect {name!r}")


def read_frame(engine: Engine, query: sa.Select | sa.Table) -> pd.DataFrame:
    """Run a select into a DataFrame; integer columns stay exact (nullable Int64, never float)."""
    select = sa.select(query) if isinstance(query, sa.Table) else query
    with engine.connect() as conn:
        result = conn.execute(select)
        names = list(result.keys())
        rows = result.fetchall()
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    data = {}
    for name, values, column in zip(names, columns, select.selected_columns, strict=True):
        if isinstance(column.type, sa.Integer):
            data[name] = pd.array(list(values), dtype="Int64")
        else:
            data[name] = pd.Series(list(values), dtype=object)
    return pd.DataFrame(data)
