"""Operations (issue 4): the refresh sensor on hasChanged, the daily schedule, the rebuild after
ingestion, and a backfill after a data fix. Real stores of the session's backend pair; no mocks."""

from __future__ import annotations

import threading
import warnings
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from conftest import Pipeline, write_import_dir
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    RunRequest,
    SkipReason,
    build_schedule_context,
)

from persona_assets.jobs import REBUILD
from persona_assets.resources import resources_from_settings
from persona_assets.sensors import (
    daily_ingest_schedule,
    refresh_changed_users,
)
from persona_assets.settings import RefreshSettings
from persona_assets.stores import relational
from persona_assets.stores.backends import search_backend_for
from persona_assets.stores.changes import flag_users_changed

pytestmark = pytest.mark.contract

CATEGORIES = [{"cat_id": "1", "name": "Audio", "parent_id": ""}, {"cat_id": "2", "name": "Shoes", "parent_id": ""}]
PRODUCTS = [
    {
        "pid": "A",
        "pos": "amazon",
        "title": "Buds",
        "brand": "boAt",
        "generic_name": "earbuds",
        "gender": "men",
        "cat_l1": "1",
    },
    {
        "pid": "B",
        "pos": "flipkart",
        "title": "Run",
        "brand": "Nike",
        "generic_name": "shoes",
        "gender": "women",
        "cat_l1": "2",
    },
]


def visit(user: str, pid: str, day: str) -> dict:
    return {"ext_id": user, "pid": pid, "pincode": "560001", "visited_at": f"{day}T10:00:00"}


def first_import(users: list[str]) -> list[dict]:
    """Everyone visits A; the last user also visits B, so both brands are in the vocabulary (a refresh
    normalises against the vocabulary of the last full rebuild)."""
    return [visit(u, "A", "2026-10-01") for u in users] + [visit(users[-1], "B", "2026-10-01")]


def build(tmp_path, users: list[str]) -> Pipeline:
    pipeline = Pipeline(tmp_path / "home")
    source = write_import_dir(tmp_path / "day1", products=PRODUCTS, categories=CATEGORIES, visits=first_import(users))
    pipeline.import_dir(source)
    pipeline.materialize()
    return pipeline


def import_day2(pipeline: Pipeline, tmp_path, rows: list[dict]) -> None:
    source = write_import_dir(tmp_path / "day2", products=PRODUCTS, categories=CATEGORIES, visits=rows)
    pipeline.import_dir(source)


def sensor_requests(pipeline: Pipeline) -> list[RunRequest] | SkipReason:
    return pipeline.sensor_tick()


def run_refresh(pipeline: Pipeline, request: RunRequest) -> bool:
    with pipeline.env(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = refresh_changed_users.execute_in_process(
            run_config=request.run_config,
            resources=resources_from_settings(pipeline.settings),
            instance=DagsterInstance.get(),
            raise_on_error=False,
        )
    return result.success


def test_sensor_refreshes_flagged_users_1_2_0_and_they_become_searchable_with_new_events(tmp_path):
    pipeline = build(tmp_path, ["u1", "u2", "u3"])
    assert pipeline.flags() == {"u1": 0, "u2": 0, "u3": 0}
    assert isinstance(sensor_requests(pipeline), SkipReason)  # nothing flagged: no run

    import_day2(pipeline, tmp_path, [visit("u2", "B", "2026-10-02"), visit("u2", "B", "2026-10-02")])
    assert pipeline.flags()["u2"] == 1
    requests = sensor_requests(pipeline)
    assert isinstance(requests, list) and len(requests) == 1
    # The users of a pending run are claimed: a second tick launches nothing for them.
    assert isinstance(sensor_requests(pipeline), SkipReason)
    assert run_refresh(pipeline, requests[0])

    assert pipeline.flags() == {"u1": 0, "u2": 0, "u3": 0}
    hit = pipeline.query({"brand": "nike"})["results"][0]
    assert hit["ext_id"] == "u2"
    # u2 now has 1 boAt visit and 2 Nike visits: brand affinity 2/3 for Nike.
    assert hit["components"]["B"] == pytest.approx(2 / 3)
    assert hit["visited"] == ["B"]  # only the products matching the brand criterion


def test_refresh_gives_the_same_personas_as_a_full_rebuild(tmp_path):
    pipeline = build(tmp_path, ["u1", "u2", "u3", "u4"])
    import_day2(pipeline, tmp_path, [visit("u1", "B", "2026-10-02"), visit("u3", "B", "2026-10-03")])
    for request in sensor_requests(pipeline):
        assert run_refresh(pipeline, request)
    refreshed = pipeline.export()
    pipeline.materialize()
    assert pipeline.export() == refreshed


def test_batches_are_bounded_and_a_user_is_in_one_run_only(tmp_path, monkeypatch):
    import persona_assets.sensors as sensors

    monkeypatch.setattr(sensors, "REFRESH", RefreshSettings(batch_size=2, max_runs_per_tick=2))
    users = [f"u{i}" for i in range(7)]
    pipeline = build(tmp_path, users)
    import_day2(pipeline, tmp_path, [visit(u, "B", "2026-10-02") for u in users])
    first = sensor_requests(pipeline)
    second = sensor_requests(pipeline)
    assert [int(r.tags["persona/users"]) for r in first] == [2, 2]
    assert [int(r.tags["persona/users"]) for r in second] == [2, 1]
    claims = relational.read_frame(pipeline.engine, relational.user_claims)
    assert sorted(claims["extId"]) == sorted(users)  # every user claimed exactly once (primary key)
    assert claims["claim"].nunique() == 4
    for request in [*first, *second]:
        assert run_refresh(pipeline, request)
    assert set(pipeline.flags().values()) == {0}
    assert relational.read_frame(pipeline.engine, relational.user_claims).empty


def test_a_failed_refresh_leaves_its_users_to_be_retried(tmp_path):
    pipeline = build(tmp_path, ["u1", "u2"])
    import_day2(pipeline, tmp_path, [visit("u1", "B", "2026-10-02")])
    (request,) = sensor_requests(pipeline)
    tiers = pipeline.settings.layout.reference_dir / "pincode_tiers.parquet"
    saved = tiers.read_bytes()
    tiers.unlink()  # the run cannot load its reference data
    assert not run_refresh(pipeline, request)
    assert pipeline.flags()["u1"] == 1
    tiers.write_bytes(saved)
    (retry,) = sensor_requests(pipeline)  # the claim was released: the next tick retries u1
    assert run_refresh(pipeline, retry)
    assert pipeline.flags()["u1"] == 0


def test_a_user_written_while_the_refresh_runs_ends_at_1(tmp_path):
    """A real concurrent write: another connection flags u1 (as an import does) after the refresh read
    u1's events and before it moves the flags; u1 must end at 1, the others at 0."""
    pipeline = build(tmp_path, ["u1", "u2", "u3"])
    import_day2(pipeline, tmp_path, [visit(u, "B", "2026-10-02") for u in ("u1", "u2", "u3")])
    (request,) = sensor_requests(pipeline)
    engine = relational.store_engine(pipeline.settings.db_url)
    other = relational.create_engine(pipeline.settings.db_url)
    fired = threading.Event()

    def write_from_another_connection(conn, cursor, statement, parameters, context, executemany):
        # The refresh replaces the users' activity rows after it read their flags and events and before it
        # moves any flag.
        if not fired.is_set() and statement.lstrip().upper().startswith("DELETE FROM USER_ACTIVITY"):
            fired.set()
            writer = threading.Thread(target=flag_users_changed, args=(other, ["u1"]))
            writer.start()
            writer.join()

    sa.event.listen(engine, "before_cursor_execute", write_from_another_connection)
    try:
        assert run_refresh(pipeline, request)
    finally:
        sa.event.remove(engine, "before_cursor_execute", write_from_another_connection)
    assert fired.is_set()
    assert pipeline.flags() == {"u1": 1, "u2": 0, "u3": 0}


@pytest.mark.parametrize("refresh_done", [False, True], ids=["swap-before-refresh-2-to-0", "swap-after-it"])
def test_a_rebuild_swapping_in_while_a_refresh_publishes_leaves_no_stale_user_at_0(tmp_path, monkeypatch, refresh_done):
    """Issue 8: a rebuild reads its snapshot and events, then u2's new events land and the sensor's refresh
    indexes u2 into the live build; the rebuild's swap (of u2's older persona) comes after the refresh's
    index write and before (or after) its 2 -> 0. u2 must not end at 0 with the swapped-in stale persona."""
    pipeline = build(tmp_path, ["u1", "u2", "u3"])
    pipeline.materialize_assets(REBUILD - AssetSelection.assets("persona_index"))  # snapshot + events read
    import_day2(pipeline, tmp_path, [visit("u2", "B", "2026-10-02"), visit("u2", "B", "2026-10-02")])
    (request,) = sensor_requests(pipeline)
    backend_class = type(search_backend_for(pipeline.settings))
    swapped = threading.Event()

    def swap_in_the_rebuild() -> None:
        swapped.set()
        pipeline.materialize_assets(AssetSelection.assets("persona_index"))

    if refresh_done:
        assert run_refresh(pipeline, request)
        swap_in_the_rebuild()
    else:
        upsert = backend_class.upsert

        def upsert_then_swap(self, *args, **kwargs):
            report = upsert(self, *args, **kwargs)
            if not swapped.is_set():
                swap_in_the_rebuild()
            return report

        monkeypatch.setattr(backend_class, "upsert", upsert_then_swap)
        assert run_refresh(pipeline, request)
        monkeypatch.undo()
    assert swapped.is_set()
    assert pipeline.flags() == {"u1": 0, "u2": 1, "u3": 0}  # the swapped-in build holds u2's older persona
    for retry in sensor_requests(pipeline):  # the next tick refreshes u2 into the live build
        assert run_refresh(pipeline, retry)
    assert pipeline.flags() == {"u1": 0, "u2": 0, "u3": 0}
    assert pipeline.query({"brand": "nike"})["results"][0]["components"]["B"] == pytest.approx(2 / 3)


def test_a_day_with_no_landed_file_never_silently_deletes_its_published_events(tmp_path):
    """Issue 8: publishing a day whose landed file is missing (a late feed, a lost landing area) stops the
    run, naming the day and the file, and keeps the published day; only an explicit choice publishes it
    empty. A day never landed at all publishes nothing and the run's every_day_was_landed check says so."""
    pipeline = build(tmp_path, ["u1", "u2"])
    import_day2(pipeline, tmp_path, [visit("u2", "B", "2026-10-02")])
    pipeline.materialize()
    layout = pipeline.settings.layout
    published = layout.events_dir / "visits" / "day=2026-10-02" / "events.parquet"
    landed = layout.landing_dir / "visits" / "2026-10-02.parquet"
    assert published.exists() and landed.exists()
    landed.unlink()

    code, _out, err = pipeline.cli("backfill", "2026-10-01", "2026-10-02")
    assert code != 0
    assert "2026-10-02" in err and str(landed) in err and "--publish-missing-as-empty" in err
    assert published.exists()  # kept, and nothing else of the run was published either
    assert pipeline.flags() == {"u1": 0, "u2": 0}
    (top,) = pipeline.query({"brand": "nike", "size": 1})["results"]
    assert (top["ext_id"], top["components"]["B"]) == ("u2", pytest.approx(2 / 3))  # A, B on day 1; B on day 2

    pipeline.check("backfill", "--publish-missing-as-empty", "2026-10-01", "2026-10-02")
    assert not published.exists()
    assert pipeline.flags() == {"u1": 0, "u2": 0}  # u2 recalculated without the day's events
    (top,) = pipeline.query({"brand": "nike", "size": 1})["results"]
    assert (top["ext_id"], top["components"]["B"]) == ("u2", pytest.approx(1 / 2))  # day 2 is gone
    with pipeline.env():
        instance = DagsterInstance.get()
        (visits,) = [
            e for e in instance.get_latest_materialization_events([AssetKey("raw_visits")]).values() if e is not None
        ]
        checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(AssetKey("raw_visits"), "every_day_was_landed")]
        )
    (execution,) = checks.values()
    evaluation = execution.event.dagster_event.event_specific_data
    assert not evaluation.passed and evaluation.severity == AssetCheckSeverity.WARN
    assert evaluation.metadata["first_days"].value == ["2026-10-02"]  # 2026-10-01 was landed
    assert visits.asset_materialization.metadata["days"].value == 2


def test_daily_schedule_runs_at_six_ist_and_ingests_the_utc_day_just_ended():
    assert daily_ingest_schedule.cron_schedule == "0 6 * * *"
    assert daily_ingest_schedule.execution_timezone == "Asia/Kolkata"
    moment = datetime(2026, 11, 27, 0, 30, tzinfo=UTC)  # 06:00 in Asia/Kolkata
    run = daily_ingest_schedule(build_schedule_context(scheduled_execution_time=moment))
    assert run.partition_key == "2026-11-26"


def test_backfill_after_a_data_fix_equals_a_from_scratch_run_on_the_fixed_data(tmp_path):
    users = ["u1", "u2", "u3"]
    good_day1 = first_import(users)
    broken = [visit("u1", "A", "2026-10-02"), visit("u2", "A", "2026-10-03")]
    fixed = [visit("u1", "B", "2026-10-02"), visit("u2", "B", "2026-10-03"), visit("u3", "B", "2026-10-03")]
    later = [visit("u3", "A", "2026-10-04")]

    pipeline = Pipeline(tmp_path / "fixed-later")
    pipeline.import_dir(
        write_import_dir(tmp_path / "a", products=PRODUCTS, categories=CATEGORIES, visits=good_day1 + broken + later)
    )
    pipeline.materialize()
    day4_before = pipeline.settings.layout.events_dir / "visits" / "day=2026-10-04" / "events.parquet"
    untouched_at = day4_before.stat().st_mtime_ns
    # The fix: corrected files for 2026-10-02..03 land, then the backfill publishes exactly those days.
    pipeline.check(
        "import",
        write_import_dir(tmp_path / "fix", products=PRODUCTS, categories=CATEGORIES, visits=fixed),
        "--land-only",
    )
    pipeline.check("backfill", "2026-10-02", "2026-10-03")
    assert day4_before.stat().st_mtime_ns == untouched_at  # a day outside the range was not re-ingested
    with pipeline.env():
        instance = DagsterInstance.get()
        runs = [r for r in instance.get_runs() if r.tags.get("dagster/asset_partition_range_start") == "2026-10-02"]
        assert runs and {r.tags["dagster/asset_partition_range_end"] for r in runs} == {"2026-10-03"}

    scratch = Pipeline(tmp_path / "scratch")
    scratch.import_dir(
        write_import_dir(tmp_path / "b", products=PRODUCTS, categories=CATEGORIES, visits=good_day1 + fixed + later)
    )
    scratch.materialize()
    assert pipeline.export() == scratch.export()
    for request in ({"brand": "nike"}, {"brand": "boat", "size": 3}, {"gender": "women"}, {}):
        assert pipeline.query(request) == scratch.query(request)


def test_a_failed_opensearch_request_is_one_line_on_the_command_line(capsys):
    """opensearch-py logs a failed request with its traceback; what the command line prints keeps the line
    naming the request and drops the traceback (a node killed mid-publish printed dozens of lines)."""
    import logging

    import persona_assets.pipeline  # noqa: F401  (installs the filter, as the command line does)

    handler = logging.StreamHandler()
    logger = logging.getLogger("opensearch")
    logger.addHandler(handler)
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError:
            logger.warning("PUT http://127.0.0.1:9200/personas-1 [status:N/A request:0.192s]", exc_info=True)
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "PUT http://127.0.0.1:9200/personas-1" in err
    assert "Traceback" not in err and "ConnectionRefusedError" not in err
