"""The legacy ``hasChanged`` flag (1 = needs calculation, 2 = calculated, 0 = searchable).

Every change bumps ``change_seq``. A calculation snapshots (user, change_seq) before it
reads any event, and may only advance the flags of users whose ``change_seq`` is still
the one it read: a user who got new events meanwhile keeps 1 (no lost update).
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from persona_assets.stores.refusals import waiting_condition
from persona_assets.stores.relational import (
    MYSQL_TABLE_OPTIONS,
    executemany,
    read_frame,
    rebuild_flag_snapshots,
    upsert_statement,
    user_claims,
    user_persona,
)

# Ids per IN (...) list: well under SQLite's and MySQL's limits on bound parameters.
_IN_CHUNK = 500

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


def snapshot_flags(engine: Engine, only_users: Sequence[str]) -> pd.DataFrame:
    """(ext_id, change_seq, has_changed) of ``only_users``, read before a refresh reads their events (by
    primary key, whatever the size of the table)."""
    columns = (user_persona.c.extId, user_persona.c.change_seq, user_persona.c.hasChanged)
    ids = sorted(set(only_users))
    chunks = [
        read_frame(engine, sa.select(*columns).where(user_persona.c.extId.in_(ids[start : start + _IN_CHUNK])))
        for start in range(0, len(ids), _IN_CHUNK)
    ]
    frame = (
        pd.concat(chunks, ignore_index=True) if chunks else read_frame(engine, sa.select(*columns).where(sa.false()))
    )
    return frame.rename(columns={"extId": "ext_id", "hasChanged": "has_changed"})


@dataclass(frozen=True)
class RebuildSnapshot:
    """A full rebuild's snapshot, kept in the store under its build (:func:`snapshot_flags_for_rebuild`):
    the ``snapshot`` argument of :func:`advance_flags` and :func:`reflag_changed_since` for a rebuild."""

    build: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9A-Za-z_-]{1,64}", self.build):
            raise ValueError(f"build {self.build!r}: expected 1-64 letters, digits, '-' or '_' (a Dagster run id)")

    def rows(self) -> sa.ColumnElement[bool]:
        # Rendered into the statement (checked above), as the flag constants are: the legacy upsert binds
        # only its row values.
        return rebuild_flag_snapshots.c.build == sa.literal_column(f"'{self.build}'")


#: What the flag moves compare against: a refresh's frame (ext_id, change_seq), or a rebuild's snapshot.
Snapshot = pd.DataFrame | RebuildSnapshot


def snapshot_flags_for_rebuild(engine: Engine, build: str) -> RebuildSnapshot:
    """Every user's change_seq into ``rebuild_flag_snapshots`` under ``build``, before a full rebuild reads
    any event. Another build's rows are left alone: two rebuilds at once each advance flags by their own.

    One INSERT … SELECT inside the store: no row travels through Python.
    """
    snapshot = RebuildSnapshot(build)
    with engine.begin() as conn:
        conn.execute(sa.delete(rebuild_flag_snapshots).where(snapshot.rows()))
        conn.execute(
            sa.insert(rebuild_flag_snapshots).from_select(
                ["build", "extId", "change_seq"],
                sa.select(sa.literal(build, sa.String(64)), user_persona.c.extId, user_persona.c.change_seq),
            )
        )
    return snapshot


def snapshot_builds(engine: Engine) -> list[str]:
    """The builds whose snapshots are in the store."""
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.select(rebuild_flag_snapshots.c.build).distinct())]


def drop_rebuild_snapshots(engine: Engine, builds: Collection[str]) -> None:
    """Forget the snapshots of ``builds`` (finished, or left behind by a killed run)."""
    if builds:
        with engine.begin() as conn:
            conn.execute(sa.delete(rebuild_flag_snapshots).where(rebuild_flag_snapshots.c.build.in_(sorted(builds))))


# change_seq only grows from 0, so this value in the rebuild's snapshot marks a user the index refused.
_REFUSED_SEQ = -1


def forget_in_rebuild_snapshot(engine: Engine, snapshot: RebuildSnapshot, ext_ids: Sequence[str]) -> None:
    """Mark users the index refused in the rebuild's snapshot: their flags then never advance (they stay
    at 2), and the re-flag after the swap leaves them alone."""
    ids = sorted(set(ext_ids))
    with engine.begin() as conn:
        for start in range(0, len(ids), _IN_CHUNK):
            conn.execute(
                sa.update(rebuild_flag_snapshots)
                .where(snapshot.rows())
                .where(rebuild_flag_snapshots.c.extId.in_(ids[start : start + _IN_CHUNK]))
                .values(change_seq=_REFUSED_SEQ)
            )


_STAGING = sa.Table(
    "flag_snapshot",
    sa.MetaData(),
    sa.Column("extId", sa.String(191), primary_key=True),
    sa.Column("change_seq", sa.BigInteger, nullable=False),
    prefixes=["TEMPORARY"],
    **MYSQL_TABLE_OPTIONS,
)


def _snapshot_holds(snapshot: Snapshot, change_seq: sa.ColumnElement) -> sa.Exists:
    """The condition "the snapshot holds this user with ``change_seq``" (a refresh's frame: once staged)."""
    table = _STAGING if isinstance(snapshot, pd.DataFrame) else rebuild_flag_snapshots
    holds = sa.select(_sql(1)).where(table.c.extId == user_persona.c.extId).where(table.c.change_seq == change_seq)
    return (holds if isinstance(snapshot, pd.DataFrame) else holds.where(snapshot.rows())).exists()


@contextmanager
def _snapshot_in_store(engine: Engine, snapshot: Snapshot) -> Iterator[tuple[Connection, sa.Exists]]:
    """A transaction and the condition "this user's change_seq is still the one in the snapshot": the
    rebuild's rows of the snapshot table, or a refresh's frame staged as a temporary table."""
    staged = isinstance(snapshot, pd.DataFrame)
    with engine.begin() as conn:
        if staged:
            _STAGING.drop(conn, checkfirst=True)
            _STAGING.create(conn)
            stmt = sa.insert(_STAGING).values(extId=sa.bindparam("extId"), change_seq=sa.bindparam("change_seq"))
            executemany(
                conn,
                stmt,
                ["extId", "change_seq"],
                zip(snapshot["ext_id"].tolist(), snapshot["change_seq"].astype("int64").tolist(), strict=True),
            )
        yield conn, _snapshot_holds(snapshot, user_persona.c.change_seq)
        if staged:
            _STAGING.drop(conn)


def calculated_since_rebuild_snapshot(engine: Engine, snapshot: RebuildSnapshot) -> sa.ColumnElement:
    """The flag a user's row takes when the rebuild upserts its calculated persona: 2 where it is 1 and
    change_seq is still the one in the rebuild's snapshot, else unchanged (a user changed meanwhile keeps
    1). :func:`advance_flags` ``(snapshot, [1], 2)`` as an expression of the write itself, for the
    update clause of an upsert of ``user_persona``.
    """
    # The snapshot lookup names the row being written as ``user_persona``, spelled out: SQLAlchemy does
    # not correlate a subquery with an INSERT's table, and would scan the table a second time instead.
    quote = engine.dialect.identifier_preparer.quote
    written_ext_id = sa.literal_column(f"{quote(user_persona.name)}.{quote(user_persona.c.extId.name)}")
    table = rebuild_flag_snapshots
    snapshot_seq = (
        sa.select(table.c.change_seq).where(snapshot.rows()).where(table.c.extId == written_ext_id).scalar_subquery()
    )
    return sa.case(
        (
            sa.and_(user_persona.c.hasChanged == _sql(NEEDS_CALCULATION), user_persona.c.change_seq == snapshot_seq),
            _sql(CALCULATED),
        ),
        else_=user_persona.c.hasChanged,
    )


def count_calculated_since_rebuild_snapshot(engine: Engine, snapshot: RebuildSnapshot) -> int:
    """Users at 2 whose change_seq is still the rebuild snapshot's."""
    holds = _snapshot_holds(snapshot, user_persona.c.change_seq)
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(user_persona)
                .where(user_persona.c.hasChanged == _sql(CALCULATED))
                .where(holds)
            ).scalar_one()
        )


def advance_flags(engine: Engine, snapshot: Snapshot, from_states: Sequence[int], to_state: int) -> int:
    """Move users of ``snapshot`` (a refresh's frame, or a rebuild's :class:`RebuildSnapshot`) from ``from_states`` to
    ``to_state`` where change_seq is unchanged.

    One set-based UPDATE against the snapshot in the store: portable SQL and no statement per user.
    Returns the number of users moved.
    """
    if isinstance(snapshot, pd.DataFrame) and snapshot.empty:
        return 0
    with _snapshot_in_store(engine, snapshot) as (conn, unchanged):
        result = conn.execute(
            sa.update(user_persona)
            .where(user_persona.c.hasChanged.in_(list(from_states)))
            .where(unchanged)
            .values(hasChanged=to_state)
        )
        return int(result.rowcount or 0)


def reflag_changed_since(engine: Engine, snapshot: Snapshot) -> int:
    """After a full rebuild swapped its index in: users at 0 or 2 who changed after the rebuild read its
    snapshot (or appeared since) go back to 1.

    A refresh may have indexed them into the build the swap just replaced, either finished (0) or between
    its index write and its 2 → 0 (2); at 1 they are refreshed again, and that refresh's 2 → 0 finds
    them at 1 and leaves them there, so nothing the swap dropped stays lost. Users the index refused
    (:func:`forget_in_rebuild_snapshot`) stay at 2.
    """
    with _snapshot_in_store(engine, snapshot) as (conn, unchanged):
        refused = _snapshot_holds(snapshot, _sql(_REFUSED_SEQ))
        result = conn.execute(
            sa.update(user_persona)
            .where(user_persona.c.hasChanged.in_([SEARCHABLE, CALCULATED]))
            .where(~unchanged)
            .where(~refused)
            .values(hasChanged=NEEDS_CALCULATION)
        )
        return int(result.rowcount or 0)


def claim_users(engine: Engine, claim: str, limit: int, ttl_seconds: float) -> list[str]:
    """Claim up to ``limit`` users that need work (hasChanged 1 or 2), no live claim holds and the index has
    not refused lately (``stores.refusals``: backing off, or dead-lettered).

    Claims older than ``ttl_seconds`` are dropped first (their run died without releasing them).
    A user is in at most one claim: the claim's primary key is the user.
    """
    now_us = int(time.time() * 1_000_000)
    with engine.begin() as conn:
        conn.execute(sa.delete(user_claims).where(user_claims.c.claimed_us < now_us - int(ttl_seconds * 1_000_000)))
        free = (
            sa.select(user_persona.c.extId)
            .where(user_persona.c.hasChanged.in_([NEEDS_CALCULATION, CALCULATED]))
            .where(~sa.select(user_claims.c.extId).where(user_claims.c.extId == user_persona.c.extId).exists())
            .where(~waiting_condition(user_persona.c.extId, now_us))  # refused lately, or dead-lettered
            .order_by(user_persona.c.extId)
            .limit(limit)
        )
        ids = [row[0] for row in conn.execute(free)]
        if ids:
            stmt = sa.insert(user_claims).values(
                extId=sa.bindparam("extId"), claim=sa.bindparam("claim"), claimed_us=sa.bindparam("claimed_us")
            )
            executemany(conn, stmt, ["extId", "claim", "claimed_us"], ((i, claim, now_us) for i in ids))
    return ids


def claimed_users(engine: Engine, claim: str) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.select(user_claims.c.extId).where(user_claims.c.claim == claim))]


def release_claim(engine: Engine, claim: str) -> int:
    with engine.begin() as conn:
        return int(conn.execute(sa.delete(user_claims).where(user_claims.c.claim == claim)).rowcount or 0)


def flag_counts(engine: Engine) -> dict[int, int]:
    """How many users are at each flag value."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(user_persona.c.hasChanged, sa.func.count()).group_by(user_persona.c.hasChanged)
        ).all()
    return {int(flag): int(n) for flag, n in rows}
