"""Declarative automation of the full rebuild: it follows raw event days published outside the command line.

The daily schedule, a backfill or a launch from the UI publishes raw days; once that run is over and
the blocking checks of what it published passed, the automation sensor ``rebuild_after_ingest``
requests the five rebuild assets together, as one run carrying the rebuild's tag. Days published by
``persona import``/``persona backfill`` are not followed: the command line rebuilds itself right after.
The hasChanged refresh stays a sensor (``sensors.changed_users_sensor``): it reacts to rows of the
relational store, which no asset's materialisation records.
"""

from __future__ import annotations

from dagster import AutomationCondition, AutomationConditionSensorDefinition, DefaultSensorStatus

from persona_assets.jobs import CLI_TAG, REBUILD, REBUILD_TAG

# A dependency materialised since the previous evaluation by at least one run the command line did not launch.
_PUBLISHED_OUTSIDE_CLI = AutomationCondition.newly_updated() & ~AutomationCondition.all_new_updates_have_run_tags(
    tag_values=CLI_TAG
)

REBUILD_AFTER_INGEST = (
    AutomationCondition.any_deps_match(_PUBLISHED_OUTSIDE_CLI).since(
        AutomationCondition.newly_requested() | AutomationCondition.newly_updated()
    )
    & ~AutomationCondition.any_deps_in_progress()
    & ~AutomationCondition.any_deps_match(AutomationCondition.backfill_in_progress())
    # Not all_deps_blocking_checks_passed(): an event kind never imported has a check never run, which would
    # hold the rebuild back for ever.
    & ~AutomationCondition.any_deps_match(
        AutomationCondition.any_checks_match(AutomationCondition.check_failed(), blocking_only=True)
    )
    & ~AutomationCondition.in_progress()
).with_label("raw days published outside the command line, their run over, no blocking check of theirs failed")
"""On the rebuild's first asset (``user_raw_affinities``, the one that reads the events)."""

WITH_THE_REBUILD = AutomationCondition.any_deps_match(AutomationCondition.will_be_requested()).with_label(
    "requested with the rebuild's first asset"
)
"""On the rest of the rebuild: requested on the same tick, so the rebuild is one run."""


def rebuild_after_ingest_sensor(default_status: DefaultSensorStatus) -> AutomationConditionSensorDefinition:
    """The sensor that evaluates the rebuild's conditions; its runs carry ``REBUILD_TAG`` like every rebuild."""
    return AutomationConditionSensorDefinition(
        "rebuild_after_ingest",
        target=REBUILD,
        run_tags=REBUILD_TAG,
        default_status=default_status,
        emit_backfills=False,
        minimum_interval_seconds=30,
        description="After raw event days are published by the schedule, a backfill or the UI: the full rebuild.",
    )
