"""The day-partitioned event store: one Parquet file per event kind and UTC day.

Imports land validated days under ``landing/``; materialising a ``raw_*`` partition
publishes that day into ``events/`` with an atomic rename, so a day is always either
the old or the new version and re-running a day is idempotent.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class EventKind:
    """One kind of interaction event, its import file and its stored columns."""

    name: str
    csv_file: str
    csv_columns: tuple[str, ...]
    time_column: str
    schema: pa.Schema


EVENT_KINDS: dict[str, EventKind] = {
    kind.name: kind
    for kind in (
        EventKind(
            "visits",
            "visits.csv",
            ("ext_id", "pid", "pincode", "visited_at"),
            "visited_at",
            pa.schema([("ext_id", pa.string()), ("pid", pa.string()), ("pincode", pa.string()), ("ts", TIMESTAMP)]),
        ),
        EventKind(
            "checkouts",
            "checkouts.csv",
            ("order_id", "ext_id", "pid", "pincode", "ordered_at"),
            "ordered_at",
            pa.schema(
                [
                    ("order_id", pa.string()),
                    ("ext_id", pa.string()),
                    ("pid", pa.string()),
                    ("pincode", pa.string()),
                    ("ts", TIMESTAMP),
                ]
            ),
        ),
        EventKind(
            "searches",
            "searches.csv",
            ("ext_id", "query", "searched_at"),
            "searched_at",
            pa.schema([("ext_id", pa.string()), ("query", pa.string()), ("ts", TIMESTAMP)]),
        ),
    )
}


def _atomic_write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _users_in(path: Path) -> set[str]:
    """The distinct ext_ids of one day file (only that column is read)."""
    return set(pc.unique(pq.read_table(path, columns=["ext_id"]).column("ext_id")).to_pylist())


class EventStore:
    """Landing and published day files under one home folder."""

    def __init__(self, landing_dir: Path, events_dir: Path) -> None:
        self.landing_dir = landing_dir
        self.events_dir = events_dir

    def landing_path(self, kind: str, day: str) -> Path:
        return self.landing_dir / kind / f"{day}.parquet"

    def published_path(self, kind: str, day: str) -> Path:
        return self.events_dir / kind / f"day={day}" / "events.parquet"

    def land(self, kind: str, day: str, table: pa.Table) -> None:
        """Replace the landed version of one day with ``table`` (already validated)."""
        _atomic_write(table.cast(EVENT_KINDS[kind].schema), self.landing_path(kind, day))

    def staging_dir(self, import_id: str) -> Path:
        """Where an import prepares its files: beside the landing area, so they land by rename."""
        return self.landing_dir / ".staging" / import_id

    def land_file(self, kind: str, day: str, path: Path) -> None:
        """Replace the landed version of one day with ``path``, a Parquet file of validated rows in the kind's
        schema on the landing's filesystem (see ``staging_dir``): one atomic rename, so no copy per day."""
        target = self.landing_path(kind, day)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)

    def landed_days(self, kind: str) -> list[str]:
        folder = self.landing_dir / kind
        return sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []

    def stale_days(self, kind: str) -> list[str]:
        """Landed days whose published version is missing or older than the landed one."""
        stale = []
        for day in self.landed_days(kind):
            published = self.published_path(kind, day)
            landed_at = self.landing_path(kind, day).stat().st_mtime_ns
            if not published.exists() or published.stat().st_mtime_ns < landed_at:
                stale.append(day)
        return stale

    def days_not_landed(self, kind: str, days: Iterable[str]) -> tuple[list[str], list[str]]:
        """Of ``days``, (those with no landed file but a published version, those with neither)."""
        published, neither = [], []
        for day in days:
            if not self.landing_path(kind, day).exists():
                (published if self.published_path(kind, day).exists() else neither).append(day)
        return published, neither

    def publish(self, kind: str, day: str) -> tuple[int, set[str]]:
        """Publish the landed day (or an empty day, when none was landed: its published version goes); its
        event count and the users touched. Callers decide first whether a missing day may be published
        empty (``days_not_landed``): here it is.

        The users touched are those of the new and of the replaced version, since a user whose
        events were removed needs recalculation too. The landed file is already in the stored
        schema, so it is copied byte for byte (no decode and re-encode per day), and only the
        ``ext_id`` column of either version is read.
        """
        published = self.published_path(kind, day)
        touched = _users_in(published) if published.exists() else set()
        landed = self.landing_path(kind, day)
        if landed.exists():
            rows = pq.ParquetFile(landed).metadata.num_rows
            touched |= _users_in(landed)
            published.parent.mkdir(parents=True, exist_ok=True)
            tmp = published.with_name(f".{published.name}.{os.getpid()}.tmp")
            shutil.copyfile(landed, tmp)
            os.replace(tmp, published)
        else:
            rows = 0
            if published.exists():
                published.unlink()
        return rows, touched

    def published_glob(self, kind: str) -> str | None:
        """A DuckDB/Arrow glob over every published day of ``kind``, or None when there is none."""
        folder = self.events_dir / kind
        if not folder.exists() or not any(folder.glob("day=*/events.parquet")):
            return None
        return str(folder / "day=*" / "events.parquet")

    def published_days(self, kind: str) -> Iterable[str]:
        folder = self.events_dir / kind
        return sorted(p.parent.name.removeprefix("day=") for p in folder.glob("day=*/events.parquet"))
