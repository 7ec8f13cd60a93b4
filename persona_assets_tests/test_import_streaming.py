"""The streaming import: batches, staging and the split into days must not change what an import does.

Event files are read a block at a time, staged, and split into one landed file per kind and day. These
tests make the blocks tiny (so every file is many batches), scatter each day over the whole file, and
check that the result is what one whole-file pass gives: the same landed days in file order, the same
rejects with the same row numbers, nothing left behind, and nothing written when a file turns out to be
unreadable half-way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import fresh_engine, write_import_dir

from persona_assets.ingest import staging
from persona_assets.ingest.csv_files import CsvBatches
from persona_assets.ingest.importer import ImportReport, import_directory
from persona_assets.ingest.validation import ImportFileError
from persona_assets.stores import relational
from persona_assets.stores.events import EVENT_KINDS, EventStore

FIRST_DAY = date(2015, 1, 1)
TINY_BLOCK = 600  # bytes of CSV per batch: a handful of rows
PRODUCTS = [
    {"pid": "P1", "pos": "flipkart", "title": "Air", "brand": "Nike", "generic_name": "Shoes", "gender": "men"},
    {"pid": "P2", "pos": "amazon", "title": "Tee", "brand": "Puma", "generic_name": "T-Shirt", "gender": "women"},
]
CATEGORIES = [{"cat_id": "1", "name": "Fashion", "parent_id": ""}]
DAYS = [f"2024-03-{d:02d}" for d in range(1, 8)]


def scattered_visits(rows: int) -> list[dict[str, str]]:
    """Visits whose days jump around the file (never sorted), every 9th one rejected (empty ext_id).

    Each row's pincode is its 1-based row number, so a landed or rejected row says where it came from.
    """
    visits = []
    for number in range(1, rows + 1):
        day = DAYS[(number * 5) % len(DAYS)]
        visits.append(
            {
                "ext_id": "" if number % 9 == 0 else f"u{number % 13}",
                "pid": "P1" if number % 2 else "P2",
                "pincode": str(number),
                "visited_at": f"{day}T{number % 24:02d}:00:00",
            }
        )
    return visits


def scattered_searches(rows: int) -> list[dict[str, str]]:
    """Searches over the same days, every 5th timestamp unparsable."""
    return [
        {
            "ext_id": f"u{number % 11}",
            "query": f"nike shoes {number}",
            "searched_at": "not-a-time" if number % 5 == 0 else f"{DAYS[(number * 3) % len(DAYS)]}T08:00:00+05:30",
        }
        for number in range(1, rows + 1)
    ]


def run_import(root: Path, source: Path, **options) -> tuple[ImportReport, object, EventStore]:
    engine = fresh_engine(root)
    store = EventStore(root / "home" / "landing", root / "home" / "events")
    return import_directory(source, engine, store, first_day=FIRST_DAY, **options), engine, store


def landed(store: EventStore) -> dict[tuple[str, str], list[dict]]:
    """Every landed day's rows, as written (in file order)."""
    return {
        (kind, day): pq.read_table(store.landing_path(kind, day)).to_pylist()
        for kind in EVENT_KINDS
        for day in store.landed_days(kind)
    }


def rejects(engine) -> list[tuple[str, int, str, str]]:
    frame = relational.read_frame(engine, relational.import_rejects)
    return sorted(zip(frame["file"], frame["row_number"], frame["reason"], frame["raw"], strict=True))


@pytest.fixture(scope="module")
def scattered_source(tmp_path_factory) -> Path:
    return write_import_dir(
        tmp_path_factory.mktemp("scattered") / "src",
        products=PRODUCTS,
        categories=CATEGORIES,
        visits=scattered_visits(400),
        searches=scattered_searches(150),
    )


def test_tiny_blocks_really_make_many_batches(scattered_source):
    # Guards the tests below: with one batch per file they could not catch a batch-boundary mistake.
    batches = list(CsvBatches(scattered_source / "visits.csv", EVENT_KINDS["visits"].csv_columns, TINY_BLOCK))
    assert len(batches) > 20
    assert [b.rows.index[0] for b in batches] == list(
        pd.Series([len(b.rows) for b in batches]).cumsum().shift(1, fill_value=0)
    )


def test_batches_give_the_same_import_as_one_pass(tmp_path, scattered_source, monkeypatch):
    whole, whole_engine, whole_store = run_import(tmp_path / "whole", scattered_source)
    monkeypatch.setattr(staging, "SPLIT_BATCH_ROWS", 7)  # a day spans several sorted batches, too
    batched, batched_engine, batched_store = run_import(tmp_path / "batched", scattered_source, block_bytes=TINY_BLOCK)
    assert batched.as_dict()["files"] == whole.as_dict()["files"]
    assert batched.landed_days == whole.landed_days == {"visits": DAYS, "searches": DAYS}
    assert landed(batched_store) == landed(whole_store)
    assert rejects(batched_engine) == rejects(whole_engine)


def visits_in(order: str) -> list[dict[str, str]]:
    """The scattered visits as they are, sorted by day (stable), or sorted with the first day's first row last."""
    visits = scattered_visits(400)
    if order == "scattered":
        return visits
    by_day = sorted(visits, key=lambda row: row["visited_at"][:10])
    return by_day if order == "day order" else [*by_day[1:], by_day[0]]


@pytest.mark.parametrize(
    ("order", "in_day_order"),
    [("scattered", False), ("day order", True), ("day order but one late row", False)],
)
def test_rows_of_a_day_land_together_in_file_order(tmp_path, monkeypatch, order, in_day_order):
    monkeypatch.setattr(staging, "SPLIT_BATCH_ROWS", 5)  # a day spans several batches of the split
    paths: list[bool] = []
    read_by_day = staging.StagedEvents.day_ordered_batches

    def spy(self, conn):
        paths.append(self.in_day_order)
        return read_by_day(self, conn)

    monkeypatch.setattr(staging.StagedEvents, "day_ordered_batches", spy)
    visits = visits_in(order)
    source = write_import_dir(tmp_path / "src", products=PRODUCTS, categories=CATEGORIES, visits=visits)
    report, _engine, store = run_import(tmp_path, source, block_bytes=TINY_BLOCK)

    assert paths == [in_day_order]  # in day order: read back as staged; otherwise sorted by DuckDB
    expected: dict[str, list[str]] = {day: [] for day in DAYS}
    for row in visits:
        if row["ext_id"]:
            expected[row["visited_at"][:10]].append(row["pincode"])
    for day in DAYS:
        rows = pq.read_table(store.landing_path("visits", day)).to_pylist()
        assert [r["pincode"] for r in rows] == expected[day], day
        assert {r["ts"].date().isoformat() for r in rows} == {day}
    assert report.files["visits.csv"].imported == sum(map(len, expected.values()))


def test_reject_row_numbers_count_across_batches(tmp_path, scattered_source):
    _report, engine, _store = run_import(tmp_path, scattered_source, block_bytes=TINY_BLOCK)
    visit_rejects = [(number, json.loads(raw)) for file, number, _r, raw in rejects(engine) if file == "visits.csv"]
    assert [number for number, _ in visit_rejects] == list(range(9, 401, 9))
    assert all(raw["pincode"] == str(number) for number, raw in visit_rejects)
    search_rejects = [number for file, number, _r, _raw in rejects(engine) if file == "searches.csv"]
    assert search_rejects == list(range(5, 151, 5))


def test_malformed_rows_are_counted_and_kept_from_every_batch(tmp_path):
    lines = ["ext_id,pid,pincode,visited_at"]
    for number in range(1, 201):
        lines.append(f"u{number},P1,{number},2024-03-01" + (",extra-field" if number % 25 == 0 else ""))
    source = write_import_dir(tmp_path / "src", products=PRODUCTS, categories=CATEGORIES)
    (source / "visits.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report, engine, _store = run_import(tmp_path, source, block_bytes=TINY_BLOCK)
    visits = report.files["visits.csv"]
    assert (visits.rows_read, visits.imported, visits.rejected_by_reason) == (200, 192, {"wrong number of fields": 8})
    kept = [raw for file, _n, _r, raw in rejects(engine) if file == "visits.csv"]
    assert sorted(kept) == sorted(f"u{n},P1,{n},2024-03-01,extra-field" for n in range(25, 201, 25))
    details = relational.read_frame(engine, relational.import_rejects)["details"]
    assert sorted(details) == sorted(
        f"wrong number of fields: 'u{n},P1,{n},2024-03-01,extra-field' has 5 fields, expected 4"
        for n in range(25, 201, 25)
    )


def test_a_malformed_row_that_is_not_utf8_late_in_the_file_loses_and_repeats_no_row(tmp_path):
    """pyarrow cannot hand such a row to the row handler (it raises): the file is read again with the bad
    bytes escaped from where the first read stopped, so the batches already staged are neither lost
    nor staged twice."""
    lines = [b"ext_id,pid,pincode,visited_at"]
    for number in range(1, 201):
        if number == 150:
            lines.append(b"u150,caf\xe9")  # too few fields and not UTF-8
        elif number == 60:
            lines.append(b"u60,P1,60,2024-03-01,extra-field")
        elif number == 30:
            lines.append(b"u30,P\xff,30,2024-03-01")
        else:
            lines.append(b"u%d,P1,%d,2024-03-01" % (number, number))
    source = write_import_dir(tmp_path / "src", products=PRODUCTS, categories=CATEGORIES)
    (source / "visits.csv").write_bytes(b"\n".join(lines) + b"\n")
    report, engine, store = run_import(tmp_path, source, block_bytes=TINY_BLOCK)
    visits = report.files["visits.csv"]
    assert visits.imported == 197
    assert visits.rejected_by_reason == {"wrong number of fields": 2, "not valid UTF-8 text": 1}
    raw = sorted(raw for file, _n, _r, raw in rejects(engine) if file == "visits.csv")
    assert raw == ["u150,caf\\xe9", "u30,P\\xff,30,2024-03-01", "u60,P1,60,2024-03-01,extra-field"]
    landed = pd.concat(pq.read_table(path).to_pandas() for path in store.landing_dir.rglob("visits/*.parquet"))
    assert sorted(landed["ext_id"]) == sorted(f"u{n}" for n in range(1, 201) if n not in (30, 60, 150))


@pytest.mark.contract  # the rejects land in the relational store: both backend pairs
def test_a_row_that_is_not_utf8_is_rejected_and_the_good_rows_kept(tmp_path):
    """One Latin-1 byte (`caf\\xe9 shoes`) rejects its row, naming the column and the byte; every other row
    of the file, in its batch and the next ones, is imported."""
    lines = [b"ext_id,query,searched_at"]
    for number in range(1, 151):
        text = b"caf\xe9 shoes" if number in (7, 120) else f"shoes {number}".encode()
        lines.append(b"u%d,%s,2024-03-01" % (number, text))
    source = write_import_dir(tmp_path / "src", products=PRODUCTS, categories=CATEGORIES)
    (source / "searches.csv").write_bytes(b"\n".join(lines) + b"\n")
    report, engine, store = run_import(tmp_path, source, block_bytes=TINY_BLOCK)
    searches = report.files["searches.csv"]
    assert (searches.rows_read, searches.imported, searches.rejected_by_reason) == (
        150,
        148,
        {"not valid UTF-8 text": 2},
    )
    frame = relational.read_frame(engine, relational.import_rejects)
    assert sorted(frame["row_number"]) == [7, 120]
    assert all(d.startswith("not valid UTF-8 text: query: b'caf\\xe9 shoes'") for d in frame["details"])
    assert sorted(frame["raw"]) == ["u120,caf\\xe9 shoes,2024-03-01", "u7,caf\\xe9 shoes,2024-03-01"]
    landed_ids = {row["ext_id"] for row in pq.read_table(store.landing_path("searches", "2024-03-01")).to_pylist()}
    assert landed_ids == {f"u{n}" for n in range(1, 151)} - {"u7", "u120"}


@pytest.mark.contract  # the rejects land in the relational store: both backend pairs
def test_a_header_that_is_not_utf8_is_an_error_naming_the_file_and_nothing_is_written(tmp_path):
    source = write_import_dir(tmp_path / "src", products=PRODUCTS, categories=CATEGORIES)
    (source / "searches.csv").write_bytes(b"ext_id,qu\xe9ry,searched_at\nu1,shoes,2024-03-01\n")
    with pytest.raises(ImportFileError, match=r"searches\.csv: line 1, the header row, is not valid UTF-8"):
        run_import(tmp_path, source)
    assert not (tmp_path / "home" / "landing").exists() or not any((tmp_path / "home" / "landing").rglob("*.parquet"))


def test_an_import_replaces_the_days_it_contains_and_keeps_the_others(tmp_path):
    def visits(marker: str, days: list[str]) -> list[dict]:
        return [
            {"ext_id": marker, "pid": "P1", "pincode": "560001", "visited_at": day} for day in days for _ in range(2)
        ]

    engine = fresh_engine(tmp_path)
    store = EventStore(tmp_path / "home" / "landing", tmp_path / "home" / "events")
    for marker, days in (("first", DAYS[:3]), ("second", DAYS[2:5])):
        source = write_import_dir(
            tmp_path / marker, products=PRODUCTS, categories=CATEGORIES, visits=visits(marker, days)
        )
        import_directory(source, engine, store, first_day=FIRST_DAY, block_bytes=TINY_BLOCK)
    by_day = {
        day: {r["ext_id"] for r in pq.read_table(store.landing_path("visits", day)).to_pylist()} for day in DAYS[:5]
    }
    assert by_day == {
        DAYS[0]: {"first"},
        DAYS[1]: {"first"},
        DAYS[2]: {"second"},
        DAYS[3]: {"second"},
        DAYS[4]: {"second"},
    }
    assert [pq.read_table(store.landing_path("visits", day)).num_rows for day in DAYS[:5]] == [2] * 5


def test_no_staging_is_left_after_an_import(tmp_path, scattered_source):
    _report, _engine, store = run_import(tmp_path, scattered_source, block_bytes=TINY_BLOCK)
    assert not store.staging_dir("any").parent.exists()
    assert sorted(p.name for p in store.landing_dir.iterdir()) == ["catalog", "searches", "visits"]


def _fail_on_batch(monkeypatch, number: int) -> None:
    """The import stops half way: its NUMBER-th event batch raises as a full disk would."""
    from persona_assets.ingest import importer

    calls = {"n": 0}
    validate = importer.validate_events

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == number:
            raise OSError(28, "No space left on device")
        return validate(*args, **kwargs)

    monkeypatch.setattr(importer, "validate_events", failing)


def test_a_failed_first_import_leaves_no_folder_behind(tmp_path, monkeypatch):
    source = write_import_dir(tmp_path / "src", products=PRODUCTS, categories=CATEGORIES, visits=scattered_visits(400))
    _fail_on_batch(monkeypatch, 5)
    with pytest.raises(OSError, match="No space left"):
        run_import(tmp_path, source, block_bytes=TINY_BLOCK)
    assert not (tmp_path / "home").exists()


def test_a_failure_half_way_writes_nothing_and_leaves_no_staging(tmp_path, scattered_source, monkeypatch):
    _first, engine, store = run_import(tmp_path, scattered_source)
    before = {path: path.read_bytes() for path in store.landing_dir.rglob("*") if path.is_file()}
    rows_before = {name: len(relational.read_frame(engine, table)) for name, table in _tables().items()}

    broken = write_import_dir(
        tmp_path / "broken", products=PRODUCTS, categories=CATEGORIES, visits=scattered_visits(400)
    )
    store_again = EventStore(store.landing_dir, store.events_dir)
    _fail_on_batch(monkeypatch, 20)  # well into the visits, after batches were staged
    with pytest.raises(OSError, match="No space left"):
        import_directory(broken, engine, store_again, first_day=FIRST_DAY, block_bytes=TINY_BLOCK)

    assert {path: path.read_bytes() for path in store.landing_dir.rglob("*") if path.is_file()} == before
    assert not store.staging_dir("any").parent.exists()
    assert {name: len(relational.read_frame(engine, table)) for name, table in _tables().items()} == rows_before


def _tables():
    return {"imports": relational.imports, "import_rejects": relational.import_rejects}


PEAK_ARROW_MEMORY = """
import json, sys
from datetime import date
from pathlib import Path
import pyarrow as pa
from persona_assets.compute.duck import DuckDBLimits
from persona_assets.ingest.importer import import_directory
from persona_assets.stores import relational
from persona_assets.stores.events import EventStore
root = Path(sys.argv[1])
engine = relational.create_engine(f"sqlite:///{root / 'db.sqlite'}")
store = EventStore(root / "home" / "landing", root / "home" / "events")
report = import_directory(root / "src", engine, store, first_day=date(2015, 1, 1), block_bytes=64 << 10,
                          limits=DuckDBLimits(memory_limit="64MiB", threads=1))
print(json.dumps({"imported": report.files["visits.csv"].imported, "arrow_peak": pa.default_memory_pool().max_memory()}))
"""


def peak_arrow_memory_of_import(root: Path, visits: int) -> int:
    """Import ``visits`` visits in a fresh process (64 KiB blocks, DuckDB at 64 MiB); its peak of Arrow memory.

    Arrow holds the CSV blocks (pyarrow reads up to 32 blocks ahead) and, since pandas 3, the frames'
    strings: what reading a file whole fills.
    """
    source = write_import_dir(root / "src", products=PRODUCTS, categories=CATEGORIES)
    with (source / "visits.csv").open("w", encoding="utf-8") as handle:
        handle.write("ext_id,pid,pincode,visited_at\n")
        for number in range(visits):
            handle.write(f"user-{number:09d},P{number % 2 + 1},{560001 + number % 97},2024-03-{1 + number % 28:02d}\n")
    done = subprocess.run(
        [sys.executable, "-c", PEAK_ARROW_MEMORY, str(root)], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported"] == visits
    return int(result["arrow_peak"])


def test_memory_follows_the_block_size_not_the_file(tmp_path):
    """Three times the rows, about the same peak (reading the files whole would triple it)."""
    small = peak_arrow_memory_of_import(tmp_path / "small", 60_000)
    large = peak_arrow_memory_of_import(tmp_path / "large", 180_000)
    assert large < small * 1.3, (small, large)


def test_the_import_reports_seconds_per_phase_in_its_summary(tmp_path, scattered_source):
    # What many days cost (splitting and landing) must stay visible to whoever runs the import.
    report, engine, _store = run_import(tmp_path, scattered_source)
    assert list(report.seconds) == ["read and validate", "split into days", "land"]
    assert all(seconds >= 0 for seconds in report.seconds.values())
    summary = json.loads(relational.read_frame(engine, relational.imports)["summary"].iloc[0])
    assert summary["seconds"] == report.seconds
