"""Saved segments' members (issue 10, item 2): the rule, the full computation after a rebuild, a refresh
that moves only the users it refreshed, the history, the sensor that keeps one partition per segment, and
the CLI and HTTP doors. Expected members are computed here by hand from the exported personas with the
contract's formula, independently of the code under test."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
from conftest import Pipeline, refresh_everything, shop_with_change
from dagster import SensorResult, SkipReason, build_sensor_context

from persona_assets.audiences.definitions import parse_segment_definition
from persona_assets.audiences.membership import Cutoff, MemberScan, parse_history_window
from persona_assets.query.request import InvalidRequest
from persona_assets.query.scoring import ScoreWeights

contract = pytest.mark.contract
WEIGHTS = ScoreWeights()


def saved(membership: dict, **query: object):
    return parse_segment_definition({"name": "s", "query": query, "membership": membership})


def row(ext_id: str, gender: str = "men", brand: dict | None = None, city: dict | None = None):
    maps = {"brand_affinity": json.dumps(brand or {}), "city": json.dumps(city or {})}
    return ext_id, gender, {**maps, "generic_affinity": "{}", "category_affinity": "{}"}


# --------------------------------------------------------------------------- the rule (pure)


def test_top_n_keeps_the_best_and_breaks_ties_by_ext_id_as_the_query_orders():
    scan = MemberScan(saved({"top": 2}, brand="boat"), WEIGHTS)
    # B = boat's share of the brand map: a 1.0, b 0.5, c 0.5, d 0.5, e 0 (no brand map)
    for ext_id, brand in [
        ("a", {"boat": 2}),
        ("b", {"boat": 1, "x": 1}),
        ("c", {"boat": 3, "y": 3}),
        ("d", {"boat": 1, "z": 1}),
        ("e", {}),
    ]:
        scan.add(row(ext_id, brand=brand))
    members, cutoff = scan.result()
    assert members == ["a", "b"]
    assert cutoff == Cutoff(0.15 / 3 + 0.35 * 0.5 + 0.20 + 0.30, "b")
    assert cutoff.admits(cutoff.score, "b") and cutoff.admits(cutoff.score, "a")
    assert not cutoff.admits(cutoff.score, "c") and cutoff.admits(cutoff.score + 1e-9, "z")


def test_min_score_is_exact_and_the_gender_filter_applies():
    segment = saved({"minScore": 0.15 / 3 + 0.35 * 0.5 + 0.20 + 0.30}, brand="boat", gender="men")
    scan = MemberScan(segment, WEIGHTS)
    scan.add(row("a", brand={"boat": 1, "x": 1}))  # exactly the threshold: in
    scan.add(row("b", brand={"boat": 1, "x": 2}))  # below: out
    scan.add(row("c", gender="women", brand={"boat": 1}))  # fails the gender filter
    scan.add(row("d", brand={"boat": 5}))
    assert scan.result() == (["a", "d"], Cutoff())


def test_fewer_personas_than_top_leaves_no_cutoff_and_the_scan_wants_ext_id_order():
    scan = MemberScan(saved({"top": 10}, cityTier="Tier1"), WEIGHTS)
    scan.add(row("b", city={"Tier1": 1}))
    scan.add(row("c"))
    assert scan.result() == (["b", "c"], Cutoff())
    with pytest.raises(ValueError, match="ascending ext_id order"):
        scan.add(row("a"))


@pytest.mark.parametrize(
    ("since", "limit", "field"),
    [
        ("yesterday", 5, "since"),
        ("2026-12-01T00:00:00", 5, "since"),
        (None, 0, "limit"),
        (None, "x", "limit"),
        (None, 10_001, "limit"),
    ],
)
def test_a_bad_history_window_names_its_field(since, limit, field):
    with pytest.raises(InvalidRequest) as raised:
        parse_history_window(since, limit)
    assert raised.value.field == field


# --------------------------------------------------------------------------- end to end, on the backend pair


def expected_scores(personas: dict[str, dict], query: dict) -> dict[str, float]:
    """The contract formula over exported personas, for personas passing the gender filter."""
    scores = {}
    for ext_id, persona in personas.items():
        if "gender" in query and persona["gender"] != query["gender"]:
            continue
        c = persona["city"].get(query["cityTier"], 0.0) if "cityTier" in query else 1 / 3
        b = persona["brand_affinity"].get(query["brand"], 0.0) if "brand" in query else 1.0
        scores[ext_id] = 0.15 * c + 0.35 * b + 0.20 * 1.0 + 0.30 * 1.0
    return scores


def expected_top(scores: dict[str, float], n: int) -> list[str]:
    return sorted(sorted(scores, key=lambda ext_id: (-scores[ext_id], ext_id))[:n])


def commonest_brand(personas: dict[str, dict]) -> str:
    counts = Counter(brand for persona in personas.values() for brand in persona["brand_affinity"])
    return counts.most_common(1)[0][0]


def members_of(pipeline: Pipeline, name: str) -> list[str]:
    from persona_assets.stores.audience_tables import segment_members
    from persona_assets.stores.relational import read_frame

    frame = read_frame(pipeline.engine, segment_members)
    return sorted(frame.loc[frame["segment"] == name, "ext_id"])


def history(pipeline: Pipeline, name: str, *extra: str) -> list[dict]:
    return [json.loads(line) for line in pipeline.check("segment", "history", name, *extra).splitlines()]


def membership_sensor_tick(pipeline: Pipeline):
    from persona_assets.pipeline import dagster_instance
    from persona_assets.resources import resources_from_settings
    from persona_assets.sensors import segment_membership_sensor

    with pipeline.env(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        instance = dagster_instance(pipeline.settings)
        context = build_sensor_context(instance=instance, resources=resources_from_settings(pipeline.settings))
        return segment_membership_sensor(context), instance


def rebuilt(root: Path, data: Path) -> Pipeline:
    """A home with ``data`` imported and the full rebuild materialised."""
    pipeline = Pipeline(root)
    pipeline.import_dir(data)
    pipeline.materialize()
    return pipeline


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> tuple[Path, Path]:
    return shop_with_change(tmp_path_factory.mktemp("membership-data"), changed_users=60)


@contract
def test_members_follow_the_rebuild_and_a_refresh_moves_only_the_users_it_refreshed(tmp_path, shop):
    base, change = shop
    pipeline = rebuilt(tmp_path, base)
    before = pipeline.export()
    # The change's visits are all to a Tier1 pincode: their shoppers' city maps move.
    top_query = {"brand": commonest_brand(before), "cityTier": "Tier1"}
    scores = expected_scores(before, top_query)
    threshold_query = {"gender": "men", "cityTier": "Tier1"}
    threshold_scores = expected_scores(before, threshold_query)
    min_score = sorted(threshold_scores.values())[len(threshold_scores) // 2]  # about half of the men

    pipeline.check(
        "segment",
        "save",
        "top-brand-tier1",
        "--definition",
        json.dumps({"query": top_query, "membership": {"top": 40}}),
    )
    pipeline.check(
        "segment",
        "save",
        "men-tier1",
        "--definition",
        json.dumps({"query": threshold_query, "membership": {"minScore": min_score}}),
    )
    out = pipeline.check("segment", "compute")
    assert out == ""  # progress goes to stderr; stdout stays for data

    top_members = members_of(pipeline, "top-brand-tier1")
    assert top_members == expected_top(scores, 40)
    # The query's own answer on this backend pair agrees: the same 40, ranked.
    answer = pipeline.query({**top_query, "size": 40})
    assert sorted(hit["ext_id"] for hit in answer["results"]) == top_members
    threshold_members = members_of(pipeline, "men-tier1")
    assert threshold_members == sorted(e for e, s in threshold_scores.items() if s >= min_score)
    assert 0 < len(threshold_members) < len(threshold_scores)
    [first] = history(pipeline, "men-tier1")
    assert first | {"computedAt": None} == {
        "computedAt": None,
        "kind": "full",
        "members": len(threshold_members),
        "entered": len(threshold_members),
        "exited": 0,
    }

    # A second full computation over the same personas changes nothing.
    pipeline.check("segment", "compute", "top-brand-tier1")
    assert [run["entered"] + run["exited"] for run in history(pipeline, "top-brand-tier1")] == [0, 40]

    # The change adds visits of 60 shoppers in a Tier1 city; the sensor's refresh recomputes the flagged users.
    pipeline.import_dir(change)
    # The import replaces that day's visits, so the refresh recomputes everyone it flags, not only those 60.
    refreshed = {ext_id for ext_id, flag in pipeline.flags().items() if flag != 0}
    assert refresh_everything(pipeline) == [True]
    after = pipeline.export()
    new_scores = expected_scores(after, top_query)
    # The cutoff: the 40th in the query's order at the last full computation.
    ranked = sorted(scores, key=lambda e: (-scores[e], e))
    cutoff = Cutoff(scores[ranked[39]], ranked[39])
    expected_after = sorted(
        {m for m in top_members if m not in refreshed}
        | {e for e in refreshed if e in new_scores and cutoff.admits(new_scores[e], e)}
    )
    assert members_of(pipeline, "top-brand-tier1") == expected_after
    assert set(expected_after) != set(top_members), "the change moved nobody: the test would prove nothing"
    newest = history(pipeline, "top-brand-tier1")[0]
    entered = sorted(set(expected_after) - set(top_members))
    exited = sorted(set(top_members) - set(expected_after))
    assert (newest["kind"], newest["entered"], newest["exited"], newest["members"]) == (
        "refresh",
        len(entered),
        len(exited),
        len(expected_after),
    )
    changes = history(pipeline, "top-brand-tier1", "--changes", "--since", newest["computedAt"])
    assert sorted(c["ext_id"] for c in changes if c["change"] == "entered") == entered
    assert sorted(c["ext_id"] for c in changes if c["change"] == "exited") == exited
    # minScore is exact for the refreshed users too; nobody else moved.
    new_threshold = expected_scores(after, threshold_query)
    assert members_of(pipeline, "men-tier1") == sorted(
        {m for m in threshold_members if m not in refreshed}
        | {e for e in refreshed if new_threshold.get(e, -1.0) >= min_score}
    )

    # The next rebuild restores exactly the top 40 of everyone.
    pipeline.materialize()
    assert members_of(pipeline, "top-brand-tier1") == expected_top(new_scores, 40)


@contract
def test_the_sensor_keeps_one_partition_per_saved_segment_and_requests_stale_ones(computed):
    pipeline, _, queries = computed  # its segments are computed: the sensor leaves them alone
    computed_names = sorted(queries)
    pipeline.check("segment", "save", "a", "--definition", json.dumps({"query": {}, "membership": {"top": 5}}))
    result, instance = membership_sensor_tick(pipeline)
    assert isinstance(result, SensorResult)
    assert [request.partition_key for request in result.run_requests] == ["a"]
    assert sorted(instance.get_dynamic_partitions("saved_segments")) == ["a", *computed_names]

    pipeline.check("segment", "compute", "a")
    result, _ = membership_sensor_tick(pipeline)
    assert isinstance(result, SkipReason), result

    # A replaced definition is stale; a deleted segment loses its partition.
    pipeline.check(
        "segment", "save", "a", "--replace", "--definition", json.dumps({"query": {}, "membership": {"top": 6}})
    )
    pipeline.check("segment", "save", "b", "--definition", json.dumps({"query": {}, "membership": {"top": 1}}))
    pipeline.check("segment", "delete", "a")
    result, instance = membership_sensor_tick(pipeline)
    assert [request.partition_key for request in result.run_requests] == ["b"]
    assert sorted(instance.get_dynamic_partitions("saved_segments")) == ["b", *computed_names]
    pipeline.check("segment", "save", "a", "--definition", json.dumps({"query": {}, "membership": {"top": 6}}))
    result, _ = membership_sensor_tick(pipeline)
    assert sorted(request.partition_key for request in result.run_requests) == ["a", "b"]

    # The materialisations carry what the UI plots.
    pipeline.check("segment", "compute", "a")
    from dagster import AssetKey

    event = instance.get_latest_materialization_event(AssetKey("segment_members"))
    metadata = {key: value.value for key, value in event.asset_materialization.metadata.items()}
    assert (event.asset_materialization.partition, metadata["members"], metadata["entered"], metadata["exited"]) == (
        "a",
        6,
        6,
        0,
    )
    for name in ("a", "b"):  # the home is shared with the export tests
        pipeline.check("segment", "delete", name)


# --------------------------------------------------------------------------- export and overlap


def test_home_tier_is_the_largest_share_and_the_better_tier_on_a_tie():
    from persona_assets.stores.search_backend import home_tier

    assert home_tier({"Tier2": 0.6, "Tier1": 0.4}) == "Tier2"
    assert home_tier({"Tier3": 0.5, "Tier2": 0.5}) == "Tier2"
    assert home_tier({}) is None


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_an_export_encoded_in_chunks_reads_back_whole(tmp_path, fmt):
    from persona_assets.audiences.export import encode

    records = [
        (f"U{i:03}", i / 7, 1 / 3, i / 11, 1.0, 1.0, "men" if i % 2 else "women", "Tier1" if i % 3 else None)
        for i in range(25)
    ]
    chunks = [records[i : i + 10] for i in range(0, 25, 10)]
    path = tmp_path / f"out.{fmt}"
    path.write_bytes(b"".join(encode(iter(chunks), fmt)))
    assert read_export(path) == [
        {"ext_id": r[0], "score": r[1], "C": r[2], "B": r[3], "G": r[4], "K": r[5], "gender": r[6], "city_tier": r[7]}
        for r in records
    ]


def test_an_export_file_must_be_named_by_its_format():
    from persona_assets.audiences.export import format_of_path

    with pytest.raises(InvalidRequest, match=r"\.csv, \.parquet or \.jsonl") as raised:
        format_of_path(Path("members.xlsx"))
    assert raised.value.field == "file"
    assert format_of_path(Path("members.PARQUET")) == "parquet"


def read_export(path: Path) -> list[dict]:
    """An export file's rows as dicts of the CSV/Parquet columns, whatever its format."""
    import csv

    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [
            {
                "ext_id": r["ext_id"],
                "score": r["score"],
                **r["components"],
                "gender": r["gender"],
                "city_tier": r["cityTier"],
            }
            for r in rows
        ]
    with path.open(encoding="utf-8", newline="") as handle:
        return [
            {**row, **{k: float(row[k]) for k in ("score", "C", "B", "G", "K")}, "city_tier": row["city_tier"] or None}
            for row in csv.DictReader(handle)
        ]


@pytest.fixture(scope="module")
def computed(tmp_path_factory, shop):
    """A rebuilt shop with two computed segments: the top 40 of its commonest brand in Tier1, and the men
    scoring at least the median for Tier1; (pipeline, personas, {name: query})."""
    base, _ = shop
    pipeline = rebuilt(tmp_path_factory.mktemp("membership-export"), base)
    personas = pipeline.export()
    queries = {
        "top-brand": {"brand": commonest_brand(personas), "cityTier": "Tier1"},
        "men-tier1": {"gender": "men", "cityTier": "Tier1"},
    }
    scores = expected_scores(personas, queries["men-tier1"])
    rules = {"top-brand": {"top": 40}, "men-tier1": {"minScore": sorted(scores.values())[len(scores) // 2]}}
    for name, query in queries.items():
        pipeline.check("segment", "save", name, "--definition", json.dumps({"query": query, "membership": rules[name]}))
    pipeline.check("segment", "compute")
    return pipeline, personas, queries


@contract
@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_export_writes_every_member_with_score_components_gender_and_tier(tmp_path, computed, fmt):
    from persona_assets.stores.search_backend import home_tier

    pipeline, personas, queries = computed
    for name, query in queries.items():
        target = tmp_path / f"{name}.{fmt}"
        pipeline.check("segment", "export", name, target)
        rows = read_export(target)
        members = members_of(pipeline, name)
        assert [row["ext_id"] for row in rows] == members and members
        scores = expected_scores(personas, query)
        for row in rows:
            persona = personas[row["ext_id"]]
            assert row["score"] == pytest.approx(scores[row["ext_id"]], rel=1e-12, abs=0)
            assert row["C"] == pytest.approx(persona["city"].get("Tier1", 0.0), rel=1e-12, abs=0)
            assert (row["G"], row["K"], row["gender"]) == (1.0, 1.0, persona["gender"])
            assert row["city_tier"] == home_tier(persona["city"])
        if "brand" in query:
            assert all(
                row["B"] == pytest.approx(personas[row["ext_id"]]["brand_affinity"].get(query["brand"], 0.0))
                for row in rows
            )
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


@contract
def test_overlap_export_and_history_over_http_match_the_command_line(tmp_path, computed):
    import pyarrow.parquet as pq
    from test_api import serving

    from persona_assets.api import create_app

    pipeline, _, _ = computed
    a, b = set(members_of(pipeline, "top-brand")), set(members_of(pipeline, "men-tier1"))
    both, union = len(a & b), len(a | b)
    expected = {
        "a": {"name": "top-brand", "size": len(a), "shareInBoth": both / len(a)},
        "b": {"name": "men-tier1", "size": len(b), "shareInBoth": both / len(b)},
        "both": both,
        "union": union,
        "jaccard": both / union,
    }
    assert json.loads(pipeline.check("segment", "overlap", "top-brand", "men-tier1")) == expected
    assert 0 < both < len(a), "the two segments should share some members, not all: the test would prove less"

    pipeline.check("segment", "export", "top-brand", tmp_path / "cli.csv")
    pipeline.check("segment", "save", "uncomputed", "--definition", json.dumps({"query": {}, "membership": {"top": 1}}))
    with pipeline.env():
        app = create_app(pipeline.settings)
    with serving(app) as http_:
        answer = http_.request("GET", "/segments/top-brand/members?format=csv")
        assert answer.status == 200 and answer.raw == (tmp_path / "cli.csv").read_bytes()
        parquet = http_.request("GET", "/segments/top-brand/members?format=parquet")
        (tmp_path / "http.parquet").write_bytes(parquet.raw)
        assert [row["ext_id"] for row in pq.read_table(tmp_path / "http.parquet").to_pylist()] == sorted(a)
        lines = http_.request("GET", "/segments/men-tier1/members").raw.decode().splitlines()
        assert [json.loads(line)["ext_id"] for line in lines] == sorted(b)
        assert http_.request("GET", "/segments/top-brand/overlap/men-tier1").json == expected
        body = http_.request("GET", "/segments/top-brand/history").json
        assert body["segment"] == "top-brand" and body["members"] == 40
        assert [(c["kind"], c["members"], c["entered"]) for c in body["computations"]] == [("full", 40, 40)]
        changes = http_.request("GET", "/segments/top-brand/history?changes=true&limit=2").json["changes"]
        assert len(changes) == 2 and all(c["change"] == "entered" for c in changes)
        assert [c["ext_id"] for c in changes] == sorted(a)[:2]
        assert http_.request("GET", "/segments/nope/history").status == 404
        refused = http_.request("GET", "/segments/top-brand/history?since=yesterday")
        assert refused.status == 422 and "since" in refused.text
        assert http_.request("GET", "/segments/uncomputed/members").status == 409
        assert http_.request("GET", "/segments/nope/overlap/top-brand").status == 404
        refused = http_.request("GET", "/segments/top-brand/members?format=xlsx")
        assert refused.status == 422 and "format" in refused.text
    code, _, err = pipeline.cli("segment", "export", "uncomputed", tmp_path / "x.csv")
    assert code == 1 and "not been computed" in err
    code, _, err = pipeline.cli("segment", "history", "top-brand", "--limit", "0")
    assert code == 2 and "limit" in err
    code, _, err = pipeline.cli("segment", "compute", "nope")
    assert code == 1 and "nope" in err
    pipeline.check("segment", "delete", "uncomputed")
