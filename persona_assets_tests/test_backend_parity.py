"""Parity: the same generated data through both backend pairs gives the same personas and answers.

SQLite + embedded index against MariaDB + OpenSearch (real servers), on a synthetic dataset big
enough to have many ties, many keys and every query shape. Personas must match exactly (to 1e-12);
answers under the contract's tolerance: equal totals, equal reported scores within 1e-6, and each
ranking a valid top-k within 1e-3 of the other pair's full ranking.
"""

from __future__ import annotations

import json
import random

import pytest
from conftest import Pipeline

from persona_assets.synthetic.generator import generate_dataset

pytestmark = pytest.mark.services

USERS = 1500


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pipeline]:
    data = tmp_path_factory.mktemp("parity-data")
    generate_dataset(data, users=USERS, seed=11)
    pipelines = {}
    for backend in ("embedded", "production"):
        pipeline = Pipeline(tmp_path_factory.mktemp(f"parity-{backend}"), backend=backend)
        pipeline.import_dir(data)
        pipeline.materialize()
        pipeline.export()
        pipelines[backend] = pipeline
    return pipelines


def test_both_pairs_compute_the_same_personas(pairs: dict[str, Pipeline]) -> None:
    embedded, production = pairs["embedded"].personas, pairs["production"].personas
    assert len(embedded) == USERS
    assert embedded.keys() == production.keys()
    for ext_id, persona in embedded.items():
        other = production[ext_id]
        assert other["gender"] == persona["gender"], ext_id
        for field in ("city", "ecomm", "brand_affinity", "generic_affinity", "category_affinity"):
            assert other[field].keys() == persona[field].keys(), (ext_id, field)
            for key, value in persona[field].items():
                assert other[field][key] == pytest.approx(value, abs=1e-12), (ext_id, field, key)


def _requests(pipeline: Pipeline, count: int) -> list[dict]:
    vocabulary = pipeline.table("attribute_vocabulary")
    categories = pipeline.table("categories")
    brands = vocabulary.loc[vocabulary["kind"] == "brand", "name"].tolist()
    generics = vocabulary.loc[vocabulary["kind"] == "generic", "name"].tolist()
    rng = random.Random(5)
    requests: list[dict] = [{}, {"size": 0}, {"size": 1000}, {"from": 1490, "size": 50}, {"brand": "no such brand"}]
    while len(requests) < count:
        request: dict = {"size": rng.choice([1, 5, 20, 100])}
        if rng.random() < 0.5:
            request["gender"] = rng.choice(["men", "F", "any"])
        if rng.random() < 0.5:
            request["cityTier"] = rng.choice(["Tier1", "tier 2", 3])
        if rng.random() < 0.6:
            request["brand"] = rng.choice(brands[:60])
        if rng.random() < 0.4:
            request["genericName"] = rng.choice(generics[:80])
        if rng.random() < 0.4:
            level = rng.choice([1, 2, 3])
            request[f"level{level}Cat"] = int(
                rng.choice(categories.loc[categories["level"] == level, "cat_id"].tolist())
            )
        if rng.random() < 0.2:
            request["from"] = rng.choice([0, 10, 200])
        requests.append(request)
    return requests


def _full_scores(pipeline: Pipeline, request: dict) -> dict[str, float]:
    """Every persona's score for ``request`` (one page holding everyone), from the embedded pair."""
    scores: dict[str, float] = {}
    offset = 0
    while True:
        page = pipeline.query({**request, "from": offset, "size": 1000})
        scores.update({hit["ext_id"]: hit["score"] for hit in page["results"]})
        offset += 1000
        if offset >= page["total"]:
            return scores


def test_both_pairs_answer_the_same_queries_under_the_contract_tolerance(pairs: dict[str, Pipeline]) -> None:
    embedded, production = pairs["embedded"], pairs["production"]
    for request in _requests(embedded, 60):
        ours, theirs = embedded.query(request), production.query(request)
        context = json.dumps(request)
        assert theirs["total"] == ours["total"], context
        assert len(theirs["results"]) == len(ours["results"]), context
        reference = _full_scores(embedded, {k: v for k, v in request.items() if k not in ("size", "from")})
        for answer in (ours, theirs):
            returned = [hit["ext_id"] for hit in answer["results"]]
            for hit in answer["results"]:
                assert hit["score"] == pytest.approx(reference[hit["ext_id"]], abs=1e-6), context
            scores = [hit["score"] for hit in answer["results"]]
            assert scores == sorted(scores, reverse=True), context
            if returned and request.get("from", 0) == 0:
                lowest = min(scores)
                left_out = [s for ext_id, s in reference.items() if ext_id not in set(returned)]
                assert all(s <= lowest + 1e-3 for s in left_out), context
        # Where the pairs return the same users, they report the same components and product lists.
        by_id = {hit["ext_id"]: hit for hit in theirs["results"]}
        for hit in ours["results"]:
            other = by_id.get(hit["ext_id"])
            if other is not None:
                assert other["components"] == pytest.approx(hit["components"], abs=1e-6), context
                assert (other["visited"], other["purchased"], other["search_terms"]) == (
                    hit["visited"],
                    hit["purchased"],
                    hit["search_terms"],
                ), context
