"""``persona import DIR``: read, validate and land the contract's CSV files.

Every required file and column is checked before anything is written, so a broken
import writes nothing. Accepted rows land (catalog and one Parquet file per event kind
and day); rejected rows go to ``import_rejects`` with their reasons. Publishing the
landed data is the job of the assets, which the CLI materialises right after.
"""

from __future__ import annotations

import csv
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa

from persona_assets.ingest.validation import (
    OPTIONAL_FILES,
    REQUIRED_FILES,
    ImportFileError,
    Validated,
    check_columns,
    validate_categories,
    validate_events,
    validate_products,
)
from persona_assets.stores import relational
from persona_assets.stores.events import EVENT_KINDS, EventStore


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
        }


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


def _read_header(path: Path) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), None)
    if header is None:
        raise ImportFileError(f"{path.name}: the file is empty (a header row is required)")
    return header


def read_csv_strings(path: Path, required: tuple[str, ...]) -> tuple[pd.DataFrame, list[str]]:
    """Read a CSV with every cell as text, headers trimmed; returns the frame and the malformed lines."""
    header = _read_header(path)
    check_columns(path.name, header, required)
    malformed: list[str] = []

    def keep_bad_row(row: pacsv.InvalidRow) -> str:
        malformed.append(
            f"line {row.number}: {row.text!r} has {row.actual_columns} fields, expected {row.expected_columns}"
        )
        return "skip"

    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=[h.strip() for h in header], skip_rows=1),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=keep_bad_row),
        convert_options=pacsv.ConvertOptions(
            column_types={h.strip(): pa.string() for h in header},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            include_columns=list(required),
        ),
    )
    return table.to_pandas(), malformed


def _report(validated: Validated, rows_read: int, malformed: list[str]) -> FileReport:
    counts = validated.rejected["reason"].value_counts().to_dict() if len(validated.rejected) else {}
    if malformed:
        counts["wrong number of fields"] = len(malformed)
    return FileReport(rows_read=rows_read + len(malformed), imported=len(validated.accepted), rejected_by_reason=counts)


def import_directory(
    source: Path, engine, store: EventStore, *, first_day: date, last_day: date | None = None
) -> ImportReport:
    """Validate every file of ``source``, then land the accepted rows and record the rejected ones."""
    source = Path(source)
    if not source.is_dir():
        raise ImportFileError(f"{source}: not a directory")
    last_day = last_day or datetime.now(UTC).date()
    for name in REQUIRED_FILES:
        if not (source / name).is_file():
            raise ImportFileError(f"{name}: required file is missing from {source}")
    # Read and check every file first: a missing column anywhere means nothing is written.
    frames = {name: read_csv_strings(source / name, cols) for name, cols in REQUIRED_FILES.items()}
    frames |= {
        name: read_csv_strings(source / name, cols)
        for name, cols in OPTIONAL_FILES.items()
        if (source / name).is_file()
    }

    validated: dict[str, Validated] = {
        "categories.csv": validate_categories(frames["categories.csv"][0]),
        "products.csv": validate_products(frames["products.csv"][0]),
    }
    for kind in EVENT_KINDS.values():
        if kind.csv_file in frames:
            validated[kind.csv_file] = validate_events(kind.name, frames[kind.csv_file][0], first_day, last_day)

    # Microseconds: two imports in the same second still order by time (the latest one is judged).
    import_id = datetime.now(UTC).strftime("imp-%Y%m%dT%H%M%S%fZ-") + secrets.token_hex(3)
    files = {name: _report(v, len(frames[name][0]), frames[name][1]) for name, v in validated.items()}

    relational.create_schema(engine)
    rejects = _rejects_frame(import_id, validated, {name: frames[name][1] for name in validated})
    landed: dict[str, list[str]] = {}
    for kind in EVENT_KINDS.values():
        if kind.csv_file in validated:
            landed[kind.name] = _land_events(store, kind.name, validated[kind.csv_file].accepted)
    for name, file_name in (("products", "products.csv"), ("categories", "categories.csv")):
        path = catalog_landing_path(store.landing_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pandas(validated[file_name].accepted, preserve_index=False), tmp)
        tmp.replace(path)
    report = ImportReport(import_id=import_id, source=str(source.resolve()), files=files, landed_days=landed)
    with engine.begin() as conn:
        relational.bulk_insert(
            conn,
            relational.imports,
            pd.DataFrame(
                {
                    "import_id": [import_id],
                    "source": [report.source],
                    "started_at": [datetime.now(UTC).isoformat(timespec="microseconds")],
                    "summary": [json.dumps(report.as_dict())],
                }
            ),
        )
        if len(rejects):
            relational.bulk_insert(conn, relational.import_rejects, rejects)
    return report


def _rejects_frame(import_id: str, validated: dict[str, Validated], malformed: dict[str, list[str]]) -> pd.DataFrame:
    parts = [v.rejected.assign(file=name) for name, v in validated.items() if len(v.rejected)]
    for name, lines in malformed.items():
        if lines:
            parts.append(
                pd.DataFrame(
                    {"row_number": 0, "reason": "wrong number of fields", "details": lines, "raw": lines, "file": name}
                )
            )
    if not parts:
        return pd.DataFrame()
    frame = pd.concat(parts, ignore_index=True)
    frame["import_id"] = import_id
    frame["reason"] = frame["reason"].str.slice(0, 255)
    return frame[["import_id", "file", "row_number", "reason", "details", "raw"]]


def _land_events(store: EventStore, kind: str, accepted: pd.DataFrame) -> list[str]:
    """Write each day of ``accepted`` as that day's landed file (replacing an earlier import of the day)."""
    schema = EVENT_KINDS[kind].schema
    days = []
    for day, rows in accepted.groupby("day", sort=True):
        table = pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False)
        store.land(kind, str(day), table)
        days.append(str(day))
    return days
