"""Lookalike audiences on the embedded index: the centroid's keys scattered over their postings.

The similarity (``search_backend.Centroid``) is a sum, per dimension, of each centroid key's coefficient
times the persona's value, scaled by the inverse length of the persona's map. The postings of the
centroid's keys (at most a few dozen per dimension) are scattered into one vector per dimension, in the
centroid's key order, so every persona's similarity is the float :meth:`Centroid.score` gives. The inverse
lengths and each persona's home tier do not depend on the seed: they are computed once per loaded build,
on the first lookalike search (:class:`SimilarityArrays`).

A build with a delta (``IndexView``) ranks its base, without the masked personas, and its delta apart,
then merges the two on (similarity descending, ext_id ascending), as a segment query does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from persona_assets.stores.embedded_ranking import top_rows
from persona_assets.stores.search_backend import (
    GENDERS,
    SHARED_ATTRIBUTES,
    SIMILARITY_DIMENSIONS,
    TIERS,
    Centroid,
    Lookalike,
    LookalikeSearch,
    SharedAttribute,
    home_tier_codes,
)

if TYPE_CHECKING:
    from persona_assets.stores.embedded_index import EmbeddedIndex, IndexView

__all__ = ["SimilarityArrays", "lookalikes"]


@dataclass(frozen=True)
class SimilarityArrays:
    """Per row of one build: the inverse length of each map the similarity compares, and the home tier."""

    inverse_norms: dict[str, np.ndarray]
    home_tiers: np.ndarray  # index into TIERS, -1: no city events

    @classmethod
    def of(cls, index: EmbeddedIndex) -> SimilarityArrays:
        n = index.document_count
        inverse_norms = {}
        for dim in SIMILARITY_DIMENSIONS:
            rows, values = index.dimension_postings(dim)
            # Each row's squares are added in key order (the postings' order), as search_backend.inverse_norm does.
            total = np.bincount(rows, weights=values * values, minlength=n)
            inverse = np.zeros(n, dtype=np.float64)
            np.divide(1.0, np.sqrt(total), out=inverse, where=total > 0)
            inverse_norms[dim] = inverse
        city = np.column_stack([index.component("city", tier) for tier in TIERS])
        return cls(inverse_norms=inverse_norms, home_tiers=home_tier_codes(city))


def _similarities(index: EmbeddedIndex, arrays: SimilarityArrays, centroid: Centroid) -> np.ndarray:
    """Every row's similarity, in the order of operations of ``Centroid.score``."""
    n = index.document_count
    similarity = np.zeros(n, dtype=np.float64)
    for dim in SIMILARITY_DIMENSIONS:
        keys = centroid.keys.get(dim, ())
        if not keys:
            continue
        dot = np.zeros(n, dtype=np.float64)
        for key, coefficient in zip(keys, centroid.coefficients[dim], strict=True):
            rows, values = index.postings(dim, key)
            dot[rows] += values * coefficient  # a key's rows are distinct: no lost updates
        similarity += dot * arrays.inverse_norms[dim]
    return similarity


def _ranked(
    index: EmbeddedIndex, search: LookalikeSearch, passing: np.ndarray | None, top: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` best rows of one build passing the filters (rows, similarities), best first."""
    arrays = index.similarity_arrays
    similarity = _similarities(index, arrays, search.centroid)
    keep = similarity > 0
    if search.min_similarity > 0:
        keep &= similarity >= search.min_similarity
    if passing is not None:
        keep &= passing
    if search.city_tier is not None:
        keep &= arrays.home_tiers == TIERS.index(search.city_tier)
    rows = np.flatnonzero(keep)
    rows = top_rows(rows, similarity[rows], top)
    return rows, similarity[rows]


def _shared(index: EmbeddedIndex, centroid: Centroid, rows: np.ndarray) -> list[tuple[SharedAttribute, ...]]:
    """Each row's strongest shared attributes (``search_backend.strongest``), from its values at the keys.

    The contributions form one (rows x keys) matrix whose columns are in (dimension, key) order, so a stable
    sort of each row by contribution descending breaks ties as ``strongest`` does."""
    arrays = index.similarity_arrays
    columns: list[tuple[str, str]] = []
    contributions: list[np.ndarray] = []
    for dim in SIMILARITY_DIMENSIONS:
        inverse = arrays.inverse_norms[dim][rows]
        pairs = sorted(zip(centroid.keys.get(dim, ()), centroid.coefficients.get(dim, ()), strict=True))
        for key, coefficient in pairs:
            columns.append((dim, key))
            contributions.append(index.values_at(dim, key, rows) * coefficient * inverse)
    if not columns or rows.size == 0:
        return [() for _ in range(rows.size)]
    matrix = np.column_stack(contributions)
    best = np.argsort(-matrix, axis=1, kind="stable")[:, :SHARED_ATTRIBUTES]
    picked = np.take_along_axis(matrix, best, axis=1)
    out = []
    for positions, values in zip(best.tolist(), picked.tolist(), strict=True):
        out.append(
            tuple(SharedAttribute(*columns[j], value) for j, value in zip(positions, values, strict=True) if value > 0)
        )
    return out


def lookalikes(view: IndexView, search: LookalikeSearch) -> list[Lookalike]:
    """The personas of ``view`` most similar to the search's centroid, best first (ties: ext_id)."""
    wanted = search.size + len(search.excluded)
    parts = view.parts(search.gender)
    merged: list[tuple[float, str, int, int]] = []
    for number, (index, passing, count) in enumerate(parts):
        if count == 0 or wanted == 0:
            continue
        rows, similarity = _ranked(index, search, passing, wanted)
        ext_ids = index.ext_ids.take(pa.array(rows, type=pa.int64())).to_pylist()
        merged.extend(zip((-similarity).tolist(), ext_ids, [number] * rows.size, rows.tolist(), strict=True))
    merged.sort()
    page = [entry for entry in merged if entry[1] not in search.excluded][: search.size]
    found: list[Lookalike | None] = [None] * len(page)
    for number, (index, _, _) in enumerate(parts):  # one lookup per build, not per persona
        mine = [i for i, entry in enumerate(page) if entry[2] == number]
        rows = np.array([page[i][3] for i in mine], dtype=np.int64)
        tiers = index.similarity_arrays.home_tiers[rows].tolist()
        genders = index.gender_codes[rows].tolist()
        for i, shared, tier, gender in zip(mine, _shared(index, search.centroid, rows), tiers, genders, strict=True):
            negative_similarity, ext_id, _, _ = page[i]
            found[i] = Lookalike(
                ext_id=ext_id,
                similarity=-negative_similarity,
                gender=GENDERS[gender],
                city_tier=TIERS[tier] if tier >= 0 else None,
                shared=shared,
            )
    return [hit for hit in found if hit is not None]
