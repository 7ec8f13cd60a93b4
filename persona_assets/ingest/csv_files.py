"""Reading the import's CSV files as text, in batches of bounded size.

Every cell is read as a string (the validators decide what it means), headers are trimmed and only
the contract's columns are kept. Event files are far larger than memory should allow, so they are
read block by block; the small catalog files are the same batches put together.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from persona_assets.ingest.validation import ImportFileError, check_columns

# CSV bytes parsed per batch (~60k event rows). pyarrow's reader reads up to 32 blocks ahead, so this
# also sets the read-ahead (~128 MiB); smaller blocks make validation slower (a fixed cost per batch).
DEFAULT_BLOCK_BYTES = 4 << 20
MALFORMED_REASON = "wrong number of fields"
UNTERMINATED_QUOTE_REASON = "unterminated quote"
NOT_UTF8_REASON = "not valid UTF-8 text"
# The header is the first line; more than this before a line break is not a header.
MAX_HEADER_BYTES = 1 << 20
#: A row that never became cells: (reason, its 1-based number among the parsed rows or 0 when the
#: parser cannot tell, what is wrong with it, the row as read).
Unreadable = tuple[str, int, str, str]


def read_header(path: Path) -> list[str]:
    """The header row as written (a BOM dropped); an empty file, or a header that is not UTF-8, is an
    error naming the file. Only the first line is decoded: a bad byte further down is that row's problem.
    A line ends at LF, CRLF or a lone CR (old Mac exports), as the row parser reads it."""
    if path.is_dir() or not path.exists():
        raise ImportFileError(f"{path.name}: not a file")
    with path.open("rb") as handle:
        start = handle.read(MAX_HEADER_BYTES)
    first = start.replace(b"\r\n", b"\n").replace(b"\r", b"\n").partition(b"\n")[0]
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ImportFileError(f"{path.name}: line 1, the header row, is not valid UTF-8 text ({error})") from None
    header = next(csv.reader([text]), [])
    if not any(name.strip() for name in header):
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
        rows_yielded = malformed_yielded = 0
        try:
            for batch in self._batches(header, self.path):
                rows_yielded = self.rows_parsed
                malformed_yielded += sum(1 for entry in batch.malformed if entry[1] == 0)
                yield batch
        except pa.ArrowInvalid as error:
            if "CSV parse error" not in str(error):
                raise
            # pyarrow raises instead of calling the row handler when a malformed row is not UTF-8: read
            # the file again with such bytes escaped, going on where the first read stopped.
            self.rows_parsed, self._pending_malformed = 0, []
            with _Utf8Escaped(self.path) as stream:
                yield from self._batches(header, pa.PythonFile(stream, mode="r"), rows_yielded, malformed_yielded)

    def _batches(
        self, header: list[str], source: Path | pa.NativeFile, skip_rows: int = 0, skip_malformed: int = 0
    ) -> Iterator[Batch]:
        """The file's batches, leaving out its first ``skip_rows`` parsed rows and ``skip_malformed``
        malformed ones (what a first read that failed has already handed over)."""
        reader = pacsv.open_csv(
            source,
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
            record_batch, not_utf8 = _as_text(record_batch, first, escaped=not isinstance(source, Path))
            rows = record_batch.to_pandas()
            rows.index = pd.RangeIndex(first, first + record_batch.num_rows)
            keep = rows.index.to_numpy() >= skip_rows
            if not_utf8:
                keep[[row_number - 1 - first for _, row_number, _, _ in not_utf8]] = False
                not_utf8 = [entry for entry in not_utf8 if entry[1] > skip_rows]
            rows = rows[keep] if not keep.all() else rows
            malformed, self._pending_malformed = self._pending_malformed, []
            skipped = min(skip_malformed, len(malformed))
            malformed, skip_malformed = malformed[skipped:], skip_malformed - skipped
            yield Batch(rows, malformed + not_utf8)
        if self._pending_malformed:
            malformed, self._pending_malformed = self._pending_malformed[skip_malformed:], []
            yield Batch(pd.DataFrame({name: pd.Series([], dtype=object) for name in self.required}), malformed)

    def _keep_malformed(self, row: pacsv.InvalidRow) -> str:
        where = "" if row.number is None else f"line {row.number}: "
        text = _unescaped(row.text or "")
        if text.count('"') % 2:  # a quote opened and never closed: the rest of the file is in this "row"
            reason = UNTERMINATED_QUOTE_REASON
            details = f"{reason}: {where}a quoted field runs from {text[:60]!r} to the end of the file"
        else:
            reason = MALFORMED_REASON
            details = f"{reason}: {where}{text!r} has {row.actual_columns} fields, expected {row.expected_columns}"
        self._pending_malformed.append((reason, 0, details, text))
        return "skip"


def _as_text(batch: pa.RecordBatch, first_row: int, escaped: bool) -> tuple[pa.RecordBatch, list[Unreadable]]:
    """``batch`` with every column as UTF-8 strings, and its rows that are not UTF-8 (with their 1-based
    number among the parsed rows, as validation numbers rows, and bad bytes escaped); those rows are
    blanked in the batch and must be dropped.

    The cast checks a whole column at once; only a column that fails it (or, when the batch was read
    through ``_Utf8Escaped``, holds escaped bytes) is looked at row by row.
    """
    original = _original_bytes if escaped else (lambda value: value)
    columns, bad = [], {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            text = column.cast(pa.string())
            if not escaped or not pc.any(pc.match_substring_regex(text, _ESCAPED_PATTERN)).as_py():
                columns.append(text)
                continue
        except pa.ArrowInvalid:
            pass
        values = [original(value) for value in column.to_pylist()]
        for i, value in enumerate(values):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as error:
                bad.setdefault(i, []).append(f"{name}: {value!r} ({error.reason} at byte {error.start})")
        columns.append(pa.array([b"" if i in bad else v for i, v in enumerate(values)], pa.binary()).cast(pa.string()))
    text = pa.RecordBatch.from_arrays(columns, names=batch.schema.names)
    unreadable = []
    for i, problems in sorted(bad.items()):
        cells = (original(column[i].as_py()).decode("utf-8", "backslashreplace") for column in batch.columns)
        details = f"{NOT_UTF8_REASON}: " + "; ".join(problems)
        unreadable.append((NOT_UTF8_REASON, first_row + i + 1, details, ",".join(cells)))
    return text, unreadable


# Bytes that are not UTF-8 become the code points U+10FF80..U+10FFFF (private use, plane 16) while a
# file is read again by ``_Utf8Escaped``, and are turned back into the bytes they were afterwards.
_ESCAPE_BASE = 0x10FF00
_ESCAPED_PATTERN = "[\U0010ff80-\U0010ffff]"
_ESCAPED = re.compile(_ESCAPED_PATTERN)
_ESCAPE_ERRORS = "persona-escape-bytes"


def _escape_bytes(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "".join(chr(_ESCAPE_BASE + byte) for byte in error.object[error.start : error.end]), error.end


codecs.register_error(_ESCAPE_ERRORS, _escape_bytes)


def _original_bytes(value: bytes) -> bytes:
    """``value`` with escaped bytes turned back into the bytes they were (other values unchanged)."""
    if not value or max(value) < 0xF4:  # an escape is encoded as F4 8F BE/BF xx
        return value
    text = value.decode("utf-8", "surrogateescape")
    return b"".join(
        bytes([ord(char) - _ESCAPE_BASE]) if _ESCAPED.fullmatch(char) else char.encode("utf-8", "surrogateescape")
        for char in text
    )


def _unescaped(text: str) -> str:
    """A malformed row's text with escaped bytes written as ``\\xNN``, as Python writes bytes it cannot decode."""
    return _ESCAPED.sub(lambda match: f"\\x{ord(match[0]) - _ESCAPE_BASE:02x}", text)


class _Utf8Escaped(io.RawIOBase):
    """A file read as UTF-8 with every byte that is not part of UTF-8 escaped (see ``_ESCAPE_BASE``)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=_ESCAPE_ERRORS)
        self._buffer = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            chunk = self._file.read(1 << 20)
            self._done = not chunk
            self._buffer += self._decoder.decode(chunk, final=self._done).encode("utf-8")
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def close(self) -> None:
        self._file.close()
        super().close()


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
