"""Lookalike audiences (docs/audiences.md): read the seed's personas, rank the shoppers most like them.

One service, two front doors: ``persona lookalike`` and ``POST /lookalikes``. The seed's maps are read
from ``user_personas`` (the relational store saved segments are scored from, the same on both backend
pairs); the ranking runs in the search backend, exactly, over every persona it holds.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.engine import Engine

from persona_assets.audiences.lookalikes import (
    MAX_SEED,
    LookalikeRequest,
    centroid_of,
    parse_lookalike_request,
    seed_means,
)
from persona_assets.audiences.membership import MAP_COLUMNS
from persona_assets.query.request import InvalidRequest
from persona_assets.query.scoring import ScoreWeights
from persona_assets.stores.membership import member_count, persona_rows, require_computed
from persona_assets.stores.search_backend import SIMILARITY_DIMENSIONS, Lookalike, LookalikeSearch, SearchBackend
from persona_assets.stores.segments import get_segment

__all__ = ["MISSING_LISTED", "find_lookalikes"]

#: Seed ext_ids without a persona named in an answer, at most (all are counted).
MISSING_LISTED = 20
_MAP_OF = {dim: MAP_COLUMNS[dim] for dim in SIMILARITY_DIMENSIONS}
_COLUMNS = list(_MAP_OF.values())


def _seed_maps(engine: Engine, request: LookalikeRequest) -> tuple[list[str], list[dict[str, dict[str, float]]]]:
    """The seed's shoppers that have a persona (ext_id order) and their maps as stored (weights; ``seed_means``
    normalises them)."""
    if request.seed_segment is not None:
        name = request.seed_segment
        get_segment(engine, name)  # SegmentNotFound names it
        require_computed(engine, name)
        members = member_count(engine, name)
        if members > MAX_SEED:
            raise InvalidRequest(
                "seed.segment", f"segment {name!r} has {members:,} members; a seed holds at most {MAX_SEED:,}"
            )
        rows = persona_rows(engine, _COLUMNS, member_of=name)
    else:
        rows = persona_rows(engine, _COLUMNS, only_users=request.seed_ext_ids)
    found: list[str] = []
    maps: list[dict[str, dict[str, float]]] = []
    for ext_id, _gender, stored in rows:
        found.append(ext_id)
        maps.append({dim: orjson.loads(stored[column]) for dim, column in _MAP_OF.items()})
    return found, maps


def _result(hit: Lookalike) -> dict[str, Any]:
    return {
        "ext_id": hit.ext_id,
        "similarity": hit.similarity,
        "gender": hit.gender,
        "cityTier": hit.city_tier,
        "shared": [{"dimension": s.dimension, "key": s.key, "contribution": s.contribution} for s in hit.shared],
    }


def find_lookalikes(payload: object, engine: Engine, backend: SearchBackend, weights: ScoreWeights) -> dict[str, Any]:
    """Validate ``payload`` (``InvalidRequest`` names the field; an unknown seed segment raises
    ``SegmentNotFound``) and answer it: the seed as read, its centroid, and the lookalikes best first."""
    request = parse_lookalike_request(payload)
    found, maps = _seed_maps(engine, request)
    if not found:
        where = f"segment {request.seed_segment!r}" if request.seed_segment else "seed.extIds"
        raise InvalidRequest("seed", f"none of the shoppers of {where} has a persona")
    means = seed_means(maps)
    centroid = centroid_of(means, backend.key_frequencies(means.keys()), weights)
    requested = request.seed_ext_ids or tuple(found)
    excluded = frozenset() if request.include_seed else frozenset(requested)
    hits = backend.lookalikes(
        LookalikeSearch(
            centroid=centroid,
            size=request.size,
            min_similarity=request.min_similarity,
            excluded=excluded,
            gender=request.gender,
            city_tier=request.city_tier,
        )
    )
    have = set(found)
    missing = [ext_id for ext_id in requested if ext_id not in have]
    seed: dict[str, Any] = {"segment": request.seed_segment} if request.seed_segment else {}
    seed |= {
        "requested": len(requested),
        "found": len(found),
        "missingCount": len(missing),
        "missing": missing[:MISSING_LISTED],
        "centroid": {dim: dict(zip(centroid.keys[dim], centroid.weights[dim], strict=True)) for dim in centroid.keys},
    }
    return {"seed": seed, "results": [_result(hit) for hit in hits]}
