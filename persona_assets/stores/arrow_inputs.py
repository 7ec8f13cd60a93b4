"""Checked Arrow views of the persona tables a search backend is given (users, affinities)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa


def as_table(data: pd.DataFrame | pa.Table, name: str, columns: tuple[str, ...]) -> pa.Table:
    """``data`` as an Arrow table of exactly ``columns``; a clear error names a missing column."""
    if isinstance(data, pd.DataFrame):
        missing = [c for c in columns if c not in data.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")
        table = pa.Table.from_pandas(data[list(columns)], preserve_index=False)
    elif isinstance(data, pa.Table):
        table = data
    else:
        raise TypeError(f"{name}: expected a pandas DataFrame or a pyarrow Table, got {type(data).__name__}")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")
    return table.select(list(columns))


def string_column(table: pa.Table, name: str, column: str) -> pa.ChunkedArray:
    """A column as large strings (tens of millions of rows may pass 2 GiB of text), with no nulls."""
    values = table[column]
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    try:
        values = values.cast(pa.large_string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{name}: column {column!r} must hold strings ({exc})") from None
    if values.null_count:
        raise ValueError(f"{name}: column {column!r} holds {values.null_count} null value(s)")
    return values


def float_column(table: pa.Table, name: str, column: str) -> pa.ChunkedArray:
    """A numeric column as float64, with no nulls."""
    try:
        values = table[column].cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{name}: column {column!r} must be numeric ({exc})") from None
    if values.null_count:
        raise ValueError(f"{name}: column {column!r} holds {values.null_count} null value(s)")
    return values


def first(values: pa.ChunkedArray | pa.Array, mask: pa.ChunkedArray | pa.Array) -> object:
    """The first value where ``mask`` holds (for error messages)."""
    return values.filter(mask)[0].as_py()


def first_repeat(composite: np.ndarray) -> tuple[np.ndarray, int | None]:
    """Stable sort order of ``composite`` (one integer code per row) and the row of its first repeated code,
    or None: the duplicate check both index backends run on (ext_id, dimension, key)."""
    order = np.argsort(composite, kind="stable")
    ordered = composite[order]
    same = np.flatnonzero(ordered[1:] == ordered[:-1]) if ordered.size > 1 else ordered[:0]
    return order, (int(order[same[0]]) if same.size else None)
