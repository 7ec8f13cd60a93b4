"""The pure query side: request validation and the contract's score formula."""

from persona_assets.query.request import InvalidRequest, SegmentQuery, parse_segment_request
from persona_assets.query.scoring import ScoreWeights, gender_passes, score_persona

__all__ = [
    "InvalidRequest",
    "ScoreWeights",
    "SegmentQuery",
    "gender_passes",
    "parse_segment_request",
    "score_persona",
]
