"""The asset checks (``persona_assets/checks/``): each passes on good data and fails on crafted bad data.

Real stores throughout (SQLite or MariaDB per ``PERSONA_TEST_BACKEND``, the embedded index or
OpenSearch): data are imported through ``persona import``, then broken where the pipeline hands them
over (a Parquet file under ``work/``, a relational row, a flag), and the checks are run in-process by
Dagster, alone or with the assets they guard.
"""

import json
import warnings
from datetime import date

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from conftest import Pipeline, production_search_client, write_import_dir
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetSelection,
    ExecuteInProcessResult,
    SkipReason,
    materialize,
)

from persona_assets.checks import CheckSettings, asset_checks, maps_sum_to_one
from persona_assets.definitions import defs
from persona_assets.ingest.importer import import_directory
from persona_assets.pipeline import QUIET_LOGGERS, dagster_instance
from persona_assets.resources import resources_from_settings
from persona_assets.stores import relational
from persona_assets.stores.changes import flag_users_changed
from persona_assets.stores.events import EventStore
from persona_assets.stores.search_backend import PersonaHandOff

pytestmark = pytest.mark.contract

CHECK_ENV = (
    "PERSONA_MAX_REJECT_RATE",
    "PERSONA_MAX_UNKNOWN_PINCODE_RATE",
    "PERSONA_CHECK_MIN_ROWS",
    "PERSONA_CHECK_RELATIONAL_SAMPLE",
)
REBUILD_ASSETS = ("user_raw_affinities", "user_activity", "attribute_vocabulary", "user_personas", "persona_index")

CATEGORIES = [
    {"cat_id": "1", "name": "Electronics", "parent_id": ""},
    {"cat_id": "2", "name": "Audio", "parent_id": "1"},
    {"cat_id": "3", "name": "Fashion", "parent_id": ""},
]
PRODUCTS = [
    {"pid": "P1", "pos": "amazon", "title": "Earbuds", "brand": "boAt", "generic_name": "earbuds", "cat_l1": "1",
     "cat_l2": "2", "gender": "", "price": "999"},
    {"pid": "P2", "pos": "flipkart", "title": "Speaker", "brand": "JBL", "generic_name": "speaker", "cat_l1": "1",
     "cat_l2": "2", "gender": "", "price": "2999"},
    {"pid": "P3", "pos": "myntra", "title": "Sneakers", "brand": "Nike", "generic_name": "shoes", "cat_l1": "3",
     "gender": "men", "price": "4999"},
    {"pid": "P4", "pos": "myntra", "title": "Kurta", "brand": "Biba", "generic_name": "kurta", "cat_l1": "3",
     "gender": "women", "price": "1499"},
]  # fmt: skip
KNOWN_PINCODES = ("560001", "400601", "110001", "600001")
USERS = [f"u{i:02d}" for i in range(60)]


def good_visits(users=USERS, per_user: int = 20) -> list[dict]:
    """``per_user`` visits of every user over two days, at known pincodes: 1,200 rows by default."""
    return [
        {
            "ext_id": user,
            "pid": PRODUCTS[(u + i) % len(PRODUCTS)]["pid"],
            "pincode": KNOWN_PINCODES[(u + i) % len(KNOWN_PINCODES)],
            "visited_at": f"2024-03-0{1 + i % 2}T{i % 24:02d}:00:00",
        }
        for u, user in enumerate(users)
        for i in range(per_user)
    ]


CHECKOUTS = [
    {"order_id": f"o{i}", "ext_id": USERS[i], "pid": "P2", "pincode": "400601", "ordered_at": "2024-03-02"}
    for i in range(10)
]
SEARCHES = [{"ext_id": USERS[i], "query": "jbl speaker", "searched_at": "2024-03-02T09:00:00"} for i in range(10)]


def run(pipeline: Pipeline, selection: AssetSelection) -> ExecuteInProcessResult:
    """Materialise ``selection`` (assets and/or checks) in-process on the pipeline's stores and instance,
    with the assets and checks ``definitions.py`` registers."""
    with pipeline.env(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return materialize(
            [*defs.assets, *defs.asset_checks],
            selection=selection,
            resources=resources_from_settings(pipeline.settings),
            instance=dagster_instance(pipeline.settings),
            run_config=QUIET_LOGGERS,
            raise_on_error=False,
        )


def check_key(asset: str, name: str) -> AssetCheckKey:
    return AssetCheckKey(AssetKey(asset), name)


def run_checks(pipeline: Pipeline, *keys: AssetCheckKey) -> dict[str, object]:
    """Run just these checks (no asset is materialised); ``"asset:check"`` -> its evaluation."""
    result = run(pipeline, AssetSelection.checks(*keys))
    found = evaluations(result)
    assert set(found) == {f"{k.asset_key.to_user_string()}:{k.name}" for k in keys}
    return found


def evaluations(result: ExecuteInProcessResult) -> dict[str, object]:
    return {f"{e.asset_key.to_user_string()}:{e.check_name}": e for e in result.get_asset_check_evaluations()}


def meta(evaluation, name: str):
    return evaluation.metadata[name].value


def materialized(result: ExecuteInProcessResult) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


@pytest.fixture(autouse=True)
def default_thresholds(monkeypatch):
    """Every test starts from the default thresholds, whatever the developer's environment holds."""
    for name in CHECK_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Pipeline:
    """60 users, 1,500 visits, no rejected row: imported and rebuilt by the CLI. A quarter of the
    visits carry no pincode (missing, which is not unknown); the others are known pincodes."""
    pipeline = Pipeline(tmp_path_factory.mktemp("checks-good"))
    visits = good_visits(per_user=25)
    for visit in visits[::4]:
        visit["pincode"] = ""
    source = write_import_dir(
        pipeline.root / "import",
        products=PRODUCTS,
        categories=CATEGORIES,
        visits=visits,
        checkouts=CHECKOUTS,
        searches=SEARCHES,
    )
    pipeline.import_dir(source)
    pipeline.materialize()
    return pipeline


@pytest.fixture(scope="module")
def flooded(tmp_path_factory) -> Pipeline:
    """An import with floods: 1,100 products of which 100 rejected (9.1%); 1,200 visits of which 200
    rejected (16.7%); of the 1,000 accepted visits, 400 at a malformed pincode (40%). Imported only."""
    pipeline = Pipeline(tmp_path_factory.mktemp("checks-flooded"))
    products = [*PRODUCTS]
    products += [{**PRODUCTS[0], "pid": f"X{i}", "title": f"extra {i}"} for i in range(996)]
    products += [{**PRODUCTS[0], "pid": f"BAD{i}", "cat_l1": "abc"} for i in range(100)]  # non-integer category
    visits = good_visits()
    rejected, accepted = visits[5::6], [v for i, v in enumerate(visits) if i % 6 != 5]
    for visit in rejected:
        visit["visited_at"] = "not a date"  # 200 of 1,200 rejected
    for k, visit in enumerate(accepted):
        if k % 5 in (1, 3):
            visit["pincode"] = f"{visit['pincode']}.0"  # 400 of the 1,000 accepted: malformed, so unknown
    source = write_import_dir(pipeline.root / "import", products=products, categories=CATEGORIES, visits=visits)
    # The CLI runs the blocking checks too (see the test below); let this import through to test them one by one.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERSONA_MAX_REJECT_RATE", "1")
        pipeline.import_dir(source)
    return pipeline


def test_a_flood_of_rejects_stops_persona_import_at_the_blocking_check(flooded: Pipeline):
    code, _, err = flooded.cli("import", flooded.root / "import")
    assert code == 1
    assert "product_catalog_reject_rate" in err or "product_catalog: reject_rate" in err


# --------------------------------------------------------------------------- registration and settings


def test_checks_are_registered_with_the_jobs_and_block_where_they_must():
    graph = defs.resolve_asset_graph()
    registered = {f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys}
    assert registered == {
        "raw_visits:reject_rate",
        "raw_checkouts:reject_rate",
        "raw_searches:reject_rate",
        "raw_visits:every_day_was_landed",
        "raw_checkouts:every_day_was_landed",
        "raw_searches:every_day_was_landed",
        "product_catalog:reject_rate",
        "category_hierarchy:reject_rate",
        "user_raw_affinities:unknown_pincode_rate",
        "user_personas:maps_sum_to_one",
        "persona_index:document_count_matches_personas",
        "persona_index:no_user_stuck_at_calculated",
        "persona_index:no_dead_lettered_users",
    }
    rebuild = defs.resolve_job_def("full_rebuild").asset_layer.asset_graph
    assert check_key("user_personas", "maps_sum_to_one") in rebuild.asset_check_keys
    assert (
        check_key("raw_visits", "reject_rate")
        in defs.resolve_job_def("ingest_events").asset_layer.asset_graph.asset_check_keys
    )
    blocking = {f"{s.asset_key.to_user_string()}:{s.name}" for c in asset_checks for s in c.check_specs if s.blocking}
    assert blocking == registered - {
        "persona_index:document_count_matches_personas",
        "persona_index:no_user_stuck_at_calculated",
        "persona_index:no_dead_lettered_users",
        *(f"raw_{kind}:every_day_was_landed" for kind in ("visits", "checkouts", "searches")),
    }
    assert [s.blocking for s in maps_sum_to_one.check_specs] == [True]


def test_thresholds_come_from_the_environment():
    assert CheckSettings.from_env({}) == CheckSettings(
        max_reject_rate=0.05, max_unknown_pincode_rate=0.2, min_rows=1000
    )
    settings = CheckSettings.from_env(
        {"PERSONA_MAX_REJECT_RATE": "0.1", "PERSONA_MAX_UNKNOWN_PINCODE_RATE": "35%", "PERSONA_CHECK_MIN_ROWS": "0"}
    )
    assert (settings.max_reject_rate, settings.max_unknown_pincode_rate, settings.min_rows) == (0.1, 0.35, 0)
    for name, value in (
        ("PERSONA_MAX_REJECT_RATE", "five"),
        ("PERSONA_MAX_REJECT_RATE", "1.5"),
        ("PERSONA_MAX_UNKNOWN_PINCODE_RATE", "-1%"),
        ("PERSONA_CHECK_MIN_ROWS", "ten"),
    ):
        with pytest.raises(ValueError, match=name):
            CheckSettings.from_env({name: value})


# --------------------------------------------------------------------------- good data: every check passes


def test_every_check_passes_on_good_data(good: Pipeline):
    # every_day_was_landed is evaluated by the raw asset's own run (a check of what that run published).
    landed = [check_key(f"raw_{kind}", "every_day_was_landed") for kind in ("visits", "checkouts", "searches")]
    result = run(good, AssetSelection.all_asset_checks() - AssetSelection.checks(*landed))
    assert result.success
    found = evaluations(result)
    assert len(found) == 10
    failed = {key: e.description for key, e in found.items() if not e.passed}
    assert failed == {}

    visits = found["raw_visits:reject_rate"]
    assert (meta(visits, "rows_read"), meta(visits, "rejected"), meta(visits, "judged")) == (1500, 0, True)
    pincodes = found["user_raw_affinities:unknown_pincode_rate"]
    # 1,125 visits + 10 checkouts with a pincode; the 375 visits without one (25%) are missing, not unknown.
    assert (meta(pincodes, "product_events"), meta(pincodes, "events_with_pincode")) == (1510, 1135)
    assert (meta(pincodes, "missing_pincode_events"), meta(pincodes, "unknown_pincode_events")) == (375, 0)
    assert meta(pincodes, "judged") is True
    maps = found["user_personas:maps_sum_to_one"]
    assert meta(maps, "personas") == len(USERS)
    assert meta(maps, "maps_checked_parquet") == meta(maps, "maps_checked_relational") > 4 * len(USERS)
    count = found["persona_index:document_count_matches_personas"]
    assert (meta(count, "documents"), meta(count, "personas"), meta(count, "refused_by_backend")) == (60, 60, 0)
    stuck = found["persona_index:no_user_stuck_at_calculated"]
    assert meta(stuck, "stuck_users") == 0
    assert set(good.flags().values()) == {0}


# --------------------------------------------------------------------------- reject rate


def test_a_flood_of_rejects_fails_the_reject_rate_checks(flooded: Pipeline):
    found = run_checks(
        flooded,
        check_key("raw_visits", "reject_rate"),
        check_key("product_catalog", "reject_rate"),
        check_key("category_hierarchy", "reject_rate"),
        check_key("raw_checkouts", "reject_rate"),
    )
    visits = found["raw_visits:reject_rate"]
    assert not visits.passed and visits.severity == AssetCheckSeverity.ERROR
    assert (meta(visits, "rows_read"), meta(visits, "rejected")) == (1200, 200)
    assert meta(visits, "reject_rate") == pytest.approx(200 / 1200, abs=1e-6)
    assert meta(visits, "rejected_by_reason") == {"unparsable visited_at": 200}
    products = found["product_catalog:reject_rate"]
    assert not products.passed
    assert (meta(products, "rows_read"), meta(products, "rejected")) == (1100, 100)
    # Three categories: too few rows to judge a rate. No checkouts.csv in any import: nothing to judge.
    categories = found["category_hierarchy:reject_rate"]
    assert categories.passed and meta(categories, "judged") is False
    assert found["raw_checkouts:reject_rate"].passed


def test_reject_rate_thresholds_are_configurable(flooded: Pipeline, monkeypatch):
    keys = (check_key("raw_visits", "reject_rate"), check_key("product_catalog", "reject_rate"))
    monkeypatch.setenv("PERSONA_MAX_REJECT_RATE", "20%")
    assert all(e.passed for e in run_checks(flooded, *keys).values())
    monkeypatch.setenv("PERSONA_MAX_REJECT_RATE", "0.1")  # 16.7% of visits > 10% ≥ 9.1% of products
    found = run_checks(flooded, *keys)
    assert (found["raw_visits:reject_rate"].passed, found["product_catalog:reject_rate"].passed) == (False, True)
    monkeypatch.delenv("PERSONA_MAX_REJECT_RATE")
    monkeypatch.setenv("PERSONA_CHECK_MIN_ROWS", "5000")  # more rows than the import read: not judged
    found = run_checks(flooded, *keys)
    assert all(e.passed and meta(e, "judged") is False for e in found.values())


def test_the_reject_rate_of_the_latest_import_is_the_one_judged(tmp_path):
    """A later clean import of visits.csv is what raw_visits publishes next: its rate is the one judged."""
    pipeline = Pipeline(tmp_path / "later")
    store = EventStore(pipeline.settings.layout.landing_dir, pipeline.settings.layout.events_dir)
    key = check_key("raw_visits", "reject_rate")
    for name, visits, passed in (
        ("i1", [{**v, "visited_at": "bad"} for v in good_visits()], False),
        ("i2", good_visits(), True),
    ):
        source = write_import_dir(pipeline.root / name, products=PRODUCTS, categories=CATEGORIES, visits=visits)
        import_directory(source, pipeline.engine, store, first_day=date(2015, 1, 1))
        evaluation = run_checks(pipeline, key)["raw_visits:reject_rate"]
        assert evaluation.passed is passed, evaluation.description
        assert meta(evaluation, "rejected") == (0 if passed else 1200)


# --------------------------------------------------------------------------- unknown pincodes


def test_a_flood_of_unknown_pincodes_fails_and_blocks_the_rebuild(flooded: Pipeline, monkeypatch):
    result = run(flooded, AssetSelection.assets(*REBUILD_ASSETS))
    assert not result.success
    evaluation = evaluations(result)["user_raw_affinities:unknown_pincode_rate"]
    assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.ERROR
    assert (meta(evaluation, "events_with_pincode"), meta(evaluation, "unknown_pincode_events")) == (1000, 400)
    assert meta(evaluation, "unknown_pincode_rate") == pytest.approx(0.4)
    assert set(meta(evaluation, "top_unknown_pincodes")) <= {f"{p}.0" for p in KNOWN_PINCODES}
    # The asset's own counts agree with the check's (one pass over the events, NULL pincodes not unknown).
    (raw,) = [
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key.to_user_string() == "user_raw_affinities"
    ]
    counts = {k: raw[k].value for k in ("product_events", "unknown_pid_events", "unknown_pincode_events")}
    assert counts == {"product_events": 1000, "unknown_pid_events": 0, "unknown_pincode_events": 400}
    # Blocking: nothing downstream of user_raw_affinities ran, user_activity (read from its build) included.
    assert materialized(result) == {"user_raw_affinities"}
    assert set(flooded.flags().values()) == {1}
    assert flooded.table("user_personas").empty

    monkeypatch.setenv("PERSONA_MAX_UNKNOWN_PINCODE_RATE", "0.5")
    result = run(flooded, AssetSelection.assets(*REBUILD_ASSETS))
    assert result.success, evaluations(result)
    assert materialized(result) == set(REBUILD_ASSETS)
    assert evaluations(result)["user_raw_affinities:unknown_pincode_rate"].passed


def test_a_failed_blocking_check_holds_the_refresh_back_until_it_passes(flooded: Pipeline, monkeypatch):
    """What a blocking check refused reaches the live index through no path: while the latest evaluation of
    a blocking check failed, the hasChanged sensor (whose refresh runs no checks) launches nothing."""
    monkeypatch.setenv("PERSONA_MAX_UNKNOWN_PINCODE_RATE", "0.5")
    assert run(flooded, AssetSelection.assets(*REBUILD_ASSETS)).success  # a live index, then the data turns bad
    monkeypatch.setenv("PERSONA_MAX_UNKNOWN_PINCODE_RATE", "0.1")
    assert not run(flooded, AssetSelection.assets(*REBUILD_ASSETS)).success
    user = sorted(flooded.flags())[0]
    flag_users_changed(flooded.engine, [user])

    held = flooded.sensor_tick()
    assert isinstance(held, SkipReason), held
    assert "user_raw_affinities:unknown_pincode_rate" in (held.skip_message or "")
    assert flooded.flags()[user] == 1  # nothing claimed

    monkeypatch.setenv("PERSONA_MAX_UNKNOWN_PINCODE_RATE", "0.5")  # the operator accepts the rate
    assert run(flooded, AssetSelection.assets("user_raw_affinities")).success
    requests = flooded.sensor_tick()
    assert isinstance(requests, list) and len(requests) == 1


# --------------------------------------------------------------------------- maps sum to 1

MAPS = check_key("user_personas", "maps_sum_to_one")


def test_a_map_off_one_in_the_parquet_hand_off_fails(good: Pipeline):
    hand_off = PersonaHandOff.in_directory(good.build_dir())
    path = hand_off.affinities
    original = path.read_bytes()
    try:
        frame = pd.read_parquet(path)
        uid = pd.read_parquet(hand_off.users).set_index("ext_id")["uid"]
        dimension = frame["kid"].map(pd.read_parquet(hand_off.keys).set_index("kid")["dimension"])
        brand = (frame["uid"] == uid["u07"]) & (dimension == "brand")
        assert brand.any()
        frame.loc[brand, "value"] *= 2
        city = (frame["uid"] == uid["u11"]) & (dimension == "city")
        frame.loc[city, "value"] = frame.loc[city, "value"] * (1 + 1e-6)  # off by 1e-6: beyond the 1e-9 allowed
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)

        evaluation = run_checks(good, MAPS)["user_personas:maps_sum_to_one"]
        assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.ERROR
        assert (meta(evaluation, "offending_maps_parquet"), meta(evaluation, "offending_maps_relational")) == (2, 0)
        worst = meta(evaluation, "worst_offenders")
        assert [(w["source"], w["ext_id"], w["map"]) for w in worst] == [
            ("parquet", "u07", "brand"),
            ("parquet", "u11", "city"),
        ]
        assert worst[0]["sum"] == pytest.approx(2)
    finally:
        path.write_bytes(original)
    assert run_checks(good, MAPS)["user_personas:maps_sum_to_one"].passed


def test_a_bad_map_in_user_personas_fails(good: Pipeline):
    table = relational.user_personas
    with good.engine.connect() as conn:
        before = conn.execute(sa.select(table).where(table.c.ext_id.in_(["u03", "u04", "u05"]))).mappings().all()
    assert len(before) == 3
    try:
        with good.engine.begin() as conn:
            # The store keeps weights (each value is weight / the map's sum): a weight must be a number above 0.
            conn.execute(sa.update(table).where(table.c.ext_id == "u03").values(ecomm=json.dumps({"amazon": 0})))
            conn.execute(
                sa.update(table)
                .where(table.c.ext_id == "u04")
                .values(category_affinity=json.dumps({"1": 3, "3": -1, "4": "2"}))  # sums to 4 with "2" as 2
            )
            conn.execute(sa.update(table).where(table.c.ext_id == "u05").values(city="not json"))
        evaluation = run_checks(good, MAPS)["user_personas:maps_sum_to_one"]
        assert not evaluation.passed
        assert meta(evaluation, "offending_maps_parquet") == 0
        assert (meta(evaluation, "offending_maps_relational"), meta(evaluation, "maps_not_json_objects")) == (2, 1)
        worst = {(w["ext_id"], w["map"]): w for w in meta(evaluation, "worst_offenders")}
        assert set(worst) == {("u03", "ecomm"), ("u04", "category")}
        assert worst[("u03", "ecomm")]["bad_values"] == 1
        assert worst[("u04", "category")]["bad_values"] == 2
        assert meta(evaluation, "not_json_objects_sample") == [{"ext_id": "u05", "map": "city", "text": "not json"}]
    finally:
        with good.engine.begin() as conn:
            for row in before:
                conn.execute(sa.update(table).where(table.c.ext_id == row["ext_id"]).values(**row))
    assert run_checks(good, MAPS)["user_personas:maps_sum_to_one"].passed


def test_the_relational_copy_is_judged_on_a_sample_and_counted_whole(good: Pipeline, monkeypatch):
    monkeypatch.setenv("PERSONA_CHECK_RELATIONAL_SAMPLE", "7")
    evaluation = run_checks(good, MAPS)["user_personas:maps_sum_to_one"]
    assert evaluation.passed
    assert meta(evaluation, "relational_sampled") is True and meta(evaluation, "personas") == 7
    assert meta(evaluation, "personas_stored") == meta(evaluation, "personas_handed_over") == len(USERS)
    assert meta(evaluation, "maps_checked_parquet") > meta(evaluation, "maps_checked_relational") > 0

    # A persona missing from the relational copy fails the check whatever the sample holds.
    table = relational.user_personas
    with good.engine.connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.ext_id == "u09")).mappings().one()
    try:
        with good.engine.begin() as conn:
            conn.execute(sa.delete(table).where(table.c.ext_id == "u09"))
        evaluation = run_checks(good, MAPS)["user_personas:maps_sum_to_one"]
        assert not evaluation.passed
        assert (meta(evaluation, "personas_stored"), meta(evaluation, "personas_handed_over")) == (59, 60)
        assert "59" in evaluation.description and "60" in evaluation.description
    finally:
        with good.engine.begin() as conn:
            conn.execute(sa.insert(table).values(**row))
    assert run_checks(good, MAPS)["user_personas:maps_sum_to_one"].passed


def test_a_failing_maps_check_stops_persona_index(tmp_path):
    """A bad weight handed over in work/raw_affinity_ids.parquet makes user_personas write maps that do not
    sum to 1: the blocking check fails, persona_index is not materialised, the live build and the
    hasChanged = 2 flags stay."""
    pipeline = Pipeline(tmp_path / "blocking")
    pipeline.import_dir(
        write_import_dir(pipeline.root / "i", products=PRODUCTS, categories=CATEGORIES, visits=good_visits(USERS[:6]))
    )
    assert run(pipeline, AssetSelection.assets(*REBUILD_ASSETS)).success
    live = pipeline.query({"size": 100})
    assert live["total"] == 6
    flag_users_changed(pipeline.engine, USERS[:6])
    assert run(pipeline, AssetSelection.assets("user_raw_affinities", "attribute_vocabulary")).success

    work = pipeline.build_dir("user_raw_affinities")
    uid = pd.read_parquet(work / "users.parquet").set_index("ext_id").loc["u02", "uid"]
    keys = pd.read_parquet(work / "affinity_keys.parquet")
    brand_kids = keys.loc[keys["dimension"] == "brand", "kid"]
    path = work / "raw_affinity_ids.parquet"
    frame = pd.read_parquet(path)
    frame["weight"] = frame["weight"].astype(float)  # whole numbers as written; a float column can hold inf
    frame.loc[(frame["uid"] == uid) & frame["kid"].isin(brand_kids), "weight"] = float("inf")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)

    result = run(pipeline, AssetSelection.assets("user_personas", "persona_index"))
    assert not result.success
    evaluation = evaluations(result)["user_personas:maps_sum_to_one"]
    assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.ERROR
    assert {w["ext_id"] for w in meta(evaluation, "worst_offenders")} == {"u02"}
    assert materialized(result) == {"user_personas"}
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert "user_personas" in started and "persona_index" not in started
    failed = [e.step_key for e in result.all_events if e.is_step_failure]
    assert failed == ["user_personas_maps_sum_to_one"]
    assert set(pipeline.flags().values()) == {2}  # calculated, never published
    assert pipeline.query({"size": 100}) == live  # the live build is the previous one

    # The hand-off repaired (a clean rebuild), the check passes and the index follows.
    result = run(pipeline, AssetSelection.assets(*REBUILD_ASSETS))
    assert result.success
    assert "persona_index" in materialized(result)
    assert set(pipeline.flags().values()) == {0}


# --------------------------------------------------------------------------- the index

DOCUMENTS = check_key("persona_index", "document_count_matches_personas")
STUCK = check_key("persona_index", "no_user_stuck_at_calculated")


def test_an_index_missing_a_persona_fails_the_document_count(good: Pipeline):
    table = relational.user_personas
    with good.engine.begin() as conn:
        conn.execute(
            sa.insert(table).values(
                ext_id="ghost", gender="unisex", city="{}", ecomm="{}", brand_affinity="{}",
                generic_affinity="{}", category_affinity="{}",
            )
        )  # fmt: skip
    try:
        evaluation = run_checks(good, DOCUMENTS)["persona_index:document_count_matches_personas"]
        assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.ERROR
        assert (meta(evaluation, "documents"), meta(evaluation, "personas")) == (60, 61)
        assert meta(evaluation, "difference") == -1
    finally:
        with good.engine.begin() as conn:
            conn.execute(sa.delete(table).where(table.c.ext_id == "ghost"))
    assert run_checks(good, DOCUMENTS)["persona_index:document_count_matches_personas"].passed


def test_a_user_left_at_2_fails_the_stuck_check(good: Pipeline):
    table = relational.user_persona
    claims = relational.user_claims
    with good.engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.extId == "u09").values(hasChanged=2))
    try:
        evaluation = run_checks(good, STUCK)["persona_index:no_user_stuck_at_calculated"]
        # Not a document the backend refused: a lost flag transition.
        assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.ERROR
        assert meta(evaluation, "stuck_users") == 1
        assert meta(evaluation, "stuck_sample") == meta(evaluation, "unexplained_sample") == ["u09"]

        # Held by a running refresh, the same user is in flight, not stuck.
        with good.engine.begin() as conn:
            conn.execute(sa.insert(claims).values(extId="u09", claim="refresh-test", claimed_us=0))
        evaluation = run_checks(good, STUCK)["persona_index:no_user_stuck_at_calculated"]
        assert evaluation.passed
        assert (meta(evaluation, "stuck_users"), meta(evaluation, "in_running_refresh")) == (0, 1)
    finally:
        with good.engine.begin() as conn:
            conn.execute(sa.delete(claims).where(claims.c.claim == "refresh-test"))
            conn.execute(sa.update(table).where(table.c.extId == "u09").values(hasChanged=0))
    assert run_checks(good, STUCK)["persona_index:no_user_stuck_at_calculated"].passed


@pytest.mark.services
def test_users_the_backend_refused_are_a_warning_and_are_not_counted_as_missing(tmp_path, monkeypatch):
    """A real refusal: an OpenSearch ingest pipeline fails the document of ``u02`` (as in test_index_failures)."""

    from persona_assets.stores.opensearch_index import OpenSearchBackend

    monkeypatch.setattr(OpenSearchBackend, "retry_backoff", 0.01)
    pipeline = Pipeline(tmp_path / "refusing", backend="production")
    alias = pipeline.settings.opensearch_alias
    client = production_search_client()
    name = f"{alias}-refuse-u02"
    client.ingest.put_pipeline(
        id=name, body={"processors": [{"fail": {"if": "ctx.ext_id == 'u02'", "message": "refused for the test"}}]}
    )
    client.indices.put_index_template(
        name=name, body={"index_patterns": [f"{alias}-*"], "template": {"settings": {"index.default_pipeline": name}}}
    )
    try:
        users = USERS[:20]  # one refused of 20: under the backend's 10% limit, the build goes live
        pipeline.import_dir(
            write_import_dir(pipeline.root / "i", products=PRODUCTS, categories=CATEGORIES, visits=good_visits(users))
        )
        pipeline.materialize()
        result = run(pipeline, AssetSelection.assets(*REBUILD_ASSETS))
    finally:
        client.indices.delete_index_template(name=name)
        client.ingest.delete_pipeline(id=name)
    assert result.success  # neither index check blocks
    found = evaluations(result)
    documents = found["persona_index:document_count_matches_personas"]
    assert documents.passed
    assert (meta(documents, "documents"), meta(documents, "personas"), meta(documents, "refused_by_backend")) == (
        19,
        20,
        1,
    )
    stuck = found["persona_index:no_user_stuck_at_calculated"]
    assert not stuck.passed and stuck.severity == AssetCheckSeverity.WARN
    assert meta(stuck, "stuck_sample") == ["u02"] and meta(stuck, "unexplained_sample") == []
