"""The embedded (no-server) segment index: a build loaded in memory, ranked with NumPy; and its backend.

Builds are written by :mod:`persona_assets.stores.embedded_build` (layout, atomic publication) and
merged for upserts by :mod:`persona_assets.stores.embedded_upsert`; this module reads and ranks them.

Because users are sorted by ``ext_id`` once at build time, a row number orders the same way as the
``ext_id``; the contract's tie-break (``ext_id`` ascending) is then a sort on row numbers. A query
computes the score of every persona with numpy (constants for the criteria not given, plus a scatter
of the postings of the one key asked for in each given dimension), applies the gender mask and selects
the top ``offset + size`` in linear time, handling ties at the cut exactly (everything above the k-th
score, then the lowest rows among the ones equal to it). The k-th score is found by a vectorised
three-way quickselect (:func:`_kth_largest`) because ``np.partition`` degrades on large blocks of equal
scores, which this data has by nature. There is no per-persona Python loop.

Keys are used as given: brand and generic names trimmed and lower-cased, tiers as ``Tier1``..``Tier3``,
category ids as the canonical decimal string of the integer (what
:class:`~persona_assets.query.request.SegmentQuery` carries).

The score is computed in the same order of operations as
:func:`persona_assets.query.scoring.score_persona`, so both give identical floats.
"""

from __future__ import annotations

import fcntl
import json
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

    @property
    def document_count(self) -> int:
        return len(self.ext_ids)

    @property
    def posting_count(self) -> int:
        return int(self.rows.size)

    def keys(self, dimension: str) -> list[str]:
        """The keys present in one dimension, sorted."""
        return sorted(self._slices[dimension])

    def _component(self, dimension: str, key: str) -> np.ndarray:
        vector = np.zeros(self.document_count, dtype=np.float64)
        span = self._slices[dimension].get(key)
        if span is not None:
            start, end = span
            vector[self.rows[start:end]] = self.values[start:end]
        return vector

    def search(self, query: SegmentQuery, weights: ScoreWeights | None = None) -> SearchHits:
        """Rank the personas passing the gender filter; return the ``[offset, offset+size)`` page."""
        w = weights or ScoreWeights()
        n = self.document_count
        c = NO_TIER_C if query.city_tier is None else self._component("city", query.city_tier)
        b = 1.0 if query.brand is None else self._component("brand", query.brand)
        g = 1.0 if query.generic_name is None else self._component("generic", query.generic_name)
        k = 1.0 if query.category_id is None else self._component("category", query.category_id)
        # Same order of operations as score_persona, so the floats agree bit for bit.
        score = w.city * c + w.brand * b + w.generic * g + w.category * k
        if np.ndim(score) == 0:
            score = np.full(n, float(score), dtype=np.float64)

        if query.gender is None:
            candidates = None
            scores = score
        else:
            candidates = self._gender_rows.get(query.gender)
            if candidates is None:
                raise ValueError(f"unknown gender filter {query.gender!r}")
            scores = score[candidates]
        total = int(scores.size)

        if query.size <= 0 or query.offset >= total:
            return SearchHits(total=total, hits=[])
        top = min(query.offset + query.size, total)
        if top == total:
            chosen = np.arange(total)
        else:
            kth = _kth_largest(scores, top)
            above = np.flatnonzero(scores > kth)
            # Positions ascend with row number, hence with ext_id: keep the first ties.
            ties = np.flatnonzero(scores == kth)[: top - above.size]
            chosen = np.concatenate((above, ties))
        ordered = chosen[np.lexsort((chosen, -scores[chosen]))]
        page = ordered[query.offset : query.offset + query.size]
        rows = page if candidates is None else candidates[page]

        ext_ids = self.ext_ids.take(pa.array(rows, type=pa.int64())).to_pylist()
        parts = {"C": c, "B": b, "G": g, "K": k}
        hits = []
        for ext_id, row in zip(ext_ids, rows.tolist(), strict=True):
            components = {name: float(part) if np.ndim(part) == 0 else float(part[row]) for name, part in parts.items()}
            hits.append(
                Hit(
                    ext_id=ext_id,
                    score=float(score[row]),
                    components=components,
                    gender=GENDERS[int(self.gender_codes[row])],
                )
            )
        return SearchHits(total=total, hits=hits)


def _kth_largest(values: np.ndarray, k: int) -> float:
    """The k-th largest value (1-based), robust to large blocks of equal values.

    ``np.partition`` slows down by an order of magnitude when a large block of equal
    scores sits at one end (common here: most personas share the base score, or a
    large share have ``city[tier] == 1``). This is a quickselect with a three-way
    split (above / equal / below the pivot), vectorised with numpy, so a block of
    equal values is settled in one step. The pivot is read from a strided sample at
    the rank expected to leave a little more than ``k`` values above it.
    """
    current = values
    for _ in range(32):
        n = current.size
        if n <= 4096:
            break
        sample = np.sort(current[:: max(1, n // 1024)])
        rank = min(sample.size - 1, int(sample.size * 1.5 * k / n) + 2)  # from the top
        pivot = sample[sample.size - 1 - rank]
        above = current > pivot
        n_above = int(np.count_nonzero(above))
        if n_above >= k:
            current = current[above]
            continue
        n_equal = int(np.count_nonzero(current == pivot))
        if n_above + n_equal >= k:
            return float(pivot)
        k -= n_above + n_equal
        current = current[current < pivot]
    return float(np.partition(current, current.size - k)[current.size - k])


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


def open_index(index_dir: Path) -> EmbeddedIndex:
    """The published build, loaded once per process and reused until the pointer moves on.

    Raises :class:`IndexNotBuiltError` when no build has been published.
    """
    index_dir = Path(index_dir).resolve()
    for _attempt in range(3):
        build_id = current_build_id(index_dir)
        if build_id is None:
            raise IndexNotBuiltError(
                f"no embedded index build found in {index_dir} (no {POINTER_NAME} pointer); "
                "materialise the persona_index asset first"
            )
        cached = _CACHE.get(index_dir)
        if cached is not None and cached.build_id == build_id:
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
