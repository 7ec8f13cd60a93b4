"""Shapes of ``persona generate`` beyond the default: ``--days``, ``--wide``, adversarial ids, ``shape.json``.

The default shape's own properties (and its byte-for-byte stability) are in ``test_generator.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from conftest import Pipeline

from persona_assets.compute import affinities
from persona_assets.contract.pincodes import pincode_tier_table
from persona_assets.contract.tokens import token_key, tokenize
from persona_assets.ingest import validation
from persona_assets.ingest.csv_files import read_whole
from persona_assets.synthetic.adversarial import ID_PATTERNS, PANDAS_NA_WORDS, invalid_reason
from persona_assets.synthetic.generator import DEFAULT_SHAPE, WIDE, generate_dataset

EVENT_FILES = {
    "visits.csv": validation.OPTIONAL_FILES["visits.csv"],
    "checkouts.csv": validation.OPTIONAL_FILES["checkouts.csv"],
    "searches.csv": validation.OPTIONAL_FILES["searches.csv"],
}
ORDINARY_ID = r"U[0-9]{7}"


def read_as_imported(directory: Path, name: str) -> pd.DataFrame:
    """A generated file read the way ``persona import`` reads it (every cell text, nothing dropped)."""
    frame, malformed = read_whole(directory / name, EVENT_FILES.get(name, ("ext_id", "name", "gender", "pincode")))
    assert malformed == [], malformed[:3]
    return frame


def raw_affinity_rows_per_user(directory: Path) -> float:
    """Rows of the rebuild's ``raw_affinity`` table per user, computed by the rebuild's own SQL."""
    products = validation.validate_products(read_whole(directory / "products.csv", validation.PRODUCT_COLUMNS)[0])
    categories = validation.validate_categories(
        read_whole(directory / "categories.csv", validation.CATEGORY_COLUMNS)[0]
    )
    con = duckdb.connect()
    affinities.register_reference(con, products.accepted, categories.accepted, pincode_tier_table())
    for name in EVENT_FILES:
        kind = name.removesuffix(".csv")
        checked = validation.validate_events(kind, read_as_imported(directory, name), dt.date(2015, 1, 1), dt.date.max)
        assert checked.rejected.empty, checked.rejected.head()
        con.register(f"{kind}_frame", checked.accepted)
        con.execute(f"CREATE TABLE {kind} AS SELECT * FROM {kind}_frame")
    affinities.compute_raw_affinities(con)
    users, rows = con.execute("SELECT COUNT(DISTINCT ext_id), COUNT(*) FROM raw_affinity").fetchone()
    return rows / users


def all_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_a_shape_is_deterministic_block_by_block_and_seeded(tmp_path: Path) -> None:
    shape = dataclasses.replace(WIDE, days=60, block_users=400, adversarial_share=0.05)  # three blocks
    generate_dataset(tmp_path / "a", 1000, 7, shape=shape)
    generate_dataset(tmp_path / "b", 1000, 7, shape=shape)
    generate_dataset(tmp_path / "c", 1000, 8, shape=shape)
    a, b, c = (all_bytes(tmp_path / name) for name in "abc")
    assert a == b
    for name in ("users.csv", "visits.csv", "checkouts.csv", "searches.csv"):
        assert a[name] != c[name], name
    described = json.loads(a["shape.json"])
    assert described["preset"] == "custom" and described["seed"] == 7 and described["adversarial_users"] == 50
    visitors = read_as_imported(tmp_path / "a", "visits.csv")["ext_id"]
    assert visitors.nunique() == 1000, "every user of every block visits something"


def test_days_flag_spans_the_window_and_shape_json_says_so(tmp_path: Path) -> None:
    out = tmp_path / "data"
    printed = Pipeline(tmp_path).check("generate", out, "--users", "600", "--days", "45", "--seed", "3")
    described = json.loads(printed)
    assert described == json.loads((out / "shape.json").read_text(encoding="utf-8"))
    first, last = dt.date(2026, 9, 17), dt.date(2026, 10, 31)  # 45 days ending with the default end date
    assert (described["days"], described["first_day"], described["last_day"]) == (45, str(first), str(last))
    assert described["preset"] == "custom" and described["users"] == 600
    for name, column in (
        ("visits.csv", "visited_at"),
        ("checkouts.csv", "ordered_at"),
        ("searches.csv", "searched_at"),
    ):
        frame = read_as_imported(out, name)
        assert described["rows"][name] == len(frame), name
        days = frame[column].str[:10]
        assert days.min() >= str(first) and days.max() <= str(last), name
    assert read_as_imported(out, "visits.csv")["visited_at"].str[:10].nunique() == 45


def test_wide_at_small_scale_has_the_acceptance_shape(tmp_path: Path) -> None:
    users = 3000
    generate_dataset(tmp_path / "wide", users, 42, shape=WIDE)
    generate_dataset(tmp_path / "default", users, 42, days=730)
    described = json.loads((tmp_path / "wide" / "shape.json").read_text(encoding="utf-8"))
    assert described["preset"] == "wide" and described["days"] == 730
    assert described["adversarial_users"] == round(users * WIDE.adversarial_share)
    per_user = described["per_user"]
    assert per_user["searches"] == pytest.approx(4.4, abs=0.25)
    assert 27.5 <= per_user["events"] <= 31.5
    wide_rows = raw_affinity_rows_per_user(tmp_path / "wide")
    default_rows = raw_affinity_rows_per_user(tmp_path / "default")
    assert 65 <= wide_rows <= 82, wide_rows
    assert wide_rows > 1.7 * default_rows, (wide_rows, default_rows)
    visited_days = read_as_imported(tmp_path / "wide", "visits.csv")["visited_at"].str[:10].nunique()
    assert visited_days > 700


def test_adversarial_ids_are_valid_distinct_and_cover_every_pattern(tmp_path: Path) -> None:
    shape = dataclasses.replace(DEFAULT_SHAPE, days=5, adversarial_share=0.5)
    generate_dataset(tmp_path, 400, 11, shape=shape)
    ids = read_as_imported(tmp_path, "users.csv")["ext_id"]
    adversarial = ids[~ids.str.fullmatch(ORDINARY_ID)]
    assert len(adversarial) == 200 >= 4 * len(ID_PATTERNS)
    assert ids.is_unique
    assert all(invalid_reason(ext_id) is None for ext_id in ids)
    visits = read_as_imported(tmp_path, "visits.csv")
    checked = validation.validate_events("visits", visits, dt.date(2015, 1, 1), dt.date.max)
    assert checked.rejected.empty and set(checked.accepted["ext_id"]) == set(ids)
    # What a naive reader or store would get wrong is all there.
    assert any(len(ext_id) == validation.MAX_ID_LENGTH for ext_id in adversarial)
    assert any(len(ext_id.encode()) > 3 * validation.MAX_ID_LENGTH // 2 for ext_id in adversarial)
    for needle in (",", '"', "'", "\\", ";", "%", "_", "\n", "\t", "\u0301", "\u2028", "🛒", "प्रि", "தமிழ்"):
        assert adversarial.str.contains(needle, regex=False).any(), needle
    assert set(PANDAS_NA_WORDS[:2]) <= set(adversarial)
    lowered = adversarial[adversarial.str.fullmatch(ORDINARY_ID.lower())]
    assert len(lowered) >= 4 and lowered.str.upper().isin(ids).all(), "case twins of ordinary ids exist"
    # Quoted only where needed: ordinary rows of visits.csv carry no quotes.
    lines = (tmp_path / "visits.csv").read_text(encoding="utf-8").split("\n")
    assert all('"' not in line for line in lines if line.startswith("U"))


def test_adversarial_search_texts_still_name_what_was_searched(tmp_path: Path) -> None:
    shape = dataclasses.replace(DEFAULT_SHAPE, days=5, adversarial_share=0.5)
    generate_dataset(tmp_path, 400, 11, shape=shape)
    searches = read_as_imported(tmp_path, "searches.csv")
    odd = searches[~searches["ext_id"].str.fullmatch(ORDINARY_ID)]
    ordinary = searches[searches["ext_id"].str.fullmatch(ORDINARY_ID)]
    assert ordinary["query"].str.fullmatch(r"[\x20-\x7e]+").all()
    assert odd["query"].str.contains(r"[^\x20-\x7e]").mean() > 0.2
    assert (odd["query"] != odd["query"].str.strip()).any(), "some texts keep spaces at both ends"
    products = pd.read_csv(tmp_path / "products.csv", dtype=str, keep_default_na=False)
    name_keys = {token_key(name) for name in pd.concat([products["brand"], products["generic_name"]])} - {""}

    def names_a_product(query: str) -> bool:  # some token span of the query is a catalog name (contract's rule)
        tokens = tokenize(query)
        spans = (" ".join(tokens[i:j]) for i in range(len(tokens)) for j in range(i + 1, len(tokens) + 1))
        return any(span in name_keys for span in spans)

    assert all(names_a_product(query) for query in odd["query"])


@pytest.mark.contract
def test_adversarial_ids_and_texts_round_trip_through_import_materialize_export(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shape = dataclasses.replace(DEFAULT_SHAPE, days=3, adversarial_share=0.5)
    generate_dataset(data, 300, 5, shape=shape)
    generated = read_as_imported(data, "users.csv")["ext_id"]
    pipeline = Pipeline(tmp_path / "pipeline")
    pipeline.check("import", data, "--land-only")  # materialize publishes the days too: one Dagster pass, not two
    pipeline.materialize()
    target = tmp_path / "export.jsonl"
    pipeline.check("export", target)
    # JSON Lines are separated by "\n" only: U+2028 inside an id is not a line break.
    lines = target.read_text(encoding="utf-8").split("\n")
    exported = [json.loads(line)["ext_id"] for line in lines if line]
    assert sorted(exported) == sorted(generated)
    assert len(set(exported)) == len(exported) == 300
    for twin in [ext_id for ext_id in exported if ext_id.startswith("u")]:
        assert twin.upper() in exported and twin.upper() != twin
    assert {"caf\u00e9-0", "cafe\u0301-0", "Shopper-0-ÄÖÜ", "shopper-0-äöü"} <= set(exported)

    searches = read_as_imported(data, "searches.csv")
    wanted = set(zip(searches["ext_id"], searches["query"], strict=True))
    activity = pipeline.table("user_activity")
    stored = {
        (ext_id, query)
        for ext_id, texts in zip(activity["ext_id"], activity["searches"], strict=True)
        for query in json.loads(texts)
    }
    assert stored == wanted


@pytest.mark.parametrize("draw", ["uniform", "popular"])
def test_planted_groups_share_a_taste_and_say_who_joined(tmp_path: Path, draw: str) -> None:
    """Members of a planted group visit its interests far more than other shoppers of its gender do; the
    side file and shape.json say who joined which group and what its interests are."""
    shape = dataclasses.replace(
        DEFAULT_SHAPE, planted_groups=3, planted_share=0.3, planted_focus=0.5, planted_draw=draw
    )
    generate_dataset(tmp_path, 3000, 9, shape=shape)
    described = json.loads((tmp_path / "shape.json").read_text(encoding="utf-8"))["planted_groups"]
    joined = pd.read_csv(tmp_path / "planted_groups.csv", dtype=str, keep_default_na=False)
    assert [g["members"] for g in described] == [int((joined["group"] == str(g)).sum()) for g in range(3)]
    assert [g["gender"] for g in described] == ["men", "women", "men"]
    assert 0.25 * 3000 < len(joined) < 0.35 * 3000
    users = pd.read_csv(tmp_path / "users.csv", dtype=str, keep_default_na=False).set_index("ext_id")
    assert (
        users.loc[joined["ext_id"], "gender"].to_numpy() == [described[int(g)]["gender"] for g in joined["group"]]
    ).all()
    products = pd.read_csv(tmp_path / "products.csv", dtype=str, keep_default_na=False)
    visits = read_as_imported(tmp_path, "visits.csv").merge(products, on="pid")
    group_of = dict(zip(joined["ext_id"], joined["group"].astype(int), strict=True))
    for group in described:
        interests = set(group["interests"])
        brand, generic = (visits[column].str.strip().str.lower() for column in ("brand", "generic_name"))
        in_taste = brand.isin(interests) | generic.isin(interests)
        members = visits["ext_id"].map(group_of).eq(group["group"])
        others = ~visits["ext_id"].isin(group_of) & visits["ext_id"].map(users["gender"]).eq(group["gender"])
        assert in_taste[members].mean() > 0.25, group
        assert in_taste[members].mean() > 3 * in_taste[others].mean(), group


def test_without_planted_groups_nothing_is_planted(tmp_path: Path) -> None:
    generate_dataset(tmp_path, 200, 9, shape=DEFAULT_SHAPE)
    assert not (tmp_path / "planted_groups.csv").exists()
    assert "planted_groups" not in json.loads((tmp_path / "shape.json").read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match="planted draw"):
        generate_dataset(tmp_path, 10, 9, shape=dataclasses.replace(DEFAULT_SHAPE, planted_draw="random"))
