"""The audience tables of the relational store: saved segments, their members and membership history.

On ``relational.metadata`` (``relational.create_schema`` creates them with the rest). Times are ISO-8601
UTC text with microseconds, which both backends give back exactly as written and which sort as time.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from persona_assets.stores.relational import ID, LONG_TEXT, MYSQL_TABLE_OPTIONS, metadata

#: A saved segment's name (``audiences.definitions.NAME_PATTERN``).
SEGMENT_NAME = sa.String(63)
#: ``2026-12-01T09:30:00.000000+00:00``
TIMESTAMP = sa.String(32)


def stamp(moment: datetime | None = None) -> str:
    """``moment`` (default now) as stored: ISO-8601 UTC with microseconds, always 32 characters."""
    moment = datetime.now(UTC) if moment is None else moment
    if moment.tzinfo is None:
        raise ValueError(f"a stored time must carry its time zone, got {moment!r}")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_stamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


# stores.segments: the canonical definition as JSON ({"query": ..., "membership": ...}).
saved_segments = sa.Table(
    "saved_segments",
    metadata,
    sa.Column("name", SEGMENT_NAME, primary_key=True),
    sa.Column("definition", LONG_TEXT, nullable=False),
    sa.Column("created_at", TIMESTAMP, nullable=False),
    sa.Column("updated_at", TIMESTAMP, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

# stores.membership: who is a member now (one row per member).
segment_members = sa.Table(
    "segment_members",
    metadata,
    sa.Column("segment", SEGMENT_NAME, primary_key=True),
    sa.Column("ext_id", ID, primary_key=True),
    **MYSQL_TABLE_OPTIONS,
)

# One row per computation of a segment's members: a full one (after a rebuild, or a new or changed
# definition) or a refresh's (only the users it refreshed); the top-N cutoff of a full one.
segment_membership_runs = sa.Table(
    "segment_membership_runs",
    metadata,
    sa.Column("segment", SEGMENT_NAME, primary_key=True),
    sa.Column("computed_at", TIMESTAMP, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "full" | "refresh"
    sa.Column("members", sa.Integer, nullable=False),
    sa.Column("entered", sa.Integer, nullable=False),
    sa.Column("exited", sa.Integer, nullable=False),
    sa.Column("cutoff_score", sa.Double, nullable=True),
    sa.Column("cutoff_ext_id", ID, nullable=True),
    **MYSQL_TABLE_OPTIONS,
)

# Who entered or left at each computation (kept HISTORY_DAYS, stores.membership).
segment_member_changes = sa.Table(
    "segment_member_changes",
    metadata,
    sa.Column("segment", SEGMENT_NAME, primary_key=True),
    sa.Column("computed_at", TIMESTAMP, primary_key=True),
    sa.Column("ext_id", ID, primary_key=True),
    sa.Column("entered", sa.Boolean, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)
