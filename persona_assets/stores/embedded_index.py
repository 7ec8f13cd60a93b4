"""The embedded (no-server) segment index: a build loaded in memory, ranked with NumPy; and its backend.

Builds are written by :mod:`persona_assets.stores.embedded_build` (layout, atomic publication) and
merged for upserts by :mod:`persona_assets.stores.embedded_upsert`; this module reads and ranks them.

Because users are sorted by ``ext_id`` once at build time, a row number orders the same way as the
``ext_id``; the contract's tie-break (``ext_id`` ascending) is then a sort on row numbers. A query never
sorts every persona: the ones holding a posting of the brand, generic or category asked for are scored
(looked up one by one when few, accumulated in one vector when many), every other persona's score
depends on its city value alone, so the best of those are read off an order prepared per tier, and the
page is the best of both (:mod:`persona_assets.stores.embedded_ranking`). There is no per-persona
Python loop.

Keys are used as given: brand and generic names trimmed and lower-cased, tiers as ``Tier1``..``Tier3``,
category ids as the canonical decimal string of the integer (what
:class:`~persona_assets.query.request.SegmentQuery` carries).

The score is computed in the same order of operations as
:func:`persona_assets.query.scoring.score_persona`, so both give identical floats.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    POINTER_NAME,
    KeySlices,
    build_index,
    current_build_id,
    write_build,
)
from persona_assets.stores.embedded_ranking import TierOrder, best_outsiders, in_sorted, top_rows
from persona_assets.stores.embedded_upsert import merged_with
from persona_assets.stores.search_backend import (
    DIMENSIONS,
    GENDERS,
    Hit,
    IndexNotBuiltError,
    PersonaBatches,
    PublishReport,
    SearchHits,
)

__all__ = ["EmbeddedBackend", "EmbeddedIndex", "open_index"]


class EmbeddedIndex:
    """One loaded build, fully in memory (the files may be pruned afterwards without harm)."""

    #: Up to this share of the documents in postings of the keys asked for, candidates are looked up one
    #: by one; above it, scored in one vector over every persona.
    lookup_share = 1 / 128

    def __init__(
        self,
        *,
        build_id: str,
        path: Path,
        ext_ids: pa.Array,
        gender_codes: np.ndarray,
        rows: np.ndarray,
        values: np.ndarray,
        key_slices: KeySlices,
    ) -> None:
        self.build_id = build_id
        self.path = path
        self.ext_ids = ext_ids
        self.gender_codes = gender_codes
        self.rows = rows
        self.values = values
        self.key_slices = key_slices
        self._slices: dict[str, dict[str, tuple[int, int]]] = {dim: {} for dim in DIMENSIONS}
        for dim, key, start, end in zip(
            key_slices.dimension, key_slices.key, key_slices.start.tolist(), key_slices.end.tolist(), strict=True
        ):
            self._slices[dim][key] = (start, end)
        self._gender_rows = {gender: np.flatnonzero(gender_codes == code) for code, gender in enumerate(GENDERS)}
        self._gender_masks = {gender: gender_codes == code for code, gender in enumerate(GENDERS)}
        self._tier_orders: dict[str, TierOrder] = {}
        for tier in self._slices["city"]:
            self._tier_order(tier)  # ready before the first query (an argsort of every row per tier)
        self._all_rows = np.arange(len(ext_ids), dtype=np.int64)

    @property
    def document_count(self) -> int:
        return len(self.ext_ids)

    @property
    def posting_count(self) -> int:
        return int(self.rows.size)

    def keys(self, dimension: str) -> list[str]:
        """The keys present in one dimension, sorted."""
        return sorted(self._slices[dimension])

    def _postings(self, dimension: str, key: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(rows ascending, values) of one key; empty when the index has no such key."""
        start, end = self._slices[dimension].get(key, (0, 0)) if key is not None else (0, 0)
        return self.rows[start:end], self.values[start:end]

    def _component(self, dimension: str, key: str) -> np.ndarray:
        vector = np.zeros(self.document_count, dtype=np.float64)
        rows, values = self._postings(dimension, key)
        vector[rows] = values
        return vector

    def _values_at(self, dimension: str, key: str, rows: np.ndarray) -> np.ndarray:
        """The value of ``key`` for each of ``rows`` (0 where absent), by binary search in its postings."""
        posting_rows, posting_values = self._postings(dimension, key)
        if posting_rows.size == 0:
            return np.zeros(rows.size, dtype=np.float64)
        at = np.minimum(np.searchsorted(posting_rows, rows), posting_rows.size - 1)
        return np.where(posting_rows[at] == rows, posting_values[at], 0.0)

    def _tier_order(self, tier: str) -> TierOrder:
        order = self._tier_orders.get(tier)
        if order is None:
            order = self._tier_orders.setdefault(tier, TierOrder.of(self._component("city", tier)))
        return order

    def search(self, query: SegmentQuery, weights: ScoreWeights | None = None) -> SearchHits:
        """Rank the personas passing the gender filter; return the ``[offset, offset+size)`` page."""
        w = weights or ScoreWeights()
        if query.gender is None:
            gender_rows = None
            total = self.document_count
        else:
            gender_rows = self._gender_rows.get(query.gender)
            if gender_rows is None:
                raise ValueError(f"unknown gender filter {query.gender!r}")
            total = int(gender_rows.size)
        if query.size <= 0 or query.offset >= total:
            return SearchHits(total=total, hits=[])
        top = min(query.offset + query.size, total)
        ranked = self._top(query, w, top)
        return SearchHits(total=total, hits=self._hits(query, w, ranked[query.offset : query.offset + query.size]))

    def _scores_at(
        self, query: SegmentQuery, w: ScoreWeights, rows: np.ndarray
    ) -> tuple[np.ndarray, dict[str, float | np.ndarray]]:
        """Scores and components of ``rows``, in the order of operations of ``score_persona``."""
        c = NO_TIER_C if query.city_tier is None else self._values_at("city", query.city_tier, rows)
        b = 1.0 if query.brand is None else self._values_at("brand", query.brand, rows)
        g = 1.0 if query.generic_name is None else self._values_at("generic", query.generic_name, rows)
        k = 1.0 if query.category_id is None else self._values_at("category", query.category_id, rows)
        score = w.city * c + w.brand * b + w.generic * g + w.category * k
        return np.broadcast_to(score, rows.shape), {"C": c, "B": b, "G": g, "K": k}

    def _candidates(self, query: SegmentQuery, w: ScoreWeights) -> tuple[np.ndarray, np.ndarray]:
        """(rows ascending, scores) of the personas passing the gender filter with a posting of a brand,
        generic or category asked for.

        Few of them: looked up in the postings. Many: every persona's score is accumulated in one vector
        (postings scattered onto the terms before them, in the formula's order, so the floats are those of
        ``score_persona``: a persona without the key adds ``w·0.0``, which changes nothing).
        """
        asked = {"brand": query.brand, "generic": query.generic_name, "category": query.category_id}
        postings = {dim: self._postings(dim, key) for dim, key in asked.items() if key is not None}
        count = sum(rows.size for rows, _ in postings.values())
        if not postings or count <= self.lookup_share * self.document_count:
            candidates = np.unique(np.concatenate([rows for rows, _ in postings.values()] or [np.empty(0, np.int32)]))
            if query.gender is not None:
                candidates = candidates[self._gender_masks[query.gender][candidates]]
            return candidates, self._scores_at(query, w, candidates)[0]
        # A new array when a tier is asked for (the tier's vector stays as it is).
        score: float | np.ndarray = w.city * (
            NO_TIER_C if query.city_tier is None else self._tier_order(query.city_tier).dense
        )
        member = np.zeros(self.document_count, dtype=bool)
        for dimension, weight in (("brand", w.brand), ("generic", w.generic), ("category", w.category)):
            if dimension not in postings:
                score = score + weight * 1.0 if np.ndim(score) == 0 else np.add(score, weight * 1.0, out=score)
                continue
            if np.ndim(score) == 0:
                score = np.full(self.document_count, score, dtype=np.float64)
            rows, values = postings[dimension]
            score[rows] += weight * values
            member[rows] = True
        if query.gender is not None:
            np.logical_and(member, self._gender_masks[query.gender], out=member)
        candidates = np.flatnonzero(member)
        return candidates, score[candidates]

    def _top(self, query: SegmentQuery, w: ScoreWeights, top: int) -> np.ndarray:
        """The best ``top`` rows: the best candidates and outsiders (see ``embedded_ranking``)."""
        candidates, candidate_scores = self._candidates(query, w)
        gender_mask = None if query.gender is None else self._gender_masks[query.gender]

        def accept(rows: np.ndarray) -> np.ndarray:
            outside = ~in_sorted(rows, candidates)
            return outside if gender_mask is None else outside & gender_mask[rows]

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
        outsider_scores, _ = self._scores_at(query, w, outsiders)
        return top_rows(
            np.concatenate((candidates, outsiders)).astype(np.int64),
            np.concatenate((candidate_scores, outsider_scores)),
            top,
        )

    def _hits(self, query: SegmentQuery, w: ScoreWeights, rows: np.ndarray) -> list[Hit]:
        scores, parts = self._scores_at(query, w, rows)
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


def _load_build(index_dir: Path, build_id: str) -> EmbeddedIndex:
    path = index_dir / BUILDS_DIR / build_id
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
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
    gender_codes = gender_index.to_numpy().astype(np.int8)
    rows = postings["row"].to_numpy()
    values = postings["value"].to_numpy()
    if len(ext_ids) != manifest["document_count"] or rows.size != manifest["posting_count"]:
        raise ValueError(f"embedded index build {path} does not match its manifest")
    key_slices = KeySlices(
        dimension=key_table["dimension"].to_pylist(),
        key=key_table["key"].to_pylist(),
        start=key_table["start"].to_numpy(),
        end=key_table["end"].to_numpy(),
    )
    return EmbeddedIndex(
        build_id=build_id,
        path=path,
        ext_ids=ext_ids,
        gender_codes=gender_codes,
        rows=rows,
        values=values,
        key_slices=key_slices,
    )


_CACHE: dict[Path, EmbeddedIndex] = {}
_CACHE_LOCK = threading.Lock()
# The pointer file's (inode, mtime) when the cached build was last confirmed: a publish replaces the file
# (a rename), so a query costs one stat() rather than reading and parsing the pointer.
_CONFIRMED: dict[Path, tuple[int, int]] = {}


@functools.lru_cache(maxsize=64)
def _canonical(index_dir: str) -> Path:
    return Path(index_dir).resolve()


def _pointer_stamp(index_dir: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(index_dir / POINTER_NAME)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def open_index(index_dir: Path) -> EmbeddedIndex:
    """The published build, loaded once per process and reused until the pointer moves on.

    Raises :class:`IndexNotBuiltError` when no build has been published.
    """
    index_dir = _canonical(str(index_dir))
    stamp = _pointer_stamp(index_dir)
    cached = _CACHE.get(index_dir)
    if cached is not None and stamp is not None and _CONFIRMED.get(index_dir) == stamp:
        return cached
    for _attempt in range(3):
        build_id = current_build_id(index_dir)
        if build_id is None:
            raise IndexNotBuiltError(
                f"no embedded index build found in {index_dir} (no {POINTER_NAME} pointer); "
                "materialise the persona_index asset first"
            )
        cached = _CACHE.get(index_dir)
        if cached is not None and cached.build_id == build_id:
            _CONFIRMED[index_dir] = stamp  # type: ignore[assignment]
            return cached
        with _CACHE_LOCK:
            cached = _CACHE.get(index_dir)
            if cached is not None and cached.build_id == build_id:
                return cached
            try:
                index = _load_build(index_dir, build_id)
            except FileNotFoundError:
                # Pruned between reading the pointer and loading: read the pointer again.
                if current_build_id(index_dir) != build_id:
                    stamp = _pointer_stamp(index_dir)
                    continue
                raise IndexNotBuiltError(
                    f"embedded index pointer in {index_dir} names build {build_id}, "
                    "but its files are missing; rebuild the index"
                ) from None
            _CACHE[index_dir] = index
            return index
    raise IndexNotBuiltError(f"embedded index in {index_dir} kept changing while it was being opened")


class EmbeddedBackend:
    """The embedded index under ``PERSONA_HOME/index``.

    Writers (rebuilds and upserts, from any process) take a file lock, so no upsert is lost to another
    writer's swap.
    """

    name = "embedded"

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = Path(index_dir)

    def __repr__(self) -> str:
        return f"EmbeddedBackend({str(self.index_dir)!r})"

    def publish(self, personas: PersonaBatches) -> PublishReport:
        with self._writer_lock():
            build = build_index(personas, self.index_dir)
        return PublishReport(
            build_id=build.build_id,
            document_count=build.document_count,
            details={"postings": build.posting_count},
        )

    def upsert(self, personas: PersonaBatches, removed: Sequence[str] = ()) -> PublishReport:
        """A new build = the live one with these personas replaced (and ``removed`` dropped), swapped in
        like a full build. The personas are a refresh's batch: they are held in memory."""
        with self._writer_lock():
            live = open_index(self.index_dir)
            users, rows, values, key_slices = merged_with(
                live.ext_ids, live.gender_codes, live.rows, live.values, live.key_slices, personas, removed
            )
            build = write_build(self.index_dir, users, rows, values, key_slices)
        return PublishReport(
            build_id=build.build_id, document_count=build.document_count, details={"postings": build.posting_count}
        )

    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        self.index_dir.mkdir(parents=True, exist_ok=True)
        with (self.index_dir / ".writer.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def search(self, query: SegmentQuery, weights: ScoreWeights) -> SearchHits:
        return open_index(self.index_dir).search(query, weights)

    def document_count(self) -> int:
        return open_index(self.index_dir).document_count
