"""Writing builds of the embedded index: a directory per build behind an atomically switched pointer.

Layout under ``index_dir``::

    CURRENT                      {"build_id": ...}; replaced atomically (temp file + os.replace)
    builds/<build_id>/
        manifest.json            format, counts, creation time
        users.parquet            ext_id, gender; sorted by ext_id (code-point order)
        postings.parquet         row (int32), value (float64); grouped by (dimension, key), rows ascending
        keys.parquet             dimension, key, start, end: the slice of postings holding that key
        masked.parquet           a delta build only: ext_id of every persona of its base it replaces or removes

A *delta* build (an upsert's; its manifest names its ``base``) holds only the personas upserted since
that base was built, and lists the base's personas it masks; a reader answers from both. Upserts
therefore cost what changed, not the size of the index, until the delta grows large enough to be
merged into a new base (:mod:`persona_assets.stores.embedded_backend`).

A build is written into ``builds/.tmp-<build_id>``, renamed into place when complete, and only then
published by replacing ``CURRENT``; readers therefore see the old build or the new one, never a
half-written one. Older builds beyond ``keep_builds`` are removed afterwards (the published one never).

:func:`build_index` consumes a persona stream (``search_backend.PERSONA_SCHEMA``) in bounded memory.
Users arrive in ext_id order, so row numbers are assigned as they come and ``users.parquet`` is
written batch by batch. Each map entry becomes a posting (key id, row, value) spilled to a scratch
file; the grouping by key is then a counting sort over that file: the number of postings per key is
known, so each key's slice is allocated up front and every chunk of the spill is scattered into
place. A stable pass keeps rows ascending within a key (they arrived in that order). The footprint is
the finished postings (12 bytes each, what a query process holds anyway) plus one chunk: no sort of
the whole, no strings per posting.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona_assets.stores.persona_stream import checked_batches, map_entries
from persona_assets.stores.search_backend import DIMENSIONS, PersonaBatches

__all__ = [
    "BUILDS_DIR",
    "FORMAT_VERSION",
    "MASKED_FILE",
    "POINTER_NAME",
    "BuildArrays",
    "IndexBuild",
    "KeySlices",
    "build_index",
    "current_build_id",
    "list_builds",
    "read_manifest",
    "write_build",
]

FORMAT_VERSION = 1
POINTER_NAME = "CURRENT"
MASKED_FILE = "masked.parquet"
BUILDS_DIR = "builds"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 24 * 3600
_BUILD_ID_RE = re.compile(r"[0-9]{8}T[0-9]{12}Z-[0-9a-f]{6}")
#: Postings scattered per step of the counting sort (16 bytes each in the spill).
_SCATTER_CHUNK = 1 << 22
_SPILL_DTYPE = np.dtype([("key", "<i4"), ("row", "<i4"), ("value", "<f8")])


@dataclass(frozen=True)
class IndexBuild:
    build_id: str
    path: Path
    document_count: int
    posting_count: int


@dataclass(frozen=True)
class BuildArrays:
    """A build as read back: users in row order, postings grouped by key, and for a delta its base."""

    build_id: str
    path: Path
    ext_ids: pa.Array
    gender_codes: np.ndarray  # int8 index into GENDERS
    rows: np.ndarray  # int32
    values: np.ndarray  # float64
    key_slices: KeySlices
    base: str | None = None
    masked: pa.Array | None = None


@dataclass(frozen=True)
class KeySlices:
    """Where each (dimension, key) lives in the postings: ``[start, end)``, in (dimension, key) order."""

    dimension: list[str]
    key: list[str]
    start: np.ndarray  # int64
    end: np.ndarray  # int64

    def table(self) -> pa.Table:
        return pa.table(
            {
                "dimension": pa.array(self.dimension, pa.string()),
                "key": pa.array(self.key, pa.string()),
                "start": pa.array(self.start, pa.int64()),
                "end": pa.array(self.end, pa.int64()),
            }
        )


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


# --------------------------------------------------------------------------- postings


def slot_order(keys: list[tuple[int, str]]) -> np.ndarray:
    """For each (dimension index, key), its position in the build's key order (dimension, then code point)."""
    order = sorted(range(len(keys)), key=keys.__getitem__)
    slots = np.empty(len(keys), dtype=np.int64)
    slots[order] = np.arange(len(keys))
    return slots


class _PostingSpill:
    """Postings of a stream, spilled as they come and grouped by key at the end (a counting sort)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file = path.open("wb")
        self._ids: dict[tuple[int, str], int] = {}
        self._counts = np.zeros(0, dtype=np.int64)
        self.size = 0

    def add(self, batch: pa.RecordBatch, first_row: int) -> None:
        for dim_index, dimension in enumerate(DIMENSIONS):
            entries = map_entries(batch, dimension)
            if not len(entries.keys):
                continue
            encoded = pc.dictionary_encode(entries.keys)
            ids = np.array(
                [self._ids.setdefault((dim_index, k), len(self._ids)) for k in encoded.dictionary.to_pylist()],
                dtype=np.int32,
            )
            spilled = np.empty(len(entries.keys), dtype=_SPILL_DTYPE)
            spilled["key"] = ids[encoded.indices.to_numpy()]
            spilled["row"] = entries.parents + first_row
            spilled["value"] = entries.values
            spilled.tofile(self._file)
            counts = np.bincount(spilled["key"], minlength=len(self._ids))
            counts[: self._counts.size] += self._counts
            self._counts = counts
            self.size += spilled.size

    def grouped(self) -> tuple[np.ndarray, np.ndarray, KeySlices]:
        """(rows, values, slices): the postings grouped by (dimension, key), rows ascending within a key."""
        self._file.close()
        keys = list(self._ids)
        slots = slot_order(keys)
        counts = np.zeros(len(keys), dtype=np.int64)
        counts[slots] = self._counts[: len(keys)]
        ends = np.cumsum(counts)
        starts = ends - counts
        rows = np.empty(self.size, dtype=np.int32)
        values = np.empty(self.size, dtype=np.float64)
        # A stable sort on 16-bit slots is a radix sort; more keys than that still work, more slowly.
        slot_type = np.uint16 if len(keys) <= np.iinfo(np.uint16).max else np.int64
        slot_of_id = slots.astype(slot_type)
        cursor = starts.copy()
        with self._path.open("rb") as spill:
            while (chunk := np.fromfile(spill, dtype=_SPILL_DTYPE, count=_SCATTER_CHUNK)).size:
                chunk_slots = slot_of_id[chunk["key"]]
                order = np.argsort(chunk_slots, kind="stable")
                ordered = chunk_slots[order]
                run_starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
                run_lengths = np.diff(np.append(run_starts, ordered.size))
                rank = np.arange(ordered.size) - np.repeat(run_starts, run_lengths)
                positions = cursor[ordered] + rank
                rows[positions] = chunk["row"][order]
                values[positions] = chunk["value"][order]
                cursor[ordered[run_starts]] += run_lengths
        self._path.unlink()
        by_slot = sorted(keys)
        slices = KeySlices(
            dimension=[DIMENSIONS[d] for d, _ in by_slot], key=[k for _, k in by_slot], start=starts, end=ends
        )
        return rows, values, slices


# --------------------------------------------------------------------------- builds on disk


@contextmanager
def _new_build(index_dir: Path, keep_builds: int) -> Iterator[tuple[str, Path]]:
    """A scratch directory for a build; on success it is renamed into place, published and old builds pruned."""
    if keep_builds < 1:
        raise ValueError(f"keep_builds must be at least 1, got {keep_builds}")
    builds_dir = Path(index_dir) / BUILDS_DIR
    builds_dir.mkdir(parents=True, exist_ok=True)
    build_id = _new_build_id()
    tmp_path = builds_dir / f"{_TMP_PREFIX}{build_id}"
    tmp_path.mkdir()
    try:
        yield build_id, tmp_path
        for child in tmp_path.iterdir():
            _fsync_path(child)
        _fsync_path(tmp_path)
        os.rename(tmp_path, builds_dir / build_id)
        _fsync_path(builds_dir)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise
    _switch_pointer(Path(index_dir), build_id)
    _prune_builds(Path(index_dir), keep_builds)


def _write_rest(
    path: Path,
    build_id: str,
    users: int,
    rows: np.ndarray,
    values: np.ndarray,
    slices: KeySlices,
    base: str | None = None,
    searchable: int | None = None,
) -> None:
    pq.write_table(
        pa.table({"row": pa.array(rows, type=pa.int32()), "value": pa.array(values, type=pa.float64())}),
        path / "postings.parquet",
    )
    pq.write_table(slices.table(), path / "keys.parquet")
    manifest = {
        "format": FORMAT_VERSION,
        "build_id": build_id,
        "created_at": datetime.now(UTC).isoformat(),
        "document_count": users,
        # What a query of this build sees (a delta's own documents plus its base's unmasked ones): read by
        # document_count() without loading the arrays.
        "searchable_documents": users if searchable is None else searchable,
        "posting_count": int(rows.size),
        "key_count": len(slices.key),
        **({"base": base} if base is not None else {}),
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


_USERS_SCHEMA = pa.schema([("ext_id", pa.string()), ("gender", pa.string())])


def build_index(personas: PersonaBatches, index_dir: Path, *, keep_builds: int = 2) -> IndexBuild:
    """Write a new build from a persona stream, publish it atomically, then prune old builds.

    The stream is checked as it is read (``persona_stream.checked_batches``); a ValueError leaves
    the published build as it was. ``keep_builds`` (≥ 1): complete builds kept, the published one included.
    """
    with _new_build(index_dir, keep_builds) as (build_id, path):
        spill = _PostingSpill(path / "postings.spill")
        users = 0
        with pq.ParquetWriter(path / "users.parquet", _USERS_SCHEMA) as writer:
            for batch in checked_batches(personas):
                writer.write_batch(pa.RecordBatch.from_arrays([batch.column(0), batch.column(1)], schema=_USERS_SCHEMA))
                spill.add(batch, users)
                users += batch.num_rows
                if users >= np.iinfo(np.int32).max:
                    raise ValueError("users: too many personas for one embedded index build")
        rows, values, slices = spill.grouped()
        _write_rest(path, build_id, users, rows, values, slices)
    return IndexBuild(build_id, Path(index_dir) / BUILDS_DIR / build_id, users, int(rows.size))


def write_build(
    index_dir: Path,
    users: pa.Table,
    rows: np.ndarray,
    values: np.ndarray,
    slices: KeySlices,
    *,
    keep_builds: int = 2,
    delta_of: tuple[str, pa.Array] | None = None,
    searchable: int | None = None,
) -> IndexBuild:
    """Publish a build whose arrays are already laid out (an upsert's merge). ``delta_of`` = (base build id,
    ext_ids of the base it masks) makes it a delta build over that base; ``searchable`` is then the count
    of documents a query sees (the base's unmasked ones and the delta's)."""
    with _new_build(index_dir, keep_builds) as (build_id, path):
        pq.write_table(users.select(["ext_id", "gender"]).cast(_USERS_SCHEMA), path / "users.parquet")
        if delta_of is not None:
            pq.write_table(pa.table({"ext_id": pa.array(delta_of[1], pa.string())}), path / MASKED_FILE)
        base = None if delta_of is None else delta_of[0]
        _write_rest(path, build_id, users.num_rows, rows, values, slices, base, searchable)
    return IndexBuild(build_id, Path(index_dir) / BUILDS_DIR / build_id, users.num_rows, int(rows.size))


def read_manifest(index_dir: Path, build_id: str) -> dict:
    """A complete build's manifest (``FileNotFoundError`` when the build is gone)."""
    return json.loads((Path(index_dir) / BUILDS_DIR / build_id / "manifest.json").read_text(encoding="utf-8"))


def searchable_documents(index_dir: Path, build_id: str) -> int | None:
    """The documents a query of ``build_id`` sees, from its manifest alone (None for builds written before
    the manifest kept the count)."""
    count = read_manifest(index_dir, build_id).get("searchable_documents")
    return None if count is None else int(count)


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
    for build_id in list(keep):  # a delta needs its base
        try:
            base = read_manifest(index_dir, build_id).get("base")
        except (FileNotFoundError, ValueError):
            continue
        if base is not None:
            keep.add(base)
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
