"""Saved segments: a named segment query plus a membership rule (docs/audiences.md).

A definition is JSON in the legacy spelling, as marketers' tools send it::

    {"name": "men-tier1-boat", "query": {"gender": "men", "cityTier": "Tier1", "brand": "boat"},
     "membership": {"top": 5000}}

``query`` holds the segment query's criteria (contract section 4) and is validated by the query's own
validator, so every query rule holds here too; ``size`` and ``from`` are not criteria (membership says
how many). ``membership`` is ``{"top": N}`` (the N best-scoring personas) or ``{"minScore": S}`` (every
persona scoring at least S). Every refusal is an :class:`InvalidRequest` naming the field, with the path
into the definition (``query.cityTier``, ``membership.top``). A definition is kept in its canonical form:
the query normalised as the validator reads it, so two spellings of one segment are stored alike.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from persona_assets.query.request import (
    FIELDS,
    InvalidRequest,
    SegmentQuery,
    json_type_name,
    parse_int,
    parse_segment_request,
)

__all__ = [
    "MAX_TOP",
    "NAME_PATTERN",
    "QUERY_FIELDS",
    "SavedSegment",
    "parse_named_definition",
    "parse_segment_definition",
    "parse_segment_name",
    "query_to_json",
]

#: A name is a URL path segment and a CLI argument as it is: lower case, no trimming, 63 characters at most.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
#: The most personas a ``top`` membership holds.
MAX_TOP = 1_000_000

DEFINITION_FIELDS = ("name", "query", "membership")
MEMBERSHIP_FIELDS = ("top", "minScore")
#: A page is not a criterion: membership sets how many personas a saved segment holds.
PAGE_FIELDS = ("size", "from")
QUERY_FIELDS = tuple(field for field in FIELDS if field not in PAGE_FIELDS)
# What the store adds when a definition is read back; a client sending them back is told so.
STORE_FIELDS = ("createdAt", "updatedAt")


@dataclass(frozen=True)
class SavedSegment:
    """A validated definition: its name, its query (no page: size and offset 0) and exactly one membership
    rule, ``top`` (the best-scoring personas) or ``min_score`` (everyone scoring at least it)."""

    name: str
    query: SegmentQuery
    top: int | None = None
    min_score: float | None = None

    def __post_init__(self) -> None:
        # parse_segment_definition reports each of these against its field; here they guard direct construction.
        if not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"saved segment name {self.name!r} does not match {NAME_PATTERN.pattern}")
        if (self.top is None) == (self.min_score is None):
            raise ValueError("a saved segment has exactly one membership rule: top or min_score")

    @property
    def membership(self) -> dict[str, int | float]:
        """The membership rule in the legacy spelling: ``{"top": N}`` or ``{"minScore": S}``."""
        rule = {"top": self.top, "minScore": self.min_score}
        return {field: value for field, value in rule.items() if value is not None}

    def to_json(self) -> dict[str, Any]:
        """The canonical definition (legacy spelling); :func:`parse_segment_definition` reads it back as ``self``."""
        return {"name": self.name, "query": query_to_json(self.query), "membership": self.membership}


def query_to_json(query: SegmentQuery) -> dict[str, Any]:
    """A query's criteria in the request's spelling, normalised (one ``levelNCat``: the most specific level);
    ``parse_segment_request`` reads them back as the same criteria. The page (size, from) is left out."""
    criteria: dict[str, Any] = {
        "gender": query.gender,
        "cityTier": query.city_tier,
        "brand": query.brand,
        "genericName": query.generic_name,
    }
    if query.category_id is not None:
        criteria[f"level{query.category_level}Cat"] = int(query.category_id)
    return {field: value for field, value in criteria.items() if value is not None}


def parse_segment_name(value: object) -> str:
    """A saved segment's name exactly as given (it is a URL path segment and a CLI argument): nothing is
    trimmed or lower-cased, so ``" a"`` and ``"A"`` are refused rather than quietly becoming ``"a"``."""
    if not isinstance(value, str):
        raise InvalidRequest("name", f"must be a string, got {json_type_name(value)}")
    if not NAME_PATTERN.fullmatch(value):
        raise InvalidRequest(
            "name",
            f"must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or a digit; got {value[:100]!r}",
        )
    return value


def parse_segment_definition(payload: object) -> SavedSegment:
    """Validate a decoded JSON definition (``name``, ``query``, ``membership``) into a :class:`SavedSegment`.

    A JSON null is the same as absent, as in a query. Raises :class:`InvalidRequest` naming the first bad field.
    """
    if not isinstance(payload, Mapping):
        raise InvalidRequest("request", f"a segment definition must be a JSON object, got {json_type_name(payload)}")
    for field in payload:
        if field in STORE_FIELDS:
            raise InvalidRequest(field, "is set by the store when the definition is saved; leave it out")
        if field not in DEFINITION_FIELDS:
            raise InvalidRequest(str(field), f"unknown field; expected {', '.join(DEFINITION_FIELDS)}")
    given = {field: value for field, value in payload.items() if value is not None}
    if "name" not in given:
        raise InvalidRequest("name", "is required")
    if "query" not in given:
        raise InvalidRequest("query", "is required: an object of segment query fields ({} ranks every persona)")
    if "membership" not in given:
        raise InvalidRequest("membership", 'is required: {"top": N} or {"minScore": S}')
    name = parse_segment_name(given["name"])
    query = _parse_query(given["query"])
    top, min_score = _parse_membership(given["membership"])
    return SavedSegment(name=name, query=query, top=top, min_score=min_score)


def parse_named_definition(payload: object, name: str) -> SavedSegment:
    """A definition saved under ``name`` (a CLI argument, a URL path), which it may leave out; a ``name`` it
    does give must be the same."""
    saved_under = parse_segment_name(name)
    if isinstance(payload, Mapping):
        named = payload.get("name")
        if named is not None and named != saved_under:
            shown = repr(named[:100]) if isinstance(named, str) else f"a {json_type_name(named)}"
            raise InvalidRequest(
                "name",
                f"the definition names {shown} but is saved as {saved_under!r}; leave name out or make them equal",
            )
        payload = {**payload, "name": saved_under}
    return parse_segment_definition(payload)


def _parse_query(value: object) -> SegmentQuery:
    """The query's criteria through the query's own validator, its fields named ``query.<field>``."""
    if not isinstance(value, Mapping):
        raise InvalidRequest("query", f"must be an object of segment query fields, got {json_type_name(value)}")
    for field in value:
        if field in PAGE_FIELDS:
            raise InvalidRequest(
                f"query.{field}",
                "a saved segment has no page; membership sets how many personas it holds (top or minScore)",
            )
        if field not in QUERY_FIELDS:
            raise InvalidRequest(f"query.{field}", f"unknown field; expected one of {', '.join(QUERY_FIELDS)}")
    try:
        query = parse_segment_request(value)
    except InvalidRequest as error:
        raise InvalidRequest(f"query.{error.field}", error.message) from None
    except RecursionError:  # the validator shows a bad value in its message; a deeply nested one cannot be shown
        raise InvalidRequest("query", "holds a value nested too deeply") from None
    return dataclasses.replace(query, size=0, offset=0)


def _parse_membership(value: object) -> tuple[int | None, float | None]:
    """``(top, None)`` or ``(None, min_score)``: exactly one rule."""
    if not isinstance(value, Mapping):
        raise InvalidRequest(
            "membership", f'must be an object, {{"top": N}} or {{"minScore": S}}; got {json_type_name(value)}'
        )
    for field in value:
        if field not in MEMBERSHIP_FIELDS:
            raise InvalidRequest(f"membership.{field}", "unknown field; expected top or minScore")
    given = {field: rule for field, rule in value.items() if rule is not None}
    if len(given) != 1:
        which = "not both" if given else "one of them"
        raise InvalidRequest(
            "membership",
            f"give exactly one rule, {which}: top (the N best-scoring personas) or minScore (every persona "
            "scoring at least it)",
        )
    if "top" in given:
        return _parse_top(given["top"]), None
    return None, _parse_min_score(given["minScore"])


def _parse_top(value: object) -> int:
    try:
        top = parse_int("membership.top", value)
    except RecursionError:
        raise InvalidRequest("membership.top", f"must be an integer, got a nested {json_type_name(value)}") from None
    if not 1 <= top <= MAX_TOP:
        raise InvalidRequest("membership.top", f"must be between 1 and {MAX_TOP:,}, got {top}")
    return top


def _parse_min_score(value: object) -> float:
    """A JSON number, finite and at least 0. Unlike the query's integers, a string is refused: a score is
    compared exactly, and ``"0.35"`` would leave its reading to whoever parses it."""
    field = "membership.minScore"
    if isinstance(value, bool):
        raise InvalidRequest(field, f"must be a number, got a boolean ({value!r})")
    if isinstance(value, str):
        raise InvalidRequest(field, f"must be a JSON number, not a string ({value[:100]!r})")
    if not isinstance(value, int | float):
        raise InvalidRequest(field, f"must be a number, got {json_type_name(value)}")
    try:
        score = float(value)
    except OverflowError:  # an integer past a float's range
        raise InvalidRequest(field, "must be a finite number; this integer is past a float's range") from None
    if not math.isfinite(score):
        raise InvalidRequest(field, f"must be a finite number, got {score!r}")
    if score < 0:
        raise InvalidRequest(field, f"must be 0 or more, got {score!r}")
    return score + 0.0  # -0.0 is stored as 0.0
