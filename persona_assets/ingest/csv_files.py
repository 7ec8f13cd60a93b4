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

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from persona_assets.ingest.validation import ImportFileError, check_columns

# CSV bytes parsed per batch (~60k event rows). pyarrow's reader reads up to 32 blocks ahead, so this
# also sets the read-ahead (~128 MiB); smaller blocks make validation slower (a fixed cost per batch).
DEFAULT_BLOCK_BYTES = 4 << 20
MALFORMED_REASON = "wrong number of fields"


def read_header(path: Path) -> list[str]:
    """The header row as written (a BOM dropped); an empty file is an error naming it."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), None)
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
    malformed: list[str]


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
    _pending_malformed: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Batch]:
        header = [name.strip() for name in check_file(self.path, self.required)]
        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=self.block_bytes),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=self._keep_malformed),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                include_columns=list(self.required),
            ),
        )
        for record_batch in reader:
            rows = record_batch.to_pandas()
            rows.index = pd.RangeIndex(self.rows_parsed, self.rows_parsed + len(rows))
            self.rows_parsed += len(rows)
            malformed, self._pending_malformed = self._pending_malformed, []
            yield Batch(rows, malformed)
        if self._pending_malformed:
            malformed, self._pending_malformed = self._pending_malformed, []
            yield Batch(pd.DataFrame({name: pd.Series([], dtype=object) for name in self.required}), malformed)

    def _keep_malformed(self, row: pacsv.InvalidRow) -> str:
        where = "" if row.number is None else f"line {row.number}: "
        self._pending_malformed.append(
            f"{where}{row.text!r} has {row.actual_columns} fields, expected {row.expected_columns}"
        )
        return "skip"


def read_whole(
    path: Path, required: tuple[str, ...], block_bytes: int = DEFAULT_BLOCK_BYTES
) -> tuple[pd.DataFrame, list[str]]:
    """A small file (the catalog) as one frame of strings, and its malformed rows."""
    frames: list[pd.DataFrame] = []
    malformed: list[str] = []
    for batch in CsvBatches(path, required, block_bytes):
        frames.append(batch.rows)
        malformed.extend(batch.malformed)
    if not frames:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in required}), malformed
    return pd.concat(frames), malformed
