"""The legacy ``hasChanged`` flag (1 = needs calculation, 2 = calculated, 0 = searchable).

Every change bumps ``change_seq``. A calculation snapshots (user, change_seq) before it
reads any event, and may only advance the flags of users whose ``change_seq`` is still
the one it read: a user who got new events meanwhile keeps 1 (no lost update).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persona_assets.stores.relational import (
    MYSQL_TABLE_OPTIONS,
    executemany,
    read_frame,
    upsert_statement,
    user_persona,
)

NEEDS_CALCULATION = 1
CALCULATED = 2
SEARCHABLE = 0


def _sql(value: int) -> sa.ColumnElement:
    """A constant rendered into the statement, so only the ids are bound per row."""
    return sa.literal_column(str(int(value)))


def flag_users_changed(engine: Engine, ext_ids: Iterable[str]) -> int:
    """Set hasChanged = 1 and bump change_seq for these users, creating the rows that are missing."""
    ids = sorted(set(ext_ids))
    if not ids:
        return 0
    with engine.begin() as conn:
        stmt = upsert_statement(
            conn,
            user_persona,
            {"extId": sa.bindparam("extId"), "hasChanged": _sql(NEEDS_CALCULATION), "change_seq": _sql(1)},
            {"hasChanged": _sql(NEEDS_CALCULATION), "change_seq": user_persona.c.change_seq + _sql(1)},
        )
        executemany(conn, stmt, ["extId"], ((i,) for i in ids))
    return len(ids)


def snapshot_flags(engine: Engine) -> pd.DataFrame:
    """(ext_id, change_seq, has_changed) of every user, read before a calculation reads events."""
    frame = read_frame(engine, sa.select(user_persona.c.extId, user_persona.c.change_seq, user_persona.c.hasChanged))
    return frame.rename(columns={"extId": "ext_id", "hasChanged": "has_changed"})


def advance_flags(engine: Engine, snapshot: pd.DataFrame, from_states: Sequence[int], to_state: int) -> int:
    """Move users of ``snapshot`` from ``from_states`` to ``to_state`` where change_seq is unchanged.

    One set-based UPDATE against a temporary table of the snapshot: portable SQL and no
    statement per user. Returns the number of users moved.
    """
    if snapshot.empty:
        return 0
    staging = sa.Table(
        "flag_snapshot",
        sa.MetaData(),
        sa.Column("extId", sa.String(191), primary_key=True),
        sa.Column("change_seq", sa.BigInteger, nullable=False),
        prefixes=["TEMPORARY"],
        **MYSQL_TABLE_OPTIONS,
    )
    with engine.begin() as conn:
        staging.drop(conn, checkfirst=True)
        staging.create(conn)
        stmt = sa.insert(staging).values(extId=sa.bindparam("extId"), change_seq=sa.bindparam("change_seq"))
        executemany(
            conn,
            stmt,
            ["extId", "change_seq"],
            zip(snapshot["ext_id"].tolist(), snapshot["change_seq"].astype("int64").tolist(), strict=True),
        )
        matches = (
            sa.select(sa.literal(1))
            .where(staging.c.extId == user_persona.c.extId)
            .where(staging.c.change_seq == user_persona.c.change_seq)
        )
        result = conn.execute(
            sa.update(user_persona)
            .where(user_persona.c.hasChanged.in_(list(from_states)))
            .where(matches.exists())
            .values(hasChanged=to_state)
        )
        staging.drop(conn)
        return int(result.rowcount or 0)


def flag_counts(engine: Engine) -> dict[int, int]:
    """How many users are at each flag value."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(user_persona.c.hasChanged, sa.func.count()).group_by(user_persona.c.hasChanged)
        ).all()
    return {int(flag): int(n) for flag, n in rows}
