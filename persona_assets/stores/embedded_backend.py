"""The embedded index as a :class:`SearchBackend`: publishing builds, upserting deltas, opening the live view.

An upsert (a refresh's batch) does not rewrite the index. It writes a *delta build* over the live base:
the personas upserted since that base was built (the previous delta's, merged with the incoming ones) and
the base personas they mask. Its cost follows the delta, not the base: at a million personas a full
merge reads, merges and writes every posting (15 s, 4 GiB), a delta of one 10,000-user batch a few
hundred milliseconds. When the delta outgrows ``delta_share`` of its base, the upsert merges it into a
new base instead (and the next full rebuild starts over anyway).

Queries read the live build through :func:`open_index`: a process keeps the base it has loaded while
deltas over it come and go, so a refresh costs a query process the delta's load, not the base's.
"""

from __future__ import annotations

import fcntl
import functools
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona_assets.query.request import SegmentQuery
from persona_assets.query.scoring import ScoreWeights
from persona_assets.stores.embedded_build import (
    BUILDS_DIR,
    POINTER_NAME,
    BuildArrays,
    IndexBuild,
    KeySlices,
    build_index,
    current_build_id,
    read_manifest,
    searchable_documents,
    write_build,
)
from persona_assets.stores.embedded_hand_off import build_index_from_hand_off
from persona_assets.stores.embedded_index import EmbeddedIndex, IndexView, read_build
from persona_assets.stores.embedded_lookalikes import lookalikes
from persona_assets.stores.embedded_upsert import merged_with, personas_of
from persona_assets.stores.search_backend import (
    IndexNotBuiltError,
    KeyFrequencies,
    Lookalike,
    LookalikeSearch,
    PersonaBatches,
    PersonaHandOff,
    PublishReport,
    SearchHits,
)

__all__ = ["EmbeddedBackend", "open_index"]


_VIEWS: dict[Path, IndexView] = {}
_BASES: dict[Path, EmbeddedIndex] = {}
_CACHE_LOCK = threading.Lock()
# The pointer file's (inode, mtime) when the cached view was last confirmed: a publish replaces the file
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


def _load_view(index_dir: Path, build_id: str) -> IndexView:
    build = read_build(index_dir, build_id)
    if build.base is None:
        base = _BASES[index_dir] = EmbeddedIndex(build)
        return IndexView(base)
    base = _BASES.get(index_dir)
    if base is None or base.build_id != build.base:
        _BASES.pop(index_dir, None)  # the old base's memory goes before the new one is read
        base = _BASES[index_dir] = EmbeddedIndex(read_build(index_dir, build.base))
    return IndexView(base, EmbeddedIndex(build), build.masked)


def open_index(index_dir: Path) -> IndexView:
    """The published build (with its base, for a delta), loaded once per process and reused until the
    pointer moves on. Raises :class:`IndexNotBuiltError` when no build has been published."""
    index_dir = _canonical(str(index_dir))
    stamp = _pointer_stamp(index_dir)
    cached = _VIEWS.get(index_dir)
    if cached is not None and stamp is not None and _CONFIRMED.get(index_dir) == stamp:
        return cached
    for _attempt in range(3):
        build_id = current_build_id(index_dir)
        if build_id is None:
            raise IndexNotBuiltError(
                f"no embedded index build found in {index_dir} (no {POINTER_NAME} pointer); "
                "materialise the persona_index asset first"
            )
        cached = _VIEWS.get(index_dir)
        if cached is not None and cached.build_id == build_id:
            if stamp is not None:
                _CONFIRMED[index_dir] = stamp
            return cached
        with _CACHE_LOCK:
            cached = _VIEWS.get(index_dir)
            if cached is not None and cached.build_id == build_id:
                return cached
            try:
                view = _load_view(index_dir, build_id)
            except FileNotFoundError:
                # Pruned between reading the pointer and loading: read the pointer again.
                if current_build_id(index_dir) != build_id:
                    stamp = _pointer_stamp(index_dir)
                    continue
                raise IndexNotBuiltError(
                    f"embedded index pointer in {index_dir} names build {build_id}, "
                    "but its files (or its base's) are missing; rebuild the index"
                ) from None
            _VIEWS[index_dir] = view
            return view
    raise IndexNotBuiltError(f"embedded index in {index_dir} kept changing while it was being opened")


def _no_delta(base_id: str) -> BuildArrays:
    empty = KeySlices(dimension=[], key=[], start=np.empty(0, np.int64), end=np.empty(0, np.int64))
    return BuildArrays(
        build_id=base_id,
        path=Path(),
        ext_ids=pa.array([], pa.string()),
        gender_codes=np.empty(0, np.int8),
        rows=np.empty(0, np.int32),
        values=np.empty(0, np.float64),
        key_slices=empty,
        base=base_id,
        masked=pa.array([], pa.string()),
    )


def _published(build: IndexBuild) -> PublishReport:
    return PublishReport(
        build_id=build.build_id, document_count=build.document_count, details={"postings": build.posting_count}
    )


class EmbeddedBackend:
    """The embedded index under ``PERSONA_HOME/index``.

    Writers (rebuilds and upserts, from any process) take a file lock, so no upsert is lost to another
    writer's swap.
    """

    name = "embedded"
    #: A delta holding more personas than this share of its base is merged into a new base.
    delta_share = 0.1

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = Path(index_dir)

    def __repr__(self) -> str:
        return f"EmbeddedBackend({str(self.index_dir)!r})"

    def publish(self, personas: PersonaBatches) -> PublishReport:
        with self._writer_lock():
            return _published(build_index(personas, self.index_dir))

    def publish_hand_off(self, hand_off: PersonaHandOff) -> PublishReport:
        """The postings grouped by DuckDB straight from the files (``embedded_hand_off``), no persona stream."""
        with self._writer_lock():
            return _published(build_index_from_hand_off(hand_off, self.index_dir))

    def upsert(self, personas: PersonaBatches, removed: Sequence[str] = ()) -> PublishReport:
        """A new delta over the live base: the live delta with these personas replaced (and ``removed``
        dropped), swapped in like a full build; or, once the delta is large, a new base. The personas are
        a refresh's batch: they are held in memory."""
        with self._writer_lock():
            live_id = current_build_id(self.index_dir)
            if live_id is None:
                raise IndexNotBuiltError(f"no embedded index build in {self.index_dir} to upsert into")
            base_id = read_manifest(self.index_dir, live_id).get("base")
            previous = _no_delta(live_id) if base_id is None else read_build(self.index_dir, live_id)
            base_id = base_id or live_id
            users, rows, values, slices = merged_with(
                previous.ext_ids, previous.gender_codes, previous.rows, previous.values, previous.key_slices,
                personas, removed,
            )  # fmt: skip
            masked = pc.unique(
                pa.concat_arrays(
                    [previous.masked, users.column("ext_id").combine_chunks(), pa.array(removed, pa.string())]
                )
            )
            base_count = read_manifest(self.index_dir, base_id)["document_count"]
            if users.num_rows > self.delta_share * base_count:  # merged into a new base
                base = read_build(self.index_dir, base_id)
                delta = personas_of(users, rows, values, slices)
                merged = merged_with(
                    base.ext_ids, base.gender_codes, base.rows, base.values, base.key_slices,
                    [delta], masked.to_pylist(),
                )  # fmt: skip
                return _published(write_build(self.index_dir, *merged))
            # The live count: the base's ext_id column is read (not its postings) to see which masked ids it holds.
            base_ids = pq.read_table(self.index_dir / BUILDS_DIR / base_id / "users.parquet", columns=["ext_id"])
            masked_in_base = pc.sum(pc.is_in(masked, value_set=base_ids.column(0).combine_chunks())).as_py() or 0
            searchable = base_count - masked_in_base + users.num_rows
            build = write_build(
                self.index_dir, users, rows, values, slices, delta_of=(base_id, masked), searchable=searchable
            )
        return PublishReport(
            build_id=build.build_id,
            document_count=searchable,
            details={"delta_of": base_id, "delta_documents": build.document_count},
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

    def key_frequencies(self, keys: Mapping[str, Sequence[str]]) -> KeyFrequencies:
        view = open_index(self.index_dir)
        counts = {dim: {key: view.key_frequency(dim, key) for key in wanted} for dim, wanted in keys.items()}
        return KeyFrequencies(documents=view.document_count, counts=counts)

    def lookalikes(self, search: LookalikeSearch) -> list[Lookalike]:
        return lookalikes(open_index(self.index_dir), search)

    def document_count(self) -> int:
        """From the live build's manifest: a check or /health need not load a million personas' arrays."""
        build_id = current_build_id(self.index_dir)
        if build_id is not None:
            try:
                count = searchable_documents(self.index_dir, build_id)
            except FileNotFoundError:  # pruned since the pointer was read: the loaded view answers
                count = None
            if count is not None:
                return count
        return open_index(self.index_dir).document_count
