"""Segment request validation (contract sections 4 and 6 "Query") and score weights configuration."""

from __future__ import annotations

import pytest

from persona_assets.query import (
    InvalidRequest,
    ScoreWeights,
    SegmentQuery,
    gender_passes,
    parse_segment_request,
    score_persona,
)


def _invalid(payload: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_segment_request(payload)
    return info.value


def assert_invalid(payload: object, field: str) -> None:
    error = _invalid(payload)
    assert error.field == field
    assert field in str(error)


# --------------------------------------------------------------------------- the request as a whole


def test_empty_request_has_the_defaults():
    assert parse_segment_request({}) == SegmentQuery(
        gender=None,
        city_tier=None,
        brand=None,
        generic_name=None,
        category_id=None,
        category_level=None,
        size=20,
        offset=0,
    )


def test_invalid_request_is_a_value_error_naming_the_field():
    error = _invalid({"size": 5000})
    assert isinstance(error, ValueError)
    assert error.field == "size"
    assert "size" in str(error)


@pytest.mark.parametrize("payload", [None, [], [{"brand": "nike"}], "brand=nike", 3, 1.5, True])
def test_payload_must_be_a_json_object(payload):
    assert_invalid(payload, "request")


@pytest.mark.parametrize("field", ["Gender", "city_tier", "level4Cat", "offset", "from_", "q", ""])
def test_unknown_field_is_an_error_naming_it(field):
    assert_invalid({field: "x"}, field)


@pytest.mark.parametrize("field", ["Gender", "offset"])
def test_unknown_field_with_null_value_is_still_an_error(field):
    assert_invalid({field: None}, field)


@pytest.mark.parametrize(
    "field",
    ["gender", "cityTier", "brand", "genericName", "level1Cat", "level2Cat", "level3Cat", "size", "from"],
)
def test_json_null_is_the_same_as_absent(field):
    assert parse_segment_request({field: None}) == parse_segment_request({})


def test_all_fields_together():
    query = parse_segment_request(
        {
            "gender": "Female",
            "cityTier": "tier 2",
            "brand": " Nike ",
            "genericName": "Running Shoes",
            "level1Cat": 1,
            "level2Cat": "12",
            "level3Cat": -1,
            "size": "50",
            "from": 10,
        }
    )
    assert query == SegmentQuery(
        gender="women",
        city_tier="Tier2",
        brand="nike",
        generic_name="running shoes",
        category_id="12",
        category_level=2,
        size=50,
        offset=10,
    )


# --------------------------------------------------------------------------- gender


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("men", "men"),
        ("MEN", "men"),
        ("Male", "men"),
        ("m", "men"),
        ("M", "men"),
        ("women", "women"),
        ("Women", "women"),
        ("FEMALE", "women"),
        ("f", "women"),
        ("F", "women"),
        ("unisex", None),
        ("UniSex", None),
        ("any", None),
        ("ANY", None),
        (" men ", "men"),
    ],
)
def test_gender_synonyms_any_case(value, expected):
    assert parse_segment_request({"gender": value}).gender == expected


@pytest.mark.parametrize("value", ["", "   ", "mens", "man", "woman", "w", "x", "all", 1, 0, True, ["men"], {}])
def test_gender_not_listed_is_an_error(value):
    assert_invalid({"gender": value}, "gender")


# --------------------------------------------------------------------------- cityTier


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Tier1", "Tier1"),
        ("tier1", "Tier1"),
        ("TIER1", "Tier1"),
        ("tier 1", "Tier1"),
        ("TIER-1", "Tier1"),
        ("tier_1", "Tier1"),
        ("1", "Tier1"),
        ("Tier2", "Tier2"),
        ("tier 2", "Tier2"),
        ("2", "Tier2"),
        ("tIeR-3", "Tier3"),
        ("3", "Tier3"),
        (" Tier3 ", "Tier3"),
        ("_2", "Tier2"),
        (1, "Tier1"),
        (2, "Tier2"),
        (3, "Tier3"),
    ],
)
def test_city_tier_forms(value, expected):
    assert parse_segment_request({"cityTier": value}).city_tier == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "tier",
        "Tier0",
        "Tier4",
        "0",
        "4",
        "11",
        "tier  1",
        "tier-_1",
        "t1",
        "tier1x",
        "tier 1.0",
        "one",
        "Tier١",
        0,
        4,
        -1,
        1.0,
        2.5,
        True,
        False,
        ["Tier1"],
    ],
)
def test_city_tier_anything_else_is_an_error(value):
    assert_invalid({"cityTier": value}, "cityTier")


# --------------------------------------------------------------------------- brand, genericName


@pytest.mark.parametrize(("field", "attr"), [("brand", "brand"), ("genericName", "generic_name")])
@pytest.mark.parametrize(
    ("value", "expected"),
    [("Nike", "nike"), ("  Home Centre  ", "home centre"), ("T-SHIRT", "t-shirt"), ("ÉCLAIR", "éclair")],
)
def test_names_are_trimmed_and_lower_cased(field, attr, value, expected):
    assert getattr(parse_segment_request({field: value}), attr) == expected


@pytest.mark.parametrize("field", ["brand", "genericName"])
@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_empty_name_is_an_error(field, value):
    assert_invalid({field: value}, field)


@pytest.mark.parametrize("field", ["brand", "genericName"])
@pytest.mark.parametrize("value", [1, 1.5, True, ["nike"], {"name": "nike"}])
def test_name_must_be_a_string(field, value):
    assert_invalid({field: value}, field)


# --------------------------------------------------------------------------- levelNCat


@pytest.mark.parametrize(
    ("payload", "category_id", "level"),
    [
        ({"level1Cat": 5}, "5", 1),
        ({"level2Cat": 7}, "7", 2),
        ({"level3Cat": 9}, "9", 3),
        ({"level1Cat": 5, "level2Cat": 7}, "7", 2),
        ({"level1Cat": 5, "level2Cat": 7, "level3Cat": 9}, "9", 3),
        ({"level1Cat": 5, "level3Cat": 9}, "9", 3),
        ({"level1Cat": 5, "level2Cat": 7, "level3Cat": -1}, "7", 2),
        ({"level1Cat": 5, "level2Cat": -1, "level3Cat": -1}, "5", 1),
        ({"level1Cat": -1, "level2Cat": -1, "level3Cat": -1}, None, None),
        ({"level1Cat": "-1"}, None, None),
        ({"level1Cat": 5, "level3Cat": None}, "5", 1),
        ({"level2Cat": "12"}, "12", 2),
        ({"level2Cat": " 12 "}, "12", 2),
        ({"level3Cat": "007"}, "7", 3),
        ({"level3Cat": -5}, "-5", 3),
        ({"level1Cat": 0}, "0", 1),
        ({"level1Cat": 12345678901234567890}, "12345678901234567890", 1),
    ],
)
def test_most_specific_category_level_given(payload, category_id, level):
    query = parse_segment_request(payload)
    assert (query.category_id, query.category_level) == (category_id, level)


@pytest.mark.parametrize("field", ["level1Cat", "level2Cat", "level3Cat"])
@pytest.mark.parametrize("value", [3.0, 3.5, True, False, "3.0", "abc", "", " ", "+3", "1e3", "٣", [3], {}])
def test_category_must_be_an_integer(field, value):
    assert_invalid({field: value}, field)


def test_every_category_level_is_validated_even_when_a_more_specific_one_wins():
    assert_invalid({"level1Cat": "abc", "level3Cat": 9}, "level1Cat")


# --------------------------------------------------------------------------- size, from


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (1, 1), (20, 20), (1000, 1000), ("7", 7), (" 8 ", 8)])
def test_size_range_and_string_form(value, expected):
    assert parse_segment_request({"size": value}).size == expected


@pytest.mark.parametrize("value", [1001, -1, "1001", "-1", 20.0, 1.5, True, False, "20.0", "", "ten", [20]])
def test_size_out_of_range_or_not_an_integer_is_an_error(value):
    assert_invalid({"size": value}, "size")


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (5, 5), (9_980, 9_980), ("15", 15), (" 3", 3)])
def test_from_is_the_offset(value, expected):
    assert parse_segment_request({"from": value}).offset == expected


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"from": 9_000, "size": 1000}, True),
        ({"from": 10_000, "size": 0}, True),
        ({"from": 9_001, "size": 1000}, False),
        ({"from": 9_981}, False),  # with the default size of 20
        ({"from": 10**30}, False),
    ],
)
def test_from_plus_size_is_at_most_10000(body, valid):
    if valid:
        query = parse_segment_request(body)
        assert query.offset + query.size <= 10_000
    else:
        assert_invalid(body, "from")


def test_a_query_past_the_window_cannot_be_built():
    with pytest.raises(ValueError, match="10000"):
        SegmentQuery(offset=9_990, size=20)


@pytest.mark.parametrize("value", [-1, "-3", 1.0, 2.5, True, False, "1.0", "", "x", [0]])
def test_from_negative_or_not_an_integer_is_an_error(value):
    assert_invalid({"from": value}, "from")


# --------------------------------------------------------------------------- scoring configuration


def test_default_weights():
    assert ScoreWeights() == ScoreWeights(city=0.15, brand=0.35, generic=0.20, category=0.30)
    assert ScoreWeights.from_env({}) == ScoreWeights()
    assert ScoreWeights.from_env({"PERSONA_SCORE_WEIGHTS": ""}) == ScoreWeights()


def test_weights_from_env():
    weights = ScoreWeights.from_env({"PERSONA_SCORE_WEIGHTS": " 0.1, 0.2 ,0.3,0.4 "})
    assert weights == ScoreWeights(city=0.1, brand=0.2, generic=0.3, category=0.4)


@pytest.mark.parametrize(
    "raw", ["0.1,0.2,0.3", "0.1,0.2,0.3,0.4,0.5", "a,b,c,d", "0.1,,0.3,0.4", "-1,0,0,0", "nan,0,0,0"]
)
def test_bad_weights_name_the_variable(raw):
    with pytest.raises(ValueError, match="PERSONA_SCORE_WEIGHTS"):
        ScoreWeights.from_env({"PERSONA_SCORE_WEIGHTS": raw})


PERSONA = {
    "gender": "women",
    "city": {"Tier1": 0.75, "Tier3": 0.25},
    "brand": {"nike": 0.6, "puma": 0.4},
    "generic": {"shoes": 1.0},
    "category": {"12": 0.5, "120": 0.5},
}


@pytest.mark.parametrize(
    ("payload", "components"),
    [
        ({}, {"C": 1 / 3, "B": 1.0, "G": 1.0, "K": 1.0}),
        ({"cityTier": 1}, {"C": 0.75, "B": 1.0, "G": 1.0, "K": 1.0}),
        ({"cityTier": 2}, {"C": 0.0, "B": 1.0, "G": 1.0, "K": 1.0}),
        ({"brand": "NIKE"}, {"C": 1 / 3, "B": 0.6, "G": 1.0, "K": 1.0}),
        ({"brand": "unknown"}, {"C": 1 / 3, "B": 0.0, "G": 1.0, "K": 1.0}),
        ({"genericName": "shoes"}, {"C": 1 / 3, "B": 1.0, "G": 1.0, "K": 1.0}),
        ({"genericName": "shirt"}, {"C": 1 / 3, "B": 1.0, "G": 0.0, "K": 1.0}),
        ({"level1Cat": 12, "level2Cat": 120}, {"C": 1 / 3, "B": 1.0, "G": 1.0, "K": 0.5}),
        ({"level1Cat": 12, "level3Cat": 999}, {"C": 1 / 3, "B": 1.0, "G": 1.0, "K": 0.0}),
    ],
)
def test_score_persona_formula(payload, components):
    score, got = score_persona(PERSONA, parse_segment_request(payload), ScoreWeights())
    assert got == pytest.approx(components)
    expected = 0.15 * components["C"] + 0.35 * components["B"] + 0.20 * components["G"] + 0.30 * components["K"]
    assert score == pytest.approx(expected, abs=1e-12)


def test_score_persona_with_empty_maps_and_custom_weights():
    persona = {"gender": "unisex", "city": {}, "brand": {}, "generic": {}, "category": {}}
    weights = ScoreWeights(city=1.0, brand=2.0, generic=3.0, category=4.0)
    score, components = score_persona(persona, SegmentQuery(brand="nike"), weights)
    assert components == {"C": 1 / 3, "B": 0.0, "G": 1.0, "K": 1.0}
    assert score == pytest.approx(1 / 3 + 3.0 + 4.0)


@pytest.mark.parametrize(
    ("persona_gender", "filter_gender", "passes"),
    [
        ("men", None, True),
        ("women", None, True),
        ("unisex", None, True),
        ("men", "men", True),
        ("women", "men", False),
        ("unisex", "men", False),
        ("women", "women", True),
        ("men", "women", False),
    ],
)
def test_gender_passes(persona_gender, filter_gender, passes):
    assert gender_passes(persona_gender, SegmentQuery(gender=filter_gender)) is passes


@pytest.mark.parametrize("field", ["size", "from", "level1Cat"])
def test_an_integer_string_past_pythons_conversion_limit_is_an_error_naming_the_field(field):
    with pytest.raises(InvalidRequest) as error:
        parse_segment_request({field: "9" * 5000})
    assert error.value.field == field


@pytest.mark.parametrize("field", ["brand", "genericName"])
def test_a_name_with_an_unpaired_surrogate_is_an_error_naming_the_field(field):
    with pytest.raises(InvalidRequest) as error:
        parse_segment_request({field: "nike\ud800"})
    assert error.value.field == field
