"""Audiences built on segment queries: saved segments (``definitions``, pure); their storage is
``persona_assets.stores.segments``, their doors ``persona segment`` and ``/segments`` (docs/audiences.md)."""

from persona_assets.audiences.definitions import (
    MAX_TOP,
    SavedSegment,
    parse_named_definition,
    parse_segment_definition,
    parse_segment_name,
    query_to_json,
)

__all__ = [
    "MAX_TOP",
    "SavedSegment",
    "parse_named_definition",
    "parse_segment_definition",
    "parse_segment_name",
    "query_to_json",
]
