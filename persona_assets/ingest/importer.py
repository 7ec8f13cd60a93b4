"""``persona import DIR``: read, validate and land the contract's CSV files.

Every required file and column is checked before anything is written, so a broken
import writes nothing. Event files are streamed in batches through the validators into a
staging folder and split into days there (see ``staging``); only when everything is
ready do the accepted rows land (catalog and one Parquet file per event kind and day)
and the rejected rows go to ``import_rejects`` with their reasons. Publishing the landed
data is the job of the assets, which the CLI materialises right after.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persona_assets.compute.duck import DuckDBLimits
from persona_assets.ingest.csv_files import (
    DEFAULT_BLOCK_BYTES,
    CsvBatches,
    Unreadable,
    check_file,
    read_whole,
)
from persona_assets.ingest.staging import ImportStaging
from persona_assets.ingest.validation import (
    OPTIONAL_FILES,
    REQUIRED_FILES,
    ImportFileError,
    Validated,
    validate_categories,
    validate_events,
    validate_products,
)
from persona_assets.stores import relational
from persona_assets.stores.events import EVENT_KINDS, EventKind, EventStore


@dataclass
class FileReport:
    """What happened to one file of an import."""

    rows_read: int = 0
    imported: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class ImportReport:
    import_id: str
    source: str
    files: dict[str, FileReport]
    landed_days: dict[str, list[str]]
    # Seconds per phase (read and validate, split into days, land): what many days cost stays visible.
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(sum(f.rejected_by_reason.values()) for f in self.files.values())

    def as_dict(self) -> dict:
        return {
            "import_id": self.import_id,
            "source": self.source,
            "files": {
                name: {"rows_read": f.rows_read, "imported": f.imported, "rejected": f.rejected_by_reason}
                for name, f in self.files.items()
            },
            "landed_days": {kind: len(days) for kind, days in self.landed_days.items()},
            "seconds": self.seconds,
        }


class PhaseClock:
    """Seconds between laps, by phase name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(now - self._since, 3)
        self._since = now


def latest_import_file_summary(engine, file_name: str) -> tuple[str, dict[str, Any]] | None:
    """(import id, that file's summary) of the most recent import that contained ``file_name``.

    The summary is ``{"rows_read", "imported", "rejected": {reason: count}}``. Imports are ordered by
    their start time (microseconds), then by id (which starts with the same time).
    """
    table = relational.imports
    select = sa.select(table.c.import_id, table.c.summary).order_by(table.c.started_at.desc(), table.c.import_id.desc())
    with engine.connect() as conn:
        for import_id, summary in conn.execute(select):
            files = json.loads(summary).get("files", {})
            if file_name in files:
                return str(import_id), dict(files[file_name])
    return None


def latest_import_rejects(engine, file_name: str) -> dict[str, int]:
    """Rejected rows of ``file_name`` by reason in the most recent import that contained it."""
    found = latest_import_file_summary(engine, file_name)
    return {} if found is None else dict(found[1]["rejected"])


def catalog_landing_path(landing_dir: Path, name: str) -> Path:
    return landing_dir / "catalog" / f"{name}.parquet"


def import_directory(
    source: Path,
    engine: Engine,
    store: EventStore,
    *,
    first_day: date,
    last_day: date | None = None,
    limits: DuckDBLimits | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> ImportReport:
    """Validate every file of ``source``, then land the accepted rows and record the rejected ones.

    Event files are read ``block_bytes`` of CSV at a time and staged; DuckDB (bounded by ``limits``)
    splits them into days. Memory therefore depends on those two settings, not on the files.
    """
    source = Path(source)
    if not source.is_dir():
        raise ImportFileError(f"{source}: not a directory")
    last_day = last_day or datetime.now(UTC).date()
    present = _check_files(source)  # a missing file or column anywhere means nothing is written

    # Microseconds: two imports in the same second still order by time (the latest one is judged).
    import_id = datetime.now(UTC).strftime("imp-%Y%m%dT%H%M%S%fZ-") + secrets.token_hex(3)
    files: dict[str, FileReport] = {}
    clock = PhaseClock()
    with ImportStaging(store.staging_dir(import_id), limits) as staging:
        catalog = {}
        for name, validate in (("categories.csv", validate_categories), ("products.csv", validate_products)):
            frame, malformed = read_whole(source / name, present[name], block_bytes)
            validated = validate(frame)
            files[name] = _stage_rejects(staging, name, validated, malformed, FileReport(rows_read=len(frame)))
            files[name].imported = len(validated.accepted)
            catalog[name] = validated.accepted
        for kind in EVENT_KINDS.values():
            if kind.csv_file in present:
                files[kind.csv_file] = _stage_events(
                    staging,
                    kind,
                    CsvBatches(source / kind.csv_file, present[kind.csv_file], block_bytes),
                    first_day,
                    last_day,
                )
        clock.lap("read and validate")
        days = staging.split_events()
        clock.lap("split into days")

        relational.create_schema(engine)
        staging.land_days(store, days)
        for name, file_name in (("products", "products.csv"), ("categories", "categories.csv")):
            _land_catalog(store, name, catalog[file_name])
        clock.lap("land")
        landed = {
            kind.name: sorted(days.get(kind.name, {})) for kind in EVENT_KINDS.values() if kind.csv_file in present
        }
        report = ImportReport(
            import_id=import_id, source=str(source.resolve()), files=files, landed_days=landed, seconds=clock.seconds
        )
        _record(engine, report, staging)
    return report


def _check_files(source: Path) -> dict[str, tuple[str, ...]]:
    """The required columns of every file to read, once each file's presence and header are checked."""
    for name in [*REQUIRED_FILES, *OPTIONAL_FILES]:
        if (source / name).exists() and not (source / name).is_file():
            raise ImportFileError(f"{name}: not a file (a directory or a device of that name is in {source})")
    for name in REQUIRED_FILES:
        if not (source / name).is_file():
            raise ImportFileError(f"{name}: required file is missing from {source}")
    present = dict(REQUIRED_FILES) | {name: cols for name, cols in OPTIONAL_FILES.items() if (source / name).is_file()}
    for name, columns in present.items():
        check_file(source / name, columns)
    return present


def _stage_events(
    staging: ImportStaging, kind: EventKind, batches: CsvBatches, first_day: date, last_day: date
) -> FileReport:
    """Validate an event file batch by batch, staging accepted rows and rejects as it goes."""
    report = FileReport()
    for batch in batches:
        validated = validate_events(kind.name, batch.rows, first_day, last_day) if len(batch.rows) else None
        if validated is not None:
            staging.events[kind.name].append(validated.accepted)
            report.imported += len(validated.accepted)
        _stage_rejects(staging, kind.csv_file, validated, batch.malformed, report)
    report.rows_read += batches.rows_parsed
    return report


# Characters of a rejected row (and of its details) kept in import_rejects: enough to see what is wrong,
# and within a MySQL TEXT column (64 KiB) at four bytes a character. A 6 MiB field stays a rejected row.
MAX_REJECT_TEXT = 10_000


def _bounded(texts: pd.Series) -> pd.Series:
    texts = texts.astype(str)
    long = texts.str.len() > MAX_REJECT_TEXT
    if not long.any():
        return texts
    cut = texts[long].str.slice(0, MAX_REJECT_TEXT) + " … [" + texts[long].str.len().map("{:,}".format)
    return texts.where(~long, cut + " characters in all]")


def _stage_rejects(
    staging: ImportStaging,
    file_name: str,
    validated: Validated | None,
    malformed: list[Unreadable],
    report: FileReport,
) -> FileReport:
    """Stage the rejected rows of one batch and count them by reason in ``report``."""
    counts = report.rejected_by_reason
    if validated is not None and len(validated.rejected):
        rejected = validated.rejected
        for reason, count in rejected["reason"].value_counts().items():
            counts[str(reason)] = counts.get(str(reason), 0) + int(count)
        staging.rejects.append(
            rejected.assign(
                file=file_name,
                reason=rejected["reason"].str.slice(0, 255),
                details=_bounded(rejected["details"]),
                raw=_bounded(rejected["raw"]),
            )
        )
    if malformed:
        reasons, row_numbers, details, raw = zip(*malformed, strict=True)
        for reason in reasons:
            counts[reason] = counts.get(reason, 0) + 1
        report.rows_read += sum(number == 0 for number in row_numbers)  # the others were parsed (not UTF-8)
        staging.rejects.append(
            pd.DataFrame(
                {
                    "file": file_name,
                    "row_number": row_numbers,
                    "reason": reasons,
                    "details": _bounded(pd.Series(details, dtype=object)),
                    "raw": _bounded(pd.Series(raw, dtype=object)),
                }
            )
        )
    return report


def _land_catalog(store: EventStore, name: str, accepted: pd.DataFrame) -> None:
    path = catalog_landing_path(store.landing_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pandas(accepted, preserve_index=False), tmp)
    tmp.replace(path)


def _record(engine: Engine, report: ImportReport, staging: ImportStaging) -> None:
    """The import's summary and every rejected row, in one transaction, the rejects in bounded chunks."""
    with engine.begin() as conn:
        relational.bulk_insert(
            conn,
            relational.imports,
            pd.DataFrame(
                {
                    "import_id": [report.import_id],
                    "source": [report.source],
                    "started_at": [datetime.now(UTC).isoformat(timespec="microseconds")],
                    "summary": [json.dumps(report.as_dict())],
                }
            ),
        )
        for rejects in staging.rejects.frames(relational.CHUNK_ROWS):
            rejects.insert(0, "import_id", report.import_id)
            relational.bulk_insert(conn, relational.import_rejects, rejects)
