"""Saved segments in the relational store (table ``saved_segments``): create, replace, read, list, delete.

A row holds a definition's canonical JSON (``{"query": ..., "membership": ...}``; the name is the key), read
back through the definition's own validator, so a row that no longer reads (edited by hand, or written under
other rules) is reported naming its segment instead of failing somewhere later. Writes never read before
they write: the primary key claims a name, so two clients creating one name at once get one success and one
:class:`SegmentExists` on SQLite and MariaDB alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateTable

from persona_assets.audiences.definitions import SavedSegment, parse_named_definition
from persona_assets.query.request import InvalidRequest
from persona_assets.stores.audience_tables import (
    parse_stamp,
    saved_segments,
    segment_member_changes,
    segment_members,
    segment_membership_runs,
    stamp,
)

__all__ = [
    "SegmentError",
    "SegmentExists",
    "SegmentNotFound",
    "SegmentUnreadable",
    "StoredSegment",
    "create_segment",
    "create_tables",
    "delete_segment",
    "get_segment",
    "list_segments",
    "replace_segment",
]


class SegmentError(Exception):
    """A saved-segment operation that cannot be done; ``name`` names the segment."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class SegmentExists(SegmentError):
    def __init__(self, name: str) -> None:
        super().__init__(name, f"a saved segment named {name!r} already exists")


class SegmentNotFound(SegmentError):
    def __init__(self, name: str) -> None:
        super().__init__(name, f"no saved segment named {name!r}")


class SegmentUnreadable(SegmentError):
    """A stored row that no longer reads as a definition (the store's fault, not the caller's)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(
            name,
            f"saved segment {name!r} is stored but does not read as a definition ({reason}); "
            "save it again with a valid definition, or delete it",
        )


@dataclass(frozen=True)
class StoredSegment:
    """A saved segment as stored: its definition and when it was first saved and last replaced (UTC)."""

    segment: SavedSegment
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The canonical definition with ``createdAt`` and ``updatedAt`` (ISO-8601 UTC, microseconds)."""
        return {**self.segment.to_json(), "createdAt": stamp(self.created_at), "updatedAt": stamp(self.updated_at)}


def create_tables(engine: Engine) -> None:
    """Create the audience tables that are missing (``CREATE TABLE IF NOT EXISTS``: workers starting together
    do not race). For ``persona serve``, which does not run ``relational.create_schema``."""
    with engine.begin() as conn:
        for table in (saved_segments, segment_members, segment_membership_runs, segment_member_changes):
            conn.execute(CreateTable(table, if_not_exists=True))


def create_segment(engine: Engine, segment: SavedSegment, *, at: datetime | None = None) -> StoredSegment:
    """Save a new segment (``at``, default now, is its creation time); :class:`SegmentExists` when the name is taken."""
    saved_at = stamp(at)
    try:
        with engine.begin() as conn:
            _insert(conn, segment, saved_at)
    except sa.exc.IntegrityError:  # the primary key: another row holds the name, however recently
        raise SegmentExists(segment.name) from None
    return StoredSegment(segment, parse_stamp(saved_at), parse_stamp(saved_at))


def replace_segment(engine: Engine, segment: SavedSegment, *, at: datetime | None = None) -> tuple[StoredSegment, bool]:
    """Save ``segment`` whether or not its name exists; a replaced one keeps its creation time.

    Returns what is stored now and whether it was created (False: replaced).
    """
    saved_at = stamp(at)
    table = saved_segments
    while True:
        try:
            with engine.begin() as conn:
                _insert(conn, segment, saved_at)
            return StoredSegment(segment, parse_stamp(saved_at), parse_stamp(saved_at)), True
        except sa.exc.IntegrityError:
            pass  # the name is taken: replace that row
        with engine.begin() as conn:
            replaced = conn.execute(
                sa.update(table)
                .where(table.c.name == segment.name)
                .values(definition=_definition_text(segment), updated_at=saved_at)
            ).rowcount
            if replaced:
                created = conn.execute(sa.select(table.c.created_at).where(table.c.name == segment.name)).scalar_one()
                return StoredSegment(segment, parse_stamp(created), parse_stamp(saved_at)), False
        # Deleted between the two statements: claim the name again.


def get_segment(engine: Engine, name: str) -> StoredSegment:
    """The segment saved as ``name``; :class:`SegmentNotFound` when there is none."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(saved_segments).where(saved_segments.c.name == name)).first()
    if row is None:
        raise SegmentNotFound(name)
    return _read(row)


def list_segments(engine: Engine) -> list[StoredSegment]:
    """Every saved segment, by name."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(saved_segments).order_by(saved_segments.c.name)).all()
    return [_read(row) for row in rows]


def delete_segment(engine: Engine, name: str) -> None:
    """Delete the segment saved as ``name`` (a row that no longer reads too), its members and their history;
    :class:`SegmentNotFound` when there is none."""
    with engine.begin() as conn:
        for table in (segment_members, segment_membership_runs, segment_member_changes):
            conn.execute(sa.delete(table).where(table.c.segment == name))
        deleted = conn.execute(sa.delete(saved_segments).where(saved_segments.c.name == name)).rowcount
    if not deleted:
        raise SegmentNotFound(name)


def _insert(conn: Connection, segment: SavedSegment, saved_at: str) -> None:
    conn.execute(
        sa.insert(saved_segments).values(
            name=segment.name, definition=_definition_text(segment), created_at=saved_at, updated_at=saved_at
        )
    )


def _definition_text(segment: SavedSegment) -> str:
    """The stored JSON: the canonical definition without its name (the row's key)."""
    definition = segment.to_json()
    del definition["name"]
    return json.dumps(definition, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _read(row: sa.Row) -> StoredSegment:
    try:
        segment = parse_named_definition(json.loads(row.definition), row.name)
        return StoredSegment(segment, parse_stamp(row.created_at), parse_stamp(row.updated_at))
    except InvalidRequest as error:
        raise SegmentUnreadable(row.name, str(error)) from None
    except (ValueError, RecursionError) as error:  # not JSON, or a time that is not ISO-8601
        raise SegmentUnreadable(row.name, str(error)[:200]) from None
