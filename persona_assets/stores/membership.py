"""Saved segments' members in the relational store: full computations, refreshes, history (docs/audiences.md).

A full computation scores every persona of ``user_personas`` (streamed in ext_id order, one chunk at a
time) against one segment, then writes only the difference to the members it had: who entered, who
left, and a row for the computation. A refresh re-scores only the users it refreshed, against every
segment. Both record who entered and left and when; that history is kept :data:`HISTORY_DAYS` days.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from persona_assets.audiences import export
from persona_assets.audiences.definitions import SavedSegment
from persona_assets.audiences.membership import Cutoff, MemberScan, PersonaRow, columns_needed, is_member, score_row
from persona_assets.query.scoring import ScoreWeights
from persona_assets.stores import relational
from persona_assets.stores.audience_tables import (
    parse_stamp,
    segment_member_changes,
    segment_members,
    segment_membership_runs,
    stamp,
)
from persona_assets.stores.segments import SegmentError, get_segment, list_segments

__all__ = [
    "HISTORY_DAYS",
    "MemberChange",
    "MembersNotComputed",
    "MembershipRun",
    "Overlap",
    "compute_full",
    "export_members",
    "member_changes",
    "member_count",
    "membership_history",
    "overlap",
    "persona_rows",
    "refresh_membership",
    "require_computed",
]

#: How long who-entered-and-left is kept (the issue asks for 90 days at least; a year and a bit covers a
#: year-on-year comparison). The latest full computation's row is kept whatever its age (its cutoff).
HISTORY_DAYS = 400
#: Personas read from ``user_personas`` at a time, and ext_ids per IN list.
_CHUNK_ROWS = 10_000
_IN_LIST = 1_000


@dataclass(frozen=True)
class MembershipRun:
    """One computation of a segment's members: ``full`` or ``refresh``, and its counts after it."""

    segment: str
    computed_at: datetime
    kind: str
    members: int
    entered: int
    exited: int

    def to_json(self) -> dict[str, Any]:
        return {
            "computedAt": stamp(self.computed_at),
            "kind": self.kind,
            "members": self.members,
            "entered": self.entered,
            "exited": self.exited,
        }


@dataclass(frozen=True)
class MemberChange:
    """A shopper who entered (or left) a segment at a computation."""

    computed_at: datetime
    ext_id: str
    entered: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "computedAt": stamp(self.computed_at),
            "ext_id": self.ext_id,
            "change": "entered" if self.entered else "exited",
        }


def _chunks(items: Sequence[str], size: int = _IN_LIST) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def persona_rows(
    engine: Engine, columns: Sequence[str], only_users: Sequence[str] | None = None, *, member_of: str | None = None
) -> Iterator[PersonaRow]:
    """``user_personas`` rows in ext_id order (code-point order on both backends): ext_id, gender and the
    map ``columns`` as stored; everyone (or the members of segment ``member_of``) through a server-side
    cursor, or only ``only_users``."""
    table = relational.user_personas
    select = sa.select(table.c.ext_id, table.c.gender, *(table.c[name] for name in columns)).order_by(table.c.ext_id)
    if member_of is not None:
        members = segment_members.c
        select = select.join(segment_members, members.ext_id == table.c.ext_id).where(members.segment == member_of)

    def rows(conn: Connection, statement: sa.Select) -> Iterator[PersonaRow]:
        result = conn.execution_options(stream_results=True, yield_per=_CHUNK_ROWS).execute(statement)
        for chunk in result.partitions(_CHUNK_ROWS):
            for row in chunk:
                yield row[0], row[1], dict(zip(columns, row[2:], strict=True))

    with engine.connect() as conn:
        if only_users is None:
            yield from rows(conn, select)
            return
        for chunk in _chunks(sorted(set(only_users))):
            yield from rows(conn, select.where(table.c.ext_id.in_(chunk)))


def _current_members(conn: Connection, name: str, only_users: Sequence[str] | None = None) -> set[str]:
    select = sa.select(segment_members.c.ext_id).where(segment_members.c.segment == name)
    if only_users is None:
        return set(conn.execute(select).scalars())
    return {
        ext_id
        for chunk in _chunks(list(only_users))
        for ext_id in conn.execute(select.where(segment_members.c.ext_id.in_(chunk))).scalars()
    }


def _write_changes(
    conn: Connection, name: str, computed_at: str, entered: Sequence[str], exited: Sequence[str]
) -> None:
    for chunk in _chunks(exited):
        conn.execute(
            sa.delete(segment_members).where(segment_members.c.segment == name, segment_members.c.ext_id.in_(chunk))
        )
    insert = sa.insert(segment_members).values(segment=sa.bindparam("segment"), ext_id=sa.bindparam("ext_id"))
    relational.executemany(conn, insert, ["segment", "ext_id"], ((name, ext_id) for ext_id in entered))
    changes = sa.insert(segment_member_changes).values(
        {column: sa.bindparam(column) for column in ("segment", "computed_at", "ext_id", "entered")}
    )
    rows = [
        *((name, computed_at, ext_id, True) for ext_id in entered),
        *((name, computed_at, ext_id, False) for ext_id in exited),
    ]
    relational.executemany(conn, changes, ["segment", "computed_at", "ext_id", "entered"], rows)


def _count(conn: Connection, name: str) -> int:
    return conn.execute(
        sa.select(sa.func.count()).select_from(segment_members).where(segment_members.c.segment == name)
    ).scalar_one()


def _record_run(
    conn: Connection, name: str, computed_at: str, kind: str, entered: int, exited: int, cutoff: Cutoff | None = None
) -> MembershipRun:
    members = _count(conn, name)
    conn.execute(
        sa.insert(segment_membership_runs).values(
            segment=name,
            computed_at=computed_at,
            kind=kind,
            members=members,
            entered=entered,
            exited=exited,
            cutoff_score=None if cutoff is None else cutoff.score,
            cutoff_ext_id=None if cutoff is None else cutoff.ext_id,
        )
    )
    return MembershipRun(name, parse_stamp(computed_at), kind, members, entered, exited)


def _prune(conn: Connection, name: str, computed_at: datetime) -> None:
    """Forget history older than :data:`HISTORY_DAYS`, keeping the latest full computation's row."""
    before = stamp(computed_at - timedelta(days=HISTORY_DAYS))
    conn.execute(
        sa.delete(segment_member_changes).where(
            segment_member_changes.c.segment == name, segment_member_changes.c.computed_at < before
        )
    )
    runs = segment_membership_runs.c
    latest_full = _latest_full(conn, name)
    old = sa.delete(segment_membership_runs).where(runs.segment == name, runs.computed_at < before)
    if latest_full is not None:
        old = old.where(runs.computed_at != latest_full.computed_at)
    conn.execute(old)


def _latest_full(conn: Connection, name: str) -> sa.Row | None:
    runs = segment_membership_runs.c
    return conn.execute(
        sa.select(runs.computed_at, runs.cutoff_score, runs.cutoff_ext_id)
        .where(runs.segment == name, runs.kind == "full")
        .order_by(runs.computed_at.desc())
        .limit(1)
    ).first()


def compute_full(
    engine: Engine, segment: SavedSegment, weights: ScoreWeights, *, at: datetime | None = None
) -> MembershipRun:
    """Score every persona against ``segment`` and store its members (only the difference is written)."""
    scan = MemberScan(segment, weights)
    for row in persona_rows(engine, columns_needed([segment])):
        scan.add(row)
    members, cutoff = scan.result()
    computed_at = stamp(at)
    with engine.begin() as conn:
        old = _current_members(conn, segment.name)
        entered = [ext_id for ext_id in members if ext_id not in old]
        old.difference_update(members)
        exited = sorted(old)
        _write_changes(conn, segment.name, computed_at, entered, exited)
        run = _record_run(conn, segment.name, computed_at, "full", len(entered), len(exited), cutoff)
        _prune(conn, segment.name, run.computed_at)
    return run


def refresh_membership(
    engine: Engine, ext_ids: Sequence[str], weights: ScoreWeights, *, at: datetime | None = None
) -> list[MembershipRun]:
    """Re-score only ``ext_ids`` (users a refresh recomputed) against every saved segment that has had a full
    computation, and store who entered or left; everyone else stays as they were. A user with no persona
    any more leaves. Returns a run for each segment whose members changed."""
    if not ext_ids:
        return []
    computed_at = stamp(at)
    users = sorted(set(ext_ids))
    computed = []
    with engine.connect() as conn:
        for stored in list_segments(engine):
            latest = _latest_full(conn, stored.segment.name)
            if latest is not None:  # never computed in full: its first computation will see these users too
                computed.append((stored.segment, Cutoff(latest.cutoff_score, latest.cutoff_ext_id)))
    if not computed:
        return []
    # The refreshed users' personas are read once, with every map any of the segments reads.
    rows = list(persona_rows(engine, columns_needed(segment for segment, _ in computed), only_users=users))
    runs = []
    for segment, cutoff in computed:
        members = {row[0] for row in rows if is_member(segment, score_row(row, segment, weights), row[0], cutoff)}
        with engine.begin() as conn:
            current = _current_members(conn, segment.name, only_users=users)
            entered = sorted(members - current)
            exited = sorted(current - members)
            if not entered and not exited:
                continue
            _write_changes(conn, segment.name, computed_at, entered, exited)
            runs.append(_record_run(conn, segment.name, computed_at, "refresh", len(entered), len(exited)))
    return runs


class MembersNotComputed(SegmentError):
    def __init__(self, name: str) -> None:
        super().__init__(
            name, f"the members of saved segment {name!r} have not been computed yet: `persona segment compute {name}`"
        )


def require_computed(engine: Engine, name: str) -> None:
    """:class:`MembersNotComputed` unless the segment's members have had a full computation."""
    with engine.connect() as conn:
        if _latest_full(conn, name) is None:
            raise MembersNotComputed(name)


@dataclass(frozen=True)
class Overlap:
    """Two segments' sizes and how many shoppers they share; exact counts of the stored members."""

    first: str
    second: str
    first_size: int
    second_size: int
    both: int

    def to_json(self) -> dict[str, Any]:
        union = self.first_size + self.second_size - self.both
        return {
            "a": {"name": self.first, "size": self.first_size, "shareInBoth": _share(self.both, self.first_size)},
            "b": {"name": self.second, "size": self.second_size, "shareInBoth": _share(self.both, self.second_size)},
            "both": self.both,
            "union": union,
            "jaccard": _share(self.both, union),
        }


def _share(part: int, whole: int) -> float:
    """part / whole, 0 for an empty whole (an empty segment shares nothing)."""
    return part / whole if whole else 0.0


def overlap(engine: Engine, first: str, second: str) -> Overlap:
    """|A|, |B| and |A ∩ B| of two computed segments, counted in the store (one join; exact on both backends)."""
    for name in (first, second):
        get_segment(engine, name)
        require_computed(engine, name)
    a, b = segment_members.alias("a"), segment_members.alias("b")
    with engine.connect() as conn:
        both = conn.execute(
            sa.select(sa.func.count())
            .select_from(a.join(b, a.c.ext_id == b.c.ext_id))
            .where(a.c.segment == first, b.c.segment == second)
        ).scalar_one()
        return Overlap(first, second, _count(conn, first), _count(conn, second), both)


def export_members(engine: Engine, name: str, fmt: str, weights: ScoreWeights) -> Iterator[bytes]:
    """The members of saved segment ``name`` in ``fmt`` (``audiences.export``), ext_id order, as bytes chunks.

    Checked at once (:class:`SegmentNotFound`, :class:`MembersNotComputed`); read as it is consumed, through
    a server-side cursor, so memory holds one chunk whatever the segment's size."""
    segment = get_segment(engine, name).segment
    require_computed(engine, name)
    rows = persona_rows(engine, export.columns_for(segment), member_of=name)
    return export.encode(export.member_records(rows, segment, weights), fmt)


def member_count(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return _count(conn, name)


def membership_history(engine: Engine, name: str, limit: int = 100) -> list[MembershipRun]:
    """The segment's computations, newest first."""
    runs = segment_membership_runs.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(runs.computed_at, runs.kind, runs.members, runs.entered, runs.exited)
            .where(runs.segment == name)
            .order_by(runs.computed_at.desc())
            .limit(limit)
        ).all()
    return [
        MembershipRun(name, parse_stamp(row.computed_at), row.kind, row.members, row.entered, row.exited)
        for row in rows
    ]


def member_changes(
    engine: Engine, name: str, *, since: datetime | None = None, limit: int = 1000
) -> list[MemberChange]:
    """Who entered or left the segment (from ``since``), oldest first, then by ext_id."""
    changes = segment_member_changes.c
    select = sa.select(changes.computed_at, changes.ext_id, changes.entered).where(changes.segment == name)
    if since is not None:
        select = select.where(changes.computed_at >= stamp(since))
    with engine.connect() as conn:
        rows = conn.execute(select.order_by(changes.computed_at, changes.ext_id).limit(limit)).all()
    return [MemberChange(parse_stamp(row.computed_at), row.ext_id, bool(row.entered)) for row in rows]
