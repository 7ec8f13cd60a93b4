"""Writes of computed personas to the relational store, shared by the full rebuild and the refresh.

Each function reads tables of a DuckDB connection (``raw_affinity``/``users`` after
``compute_raw_affinities``, ``persona_users``/``persona_affinity`` after ``compute_personas``) and
streams them into the store. ``only_users`` = None replaces the whole table; a list replaces just
those users' rows (in one transaction either way).
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from persona_assets.compute import affinities
from persona_assets.stores import relational

_DELETE_CHUNK = 500


def _delete_rows(conn: Connection, table: sa.Table, column: str, only_users: Sequence[str] | None) -> None:
    if only_users is None:
        conn.execute(table.delete())
        return
    for start in range(0, len(only_users), _DELETE_CHUNK):
        conn.execute(table.delete().where(table.c[column].in_(only_users[start : start + _DELETE_CHUNK])))


def write_legacy_columns(engine: Engine, con: duckdb.DuckDBPyConnection) -> int:
    """The raw maps into the legacy ``user_persona`` columns (upsert: the flags are left alone)."""
    legacy = con.execute(affinities.legacy_rows_sql())
    columns = [d[0] for d in legacy.description if d[0] != "extId"]
    with engine.begin() as conn:
        return relational.insert_result(conn, relational.user_persona, legacy, upsert_columns=columns)


def write_personas(engine: Engine, con: duckdb.DuckDBPyConnection, only_users: Sequence[str] | None = None) -> int:
    with engine.begin() as conn:
        _delete_rows(conn, relational.user_personas, "ext_id", only_users)
        return relational.insert_result(conn, relational.user_personas, con.execute(affinities.persona_rows_sql()))


def write_activity(engine: Engine, con: duckdb.DuckDBPyConnection, only_users: Sequence[str] | None = None) -> int:
    with engine.begin() as conn:
        _delete_rows(conn, relational.user_activity, "ext_id", only_users)
        return relational.insert_result(conn, relational.user_activity, con.execute(affinities.USER_ACTIVITY_SQL))


def current_vocabulary(engine: Engine) -> pd.DataFrame:
    """The vocabulary of the last full rebuild (what a refresh normalises against)."""
    return relational.read_frame(engine, sa.select(relational.attribute_vocabulary))
