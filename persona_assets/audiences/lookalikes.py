"""Lookalike audiences: the request, and the seed's centroid that defines similarity (pure; docs/audiences.md).

A lookalike request names a *seed* (a saved segment's members, or a list of ext_ids) and asks for the
shoppers most like it. The seed becomes a :class:`~persona_assets.stores.search_backend.Centroid`: per
dimension, the mean of its members' normalised maps, each key weighted by its inverse document frequency
(a key most shoppers hold says little about the seed), cut to the :data:`CENTROID_KEYS` heaviest keys. A
persona's similarity is then the mean, over city, brand, generic name and category weighted by the query
weights (``PERSONA_SCORE_WEIGHTS``), of the cosine between its map and the centroid's:

    similarity(p) = Σ_d (w_d / W) · cos(p_d, c_d),   W = Σ_d w_d,   cos = 0 when either map is empty

between 0 and 1. Both backends rank by it exactly (``Centroid.score`` is the reference).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from persona_assets.audiences.definitions import parse_segment_name
from persona_assets.query.request import (
    MAX_WINDOW,
    InvalidRequest,
    given_fields,
    json_type_name,
    parse_city_tier,
    parse_gender,
    parse_int,
)
from persona_assets.query.scoring import ScoreWeights
from persona_assets.stores.search_backend import SIMILARITY_DIMENSIONS, Centroid, KeyFrequencies

__all__ = [
    "CANDIDATE_KEYS",
    "CENTROID_KEYS",
    "CENTROID_MASS",
    "DEFAULT_LOOKALIKES",
    "FIELDS",
    "MAX_SEED",
    "LookalikeRequest",
    "SeedMeans",
    "centroid_of",
    "parse_lookalike_request",
    "seed_means",
]

#: Keys of each dimension the centroid keeps: the largest by mean × inverse document frequency.
CENTROID_KEYS = 32
#: Share of the squared length of a dimension's weighted keys that its kept keys hold, at least.
CENTROID_MASS = 0.95
#: Keys of each dimension, by largest mean over the seed, among which the centroid's are chosen.
CANDIDATE_KEYS = 128
#: Shoppers a seed may hold, at most (a saved segment's members or a list of ext_ids).
MAX_SEED = 50_000
#: Lookalikes returned when ``size`` is not given.
DEFAULT_LOOKALIKES = 100
#: The request's fields.
FIELDS = ("seed", "size", "minSimilarity", "includeSeed", "gender", "cityTier")
_SEED_FIELDS = ("segment", "extIds")


@dataclass(frozen=True)
class LookalikeRequest:
    """A validated lookalike request: one of ``seed_segment`` / ``seed_ext_ids`` (distinct, in given order)."""

    seed_segment: str | None = None
    seed_ext_ids: tuple[str, ...] = ()
    size: int = DEFAULT_LOOKALIKES
    min_similarity: float = 0.0
    include_seed: bool = False
    gender: str | None = None
    city_tier: str | None = None


def _parse_seed(value: object) -> tuple[str | None, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise InvalidRequest("seed", f"must be an object with segment or extIds, got {json_type_name(value)}")
    for name in value:
        if name not in _SEED_FIELDS:
            raise InvalidRequest(f"seed.{name}", "unknown field; expected segment or extIds")
    given = {name: item for name, item in value.items() if item is not None}
    if len(given) != 1:
        raise InvalidRequest("seed", "give exactly one of segment (a saved segment's name) or extIds (a list)")
    if "segment" in given:
        try:
            return parse_segment_name(given["segment"]), ()
        except InvalidRequest as error:
            raise InvalidRequest("seed.segment", error.message) from None
    ext_ids = given["extIds"]
    if not isinstance(ext_ids, list):
        raise InvalidRequest("seed.extIds", f"must be an array of ext_ids, got {json_type_name(ext_ids)}")
    if not ext_ids:
        raise InvalidRequest("seed.extIds", "must hold at least one ext_id")
    for position, ext_id in enumerate(ext_ids):
        if not isinstance(ext_id, str) or not ext_id:
            raise InvalidRequest(
                f"seed.extIds[{position}]", f"must be a non-empty string, got {json_type_name(ext_id)} {ext_id!r}"
            )
    distinct = tuple(dict.fromkeys(ext_ids))
    if len(distinct) > MAX_SEED:
        raise InvalidRequest(
            "seed.extIds", f"holds {len(distinct):,} distinct ext_ids; a seed holds at most {MAX_SEED:,}"
        )
    return None, distinct


def _parse_similarity(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest("minSimilarity", f"must be a number from 0 to 1, got {json_type_name(value)} {value!r}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise InvalidRequest("minSimilarity", f"must be a number from 0 to 1, got {value!r}")
    return number


def parse_lookalike_request(payload: object) -> LookalikeRequest:
    """Validate a decoded JSON request; raises :class:`InvalidRequest` naming the first bad field."""
    given = given_fields(payload, FIELDS)
    if "seed" not in given:
        raise InvalidRequest("seed", 'is required: {"segment": NAME} or {"extIds": [...]}')
    segment, ext_ids = _parse_seed(given["seed"])
    size = DEFAULT_LOOKALIKES
    if "size" in given:
        size = parse_int("size", given["size"])
        if not 1 <= size <= MAX_WINDOW:
            raise InvalidRequest(
                "size", f"must be between 1 and {MAX_WINDOW:,}, got {size}; export whole audiences instead"
            )
    include_seed = given.get("includeSeed", False)
    if not isinstance(include_seed, bool):
        raise InvalidRequest(
            "includeSeed", f"must be true or false, got {json_type_name(include_seed)} {include_seed!r}"
        )
    return LookalikeRequest(
        seed_segment=segment,
        seed_ext_ids=ext_ids,
        size=size,
        min_similarity=_parse_similarity(given["minSimilarity"]) if "minSimilarity" in given else 0.0,
        include_seed=include_seed,
        gender=parse_gender(given["gender"]) if "gender" in given else None,
        city_tier=parse_city_tier(given["cityTier"]) if "cityTier" in given else None,
    )


def _weight(weights: ScoreWeights, dim: str) -> float:
    return {"city": weights.city, "brand": weights.brand, "generic": weights.generic, "category": weights.category}[dim]


@dataclass(frozen=True)
class SeedMeans:
    """The seed's mean map per dimension, cut to the :data:`CANDIDATE_KEYS` largest means (ties: key)."""

    size: int
    means: Mapping[str, Mapping[str, float]]

    def keys(self) -> dict[str, list[str]]:
        return {dim: list(means) for dim, means in self.means.items()}


def seed_means(personas: Iterable[Mapping[str, Mapping[str, float]]]) -> SeedMeans:
    """The mean of each key over the seed's maps (``{dimension: {key: weight}}`` each, as ``user_personas``
    stores them): each map is divided by its sum, so it is the shopper's normalised map (contract section 3),
    then each key's shares are summed over the seed and divided by the seed's size (a member without the key
    adds 0). Maps already normalised divide by 1."""
    sums: dict[str, dict[str, float]] = {dim: {} for dim in SIMILARITY_DIMENSIONS}
    count = 0
    for persona in personas:
        count += 1
        for dim in SIMILARITY_DIMENSIONS:
            weights = persona.get(dim)
            if not weights:
                continue
            total, whole = sums[dim], sum(weights.values())
            for key, weight in weights.items():
                total[key] = total.get(key, 0.0) + weight / whole
    means: dict[str, dict[str, float]] = {}
    for dim in SIMILARITY_DIMENSIONS:
        ranked = sorted(((total / count, key) for key, total in sums[dim].items() if total > 0), key=_largest_first)
        means[dim] = {key: mean for mean, key in ranked[:CANDIDATE_KEYS]}
    return SeedMeans(size=count, means=means)


def centroid_of(
    seed: SeedMeans, frequencies: KeyFrequencies, weights: ScoreWeights, keys: int = CENTROID_KEYS
) -> Centroid:
    """The centroid: per dimension, each candidate key's mean times its inverse document frequency
    ln(N / df) (N personas in the index, df of them holding the key), the ``keys`` largest kept (ties: key).

    A key every persona holds (or none does) weighs 0 and is dropped: it says nothing about the seed. A
    dimension weighing 0 in ``weights`` keeps no keys; an empty centroid makes every similarity 0.
    """
    total_weight = sum(_weight(weights, dim) for dim in SIMILARITY_DIMENSIONS)
    kept_keys: dict[str, tuple[str, ...]] = {}
    values: dict[str, tuple[float, ...]] = {}
    coefficients: dict[str, tuple[float, ...]] = {}
    documents = frequencies.documents
    for dim in SIMILARITY_DIMENSIONS:
        weight = _weight(weights, dim)
        counts = frequencies.counts.get(dim, {})
        weighted = []
        for key, mean in seed.means.get(dim, {}).items():
            df = counts.get(key, 0)
            if 0 < df < documents:
                weighted.append((mean * math.log(documents / df), key))
        ranked = _heaviest(sorted(weighted, key=_largest_first)[:keys])
        length = math.sqrt(sum(value * value for value, _ in ranked))
        if weight <= 0 or not ranked or length == 0:
            continue
        kept_keys[dim] = tuple(key for _, key in ranked)
        values[dim] = tuple(value for value, _ in ranked)
        coefficients[dim] = tuple(weight / total_weight * value / length for value, _ in ranked)
    return Centroid(keys=kept_keys, weights=values, coefficients=coefficients)


def _heaviest(ranked: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """The first of ``ranked`` (heaviest first) that hold :data:`CENTROID_MASS` of its squared length."""
    wanted = CENTROID_MASS * sum(value * value for value, _ in ranked)
    held = 0.0
    for position, (value, _) in enumerate(ranked):
        held += value * value
        if held >= wanted:
            return ranked[: position + 1]
    return ranked


def _largest_first(entry: tuple[float, str]) -> tuple[float, str]:
    value, key = entry
    return -value, key
