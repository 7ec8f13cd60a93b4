"""Personas as a stream of Arrow record batches (``search_backend.PERSONA_SCHEMA``): produced, checked, read.

A refresh leaves the normalised personas as two long tables (``persona_users``: ext_id, gender;
``persona_affinity``: ext_id, dimension, key, value), a rebuild as the integer hand-off files
(:func:`persona_batches_from_hand_off`). :func:`persona_batches` turns them into whole
users in ext_id order without holding them in Python: DuckDB (under the configured memory limit,
spilling to disk beyond it) numbers the users in code-point order, numbers the (dimension, key) pairs,
and sorts the affinity rows by (user, key) as plain integers — sorting 30 M rows of strings would cost
several times more. This module then cuts that sorted stream into batches of whole users and builds
their maps with vectorised Arrow/NumPy. Memory: DuckDB's limit plus a batch.

:func:`checked_batches` is what both backends run every stream through, whoever produced it: types,
order, uniqueness, genders and map values, with errors that name the offending persona.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from persona_assets.compute.duck import connect, parquet_relation
from persona_assets.stores.search_backend import DIMENSIONS, GENDERS, PERSONA_SCHEMA, PersonaBatches, PersonaHandOff

__all__ = [
    "PERSONA_BATCH_ROWS",
    "MapEntries",
    "checked_batches",
    "map_entries",
    "persona_batches",
    "persona_batches_from_frames",
    "persona_batches_from_hand_off",
]

#: Users per batch: large enough to amortise per-batch work, small enough to keep a batch a few MB.
PERSONA_BATCH_ROWS = 10_000
#: Sorted affinity rows fetched from DuckDB at a time.
_POSTING_CHUNK_ROWS = 262_144
_USERS_TABLE = "persona_stream_users"
_KEYS_TABLE = "persona_stream_keys"


# --------------------------------------------------------------------------- reading a map column


@dataclass(frozen=True)
class MapEntries:
    """The entries of one map column, flattened: row ``i`` owns ``keys[offsets[i]:offsets[i+1]]``."""

    offsets: np.ndarray  # int64, length rows + 1, starting at 0
    keys: pa.Array  # string
    values: np.ndarray  # float64 (a null value reads as NaN; checked_batches refuses both)
    null_values: int

    @property
    def parents(self) -> np.ndarray:
        """The row of each entry."""
        return np.repeat(np.arange(self.offsets.size - 1, dtype=np.int64), np.diff(self.offsets))


def map_entries(batch: pa.RecordBatch, dimension: str) -> MapEntries:
    """The entries of ``batch[dimension]`` (a map column; a null map has none)."""
    column = batch.column(dimension)
    offsets = column.offsets.to_numpy().astype(np.int64, copy=False)
    start, end = int(offsets[0]), int(offsets[-1])
    keys = column.keys.slice(start, end - start)
    values = column.items.slice(start, end - start)
    offsets = offsets - start
    if column.null_count:
        # A null slot may still span child entries (the format allows it): drop them.
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        keep = np.repeat(valid, np.diff(offsets))
        keys, values = keys.filter(pa.array(keep)), values.filter(pa.array(keep))
        offsets = np.concatenate(([0], np.cumsum(np.diff(offsets) * valid)))
    return MapEntries(
        offsets=offsets, keys=keys, values=values.to_numpy(zero_copy_only=False), null_values=values.null_count
    )


# --------------------------------------------------------------------------- checking a stream


def _conform(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with exactly the columns and types of PERSONA_SCHEMA, or a ValueError naming the column."""
    missing = [name for name in PERSONA_SCHEMA.names if name not in batch.schema.names]
    if missing:
        raise ValueError(f"personas: missing column(s) {', '.join(missing)}")
    columns = []
    for target in PERSONA_SCHEMA:
        column = batch.column(target.name)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        try:
            columns.append(column.cast(target.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise ValueError(f"personas: column {target.name!r} must be {target.type} ({exc})") from None
    return pa.RecordBatch.from_arrays(columns, schema=PERSONA_SCHEMA)


def _first_false(mask: pa.Array | np.ndarray) -> int:
    values = mask.to_numpy(zero_copy_only=False) if isinstance(mask, pa.Array) else mask
    return int(np.flatnonzero(~values)[0])


def _check_ext_ids(ext_ids: pa.Array, previous: str | None) -> None:
    if ext_ids.null_count:
        raise ValueError(f"personas: ext_id holds {ext_ids.null_count} null value(s)")
    first = ext_ids[0].as_py()
    if previous is not None and not previous < first:
        raise _order_error(previous, first)
    if len(ext_ids) > 1:
        ascending = pc.less(ext_ids.slice(0, len(ext_ids) - 1), ext_ids.slice(1))
        if not pc.all(ascending).as_py():
            i = _first_false(ascending)
            raise _order_error(ext_ids[i].as_py(), ext_ids[i + 1].as_py())


def _order_error(before: str, after: str) -> ValueError:
    if before == after:
        return ValueError(f"users: duplicate ext_id {after!r}")
    return ValueError(f"personas: ext_id {after!r} after {before!r}; rows must be in code-point order")


def _check_map(batch: pa.RecordBatch, dimension: str) -> None:
    entries = map_entries(batch, dimension)
    if not len(entries.keys):
        return
    if entries.null_values:
        raise ValueError(f"affinities: column 'value' holds {entries.null_values} null value(s) ({dimension})")
    values = entries.values
    if not (np.isfinite(values).all() and (values >= 0).all()):
        raise ValueError("affinities: column 'value' must hold finite numbers >= 0")
    if len(entries.keys) > 1:
        parents = entries.parents
        ascending = pc.less(entries.keys.slice(0, len(entries.keys) - 1), entries.keys.slice(1)).to_numpy(
            zero_copy_only=False
        )
        broken = np.flatnonzero(~ascending & (parents[1:] == parents[:-1]))
        if broken.size:
            i = int(broken[0])
            ext_id = batch.column(0)[int(parents[i])].as_py()
            before, after = entries.keys[i].as_py(), entries.keys[i + 1].as_py()
            if before == after:
                raise ValueError(
                    f"affinities: duplicate (ext_id, dimension, key) ({ext_id!r}, {dimension!r}, {after!r})"
                )
            raise ValueError(f"personas: {dimension} keys of {ext_id!r} are not in code-point order")


def checked_batches(personas: PersonaBatches) -> Iterator[pa.RecordBatch]:
    """``personas`` batch by batch, each cast to PERSONA_SCHEMA and checked; a ValueError names the fault.

    Checks ext_ids (no nulls, strictly increasing over the whole stream: so unique), genders, and each
    map (keys strictly increasing: so unique; values finite and >= 0). Empty batches are skipped.
    """
    previous: str | None = None
    known_genders = pa.array(GENDERS)
    for raw in personas:
        batch = _conform(raw)
        if batch.num_rows == 0:
            continue
        ext_ids = batch.column(0)
        _check_ext_ids(ext_ids, previous)
        gender = batch.column(1)
        known = pc.is_in(gender, value_set=known_genders)
        if gender.null_count or not pc.all(known).as_py():
            bad = gender[_first_false(pc.fill_null(known, False))].as_py()
            raise ValueError(f"users: gender {bad!r} is not one of {', '.join(GENDERS)}")
        for dimension in DIMENSIONS:
            _check_map(batch, dimension)
        previous = ext_ids[-1].as_py()
        yield batch


# --------------------------------------------------------------------------- producing a stream


def persona_batches(
    con: duckdb.DuckDBPyConnection, users: str, affinities: str, *, rows_per_batch: int = PERSONA_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """Whole personas in ext_id order from two DuckDB relations (tables or ``read_parquet(...)``).

    The relations are read on a second cursor too, so they must be visible to every connection of the
    database: a table or a file, not a view registered on this connection.

    ``users``: ``ext_id, gender``; ``affinities``: ``ext_id, dimension, key, value`` (normalised maps).
    The connection's memory limit bounds the sort. An unknown dimension or a null key is refused before
    the first batch; an affinity row whose user is missing, when the stream reaches it.
    """
    _check_rows_per_batch(rows_per_batch)
    con.execute(
        f"CREATE OR REPLACE TABLE {_USERS_TABLE} AS "
        f"SELECT ext_id, gender, row_number() OVER (ORDER BY ext_id) - 1 AS r FROM {users}"
    )
    con.execute(
        f"CREATE OR REPLACE TABLE {_KEYS_TABLE} AS SELECT dimension, key, "
        f"(row_number() OVER (ORDER BY dimension, key) - 1)::INTEGER AS kid "
        f"FROM (SELECT DISTINCT dimension, key FROM {affinities})"
    )
    yield from _stream(
        con,
        f"SELECT u.r, k.kid, a.value FROM {affinities} a "
        f"LEFT JOIN {_USERS_TABLE} u ON u.ext_id = a.ext_id "
        f"JOIN {_KEYS_TABLE} k ON k.dimension = a.dimension AND k.key = a.key "
        "ORDER BY u.r NULLS LAST, k.kid",
        f"SELECT a.ext_id, count(*) OVER () FROM {affinities} a ANTI JOIN {_USERS_TABLE} u ON u.ext_id = a.ext_id "
        "LIMIT 1",
        "ext_id",
        rows_per_batch,
    )


def _check_rows_per_batch(rows_per_batch: int) -> None:
    if rows_per_batch < 1:
        raise ValueError(f"rows_per_batch must be at least 1, got {rows_per_batch}")


def _stream(
    con: duckdb.DuckDBPyConnection, postings_sql: str, orphan_sql: str, user_column: str, rows_per_batch: int
) -> Iterator[pa.RecordBatch]:
    """Batches of whole users from ``_USERS_TABLE``/``_KEYS_TABLE`` and ``postings_sql`` (row, kid, value
    sorted by row, rows of no user last); ``orphan_sql`` names one such orphan (its ``user_column``)."""
    postings, users_cursor, diagnostics = con.cursor(), con.cursor(), con.cursor()
    try:
        key_dimension, key_text = _key_table(con)
        cursor = _PostingCursor(postings.sql(postings_sql).to_arrow_reader(_POSTING_CHUNK_ROWS))
        users_in_order = users_cursor.sql(f"SELECT ext_id, gender FROM {_USERS_TABLE} ORDER BY r").to_arrow_reader(
            rows_per_batch
        )
        first_row = 0
        for users_batch in users_in_order:
            end_row = first_row + users_batch.num_rows
            rows, kids, values = cursor.take_below(end_row)
            yield _assemble(users_batch, rows - first_row, kids, values, key_dimension, key_text)
            first_row = end_row
        if cursor.has_orphans():
            user, count = diagnostics.execute(orphan_sql).fetchone() or (None, 0)
            raise ValueError(
                f"affinities: {user_column} {user!r} is not in users ({count} affinity row(s) without a user)"
            )
    finally:
        for cursor_ in (postings, users_cursor, diagnostics):
            cursor_.close()
        con.execute(f"DROP TABLE IF EXISTS {_USERS_TABLE}")
        con.execute(f"DROP TABLE IF EXISTS {_KEYS_TABLE}")


def _key_table(con: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, pa.Array]:
    """kid → dimension index (int8) and kid → key; refuses unknown dimensions and null keys."""
    keys = con.sql(f"SELECT dimension, key FROM {_KEYS_TABLE} ORDER BY kid").to_arrow_table()
    dimension = keys["dimension"].combine_chunks()
    key = keys["key"].combine_chunks()
    index = pc.index_in(dimension, value_set=pa.array(DIMENSIONS))
    if index.null_count:
        bad = dimension.filter(pc.is_null(index))[0].as_py()
        raise ValueError(f"affinities: dimension {bad!r} is not one of {', '.join(DIMENSIONS)}")
    if key.null_count:
        raise ValueError("affinities: column 'key' holds null value(s)")
    return index.to_numpy().astype(np.int8), key.cast(pa.string())


class _PostingCursor:
    """Reads (row, kid, value) sorted by row and hands them out by row range."""

    def __init__(self, reader: pa.RecordBatchReader) -> None:
        self._reader = reader
        self._rows = np.zeros(0, np.int64)
        self._kids = np.zeros(0, np.int32)
        self._values = np.zeros(0, np.float64)
        self._orphans = False
        self._done = False

    def _read(self) -> None:
        try:
            chunk = self._reader.read_next_batch()
        except StopIteration:
            self._done = True
            return
        if chunk.column(2).null_count:
            raise ValueError(f"affinities: column 'value' holds {chunk.column(2).null_count} null value(s)")
        if chunk.column(0).null_count:  # sorted last: affinity rows whose user is missing
            self._orphans = self._done = True
            chunk = chunk.filter(pc.is_valid(chunk.column(0)))
        self._rows = np.concatenate((self._rows, chunk.column(0).to_numpy()))
        self._kids = np.concatenate((self._kids, chunk.column(1).to_numpy()))
        self._values = np.concatenate((self._values, chunk.column(2).to_numpy(zero_copy_only=False)))

    def take_below(self, end_row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The entries of rows < ``end_row`` (every earlier row has been taken already)."""
        while not self._done and (self._rows.size == 0 or self._rows[-1] < end_row):
            self._read()
        cut = int(np.searchsorted(self._rows, end_row, side="left"))
        taken = self._rows[:cut], self._kids[:cut], self._values[:cut]
        self._rows, self._kids, self._values = self._rows[cut:], self._kids[cut:], self._values[cut:]
        return taken

    def has_orphans(self) -> bool:
        """After the last user: whether any entry was left without one."""
        while not self._done:
            self._read()
        return self._orphans or self._rows.size > 0


def _assemble(
    users: pa.RecordBatch,
    parents: np.ndarray,
    kids: np.ndarray,
    values: np.ndarray,
    key_dimension: np.ndarray,
    key_text: pa.Array,
) -> pa.RecordBatch:
    """One batch of PERSONA_SCHEMA from its users and their entries sorted by (user, kid)."""
    entry_dimension = key_dimension[kids]
    maps = []
    for index in range(len(DIMENSIONS)):
        mine = entry_dimension == index
        counts = np.bincount(parents[mine], minlength=users.num_rows)
        offsets = pa.array(np.concatenate(([0], np.cumsum(counts))).astype(np.int32))
        maps.append(pa.MapArray.from_arrays(offsets, key_text.take(pa.array(kids[mine])), pa.array(values[mine])))
    columns = [users.column(0).cast(pa.string()), users.column(1).cast(pa.string()), *maps]
    return pa.RecordBatch.from_arrays(columns, schema=PERSONA_SCHEMA)


def persona_batches_from_hand_off(
    hand_off: PersonaHandOff, *, rows_per_batch: int = PERSONA_BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """:func:`persona_batches` over a rebuild's hand-off files, whose affinities are integers already: the
    keys are renumbered in (dimension, key) order once, and the sort runs on integers alone. On a
    connection of its own bounded by the hand-off's limits."""
    _check_rows_per_batch(rows_per_batch)
    for path in hand_off.files:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: materialise user_personas first")
    users, affinities, keys = (parquet_relation(path) for path in hand_off.files)
    con = connect(hand_off.limits)
    try:
        con.execute(
            f"CREATE OR REPLACE TABLE {_USERS_TABLE} AS "
            f"SELECT ext_id, gender, uid, row_number() OVER (ORDER BY ext_id) - 1 AS r FROM {users}"
        )
        con.execute(
            f"CREATE OR REPLACE TABLE {_KEYS_TABLE} AS SELECT dimension, key, kid AS hand_off_kid, "
            f"(row_number() OVER (ORDER BY dimension, key) - 1)::INTEGER AS kid FROM {keys}"
        )
        unknown = con.execute(
            f"SELECT a.kid FROM {affinities} a ANTI JOIN {_KEYS_TABLE} k ON k.hand_off_kid = a.kid LIMIT 1"
        ).fetchone()
        if unknown:
            raise ValueError(f"affinities: kid {unknown[0]!r} is not in keys")
        yield from _stream(
            con,
            f"SELECT u.r, k.kid, a.value FROM {affinities} a LEFT JOIN {_USERS_TABLE} u USING (uid) "
            f"JOIN {_KEYS_TABLE} k ON k.hand_off_kid = a.kid ORDER BY u.r NULLS LAST, k.kid",
            f"SELECT a.uid, count(*) OVER () FROM {affinities} a ANTI JOIN {_USERS_TABLE} u USING (uid) LIMIT 1",
            "uid",
            rows_per_batch,
        )
    finally:
        con.close()


_FRAME_COLUMNS = {
    "users": {"ext_id": pa.string(), "gender": pa.string()},
    "affinities": {"ext_id": pa.string(), "dimension": pa.string(), "key": pa.string(), "value": pa.float64()},
}


def _as_arrow(frame: pd.DataFrame | pa.Table, name: str) -> pa.Table:
    columns = _FRAME_COLUMNS[name]
    names = list(frame.columns) if isinstance(frame, pd.DataFrame) else frame.column_names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")
    arrays = {}
    for column, type_ in columns.items():
        values = frame[column]
        try:
            arrays[column] = (
                pa.array(values, type_, from_pandas=True) if isinstance(frame, pd.DataFrame) else values.cast(type_)
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"{name}: column {column!r} must be {type_} ({exc})") from None
    return pa.table(arrays)


def persona_batches_from_frames(
    users: pd.DataFrame | pa.Table,
    affinities: pd.DataFrame | pa.Table,
    *,
    rows_per_batch: int = PERSONA_BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """:func:`persona_batches` over in-memory long tables (tests, small tools)."""
    tables = {"users": _as_arrow(users, "users"), "affinities": _as_arrow(affinities, "affinities")}
    con = connect()
    try:
        for name, table in tables.items():  # tables, not registered views: the stream reads on a second cursor
            con.register("persona_frame", table)
            con.execute(f"CREATE TABLE persona_frames_{name} AS SELECT * FROM persona_frame")
            con.unregister("persona_frame")
        yield from persona_batches(
            con, "persona_frames_users", "persona_frames_affinities", rows_per_batch=rows_per_batch
        )
    finally:
        con.close()
