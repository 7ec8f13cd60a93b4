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

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba
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
    inverse_norms_by_row,
)

if TYPE_CHECKING:
    from persona_assets.stores.embedded_index import EmbeddedIndex, IndexView

__all__ = ["SimilarityArrays", "lookalikes"]

#: Threads that fill a search's similarities, each over its own range of rows.
_THREADS = max(1, min(4, os.cpu_count() or 1))
_POOL = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="lookalikes")


@dataclass(frozen=True)
class SimilarityArrays:
    """Per row of one build: the inverse length of each map the similarity compares, and the home tier."""

    inverse_norms: dict[str, np.ndarray]
    home_tiers: np.ndarray  # index into TIERS, -1: no city events

    @classmethod
    def of(cls, index: EmbeddedIndex) -> SimilarityArrays:
        n = index.document_count
        # the postings of a dimension are in key order: each row's squares are added in key order
        inverse_norms = {dim: inverse_norms_by_row(*index.dimension_postings(dim), n) for dim in SIMILARITY_DIMENSIONS}
        city = np.column_stack([index.component("city", tier) for tier in TIERS])
        return cls(inverse_norms=inverse_norms, home_tiers=home_tier_codes(city))


@numba.njit(nogil=True, cache=True)
def _add_dimension(
    similarity: np.ndarray,
    dot: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    coefficients: np.ndarray,
    inverse_norms: np.ndarray,
    lo: int,
    hi: int,
) -> None:  # pragma: no cover - compiled; its results are checked through _similarities
    """Rows ``lo:hi``: each key's values times its coefficient into ``dot`` (keys in order), then
    ``similarity += dot * inverse_norms``: the order of operations of ``Centroid.score``."""
    for k in range(starts.size):
        first = starts[k] + np.searchsorted(rows[starts[k] : ends[k]], lo)
        last = starts[k] + np.searchsorted(rows[starts[k] : ends[k]], hi)
        coefficient = coefficients[k]
        for i in range(first, last):
            dot[rows[i]] += values[i] * coefficient
    for row in range(lo, hi):
        similarity[row] += dot[row] * inverse_norms[row]


def _similarities(index: EmbeddedIndex, arrays: SimilarityArrays, centroid: Centroid) -> np.ndarray:
    """Every row's similarity, in the order of operations of ``Centroid.score``.

    A compiled loop (Numba) scatters each key's postings: NumPy's fancy indexing made three passes and two
    temporary arrays per key, four to five times the time. The rows are cut into one range per core, each
    filled by a thread of its own (the loop lets go of the GIL); every row still gets its keys in the
    centroid's order, so the floats do not depend on the cut."""
    n = index.document_count
    similarity = np.zeros(n, dtype=np.float64)
    work = []
    for dim in SIMILARITY_DIMENSIONS:
        keys = centroid.keys.get(dim, ())
        if not keys:
            continue
        slices = np.array([index.key_slice(dim, key) for key in keys], dtype=np.int64).reshape(-1, 2)
        coefficients = np.array(centroid.coefficients[dim], dtype=np.float64)
        work.append((np.zeros(n, dtype=np.float64), slices[:, 0].copy(), slices[:, 1].copy(), coefficients, dim))

    def fill(lo: int, hi: int) -> None:
        for dot, starts, ends, coefficients, dim in work:
            _add_dimension(
                similarity, dot, index.rows, index.values, starts, ends, coefficients, arrays.inverse_norms[dim], lo, hi
            )

    bounds = np.linspace(0, n, _THREADS + 1).astype(np.int64).tolist()
    list(_POOL.map(fill, bounds[:-1], bounds[1:]))
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
    order = np.argsort(rows)  # ascending rows: each binary search starts where the last one ended
    ascending = rows[order]
    for dim in SIMILARITY_DIMENSIONS:
        inverse = arrays.inverse_norms[dim][ascending]
        pairs = sorted(zip(centroid.keys.get(dim, ()), centroid.coefficients.get(dim, ()), strict=True))
        for key, coefficient in pairs:
            columns.append((dim, key))
            contributions.append(index.values_at(dim, key, ascending) * coefficient * inverse)
    if not columns or rows.size == 0:
        return [() for _ in range(rows.size)]
    matrix = np.empty((rows.size, len(columns)))
    matrix[order] = np.column_stack(contributions)
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
