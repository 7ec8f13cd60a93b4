"""The embedded (no-server) segment index: Parquet builds behind an atomically switched pointer.

Layout under ``index_dir``::

    CURRENT                      {"build_id": ...}; replaced atomically (temp file + os.replace)
    builds/<build_id>/
        manifest.json            format, counts, creation time
        users.parquet            ext_id, gender; sorted by ext_id (code-point order)
        postings.parquet         row (int32), value (float64); grouped by (dimension, key), rows ascending
        keys.parquet             dimension, key, start, end: the slice of postings holding that key

A build is written into ``builds/.tmp-<build_id>``, renamed into place when
complete, and only then published by replacing ``CURRENT``; readers therefore
see the old build or the new one, never a half-written one. Older builds beyond
``keep_builds`` are removed afterwards (the published one is never removed).

Because users are sorted by ``ext_id`` once at build time, a row number orders
the same way as the ``ext_id``; the contract's tie-break (``ext_id`` ascending)
is then a sort on row numbers. A query computes the score of every persona with
numpy (constants for the criteria not given, plus a scatter of the postings of
the one key asked for in each given dimension), applies the gender mask and
selects the top ``offset + size`` in linear time, handling ties at the
cut exactly (everything above the k-th score, then the lowest rows among the
ones equal to it). The k-th score is found by a vectorised three-way quickselect
(:func:`_kth_largest`) because ``np.partition`` degrades on large blocks of equal
scores, which this data has by nature. There is no per-persona Python loop.

Keys are used as given: brand and generic names trimmed and lower-cased, tiers as
``Tier1``..``Tier3``, category ids as the canonical decimal string of the integer
(what :class:`~persona_assets.query.request.SegmentQuery` carries).

The score is computed in the same order of operations as
:func:`persona_assets.query.scoring.score_persona`, so both give identical floats.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona_assets.query.request import SegmentQuery
from persona_assets.query.scoring import NO_TIER_C, ScoreWeights
from persona_assets.stores.arrow_inputs import as_table, first, first_repeat, float_column, string_column

__all__ = [
    "DIMENSIONS",
    "GENDERS",
    "EmbeddedIndex",
    "Hit",
    "IndexBuild",
    "IndexNotBuiltError",
    "SearchHits",
    "build_index",
    "current_build_id",
    "list_builds",
    "open_index",
]

FORMAT_VERSION = 1
DIMENSIONS = ("brand", "generic", "category", "city", "ecomm")
GENDERS = ("men", "women", "unisex")
POINTER_NAME = "CURRENT"
BUILDS_DIR = "builds"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 24 * 3600
_BUILD_ID_RE = re.compile(r"[0-9]{8}T[0-9]{12}Z-[0-9a-f]{6}")


class IndexNotBuiltError(FileNotFoundError):
    """No build of the embedded index has been published in the index directory."""


@dataclass(frozen=True)
class IndexBuild:
    build_id: str
    path: Path
    document_count: int
    posting_count: int


@dataclass(frozen=True)
class Hit:
    ext_id: str
    score: float
    components: dict[str, float]
    gender: str


@dataclass(frozen=True)
class SearchHits:
    total: int
    hits: list[Hit] = field(default_factory=list)


# --------------------------------------------------------------------------- build


def _new_build_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prepare_users(users: pd.DataFrame | pa.Table) -> tuple[pa.Array, pa.Array]:
    table = as_table(users, "users", ("ext_id", "gender"))
    ext = string_column(table, "users", "ext_id")
    gender = string_column(table, "users", "gender")
    # Arrow orders strings by their UTF-8 bytes, which is Unicode code-point order.
    order = pc.sort_indices(ext)
    ext_sorted = ext.take(order).combine_chunks().cast(pa.string())
    gender_sorted = gender.take(order).combine_chunks().cast(pa.string())
    if len(ext_sorted) > 1:
        dup = pc.equal(ext_sorted.slice(1), ext_sorted.slice(0, len(ext_sorted) - 1))
        if pc.any(dup).as_py():
            raise ValueError(f"users: duplicate ext_id {first(ext_sorted.slice(1), dup)!r}")
    known = pc.is_in(gender_sorted, value_set=pa.array(GENDERS))
    if len(known) and not pc.all(known).as_py():
        bad = first(gender_sorted, pc.invert(known))
        raise ValueError(f"users: gender {bad!r} is not one of {', '.join(GENDERS)}")
    if len(ext_sorted) >= np.iinfo(np.int32).max:
        raise ValueError("users: too many personas for one embedded index build")
    return ext_sorted, gender_sorted


def _prepare_postings(
    affinities: pd.DataFrame | pa.Table, ext_sorted: pa.Array
) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """Rows and values grouped by (dimension, key), rows ascending; plus the key → slice table."""
    table = as_table(affinities, "affinities", ("ext_id", "dimension", "key", "value"))
    ext = string_column(table, "affinities", "ext_id")
    dimension = string_column(table, "affinities", "dimension")
    key = string_column(table, "affinities", "key")
    value = float_column(table, "affinities", "value")

    rows_arr = pc.index_in(ext, value_set=ext_sorted)
    if rows_arr.null_count:
        raise ValueError(
            f"affinities: ext_id {first(ext, pc.is_null(rows_arr))!r} is not in users "
            f"({rows_arr.null_count} affinity row(s) without a user)"
        )
    dim_arr = pc.index_in(dimension, value_set=pa.array(DIMENSIONS))
    if dim_arr.null_count:
        raise ValueError(
            f"affinities: dimension {first(dimension, pc.is_null(dim_arr))!r} is not one of {', '.join(DIMENSIONS)}"
        )
    distinct_keys = pc.unique(key).cast(pa.string())
    key_vocab = distinct_keys.take(pc.sort_indices(distinct_keys))
    key_arr = pc.index_in(key, value_set=key_vocab)

    rows = rows_arr.to_numpy().astype(np.int64, copy=False)
    dims = dim_arr.to_numpy().astype(np.int64, copy=False)
    keys = key_arr.to_numpy().astype(np.int64, copy=False)
    values = value.to_numpy()
    if values.size and (not np.isfinite(values).all() or (values < 0).any()):
        raise ValueError("affinities: column 'value' must hold finite numbers >= 0")

    n_users = len(ext_sorted)
    n_keys = max(len(key_vocab), 1)
    group = dims * n_keys + keys  # (dimension, key) pair; orders by key within a dimension
    composite = group * max(n_users, 1) + rows
    order, i = first_repeat(composite)
    if i is not None:
        raise ValueError(
            f"affinities: duplicate (ext_id, dimension, key) "
            f"({ext_sorted[int(rows[i])].as_py()!r}, {DIMENSIONS[int(dims[i])]!r}, "
            f"{key_vocab[int(keys[i])].as_py()!r})"
        )
    sorted_rows = rows[order].astype(np.int32)
    sorted_values = np.ascontiguousarray(values[order], dtype=np.float64)
    sorted_group = group[order]

    if sorted_group.size:
        starts = np.concatenate(([0], np.flatnonzero(sorted_group[1:] != sorted_group[:-1]) + 1))
        ends = np.concatenate((starts[1:], [sorted_group.size]))
        groups = sorted_group[starts]
    else:
        starts = ends = groups = np.zeros(0, dtype=np.int64)
    key_table = pa.table(
        {
            "dimension": pa.array([DIMENSIONS[int(g // n_keys)] for g in groups], type=pa.string()),
            "key": key_vocab.take(pa.array(groups % n_keys, type=pa.int64()))
            if groups.size
            else pa.array([], type=pa.string()),
            "start": pa.array(starts, type=pa.int64()),
            "end": pa.array(ends, type=pa.int64()),
        }
    )
    return sorted_rows, sorted_values, key_table


def build_index(
    users: pd.DataFrame | pa.Table,
    affinities: pd.DataFrame | pa.Table,
    index_dir: Path,
    *,
    keep_builds: int = 2,
) -> IndexBuild:
    """Write a new build of the index, publish it atomically, then prune old builds.

    ``users``: columns ``ext_id`` (str, unique) and ``gender`` (men/women/unisex).
    ``affinities``: long table ``ext_id, dimension, key, value`` with ``dimension`` in
    brand/generic/category/city/ecomm, normalised values; every ``ext_id`` must be in ``users``.
    ``keep_builds`` (≥ 1) is how many complete builds stay on disk, the published one included.
    """
    if keep_builds < 1:
        raise ValueError(f"keep_builds must be at least 1, got {keep_builds}")
    index_dir = Path(index_dir)
    ext_sorted, gender_sorted = _prepare_users(users)
    rows, values, key_table = _prepare_postings(affinities, ext_sorted)

    builds_dir = index_dir / BUILDS_DIR
    builds_dir.mkdir(parents=True, exist_ok=True)
    build_id = _new_build_id()
    tmp_path = builds_dir / f"{_TMP_PREFIX}{build_id}"
    final_path = builds_dir / build_id
    tmp_path.mkdir()
    try:
        pq.write_table(pa.table({"ext_id": ext_sorted, "gender": gender_sorted}), tmp_path / "users.parquet")
        pq.write_table(
            pa.table({"row": pa.array(rows, type=pa.int32()), "value": pa.array(values, type=pa.float64())}),
            tmp_path / "postings.parquet",
        )
        pq.write_table(key_table, tmp_path / "keys.parquet")
        manifest = {
            "format": FORMAT_VERSION,
            "build_id": build_id,
            "created_at": datetime.now(UTC).isoformat(),
            "document_count": len(ext_sorted),
            "posting_count": int(rows.size),
            "key_count": key_table.num_rows,
        }
        (tmp_path / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        for name in ("users.parquet", "postings.parquet", "keys.parquet", "manifest.json"):
            _fsync_path(tmp_path / name)
        _fsync_path(tmp_path)
        os.rename(tmp_path, final_path)
        _fsync_path(builds_dir)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise

    _switch_pointer(index_dir, build_id)
    _prune_builds(index_dir, keep_builds)
    return IndexBuild(build_id=build_id, path=final_path, document_count=len(ext_sorted), posting_count=int(rows.size))


def _switch_pointer(index_dir: Path, build_id: str) -> None:
    """Publish ``build_id``: write a temp file, fsync it, then ``os.replace`` it over ``CURRENT``."""
    pointer = index_dir / POINTER_NAME
    tmp = index_dir / f".{POINTER_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    payload = json.dumps({"build_id": build_id, "switched_at": datetime.now(UTC).isoformat()})
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, pointer)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(index_dir)


def list_builds(index_dir: Path) -> list[str]:
    """Complete builds on disk, oldest first (build ids sort by creation time)."""
    builds_dir = Path(index_dir) / BUILDS_DIR
    if not builds_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in builds_dir.iterdir()
        if p.is_dir() and _BUILD_ID_RE.fullmatch(p.name) and (p / "manifest.json").is_file()
    )


def _prune_builds(index_dir: Path, keep_builds: int) -> None:
    current = current_build_id(index_dir)
    builds = list_builds(index_dir)
    keep = set(builds[-keep_builds:])
    if current is not None:
        keep.add(current)
    builds_dir = Path(index_dir) / BUILDS_DIR
    for build_id in builds:
        if build_id not in keep:
            shutil.rmtree(builds_dir / build_id, ignore_errors=True)
    # Leftovers of builds that crashed long ago (a recent one may still be in progress elsewhere).
    now = time.time()
    for p in builds_dir.glob(f"{_TMP_PREFIX}*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


# --------------------------------------------------------------------------- read


def current_build_id(index_dir: Path) -> str | None:
    """The published build id, or ``None`` when nothing has been published yet."""
    pointer = Path(index_dir) / POINTER_NAME
    try:
        text = pointer.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        build_id = json.loads(text)["build_id"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"embedded index pointer {pointer} is corrupt: {text[:200]!r}") from None
    if not isinstance(build_id, str) or not _BUILD_ID_RE.fullmatch(build_id):
        raise ValueError(f"embedded index pointer {pointer} names an invalid build id {build_id!r}")
    return build_id


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
        slices: Mapping[str, Mapping[str, tuple[int, int]]],
    ) -> None:
        self.build_id = build_id
        self.path = path
        self._ext_ids = ext_ids
        self._gender_codes = gender_codes
        self._rows = rows
        self._values = values
        self._slices = {dim: dict(slices.get(dim, {})) for dim in DIMENSIONS}
        self._gender_rows = {gender: np.flatnonzero(gender_codes == code) for code, gender in enumerate(GENDERS)}

    @property
    def document_count(self) -> int:
        return len(self._ext_ids)

    @property
    def posting_count(self) -> int:
        return int(self._rows.size)

    def to_tables(self) -> tuple[pa.Table, pa.Table]:
        """The build back as its inputs: ``users (ext_id, gender)`` and ``affinities (ext_id, dimension, key, value)``.

        Lets an upsert rebuild from the live build plus the changed personas, whole-array (no per-user loop).
        """
        users = pa.table({"ext_id": self._ext_ids, "gender": pa.array(GENDERS).take(pa.array(self._gender_codes))})
        dims, keys, starts, ends = [], [], [], []
        for dim, spans in self._slices.items():
            for key, (start, end) in spans.items():
                dims.append(dim)
                keys.append(key)
                starts.append(start)
                ends.append(end)
        lengths = np.asarray(ends, dtype=np.int64) - np.asarray(starts, dtype=np.int64)
        order = (
            np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)])
            if starts
            else np.array([], dtype=np.int64)
        )
        affinities = pa.table(
            {
                "ext_id": self._ext_ids.take(pa.array(self._rows[order])),
                "dimension": pa.array(np.repeat(np.asarray(dims, dtype=object), lengths), pa.string()),
                "key": pa.array(np.repeat(np.asarray(keys, dtype=object), lengths), pa.string()),
                "value": pa.array(self._values[order], pa.float64()),
            }
        )
        return users, affinities

    def keys(self, dimension: str) -> list[str]:
        """The keys present in one dimension, sorted."""
        return sorted(self._slices[dimension])

    def _component(self, dimension: str, key: str) -> np.ndarray:
        vector = np.zeros(self.document_count, dtype=np.float64)
        span = self._slices[dimension].get(key)
        if span is not None:
            start, end = span
            vector[self._rows[start:end]] = self._values[start:end]
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

        ext_ids = self._ext_ids.take(pa.array(rows, type=pa.int64())).to_pylist()
        parts = {"C": c, "B": b, "G": g, "K": k}
        hits = []
        for ext_id, row in zip(ext_ids, rows.tolist(), strict=True):
            components = {name: float(part) if np.ndim(part) == 0 else float(part[row]) for name, part in parts.items()}
            hits.append(
                Hit(
                    ext_id=ext_id,
                    score=float(score[row]),
                    components=components,
                    gender=GENDERS[int(self._gender_codes[row])],
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
    slices: dict[str, dict[str, tuple[int, int]]] = {dim: {} for dim in DIMENSIONS}
    for dim, key, start, end in zip(
        key_table["dimension"].to_pylist(),
        key_table["key"].to_pylist(),
        key_table["start"].to_pylist(),
        key_table["end"].to_pylist(),
        strict=True,
    ):
        slices[dim][key] = (start, end)
    return EmbeddedIndex(
        build_id=build_id,
        path=path,
        ext_ids=ext_ids,
        gender_codes=gender_codes,
        rows=rows,
        values=values,
        slices=slices,
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
