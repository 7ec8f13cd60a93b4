"""One import's files before they land: validated events per kind, their split into days, the rejects.

An import writes here first, batch by batch (Arrow IPC), so memory stays bounded by the batch size and DuckDB's
limit, not by the size of the files. The folder sits beside the landing area (same filesystem: a
finished day moves into place with one atomic rename) and is removed when the import ends, whether
it succeeded or not. Nothing under ``landing/`` changes until every file is read, validated and split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona_assets.compute.duck import DuckDBLimits, connect
from persona_assets.stores.events import EVENT_KINDS, EventStore

DAY_COLUMN = "day"
ROW_COLUMN = "staged_row"
# Rows per batch of the day-ordered stream: each batch is cut where the day changes.
SPLIT_BATCH_ROWS = 128_000
REJECT_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("row_number", pa.int64()),
        ("reason", pa.string()),
        ("details", pa.string()),
        ("raw", pa.string()),
    ]
)


def staged_event_schema(kind: str) -> pa.Schema:
    """The landed columns of ``kind``, the UTC day the split orders by, and the row's place among the staged."""
    return EVENT_KINDS[kind].schema.append(pa.field(DAY_COLUMN, pa.date32())).append(pa.field(ROW_COLUMN, pa.int64()))


class StagedRows:
    """Frames appended to an Arrow IPC file, created on the first rows (no rows: no file).

    The file lives only while one import runs, so it is written the cheapest way: uncompressed Arrow,
    about three times faster to write than Parquet, and read back batch by batch.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0
        self._sink: pa.NativeFile | None = None
        self._writer: pa.ipc.RecordBatchFileWriter | None = None

    def append(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._writer.write_table(
            pa.Table.from_pandas(frame[self.schema.names], schema=self.schema, preserve_index=False)
        )
        self.rows += len(frame)

    def close(self) -> None:
        if self._writer is not None and self._sink is not None:
            self._writer.close()
            self._sink.close()
        self._writer = self._sink = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The staged rows again, in the order they were appended (closes the file first)."""
        self.close()
        if not self.rows:
            return
        with pa.OSFile(str(self.path)) as source:
            reader = pa.ipc.open_file(source)
            for index in range(reader.num_record_batches):
                yield reader.get_batch(index)

    def frames(self, rows_per_frame: int) -> Iterator[pd.DataFrame]:
        """The staged rows again as frames of at most ``rows_per_frame`` rows."""
        for batch in self.batches():
            for start in range(0, batch.num_rows, rows_per_frame):
                yield batch.slice(start, rows_per_frame).to_pandas()


class StagedEvents(StagedRows):
    """The validated rows of one event kind, noting whether they arrived in day order.

    Exports are usually in time order; then the split needs no sort, only one pass over the file.
    """

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(path, staged_event_schema(kind))
        self.kind = kind
        self.in_day_order = True
        self._last_day: np.datetime64 | None = None

    def append(self, frame: pd.DataFrame) -> None:
        days = frame[DAY_COLUMN].to_numpy()
        if len(days) and self.in_day_order:
            went_back = self._last_day is not None and days[0] < self._last_day
            self.in_day_order = not (went_back or bool((days[1:] < days[:-1]).any()))
        if len(days):
            self._last_day = days[-1]
        super().append(frame.assign(**{ROW_COLUMN: np.arange(self.rows, self.rows + len(frame), dtype="int64")}))

    def day_ordered_batches(self, conn: duckdb.DuckDBPyConnection) -> Iterator[pa.RecordBatch]:
        """The staged rows by day, in file order within a day.

        In day order already: read back as they are. Otherwise DuckDB sorts them under its memory
        limit (spilling when it must) and streams the result.
        """
        if self.in_day_order:
            yield from self.batches()
            return
        # A one-pass stream, so Arrow holds one staged batch at a time (a dataset scan would load the file).
        staged = conn.from_arrow(pa.RecordBatchReader.from_batches(self.schema, self.batches()))
        yield from staged.order(f"{DAY_COLUMN}, {ROW_COLUMN}").to_arrow_reader(SPLIT_BATCH_ROWS)


def write_days(batches: Iterable[pa.RecordBatch], schema: pa.Schema, out_dir: Path) -> dict[str, Path]:
    """Write rows that come in day order to ``out_dir/<day>.parquet`` (in ``schema``), one file per day.

    Each batch is cut where the day changes, so one day file is open at a time and a day costs one
    file, however many batches it spans.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    days: dict[str, Path] = {}
    current: str | None = None
    writer: pq.ParquetWriter | None = None
    try:
        for batch in batches:
            runs = pc.run_end_encode(batch.column(DAY_COLUMN))
            start = 0
            for date, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
                day = date.isoformat()
                if writer is None or day != current:
                    if day in days:
                        raise RuntimeError(f"{day} came back after {current}: the rows are not in day order")
                    if writer is not None:
                        writer.close()
                    current, days[day] = day, out_dir / f"{day}.parquet"
                    writer = pq.ParquetWriter(days[day], schema, compression="zstd")
                writer.write_batch(batch.slice(start, end - start).select(schema.names).cast(schema))
                start = end
    finally:
        if writer is not None:
            writer.close()
    return days


class ImportStaging:
    """The staging folder of one import (a context manager that always removes it)."""

    def __init__(self, root: Path, limits: DuckDBLimits | None = None) -> None:
        self.root = root
        limits = limits or DuckDBLimits()
        # Spills of a caller without a configured folder stay inside the staging folder (and go with it).
        if limits.temp_directory is None:
            limits = dataclasses.replace(limits, temp_directory=root / "spill")
        self.limits = limits
        self.rejects = StagedRows(root / "rejects.arrow", REJECT_SCHEMA)
        self.events = {kind: StagedEvents(root / "events" / f"{kind}.arrow", kind) for kind in EVENT_KINDS}
        self._created: list[Path] = []

    def __enter__(self) -> ImportStaging:
        self._created = [folder for folder in (self.root, *self.root.parents) if not folder.exists()]
        self.root.mkdir(parents=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for staged in (self.rejects, *self.events.values()):
            staged.close()
        shutil.rmtree(self.root, ignore_errors=True)
        for folder in self._created[1:]:  # the folders made for it, when empty (concurrent imports share them)
            with contextlib.suppress(OSError):
                folder.rmdir()

    def days_dir(self, kind: str) -> Path:
        return self.root / "days" / kind

    def split_events(self) -> dict[str, dict[str, Path]]:
        """Split every staged kind into day files; returns each kind's days (that had rows) and their files."""
        days: dict[str, dict[str, Path]] = {}
        with connect(self.limits) as conn:
            for kind, staged in self.events.items():
                if staged.rows:
                    batches = staged.day_ordered_batches(conn)
                    days[kind] = write_days(batches, EVENT_KINDS[kind].schema, self.days_dir(kind))
        return days

    @staticmethod
    def land_days(store: EventStore, days: dict[str, dict[str, Path]]) -> None:
        """Move every split day into the landing area, each replacing that day atomically."""
        for kind, files in days.items():
            for day, path in files.items():
                store.land_file(kind, day, path)
