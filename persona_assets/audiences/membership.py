"""Who is a member of a saved segment: the rule applied to scored personas (pure; docs/audiences.md).

A persona is scored exactly as the segment query scores it (``scoring.score_persona`` over the stored maps
divided by their sums, ``relational.normalised_map``: the reference both index backends are tested
against), so a member list agrees with the query's answer on either backend pair. Personas that fail the
query's gender filter are never members.

* ``{"minScore": S}``: every persona scoring at least S.
* ``{"top": N}``: the N best, by score descending then ext_id ascending (the query's order). A full
  computation also records the *cutoff*, the N-th member's (score, ext_id). A refresh re-scores only the
  users it refreshed and keeps one of them when it ranks at or above that cutoff, so a refresh never
  moves anyone else; the segment may then hold a few more or fewer than N until the next full
  computation, which restores exactly N (docs/audiences.md says why).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from persona_assets.audiences.definitions import SavedSegment
from persona_assets.query.request import InvalidRequest, parse_int
from persona_assets.query.scoring import ScoreWeights, gender_passes, score_persona
from persona_assets.stores.relational import normalised_map

__all__ = [
    "MAP_COLUMNS",
    "MAX_HISTORY_LINES",
    "Cutoff",
    "MemberScan",
    "PersonaRow",
    "columns_needed",
    "is_member",
    "parse_history_window",
    "score_row",
]

#: The most history lines one request lists (page with ``since``).
MAX_HISTORY_LINES = 10_000

#: A persona as ``user_personas`` stores it: ext_id, gender, then map column -> its JSON text of weights.
PersonaRow = tuple[str, str, Mapping[str, str]]

#: ``user_personas`` map column each query criterion reads, by ``score_persona``'s persona key.
MAP_COLUMNS = {
    "city": "city",
    "brand": "brand_affinity",
    "generic": "generic_affinity",
    "category": "category_affinity",
}


@dataclass(frozen=True)
class Cutoff:
    """The last member of a top-N segment at its last full computation; ``None`` fields: fewer than N
    personas passed, so every one that passes is a member."""

    score: float | None = None
    ext_id: str | None = None

    def admits(self, score: float, ext_id: str) -> bool:
        """Whether (score, ext_id) ranks at or above the cutoff in the query's order."""
        if self.score is None or self.ext_id is None:
            return True
        return score > self.score or (score == self.score and ext_id <= self.ext_id)


def _persona_keys(segment: SavedSegment) -> list[str]:
    query = segment.query
    wanted = {
        "city": query.city_tier is not None,
        "brand": query.brand is not None,
        "generic": query.generic_name is not None,
        "category": query.category_id is not None,
    }
    return [key for key, needed in wanted.items() if needed]


def columns_needed(segments: Iterable[SavedSegment]) -> list[str]:
    """The ``user_personas`` map columns the segments' queries read (a criterion left out reads none)."""
    keys = {key for segment in segments for key in _persona_keys(segment)}
    return [column for key, column in MAP_COLUMNS.items() if key in keys]


def score_row(row: PersonaRow, segment: SavedSegment, weights: ScoreWeights) -> float | None:
    """The row's score for the segment's query, or ``None`` when its gender fails the query's filter."""
    _, gender, maps = row
    if not gender_passes(gender, segment.query):
        return None
    persona = {key: normalised_map(maps[MAP_COLUMNS[key]]) for key in _persona_keys(segment)}
    score, _ = score_persona(persona, segment.query, weights)
    return score


def is_member(segment: SavedSegment, score: float | None, ext_id: str, cutoff: Cutoff) -> bool:
    """The membership rule for one re-scored persona (a refresh): minScore exactly, top-N by ``cutoff``."""
    if score is None:
        return False
    if segment.min_score is not None:
        return score >= segment.min_score
    return cutoff.admits(score, ext_id)


@dataclass
class MemberScan:
    """One pass over every persona in ext_id order, keeping the members of ``segment``.

    Memory: the members' ext_ids (a top-N heap holds N at most). :meth:`result` gives them in ext_id order
    with the cutoff (top-N) for refreshes to use.
    """

    segment: SavedSegment
    weights: ScoreWeights
    _members: list[str] = field(default_factory=list)
    _heap: list[tuple[float, int, str]] = field(default_factory=list)
    _seen: int = 0
    _previous: str | None = None

    def add(self, row: PersonaRow) -> None:
        ext_id = row[0]
        if self._previous is not None and ext_id <= self._previous:
            raise ValueError(f"personas must come in ascending ext_id order: {ext_id!r} after {self._previous!r}")
        self._previous = ext_id
        score = score_row(row, self.segment, self.weights)
        if score is None:
            return
        if self.segment.min_score is not None:
            if score >= self.segment.min_score:
                self._members.append(ext_id)
            return
        # Min-heap on (score, -position): among equal scores the later ext_id (larger) is dropped first,
        # so ties keep the smaller ext_id, as the query orders them.
        self._seen += 1
        entry = (score, -self._seen, ext_id)
        if len(self._heap) < (self.segment.top or 0):
            heapq.heappush(self._heap, entry)
        elif entry > self._heap[0]:
            heapq.heapreplace(self._heap, entry)

    def result(self) -> tuple[list[str], Cutoff]:
        """The members in ext_id order, and the cutoff (top-N with N members; otherwise no cutoff)."""
        if self.segment.min_score is not None:
            return list(self._members), Cutoff()
        cutoff = Cutoff()
        if self._heap and len(self._heap) == self.segment.top:
            score, _, ext_id = self._heap[0]
            cutoff = Cutoff(score, ext_id)
        return sorted(ext_id for _, _, ext_id in self._heap), cutoff


def parse_history_window(since: str | None, limit: int | str) -> tuple[datetime | None, int]:
    """A history request's ``since`` (ISO-8601 with its zone) and ``limit`` (1 to
    :data:`MAX_HISTORY_LINES`), as the CLI and HTTP read them; :class:`InvalidRequest` names the bad one."""
    count = parse_int("limit", limit)
    if not 1 <= count <= MAX_HISTORY_LINES:
        raise InvalidRequest("limit", f"must be between 1 and {MAX_HISTORY_LINES:,}, got {count}")
    if since is None:
        return None, count
    try:
        moment = datetime.fromisoformat(since)
    except ValueError:
        raise InvalidRequest("since", f"must be an ISO-8601 time, got {since[:100]!r}") from None
    if moment.tzinfo is None:
        raise InvalidRequest("since", f"must carry its time zone (e.g. +00:00), got {since[:100]!r}")
    return moment, count
