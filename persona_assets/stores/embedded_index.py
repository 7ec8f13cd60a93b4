"""The embedded (no-server) segment index: a build loaded in memory, ranked with NumPy; and its backend.

Builds are written by :mod:`persona_assets.stores.embedded_build` (layout, atomic publication) and
merged for upserts by :mod:`persona_assets.stores.embedded_upsert`; this module reads and ranks them.

Because users are sorted by ``ext_id`` once at build time, a row number orders the same way as the
``ext_id``; the contract's tie-break (``ext_id`` ascending) is then a sort on row numbers. A query never
sorts every persona: the best of the ones holding a posting of the brand, generic or category asked for
come from one compiled pass over those postings, every other persona's score depends on its city value
alone, so the best of those are read off an order prepared per tier, and the page is the best of both
(:mod:`persona_assets.stores.embedded_ranking`). There is no per-persona Python loop.

A published delta build (see :mod:`persona_assets.stores.embedded_build`) is read as an
:class:`IndexView`: its base with the masked personas filtered out, plus the delta's own personas, the
two rankings merged. A process keeps the base it has loaded while deltas over it come and go.

Keys are used as given: brand and generic names trimmed and lower-cased, tiers as ``Tier1``..``Tier3``,
category ids as the canonical decimal string of the integer (what
:class:`~persona_assets.query.request.SegmentQuery` carries).

The score is computed in the same order of operations as
:func:`persona_assets.query.scoring.score_persona`, so both give identical floats.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona_assets.query.request import SegmentQuery
from persona_assets.query.scoring import NO_TIER_C, ScoreWeights
from persona_assets.stores.embedded_build import (
    BUILDS_DIR,
    FORMAT_VERSION,
    MASKED_FILE,
    BuildArrays,
    KeySlices,
    read_manifest,
)
from persona_assets.stores.embedded_lookalikes import SimilarityArrays
from persona_assets.stores.embedded_ranking import (
    AskedPostings,
    TierOrder,
    best_candidates,
    best_outsiders,
    top_rows,
)
from persona_assets.stores.search_backend import DIMENSIONS, GENDERS, Hit, SearchHits

__all__ = ["EmbeddedIndex", "IndexView", "read_build"]


class EmbeddedIndex:
    """One loaded build, fully in memory (the files may be pruned afterwards without harm)."""

    def __init__(self, build: BuildArrays) -> None:
        self.build_id = build.build_id
        self.path = build.path
        self.ext_ids = build.ext_ids
        self.gender_codes = build.gender_codes
        self.rows = build.rows
        self.values = build.values
        self.key_slices = key_slices = build.key_slices
        gender_codes = build.gender_codes
        self._slices: dict[str, dict[str, tuple[int, int]]] = {dim: {} for dim in DIMENSIONS}
        for dim, key, start, end in zip(
            key_slices.dimension, key_slices.key, key_slices.start.tolist(), key_slices.end.tolist(), strict=True
        ):
            self._slices[dim][key] = (start, end)
        self._gender_rows = {gender: np.flatnonzero(gender_codes == code) for code, gender in enumerate(GENDERS)}
        self._gender_masks = {gender: gender_codes == code for code, gender in enumerate(GENDERS)}
        self._dimension_ranges = {
            dim: (min(slices.values())[0], max(end for _, end in slices.values())) if slices else (0, 0)
            for dim, slices in self._slices.items()
        }
        self._tier_orders: dict[str, TierOrder] = {}
        for tier in self._slices["city"]:
            self._tier_order(tier)  # ready before the first query (an argsort of every row per tier)
        self._all_rows = np.arange(len(build.ext_ids), dtype=np.int64)

    @property
    def document_count(self) -> int:
        return len(self.ext_ids)

    @property
    def posting_count(self) -> int:
        return int(self.rows.size)

    def keys(self, dimension: str) -> list[str]:
        """The keys present in one dimension, sorted."""
        return sorted(self._slices[dimension])

    def postings(self, dimension: str, key: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(rows ascending, values) of one key; empty when the index has no such key."""
        start, end = self._slices[dimension].get(key, (0, 0)) if key is not None else (0, 0)
        return self.rows[start:end], self.values[start:end]

    def key_slice(self, dimension: str, key: str) -> tuple[int, int]:
        """Where one key's postings are in ``rows``/``values``: ``[start, end)`` (empty when absent)."""
        return self._slices[dimension].get(key, (0, 0))

    def dimension_postings(self, dimension: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, values) of every key of one dimension: keys in order, rows ascending within a key."""
        start, end = self._dimension_ranges.get(dimension, (0, 0))
        return self.rows[start:end], self.values[start:end]

    def component(self, dimension: str, key: str) -> np.ndarray:
        """The value of ``key`` for every row (0 where absent)."""
        vector = np.zeros(self.document_count, dtype=np.float64)
        rows, values = self.postings(dimension, key)
        vector[rows] = values
        return vector

    @cached_property
    def similarity_arrays(self) -> SimilarityArrays:
        """What a lookalike search needs beyond the postings, computed on its first use."""
        return SimilarityArrays.of(self)

    def values_at(self, dimension: str, key: str, rows: np.ndarray) -> np.ndarray:
        """The value of ``key`` for each of ``rows`` (0 where absent), by binary search in its postings."""
        posting_rows, posting_values = self.postings(dimension, key)
        if posting_rows.size == 0:
            return np.zeros(rows.size, dtype=np.float64)
        at = np.minimum(np.searchsorted(posting_rows, rows), posting_rows.size - 1)
        return np.where(posting_rows[at] == rows, posting_values[at], 0.0)

    def _tier_order(self, tier: str) -> TierOrder:
        order = self._tier_orders.get(tier)
        if order is None:
            order = self._tier_orders.setdefault(tier, TierOrder.of(self.component("city", tier)))
        return order

    def gender_mask(self, gender: str) -> np.ndarray:
        mask = self._gender_masks.get(gender)
        if mask is None:
            raise ValueError(f"unknown gender filter {gender!r}")
        return mask

    def ranked(self, query: SegmentQuery, w: ScoreWeights, top: int, passing: np.ndarray | None) -> np.ndarray:
        """The best ``top`` rows of this build in contract order, among the rows ``passing`` (a mask:
        the gender filter, and for a delta's base the personas not masked; None = every row)."""
        keys = (("brand", query.brand), ("generic", query.generic_name), ("category", query.category_id))
        asked = AskedPostings(*(None if key is None else self.postings(dim, key) for dim, key in keys))
        city = NO_TIER_C if query.city_tier is None else self._tier_order(query.city_tier).dense
        candidates, candidate_scores = best_candidates(
            asked, (w.city, w.brand, w.generic, w.category), city, passing, top
        )

        def accept(rows: np.ndarray) -> np.ndarray:
            outside = ~asked.holds(rows)
            return outside if passing is None else outside & passing[rows]

        if query.city_tier is None:
            order = self._all_rows if query.gender is None else self._gender_rows[query.gender]
            outsiders = best_outsiders(order, accept, top)
        else:
            # An outsider's score from its city value: 0 in every other dimension asked for, 1 in the rest.
            b, g, k = (1.0 if key is None else 0.0 for key in (query.brand, query.generic_name, query.category_id))

            def score_of_value(c: float) -> float:
                return w.city * c + w.brand * b + w.generic * g + w.category * k

            tier = self._tier_order(query.city_tier)
            outsiders = best_outsiders(tier.rows, accept, top, tier, score_of_value)
        outsider_scores, _ = self.scores_at(query, w, outsiders)
        return top_rows(
            np.concatenate((candidates, outsiders)).astype(np.int64),
            np.concatenate((candidate_scores, outsider_scores)),
            top,
        )

    def scores_at(
        self, query: SegmentQuery, w: ScoreWeights, rows: np.ndarray
    ) -> tuple[np.ndarray, dict[str, float | np.ndarray]]:
        """Scores and components of ``rows``, in the order of operations of ``score_persona``."""
        c = NO_TIER_C if query.city_tier is None else self.values_at("city", query.city_tier, rows)
        b = 1.0 if query.brand is None else self.values_at("brand", query.brand, rows)
        g = 1.0 if query.generic_name is None else self.values_at("generic", query.generic_name, rows)
        k = 1.0 if query.category_id is None else self.values_at("category", query.category_id, rows)
        score = w.city * c + w.brand * b + w.generic * g + w.category * k
        return np.broadcast_to(score, rows.shape), {"C": c, "B": b, "G": g, "K": k}

    def hits(self, query: SegmentQuery, w: ScoreWeights, rows: np.ndarray) -> list[Hit]:
        scores, parts = self.scores_at(query, w, rows)
        ext_ids = self.ext_ids.take(pa.array(rows, type=pa.int64())).to_pylist()
        hits = []
        for i, (ext_id, row) in enumerate(zip(ext_ids, rows.tolist(), strict=True)):
            components = {name: float(part) if np.ndim(part) == 0 else float(part[i]) for name, part in parts.items()}
            hits.append(
                Hit(
                    ext_id=ext_id,
                    score=float(scores[i]),
                    components=components,
                    gender=GENDERS[int(self.gender_codes[row])],
                )
            )
        return hits


class IndexView:
    """What a query reads: one build, or a delta build over its base (the base's masked personas left out)."""

    def __init__(self, base: EmbeddedIndex, delta: EmbeddedIndex | None = None, masked: pa.Array | None = None):
        self.base = base
        self.delta = delta
        self.build_id = base.build_id if delta is None else delta.build_id
        self._alive: np.ndarray | None = None
        if delta is not None and masked is not None and len(masked):
            self._alive = ~pc.is_in(base.ext_ids, value_set=masked).to_numpy(zero_copy_only=False)
        self._passing: dict[str | None, tuple[np.ndarray | None, int]] = {}
        self._frequencies: dict[tuple[str, str], int] = {}
        for gender in (None, *GENDERS):
            mask = None if gender is None else base.gender_mask(gender)
            if self._alive is not None:
                mask = self._alive if mask is None else mask & self._alive
            count = base.document_count if mask is None else int(np.count_nonzero(mask))
            self._passing[gender] = (mask, count)

    @property
    def document_count(self) -> int:
        return self._passing[None][1] + (0 if self.delta is None else self.delta.document_count)

    @property
    def posting_count(self) -> int:
        return self.base.posting_count + (0 if self.delta is None else self.delta.posting_count)

    def key_frequency(self, dimension: str, key: str) -> int:
        """How many personas of the view hold ``key`` (counted once per view and key)."""
        count = self._frequencies.get((dimension, key))
        if count is None:
            rows, _ = self.base.postings(dimension, key)
            count = rows.size if self._alive is None else int(np.count_nonzero(self._alive[rows]))
            if self.delta is not None:
                count += self.delta.postings(dimension, key)[0].size
            self._frequencies[(dimension, key)] = count
        return count

    def keys(self, dimension: str) -> list[str]:
        """The keys present in one dimension, sorted (the base's and the delta's)."""
        return sorted(set(self.base.keys(dimension)) | set(() if self.delta is None else self.delta.keys(dimension)))

    def parts(self, gender: str | None) -> list[tuple[EmbeddedIndex, np.ndarray | None, int]]:
        if gender is not None and gender not in GENDERS:
            raise ValueError(f"unknown gender filter {gender!r}")
        parts = [(self.base, *self._passing[gender])]
        if self.delta is not None:
            mask = None if gender is None else self.delta.gender_mask(gender)
            count = self.delta.document_count if mask is None else int(np.count_nonzero(mask))
            parts.append((self.delta, mask, count))
        return parts

    def search(self, query: SegmentQuery, weights: ScoreWeights | None = None) -> SearchHits:
        """Rank the personas passing the gender filter; return the ``[offset, offset+size)`` page."""
        w = weights or ScoreWeights()
        parts = self.parts(query.gender)
        total = sum(count for _, _, count in parts)
        if query.size <= 0 or query.offset >= total:
            return SearchHits(total=total, hits=[])
        top = min(query.offset + query.size, total)
        if len(parts) == 1:
            index, passing, _ = parts[0]
            rows = index.ranked(query, w, top, passing)
            return SearchHits(total=total, hits=index.hits(query, w, rows[query.offset : query.offset + query.size]))
        # Two builds: merge their rankings on (score descending, ext_id ascending) in Python (k <= 10,000).
        merged: list[tuple[float, str, int, int]] = []
        for number, (index, passing, count) in enumerate(parts):
            if count == 0:
                continue
            rows = index.ranked(query, w, min(top, count), passing)
            scores, _ = index.scores_at(query, w, rows)
            ext_ids = index.ext_ids.take(pa.array(rows, type=pa.int64())).to_pylist()
            merged.extend(zip((-scores).tolist(), ext_ids, [number] * rows.size, rows.tolist(), strict=True))
        merged.sort()
        page = merged[query.offset : query.offset + query.size]
        hits: list[Hit | None] = [None] * len(page)
        for number, (index, _, _) in enumerate(parts):  # one lookup per build, not per hit
            mine = [i for i, entry in enumerate(page) if entry[2] == number]
            rows = np.array([page[i][3] for i in mine], dtype=np.int64)
            for i, hit in zip(mine, index.hits(query, w, rows), strict=True):
                hits[i] = hit
        return SearchHits(total=total, hits=[hit for hit in hits if hit is not None])


def read_build(index_dir: Path, build_id: str) -> BuildArrays:
    """A complete build's arrays, checked against its manifest."""
    path = Path(index_dir) / BUILDS_DIR / build_id
    manifest = read_manifest(index_dir, build_id)
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"embedded index build {path} has format {manifest.get('format')!r}")
    users = pq.read_table(path / "users.parquet")
    postings = pq.read_table(path / "postings.parquet")
    key_table = pq.read_table(path / "keys.parquet")
    ext_ids = users["ext_id"].combine_chunks()
    if isinstance(ext_ids, pa.DictionaryArray):
        ext_ids = ext_ids.dictionary_decode()
    gender_index = pc.index_in(users["gender"].cast(pa.string()), value_set=pa.array(GENDERS))
    if gender_index.null_count:
        raise ValueError(f"embedded index build {path}: users.parquet holds an unknown gender")
    rows = postings["row"].to_numpy()
    if len(ext_ids) != manifest["document_count"] or rows.size != manifest["posting_count"]:
        raise ValueError(f"embedded index build {path} does not match its manifest")
    base = manifest.get("base")
    masked = pq.read_table(path / MASKED_FILE)["ext_id"].combine_chunks() if base is not None else None
    return BuildArrays(
        build_id=build_id,
        path=path,
        ext_ids=ext_ids,
        gender_codes=gender_index.to_numpy().astype(np.int8),
        rows=rows,
        values=postings["value"].to_numpy(),
        key_slices=KeySlices(
            dimension=key_table["dimension"].to_pylist(),
            key=key_table["key"].to_pylist(),
            start=key_table["start"].to_numpy(),
            end=key_table["end"].to_numpy(),
        ),
        base=base,
        masked=masked,
    )
