"""Contract sections 2 and 3, end to end through the CLI (`persona import`, `materialize`, `export`).

Every expected value below is computed by hand from the contract on the tiny datasets built here
(the arithmetic is spelled out next to each user), never copied from the pipeline's output.
"""

from __future__ import annotations

import json
from fractions import Fraction as F

import pytest

from persona_assets.contract.pincodes import pincode_tier_table, tier_of
from persona_assets.contract.tokens import names_found, tokenize

pytestmark = pytest.mark.contract

EXPORT_KEYS = {"ext_id", "gender", "city", "ecomm", "brand_affinity", "generic_affinity", "category_affinity"}
MAPS = ("city", "ecomm", "brand_affinity", "generic_affinity", "category_affinity")

CATEGORIES = [
    ("1", "Fashion", ""),
    ("10", "Footwear", "1"),
    ("100", "Sneakers", "10"),
    ("2", "Home", ""),
    ("20", "Furniture", "2"),
    ("42", "Decor", "2"),
]

# pid, pos, title, brand, generic_name, gender, cat_l1, cat_l2, cat_l3, price
PRODUCTS = [
    ("P1", "flipkart", "Air", "Nike", "Shoes", "Men", "1", "10", "100", "100"),
    ("P2", " Amazon ", "Tee", "Puma", "T-Shirt", "women", "1", "-1", "", "20"),
    ("P3", " FlipKart ", "Sofa", " Home Centre ", "Sofa", "", "2", "20", "", "500"),
    ("P4", "flipkart", "Tee", "Home", "t shirt", "unisex", "2", "042", "999", "10"),  # 999: not a category
    ("P5", "", "Cushion", "Cosy", "Cushion", "F", "2", "", "", "5"),  # no pos: no ecomm key
    ("P6", "flipkart", "Stars", "***", "", "", "", "", "", "1"),  # a brand with no tokens
    ("P7", "flipkart", "t", "Café Noir", "Coffee", "", "", "", "", "1"),
    ("P8", "flipkart", "t", 'Levi\'s "501"', "Jeans", "", "", "", "", "1"),
    ("042", "flipkart", "W", "Alpha", "Widget", "", "", "", "", "1"),
    ("42", "flipkart", "G", "Beta", "Gadget", "", "", "", "", "1"),
    ("PX", "flipkart", "Bad", "Ghost", "Phantom", "men", "3.0", "", "", "1"),  # rejected: non-integer category
    ("P1", "flipkart", "Dup", "Shadow", "Shade", "women", "1", "", "", "1"),  # rejected: duplicate pid
]


def _visit(ext_id, pid, pincode="", day=1, hour=0):
    return (ext_id, pid, pincode, f"2024-03-{day:02d}T{hour:02d}:00:00")


TIER_CASES = [  # pincode, tier by hand from the India Post directory and city_tiers.csv
    ("560001", "Tier1"),  # KARNATAKA / BENGALURU URBAN: X class
    ("400601", "Tier2"),  # MAHARASHTRA / THANE: Y class (Bhiwandi)
    ("380010", "Tier3"),  # known to the directory, no district
    ("500032", "Tier1"),  # TELANGANA / HYDERABAD (X) and RANGA REDDY (unlisted): best tier
    ("190015", "Tier2"),  # JAMMU AND KASHMIR / BUDGAM (unlisted) and SRINAGAR (Y): best tier, not the first
    ("209101", "Tier3"),  # UTTAR PRADESH / KANPUR DEHAT: known, in no listed district
    ("605102", "Tier3"),  # primary state TAMIL NADU: (TN, PONDICHERRY) is not the Puducherry listing
]

VISITS = [
    # u-weights: two identical rows and one more visit of P1, one checkout of P2, one search.
    _visit("u-weights", "P1", "560001", 1, 10),
    _visit("u-weights", "P1", "560001", 1, 10),
    _visit("u-weights", "P1", "400601", 2, 10),
    # u-unknown: only an unknown pid (and a checkout of a rejected product, below).
    _visit("u-unknown", "NOPE", "560001", 1),
    # u-pincodes: malformed and unknown pincodes of Tier1 560001 add no city; a padded Tier2 one does.
    *[
        _visit("u-pincodes", "P1", pin, 2, h)
        for h, pin in enumerate(["560001.0", "+91560001", "5600 01", "999999", ""])
    ],
    _visit("u-pincodes", "P1", " 400601 ", 2, 9),
    # tier-<pincode>: one visit of a product without gender at that pincode.
    *[_visit(f"tier-{pin}", "P3", pin, 3) for pin, _tier in TIER_CASES],
    # gender labels
    *[_visit("g-exactly-0.8", "P1", "", 4, h) for h in range(4)],
    _visit("g-exactly-0.8", "P5", "", 4, 5),
    *[_visit("g-0.75", "P1", "", 4, h) for h in range(3)],
    _visit("g-0.75", "P5", "", 4, 5),
    *[_visit("g-women", "P5", "", 4, h) for h in range(4)],
    _visit("g-women", "P1", "", 4, 5),
    *[_visit("g-unisex-products", "P4", "", 4, h) for h in range(3)],
    _visit("g-unisex-products", "P1", "", 4, 5),
    *[_visit("g-no-gender", "P3", "", 4, h) for h in range(2)],
    *[_visit("g-checkout-counts-1", "P1", "", 4, h) for h in range(4)],
    # categories and ecomm
    _visit("u-category", "P4", "", 5),
    _visit("u-ecomm", "P3", "", 5),
    _visit("u-ecomm", "P5", "", 5, 1),
    # ids are strings (trimmed)
    _visit("01005", "042", "", 6),
    _visit(" 01005 ", " 042 ", "", 6, 1),
    _visit("1005", "42", "", 6),
    # non-ASCII id, a brand with quotes (export must stay valid JSON)
    _visit("zoë", "P8", "", 7),
    # a user who appears only in a rejected row
    ("u-only-rejected", "P1", "560001", "not-a-date"),
]

CHECKOUTS = [
    ("O1", "u-weights", "P2", "500032", "2024-03-03T10:00:00"),
    ("O2", "u-unknown", "PX", "560001", "2024-03-01T00:00:00"),
    ("O3", "g-checkout-counts-1", "P5", "", "2024-03-04T06:00:00"),
]

SEARCHES = [
    ("u-weights", "nike", "2024-03-04"),
    ("u-search-overlap", "Home Centre SOFA", "2024-03-05"),
    ("u-search-rules", "buy t-shirt", "2024-03-05T01:00:00"),
    ("u-search-rules", "nike NIKE nike", "2024-03-05T02:00:00"),
    ("u-search-rules", "puma", "2024-03-05T03:00:00"),
    ("u-search-rules", "tshirt", "2024-03-05T04:00:00"),  # one token: finds neither t-shirt nor t shirt
    ("u-search-rules", "sofas", "2024-03-05T05:00:00"),  # whole tokens only
    ("u-search-rules", "ghost shadow phantom shade", "2024-03-05T06:00:00"),  # names of rejected products
    ("u-search-rules", "homecentre", "2024-03-05T07:00:00"),
    ("u-search-contiguous", "centre home", "2024-03-05"),  # finds home, not home centre
    ("u-search-contiguous", "shoes_and socks", "2024-03-05T01:00:00"),  # _ separates tokens
    ("u-search-contiguous", "***", "2024-03-05T02:00:00"),  # a name without tokens is never found
    ("u-no-match", "hello world", "2024-03-05"),
    ("zoë", "CAFÉ noir!", "2024-03-07"),  # non-ASCII: Python's lower() and isalpha()
    ("zoë", "coffee²", "2024-03-07T01:00:00"),  # '²'.isdigit(): one token "coffee²", not "coffee"
    ("zoë", "coffee_2", "2024-03-07T02:00:00"),
]


def _map(raw: dict[str, int]) -> dict[str, F]:
    total = sum(raw.values())
    return {k: F(v, total) for k, v in raw.items()}


EMPTY = {"city": {}, "ecomm": {}, "brand_affinity": {}, "generic_affinity": {}, "category_affinity": {}}

EXPECTED: dict[str, dict] = {
    # visits P1 ×3 (two identical rows count again): nike/shoes/1/10/100/flipkart +1 each, men +1 each;
    # checkout P2: puma/t-shirt/1/amazon +40, women +1; search "nike": nike +5.
    # brand nike 3+5=8, puma 40; generic shoes 3, t-shirt 40; category 1: 3+40, 10: 3, 100: 3;
    # ecomm flipkart 3, amazon 40; city 560001×2 + 500032 → Tier1 3, 400601 → Tier2 1;
    # gender m=3, w=1 → 0.75 → unisex.
    "u-weights": {
        "gender": "unisex",
        "city": _map({"Tier1": 3, "Tier2": 1}),
        "ecomm": _map({"flipkart": 3, "amazon": 40}),
        "brand_affinity": _map({"nike": 8, "puma": 40}),
        "generic_affinity": _map({"shoes": 3, "t-shirt": 40}),
        "category_affinity": _map({"1": 43, "10": 3, "100": 3}),
    },
    # Unknown pid (and a rejected product's pid): nothing at all, not even city or gender.
    "u-unknown": {"gender": "unisex", **EMPTY},
    # P1 ×6, but only " 400601 " is a known pincode (trimmed): city {Tier2: 1}.
    "u-pincodes": {
        "gender": "men",
        "city": {"Tier2": F(1)},
        "ecomm": {"flipkart": F(1)},
        "brand_affinity": {"nike": F(1)},
        "generic_affinity": {"shoes": F(1)},
        "category_affinity": _map({"1": 1, "10": 1, "100": 1}),
    },
    # P4 once: categories 2 and 42 ("042"); 999 is not in categories.csv and is dropped.
    "u-category": {
        "gender": "unisex",
        "city": {},
        "ecomm": {"flipkart": F(1)},
        "brand_affinity": {"home": F(1)},
        "generic_affinity": {"t shirt": F(1)},
        "category_affinity": _map({"2": 1, "42": 1}),
    },
    # P3 (pos " FlipKart ") and P5 (empty pos): ecomm {flipkart: 1}, no "" key.
    "u-ecomm": {
        "gender": "women",
        "city": {},
        "ecomm": {"flipkart": F(1)},
        "brand_affinity": _map({"home centre": 1, "cosy": 1}),
        "generic_affinity": _map({"sofa": 1, "cushion": 1}),
        "category_affinity": _map({"2": 2, "20": 1}),
    },
    # "Home Centre SOFA": brands home and home centre (overlapping), generic sofa; +5 each.
    "u-search-overlap": {
        "gender": "unisex",
        **EMPTY,
        "brand_affinity": _map({"home": 5, "home centre": 5}),
        "generic_affinity": {"sofa": F(1)},
    },
    # "buy t-shirt" finds t-shirt and t shirt; nike mentioned three times in one query counts once;
    # "puma" once; nothing from tshirt, sofas, homecentre or the names of rejected products.
    "u-search-rules": {
        "gender": "unisex",
        **EMPTY,
        "brand_affinity": _map({"nike": 5, "puma": 5}),
        "generic_affinity": _map({"t-shirt": 5, "t shirt": 5}),
    },
    "u-search-contiguous": {
        "gender": "unisex",
        **EMPTY,
        "brand_affinity": {"home": F(1)},
        "generic_affinity": {"shoes": F(1)},
    },
    "u-no-match": {"gender": "unisex", **EMPTY},
    # Two rows (one padded) of product "042" for user "01005"; user "1005" visits product "42".
    "01005": {
        "gender": "unisex",
        **EMPTY,
        "ecomm": {"flipkart": F(1)},
        "brand_affinity": {"alpha": F(1)},
        "generic_affinity": {"widget": F(1)},
    },
    "1005": {
        "gender": "unisex",
        **EMPTY,
        "ecomm": {"flipkart": F(1)},
        "brand_affinity": {"beta": F(1)},
        "generic_affinity": {"gadget": F(1)},
    },
    # visit P8 (+1), searches "CAFÉ noir!" (café noir +5) and "coffee_2" (coffee +5).
    "zoë": {
        "gender": "unisex",
        **EMPTY,
        "ecomm": {"flipkart": F(1)},
        "brand_affinity": _map({"café noir": 5, 'levi\'s "501"': 1}),
        "generic_affinity": _map({"coffee": 5, "jeans": 1}),
    },
}
for _pin, _tier in TIER_CASES:
    # P3 once: home centre / sofa / 2 / 20 / flipkart, no gender; the city map holds the tier alone.
    EXPECTED[f"tier-{_pin}"] = {
        "gender": "unisex",
        "city": {_tier: F(1)},
        "ecomm": {"flipkart": F(1)},
        "brand_affinity": {"home centre": F(1)},
        "generic_affinity": {"sofa": F(1)},
        "category_affinity": _map({"2": 1, "20": 1}),
    }

EXPECTED_GENDER = {
    "g-exactly-0.8": "men",  # m=4, w=1: 4/5 = 0.8 ≥ 0.8
    "g-0.75": "unisex",  # m=3, w=1: 0.75
    "g-women": "women",  # m=1, w=4
    "g-unisex-products": "men",  # unisex products are neither m nor w: m=1, w=0
    "g-no-gender": "unisex",  # m + w = 0
    "g-checkout-counts-1": "men",  # a checkout adds 1 (not 40) to gender: m=4, w=1
    "u-no-match": "unisex",
}

ALL_USERS = set(EXPECTED) | set(EXPECTED_GENDER)


@pytest.fixture(scope="module")
def main_run(pipeline_factory):
    return pipeline_factory(
        "personas-main",
        products=PRODUCTS,
        categories=CATEGORIES,
        visits=VISITS,
        checkouts=CHECKOUTS,
        searches=SEARCHES,
    )


def _assert_map(actual: dict, expected: dict, label: str) -> None:
    assert set(actual) == set(expected), f"{label}: keys {sorted(actual)} != {sorted(expected)}"
    for key, value in expected.items():
        assert actual[key] == pytest.approx(float(value), abs=1e-9), f"{label}[{key!r}]"


# --------------------------------------------------------------------------- section 2 and 3 per user


def test_every_user_of_an_accepted_event_has_exactly_one_persona(main_run):
    assert set(main_run.personas) == ALL_USERS
    assert len(main_run.export_lines) == len(ALL_USERS)


def test_user_only_in_rejected_rows_has_no_persona(main_run):
    assert "u-only-rejected" not in main_run.personas
    assert "u-only-rejected" not in main_run.flags()


@pytest.mark.parametrize("ext_id", sorted(EXPECTED))
def test_persona_matches_the_hand_computed_one(main_run, ext_id):
    actual, expected = main_run.personas[ext_id], EXPECTED[ext_id]
    assert actual["gender"] == expected["gender"]
    for name in MAPS:
        _assert_map(actual[name], expected[name], f"{ext_id}.{name}")


@pytest.mark.parametrize("ext_id", sorted(EXPECTED_GENDER))
def test_gender_label_thresholds(main_run, ext_id):
    assert main_run.personas[ext_id]["gender"] == EXPECTED_GENDER[ext_id]


def test_unknown_pid_user_has_empty_maps_and_unisex(main_run):
    persona = main_run.personas["u-unknown"]
    assert persona["gender"] == "unisex"
    assert all(persona[name] == {} for name in MAPS)


def test_ids_are_strings_end_to_end(main_run):
    assert main_run.personas["01005"]["brand_affinity"] == {"alpha": 1.0}
    assert main_run.personas["1005"]["brand_affinity"] == {"beta": 1.0}
    assert " 01005 " not in main_run.personas


# --------------------------------------------------------------------------- tiers and tokens (pure rules)


@pytest.mark.parametrize(("pincode", "tier"), TIER_CASES)
def test_tier_of_known_pincodes(pincode, tier):
    assert tier_of(pincode) == tier
    table = pincode_tier_table()
    assert table.loc[table["pincode"] == pincode, "tier"].tolist() == [tier]


@pytest.mark.parametrize("pincode", ["560001.0", "+91560001", "5600 01", "999999", "", "56000", "5600011", "٥٦٠٠٠١"])
def test_tier_of_malformed_or_unknown_pincode_is_none(pincode):
    assert tier_of(pincode) is None


def test_token_rule():
    assert tokenize("Home_Centre-SOFA 2.0") == ["home", "centre", "sofa", "2", "0"]
    assert tokenize("---") == []
    found = names_found("home centre sofa", ["home", "home centre", "sofa", "centre home", "homecentre", "***"])
    assert found == {"home", "home centre", "sofa"}
    assert names_found("buy t-shirt", ["t-shirt", "t shirt", "tshirt"]) == {"t-shirt", "t shirt"}


# --------------------------------------------------------------------------- maps, vocabulary, legacy columns


def test_every_map_sums_to_one_and_has_no_zero_values(main_run):
    for ext_id, persona in main_run.personas.items():
        for name in MAPS:
            values = persona[name]
            assert all(isinstance(k, str) for k in values)
            assert all(v > 0 for v in values.values()), (ext_id, name)
            if values:
                assert sum(values.values()) == pytest.approx(1.0, abs=1e-9), (ext_id, name)


def test_the_export_holds_exactly_the_values_the_index_is_built_from(main_run):
    """The store keeps each map's weights and export divides them: bit for bit the rebuild's fractions."""
    from conftest import read_hand_off

    from persona_assets.stores.search_backend import PersonaHandOff

    handed_over = read_hand_off(PersonaHandOff.in_directory(main_run.build_dir())).to_dict("records")
    expected: dict[tuple[str, str], dict[str, float]] = {}
    for row in handed_over:
        column = row["dimension"] if row["dimension"] in ("city", "ecomm") else f"{row['dimension']}_affinity"
        expected.setdefault((row["ext_id"], column), {})[row["key"]] = row["value"]
    exported = {(e, name): m for e, p in main_run.personas.items() for name, m in p.items() if name in MAPS and m}
    assert exported == expected
    assert any(len(m) > 2 and len({*m.values()}) > 1 for m in exported.values())  # fractions, not just 1.0


def test_export_lines_have_exactly_the_contract_shape(main_run):
    for line in main_run.export_lines:
        record = json.loads(line)
        assert set(record) == EXPORT_KEYS
        assert isinstance(record["ext_id"], str)
        assert record["gender"] in {"men", "women", "unisex"}
        for name in MAPS:
            assert isinstance(record[name], dict)
            assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in record[name].values())
        assert set(record["city"]) <= {"Tier1", "Tier2", "Tier3"}
        # category ids as strings of the integer id
        assert all(k == str(int(k)) for k in record["category_affinity"])


def test_vocabulary_holds_every_interacted_name_and_no_zero_total(main_run):
    vocabulary = main_run.table("attribute_vocabulary")
    brands = set(vocabulary.loc[vocabulary["kind"] == "brand", "name"])
    generics = set(vocabulary.loc[vocabulary["kind"] != "brand", "name"])
    # Names with a raw affinity somewhere; "***" (never found, never interacted) and the rejected
    # products' names (ghost, shadow, phantom, shade) have a zero total and never enter it.
    assert brands == {"nike", "puma", "home centre", "home", "cosy", "alpha", "beta", "café noir", 'levi\'s "501"'}
    assert generics == {"shoes", "t-shirt", "sofa", "t shirt", "cushion", "widget", "gadget", "coffee", "jeans"}


def test_legacy_user_persona_columns_hold_the_raw_maps(main_run):
    from persona_assets.stores import relational

    legacy = relational.read_frame(main_run.engine, relational.user_persona).set_index("extId")
    row = legacy.loc["u-weights"]
    for column, expected in {
        "brandAffinity": {"nike": 8, "puma": 40},
        "genericAffinity": {"shoes": 3, "t-shirt": 40},
        "categoryAffinity": {"1": 43, "10": 3, "100": 3},
        "city": {"Tier1": 3, "Tier2": 1},
        "ecomm": {"flipkart": 3, "amazon": 40},
        "gender": {"men": 3, "women": 1},
    }.items():
        assert json.loads(row[column]) == pytest.approx(expected), column
    assert "nike" in json.loads(row["searchTerms"])
    # Raw maps are not filtered: the category 999 (not in the hierarchy) stays in the legacy column.
    assert json.loads(legacy.loc["u-category", "categoryAffinity"]) == pytest.approx({"2": 1, "42": 1, "999": 1})
    assert json.loads(legacy.loc["01005", "brandAffinity"]) == pytest.approx({"alpha": 2})
    assert json.loads(legacy.loc["u-pincodes", "city"]) == pytest.approx({"Tier2": 1})
    assert json.loads(legacy.loc["u-unknown", "brandAffinity"] or "{}") == {}


def test_has_changed_ends_at_zero_after_a_full_materialise(main_run):
    flags = main_run.flags()
    assert set(flags) == ALL_USERS
    assert set(flags.values()) == {0}


# --------------------------------------------------------------------------- vocabulary sizes and ties

# Brands "ab", "a-b", "A B" tie at total 2; generic "zz top" (2 + a search of 5 = 7) beats shirt/shoe (2).
VOCAB_PRODUCTS = [
    ("V1", "siteA", "t", "ab", "shoe", "", "1", "", "", "1"),
    ("V2", "siteB", "t", "a-b", "shirt", "", "1", "", "", "1"),
    ("V3", "siteA", "t", "A B", "zz top", "", "1", "", "", "1"),
    ("V4", "siteC", "t", "unused", "unused", "", "1", "", "", "1"),
]
VOCAB_VISITS = [
    _visit("w1", "V1", "560001", 1),
    _visit("w1", "V2", "400601", 1, 1),
    _visit("w1", "V3", "", 1, 2),
    _visit("w3", "V1", "", 2),
    _visit("w4", "V2", "", 2),
    _visit("w5", "V3", "", 2),
]
VOCAB_SEARCHES = [("w2", "ZZ Top", "2024-03-03")]
SMALL_VOCABULARY = {"ops": {"attribute_vocabulary": {"config": {"brand_size": 1, "generic_size": 1}}}}


@pytest.fixture(scope="module")
def vocab_run(pipeline_factory):
    from persona_assets.pipeline import dagster_instance, materialize_rebuild

    run = pipeline_factory(
        "personas-vocabulary",
        products=VOCAB_PRODUCTS,
        categories=[("1", "All", "")],
        visits=VOCAB_VISITS,
        searches=VOCAB_SEARCHES,
    )
    default = {"personas": run.personas, "vocabulary": run.table("attribute_vocabulary")}
    with run.env():
        materialize_rebuild(run.settings, dagster_instance(run.settings), lambda _m: None, run_config=SMALL_VOCABULARY)
    small = {"personas": run.export(), "vocabulary": run.table("attribute_vocabulary")}
    return run, default, small


def _ranked(vocabulary, kind):
    rows = vocabulary[vocabulary["kind"] == kind].sort_values("rank")
    return [
        (name, int(rank), float(total))
        for name, rank, total in zip(rows["name"], rows["rank"], rows["total"], strict=True)
    ]


def test_vocabulary_ranks_by_total_then_code_point_order(vocab_run):
    _run, default, _small = vocab_run
    # space (0x20) < '-' (0x2d) < letters; "unused" has a zero total and never enters.
    assert _ranked(default["vocabulary"], "brand") == [("a b", 1, 2.0), ("a-b", 2, 2.0), ("ab", 3, 2.0)]
    generic_kind = set(default["vocabulary"]["kind"]) - {"brand"}
    assert len(generic_kind) == 1
    assert _ranked(default["vocabulary"], generic_kind.pop()) == [
        ("zz top", 1, 7.0),
        ("shirt", 2, 2.0),
        ("shoe", 3, 2.0),
    ]


def test_default_vocabulary_keeps_every_name(vocab_run):
    _run, default, _small = vocab_run
    w1 = default["personas"]["w1"]
    _assert_map(w1["brand_affinity"], _map({"ab": 1, "a-b": 1, "a b": 1}), "w1.brand")
    _assert_map(w1["generic_affinity"], _map({"shoe": 1, "shirt": 1, "zz top": 1}), "w1.generic")


def test_configured_vocabulary_sizes(vocab_run):
    _run, _default, small = vocab_run
    assert _ranked(small["vocabulary"], "brand") == [("a b", 1, 2.0)]
    assert sorted(small["vocabulary"]["name"]) == ["a b", "zz top"]


@pytest.mark.parametrize(
    ("ext_id", "expected"),
    [
        # w1: V1 @Tier1, V2 @Tier2, V3 (no pincode): only "a b" and "zz top" stay, renormalised to 1;
        # city and ecomm are not vocabulary-filtered.
        (
            "w1",
            {
                "city": _map({"Tier1": 1, "Tier2": 1}),
                "ecomm": _map({"sitea": 2, "siteb": 1}),
                "brand_affinity": {"a b": F(1)},
                "generic_affinity": {"zz top": F(1)},
                "category_affinity": {"1": F(1)},
            },
        ),
        ("w2", {**EMPTY, "generic_affinity": {"zz top": F(1)}}),
        # w3, w4: every brand and generic outside the vocabulary: the maps stay empty.
        ("w3", {**EMPTY, "ecomm": {"sitea": F(1)}, "category_affinity": {"1": F(1)}}),
        ("w4", {**EMPTY, "ecomm": {"siteb": F(1)}, "category_affinity": {"1": F(1)}}),
        (
            "w5",
            {
                **EMPTY,
                "ecomm": {"sitea": F(1)},
                "brand_affinity": {"a b": F(1)},
                "generic_affinity": {"zz top": F(1)},
                "category_affinity": {"1": F(1)},
            },
        ),
    ],
)
def test_personas_keep_only_vocabulary_keys(vocab_run, ext_id, expected):
    _run, _default, small = vocab_run
    persona = small["personas"][ext_id]
    assert persona["gender"] == "unisex"
    for name in MAPS:
        _assert_map(persona[name], expected[name], f"{ext_id}.{name}")


def test_legacy_raw_maps_are_not_vocabulary_filtered(vocab_run):
    from persona_assets.stores import relational

    run, _default, _small = vocab_run
    legacy = relational.read_frame(run.engine, relational.user_persona).set_index("extId")
    assert json.loads(legacy.loc["w3", "brandAffinity"]) == pytest.approx({"ab": 1})
    assert json.loads(legacy.loc["w1", "brandAffinity"]) == pytest.approx({"ab": 1, "a-b": 1, "a b": 1})


def test_users_without_events_go_when_ids_differ_only_in_normalisation_or_case(tmp_path):
    """A full rewrite deletes the rows of users who have no events any more through a temporary table of the
    current ids; on MySQL it must compare ids byte for byte as the stored tables do. It once took the
    database's default collation, where café and cafe + U+0301, or Café and café, are one key: a 1M rebuild
    on a database made with the server's default (utf8mb4_unicode_ci) failed on a duplicate."""
    import duckdb
    import pyarrow as pa
    import sqlalchemy as sa
    from conftest import fresh_engine

    from persona_assets.compute.persona_store import _delete_users_without_rows
    from persona_assets.stores import relational

    twins = ["caf\u00e9", "cafe\u0301", "Caf\u00e9"]
    engine = fresh_engine(tmp_path)
    relational.create_schema(engine)
    with engine.begin() as conn:
        if conn.dialect.name == "mysql":  # a database made with the server's default, as users' often are
            name = conn.exec_driver_sql("SELECT DATABASE()").scalar_one()
            conn.exec_driver_sql(f"ALTER DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    with engine.begin() as conn:
        rows = [{"ext_id": ext_id, "products": "{}", "searches": "[]"} for ext_id in [*twins, "gone"]]
        conn.execute(sa.insert(relational.user_activity), rows)
    con = duckdb.connect()
    con.register("current", pa.table({"ext_id": twins}))
    con.execute("CREATE TABLE users AS SELECT ext_id FROM current")
    with engine.begin() as conn:
        _delete_users_without_rows(conn, relational.user_activity, "ext_id", con, len(twins))
    stored = relational.read_frame(engine, relational.user_activity)["ext_id"].tolist()
    assert sorted(stored) == sorted(twins)
