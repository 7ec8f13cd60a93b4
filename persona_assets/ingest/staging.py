"""One import's files before they land: validated events per kind, their split into days, the rejects.

An import writes here first, batch by batch, so memory stays bounded by the batch size and DuckDB's
limit, not by the size of the files. The folder sits beside the landing area (same filesystem: a
finished day moves into place with one atomic rename) and is removed when the import ends, whether
it succeeded or not. Nothing under ``landing/`` changes until every file is read, validated and split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from persona_assets.compute.duck import DuckDBLimits, connect
from persona_assets.stores.events import EVENT_KINDS, EventStore

DAY_COLUMN = "day"
# Rows per batch of the day-sorted stream: each batch is cut where the day changes.
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
    """The landed columns of ``kind`` plus the UTC day the split sorts by."""
    return EVENT_KINDS[kind].schema.append(pa.field(DAY_COLUMN, pa.date32()))


class StagedParquet:
    """A Parquet file appended to one frame at a time; created on the first rows, so no rows means no file."""

    def __init__(self, path: Path, schema: pa.Schema, *, compression: str = "zstd") -> None:
        self.path = path
        self.schema = schema
        self.compression = compression
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def append(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, self.schema, compression=self.compression)
        self._writer.write_table(
            pa.Table.from_pandas(frame[self.schema.names], schema=self.schema, preserve_index=False)
        )
        self.rows += len(frame)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def frames(self, rows_per_frame: int) -> Iterator[pd.DataFrame]:
        """The staged rows again, ``rows_per_frame`` at a time (closes the file first)."""
        self.close()
        if self.rows:
            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=rows_per_frame):
                yield batch.to_pandas()


def split_by_day(conn: duckdb.DuckDBPyConnection, staged: Path, schema: pa.Schema, out_dir: Path) -> dict[str, Path]:
    """Write each day of ``staged`` to ``out_dir/<day>.parquet`` (in ``schema``) in one sorted pass.

    A day's rows may be anywhere in the file. DuckDB sorts by day, keeping the file's order within a
    day, under its memory limit (spilling when it must); the sorted stream is cut where the day changes,
    so one day file is open at a time and the cost per day is one file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = ", ".join(f'"{name}"' for name in schema.names)
    sorted_rows = conn.sql(
        f"SELECT {columns}, {DAY_COLUMN} FROM read_parquet($path, file_row_number = true) "
        f"ORDER BY {DAY_COLUMN}, file_row_number",
        params={"path": str(staged)},
    ).to_arrow_reader(SPLIT_BATCH_ROWS)
    days: dict[str, Path] = {}
    current: str | None = None
    writer: pq.ParquetWriter | None = None
    try:
        for batch in sorted_rows:
            runs = pc.run_end_encode(batch.column(DAY_COLUMN))
            start = 0
            for date, end in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
                day = date.isoformat()
                if writer is None or day != current:
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
        self.rejects = StagedParquet(root / "rejects.parquet", REJECT_SCHEMA)
        self.events = {
            kind: StagedParquet(root / "events" / f"{kind}.parquet", staged_event_schema(kind), compression="lz4")
            for kind in EVENT_KINDS
        }

    def __enter__(self) -> ImportStaging:
        self.root.mkdir(parents=True)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for staged in (self.rejects, *self.events.values()):
            staged.close()
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):  # the parent is shared with concurrent imports: only when empty
            self.root.parent.rmdir()

    def days_dir(self, kind: str) -> Path:
        return self.root / "days" / kind

    def split_events(self) -> dict[str, dict[str, Path]]:
        """Split every staged kind into day files; returns each kind's days (that had rows) and their files."""
        days: dict[str, dict[str, Path]] = {}
        with connect(self.limits) as conn:
            for kind, staged in self.events.items():
                staged.close()
                if staged.rows:
                    schema = EVENT_KINDS[kind].schema
                    days[kind] = split_by_day(conn, staged.path, schema, self.days_dir(kind))
        return days

    @staticmethod
    def land_days(store: EventStore, days: dict[str, dict[str, Path]]) -> None:
        """Move every split day into the landing area, each replacing that day atomically."""
        for kind, files in days.items():
            for day, path in files.items():
                store.land_file(kind, day, path)
