"""The OpenSearch backend on a real node: constant mapping, exact scores and a valid top-k against the
embedded index, atomic alias swaps, partial bulk failures with retries.

The node is the project's throwaway OpenSearch (``persona_assets.services.opensearch``), started in a
temporary directory for the session, or the one named by ``PERSONA_TEST_OPENSEARCH_URL``.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import production_services
from opensearchpy import OpenSearch

from persona_assets.query import ScoreWeights, SegmentQuery, score_persona
from persona_assets.settings import PersonaSettings
from persona_assets.stores.backends import search_backend_for
from persona_assets.stores.embedded_backend import EmbeddedBackend
from persona_assets.stores.opensearch_documents import (
    LO_FROM,
    encode_batch,
    escape_key,
    index_mapping,
    lucene_feature_value,
    unescape_key,
)
from persona_assets.stores.opensearch_index import OpenSearchBackend
from persona_assets.stores.opensearch_search import complete_search
from persona_assets.stores.persona_stream import checked_batches, persona_batches_from_frames
from persona_assets.stores.search_backend import IncompleteAnswer, IndexNotBuiltError

pytestmark = pytest.mark.services

DIMS = ("city", "brand", "generic", "category", "ecomm")
TIERS = ["Tier1", "Tier2", "Tier3"]
# Awkward keys: dots, wildcards, percent signs (one that looks escaped), quotes, non-ASCII, spaces.
BRANDS = ["nike", "puma", "dr. martens", "a*b", "100%", "%2E", 'say "hi"', "ünï", "home centre", "t-shirt co"]
GENERICS = ["shoes", "t-shirt", "t shirt", "sofa", "watch", "x.y.z", "%"]
CATEGORIES = ["1", "12", "120", "7", "70", "-7"]
SITES = ["flipkart", "amazon"]
TOLERANCE = 1e-3


# --------------------------------------------------------------------------- the node


@pytest.fixture(scope="session")
def opensearch_url() -> str:
    """The session's real OpenSearch node (``PERSONA_TEST_OPENSEARCH_URL``, else started by conftest)."""
    return production_services()["opensearch"]


@pytest.fixture
def backend(opensearch_url: str) -> Iterator[OpenSearchBackend]:
    """A backend on an alias of its own; every index of that alias is deleted afterwards."""
    alias = f"test_{secrets.token_hex(4)}_personas"
    os_backend = OpenSearchBackend(opensearch_url, alias=alias)
    yield os_backend
    os_backend.client.indices.delete(index=f"{alias}*", ignore_unavailable=True)


def builds_of(backend: OpenSearchBackend) -> list[str]:
    found = backend.client.indices.get(index=f"{backend.alias}-*", ignore_unavailable=True)
    return sorted(found)


# --------------------------------------------------------------------------- personas


def _random_map(rng: random.Random, keys: list[str], most: int = 3) -> dict[str, float]:
    """Small integer counts normalised to sum 1: values like 1/3 and 1/7, and many exact ties."""
    chosen = rng.sample(keys, rng.randint(0, min(most, len(keys))))
    counts = {k: rng.choice([1, 1, 2, 3, 7]) for k in chosen}
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def random_personas(seed: int, n: int) -> dict[str, dict]:
    rng = random.Random(seed)
    fixed = ["01005", "1005", "Zed", "alice", "Alice", "élan", "zoë", "a b", "a-b", "a_b", "日本", 'q"uote']
    ids = set(fixed)
    while len(ids) < n:
        ids.add("".join(rng.choice("aAbB019é_") for _ in range(rng.randint(1, 7))))
    personas = {}
    for i, ext_id in enumerate(sorted(ids)):
        if i % 9 == 0:  # a block of identical personas: exact ties everywhere
            persona = {"gender": "men", "city": {"Tier1": 1.0}, "brand": {"nike": 1.0}, "generic": {"shoes": 1.0}}
            persona |= {"category": {"12": 1 / 3, "120": 2 / 3}, "ecomm": {"flipkart": 1.0}}
        else:
            persona = {
                "gender": rng.choice(["men", "women", "unisex"]),
                "city": _random_map(rng, TIERS),
                "brand": _random_map(rng, BRANDS, 4),
                "generic": _random_map(rng, GENERICS),
                "category": _random_map(rng, CATEGORIES, 4),
                "ecomm": _random_map(rng, SITES),
            }
            if i % 37 == 5:  # values no rank feature can hold: zero and below float32's normal range
                persona["brand"] |= {"nike": 0.0, "puma": 1e-40}
        personas[ext_id] = persona
    return personas


def wide_personas(seed: int, n: int) -> dict[str, dict]:
    """Personas whose brand and category maps spread over many keys, as real ones do: most values are
    below LO_FROM, so they are indexed without a lo feature."""
    rng = random.Random(seed)
    brands = [*BRANDS, *(f"brand {i}" for i in range(40))]
    categories = [*CATEGORIES, *(str(100 + i) for i in range(60))]
    return {
        f"w{i:04d}": {
            "gender": rng.choice(["men", "women", "unisex"]),
            "city": _random_map(rng, TIERS),
            "brand": _random_map(rng, brands, 30),
            "generic": _random_map(rng, GENERICS),
            "category": _random_map(rng, categories, 40),
            "ecomm": _random_map(rng, SITES),
        }
        for i in range(n)
    }


def stream(users: pd.DataFrame, affinities: pd.DataFrame, rows_per_batch: int = 10_000):
    """The personas of two long tables as the batch stream backends take."""
    return persona_batches_from_frames(users, affinities, rows_per_batch=rows_per_batch)


def to_tables(personas: dict[str, dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = pd.DataFrame({"ext_id": list(personas), "gender": [p["gender"] for p in personas.values()]})
    rows = [
        (ext_id, dim, key, value)
        for ext_id, persona in personas.items()
        for dim in DIMS
        for key, value in persona.get(dim, {}).items()
    ]
    affinities = pd.DataFrame(rows, columns=["ext_id", "dimension", "key", "value"])
    return users, affinities


def reference_ranking(personas: dict[str, dict], query: SegmentQuery, weights: ScoreWeights) -> list[tuple]:
    """Every persona passing the gender filter as (score, ext_id, components), in contract order."""
    ranked = []
    for ext_id, persona in personas.items():
        if query.gender is not None and persona["gender"] != query.gender:
            continue
        score, components = score_persona(persona, query, weights)
        ranked.append((score, ext_id, components))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    return ranked


def check_answer(personas, ranking, query, got, embedded) -> bool:
    """The contract's checks for one query; returns whether the page equals the embedded one exactly."""
    assert got.total == embedded.total == len(ranking), query
    assert len(got.hits) == len(embedded.hits), query
    exact = {ext_id: (score, components) for score, ext_id, components in ranking}
    for hit in got.hits:
        score, components = exact[hit.ext_id]
        assert abs(hit.score - score) <= 1e-6, (query, hit)
        assert hit.score == score, (query, hit)  # float64 kept end to end: bit-identical
        assert hit.components == components, (query, hit)
        assert hit.gender == personas[hit.ext_id]["gender"], (query, hit)
    keys = [(-h.score, h.ext_id) for h in got.hits]
    assert keys == sorted(keys), query
    assert len({h.ext_id for h in got.hits}) == len(got.hits), query
    # A valid top-k within the tolerance, position by position against the true ranking...
    for mine, true in zip(got.hits, embedded.hits, strict=True):
        assert true.score - TOLERANCE <= mine.score <= true.score, (query, mine, true)
    # ... and literally for a first page: nobody left out scores more than 1e-3 above a returned persona.
    if query.offset == 0 and got.hits:
        returned = {h.ext_id for h in got.hits}
        lowest = min(h.score for h in got.hits)
        best_left_out = max((s for s, e, _ in ranking if e not in returned), default=float("-inf"))
        assert best_left_out <= lowest + TOLERANCE, query
    return [(h.ext_id, h.score, h.components, h.gender) for h in got.hits] == [
        (h.ext_id, h.score, h.components, h.gender) for h in embedded.hits
    ]


def all_queries(size: int = 20, offset: int = 0) -> list[SegmentQuery]:
    queries = []
    for gender, tier, brand, generic, category in itertools.product(
        [None, "men", "women"],
        [None, "Tier1", "Tier3"],
        [None, "nike", "dr. martens", "a*b", "%2E", "no such brand"],
        [None, "t-shirt", "x.y.z"],
        [None, "12", "-7", "999"],
    ):
        queries.append(
            SegmentQuery(
                gender=gender,
                city_tier=tier,
                brand=brand,
                generic_name=generic,
                category_id=category,
                category_level=None if category is None else 3,
                size=size,
                offset=offset,
            )
        )
    return queries


@pytest.fixture(scope="module")
def published(opensearch_url: str, tmp_path_factory: pytest.TempPathFactory):
    """The same random personas in the embedded index and in OpenSearch."""
    personas = random_personas(seed=11, n=400)
    users, affinities = to_tables(personas)
    embedded = EmbeddedBackend(tmp_path_factory.mktemp("embedded-index"))
    embedded.publish(stream(users, affinities))
    alias = f"test_{secrets.token_hex(4)}_personas"
    backend = OpenSearchBackend(opensearch_url, alias=alias)
    report = backend.publish(stream(users, affinities, rows_per_batch=97))
    assert report.failed == {}
    assert report.document_count == len(personas)
    yield personas, embedded, backend
    backend.client.indices.delete(index=f"{alias}*", ignore_unavailable=True)


@pytest.fixture(scope="module")
def published_wide(opensearch_url: str, tmp_path_factory: pytest.TempPathFactory):
    """Wide personas (most values indexed without lo) in the embedded index and in OpenSearch."""
    personas = wide_personas(seed=13, n=600)
    users, affinities = to_tables(personas)
    embedded = EmbeddedBackend(tmp_path_factory.mktemp("embedded-wide"))
    embedded.publish(stream(users, affinities))
    backend = OpenSearchBackend(opensearch_url, alias=f"test_{secrets.token_hex(4)}_wide")
    assert backend.publish(stream(users, affinities)).failed == {}
    yield personas, embedded, backend
    backend.client.indices.delete(index=f"{backend.alias}*", ignore_unavailable=True)


# --------------------------------------------------------------------------- keys, documents


def test_key_escaping_is_reversible_and_safe():
    for key in ["nike", "dr. martens", "a*b", "100%", "%2E", "%25", "%", "", "...", "日本.x", 'a"b\\c']:
        name = escape_key(key)
        assert "." not in name and "*" not in name
        assert unescape_key(name) == key
    assert len({escape_key(k) for k in ["%2E", ".", "%252E", "%"]}) == 4


def test_documents_carry_each_value_exactly_once():
    """A scored value is its rank feature's value as sent (Lucene keeps hi of it); lo makes hi + lo close;
    values no feature can hold, and the ecomm map, are in ``exact``."""
    personas = random_personas(seed=3, n=60) | wide_personas(seed=3, n=40)
    personas["tiny"] = {"gender": "men", **{dim: {} for dim in DIMS}, "brand": {"zero": 0.0, "sub": 1e-40, "ok": 1.0}}
    small = 0
    lines = []
    for batch in checked_batches(stream(*to_tables(personas), rows_per_batch=16)):
        docs = encode_batch(batch)
        assert docs.body(0, len(docs)).decode() == "".join(docs.lines.to_pylist())
        lines += docs.body(0, len(docs)).decode().splitlines()
    assert len(lines) == 2 * len(personas)
    for action, text in zip(lines[::2], lines[1::2], strict=True):
        ext_id = json.loads(action)["index"]["_id"]
        doc = json.loads(text)
        assert doc["ext_id"] == ext_id
        assert doc["gender"] == personas[ext_id]["gender"]
        exact = {dim: {unescape_key(k): v for k, v in doc["exact"].get(dim, {}).items()} for dim in DIMS}
        assert exact["ecomm"] == personas[ext_id]["ecomm"]
        for dim in ("city", "brand", "generic", "category"):
            sent = {unescape_key(k): v for k, v in doc.get(dim, {}).items()}
            lo = {unescape_key(k): v for k, v in doc.get(dim + "_lo", {}).items()}
            assert {**sent, **exact[dim]} == personas[ext_id][dim]  # every value exactly once
            assert not sent.keys() & exact[dim].keys()
            assert all(np.float32(v) >= np.finfo(np.float32).tiny for v in sent.values())
            for key, value in sent.items():
                hi = float(lucene_feature_value(np.array([value]))[0])
                if value >= LO_FROM:
                    assert abs(hi + lo.get(key, 0.0) - value) <= value * 2**-20
                else:  # hi alone: truncated (below the value by < 2^-8 of it), or float32 rounding carried it up
                    small += 1
                    assert key not in lo and -value * 2**-24 <= value - hi < value * 2**-8
    assert small > 500
    tiny = json.loads(lines[lines.index(next(t for t in lines if '"_id":"tiny"' in t)) + 1])
    assert tiny["brand"] == {"ok": 1.0} and tiny["exact"]["brand"] == {"zero": 0.0, "sub": 1e-40}


def test_invalid_input_publishes_nothing(backend: OpenSearchBackend):
    live = backend.publish(stream(*to_tables(random_personas(seed=2, n=30))))
    no_affinities = pd.DataFrame(columns=["ext_id", "dimension", "key", "value"])
    many = pd.DataFrame({"ext_id": [f"u{i:03d}" for i in range(50)], "gender": ["men"] * 50})
    with pytest.raises(ValueError, match="duplicate ext_id"):  # found in the 6th batch, after 5 were sent
        backend.publish(stream(pd.concat([many, many.tail(1)]), no_affinities, rows_per_batch=10))
    users = pd.DataFrame({"ext_id": ["a"], "gender": ["men"]})
    with pytest.raises(ValueError, match="not in users"):
        backend.publish(
            stream(users, pd.DataFrame({"ext_id": ["b"], "dimension": ["brand"], "key": ["x"], "value": [1.0]}))
        )
    with pytest.raises(ValueError, match="duplicate"):
        backend.publish(
            stream(
                users,
                pd.DataFrame({"ext_id": ["a", "a"], "dimension": ["brand"] * 2, "key": ["x"] * 2, "value": [0.5] * 2}),
            )
        )
    assert builds_of(backend) == [live.details["index"]] == [backend.live_index()]
    assert backend.document_count() == 30


# --------------------------------------------------------------------------- mapping


def _count_fields(properties: dict) -> int:
    count = 0
    for spec in properties.values():
        count += 1
        count += _count_fields(spec.get("properties", {}))
    return count


def test_mapping_field_count_does_not_grow_with_keys(backend: OpenSearchBackend):
    # 40 users x 60 brands, 40 generic names, 40 categories: 4,800 distinct keys, far past the
    # default index.mapping.total_fields.limit of 1000 that the legacy per-key fields ran into.
    users = pd.DataFrame({"ext_id": [f"u{i:03d}" for i in range(40)], "gender": ["women"] * 40})
    rows = []
    for i in range(40):
        for dim, per_user in (("brand", 60), ("generic", 40), ("category", 40)):
            for j in range(per_user):
                key = f"{dim} {i}.{j}" if dim != "category" else str(100_000 + i * 1000 + j)
                rows.append((f"u{i:03d}", dim, key, 1 / per_user))
        rows.append((f"u{i:03d}", "city", "Tier2", 1.0))
    affinities = pd.DataFrame(rows, columns=["ext_id", "dimension", "key", "value"])
    assert affinities.groupby(["dimension", "key"]).ngroups > 4000

    small = backend.publish(stream(users.head(1), affinities[affinities["ext_id"] == "u000"].head(3)))
    small_mapping = backend.client.indices.get_mapping(index=small.details["index"])[small.details["index"]]
    report = backend.publish(stream(users, affinities))
    assert report.failed == {} and report.document_count == 40
    index = report.details["index"]
    mapping = backend.client.indices.get_mapping(index=index)[index]["mappings"]
    assert mapping == small_mapping["mappings"]
    assert mapping["dynamic"] == "strict"
    assert _count_fields(mapping["properties"]) == _count_fields(index_mapping()["properties"]) == 17
    settings = backend.client.indices.get_settings(index=index, include_defaults=True)[index]
    assert "total_fields" not in settings["settings"]["index"].get("mapping", {})
    assert settings["defaults"]["index"]["mapping"]["total_fields"]["limit"] == "1000"

    # One of those keys ranks the one persona holding it, with its exact score.
    hits = backend.search(SegmentQuery(brand="brand 17.42", size=3), ScoreWeights())
    assert hits.total == 40
    assert hits.hits[0].ext_id == "u017"
    assert hits.hits[0].score == 0.15 * (1 / 3) + 0.35 * (1 / 60) + 0.20 + 0.30
    assert hits.hits[1].components["B"] == 0.0


# --------------------------------------------------------------------------- ranking


def test_scores_exact_and_top_k_valid_against_embedded(published):
    personas, embedded, backend = published
    weights = ScoreWeights()
    identical = checked = 0
    for query in all_queries():
        ranking = reference_ranking(personas, query, weights)
        got = backend.search(query, weights)
        identical += check_answer(personas, ranking, query, got, embedded.search(query, weights))
        checked += 1
    # Not required by the contract, but the hi/lo features make the approximate order nearly exact.
    print(f"{identical}/{checked} pages identical to the embedded index")
    assert identical >= 0.95 * checked, f"{identical}/{checked} pages identical to the embedded index"


@pytest.mark.parametrize("weights", [ScoreWeights(), ScoreWeights(1.0, 1.0, 1.0, 1.0)])
def test_values_without_lo_still_rank_within_the_tolerance(published_wide, weights: ScoreWeights):
    personas, embedded, backend = published_wide
    identical = checked = 0
    rng = random.Random(17)
    for _ in range(60):
        brand = rng.choice([*BRANDS, "brand 3", "brand 17", "brand 39"])
        category = rng.choice(["12", "103", "140", "159"])
        query = SegmentQuery(
            gender=rng.choice([None, "men"]),
            city_tier=rng.choice([None, "Tier2"]),
            brand=rng.choice([None, brand]),
            category_id=category,
            category_level=3,
            size=rng.choice([1, 10, 50]),
            offset=rng.choice([0, 0, 20]),
        )
        ranking = reference_ranking(personas, query, weights)
        identical += check_answer(
            personas, ranking, query, backend.search(query, weights), embedded.search(query, weights)
        )
        checked += 1
    print(f"{identical}/{checked} pages identical to the embedded index")
    assert identical >= 0.9 * checked


def test_builds_take_the_configured_shards_and_rank_exactly_across_them(opensearch_url: str, tmp_path: Path):
    """PERSONA_OPENSEARCH_SHARDS reaches each new build; candidates from several shards rank as one index."""
    settings = PersonaSettings.from_env(
        {
            "PERSONA_HOME": str(tmp_path),
            "PERSONA_OPENSEARCH_URL": opensearch_url,
            "PERSONA_OPENSEARCH_ALIAS": f"test_{secrets.token_hex(4)}_sharded",
            "PERSONA_OPENSEARCH_SHARDS": "3",
        }
    )
    backend = search_backend_for(settings)
    personas = random_personas(seed=17, n=300)
    users, affinities = to_tables(personas)
    try:
        index = backend.publish(stream(users, affinities)).details["index"]
        stored = backend.client.indices.get_settings(index=index)[index]["settings"]["index"]
        assert (stored["number_of_shards"], stored["number_of_replicas"]) == ("3", "0")
        embedded = EmbeddedBackend(tmp_path / "embedded")
        embedded.publish(stream(users, affinities))
        weights = ScoreWeights()
        for query in all_queries()[::7]:
            ranking = reference_ranking(personas, query, weights)
            check_answer(personas, ranking, query, backend.search(query, weights), embedded.search(query, weights))
    finally:
        backend.client.indices.delete(index=f"{settings.opensearch_alias}*", ignore_unavailable=True)


def test_values_without_lo_widen_the_window_by_their_error(backend: OpenSearchBackend, tmp_path: Path):
    """200 category values just above 0.05 (hi-only, so one approximate score for all), the best ones on
    the last ext_ids: with no tolerance, only a window widened by the hi-only error finds them."""
    personas = {
        f"t{j:03d}": {"gender": "men", "category": {"777": 0.05 + j * 2e-7, "1": 0.5}, "brand": {"nike": 0.25}}
        for j in range(200)
    }
    users, affinities = to_tables(personas)
    backend.publish(stream(users, affinities))
    strict = OpenSearchBackend(backend.url, alias=backend.alias, client=backend.client)
    strict.rank_tolerance = 0.0
    query = SegmentQuery(category_id="777", category_level=3, size=10)
    got = strict.search(query, ScoreWeights())
    assert [h.ext_id for h in got.hits] == [f"t{j:03d}" for j in range(199, 189, -1)]
    assert [h.score for h in got.hits] == [s for s, _, _ in reference_ranking(personas, query, ScoreWeights())[:10]]


@pytest.mark.parametrize(
    ("size", "offset"), [(5, 3), (1000, 0), (0, 0), (0, 50), (10, 395), (10, 9_990), (7, 50), (1, 0)]
)
def test_paging_against_embedded(published, size: int, offset: int):
    personas, embedded, backend = published
    weights = ScoreWeights()
    for query in random.Random(size * 7919 + offset).sample(all_queries(size=size, offset=offset), 60):
        ranking = reference_ranking(personas, query, weights)
        check_answer(personas, ranking, query, backend.search(query, weights), embedded.search(query, weights))


@pytest.mark.parametrize("weights", [ScoreWeights(0.5, 0.0, 0.25, 0.25), ScoreWeights(1.0, 1.0, 1.0, 1.0)])
def test_other_weights_against_embedded(published, weights: ScoreWeights):
    personas, embedded, backend = published
    for query in random.Random(5).sample(all_queries(), 80):
        ranking = reference_ranking(personas, query, weights)
        check_answer(personas, ranking, query, backend.search(query, weights), embedded.search(query, weights))


def test_zero_tolerance_widens_the_window_to_the_exact_ranking(published, caplog):
    _personas, embedded, backend = published
    weights = ScoreWeights()
    strict = OpenSearchBackend(backend.url, alias=backend.alias, client=backend.client)
    strict.rank_tolerance = 0.0
    for query in random.Random(9).sample(all_queries(size=15), 60):
        got, want = strict.search(query, weights), embedded.search(query, weights)
        assert got.total == want.total
        # Exact scores position by position (personas may differ only among exact ties at the cut).
        assert [h.score for h in got.hits] == [h.score for h in want.hits], query

    # The tie block (identical personas): a capped window cannot prove the ranking, and says so.
    strict.window_cap = 5
    query = SegmentQuery(brand="nike", size=3)
    with caplog.at_level(logging.WARNING, logger="persona_assets.stores.opensearch_search"):
        got = strict.search(query, weights)
    assert "window cap" in caplog.text
    assert [h.score for h in got.hits] == [h.score for h in embedded.search(query, weights).hits]


def test_document_count_equals_personas(published):
    personas, _embedded, backend = published
    assert backend.document_count() == len(personas)


# --------------------------------------------------------------------------- publishing


def test_nothing_published_yet(backend: OpenSearchBackend):
    assert backend.live_index() is None
    with pytest.raises(IndexNotBuiltError):
        backend.document_count()
    with pytest.raises(IndexNotBuiltError):
        backend.search(SegmentQuery(), ScoreWeights())


def test_a_refused_query_is_raised_at_once_not_retried_as_an_incomplete_answer(published):
    """complete_search retries only shards that failed on the node's side; a query the node refuses (4xx)
    is the caller's error, raised on the first attempt."""
    _personas, _embedded, backend = published
    from opensearchpy import TransportError

    calls = []

    class Counting:  # the real client, counting the searches sent
        def search(self, **arguments):
            calls.append(arguments)
            return backend.client.search(**arguments)

    with pytest.raises(TransportError) as raised:  # a rank_feature query on a keyword field
        complete_search(Counting(), backend.alias, {"query": {"rank_feature": {"field": "gender"}}})
    assert raised.value.status_code == 400 and not isinstance(raised.value, IncompleteAnswer)
    assert len(calls) == 1


def test_alias_swap_is_atomic_and_old_build_deleted(backend: OpenSearchBackend):
    # Build A: 2,000 personas "a…"; build B: 12,000 personas "b…", slow enough to watch it load.
    def personas(prefix: str, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        ids = [f"{prefix}{i:05d}" for i in range(n)]
        users = pd.DataFrame({"ext_id": ids, "gender": ["men"] * n})
        affinities = pd.DataFrame(
            {
                "ext_id": ids * 2,
                "dimension": ["brand"] * n + ["city"] * n,
                "key": ["nike"] * n + ["Tier1"] * n,
                "value": [1 / (1 + i % 7) for i in range(n)] + [1.0] * n,
            }
        )
        return users, affinities

    first = backend.publish(stream(*personas("a", 2_000)))
    assert first.details["deleted_indices"] == 0
    index_a = backend.live_index()
    assert index_a == backend.index_name(first.build_id) == first.details["index"]
    assert backend.document_count() == 2_000

    seen: list[tuple[int, set[str]]] = []
    saw_loading = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:
        query = SegmentQuery(brand="nike", size=50)
        try:
            while not stop.is_set():
                if len(builds_of(backend)) > 1 and backend.live_index() == index_a:
                    saw_loading.set()
                hits = backend.search(query, ScoreWeights())
                seen.append((hits.total, {h.ext_id[0] for h in hits.hits}))
        except BaseException as error:
            errors.append(error)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        time.sleep(0.2)
        small_chunks = OpenSearchBackend(backend.url, alias=backend.alias, bulk_chunk=250, client=backend.client)
        small_chunks.bulk_threads = 1
        second = small_chunks.publish(stream(*personas("b", 12_000), rows_per_batch=1000))
        time.sleep(0.3)
    finally:
        stop.set()
        watcher.join()
    assert not errors, errors
    assert second.failed == {} and second.document_count == 12_000
    assert saw_loading.is_set(), "the watcher never ran while build B was loading"
    # Every answer came from one complete build: A (2,000, all "a") or B (12,000, all "b").
    assert seen and all(answer in ((2_000, {"a"}), (12_000, {"b"})) for answer in seen), set(
        (t, tuple(p)) for t, p in seen
    )
    assert seen[0] == (2_000, {"a"}) and seen[-1] == (12_000, {"b"})
    assert backend.live_index() == backend.index_name(second.build_id)
    assert builds_of(backend) == [backend.index_name(second.build_id)]
    assert not backend.client.indices.exists(index=index_a)
    assert second.details["deleted_indices"] == 1
    assert backend.document_count() == 12_000

    # Nothing to rank by: the ext_id order, as deep as the contract's window goes.
    for offset, size in ((9_980, 20), (5_000, 1000), (0, 3)):
        page = backend.search(SegmentQuery(gender="men", offset=offset, size=size), ScoreWeights())
        assert page.total == 12_000
        assert [h.ext_id for h in page.hits] == [f"b{i:05d}" for i in range(offset, min(offset + size, 12_000))]
        assert {h.score for h in page.hits} == {0.15 * (1 / 3) + 0.35 * 1.0 + 0.20 * 1.0 + 0.30 * 1.0}


class _WatchedClient(OpenSearch):
    """The real client, noting how many ``_bulk`` requests run at once and which batch each one carries."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.lock = threading.Lock()
        self.running = self.most_running = 0
        self.pulled: list[int] = []  # batches the encoder has read from the stream so far
        self.sent: list[tuple[int, int]] = []  # (batch of a request, batches read when it started)

    def bulk(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            first_id = json.loads(kwargs["body"].split(b"\n", 1)[0])["index"]["_id"]
            self.sent.append((int(first_id[1:4]), len(self.pulled)))
        try:
            time.sleep(0.02)  # a slow node: the encoder gets ahead if nothing holds it back
            return super().bulk(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def test_a_refresh_that_resolved_the_old_build_writes_into_the_new_one_and_recreates_nothing(
    backend: OpenSearchBackend, monkeypatch
):
    """Issue 8: a refresh looked the live build up just before a rebuild swapped the alias and deleted that
    build. Its writes go through the alias into the build now live, and the deleted build's name is not
    re-created by them (OpenSearch creates a missing index on a write to its name)."""

    def one(ext_id: str, brand: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        users = pd.DataFrame({"ext_id": [ext_id], "gender": ["men"]})
        affinities = pd.DataFrame({"ext_id": [ext_id], "dimension": ["brand"], "key": [brand], "value": [1.0]})
        return users, affinities

    backend.publish(stream(*one("old", "nike")))
    old_build = backend.live_index()
    backend.publish(stream(*one("rebuilt", "nike")))  # the rebuild's swap; the old build is deleted
    new_build = backend.live_index()
    assert new_build != old_build and builds_of(backend) == [new_build]

    resolved_before_the_swap = backend.live_index
    monkeypatch.setattr(backend, "live_index", lambda: old_build)  # what the refresh saw before the swap
    report = backend.upsert(stream(*one("refreshed", "puma")))
    monkeypatch.setattr(backend, "live_index", resolved_before_the_swap)
    assert not report.failed
    assert builds_of(backend) == [new_build]  # nothing re-created under the old build's name
    hits = backend.search(SegmentQuery(brand="puma", size=5), ScoreWeights())
    assert [(hit.ext_id, hit.components["B"]) for hit in hits.hits] == [("refreshed", 1.0), ("rebuilt", 0.0)]


def test_a_write_after_the_alias_is_gone_fails_instead_of_creating_an_index(backend: OpenSearchBackend, monkeypatch):
    users = pd.DataFrame({"ext_id": ["u"], "gender": ["men"]})
    affinities = pd.DataFrame({"ext_id": ["u"], "dimension": ["brand"], "key": ["nike"], "value": [1.0]})
    backend.publish(stream(users, affinities))
    build = backend.live_index()
    backend.client.indices.delete(index=build)  # the alias goes with it
    monkeypatch.setattr(backend, "live_index", lambda: build)  # resolved before it went
    with pytest.raises(IndexNotBuiltError):
        backend.upsert(stream(users, affinities))
    assert builds_of(backend) == []
    assert not backend.client.indices.exists(index=backend.alias)


def test_bulk_requests_in_flight_are_bounded(backend: OpenSearchBackend):
    """At most ``bulk_threads`` requests at once, and the stream is read only a few batches ahead of them."""
    client = _WatchedClient(backend.url)
    loader = OpenSearchBackend(backend.url, alias=backend.alias, bulk_chunk=20, client=client)
    loader.bulk_threads = 3
    batches = 30
    users = pd.DataFrame({"ext_id": [f"b{b:03d}-{i:02d}" for b in range(batches) for i in range(20)], "gender": "men"})
    affinities = pd.DataFrame({"ext_id": users["ext_id"], "dimension": "brand", "key": "nike", "value": 1.0})

    def counted():
        for batch in stream(users, affinities, rows_per_batch=20):
            client.pulled.append(batch.num_rows)
            yield batch

    report = loader.publish(counted())
    assert report.failed == {} and report.document_count == batches * 20
    assert 1 < client.most_running <= 3
    assert sorted(batch for batch, _ in client.sent) == list(range(batches))
    # When the request of batch i started, the encoder had read at most the 2 × 3 requests queued or
    # sending beyond it, plus the one it was encoding: a bounded lead, whatever the length of the stream.
    assert max(read - batch for batch, read in client.sent) <= 2 * 3 + 2


def test_partial_failure_is_retried_then_reported(backend: OpenSearchBackend):
    personas = random_personas(seed=5, n=80)
    # A document the node really refuses: a brand key longer than Lucene's 32766-byte term limit.
    personas["bad-term"] = {"gender": "women", "brand": {"x" * 40_000: 1.0}, "city": {"Tier1": 1.0}}
    # An ext_id longer than OpenSearch's 512-byte _id limit fails a whole _bulk request on the node:
    # it is refused before sending, so that it doesn't take its neighbours down with it.
    personas["i" * 600] = {"gender": "men", "brand": {"nike": 1.0}}
    users, affinities = to_tables(personas)
    retrying = OpenSearchBackend(backend.url, alias=backend.alias, max_retries=2, client=backend.client)
    retrying.retry_backoff = 0.05
    started = time.perf_counter()
    report = retrying.publish(stream(users, affinities))
    assert time.perf_counter() - started >= 0.05 + 0.1  # the back-off was waited out
    assert set(report.failed) == {"bad-term", "i" * 600}
    assert "immense term" in report.failed["bad-term"]
    assert "600 bytes" in report.failed["i" * 600]
    assert report.details["retry_rounds"] == 2
    assert report.details["retried_documents"] == 2
    assert report.document_count == len(personas) - 2 == retrying.document_count()
    hits = retrying.search(SegmentQuery(brand="nike", size=1000), ScoreWeights())
    assert hits.total == len(personas) - 2
    assert not {"bad-term", "i" * 600} & {h.ext_id for h in hits.hits}


def test_too_many_failures_keep_the_live_build(backend: OpenSearchBackend):
    good = random_personas(seed=6, n=30)
    report = backend.publish(stream(*to_tables(good)))
    live = backend.live_index()
    bad = {f"bad{i}": {"gender": "men", "brand": {f"{i}" + "x" * 40_000: 1.0}} for i in range(10)}
    failing = OpenSearchBackend(backend.url, alias=backend.alias, max_retries=1, client=backend.client)
    failing.retry_backoff = 0.01
    with pytest.raises(RuntimeError, match="could not be indexed"):
        failing.publish(stream(*to_tables(good | bad)))
    assert backend.live_index() == live
    assert builds_of(backend) == [live]
    assert backend.document_count() == report.document_count == 30


def test_https_url_parts_configure_the_client(monkeypatch):
    monkeypatch.setenv("PERSONA_OPENSEARCH_VERIFY_CERTS", "false")
    monkeypatch.setenv("PERSONA_OPENSEARCH_CA_CERTS", str(Path("/nonexistent/ca.pem")))
    backend = OpenSearchBackend("https://admin:s%3Acret@search.example:9443", alias="persona_personas")
    connection = backend.client.transport.connection_pool.connections[0]
    assert connection.host == "https://search.example:9443"
    assert connection.headers["authorization"].startswith("Basic ")
    assert "s%3Acret" not in repr(backend) and "***" in repr(backend)
    with pytest.raises(ValueError, match="alias"):
        OpenSearchBackend("http://localhost:9200", alias="Persona")


def test_a_url_listing_several_nodes_gives_a_client_of_them_all():
    backend = OpenSearchBackend(
        "https://u:p%40ss@a.example:9201, https://u:p%40ss@b.example:9202", alias="persona_personas"
    )
    hosts = sorted(c.host for c in backend.client.transport.connection_pool.connections)
    assert hosts == ["https://a.example:9201", "https://b.example:9202"]
    assert backend.client.transport.max_retries == 2  # a request meeting a node gone goes to the other
    assert "p%40ss" not in repr(backend) and repr(backend).count("***") == 2
    with pytest.raises(ValueError, match="same scheme and credentials"):
        OpenSearchBackend("http://a.example:9200,https://b.example:9200")
    with pytest.raises(ValueError, match="several such URLs"):
        OpenSearchBackend("http://a.example:9200,")


def test_a_refresh_into_a_build_of_format_3_adds_the_new_fields_and_lookalikes_ask_for_a_rebuild(
    backend: OpenSearchBackend,
):
    """Builds written before lookalikes (format 3) stay live after an upgrade: a refresh still writes into
    them, and a lookalike search says to rebuild instead of ranking documents without inverse norms."""
    from persona_assets.stores.opensearch_documents import lookalike_mapping
    from persona_assets.stores.search_backend import Centroid, IndexTooOld, LookalikeSearch

    mapping = index_mapping()
    for name in lookalike_mapping()["properties"]:
        del mapping["properties"][name]
    mapping["_meta"] = {"persona_format": 3}
    old = backend.index_name("20260101t000000000000z-abcdef")
    backend.client.indices.create(index=old, body={"mappings": mapping})
    backend.client.index(index=old, id="old", body={"ext_id": "old", "gender": "men", "brand": {"nike": 1.0}})
    backend.client.indices.put_alias(index=old, name=backend.alias)
    users = pd.DataFrame({"ext_id": ["new"], "gender": ["women"]})
    affinities = pd.DataFrame({"ext_id": ["new"], "dimension": ["brand"], "key": ["nike"], "value": [1.0]})
    report = backend.upsert(stream(users, affinities))
    assert report.failed == {} and report.document_count == 2
    fields = backend.client.indices.get_mapping(index=old)[old]["mappings"]
    assert fields["_meta"] == {"persona_format": 3} and "inverse_norm" in fields["properties"]
    centroid = Centroid(keys={"brand": ("nike",)}, weights={"brand": (1.0,)}, coefficients={"brand": (0.35,)})
    with pytest.raises(IndexTooOld, match="persona materialize"):
        backend.lookalikes(LookalikeSearch(centroid=centroid, size=5))
