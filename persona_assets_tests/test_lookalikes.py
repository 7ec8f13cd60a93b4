"""Lookalike audiences (issue 10, item 5; docs/audiences.md): the request, the centroid, the similarity, and
the answers of both backend pairs checked against similarities computed here by hand."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from persona_assets.audiences.lookalikes import (
    CANDIDATE_KEYS,
    CENTROID_KEYS,
    CENTROID_MASS,
    MAX_SEED,
    LookalikeRequest,
    centroid_of,
    parse_lookalike_request,
    seed_means,
)
from persona_assets.query.request import InvalidRequest
from persona_assets.query.scoring import ScoreWeights
from persona_assets.stores.search_backend import (
    TIERS,
    Centroid,
    KeyFrequencies,
    home_tier,
    home_tier_codes,
    inverse_norm,
)

WEIGHTS = ScoreWeights()
DIMS = ("city", "brand", "generic", "category")


# --------------------------------------------------------------------------- the request


def test_a_request_reads_its_fields_and_defaults():
    assert parse_lookalike_request({"seed": {"extIds": ["b", "a", "b"]}}) == LookalikeRequest(seed_ext_ids=("b", "a"))
    request = parse_lookalike_request(
        {
            "seed": {"segment": "boat-fans"},
            "size": "250",
            "minSimilarity": 0.4,
            "includeSeed": True,
            "gender": " Female ",
            "cityTier": "tier 1",
        }
    )
    assert request == LookalikeRequest(
        seed_segment="boat-fans", size=250, min_similarity=0.4, include_seed=True, gender="women", city_tier="Tier1"
    )
    assert parse_lookalike_request({"seed": {"extIds": ["a"], "segment": None}, "size": None}).size == 100


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ([], "request"),
        ({}, "seed"),
        ({"seed": None}, "seed"),
        ({"seed": []}, "seed"),
        ({"seed": {}}, "seed"),
        ({"seed": {"segment": "a", "extIds": ["x"]}}, "seed"),
        ({"seed": {"segments": "a"}}, "seed.segments"),
        ({"seed": {"segment": "Boat Fans"}}, "seed.segment"),
        ({"seed": {"extIds": "a,b"}}, "seed.extIds"),
        ({"seed": {"extIds": []}}, "seed.extIds"),
        ({"seed": {"extIds": ["a", 7]}}, "seed.extIds[1]"),
        ({"seed": {"extIds": ["a", ""]}}, "seed.extIds[1]"),
        ({"seed": {"extIds": ["a"]}, "size": 0}, "size"),
        ({"seed": {"extIds": ["a"]}, "size": 10_001}, "size"),
        ({"seed": {"extIds": ["a"]}, "size": 5.0}, "size"),
        ({"seed": {"extIds": ["a"]}, "minSimilarity": "0.5"}, "minSimilarity"),
        ({"seed": {"extIds": ["a"]}, "minSimilarity": 1.5}, "minSimilarity"),
        ({"seed": {"extIds": ["a"]}, "minSimilarity": -0.1}, "minSimilarity"),
        ({"seed": {"extIds": ["a"]}, "minSimilarity": float("nan")}, "minSimilarity"),
        ({"seed": {"extIds": ["a"]}, "minSimilarity": True}, "minSimilarity"),
        ({"seed": {"extIds": ["a"]}, "includeSeed": "yes"}, "includeSeed"),
        ({"seed": {"extIds": ["a"]}, "gender": "robots"}, "gender"),
        ({"seed": {"extIds": ["a"]}, "cityTier": 4}, "cityTier"),
        ({"seed": {"extIds": ["a"]}, "brand": "boat"}, "brand"),
    ],
)
def test_an_invalid_request_names_its_field(payload, field):
    with pytest.raises(InvalidRequest) as caught:
        parse_lookalike_request(payload)
    assert caught.value.field == field


def test_a_seed_of_more_than_max_seed_distinct_ext_ids_is_refused_saying_the_limit():
    repeated = ["a"] * (MAX_SEED + 5)
    assert parse_lookalike_request({"seed": {"extIds": repeated}}).seed_ext_ids == ("a",)
    with pytest.raises(InvalidRequest, match="at most 50,000") as caught:
        parse_lookalike_request({"seed": {"extIds": [f"u{i}" for i in range(MAX_SEED + 1)]}})
    assert caught.value.field == "seed.extIds"


# --------------------------------------------------------------------------- centroid and similarity by hand


def cosine(a: dict[str, float], b: dict[str, float]) -> float:
    keys = sorted(set(a) | set(b))
    x, y = np.array([a.get(k, 0.0) for k in keys]), np.array([b.get(k, 0.0) for k in keys])
    if not x.any() or not y.any():
        return 0.0
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def weight_of(dim: str, weights: ScoreWeights = WEIGHTS) -> float:
    return {"city": weights.city, "brand": weights.brand, "generic": weights.generic, "category": weights.category}[dim]


def expected_centroid(seed: list[dict], personas: list[dict], weights: ScoreWeights = WEIGHTS) -> dict[str, dict]:
    """The centroid as docs/audiences.md defines it, written out plainly: means, idf, top keys, 95 % mass."""
    centroid = {}
    for dim in DIMS:
        sums = Counter()
        for persona in seed:
            sums.update(persona.get(dim, {}))
        means = sorted(
            ((total / len(seed), key) for key, total in sums.items() if total > 0), key=lambda e: (-e[0], e[1])
        )
        means = means[:CANDIDATE_KEYS]
        df = {key: sum(1 for p in personas if p.get(dim, {}).get(key, 0) > 0) for _, key in means}
        weighted = [
            (mean * math.log(len(personas) / df[key]), key) for mean, key in means if 0 < df[key] < len(personas)
        ]
        weighted = sorted(weighted, key=lambda e: (-e[0], e[1]))[:CENTROID_KEYS]
        total = sum(w * w for w, _ in weighted)
        kept, held = [], 0.0
        for w, key in weighted:
            kept.append((key, w))
            held += w * w
            if held >= CENTROID_MASS * total:
                break
        if kept and weight_of(dim, weights) > 0:
            centroid[dim] = dict(kept)
    return centroid


def expected_similarity(persona: dict, centroid: dict[str, dict], weights: ScoreWeights = WEIGHTS) -> float:
    total = sum(weight_of(dim, weights) for dim in DIMS)
    return sum(
        weight_of(dim, weights) / total * cosine(persona.get(dim, {}), centroid[dim]) for dim in DIMS if dim in centroid
    )


def frequencies_of(personas: list[dict], keys: dict[str, list[str]]) -> KeyFrequencies:
    counts = {
        dim: {key: sum(1 for p in personas if key in p.get(dim, {})) for key in wanted} for dim, wanted in keys.items()
    }
    return KeyFrequencies(documents=len(personas), counts=counts)


SMALL = [
    {"city": {"Tier1": 1.0}, "brand": {"boat": 0.75, "noise": 0.25}, "generic": {"smart watches": 1.0}, "category": {"1": 0.5, "2": 0.5}},
    {"city": {"Tier1": 0.5, "Tier2": 0.5}, "brand": {"boat": 1.0}, "generic": {"smart watches": 0.5, "earphones": 0.5}, "category": {"1": 1.0}},
    {"city": {"Tier2": 1.0}, "brand": {"noise": 1.0}, "generic": {"earphones": 1.0}, "category": {"1": 0.5, "3": 0.5}},
    {"city": {"Tier3": 1.0}, "brand": {"puma": 1.0}, "generic": {"shoes": 1.0}, "category": {"1": 0.25, "4": 0.75}},
    {"city": {"Tier1": 1.0}, "brand": {"puma": 0.5, "boat": 0.5}, "category": {"1": 1.0}},
    {"brand": {"lakme": 1.0}, "generic": {"lipsticks": 1.0}, "category": {"1": 0.5, "5": 0.5}},
]  # fmt: skip


def test_the_centroid_is_the_idf_weighted_mean_cut_to_its_heaviest_keys():
    seed = SMALL[:2]
    means = seed_means(seed)
    assert means.size == 2
    assert means.means["brand"] == {"boat": 0.875, "noise": 0.125}
    centroid = centroid_of(means, frequencies_of(SMALL, means.keys()), WEIGHTS)
    expected = expected_centroid(seed, SMALL)
    assert set(centroid.keys) == set(expected)
    for dim, weights in expected.items():
        assert centroid.keys[dim] == tuple(weights)
        assert centroid.weights[dim] == pytest.approx(tuple(weights.values()))
    # category 1 is held by every persona: it says nothing about the seed and is dropped
    assert "1" not in centroid.keys["category"]
    # boat: mean 0.875 × ln(6/3), noise: 0.125 × ln(6/2)
    assert centroid.weights["brand"][0] == pytest.approx(0.875 * math.log(2))
    for dim in centroid.keys:
        length = math.sqrt(sum(w * w for w in centroid.weights[dim]))
        share = weight_of(dim) / sum(weight_of(d) for d in DIMS)
        assert centroid.coefficients[dim] == pytest.approx(tuple(share * w / length for w in centroid.weights[dim]))


def test_the_similarity_is_the_weighted_mean_of_the_cosines():
    means = seed_means(SMALL[:2])
    centroid = centroid_of(means, frequencies_of(SMALL, means.keys()), WEIGHTS)
    expected_keys = expected_centroid(SMALL[:2], SMALL)
    for persona in SMALL:
        values = {dim: dict(persona.get(dim, {})) for dim in DIMS}
        inverse = {dim: inverse_norm(persona[dim].values()) for dim in DIMS if dim in persona}
        similarity, shared = centroid.score(values, inverse)
        assert similarity == pytest.approx(expected_similarity(persona, expected_keys), abs=1e-12)
        assert sum(s.contribution for s in shared) <= similarity + 1e-12
        assert [s.contribution for s in shared] == sorted((s.contribution for s in shared), reverse=True)
    # a persona sharing nothing with the seed scores 0 and shares nothing
    assert centroid.score({"brand": {"lakme": 1.0}}, {"brand": 1.0}) == (0.0, ())


def test_a_persona_identical_to_a_one_shopper_seed_scores_1():
    persona = SMALL[2]
    frequencies = KeyFrequencies(documents=100, counts={dim: dict.fromkeys(persona[dim], 10) for dim in DIMS})
    centroid = centroid_of(seed_means([persona]), frequencies, WEIGHTS)
    inverse = {dim: inverse_norm(persona[dim].values()) for dim in DIMS}
    assert centroid.score(persona, inverse)[0] == pytest.approx(1.0, abs=1e-12)


def test_a_dimension_weighing_0_is_left_out_and_the_others_share_its_weight():
    weights = ScoreWeights(city=0.0, brand=0.5, generic=0.5, category=0.0)
    means = seed_means(SMALL[:2])
    centroid = centroid_of(means, frequencies_of(SMALL, means.keys()), weights)
    assert set(centroid.keys) == {"brand", "generic"}
    persona = SMALL[0]
    inverse = {dim: inverse_norm(persona[dim].values()) for dim in DIMS}
    expected = expected_similarity(persona, expected_centroid(SMALL[:2], SMALL, weights), weights)
    assert centroid.score(persona, inverse)[0] == pytest.approx(expected, abs=1e-12)


def test_home_tier_codes_agree_with_home_tier():
    rows = [
        {"Tier1": 0.4, "Tier2": 0.6},
        {"Tier2": 0.5, "Tier3": 0.5},
        {},
        {"Tier3": 1.0},
        {"Tier1": 0.5, "Tier3": 0.5},
    ]
    matrix = np.array([[row.get(tier, 0.0) for tier in TIERS] for row in rows])
    codes = home_tier_codes(matrix).tolist()
    assert [TIERS[c] if c >= 0 else None for c in codes] == [home_tier(row) for row in rows]
    assert [home_tier(row) for row in rows] == ["Tier2", "Tier2", None, "Tier3", "Tier1"]


def test_an_empty_centroid_scores_everyone_0():
    centroid = Centroid(keys={}, weights={}, coefficients={})
    assert centroid.score({"brand": {"boat": 1.0}}, {"brand": 1.0}) == (0.0, ())
    assert json.dumps(centroid.keys) == "{}"


# --------------------------------------------------------------------------- both backend pairs, by hand

contract = pytest.mark.contract
SEED_SIZE = 40


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A rebuilt 2,000-shopper shop with two planted interest groups: (pipeline, personas by ext_id as
    {dimension: map}, genders, {group: [ext_id, ...]})."""
    import csv
    import dataclasses

    from conftest import Pipeline

    from persona_assets.synthetic.generator import DEFAULT_SHAPE, PLANTED_FILE, generate_dataset

    root = tmp_path_factory.mktemp("lookalikes")
    shape = dataclasses.replace(DEFAULT_SHAPE, planted_groups=2, planted_share=0.25, planted_focus=0.6)
    generate_dataset(root / "data", 2000, 5, shape=shape)
    pipeline = Pipeline(root)
    pipeline.import_dir(root / "data")
    pipeline.materialize()
    exported = pipeline.export()
    names = {"city": "city", "brand": "brand_affinity", "generic": "generic_affinity", "category": "category_affinity"}
    personas = {
        ext_id: {dim: record[column] for dim, column in names.items() if record[column]}
        for ext_id, record in exported.items()
    }
    genders = {ext_id: record["gender"] for ext_id, record in exported.items()}
    groups: dict[int, list[str]] = {}
    with (root / "data" / PLANTED_FILE).open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            groups.setdefault(int(row["group"]), []).append(row["ext_id"])
    return pipeline, personas, genders, groups


def expected_lookalikes(
    personas: dict[str, dict],
    genders: dict[str, str],
    seed: list[str],
    *,
    include_seed: bool = False,
    gender: str | None = None,
    city_tier: str | None = None,
    min_similarity: float = 0.0,
) -> tuple[dict[str, dict], list[tuple[str, float]]]:
    """The centroid and every lookalike, best first, from the exported personas (docs/audiences.md)."""
    centroid = expected_centroid([personas[e] for e in seed if e in personas], list(personas.values()))
    ranked = []
    for ext_id, persona in personas.items():
        if (not include_seed and ext_id in seed) or (gender is not None and genders[ext_id] != gender):
            continue
        if city_tier is not None and home_tier(persona.get("city", {})) != city_tier:
            continue
        similarity = expected_similarity(persona, centroid)
        if similarity > 0 and similarity >= min_similarity:
            ranked.append((ext_id, similarity))
    ranked.sort(key=lambda entry: (-entry[1], entry[0]))
    return centroid, ranked


def assert_ranked_as_expected(results: list[dict], expected: list[tuple[str, float]], size: int) -> None:
    """Same personas with the same similarities in the same order (near-equal similarities may swap)."""
    assert len(results) == min(size, len(expected))
    wanted = dict(expected)
    for result, (_, similarity) in zip(results, expected, strict=False):
        assert result["similarity"] == pytest.approx(similarity, abs=1e-9)
        assert result["similarity"] == pytest.approx(wanted[result["ext_id"]], abs=1e-9)
    boundary = expected[size - 1][1] if len(expected) >= size else -1.0
    sure = {ext_id for ext_id, similarity in expected[:size] if similarity > boundary + 1e-9}
    assert sure <= {result["ext_id"] for result in results}


def lookalike(pipeline, payload: dict) -> dict:
    from persona_assets.query.lookalikes import find_lookalikes
    from persona_assets.stores.backends import search_backend_for

    with pipeline.env():
        backend = search_backend_for(pipeline.settings)
        return find_lookalikes(payload, pipeline.engine, backend, pipeline.settings.weights)


@contract
def test_lookalikes_of_a_seed_are_ranked_by_the_similarity_computed_by_hand(planted):
    pipeline, personas, genders, groups = planted
    seed = groups[0][:SEED_SIZE]
    answer = lookalike(pipeline, {"seed": {"extIds": seed}, "size": 10_000})
    centroid, expected = expected_lookalikes(personas, genders, seed)
    assert answer["seed"]["found"] == SEED_SIZE and answer["seed"]["missingCount"] == 0
    assert answer["seed"]["centroid"].keys() == centroid.keys()
    for dim, weights in centroid.items():
        assert list(answer["seed"]["centroid"][dim]) == list(weights)
        assert list(answer["seed"]["centroid"][dim].values()) == pytest.approx(list(weights.values()))
    results = answer["results"]
    assert_ranked_as_expected(results, expected, 10_000)
    assert not set(seed) & {r["ext_id"] for r in results}, "the seed is excluded by default"
    # why: each shared attribute's contribution, by hand, and the strongest first
    total = sum(weight_of(dim) for dim in DIMS)
    for result in results[:50]:
        persona = personas[result["ext_id"]]
        assert result["gender"] == genders[result["ext_id"]]
        assert result["cityTier"] == home_tier(persona.get("city", {}))
        assert 1 <= len(result["shared"]) <= 5
        for shared in result["shared"]:
            dim, key = shared["dimension"], shared["key"]
            mine, theirs = persona[dim], centroid[dim]
            by_hand = (
                weight_of(dim)
                / total
                * mine[key]
                * theirs[key]
                / (math.sqrt(sum(v * v for v in mine.values())) * math.sqrt(sum(v * v for v in theirs.values())))
            )
            assert shared["contribution"] == pytest.approx(by_hand, rel=1e-9)
        contributions = [s["contribution"] for s in result["shared"]]
        assert contributions == sorted(contributions, reverse=True)
    # the planted group is found again: most of the best 100 belong to it
    members = set(groups[0])
    assert sum(r["ext_id"] in members for r in results[:100]) >= 80


@contract
def test_filters_min_similarity_size_and_include_seed_apply_exactly(planted):
    pipeline, personas, genders, groups = planted
    seed = groups[1][:SEED_SIZE]
    cases = [
        ({"size": 25}, {}),
        ({"gender": "women", "size": 5000}, {"gender": "women"}),
        ({"gender": "men", "size": 5000}, {"gender": "men"}),
        ({"cityTier": "tier 2", "size": 5000}, {"city_tier": "Tier2"}),
        ({"includeSeed": True, "size": 5000}, {"include_seed": True}),
    ]
    _, everyone = expected_lookalikes(personas, genders, seed)
    # a threshold between two similarities well apart, so that float rounding cannot move anyone across it
    gap = next(i for i in range(len(everyone) // 2, len(everyone) - 1) if everyone[i][1] - everyone[i + 1][1] > 1e-6)
    threshold = (everyone[gap][1] + everyone[gap + 1][1]) / 2
    cases.append(({"minSimilarity": threshold, "size": 5000}, {"min_similarity": threshold}))
    for options, expectation in cases:
        answer = lookalike(pipeline, {"seed": {"extIds": seed}, **options})
        _, expected = expected_lookalikes(personas, genders, seed, **expectation)
        assert_ranked_as_expected(answer["results"], expected, options.get("size", 100))
        assert answer["results"], options
    with_seed = lookalike(pipeline, {"seed": {"extIds": seed}, "includeSeed": True, "size": 10})["results"]
    assert {r["ext_id"] for r in with_seed} & set(seed), "a seed's own shoppers are the most like it"


@contract
def test_a_saved_segment_seed_is_its_computed_members(planted):
    from persona_assets.stores.membership import MembersNotComputed
    from persona_assets.stores.segments import SegmentNotFound

    pipeline, personas, genders, _ = planted
    brand = Counter(b for p in personas.values() for b in p.get("brand", {})).most_common(1)[0][0]
    definition = {"query": {"brand": brand}, "membership": {"top": 30}}
    pipeline.check("segment", "save", "fans", "--definition", json.dumps(definition))
    with pytest.raises(MembersNotComputed):
        lookalike(pipeline, {"seed": {"segment": "fans"}})
    pipeline.check("segment", "compute", "fans")
    from persona_assets.stores.audience_tables import segment_members
    from persona_assets.stores.relational import read_frame

    frame = read_frame(pipeline.engine, segment_members)
    members = sorted(frame.loc[frame["segment"] == "fans", "ext_id"])
    assert len(members) == 30
    by_segment = lookalike(pipeline, {"seed": {"segment": "fans"}, "size": 300})
    by_ids = lookalike(pipeline, {"seed": {"extIds": members}, "size": 300})
    assert by_segment["seed"].pop("segment") == "fans"
    assert by_segment == by_ids
    _, expected = expected_lookalikes(personas, genders, members)
    assert_ranked_as_expected(by_segment["results"], expected, 300)
    with pytest.raises(SegmentNotFound):
        lookalike(pipeline, {"seed": {"segment": "nobody-saved-this"}})


@contract
def test_seed_ext_ids_without_a_persona_are_reported_and_a_seed_of_none_is_refused(planted):
    pipeline, personas, genders, groups = planted
    seed = [*groups[0][:10], "no-such-shopper", "nor-this-one"]
    answer = lookalike(pipeline, {"seed": {"extIds": seed}, "size": 20})
    assert answer["seed"] | {"centroid": None} == {
        "requested": 12,
        "found": 10,
        "missingCount": 2,
        "missing": ["no-such-shopper", "nor-this-one"],
        "centroid": None,
    }
    _, expected = expected_lookalikes(personas, genders, groups[0][:10])
    assert_ranked_as_expected(answer["results"], expected, 20)
    with pytest.raises(InvalidRequest) as caught:
        lookalike(pipeline, {"seed": {"extIds": ["no-such-shopper"]}})
    assert caught.value.field == "seed"


@contract
def test_the_command_line_and_http_answer_as_the_service_does(planted, tmp_path):
    from test_api import serving

    from persona_assets.api import create_app

    pipeline, _, _, groups = planted
    seed = groups[0][:SEED_SIZE]
    expected = lookalike(pipeline, {"seed": {"extIds": seed}, "size": 50, "gender": "men"})
    (tmp_path / "seed.txt").write_text("\n".join(seed) + "\n", encoding="utf-8")
    out = pipeline.check("lookalike", "--seed-file", tmp_path / "seed.txt", "--size", "50", "--gender", "men")
    assert json.loads(out) == expected
    argv = ["lookalike", *(a for e in seed[:3] for a in ("--seed", e)), "--size", "3"]
    assert json.loads(pipeline.check(*argv)) == lookalike(pipeline, {"seed": {"extIds": seed[:3]}, "size": 3})
    code, _, err = pipeline.cli("lookalike", "--seed", seed[0], "--size", "0")
    assert code == 2 and "size" in err
    code, _, err = pipeline.cli("lookalike", "--seed-segment", "not-saved")
    assert code == 1 and "not-saved" in err
    pipeline.check("segment", "save", "uncomputed", "--definition", json.dumps({"query": {}, "membership": {"top": 1}}))
    with pipeline.env():
        app = create_app(pipeline.settings)
    with serving(app) as http_:

        def post(payload: dict):
            return http_.request("POST", "/lookalikes", json.dumps(payload).encode(), "application/json")

        answer = post({"seed": {"extIds": seed}, "size": 50, "gender": "men"})
        assert answer.status == 200 and answer.json == expected
        refused = post({"seed": {"extIds": seed}, "minSimilarity": 2})
        assert refused.status == 422 and refused.json["field"] == "minSimilarity"
        unknown = post({"seed": {"extIds": ["no-such-shopper"]}})
        assert unknown.status == 422 and unknown.json["field"] == "seed"
        assert post({"seed": {"segment": "not-saved"}}).status == 404
        assert post({"seed": {"segment": "uncomputed"}}).status == 409
