"""Reading the import's CSV files as text, in batches of bounded size.

Every cell is read as a string (the validators decide what it means), headers are trimmed and only
the contract's columns are kept. Event files are far larger than memory should allow, so they are
read block by block; the small catalog files are the same batches put together.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from persona_assets.ingest.validation import ImportFileError, check_columns

# CSV bytes parsed per batch (~60k event rows). pyarrow's reader reads up to 32 blocks ahead, so this
# also sets the read-ahead (~128 MiB); smaller blocks make validation slower (a fixed cost per batch).
DEFAULT_BLOCK_BYTES = 4 << 20
MALFORMED_REASON = "wrong number of fields"
NOT_UTF8_REASON = "not valid UTF-8 text"
#: A row that never became cells: (reason, its 1-based number among the parsed rows or 0 when the
#: parser cannot tell, what is wrong with it, the row as read).
Unreadable = tuple[str, int, str, str]


def read_header(path: Path) -> list[str]:
    """The header row as written (a BOM dropped); an empty file, or a header that is not UTF-8, is an
    error naming the file. Only the first line is decoded: a bad byte further down is that row's problem."""
    with path.open("rb") as handle:
        first = handle.readline()
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ImportFileError(f"{path.name}: line 1, the header row, is not valid UTF-8 text ({error})") from None
    header = next(csv.reader([text]), None)
    if header is None:
        raise ImportFileError(f"{path.name}: the file is empty (a header row is required)")
    return header


def check_file(path: Path, required: tuple[str, ...]) -> list[str]:
    """Check the header of ``path`` has every required column (before anything is written); returns it."""
    header = read_header(path)
    check_columns(path.name, header, required)
    return header


@dataclass
class Batch:
    """A block of rows as strings; ``rows`` is indexed by the rows' 0-based position among the parsed rows."""

    rows: pd.DataFrame
    malformed: list[Unreadable]


@dataclass
class CsvBatches:
    """Iterates over ``path`` in batches; rows with the wrong number of fields are described, not parsed.

    The malformed rows found while a block was parsed come with that block's batch, so they never pile
    up in memory (their position is unknown to the parser: they have no row number).
    """

    path: Path
    required: tuple[str, ...]
    block_bytes: int = DEFAULT_BLOCK_BYTES
    rows_parsed: int = 0
    _pending_malformed: list[Unreadable] = field(default_factory=list)

    def __iter__(self) -> Iterator[Batch]:
        header = [name.strip() for name in check_file(self.path, self.required)]
        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=self.block_bytes),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=self._keep_malformed),
            convert_options=pacsv.ConvertOptions(
                # bytes first: a cell that is not UTF-8 rejects its row, not the whole block
                column_types={name: pa.binary() for name in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                include_columns=list(self.required),
            ),
        )
        for record_batch in reader:
            first = self.rows_parsed
            self.rows_parsed += record_batch.num_rows
            record_batch, not_utf8 = _as_text(record_batch, first)
            rows = record_batch.to_pandas()
            rows.index = pd.RangeIndex(first, first + record_batch.num_rows)
            if not_utf8:
                keep = np.ones(len(rows), dtype=bool)
                keep[[row_number - 1 - first for _, row_number, _, _ in not_utf8]] = False
                rows = rows[keep]
            malformed, self._pending_malformed = self._pending_malformed, []
            yield Batch(rows, malformed + not_utf8)
        if self._pending_malformed:
            malformed, self._pending_malformed = self._pending_malformed, []
            yield Batch(pd.DataFrame({name: pd.Series([], dtype=object) for name in self.required}), malformed)

    def _keep_malformed(self, row: pacsv.InvalidRow) -> str:
        where = "" if row.number is None else f"line {row.number}: "
        self._pending_malformed.append(
            (
                MALFORMED_REASON,
                0,
                f"{where}{row.text!r} has {row.actual_columns} fields, expected {row.expected_columns}",
                row.text or "",
            )
        )
        return "skip"


def _as_text(batch: pa.RecordBatch, first_row: int) -> tuple[pa.RecordBatch, list[Unreadable]]:
    """``batch`` with every column as UTF-8 strings, and its rows that are not UTF-8 (with their 1-based
    number among the parsed rows, as validation numbers rows, and bad bytes escaped); those rows are
    blanked in the batch and must be dropped.

    The cast checks a whole column at once; only a column that fails it is looked at row by row.
    """
    columns, bad = [], {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            columns.append(column.cast(pa.string()))
            continue
        except pa.ArrowInvalid:
            pass
        values = column.to_pylist()
        for i, value in enumerate(values):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as error:
                bad.setdefault(i, []).append(f"{name}: {value!r} ({error.reason} at byte {error.start})")
        columns.append(pa.array([b"" if i in bad else v for i, v in enumerate(values)], pa.binary()).cast(pa.string()))
    text = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
    unreadable = []
    for i, problems in sorted(bad.items()):
        cells = (column[i].as_py().decode("utf-8", "backslashreplace") for column in batch.columns)
        details = f"{NOT_UTF8_REASON}: " + "; ".join(problems)
        unreadable.append((NOT_UTF8_REASON, first_row + i + 1, details, ",".join(cells)))
    return text, unreadable


def read_whole(
    path: Path, required: tuple[str, ...], block_bytes: int = DEFAULT_BLOCK_BYTES
) -> tuple[pd.DataFrame, list[Unreadable]]:
    """A small file (the catalog) as one frame of strings, and its malformed rows."""
    frames: list[pd.DataFrame] = []
    malformed: list[Unreadable] = []
    for batch in CsvBatches(path, required, block_bytes):
        frames.append(batch.rows)
        malformed.extend(batch.malformed)
    if not frames:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in required}), malformed
    return pd.concat(frames), malformed
