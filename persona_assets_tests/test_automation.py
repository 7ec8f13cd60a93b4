"""The rebuild's declarative automation, evaluated on the real definitions against a real instance.

A raw day is recorded as published by a run (a stand-in asset of the same key writes its materialisation,
with the tags the launching entry point gives): what matters is what the instance's event log says.
"""

from __future__ import annotations

import pytest
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetKey,
    DagsterInstance,
    MaterializeResult,
    asset,
    evaluate_automation_conditions,
    materialize,
)

from persona_assets.definitions import defs
from persona_assets.jobs import CLI_TAG, REBUILD, REBUILD_TAG
from persona_assets.partitions import daily_events

REBUILD_KEYS = {
    AssetKey(name)
    for name in ("user_raw_affinities", "user_activity", "attribute_vocabulary", "user_personas", "persona_index")
}
DAY = "2026-10-30"


def publish_raw_visits(
    instance: DagsterInstance, tags: dict[str, str], *, check_passes: bool = True, day: str = DAY
) -> None:
    """Record a materialisation of ``raw_visits``'s ``day`` (and its blocking ``reject_rate`` check) by a
    run carrying ``tags``."""

    @asset(
        name="raw_visits",
        partitions_def=daily_events,
        check_specs=[AssetCheckSpec("reject_rate", asset="raw_visits", blocking=True)],
    )
    def stand_in() -> MaterializeResult:
        return MaterializeResult(check_results=[AssetCheckResult(check_name="reject_rate", passed=check_passes)])

    materialize([stand_in], instance=instance, partition_key=day, tags=tags, raise_on_error=False)


def requested(instance: DagsterInstance, cursor=None):
    result = evaluate_automation_conditions(defs, instance, asset_selection=REBUILD, cursor=cursor)
    keys = {request.key for request in result.results if request.true_subset.size}
    return keys, result.cursor


@pytest.fixture
def instance():
    """An instance where the command line imported (and rebuilt) earlier: what the sensor sees in use."""
    with DagsterInstance.ephemeral() as instance:
        publish_raw_visits(instance, tags=dict(CLI_TAG), day="2026-10-29")
        yield instance


def test_a_day_published_by_the_schedule_or_ui_requests_the_whole_rebuild_once(instance):
    keys, cursor = requested(instance)
    assert keys == set()
    publish_raw_visits(instance, tags={"dagster/schedule_name": "daily_ingest_schedule"})
    keys, cursor = requested(instance, cursor)
    assert keys == REBUILD_KEYS  # all five on one tick: one run
    keys, _ = requested(instance, cursor)
    assert keys == set()  # handled: not requested again for the same day


def test_days_published_by_the_command_line_are_not_followed(instance):
    _, cursor = requested(instance)
    publish_raw_visits(instance, tags=dict(CLI_TAG))
    keys, _ = requested(instance, cursor)
    assert keys == set()


def test_a_failed_blocking_check_holds_the_rebuild_back(instance):
    _, cursor = requested(instance)
    publish_raw_visits(instance, tags={}, check_passes=False)
    keys, _ = requested(instance, cursor)
    assert keys == set()


def test_the_sensor_launches_runs_tagged_as_rebuilds():
    sensor = defs.resolve_sensor_def("rebuild_after_ingest")
    assert sensor.run_tags == REBUILD_TAG
    assert {key for key in sensor.asset_selection.resolve(defs.resolve_asset_graph())} == REBUILD_KEYS
