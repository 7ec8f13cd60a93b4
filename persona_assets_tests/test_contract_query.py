"""Contract sections 4 and 6 ("Query"): the segment query through ``fetch_personas`` and ``persona query``.

One small dataset is imported and materialised through the CLI; the normalised personas are
computed by hand below (and checked against the export), and every expected score, ordering and
list is derived from them with the contract's formula, not from the service's output.
(Request parsing and the embedded index have their own tests.)
"""

from __future__ import annotations

import json
from fractions import Fraction as F

import pytest
from conftest import Pipeline

from persona_assets.query.request import InvalidRequest

pytestmark = pytest.mark.contract

W_CITY, W_BRAND, W_GENERIC, W_CATEGORY = F("0.15"), F("0.35"), F("0.20"), F("0.30")

CATEGORIES = [
    ("1", "Fashion", ""),
    ("10", "Footwear", "1"),
    ("100", "Sneakers", "10"),
    ("2", "Home", ""),
    ("20", "Furniture", "2"),
]
# pid, pos, title, brand, generic_name, gender, cat_l1, cat_l2, cat_l3, price
PRODUCTS = [
    ("Q1", "flipkart", "t", "Nike", "Shoes", "men", "1", "10", "100", "1"),
    ("Q2", "flipkart", "t", "Puma", "Shoes", "men", "1", "10", "", "1"),
    ("Q3", "amazon", "t", "Nike", "T-Shirt", "women", "1", "20", "", "1"),  # L2 20 although 20's parent is 2
    ("Q4", "amazon", "t", "Ikea", "Sofa", "", "2", "20", "", "1"),
]


def _at(day: str, hour: int = 0, minute: int = 0) -> str:
    return f"2024-{day}T{hour:02d}:{minute:02d}:00"


VISITS = [
    *[("a", "Q1", "560001", _at("03-01", h)) for h in range(3)],
    ("a", "Q2", "400601", _at("03-01", 3)),
    ("b", "Q3", "400601", _at("03-01")),
    ("b", "Q3", "400601", _at("03-02")),
    ("c", "Q4", "560001", _at("03-01")),
    ("c", "Q1", "560001", _at("03-01", 1)),
    ("c", "Q3", "560001", _at("03-01", 2)),
    ("d", "Q1", "560001", _at("03-01")),
    ("D", "Q1", "560001", _at("03-01")),  # same data as d: a tie, broken by ext_id ("D" < "d")
    ("e", "QZ", "560001", _at("03-01")),  # unknown pid only
    # p: the product lists (checkouts below happen before every visit)
    ("p", "Q3", "560001", _at("02-01")),
    ("p", "Q4", "560001", _at("02-02")),
    ("p", "Q1", "560001", _at("02-03")),
    ("p", "QZ", "560001", _at("02-04")),
    ("p", "Q3", "560001", _at("02-05")),  # Q3's latest visit: it comes first
    # many: 55 distinct unknown pids, one a minute
    *[("many", f"X{i:02d}", "", _at("01-01", 0, i)) for i in range(55)],
]
CHECKOUTS = [
    ("o1", "p", "Q4", "560001", _at("01-20")),
    ("o2", "p", "Q3", "560001", _at("01-25")),
]
SEARCHES = [
    ("s", "Nike shoes", _at("02-01")),
    ("s", "cheap t-shirt", _at("02-02")),
    ("s", "nike shoes", _at("02-04")),  # a different text from "Nike shoes": kept as imported
    ("s", "  ikea sofa ", _at("02-05")),
    ("s", "t_shirt", _at("02-06")),
    ("s", "Nike shoes", _at("02-08")),  # latest search of that text
    ("s", "nikeshoes", "2024-02-09T20:00:00"),  # one token: contains neither nike nor shoes
    ("s", "NIKE", "2024-02-10T01:00:00+05:30"),  # = 2024-02-09T19:30Z: older than "nikeshoes"
    *[("many", f"term {i:02d}", _at("01-01", 1, i)) for i in range(25)],
]


def _maps(city=None, brand=None, generic=None, category=None, ecomm=None, gender="unisex") -> dict:
    return {
        "gender": gender,
        "city": city or {},
        "brand": brand or {},
        "generic": generic or {},
        "category": category or {},
        "ecomm": ecomm or {},
    }


NIKE_SHOES_T1 = _maps(
    city={"Tier1": F(1)},
    brand={"nike": F(1)},
    generic={"shoes": F(1)},
    category={"1": F(1, 3), "10": F(1, 3), "100": F(1, 3)},
    ecomm={"flipkart": F(1)},
    gender="men",
)

# The normalised personas, by hand (section 2 weights, section 3 normalisation).
PERSONAS = {
    # Q1 ×3 @Tier1, Q2 @Tier2: nike 3, puma 1; shoes 4; cat 1: 4, 10: 4, 100: 3; m = 4.
    "a": _maps(
        city={"Tier1": F(3, 4), "Tier2": F(1, 4)},
        brand={"nike": F(3, 4), "puma": F(1, 4)},
        generic={"shoes": F(1)},
        category={"1": F(4, 11), "10": F(4, 11), "100": F(3, 11)},
        ecomm={"flipkart": F(1)},
        gender="men",
    ),
    # Q3 ×2 @Tier2.
    "b": _maps(
        city={"Tier2": F(1)},
        brand={"nike": F(1)},
        generic={"t-shirt": F(1)},
        category={"1": F(1, 2), "20": F(1, 2)},
        ecomm={"amazon": F(1)},
        gender="women",
    ),
    # Q4, Q1, Q3 @Tier1: nike 2, ikea 1; sofa, shoes, t-shirt 1 each; cat 1: 2, 2: 1, 10: 1, 20: 2, 100: 1;
    # m = 1, w = 1 → unisex.
    "c": _maps(
        city={"Tier1": F(1)},
        brand={"nike": F(2, 3), "ikea": F(1, 3)},
        generic={"sofa": F(1, 3), "shoes": F(1, 3), "t-shirt": F(1, 3)},
        category={"1": F(2, 7), "2": F(1, 7), "10": F(1, 7), "20": F(2, 7), "100": F(1, 7)},
        ecomm={"amazon": F(2, 3), "flipkart": F(1, 3)},
    ),
    "d": NIKE_SHOES_T1,
    "D": NIKE_SHOES_T1,
    "e": _maps(),
    # visits Q3 ×2, Q4, Q1 (+1 each), checkouts Q4, Q3 (+40 each), all @Tier1:
    # nike 2+1+40 = 43, ikea 1+40 = 41; t-shirt 42, sofa 41, shoes 1;
    # cat 1: 42+1 = 43, 20: 42+41 = 83, 2: 41, 10: 1, 100: 1 (sum 169); amazon 83, flipkart 1;
    # w = 3 (2 visits + 1 checkout), m = 1 → 0.75 → unisex.
    "p": _maps(
        city={"Tier1": F(1)},
        brand={"nike": F(43, 84), "ikea": F(41, 84)},
        generic={"t-shirt": F(42, 84), "sofa": F(41, 84), "shoes": F(1, 84)},
        category={"1": F(43, 169), "20": F(83, 169), "2": F(41, 169), "10": F(1, 169), "100": F(1, 169)},
        ecomm={"amazon": F(83, 84), "flipkart": F(1, 84)},
    ),
    # searches only: nike 5×4 = 20, ikea 5; shoes 5×3 = 15, t-shirt 5×2 = 10, sofa 5.
    "s": _maps(
        brand={"nike": F(20, 25), "ikea": F(5, 25)},
        generic={"shoes": F(15, 30), "t-shirt": F(10, 30), "sofa": F(5, 30)},
    ),
    "many": _maps(),
}
GENDER_FILTER = {"men": "men", "male": "men", "m": "men", "women": "women", "female": "women", "f": "women"}


def expected_ranking(request: dict) -> list[tuple[str, F, dict[str, F]]]:
    """Every persona passing the gender filter with its contract score, ordered score desc, ext_id asc."""
    gender = request.get("gender")
    wanted = GENDER_FILTER.get(str(gender).strip().lower()) if gender is not None else None
    tier = request.get("cityTier")
    if tier is not None:
        tier = "Tier" + str(tier)[-1]
    brand = request["brand"].strip().lower() if request.get("brand") is not None else None
    generic = request["genericName"].strip().lower() if request.get("genericName") is not None else None
    category = None
    for level in (1, 2, 3):
        value = request.get(f"level{level}Cat")
        if value is not None and int(value) != -1:
            category = str(int(value))
    rows = []
    for ext_id, persona in PERSONAS.items():
        if wanted is not None and persona["gender"] != wanted:
            continue
        c = F(1, 3) if tier is None else persona["city"].get(tier, F(0))
        b = F(1) if brand is None else persona["brand"].get(brand, F(0))
        g = F(1) if generic is None else persona["generic"].get(generic, F(0))
        k = F(1) if category is None else persona["category"].get(category, F(0))
        score = W_CITY * c + W_BRAND * b + W_GENERIC * g + W_CATEGORY * k
        rows.append((ext_id, score, {"C": c, "B": b, "G": g, "K": k}))
    return sorted(rows, key=lambda r: (-r[1], r[0]))


@pytest.fixture(scope="module")
def run(pipeline_factory):
    return pipeline_factory(
        "query", products=PRODUCTS, categories=CATEGORIES, visits=VISITS, checkouts=CHECKOUTS, searches=SEARCHES
    )


def result_of(response: dict, ext_id: str) -> dict:
    matches = [r for r in response["results"] if r["ext_id"] == ext_id]
    assert len(matches) == 1, f"{ext_id} not (once) in the results"
    return matches[0]


# --------------------------------------------------------------------------- the hand-computed personas


def test_hand_computed_personas_match_the_export(run):
    names = {
        "city": "city",
        "brand": "brand_affinity",
        "generic": "generic_affinity",
        "category": "category_affinity",
        "ecomm": "ecomm",
    }
    assert set(run.personas) == set(PERSONAS)
    for ext_id, persona in PERSONAS.items():
        exported = run.personas[ext_id]
        assert exported["gender"] == persona["gender"], ext_id
        for ours, theirs in names.items():
            assert exported[theirs] == pytest.approx({k: float(v) for k, v in persona[ours].items()}, abs=1e-9), (
                ext_id,
                ours,
            )


# --------------------------------------------------------------------------- total, score, ordering, paging

RANKING_REQUESTS = [
    {},
    {"gender": "M"},
    {"gender": "female", "brand": "nike"},
    {"gender": "Unisex"},
    {"gender": "any", "cityTier": 1},
    {"brand": " NIKE ", "cityTier": "tier 1"},
    {"genericName": "shoes", "level1Cat": 1, "level2Cat": "10", "level3Cat": -1},
    {"level1Cat": 2, "level3Cat": 100},
    {"level1Cat": "999"},  # not in the hierarchy: K = 0, not an error
    {"brand": "zzz"},  # not in the vocabulary: B = 0, not an error
    {"cityTier": "3"},
    {"gender": "male", "cityTier": "TIER-2", "brand": "puma", "genericName": "Shoes", "level2Cat": 10},
    {"brand": "ikea", "genericName": "sofa", "level2Cat": 20, "cityTier": "Tier1", "size": 1000},
    {"brand": None, "level2Cat": None, "gender": None},
]


@pytest.mark.parametrize("request_", RANKING_REQUESTS, ids=[json.dumps(r) for r in RANKING_REQUESTS])
def test_total_score_components_and_order(run, request_):
    response = run.query(request_)
    expected = expected_ranking(request_)
    assert response["total"] == len(expected)
    size = request_.get("size") or 20
    expected = expected[:size]
    assert [r["ext_id"] for r in response["results"]] == [e[0] for e in expected]
    for result, (ext_id, score, components) in zip(response["results"], expected, strict=True):
        assert result["score"] == pytest.approx(float(score), abs=1e-6), ext_id
        assert set(result["components"]) == {"C", "B", "G", "K"}
        for name, value in components.items():
            assert result["components"][name] == pytest.approx(float(value), abs=1e-9), (ext_id, name)
        assert result["gender"] == PERSONAS[ext_id]["gender"]


def test_hand_worked_example(run):
    # brand nike, Tier1: D and d 0.15 + 0.35 + 0.2 + 0.3 = 1.0; c 0.15 + 0.35·2/3 + 0.5 ≈ 0.88333;
    # a 0.15·0.75 + 0.35·0.75 + 0.5 = 0.875; b 0 + 0.35 + 0.5 = 0.85; p 0.15 + 0.35·43/84 + 0.5;
    # s 0 + 0.35·0.8 + 0.5 = 0.78; e and many 0.5.
    response = run.query({"brand": "Nike", "cityTier": "Tier1"})
    got = [(r["ext_id"], round(r["score"], 6)) for r in response["results"]]
    assert got == [
        ("D", 1.0),
        ("d", 1.0),
        ("c", 0.883333),
        ("a", 0.875),
        ("b", 0.85),
        ("p", round(0.65 + 0.35 * 43 / 84, 6)),
        ("s", 0.78),
        ("e", 0.5),
        ("many", 0.5),
    ]
    assert result_of(response, "c")["components"] == pytest.approx({"C": 1.0, "B": 2 / 3, "G": 1.0, "K": 1.0})
    assert result_of(response, "e")["components"] == {"C": 0.0, "B": 0.0, "G": 1.0, "K": 1.0}


def test_no_tier_means_c_is_one_third(run):
    response = run.query({"gender": "women"})
    assert response["total"] == 1
    (only,) = response["results"]
    assert only["ext_id"] == "b"
    assert only["components"] == pytest.approx({"C": 1 / 3, "B": 1.0, "G": 1.0, "K": 1.0})
    assert only["score"] == pytest.approx(0.9, abs=1e-6)


def test_gender_filter_counts_only_matching_personas(run):
    assert run.query({"gender": "men"})["total"] == 3  # a, d, D
    assert run.query({"gender": "F"})["total"] == 1  # b
    assert run.query({"gender": "unisex"})["total"] == len(PERSONAS)
    assert run.query({})["total"] == len(PERSONAS)


@pytest.mark.parametrize(("size", "offset"), [(2, 1), (3, 0), (1, 8), (5, 7), (0, 0), (4, 9), (20, 100), ("2", "3")])
def test_size_and_from(run, size, offset):
    base = {"brand": "nike", "cityTier": "Tier1"}
    expected = [e[0] for e in expected_ranking(base)]
    response = run.query({**base, "size": size, "from": offset})
    assert response["total"] == len(PERSONAS)
    assert [r["ext_id"] for r in response["results"]] == expected[int(offset) : int(offset) + int(size)]


def test_default_size_is_20(run):
    assert len(run.query({})["results"]) == len(PERSONAS)  # fewer than 20
    assert len(run.query({"size": None})["results"]) == len(PERSONAS)


# --------------------------------------------------------------------------- visited / purchased


@pytest.mark.parametrize(
    ("request_", "visited", "purchased"),
    [
        ({}, ["Q3", "QZ", "Q1", "Q4"], ["Q3", "Q4"]),  # no criterion: unknown pids included
        ({"cityTier": "Tier1", "gender": "any"}, ["Q3", "QZ", "Q1", "Q4"], ["Q3", "Q4"]),
        ({"level1Cat": -1}, ["Q3", "QZ", "Q1", "Q4"], ["Q3", "Q4"]),
        ({"brand": "NIKE"}, ["Q3", "Q1"], ["Q3"]),
        ({"brand": "nike", "genericName": "shoes"}, ["Q1"], []),
        ({"genericName": " Sofa "}, ["Q4"], ["Q4"]),
        ({"level2Cat": 20}, ["Q3", "Q4"], ["Q3", "Q4"]),
        # only the most specific level given counts: Q3 has cat_l1 1 but cat_l2 20
        ({"level1Cat": 2, "level2Cat": 20}, ["Q3", "Q4"], ["Q3", "Q4"]),
        ({"level1Cat": 1}, ["Q3", "Q1"], ["Q3"]),
        ({"level1Cat": 2, "level3Cat": "100"}, ["Q1"], []),
        ({"brand": "puma"}, [], []),
        ({"brand": "zzz"}, [], []),
    ],
)
def test_visited_and_purchased(run, request_, visited, purchased):
    result = result_of(run.query({**request_, "size": 1000}), "p")
    assert result["visited"] == visited
    assert result["purchased"] == purchased


def test_product_lists_hold_at_most_50_most_recent(run):
    result = result_of(run.query({"size": 1000}), "many")
    assert result["visited"] == [f"X{i:02d}" for i in range(54, 4, -1)]
    assert result["purchased"] == []


def test_user_without_products_has_empty_lists(run):
    result = result_of(run.query({"size": 1000}), "s")
    assert result["visited"] == [] and result["purchased"] == []


# --------------------------------------------------------------------------- search_terms

ALL_TERMS = ["nikeshoes", "NIKE", "Nike shoes", "t_shirt", "  ikea sofa ", "nike shoes", "cheap t-shirt"]


@pytest.mark.parametrize(
    ("request_", "terms"),
    [
        ({}, ALL_TERMS),
        ({"level1Cat": 1, "cityTier": 2}, ALL_TERMS),  # neither brand nor genericName: all
        ({"brand": "Nike"}, ["NIKE", "Nike shoes", "nike shoes"]),
        ({"brand": "nike", "genericName": "t-shirt"}, ["NIKE", "Nike shoes", "t_shirt", "nike shoes", "cheap t-shirt"]),
        ({"genericName": "sofa"}, ["  ikea sofa "]),
        ({"genericName": "t shirt"}, ["t_shirt", "cheap t-shirt"]),  # by tokens, even off the catalog
        ({"brand": "ikea", "genericName": "shoes"}, ["Nike shoes", "  ikea sofa ", "nike shoes"]),
        ({"brand": "puma"}, []),
    ],
)
def test_search_terms(run, request_, terms):
    result = result_of(run.query({**request_, "size": 1000}), "s")
    assert result["search_terms"] == terms


def test_search_terms_hold_at_most_20_most_recent(run):
    result = result_of(run.query({"size": 1000}), "many")
    assert result["search_terms"] == [f"term {i:02d}" for i in range(24, 4, -1)]


# --------------------------------------------------------------------------- invalid requests and the CLI


def test_cli_query_prints_the_service_response(run):
    request_ = {"brand": "nike", "cityTier": "tier-1", "size": 4, "from": 1}
    code, printed, err = run.cli_query(request_)
    assert code == 0, err
    assert printed == json.loads(json.dumps(run.query(request_)))
    assert [r["ext_id"] for r in printed["results"]] == ["d", "c", "a", "b"]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"cityTier": "Tier4"}, "cityTier"),
        ({"cityTier": "gold"}, "cityTier"),
        ({"size": 1001}, "size"),
        ({"size": -1}, "size"),
        ({"from": -1}, "from"),
        ({"level2Cat": 1.5}, "level2Cat"),
        ({"level1Cat": "abc"}, "level1Cat"),
        ({"size": True}, "size"),
        ({"gender": "boys"}, "gender"),
        ({"gender": ""}, "gender"),
        ({"brand": "  "}, "brand"),
        ({"genericName": ""}, "genericName"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_request_names_the_field(run, request_, field):
    with pytest.raises(InvalidRequest) as info:
        run.query(request_)
    assert info.value.field == field
    code, printed, err = run.cli_query(request_)
    assert code != 0
    assert printed is None
    assert field in err


def test_cli_query_before_the_first_build_is_one_error_line(tmp_path):
    """No index yet: `persona query` says so in one line and exits non-zero (HTTP answers 503), no traceback."""
    code, printed, err = Pipeline(tmp_path).cli_query({"gender": "men"})
    assert code == 2 and printed is None
    assert err.strip().splitlines() == [err.strip()]
    assert "no search index has been built yet; run `persona materialize`" in err


def test_cli_rejects_a_request_that_is_not_json(run):
    code, printed, err = run.cli_query("{brand: nike")
    assert code != 0 and printed is None
    assert "request" in err


def test_activity_rows_in_the_layouts_of_older_builds_are_still_read():
    """user_activity holds pids and texts in recency order now; rows older builds wrote with their times
    (positional arrays, or objects before those) read as the same order, ties by code point."""
    from persona_assets.query.service import RecentActivity, _decode_activity

    current = _decode_activity('{"visited": ["P3", "P1"], "purchased": ["P2", "P3"]}', '["new", "old"]')
    positional = _decode_activity('[["P1", 5, null], ["P2", null, 7], ["P3", 9, 7]]', '[["old", 1], ["new", 2]]')
    objects = _decode_activity(
        '[{"pid": "P1", "visited_us": 5, "purchased_us": null}, {"pid": "P2", "visited_us": null, "purchased_us": 7},'
        ' {"pid": "P3", "visited_us": 9, "purchased_us": 7}]',
        '[{"query": "old", "searched_us": 1}, {"query": "new", "searched_us": 2}]',
    )
    assert current == positional == objects == RecentActivity(["P3", "P1"], ["P2", "P3"], ["new", "old"])
    with pytest.raises(ValueError):
        _decode_activity('[["P1", 5]]', "[]")  # a short entry is an error, not a silent gap
