"""Contract sections 1 and 6 ("Inputs"): reading, validating and landing an import directory.

Expected values are written by hand from the contract; the datasets are tiny and built here.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from conftest import CONTRACT_COLUMNS, Pipeline, fresh_engine, write_import_dir

from persona_assets.ingest.importer import ImportReport, import_directory
from persona_assets.ingest.validation import (
    ImportFileError,
    check_columns,
    parse_timestamps,
    validate_categories,
    validate_events,
    validate_products,
)
from persona_assets.stores import relational
from persona_assets.stores.events import EventStore

pytestmark = pytest.mark.contract

FIRST_DAY = date(2015, 1, 1)
LAST_DAY = date(2030, 12, 31)

CATEGORIES = [
    {"cat_id": "1", "name": "Fashion", "parent_id": ""},
    {"cat_id": "10", "name": "Footwear", "parent_id": "1"},
]
PRODUCTS = [
    {
        "pid": "P1",
        "pos": "flipkart",
        "title": "Air",
        "brand": "Nike",
        "generic_name": "Shoes",
        "gender": "men",
        "cat_l1": "1",
        "cat_l2": "10",
        "cat_l3": "",
        "price": "100",
    },
    {
        "pid": "P2",
        "pos": "amazon",
        "title": "Tee",
        "brand": "Puma",
        "generic_name": "T-Shirt",
        "gender": "women",
        "cat_l1": "1",
        "cat_l2": "",
        "cat_l3": "",
        "price": "20",
    },
]
VISITS = [{"ext_id": "u1", "pid": "P1", "pincode": "560001", "visited_at": "2024-03-05T10:00:00"}]
CHECKOUTS = [{"order_id": "o1", "ext_id": "u2", "pid": "P2", "pincode": "400601", "ordered_at": "2024-03-06"}]
SEARCHES = [{"ext_id": "u3", "query": "nike shoes", "searched_at": "2024-03-07T08:00:00+05:30"}]


# --------------------------------------------------------------------------- helpers


def strings(columns, rows) -> pd.DataFrame:
    """A DataFrame of strings, as the importer hands files to the validators; dict rows, missing = ''."""
    return pd.DataFrame([{c: str(r.get(c, "")) for c in columns} for r in rows], columns=list(columns), dtype=object)


def products_frame(*rows) -> pd.DataFrame:
    base = {
        "pid": "P",
        "pos": "",
        "title": "",
        "brand": "",
        "generic_name": "",
        "gender": "",
        "cat_l1": "",
        "cat_l2": "",
        "cat_l3": "",
        "price": "",
    }
    return strings(CONTRACT_COLUMNS["products.csv"], [{**base, **r} for r in rows])


def categories_frame(*rows) -> pd.DataFrame:
    return strings(CONTRACT_COLUMNS["categories.csv"], rows)


def visits_frame(*rows) -> pd.DataFrame:
    base = {"ext_id": "u", "pid": "P1", "pincode": "560001", "visited_at": "2024-03-05"}
    return strings(CONTRACT_COLUMNS["visits.csv"], [{**base, **r} for r in rows])


def utc(*args) -> pd.Timestamp:
    return pd.Timestamp(datetime(*args, tzinfo=UTC))


def db_row_counts(engine) -> dict[str, int]:
    """Row count of every table that exists in the database."""
    inspector = sa.inspect(engine)
    counts = {}
    with engine.connect() as conn:
        for name in inspector.get_table_names():
            table = sa.table(name)
            counts[name] = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    return counts


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def direct_import(tmp_path: Path, source: Path):
    """Run ``import_directory`` into a fresh SQLite file and event store under ``tmp_path``."""
    engine = fresh_engine(tmp_path)
    store = EventStore(tmp_path / "home" / "landing", tmp_path / "home" / "events")
    report = import_directory(source, engine, store, first_day=FIRST_DAY)
    return report, engine, store


def assert_nothing_written(tmp_path: Path, engine) -> None:
    assert files_under(tmp_path / "home") == []
    assert {name: n for name, n in db_row_counts(engine).items() if n} == {}


# --------------------------------------------------------------------------- files and columns


@pytest.mark.parametrize("missing", ["products.csv", "categories.csv"])
def test_missing_required_file_stops_naming_it_and_writes_nothing(tmp_path, missing):
    files = {
        "products": PRODUCTS,
        "categories": CATEGORIES,
        "visits": VISITS,
        "checkouts": CHECKOUTS,
        "searches": SEARCHES,
    }
    files[missing.removesuffix(".csv")] = None
    source = write_import_dir(tmp_path / "src", **files)
    engine = fresh_engine(tmp_path)
    store = EventStore(tmp_path / "home" / "landing", tmp_path / "home" / "events")
    with pytest.raises(ImportFileError) as info:
        import_directory(source, engine, store, first_day=FIRST_DAY)
    assert missing in str(info.value)
    assert_nothing_written(tmp_path, engine)


@pytest.mark.parametrize(
    ("file_name", "column"),
    [
        ("products.csv", "pid"),
        ("products.csv", "price"),
        ("categories.csv", "parent_id"),
        ("visits.csv", "visited_at"),
        ("checkouts.csv", "order_id"),
        ("checkouts.csv", "pincode"),
        ("searches.csv", "query"),
    ],
)
def test_missing_required_column_stops_naming_file_and_column_and_writes_nothing(tmp_path, file_name, column):
    # Every other file is valid (the event files come first alphabetically or not): nothing may land.
    header = [c for c in CONTRACT_COLUMNS[file_name] if c != column]
    source = write_import_dir(
        tmp_path / "src",
        products=PRODUCTS,
        categories=CATEGORIES,
        visits=VISITS,
        checkouts=CHECKOUTS,
        searches=SEARCHES,
        headers={file_name: header},
    )
    engine = fresh_engine(tmp_path)
    store = EventStore(tmp_path / "home" / "landing", tmp_path / "home" / "events")
    with pytest.raises(ImportFileError) as info:
        import_directory(source, engine, store, first_day=FIRST_DAY)
    assert file_name in str(info.value)
    assert f"'{column}'" in str(info.value) or f" {column} " in f" {info.value} "
    assert_nothing_written(tmp_path, engine)


@pytest.mark.parametrize("empty", ["products.csv", "searches.csv"])
def test_file_without_header_row_stops_naming_it_and_writes_nothing(tmp_path, empty):
    source = write_import_dir(
        tmp_path / "src", products=PRODUCTS, categories=CATEGORIES, visits=VISITS, searches=SEARCHES
    )
    (source / empty).write_text("", encoding="utf-8")
    engine = fresh_engine(tmp_path)
    store = EventStore(tmp_path / "home" / "landing", tmp_path / "home" / "events")
    with pytest.raises(ImportFileError) as info:
        import_directory(source, engine, store, first_day=FIRST_DAY)
    assert empty in str(info.value)
    assert_nothing_written(tmp_path, engine)


def test_check_columns_names_the_missing_column_and_trims_headers():
    check_columns("visits.csv", [" ext_id", "pid ", " pincode ", "visited_at", "extra"], CONTRACT_COLUMNS["visits.csv"])
    with pytest.raises(ImportFileError, match=r"visits\.csv.*pincode"):
        check_columns("visits.csv", ["ext_id", "pid", "pin_code", "visited_at"], CONTRACT_COLUMNS["visits.csv"])


def test_cli_import_with_missing_column_exits_non_zero_naming_it_and_writes_nothing(persona_home, tmp_path):
    source = write_import_dir(
        tmp_path / "src",
        products=PRODUCTS,
        categories=CATEGORIES,
        visits=VISITS,
        checkouts=CHECKOUTS,
        searches=SEARCHES,
        headers={"checkouts.csv": ["order_id", "ext_id", "pid", "ordered_at"]},
    )
    pipeline = Pipeline(tmp_path)
    pipeline.home, pipeline.dagster_home = persona_home, tmp_path / "dagster-home"
    code, _out, err = pipeline.cli("import", source)
    assert code != 0
    assert "checkouts.csv" in err and "pincode" in err
    # Only the (empty) database may exist under PERSONA_HOME: no landing, no events.
    assert [p for p in files_under(persona_home) if not p.name.startswith("persona.db")] == []
    assert {name: n for name, n in db_row_counts(pipeline.engine).items() if n} == {}


def test_event_files_are_optional(tmp_path):
    source = write_import_dir(tmp_path / "src", products=PRODUCTS, categories=CATEGORIES)
    report, _engine, store = direct_import(tmp_path, source)
    assert set(report.files) == {"products.csv", "categories.csv"}
    assert report.files["products.csv"].imported == 2
    assert store.landed_days("visits") == []


def test_extra_columns_are_ignored_and_header_names_trimmed(tmp_path):
    product_header = ["extra", *[f" {c} " for c in CONTRACT_COLUMNS["products.csv"]], "another extra"]
    visit_header = ["device", " ext_id", "pid ", "  pincode", "visited_at  "]
    source = write_import_dir(
        tmp_path / "src",
        products=[{**p, "extra": "x,y", "another extra": "zzz"} for p in PRODUCTS],
        categories=CATEGORIES,
        visits=[{**VISITS[0], "device": "android"}],
        headers={"products.csv": product_header, "visits.csv": visit_header},
    )
    report, _engine, store = direct_import(tmp_path, source)
    assert report.rejected == 0
    assert report.files["products.csv"].imported == 2
    assert report.files["visits.csv"].imported == 1
    landed = pd.read_parquet(tmp_path / "home" / "landing" / "catalog" / "products.parquet")
    assert sorted(landed["pid"]) == ["P1", "P2"]
    assert "extra" not in landed.columns and "another extra" not in landed.columns
    assert landed.set_index("pid").loc["P1", "brand"] == "nike"
    visits = pq.read_table(store.landing_path("visits", "2024-03-05")).to_pandas()
    assert visits[["ext_id", "pid", "pincode"]].to_dict("records") == [
        {"ext_id": "u1", "pid": "P1", "pincode": "560001"}
    ]
    assert "device" not in visits.columns


# --------------------------------------------------------------------------- bad rows: rejected, counted, kept

BAD_PRODUCTS = [
    PRODUCTS[0],
    PRODUCTS[1],
    {**PRODUCTS[0], "pid": "", "title": "no-pid-marker"},  # empty pid
    {**PRODUCTS[0], "pid": "P3", "cat_l1": "3.0"},  # non-integer category
    {**PRODUCTS[0], "pid": "P4", "cat_l2": "abc"},  # non-integer category
    {**PRODUCTS[0], "pid": "P1", "title": "dup-marker"},  # duplicate pid
    {**PRODUCTS[0], "pid": "", "cat_l1": "x", "cat_l3": "1.5", "title": "many-problems-marker"},  # once
]
BAD_CATEGORIES = [*CATEGORIES, {"cat_id": "abc", "name": "bad-cat-marker", "parent_id": ""}]
BAD_VISITS = [
    {"ext_id": "good1", "pid": "P1", "pincode": "560001", "visited_at": "2024-03-05T10:00:00"},
    {"ext_id": "good2", "pid": "NOT-IN-CATALOG", "pincode": "5600 01", "visited_at": "2024-03-05T11:00:00"},
    {"ext_id": "", "pid": "P1", "pincode": "560001", "visited_at": "2024-03-05"},  # empty ext_id
    {"ext_id": "only-rejected-1", "pid": "", "pincode": "560001", "visited_at": "2024-03-05"},  # empty pid
    {"ext_id": "only-rejected-2", "pid": "P1", "pincode": "560001", "visited_at": "yesterday"},  # bad ts
    {"ext_id": "only-rejected-3", "pid": "P1", "pincode": "560001", "visited_at": ""},  # empty ts
    {"ext_id": "", "pid": "", "pincode": "many-problems", "visited_at": "05/03/2024"},  # once
]
BAD_CHECKOUTS = [
    {"order_id": "o1", "ext_id": "good3", "pid": "P2", "pincode": "+91400601", "ordered_at": "2024-03-06"},
    {"order_id": "bad-order", "ext_id": "good1", "pid": "P2", "pincode": "400601", "ordered_at": "2024-02-30"},
]
BAD_SEARCHES = [
    {"ext_id": "good4", "query": "nike", "searched_at": "2024-03-07"},
    {"ext_id": "", "query": "no-user-marker", "searched_at": "2024-03-07"},
    {"ext_id": "only-rejected-4", "query": "puma", "searched_at": "2024-03-07 25:00"},
]
GOOD_USERS = {"good1", "good2", "good3", "good4"}
ONLY_REJECTED_USERS = {"only-rejected-1", "only-rejected-2", "only-rejected-3", "only-rejected-4"}


def _bad_dir(path: Path) -> Path:
    return write_import_dir(
        path,
        products=BAD_PRODUCTS,
        categories=BAD_CATEGORIES,
        visits=BAD_VISITS,
        checkouts=BAD_CHECKOUTS,
        searches=BAD_SEARCHES,
    )


@pytest.fixture(scope="module")
def bad_import(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-import")
    report, engine, store = direct_import(tmp, _bad_dir(tmp / "src"))
    return report, engine, store


def _reason_kind(reason: str, columns: tuple[str, ...]) -> str:
    """The problem a reason text names: 'duplicate', or the (longest) column it mentions."""
    text = reason.lower()
    if "duplicate" in text:
        return "duplicate"
    mentioned = [c for c in columns if c in text]
    assert mentioned, f"reason {reason!r} names none of the columns {columns}"
    return max(mentioned, key=len)


def test_bad_rows_are_rejected_and_counted_every_other_row_imported(bad_import):
    report: ImportReport = bad_import[0]
    expected = {
        "products.csv": (7, 2, 5),
        "categories.csv": (3, 2, 1),
        "visits.csv": (7, 2, 5),
        "checkouts.csv": (2, 1, 1),
        "searches.csv": (3, 1, 2),
    }
    for name, (read, imported, rejected) in expected.items():
        file = report.files[name]
        assert (file.rows_read, file.imported, sum(file.rejected_by_reason.values())) == (read, imported, rejected), (
            name
        )
    assert report.rejected == 14


def test_rejects_are_counted_by_reason(bad_import):
    report: ImportReport = bad_import[0]

    def by_kind(name: str) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for reason, count in report.files[name].rejected_by_reason.items():
            kind = _reason_kind(reason, CONTRACT_COLUMNS[name])
            kinds[kind] = kinds.get(kind, 0) + count
        return kinds

    # The row with several problems counts once, under one of its problems.
    products = by_kind("products.csv")
    assert sum(products.values()) == 5
    assert products["duplicate"] == 1
    assert products.get("cat_l2") == 1
    assert products.get("pid", 0) + products.get("cat_l1", 0) + products.get("cat_l3", 0) == 3
    assert products.get("pid", 0) >= 1 and products.get("cat_l1", 0) >= 1
    visits = by_kind("visits.csv")
    assert sum(visits.values()) == 5
    assert visits.get("visited_at", 0) >= 2 and visits.get("ext_id", 0) >= 1 and visits.get("pid", 0) >= 1
    assert by_kind("checkouts.csv") == {"ordered_at": 1}
    assert by_kind("categories.csv") == {"cat_id": 1}
    assert by_kind("searches.csv") == {"ext_id": 1, "searched_at": 1}


def test_rejected_rows_are_kept_in_import_rejects_with_reason_and_raw(bad_import):
    report, engine, _store = bad_import
    rejects = relational.read_frame(engine, relational.import_rejects)
    assert (rejects["import_id"] == report.import_id).all()
    assert rejects.groupby("file").size().to_dict() == {
        "products.csv": 5,
        "categories.csv": 1,
        "visits.csv": 5,
        "checkouts.csv": 1,
        "searches.csv": 2,
    }
    assert (rejects["reason"].str.strip() != "").all()
    raw = dict(zip(rejects["file"] + "|" + rejects["raw"], rejects["reason"], strict=True))
    markers = {
        "products.csv": ["no-pid-marker", "dup-marker", "many-problems-marker", "3.0", "abc"],
        "categories.csv": ["bad-cat-marker"],
        "visits.csv": ["only-rejected-1", "only-rejected-2", "only-rejected-3", "many-problems", "yesterday"],
        "checkouts.csv": ["bad-order"],
        "searches.csv": ["no-user-marker", "only-rejected-4"],
    }
    for file_name, needles in markers.items():
        for needle in needles:
            hits = [key for key in raw if key.startswith(file_name + "|") and needle in key]
            assert hits, f"no reject of {file_name} keeps {needle!r} in its raw text"
    # The row with several problems is there once, and its reason names the right kind of problem.
    many = rejects[rejects["raw"].str.contains("many-problems-marker")]
    assert len(many) == 1
    assert _reason_kind(many["reason"].iloc[0], CONTRACT_COLUMNS["products.csv"]) in {"pid", "cat_l1", "cat_l3"}
    dup = rejects[rejects["raw"].str.contains("dup-marker")]
    assert len(dup) == 1 and "duplicate" in dup["reason"].iloc[0].lower()


def test_accepted_rows_are_landed(bad_import):
    _report, _engine, store = bad_import
    landed = pd.read_parquet(store.landing_dir / "catalog" / "products.parquet")
    # The first P1 row wins; the later duplicate (title dup-marker) is rejected.
    assert landed.sort_values("pid")[["pid", "title"]].to_dict("records") == [
        {"pid": "P1", "title": "Air"},
        {"pid": "P2", "title": "Tee"},
    ]
    visits = pq.read_table(store.landing_path("visits", "2024-03-05")).to_pandas()
    assert sorted(visits["ext_id"]) == ["good1", "good2"]


# --------------------------------------------------------------------------- products


def test_duplicate_pid_first_accepted_row_wins():
    result = validate_products(
        products_frame(
            {"pid": "P1", "brand": "rejected-first", "cat_l1": "3.0"},  # rejected: does not claim P1
            {"pid": "P1", "brand": "winner"},
            {"pid": " P1 ", "brand": "later-1"},  # trimmed: the same pid
            {"pid": "P1", "brand": "later-2"},
            {"pid": "042", "brand": "zero-four-two"},
            {"pid": "42", "brand": "forty-two"},  # ids are strings: not a duplicate
        )
    )
    assert result.accepted[["pid", "brand"]].to_dict("records") == [
        {"pid": "P1", "brand": "winner"},
        {"pid": "042", "brand": "zero-four-two"},
        {"pid": "42", "brand": "forty-two"},
    ]
    assert len(result.rejected) == 3
    reasons = list(result.rejected.sort_values("row_number")["reason"])
    assert "duplicate" not in reasons[0].lower()
    assert all("duplicate" in r.lower() for r in reasons[1:])


def test_row_with_several_problems_is_rejected_once():
    result = validate_products(
        products_frame({"pid": "", "cat_l1": "abc", "cat_l2": "1.5", "cat_l3": "x"}, {"pid": "ok"})
    )
    assert list(result.accepted["pid"]) == ["ok"]
    assert len(result.rejected) == 1
    events = validate_events(
        "visits", visits_frame({"ext_id": "", "pid": "", "visited_at": "nope"}, {"ext_id": "ok"}), FIRST_DAY, LAST_DAY
    )
    assert list(events.accepted["ext_id"]) == ["ok"]
    assert len(events.rejected) == 1


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("1", 1),
        ("042", 42),
        (" 7 ", 7),
        ("-1", None),
        ("", None),
        (" -1 ", None),
        ("-5", -5),
        ("123456789012", 123456789012),
    ],
)
def test_product_category_ids(cell, expected):
    for column in ("cat_l1", "cat_l2", "cat_l3"):
        result = validate_products(products_frame({"pid": "P", column: cell}))
        assert len(result.rejected) == 0, (column, cell)
        value = result.accepted[column].iloc[0]
        assert (None if pd.isna(value) else int(value)) == expected, (column, cell)


@pytest.mark.parametrize("cell", ["3.0", "abc", "1e3", "+3", "4 2", "--1", "١"])
def test_non_integer_product_category_id_rejects_the_row(cell):
    for column in ("cat_l1", "cat_l2", "cat_l3"):
        result = validate_products(products_frame({"pid": "P", column: cell}, {"pid": "Q"}))
        assert list(result.accepted["pid"]) == ["Q"], (column, cell)
        assert len(result.rejected) == 1
        assert column in result.rejected["reason"].iloc[0]


def test_category_file_ids():
    result = validate_categories(
        categories_frame(
            {"cat_id": "1", "name": "Top", "parent_id": ""},
            {"cat_id": "042", "name": "Leading zero", "parent_id": " 1 "},
            {"cat_id": "3.0", "name": "float", "parent_id": ""},
            {"cat_id": "abc", "name": "text", "parent_id": ""},
            {"cat_id": "5", "name": "bad parent", "parent_id": "x"},
            {"cat_id": "", "name": "no id", "parent_id": ""},
        )
    )
    accepted = result.accepted
    assert [int(v) for v in accepted["cat_id"]] == [1, 42]
    assert pd.isna(accepted["parent_id"].iloc[0])  # empty parent_id: a level-1 category
    assert int(accepted["parent_id"].iloc[1]) == 1
    assert len(result.rejected) == 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("men", "men"),
        ("Men", "men"),
        (" MALE ", "men"),
        ("male", "men"),
        ("m", "men"),
        ("M", "men"),
        ("women", "women"),
        ("Women", "women"),
        ("female", "women"),
        ("FEMALE", "women"),
        ("f", "women"),
        (" F ", "women"),
        ("unisex", "unisex"),
        ("UniSex", "unisex"),
        ("", None),
        ("boys", None),
        ("mens", None),
        ("w", None),
        ("girl", None),
        ("u", None),
    ],
)
def test_product_gender_synonyms_and_unrecognised_means_none(value, expected):
    result = validate_products(products_frame({"pid": "P", "gender": value}))
    assert len(result.rejected) == 0  # an unrecognised gender keeps the row
    gender = result.accepted["gender"].iloc[0]
    assert (None if gender is None or pd.isna(gender) else gender) == expected


def test_pos_brand_generic_are_trimmed_and_lower_cased_inner_spaces_kept():
    result = validate_products(
        products_frame(
            {"pid": " P1 ", "pos": " FlipKart ", "brand": "  Home  Centre ", "generic_name": " T-Shirt  Pack "},
            {"pid": "P2", "pos": "", "brand": "", "generic_name": ""},
        )
    )
    rows = result.accepted[["pid", "pos", "brand", "generic_name"]].to_dict("records")
    assert rows == [
        {"pid": "P1", "pos": "flipkart", "brand": "home  centre", "generic_name": "t-shirt  pack"},
        {"pid": "P2", "pos": "", "brand": "", "generic_name": ""},
    ]


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-05T10:15:00", utc(2024, 3, 5, 10, 15)),  # no offset = UTC
        ("2024-03-05 10:15", utc(2024, 3, 5, 10, 15)),
        ("2024-03-05T10:15:00Z", utc(2024, 3, 5, 10, 15)),
        ("2024-03-05T10:15:00+05:30", utc(2024, 3, 5, 4, 45)),  # offset converted
        ("2024-03-05T02:00:00-03:00", utc(2024, 3, 5, 5, 0)),
        ("2024-03-05T01:00:00+05:30", utc(2024, 3, 4, 19, 30)),  # crosses the day
        ("2024-03-05", utc(2024, 3, 5)),  # a date alone = midnight UTC
        ("2024-03-05T10:15:00.123456", utc(2024, 3, 5, 10, 15, 0, 123456)),
        ("20240305T101500", utc(2024, 3, 5, 10, 15)),  # what fromisoformat (3.11) reads
        ("2024-03-05T10:15:00+0530", utc(2024, 3, 5, 4, 45)),
        ("2024-W10-2", utc(2024, 3, 5)),
        ("2024-03-05T10", utc(2024, 3, 5, 10)),
    ],
)
def test_timestamps_parse_as_fromisoformat_in_utc(text, expected):
    parsed = parse_timestamps(pd.Series([text]))
    assert parsed.iloc[0] == expected
    result = validate_events("visits", visits_frame({"visited_at": text}), FIRST_DAY, LAST_DAY)
    assert len(result.rejected) == 0
    assert result.accepted["ts"].iloc[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "05/03/2024",
        "2024-13-01",
        "2024-02-30",
        "2024-03-05T24:00:00",
        "2024-3-5",
        "2024-03-05T10:15:00 GMT",
        "1709633700",
    ],
)
def test_empty_or_non_iso_timestamp_rejects_the_row(text):
    assert pd.isna(parse_timestamps(pd.Series([text])).iloc[0])
    result = validate_events(
        "visits", visits_frame({"ext_id": "bad", "visited_at": text}, {"ext_id": "ok"}), FIRST_DAY, LAST_DAY
    )
    assert list(result.accepted["ext_id"]) == ["ok"]
    assert len(result.rejected) == 1
    assert "visited_at" in result.rejected["reason"].iloc[0]


def _fromisoformat_oracle(text: str):
    """The contract's definition, literally: fromisoformat, no offset = UTC, else converted to UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return pd.Timestamp(moment)


def test_timestamp_parsing_agrees_with_fromisoformat_on_a_mixed_batch():
    texts = [
        "2024-03-05",
        "2024-03-05T10:15:00",
        "2024-03-05 10:15:00+05:30",
        "2024-03-05T10:15:00.5Z",
        "2024-03-05T10:15:00,5",
        "2024-03-05t10:15",
        "20240305",
        " 2024-03-05",
        "2024-03-05 ",
        "2024-03-05T10:15:00 +05:30",
        "2024-03-05T10:15:00+05:30:15",
        "2024-03-05T10:15:00.1234567",
        "2024-065",
        "2024-03-05T23:59:59.999999-11:00",
        "2024-02-29",
        "2023-02-29",
        "",
        "nope",
    ]
    parsed = parse_timestamps(pd.Series(texts))
    for text, value in zip(texts, parsed, strict=True):
        expected = _fromisoformat_oracle(text)
        if expected is None:
            assert pd.isna(value), text
        else:
            assert value == expected, text


# --------------------------------------------------------------------------- events


def test_ids_are_trimmed_strings():
    result = validate_events(
        "visits",
        visits_frame(
            {"ext_id": "01005", "pid": "042"},
            {"ext_id": " 1005 ", "pid": " 42 "},
        ),
        FIRST_DAY,
        LAST_DAY,
    )
    assert result.accepted[["ext_id", "pid"]].to_dict("records") == [
        {"ext_id": "01005", "pid": "042"},
        {"ext_id": "1005", "pid": "42"},
    ]


def test_event_with_unknown_pid_or_malformed_pincode_is_kept():
    pincodes = ["560001", " 560001 ", "560001.0", "+91560001", "5600 01", "999999", "", "abc"]
    frame = visits_frame(*[{"ext_id": f"u{i}", "pid": "NOT-IN-CATALOG", "pincode": p} for i, p in enumerate(pincodes)])
    result = validate_events("visits", frame, FIRST_DAY, LAST_DAY)
    assert len(result.rejected) == 0
    assert list(result.accepted["pincode"]) == [p.strip() for p in pincodes]
    assert set(result.accepted["pid"]) == {"NOT-IN-CATALOG"}


def test_search_query_is_kept_exactly_as_imported():
    frame = strings(
        CONTRACT_COLUMNS["searches.csv"], [{"ext_id": "u", "query": "  Nike  SHOES ", "searched_at": "2024-03-05"}]
    )
    result = validate_events("searches", frame, FIRST_DAY, LAST_DAY)
    assert list(result.accepted["query"]) == ["  Nike  SHOES "]


def test_identical_event_rows_are_all_kept(tmp_path):
    row = {"ext_id": "u1", "pid": "P1", "pincode": "560001", "visited_at": "2024-03-05T10:00:00"}
    source = write_import_dir(tmp_path / "src", products=PRODUCTS, categories=CATEGORIES, visits=[row, row, row])
    report, _engine, store = direct_import(tmp_path, source)
    assert report.files["visits.csv"].imported == 3
    assert pq.read_table(store.landing_path("visits", "2024-03-05")).num_rows == 3


# --------------------------------------------------------------------------- through the CLI: hasChanged = 1


@pytest.fixture(scope="module")
def cli_import(tmp_path_factory):
    pipeline = Pipeline(tmp_path_factory.mktemp("cli-import"))
    output = pipeline.import_dir(_bad_dir(pipeline.root / "src"))
    return pipeline, output


def test_cli_import_sets_has_changed_for_the_users_it_touches(cli_import):
    pipeline, _output = cli_import
    flags = pipeline.flags()
    assert flags == {user: 1 for user in GOOD_USERS}
    assert not ONLY_REJECTED_USERS & set(flags)


def test_cli_import_keeps_rejects_readable_by_an_operator(cli_import):
    pipeline, output = cli_import
    rejects = pipeline.table("import_rejects")
    assert len(rejects) == 14
    assert "import_rejects" in output  # the summary tells the operator where to look
    code, out, _err = pipeline.cli("rejects")
    assert code == 0
    printed = [json.loads(line) for line in out.splitlines()]
    assert len(printed) == 14
    assert any("yesterday" in r["raw"] for r in printed)
    code, out, err = pipeline.cli("rejects", "no-such-import")
    assert (code, out) == (0, "")  # stdout stays JSON Lines; the operator is told why it is empty
    assert "no rejected rows in import no-such-import" in err


# --------------------------------------------------------------------------- stored lengths


def test_ids_and_names_longer_than_the_stores_keep_are_rejected_rows_on_every_backend(tmp_path):
    """MySQL keys hold 191 characters and names 255: longer ones are rejected rows with a reason, on
    SQLite too, so both backends store the same rows (and nothing crashes half-way)."""
    long_pid, long_ext_id, long_brand = "P" * 192, "u" * 192, "b" * 256
    source = write_import_dir(
        tmp_path / "import",
        products=[*PRODUCTS, {**PRODUCTS[0], "pid": long_pid}, {**PRODUCTS[0], "pid": "P9", "brand": long_brand}],
        categories=CATEGORIES,
        visits=[*VISITS, {**VISITS[0], "ext_id": long_ext_id}, {**VISITS[0], "pid": "Q" * 192}],
    )
    report, engine, _ = direct_import(tmp_path, source)
    assert report.files["products.csv"].rejected_by_reason == {
        "pid longer than 191 characters": 1,
        "brand longer than 255 characters": 1,
    }
    assert report.files["visits.csv"].rejected_by_reason == {
        "ext_id longer than 191 characters": 1,
        "pid longer than 191 characters": 1,
    }
    assert report.files["visits.csv"].imported == len(VISITS)
    rejects = relational.read_frame(engine, relational.import_rejects)
    assert set(rejects["reason"]) == {
        "pid longer than 191 characters",
        "brand longer than 255 characters",
        "ext_id longer than 191 characters",
    }


def test_names_up_to_the_limit_are_kept_exactly(tmp_path):
    pid, brand = "P" * 191, "B" * 255
    source = write_import_dir(
        tmp_path / "import",
        products=[{**PRODUCTS[0], "pid": pid, "brand": brand}],
        categories=CATEGORIES,
        visits=[{**VISITS[0], "ext_id": "u" * 191, "pid": pid}],
    )
    report, _, store = direct_import(tmp_path, source)
    assert report.rejected == 0
    assert report.files["visits.csv"].imported == 1
    landed = pd.read_parquet(store.landing_dir / "catalog" / "products.parquet")
    assert (landed["pid"].tolist(), landed["brand"].tolist()) == ([pid], [brand.lower()])
