"""An upsert into the embedded index: the live build's arrays with a few personas replaced, merged in place.

A refresh changes a few thousand personas of a possibly large build. Re-sorting every posting would
cost as much as a rebuild, so the merge works on the layout the build already has:

1. users: the live ext_ids minus the changed and removed ones, plus the incoming ones, in code-point
   order; every kept user gets its new row number (a monotone renumbering);
2. postings: the kept users' postings keep their place (renumbered, so still ascending within their
   key); each incoming posting is inserted into its key's slice at the position its row sorts to (a
   binary search per key touched), and a key seen for the first time gets a new slice at its place in
   (dimension, key) order.

Everything is NumPy on the compact arrays (int32 rows, float64 values); the incoming personas — one
refresh batch — are held in memory.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from persona_assets.stores.embedded_build import KeySlices
from persona_assets.stores.persona_stream import checked_batches, map_entries
from persona_assets.stores.search_backend import DIMENSIONS, GENDERS, PERSONA_SCHEMA, PersonaBatches

__all__ = ["merged_with", "personas_of"]


@dataclass(frozen=True)
class _Incoming:
    """The incoming postings sorted by (key, row); ``keys`` in (dimension index, key) order."""

    keys: list[tuple[int, str]]
    key_index: np.ndarray  # into keys
    rows: np.ndarray  # new row numbers
    values: np.ndarray


def _incoming_postings(personas: pa.RecordBatch, new_rows: np.ndarray) -> _Incoming:
    ids: dict[tuple[int, str], int] = {}
    key_ids, rows, values = [], [], []
    for dim_index, dimension in enumerate(DIMENSIONS):
        entries = map_entries(personas, dimension)
        key_ids.append(np.array([ids.setdefault((dim_index, k), len(ids)) for k in entries.keys.to_pylist()], np.int64))
        rows.append(new_rows[entries.parents])
        values.append(entries.values)
    keys = sorted(ids)
    rank = np.zeros(len(ids), dtype=np.int64)
    rank[[ids[key] for key in keys]] = np.arange(len(keys))
    key_index = rank[np.concatenate(key_ids)]
    row_of, value_of = np.concatenate(rows), np.concatenate(values)
    order = np.lexsort((row_of, key_index))
    return _Incoming(keys, key_index[order], row_of[order], value_of[order])


def _one_batch(personas: PersonaBatches) -> pa.RecordBatch:
    """The (checked) incoming personas as one batch."""
    table = pa.Table.from_batches(list(checked_batches(personas)), schema=PERSONA_SCHEMA).combine_chunks()
    if table.num_rows:
        return table.to_batches()[0]
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in PERSONA_SCHEMA], schema=PERSONA_SCHEMA)


def merged_with(
    ext_ids: pa.Array,
    gender_codes: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    key_slices: KeySlices,
    personas: PersonaBatches,
    removed: Sequence[str] = (),
) -> tuple[pa.Table, np.ndarray, np.ndarray, KeySlices]:
    """The live build (its users, postings and key slices) with ``personas`` upserted and ``removed`` dropped.

    Returns the new users (ext_id, gender), rows, values and key slices, laid out as a build.
    """
    incoming_batch = _one_batch(personas)
    incoming_ids = incoming_batch.column(0)

    # 1. Users: kept live ones and incoming ones, in code-point order.
    changed = pa.concat_arrays([incoming_ids, pa.array(list(removed), pa.string())])
    kept = np.flatnonzero(~pc.is_in(ext_ids, value_set=changed).to_numpy(zero_copy_only=False))
    all_ids = pa.concat_arrays([ext_ids.take(pa.array(kept)), incoming_ids])
    all_genders = pa.concat_arrays([pa.array(GENDERS).take(pa.array(gender_codes[kept])), incoming_batch.column(1)])
    order = pc.sort_indices(all_ids).to_numpy()
    position = np.empty(order.size, dtype=np.int64)
    position[order] = np.arange(order.size)
    users = pa.table({"ext_id": all_ids.take(pa.array(order)), "gender": all_genders.take(pa.array(order))})
    renumbered = np.full(len(ext_ids), -1, dtype=np.int32)
    renumbered[kept] = position[: kept.size]

    # 2. Postings of kept users, renumbered in place.
    new_rows = renumbered[rows]
    keep = new_rows >= 0
    live_rows, live_values = new_rows[keep], values[keep]
    dropped = np.flatnonzero(~keep)  # a refresh batch's worth: count them per key rather than the kept ones
    dropped_per_key = np.bincount(
        np.searchsorted(key_slices.start, dropped, side="right") - 1, minlength=len(key_slices.key)
    )
    kept_per_key = key_slices.end - key_slices.start - dropped_per_key
    kept_end = np.cumsum(kept_per_key)
    kept_start = kept_end - kept_per_key
    live_keys = [(DIMENSIONS.index(d), k) for d, k in zip(key_slices.dimension, key_slices.key, strict=True)]
    live_slot = {key: i for i, key in enumerate(live_keys)}

    # 3. Incoming postings inserted where their rows sort within their key's slice.
    new = _incoming_postings(incoming_batch, position[kept.size :])
    insert_at = np.empty(new.rows.size, dtype=np.int64)
    bounds = np.searchsorted(new.key_index, np.arange(len(new.keys) + 1))
    for i, key in enumerate(new.keys):
        a, b = bounds[i], bounds[i + 1]
        slot = live_slot.get(key)
        if slot is None:  # a new key: its slice goes after every live key ordered before it
            before = bisect.bisect_left(live_keys, key)
            insert_at[a:b] = kept_end[before - 1] if before else 0
        else:
            segment = live_rows[kept_start[slot] : kept_end[slot]]
            insert_at[a:b] = kept_start[slot] + np.searchsorted(segment, new.rows[a:b])
    merged_rows = np.insert(live_rows, insert_at, new.rows.astype(np.int32))
    merged_values = np.insert(live_values, insert_at, new.values)

    # 4. Slices of the merged postings, empty keys dropped.
    counts = dict(zip(live_keys, kept_per_key.tolist(), strict=True))
    for key, added in zip(new.keys, np.diff(bounds).tolist(), strict=True):
        counts[key] = counts.get(key, 0) + added
    ordered = [key for key in sorted(counts) if counts[key]]
    ends = np.cumsum([counts[key] for key in ordered], dtype=np.int64)
    slices = KeySlices(
        dimension=[DIMENSIONS[d] for d, _ in ordered],
        key=[k for _, k in ordered],
        start=ends - np.array([counts[key] for key in ordered], dtype=np.int64),
        end=ends,
    )
    return users, merged_rows, merged_values, slices


def personas_of(users: pa.Table, rows: np.ndarray, values: np.ndarray, slices: KeySlices) -> pa.RecordBatch:
    """A build's personas as one batch of :data:`PERSONA_SCHEMA` (a delta, to be merged into its base).

    Slices come in (dimension, key) order, so each dimension's postings are contiguous and sorting them by
    (row, slice) puts every map's keys in code-point order.
    """
    n = users.num_rows
    dimension_of = np.array([DIMENSIONS.index(d) for d in slices.dimension], dtype=np.int64)
    lengths = slices.end - slices.start
    columns: list[pa.Array] = [
        users.column("ext_id").combine_chunks().cast(pa.string()),
        users.column("gender").combine_chunks().cast(pa.string()),
    ]
    for number in range(len(DIMENSIONS)):
        chosen = np.flatnonzero(dimension_of == number)
        slot = np.repeat(chosen, lengths[chosen])
        where = np.concatenate([np.arange(slices.start[i], slices.end[i]) for i in chosen] or [np.empty(0, np.int64)])
        row_of = rows[where].astype(np.int64)
        order = np.lexsort((slot, row_of))
        offsets = np.concatenate(([0], np.cumsum(np.bincount(row_of, minlength=n)))).astype(np.int32)
        keys = pa.array(slices.key, pa.string()).take(pa.array(slot[order], pa.int64()))
        columns.append(pa.MapArray.from_arrays(pa.array(offsets), keys, pa.array(values[where][order], pa.float64())))
    return pa.RecordBatch.from_arrays(columns, schema=PERSONA_SCHEMA)
