"""Tests of the synthetic dataset generator (``persona generate``) and its packaged catalog."""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from persona_assets.contract.pincodes import pincode_tier_table
from persona_assets.contract.tokens import names_found, tokenize
from persona_assets.synthetic import generate_dataset

CONTRACT_COLUMNS = {
    "products.csv": ["pid", "pos", "title", "brand", "generic_name", "gender", "cat_l1", "cat_l2", "cat_l3", "price"],
    "categories.csv": ["cat_id", "name", "parent_id"],
    "visits.csv": ["ext_id", "pid", "pincode", "visited_at"],
    "checkouts.csv": ["order_id", "ext_id", "pid", "pincode", "ordered_at"],
    "searches.csv": ["ext_id", "query", "searched_at"],
    "users.csv": ["ext_id", "name", "gender", "pincode"],
}
USERS = 5000
SEED = 20261031


def read(d: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(d / name, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    out = tmp_path_factory.mktemp("synthetic")
    steps: list[str] = []
    counts = generate_dataset(out, USERS, SEED, progress=steps.append)
    return out, counts, steps


@pytest.fixture(scope="module")
def frames(generated) -> dict[str, pd.DataFrame]:
    out, _, _ = generated
    return {name: read(out, name) for name in CONTRACT_COLUMNS}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    a = generate_dataset(tmp_path / "a", 300, 5)
    b = generate_dataset(tmp_path / "b", 300, 5)
    generate_dataset(tmp_path / "c", 300, 6)
    assert a == b
    for name in CONTRACT_COLUMNS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for name in ("visits.csv", "checkouts.csv", "searches.csv", "users.csv"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name
    # The real catalog does not depend on the seed.
    assert (tmp_path / "a" / "products.csv").read_bytes() == (tmp_path / "c" / "products.csv").read_bytes()


def test_files_have_exactly_the_contract_columns_and_counts(generated, frames):
    out, counts, _ = generated
    assert sorted(p.name for p in out.iterdir()) == sorted([*CONTRACT_COLUMNS, "shape.json"])
    for name, columns in CONTRACT_COLUMNS.items():
        header = (out / name).read_text(encoding="utf-8").split("\n", 1)[0]
        assert header == ",".join(columns), name
        assert list(frames[name].columns) == columns
        assert counts[name] == len(frames[name]), name
    assert counts["users.csv"] == USERS


def test_progress_reports_steps(generated):
    _, _, steps = generated
    assert len(steps) >= 3
    assert all(isinstance(s, str) and s for s in steps)


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, 0, 1)
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, 10, 1, days=0)


def test_catalog_is_a_valid_import_catalog(frames):
    products, categories = frames["products.csv"], frames["categories.csv"]
    assert products["pid"].is_unique and (products["pid"] != "").all()
    assert set(products["pos"]) == {"flipkart", "amazon"}
    assert set(products["gender"]) <= {"", "men", "women", "unisex"}
    ids = set(categories["cat_id"])
    assert all(re.fullmatch(r"[0-9]+", i) for i in ids) and categories["cat_id"].is_unique
    assert set(categories["parent_id"]) - {""} <= ids
    parent = dict(zip(categories["cat_id"], categories["parent_id"], strict=True))
    for level in (1, 2, 3):
        col = products[f"cat_l{level}"]
        assert set(col) - {""} <= ids
    # Levels are consistent with the hierarchy: cat_l2's parent is cat_l1, cat_l3's parent is cat_l2.
    has3 = products[products["cat_l3"] != ""]
    assert (has3["cat_l3"].map(parent) == has3["cat_l2"]).all()
    has2 = products[products["cat_l2"] != ""]
    assert (has2["cat_l2"].map(parent) == has2["cat_l1"]).all()
    assert (products.loc[products["cat_l1"] != "", "cat_l1"].map(parent) == "").all()
    prices = pd.to_numeric(products["price"].replace("", None))
    assert prices.dropna().gt(0).all()


def test_every_event_pid_is_in_the_catalog(frames):
    pids = set(frames["products.csv"]["pid"])
    assert set(frames["visits.csv"]["pid"]) <= pids
    assert set(frames["checkouts.csv"]["pid"]) <= pids


def test_users_and_ext_ids(frames):
    users = frames["users.csv"]
    assert users["ext_id"].is_unique
    assert users["ext_id"].str.fullmatch(r"U[0-9]{7}").all()
    assert users["ext_id"].iloc[0] == "U0000001"
    assert set(users["gender"]) == {"men", "women"}
    assert users["name"].str.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+").all()
    assert users["name"].nunique() > 1000
    known = set(users["ext_id"])
    for name in ("visits.csv", "checkouts.csv", "searches.csv"):
        assert set(frames[name]["ext_id"]) <= known, name
    assert set(frames["visits.csv"]["ext_id"]) == known  # every user visits something


def test_home_pincodes_are_real_and_span_tiers_and_districts(frames):
    users = frames["users.csv"]
    table = pincode_tier_table()
    merged = users.merge(table, on="pincode", how="left")
    assert merged["tier"].notna().all(), "every home pincode is in the India Post directory"
    assert set(merged["tier"]) == {"Tier1", "Tier2", "Tier3"}
    assert merged["districts"].nunique() >= 30
    assert merged["state"].nunique() >= 20
    # Tier1/Tier2 pincodes are weighted more heavily than their share of the directory.
    user_share = merged["tier"].value_counts(normalize=True)
    pin_share = table["tier"].value_counts(normalize=True)
    assert user_share["Tier1"] > 3 * pin_share["Tier1"]
    assert user_share["Tier2"] > pin_share["Tier2"]
    assert user_share["Tier3"] < pin_share["Tier3"]
    # Most visits come from the user's home pincode; all event pincodes are real.
    visits = frames["visits.csv"].merge(users[["ext_id", "pincode"]], on="ext_id", suffixes=("", "_home"))
    assert 0.85 < (visits["pincode"] == visits["pincode_home"]).mean() < 1.0
    known = set(table["pincode"])
    assert set(visits["pincode"]) <= known
    assert set(frames["checkouts.csv"]["pincode"]) <= known


def test_repeat_visit_share(frames):
    visits = frames["visits.csv"]
    repeats = visits.duplicated(["ext_id", "pid"], keep="first")
    assert 0.15 <= repeats.mean() <= 0.25


def test_activity_volume_and_popularity_skew(frames):
    events = sum(len(frames[n]) for n in ("visits.csv", "checkouts.csv", "searches.csv"))
    assert 25 <= events / USERS <= 35
    per_product = frames["visits.csv"]["pid"].value_counts()
    # Zipf-like: the top 1% of visited products take far more than 1% of the visits.
    top = per_product.iloc[: max(1, len(per_product) // 100)].sum() / per_product.sum()
    assert top > 0.08


def test_users_stick_to_a_few_interests(frames):
    products = frames["products.csv"].set_index("pid")
    visits = frames["visits.csv"]
    pairs = visits.assign(generic=visits["pid"].map(products["generic_name"])).value_counts(["ext_id", "generic"])
    per_user = visits.groupby("ext_id").size()
    top3 = pairs.groupby(level="ext_id").head(3).groupby(level="ext_id").sum() / per_user
    # Brand interests spread over several generic names, so this is a loose bound.
    assert top3[per_user >= 20].median() > 0.5


def test_gendered_products_match_the_user(frames):
    products = frames["products.csv"].set_index("pid")
    visits = frames["visits.csv"].merge(frames["users.csv"][["ext_id", "gender"]], on="ext_id")
    visits["product_gender"] = visits["pid"].map(products["gender"])
    gendered = visits[visits["product_gender"].isin(["men", "women"])]
    for g in ("men", "women"):
        own = gendered.loc[gendered["gender"] == g, "product_gender"]
        assert (own == g).mean() > 0.9, g


def test_checkouts_are_orders_of_visited_products(frames):
    visits, checkouts = frames["visits.csv"], frames["checkouts.csv"]
    assert 0.03 <= len(checkouts) / len(visits) <= 0.07
    assert checkouts["order_id"].str.fullmatch(r"O[0-9]{8}").all()
    per_order = checkouts.groupby("order_id")
    assert (per_order["ext_id"].nunique() == 1).all()
    assert (per_order["ordered_at"].nunique() == 1).all()
    assert (per_order["pincode"].nunique() == 1).all()
    assert not checkouts.duplicated(["order_id", "pid"]).any()
    assert (per_order.size() > 1).any(), "some orders hold several items"
    first_visit = visits.groupby(["ext_id", "pid"])["visited_at"].min()
    key = pd.MultiIndex.from_frame(checkouts[["ext_id", "pid"]])
    assert key.isin(first_visit.index).all(), "a purchased product was visited by the buyer"
    seen = first_visit.reindex(key).map(dt.datetime.fromisoformat)
    assert (checkouts["ordered_at"].map(dt.datetime.fromisoformat).to_numpy() >= seen.to_numpy()).all()


def test_search_queries_have_3_to_5_words_and_name_a_product_the_user_saw(frames):
    products = frames["products.csv"].set_index("pid")
    searches = frames["searches.csv"]
    assert len(searches) > USERS  # a few searches per user
    words = searches["query"].str.split().str.len()
    assert words.between(3, 5).all(), searches.loc[~words.between(3, 5), "query"].head().tolist()

    seen = pd.concat([frames["visits.csv"][["ext_id", "pid"]], frames["checkouts.csv"][["ext_id", "pid"]]])
    seen = seen.drop_duplicates()
    seen["brand"] = seen["pid"].map(products["brand"]).str.strip().str.lower()
    seen["generic"] = seen["pid"].map(products["generic_name"]).str.strip().str.lower()
    names = seen.melt(id_vars="ext_id", value_vars=["brand", "generic"], value_name="name")
    user_names = names[names["name"] != ""].groupby("ext_id")["name"].agg(set)
    sample = searches[searches["ext_id"] <= "U0001500"]
    assert len(sample) > 1000
    brands = set(seen["brand"]) - {""}
    generics = set(seen["generic"]) - {""}
    with_brand = with_generic = 0
    for ext_id, query in zip(sample["ext_id"], sample["query"], strict=True):
        assert tokenize(query), query
        found = names_found(query, user_names.get(ext_id, set()))
        assert found, (ext_id, query)
        with_brand += bool(found & brands)
        with_generic += bool(found & generics)

    # Queries mention brands as well as generic names, and some use each template family.
    assert 0.2 < with_brand / len(sample) < 0.95
    assert 0.2 < with_generic / len(sample) < 0.95
    assert sample["query"].str.contains(r" under [0-9]+$").any()
    assert sample["query"].str.contains(r" for (?:men|women)\b").any()


@pytest.mark.parametrize(("end_date", "days"), [(dt.date(2026, 10, 31), 30), (dt.date(2024, 3, 1), 3)])
def test_timestamps_parse_and_fall_in_the_window(tmp_path, generated, end_date, days):
    if (end_date, days) == (dt.date(2026, 10, 31), 30):
        out = generated[0]  # the defaults
    else:
        out = tmp_path / "w"
        generate_dataset(out, 400, 3, end_date=end_date, days=days)
    lo = dt.datetime.combine(end_date - dt.timedelta(days=days - 1), dt.time(), dt.UTC)
    hi = dt.datetime.combine(end_date + dt.timedelta(days=1), dt.time(), dt.UTC)
    for name, col in (("visits.csv", "visited_at"), ("checkouts.csv", "ordered_at"), ("searches.csv", "searched_at")):
        values = read(out, name)[col]
        assert values.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00").all(), name
        parsed = values.map(dt.datetime.fromisoformat)
        assert (parsed.map(lambda t: t.utcoffset()) == dt.timedelta(0)).all()
        assert parsed.min() >= lo, name
        assert parsed.max() < hi, name
    if days == 30:
        visited_days = read(out, "visits.csv")["visited_at"].str[:10].nunique()
        assert visited_days == 30


def test_packaged_catalog_matches_the_build_script(tmp_path):
    """The shipped products/categories are what ``scripts/build_synthetic_catalog.py`` builds."""
    data = Path("/work/shared/data")
    script_dir = Path(__file__).resolve().parents[1] / "scripts"
    if not (data / "flipkart").is_dir() or not (script_dir / "build_synthetic_catalog.py").is_file():
        pytest.skip("real source catalogs or the build script are not available here")
    sys.path.insert(0, str(script_dir))
    try:
        import build_synthetic_catalog as build
    finally:
        sys.path.remove(str(script_dir))
    build.build(data, tmp_path)
    shipped = Path(__file__).resolve().parents[1] / "persona_assets" / "synthetic" / "data"
    for name in ("products.csv.gz", "categories.csv.gz"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
