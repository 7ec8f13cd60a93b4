"""The embedded index against the reference formula, its paging and its build/publish lifecycle."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import write_hand_off

from persona_assets.query import (
    ScoreWeights,
    SegmentQuery,
    gender_passes,
    parse_segment_request,
    score_persona,
)
from persona_assets.stores import embedded_backend
from persona_assets.stores import embedded_build as eb
from persona_assets.stores import embedded_ranking as er
from persona_assets.stores.embedded_backend import EmbeddedBackend, open_index
from persona_assets.stores.embedded_build import current_build_id, list_builds
from persona_assets.stores.embedded_hand_off import build_index_from_hand_off
from persona_assets.stores.persona_stream import persona_batches_from_frames
from persona_assets.stores.search_backend import IndexNotBuiltError

DIMS = ("city", "brand", "generic", "category", "ecomm")
BRANDS = ["nike", "puma", "home centre", "t-shirt co", "adidas"]
GENERICS = ["shoes", "t-shirt", "sofa", "watch"]
CATEGORIES = ["1", "12", "120", "7", "70"]
TIERS = ["Tier1", "Tier2", "Tier3"]
SITES = ["flipkart", "amazon"]


def _random_map(rng: random.Random, keys: list[str]) -> dict[str, float]:
    """Small integer counts normalised to sum 1: few distinct values, so many exact ties."""
    chosen = rng.sample(keys, rng.randint(0, min(3, len(keys))))
    counts = {k: rng.choice([1, 1, 2, 3]) for k in chosen}
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


def _ext_ids(rng: random.Random, n: int) -> list[str]:
    # Code-point order traps: upper before lower, digits before letters, leading zeros, non-ASCII.
    fixed = ["01005", "1005", "Zed", "alice", "Alice", "élan", "zoë", "a b", "a-b", "a_b", "日本"]
    ids = set(fixed)
    while len(ids) < n:
        ids.add("".join(rng.choice("aAbB019é_") for _ in range(rng.randint(1, 6))))
    out = list(ids)
    rng.shuffle(out)
    return out


def random_personas(seed: int, n: int) -> dict[str, dict]:
    rng = random.Random(seed)
    personas = {}
    for ext_id in _ext_ids(rng, n):
        personas[ext_id] = {
            "gender": rng.choice(["men", "women", "unisex"]),
            "city": _random_map(rng, TIERS),
            "brand": _random_map(rng, BRANDS),
            "generic": _random_map(rng, GENERICS),
            "category": _random_map(rng, CATEGORIES),
            "ecomm": _random_map(rng, SITES),
        }
    return personas


def to_tables(personas: dict[str, dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = pd.DataFrame(
        {"ext_id": list(personas), "gender": [p["gender"] for p in personas.values()]},
    )
    rows = [
        (ext_id, dim, key, value)
        for ext_id, persona in personas.items()
        for dim in DIMS
        for key, value in persona[dim].items()
    ]
    affinities = pd.DataFrame(rows, columns=["ext_id", "dimension", "key", "value"])
    return users, affinities


def build_index(users, affinities, directory: Path, *, rows_per_batch: int = 10_000, **options):
    """A build from long tables, through the same persona stream the pipeline uses."""
    return eb.build_index(
        persona_batches_from_frames(users, affinities, rows_per_batch=rows_per_batch), directory, **options
    )


def build_from_hand_off(users, affinities, directory: Path, **options):
    """The same build through the rebuild's hand-off files (DuckDB groups the postings, no persona stream)."""
    directory = Path(directory)
    as_frame = [frame.to_pandas() if isinstance(frame, pa.Table) else frame for frame in (users, affinities)]
    hand_off = write_hand_off(*as_frame, directory.parent / f"{directory.name}-hand-off")
    return build_index_from_hand_off(hand_off, directory, **options)


BUILDERS = {"stream": build_index, "hand-off": build_from_hand_off}


def reference_search(personas: dict[str, dict], query: SegmentQuery, weights: ScoreWeights):
    scored = []
    for ext_id, persona in personas.items():
        if gender_passes(persona["gender"], query):
            score, components = score_persona(persona, query, weights)
            scored.append((-score, ext_id, score, components, persona["gender"]))
    scored.sort(key=lambda t: (t[0], t[1]))  # Python str order is code-point order
    page = scored[query.offset : query.offset + query.size]
    return len(scored), [(ext_id, score, components, gender) for _, ext_id, score, components, gender in page]


def assert_matches_reference(index, personas, query, weights=None):
    weights = weights or ScoreWeights()
    total, expected = reference_search(personas, query, weights)
    got = index.search(query, weights)
    assert got.total == total
    assert [(h.ext_id, h.score, h.components, h.gender) for h in got.hits] == expected


@pytest.fixture(scope="module")
def personas():
    return random_personas(seed=7, n=400)


@pytest.fixture(scope="module")
def index(personas, tmp_path_factory):
    directory = tmp_path_factory.mktemp("index")
    build_index(*to_tables(personas), directory)
    return open_index(directory)


def _random_queries(seed: int, count: int) -> list[dict]:
    rng = random.Random(seed)
    payloads = []
    for _ in range(count):
        payload: dict = {}
        if rng.random() < 0.5:
            payload["gender"] = rng.choice(["men", "women", "unisex", "any"])
        if rng.random() < 0.5:
            payload["cityTier"] = rng.choice([1, 2, 3])
        if rng.random() < 0.5:
            payload["brand"] = rng.choice([*BRANDS, "unknown brand"])
        if rng.random() < 0.5:
            payload["genericName"] = rng.choice([*GENERICS, "unknown generic"])
        for level in (1, 2, 3):
            if rng.random() < 0.3:
                payload[f"level{level}Cat"] = rng.choice([*CATEGORIES, "999", "-1"])
        payload["size"] = rng.choice([0, 1, 5, 20, 100, 1000])
        payload["from"] = rng.choice([0, 0, 3, 17, 390, 500])
        payloads.append(payload)
    return payloads


@pytest.mark.parametrize("payload", _random_queries(seed=11, count=120))
def test_search_equals_reference(index, personas, payload):
    assert_matches_reference(index, personas, parse_segment_request(payload))


@pytest.mark.parametrize("payload", _random_queries(seed=12, count=30))
def test_search_equals_reference_with_custom_weights(index, personas, payload):
    weights = ScoreWeights(city=0.4, brand=0.1, generic=0.25, category=0.25)
    assert_matches_reference(index, personas, parse_segment_request(payload), weights)


@pytest.fixture(scope="module")
def large_personas():
    # Above the size where the top-k selection stops sorting and starts its quickselect.
    return random_personas(seed=3, n=9000)


@pytest.fixture(scope="module")
def large_index(large_personas, tmp_path_factory):
    directory = tmp_path_factory.mktemp("large-index")
    build_index(*to_tables(large_personas), directory)
    return open_index(directory)


@pytest.mark.parametrize("payload", _random_queries(seed=13, count=25))
def test_large_search_equals_reference(large_index, large_personas, payload):
    payload["from"] = random.Random(str(payload)).choice([0, 0, 40, 2990, 8999])
    assert_matches_reference(large_index, large_personas, parse_segment_request(payload))


def test_ranking_settles_city_values_whose_scores_round_equal(tmp_path):
    # Adjacent floats as Tier1 values: 0.15·c + 0.35·0 + 0.2 + 0.3 rounds several of them to one score,
    # so the block tied at the cut spans different city values and must be ordered by ext_id alone.
    rng = random.Random(4)
    base = 0.3
    values = [base]
    for _ in range(40):
        values.append(float(np.nextafter(values[-1], 1.0)))
    personas = {}
    for i in range(300):
        personas[f"u{i:04d}"] = {
            "gender": rng.choice(["men", "women"]),
            "city": {"Tier1": rng.choice(values)} if i % 5 else {},
            "brand": {"nike": 0.5} if i % 37 == 0 else {},
            "generic": {},
            "category": {},
            "ecomm": {},
        }
    build_index(*to_tables(personas), tmp_path)
    index = open_index(tmp_path)
    weights = ScoreWeights()
    scores = {score_persona(p, SegmentQuery(city_tier="Tier1", brand="nike"), weights)[0] for p in personas.values()}
    cities = {p["city"].get("Tier1") for p in personas.values()}
    assert len(scores) < len(cities)  # the collision this test is about really happens
    for gender in (None, "men"):
        for offset, size in [(0, 1), (0, 20), (3, 17), (100, 50), (0, 300)]:
            query = SegmentQuery(city_tier="Tier1", brand="nike", gender=gender, offset=offset, size=size)
            assert_matches_reference(index, personas, query, weights)


def _distributions(n: int):
    rng = np.random.default_rng(5)
    r = rng.random(n)
    yield rng.random(n)
    yield np.full(n, 0.5)
    yield rng.integers(0, 5, n) / 4.0
    yield np.where(r < 0.05, rng.random(n), 0.0)  # most at the bottom
    yield np.where(r < 0.05, rng.random(n), 1.0)  # most at the top
    yield np.where(r < 0.01, 2.0, np.where(r < 0.9, 1.0, 0.0))  # a big block just below a few
    yield np.sort(np.where(r < 0.05, rng.random(n), 0.0))
    yield np.sort(rng.random(n))[::-1].copy()


@pytest.mark.parametrize("n", [10, 5000, 50_000])
@pytest.mark.parametrize("k", [1, 7, 20, 1000, 4999])
def test_kth_largest(n, k):
    if k > n:
        k = n
    for values in _distributions(n):
        assert er.kth_largest(values, k) == np.sort(values)[n - k]


def _random_postings(rng: np.random.Generator, n: int, share: float, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ascending holding a key, with values from few levels (so scores tie often)."""
    rows = np.flatnonzero(rng.random(n) < share).astype(np.int32)
    return rows, rng.integers(0, levels + 1, rows.size) / levels


@pytest.mark.parametrize("seed", range(12))
def test_best_candidates_equal_scoring_every_candidate_and_sorting(seed):
    # The compiled merge-and-heap against the plain definition: score every row holding an asked key
    # in the formula's order, sort by (score descending, row ascending), take k.
    rng = np.random.default_rng(seed)
    n = int(rng.choice([1, 50, 3000]))
    dims = [
        _random_postings(rng, n, float(rng.choice([0.0, 0.01, 0.3, 1.0])), int(rng.choice([1, 4, 1000])))
        if rng.random() < 0.7
        else None
        for _ in range(3)
    ]
    asked = er.AskedPostings(*dims)
    weights = (0.15, 0.35, 0.2, 0.3)
    city = rng.integers(0, 3, n) / 2.0 if rng.random() < 0.5 else 1 / 3
    passing = rng.random(n) < 0.6 if rng.random() < 0.5 else None
    candidates = np.unique(np.concatenate([rows for rows, _ in asked.given] or [np.empty(0, np.int32)]))
    if passing is not None:
        candidates = candidates[passing[candidates]]
    score = weights[0] * (city[candidates] if isinstance(city, np.ndarray) else city)
    for weight, posting in zip(weights[1:], dims, strict=True):
        if posting is None:
            score = score + weight * 1.0
        else:
            values = np.zeros(n)
            values[posting[0]] = posting[1]
            score = score + weight * values[candidates]
    order = np.lexsort((candidates, -score))
    for k in (0, 1, 5, 100, n + 10):
        rows, scores = er.best_candidates(asked, weights, city, passing, k)
        assert rows.tolist() == candidates[order][:k].tolist()
        assert scores.tobytes() == score[order][:k].tobytes()  # the same floats, bit for bit
    assert er.AskedPostings(*dims).holds(np.arange(n)).tolist() == [
        any(posting is not None and row in set(posting[0].tolist()) for posting in dims) for row in range(n)
    ]


def test_ties_break_by_ext_id_in_code_point_order(index, personas):
    # No criterion: every persona has the same score, so the order is the ext_id order alone.
    result = index.search(SegmentQuery(size=1000))
    assert [h.ext_id for h in result.hits] == sorted(personas)
    assert len({h.score for h in result.hits}) == 1
    # Ties cut by the page boundary: the page must hold the lowest ext_ids among the equal scores.
    for offset, size in [(0, 1), (0, 7), (5, 3), (399, 5)]:
        page = index.search(SegmentQuery(size=size, offset=offset)).hits
        assert [h.ext_id for h in page] == sorted(personas)[offset : offset + size]


def test_gender_filter_sets_total(index, personas):
    for gender in ("men", "women"):
        result = index.search(SegmentQuery(gender=gender, size=1000))
        expected = sorted(e for e, p in personas.items() if p["gender"] == gender)
        assert result.total == len(expected)
        assert sorted(h.ext_id for h in result.hits) == expected
        assert {h.gender for h in result.hits} == {gender}
    assert index.search(SegmentQuery(size=0)).total == len(personas)


def test_offset_and_size(index, personas):
    query = parse_segment_request({"brand": "nike", "cityTier": "tier 1"})
    full = index.search(SegmentQuery(brand="nike", city_tier="Tier1", size=1000)).hits
    assert len(full) == len(personas)
    for offset, size in [(0, 20), (20, 20), (390, 20), (0, 0), (400, 10), (9_990, 10)]:
        page = index.search(SegmentQuery(brand=query.brand, city_tier=query.city_tier, size=size, offset=offset))
        assert page.total == len(personas)
        assert page.hits == full[offset : offset + size]


def test_missing_key_and_unknown_names_score_zero(tmp_path):
    users = pd.DataFrame({"ext_id": ["u1", "u2"], "gender": ["men", "women"]})
    affinities = pd.DataFrame(
        {
            "ext_id": ["u1", "u1", "u1"],
            "dimension": ["brand", "city", "category"],
            "key": ["nike", "Tier1", "12"],
            "value": [1.0, 1.0, 1.0],
        }
    )
    build_index(users, affinities, tmp_path)
    index = open_index(tmp_path)

    hits = {h.ext_id: h for h in index.search(SegmentQuery(brand="nike")).hits}
    assert hits["u1"].components["B"] == 1.0
    assert hits["u2"].components["B"] == 0.0  # u2 has no brand map at all
    assert hits["u2"].score == pytest.approx(0.15 / 3 + 0.20 + 0.30)

    query = parse_segment_request({"brand": "Not A Brand", "genericName": "nothing", "level3Cat": 424242})
    result = index.search(query)
    assert result.total == 2
    for hit in result.hits:
        assert (hit.components["B"], hit.components["G"], hit.components["K"]) == (0.0, 0.0, 0.0)
        assert hit.score == pytest.approx(0.15 / 3)
    assert [h.ext_id for h in result.hits] == ["u1", "u2"]

    hits = {h.ext_id: h for h in index.search(SegmentQuery(city_tier="Tier2")).hits}
    assert hits["u1"].components["C"] == 0.0


def test_empty_index(tmp_path):
    users = pd.DataFrame({"ext_id": pd.Series([], dtype=str), "gender": pd.Series([], dtype=str)})
    affinities = pd.DataFrame(
        {
            "ext_id": pd.Series([], dtype=str),
            "dimension": pd.Series([], dtype=str),
            "key": pd.Series([], dtype=str),
            "value": pd.Series([], dtype=float),
        }
    )
    build = build_index(users, affinities, tmp_path)
    assert (build.document_count, build.posting_count) == (0, 0)
    result = open_index(tmp_path).search(SegmentQuery(brand="nike", gender="men"))
    assert (result.total, result.hits) == (0, [])


def test_accepts_pyarrow_tables(tmp_path, personas):
    users, affinities = to_tables(personas)
    build = build_index(pa.Table.from_pandas(users), pa.Table.from_pandas(affinities), tmp_path)
    assert build.document_count == len(personas)
    assert build.posting_count == len(affinities)
    assert_matches_reference(open_index(tmp_path), personas, SegmentQuery(brand="puma", size=50))


@pytest.mark.parametrize(
    ("users", "affinities", "message"),
    [
        ({"ext_id": ["a", "a"], "gender": ["men", "men"]}, None, "duplicate ext_id 'a'"),
        ({"ext_id": ["a"], "gender": ["male"]}, None, "gender 'male'"),
        ({"ext_id": ["a"]}, None, "missing column"),
        (
            None,
            {"ext_id": ["zz"], "dimension": ["brand"], "key": ["nike"], "value": [1.0]},
            "is not in users",
        ),
        (
            None,
            {"ext_id": ["a"], "dimension": ["colour"], "key": ["red"], "value": [1.0]},
            "dimension 'colour'",
        ),
        (
            None,
            {"ext_id": ["a", "a"], "dimension": ["brand"] * 2, "key": ["nike"] * 2, "value": [0.5, 0.5]},
            "duplicate",
        ),
        (None, {"ext_id": ["a"], "dimension": ["brand"], "key": ["nike"], "value": [float("inf")]}, "finite"),
        (None, {"ext_id": ["a"], "dimension": ["brand"], "key": ["nike"], "value": [-0.5]}, "finite"),
        (None, {"ext_id": ["a"], "dimension": ["brand"], "key": ["nike"], "value": [float("nan")]}, "null"),
        (
            None,
            {"ext_id": ["a"], "dimension": ["brand"], "key": [None], "value": [1.0]},
            "'key' holds null",
        ),
    ],
)
@pytest.mark.parametrize("builder", list(BUILDERS))
def test_bad_input_is_rejected_and_nothing_is_published(tmp_path, users, affinities, message, builder):
    users = pd.DataFrame(users or {"ext_id": ["a"], "gender": ["men"]})
    affinities = pd.DataFrame(affinities or {"ext_id": [], "dimension": [], "key": [], "value": []})
    if builder == "hand-off":
        affinities = affinities.astype({"ext_id": str, "dimension": str, "value": float})
    with pytest.raises(ValueError, match=message):
        BUILDERS[builder](users, affinities, tmp_path / "index")
    assert current_build_id(tmp_path) is None


# --------------------------------------------------------------------------- lifecycle


def _tiny(version: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = pd.DataFrame({"ext_id": [f"v{version}-a", f"v{version}-b"], "gender": ["men", "women"]})
    affinities = pd.DataFrame({"ext_id": [f"v{version}-a"], "dimension": ["brand"], "key": ["nike"], "value": [1.0]})
    return users, affinities


def test_open_with_no_build_is_a_clear_error(tmp_path):
    with pytest.raises(IndexNotBuiltError, match="no embedded index build") as info:
        open_index(tmp_path / "never-built")
    assert "never-built" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotBuiltError):
        open_index(tmp_path / "empty")


def test_open_index_is_cached_per_build(tmp_path):
    build_index(*_tiny(1), tmp_path)
    first = open_index(tmp_path)
    assert open_index(tmp_path) is first
    second_build = build_index(*_tiny(2), tmp_path)
    second = open_index(tmp_path)
    assert second is not first
    assert second.build_id == second_build.build_id
    assert [h.ext_id for h in second.search(SegmentQuery(brand="nike")).hits] == ["v2-a", "v2-b"]


def test_pointer_switch_is_atomic_and_old_build_stays_readable(tmp_path, monkeypatch):
    old = build_index(*_tiny(1), tmp_path)
    old_index = open_index(tmp_path)
    seen = {}
    real_switch = eb._switch_pointer

    def observing_switch(index_dir: Path, build_id: str) -> None:
        # The new build is complete on disk, but readers still get the old one.
        seen["new_build_complete"] = (index_dir / "builds" / build_id / "manifest.json").is_file()
        seen["pointer_before"] = current_build_id(index_dir)
        seen["reader_before"] = [h.ext_id for h in open_index(index_dir).search(SegmentQuery()).hits]
        real_switch(index_dir, build_id)
        seen["pointer_after"] = current_build_id(index_dir)

    monkeypatch.setattr(eb, "_switch_pointer", observing_switch)
    new = build_index(*_tiny(2), tmp_path)

    assert seen == {
        "new_build_complete": True,
        "pointer_before": old.build_id,
        "reader_before": ["v1-a", "v1-b"],
        "pointer_after": new.build_id,
    }
    assert [h.ext_id for h in open_index(tmp_path).search(SegmentQuery()).hits] == ["v2-a", "v2-b"]
    # A reader holding the old build keeps answering from memory.
    assert [h.ext_id for h in old_index.search(SegmentQuery()).hits] == ["v1-a", "v1-b"]
    pointer = json.loads((tmp_path / "CURRENT").read_text())
    assert pointer["build_id"] == new.build_id
    assert not list(tmp_path.glob(".CURRENT*"))  # no temp pointer left behind


def test_failed_build_leaves_the_published_build_untouched(tmp_path, monkeypatch):
    old = build_index(*_tiny(1), tmp_path)
    real_write = eb.pq.write_table

    def failing_write(table, where, *args, **kwargs):
        if str(where).endswith("postings.parquet"):
            raise OSError("disk full")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(eb.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        build_index(*_tiny(2), tmp_path)
    assert current_build_id(tmp_path) == old.build_id
    assert list_builds(tmp_path) == [old.build_id]
    assert [p.name for p in (tmp_path / "builds").iterdir()] == [old.build_id]  # temp dir removed
    assert [h.ext_id for h in open_index(tmp_path).search(SegmentQuery()).hits] == ["v1-a", "v1-b"]


def test_old_builds_beyond_keep_builds_are_removed(tmp_path):
    builds = [build_index(*_tiny(i), tmp_path, keep_builds=2) for i in range(4)]
    assert list_builds(tmp_path) == [builds[2].build_id, builds[3].build_id]
    assert sorted(p.name for p in (tmp_path / "builds").iterdir()) == [builds[2].build_id, builds[3].build_id]
    assert current_build_id(tmp_path) == builds[3].build_id
    build_index(*_tiny(9), tmp_path, keep_builds=1)
    assert list_builds(tmp_path) == [current_build_id(tmp_path)]
    with pytest.raises(ValueError, match="keep_builds"):
        build_index(*_tiny(10), tmp_path, keep_builds=0)


def test_pruning_never_removes_the_published_build(tmp_path, monkeypatch):
    first = build_index(*_tiny(1), tmp_path)
    # Another writer published `first` again after newer builds were made (e.g. a rollback).
    for i in range(2, 4):
        build_index(*_tiny(i), tmp_path, keep_builds=3)
    eb._switch_pointer(tmp_path, first.build_id)
    eb._prune_builds(tmp_path, keep_builds=1)
    assert first.build_id in list_builds(tmp_path)
    assert open_index(tmp_path).build_id == first.build_id


# --------------------------------------------------------------------------- streams and upserts


def _answers(index, queries):
    return [[(h.ext_id, h.score, h.components, h.gender) for h in index.search(q).hits] for q in queries]


_UPSERT_QUERIES = [
    parse_segment_request(payload | {"size": 1000}) for payload in _random_queries(seed=21, count=40)
] + [SegmentQuery(brand="brand new", size=50), SegmentQuery(category_id="70", category_level=2, size=1000)]


def test_a_stream_of_many_batches_builds_the_same_index(personas, index, tmp_path):
    build_index(*to_tables(personas), tmp_path, rows_per_batch=7)
    assert _answers(open_index(tmp_path), _UPSERT_QUERIES) == _answers(index, _UPSERT_QUERIES)


@pytest.mark.parametrize("delta_share", [0.0, 1.0], ids=["merged-into-a-new-base", "delta"])
def test_upsert_equals_a_rebuild_of_the_result(personas, tmp_path, monkeypatch, delta_share):
    monkeypatch.setattr(EmbeddedBackend, "delta_share", delta_share)
    backend = EmbeddedBackend(tmp_path / "upserted")
    backend.publish(persona_batches_from_frames(*to_tables(personas), rows_per_batch=50))
    rng = random.Random(4)
    names = sorted(personas)
    changed = {
        ext_id: next(iter(random_personas(seed=i, n=1).values())) for i, ext_id in enumerate(rng.sample(names, 30))
    }
    changed[names[0]] = {
        "gender": "men",
        "city": {},
        "brand": {"brand new": 1.0},
        "generic": {},
        "category": {},
        "ecomm": {},
    }
    added = {f"new-{i}": persona for i, persona in enumerate(random_personas(seed=99, n=15).values())}
    added["~last"] = {
        "gender": "women",
        "city": {"Tier2": 1.0},
        "brand": {"brand new": 0.5, "nike": 0.5},
        "generic": {},
        "category": {"70": 1.0},
        "ecomm": {},
    }
    removed = rng.sample([n for n in names if n not in changed], 10)
    # Every persona holding category 70 is removed or changed: the key must vanish, then come back with "~last".
    holders = [n for n in names if "70" in personas[n]["category"] and n not in removed]
    for ext_id in holders:
        changed[ext_id] = {**personas[ext_id], "category": {}}

    report = backend.upsert(persona_batches_from_frames(*to_tables(changed | added), rows_per_batch=9), removed)

    expected = {k: v for k, v in personas.items() if k not in removed} | changed | added
    assert report.document_count == len(expected)
    build_index(*to_tables(expected), tmp_path / "rebuilt")
    rebuilt, upserted = open_index(tmp_path / "rebuilt"), open_index(tmp_path / "upserted")
    assert upserted.document_count == len(expected)
    if delta_share == 0.0:
        # Merged: the same layout, array for array, as a build of the result from scratch.
        assert upserted.delta is None
        merged, fresh = upserted.base, rebuilt.base
        assert merged.ext_ids.equals(fresh.ext_ids)
        assert np.array_equal(merged.gender_codes, fresh.gender_codes)
        assert np.array_equal(merged.rows, fresh.rows) and np.array_equal(merged.values, fresh.values)
        for field in ("dimension", "key", "start", "end"):
            assert np.array_equal(getattr(merged.key_slices, field), getattr(fresh.key_slices, field)), field
    else:
        assert upserted.delta is not None and upserted.delta.document_count == len(changed | added)
    assert "brand new" in upserted.keys("brand") and "70" in upserted.keys("category")
    assert _answers(upserted, _UPSERT_QUERIES) == _answers(rebuilt, _UPSERT_QUERIES)
    for query in _UPSERT_QUERIES[:10]:
        assert_matches_reference(upserted, expected, query)


def test_upserts_in_a_row_stay_exact_and_leave_the_base_alone(personas, tmp_path, monkeypatch):
    """Deltas over deltas (users changed twice, removed then back, added), then one merged into a new base:
    after each, every answer equals the reference over what the index should hold."""
    monkeypatch.setattr(EmbeddedBackend, "delta_share", 0.5)  # three deltas of ~20 users over 400 stay deltas
    backend = EmbeddedBackend(tmp_path)
    backend.publish(persona_batches_from_frames(*to_tables(personas)))
    base_id = current_build_id(tmp_path)
    first_view = open_index(tmp_path)
    read = []
    real_read_build = embedded_backend.read_build
    monkeypatch.setattr(embedded_backend, "read_build", lambda d, b: read.append(b) or real_read_build(d, b))
    rng = random.Random(8)
    names = sorted(personas)
    expected = dict(personas)
    for step in range(4):
        changed = {n: next(iter(random_personas(seed=100 + step * 50 + i, n=1).values())) for i, n in
                   enumerate(rng.sample(names[:60], 12))}  # fmt: skip
        added = {f"add-{step}-{i}": p for i, p in enumerate(random_personas(seed=500 + step, n=4).values())}
        removed = rng.sample(sorted(set(expected) - set(changed)), 5)
        if step == 3:
            monkeypatch.setattr(EmbeddedBackend, "delta_share", 0.0)  # this one is merged into a new base
        report = backend.upsert(persona_batches_from_frames(*to_tables(changed | added)), removed)
        expected = {k: v for k, v in expected.items() if k not in removed} | changed | added
        assert report.document_count == len(expected)
        view = open_index(tmp_path)
        if step < 3:
            assert base_id not in read  # a delta never reads its base's postings
            assert view.base is first_view.base  # and a reader keeps the base it has loaded
        else:
            assert view.delta is None and view.build_id != base_id
        for query in _UPSERT_QUERIES[:20]:
            assert_matches_reference(view, expected, query)
        assert view.document_count == len(expected)
        with monkeypatch.context() as patched:  # the count comes from the live build's manifest alone
            patched.setattr(embedded_backend, "open_index", lambda _: pytest.fail("document_count loaded the index"))
            assert backend.document_count() == len(expected)


def test_upsert_with_nothing_new_only_removes(personas, tmp_path):
    backend = EmbeddedBackend(tmp_path)
    backend.publish(persona_batches_from_frames(*to_tables(personas)))
    gone = sorted(personas)[:3]
    backend.upsert(persona_batches_from_frames(*to_tables({})), removed=gone)
    assert open_index(tmp_path).document_count == len(personas) - 3
    assert not set(gone) & {h.ext_id for h in open_index(tmp_path).search(SegmentQuery(size=1000)).hits}


def test_upsert_before_any_build_is_a_clear_error(tmp_path):
    with pytest.raises(IndexNotBuiltError):
        EmbeddedBackend(tmp_path).upsert(persona_batches_from_frames(*_tiny(1)))
