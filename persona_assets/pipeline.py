"""Materialise the assets in-process through Dagster: the command line's door into the same assets
(and the same Dagster instance) that the UI shows."""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from datetime import date, timedelta
from pathlib import Path

from dagster import AssetSelection, DagsterInstance, ExecuteInProcessResult, materialize

from persona_assets.assets import all_assets
from persona_assets.assets.audiences import sync_segment_partitions
from persona_assets.checks import asset_checks
from persona_assets.jobs import CLI_TAG, REBUILD, REBUILD_TAG, REFERENCE, SEGMENT_MEMBERS
from persona_assets.resources import resources_from_settings
from persona_assets.run_errors import step_error
from persona_assets.run_owners import PROCESS_TAG, fail_abandoned_runs, this_process
from persona_assets.settings import PersonaSettings
from persona_assets.stores.events import EVENT_KINDS, EventStore

Progress = Callable[[str], None]
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"
QUIET_LOGGERS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


class _FailuresSaidOnce(logging.Filter):
    """The command says itself which step failed and why (MaterializationFailed), a line per step; Dagster's
    console would print the same failures again with their stack traces (they stay in the UI). Warnings,
    such as a check that failed at WARN, still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


class _RequestFailuresInOneLine(logging.Filter):
    """opensearch-py logs each failed request as a warning with the exception's whole traceback (a node gone
    mid-publish prints dozens of lines per request); the line naming the request stays, the step's own
    failure says why, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


for _logger, _filter in (
    (logging.getLogger("dagster"), _FailuresSaidOnce),
    (logging.getLogger("opensearch"), _RequestFailuresInOneLine),
):
    if not any(isinstance(f, _filter) for f in _logger.filters):
        _logger.addFilter(_filter())


class MaterializationFailed(RuntimeError):
    """A Dagster run of the CLI failed; the message names the failed assets and their errors."""


class InstanceUnavailable(RuntimeError):
    """The Dagster instance named by the environment cannot be opened; the message says what to do."""


def dagster_instance(settings: PersonaSettings) -> DagsterInstance:
    """The persistent instance the UI reads: ``$DAGSTER_HOME``, else ``$PERSONA_HOME/dagster``."""
    named = os.environ.get("DAGSTER_HOME")
    if named and not Path(named).is_dir():
        raise InstanceUnavailable(
            f"DAGSTER_HOME={named} is not a directory: create it, or unset DAGSTER_HOME to use "
            f"{settings.layout.dagster_home} (created on first use)"
        )
    if not named:
        home = settings.layout.dagster_home
        home.mkdir(parents=True, exist_ok=True)
        if PROJECT_DAGSTER_YAML.exists() and not (home / "dagster.yaml").exists():
            shutil.copy(PROJECT_DAGSTER_YAML, home / "dagster.yaml")
        os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


def _run(
    settings: PersonaSettings,
    instance: DagsterInstance,
    selection: AssetSelection,
    label: str,
    progress: Progress,
    tags: dict[str, str] | None = None,
    run_config: dict | None = None,
    partition_key: str | None = None,
) -> ExecuteInProcessResult:
    started = time.perf_counter()
    for run_id in fail_abandoned_runs(instance):
        progress(f"  run {run_id[:8]} was left running by a process that is gone: marked failed")
    progress(f"▶ {label}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = materialize(
            [*all_assets, *asset_checks],
            selection=selection,
            resources=resources_from_settings(settings),
            instance=instance,
            tags={**CLI_TAG, PROCESS_TAG: this_process(), **(tags or {})},
            run_config={**QUIET_LOGGERS, **(run_config or {})},
            partition_key=partition_key,
            raise_on_error=False,
        )
    if not result.success:
        failures = [
            f"{event.step_key}: {step_error(event.step_failure_data.error)}"
            for event in result.all_events
            if event.is_step_failure
        ]
        raise MaterializationFailed(
            f"{label} failed (run {result.run_id[:8]}, details in the Dagster UI):\n  " + "\n  ".join(failures)
        )
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        key = materialization.asset_key.to_user_string()
        if (
            materialization.partition
            and tags
            and materialization.partition != tags.get("dagster/asset_partition_range_start")
        ):
            continue
        shown = {
            k: v.value
            for k, v in materialization.metadata.items()
            if isinstance(v.value, int | float | str) and not k.startswith("dagster/")  # said under its own name
        }
        progress(f"  ✓ {key}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    progress(f"  {label} done in {time.perf_counter() - started:.1f}s (run {result.run_id[:8]})")
    return result


def contiguous_ranges(days: Iterable[str]) -> list[tuple[str, str]]:
    """Group sorted ISO days into (first, last) runs of consecutive days."""
    ranges: list[tuple[str, str]] = []
    for day in sorted(set(days)):
        if ranges and date.fromisoformat(ranges[-1][1]) + timedelta(days=1) == date.fromisoformat(day):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def materialize_reference(settings: PersonaSettings, instance: DagsterInstance, progress: Progress) -> None:
    _run(settings, instance, REFERENCE, "reference data (catalog, categories, pincode tiers)", progress)


def materialize_event_days(
    settings: PersonaSettings,
    instance: DagsterInstance,
    days_by_kind: dict[str, list[str]],
    progress: Progress,
    *,
    publish_missing_as_empty: bool = False,
) -> None:
    """One single-run backfill per contiguous range of days, over the raw assets of the kinds involved
    (``publish_missing_as_empty``: see ``assets.events.RawEventsConfig``)."""
    all_days = sorted({d for days in days_by_kind.values() for d in days})
    for first, last in contiguous_ranges(all_days):
        kinds = [k for k, days in days_by_kind.items() if any(first <= d <= last for d in days)]
        selection = AssetSelection.assets(*[f"raw_{k}" for k in kinds])
        config = {"publish_missing_as_empty": publish_missing_as_empty}
        _run(
            settings,
            instance,
            selection,
            f"events {first} … {last} ({', '.join(kinds)})",
            progress,
            tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
            run_config={"ops": {f"raw_{k}": {"config": config} for k in kinds}},
        )


def materialize_rebuild(
    settings: PersonaSettings, instance: DagsterInstance, progress: Progress, run_config: dict | None = None
) -> ExecuteInProcessResult:
    """The full rebuild, then the members of every saved segment (:func:`materialize_segments`)."""
    result = _run(
        settings,
        instance,
        REBUILD,
        "full rebuild (affinities → vocabulary → personas → index)",
        progress,
        tags=REBUILD_TAG,
        run_config=run_config,
    )
    materialize_segments(settings, instance, progress)
    return result


def materialize_segments(
    settings: PersonaSettings, instance: DagsterInstance, progress: Progress, names: Iterable[str] | None = None
) -> list[str]:
    """The ``segment_members`` partitions made equal to the saved segments, then those of ``names`` (default:
    every saved segment) materialised, one run each; the names done."""
    from persona_assets.stores import relational
    from persona_assets.stores.segments import list_segments

    saved = [stored.segment.name for stored in list_segments(relational.store_engine(settings.db_url))]
    sync_segment_partitions(instance, saved)
    wanted = None if names is None else set(names)
    chosen = saved if wanted is None else [name for name in saved if name in wanted]
    for name in chosen:
        _run(settings, instance, SEGMENT_MEMBERS, f"members of saved segment {name!r}", progress, partition_key=name)
    return chosen


def backfill_days(
    settings: PersonaSettings, first: date, last: date, progress: Progress, *, publish_missing_as_empty: bool = False
) -> None:
    """A backfill after a data fix: every raw event kind for FIRST..LAST in one run, then the rebuild."""
    instance = dagster_instance(settings)
    materialize_reference(settings, instance, progress)
    day, days = first, []
    while day <= last:
        days.append(day.isoformat())
        day += timedelta(days=1)
    materialize_event_days(
        settings,
        instance,
        {kind: days for kind in EVENT_KINDS},
        progress,
        publish_missing_as_empty=publish_missing_as_empty,
    )
    materialize_rebuild(settings, instance, progress)


def materialize_everything(settings: PersonaSettings, progress: Progress) -> None:
    """Reference data, every landed day that is missing or stale in the event store, then the rebuild."""
    instance = dagster_instance(settings)
    materialize_reference(settings, instance, progress)
    store = EventStore(settings.layout.landing_dir, settings.layout.events_dir)
    stale = {kind: store.stale_days(kind) for kind in EVENT_KINDS}
    stale = {kind: days for kind, days in stale.items() if days}
    if stale:
        materialize_event_days(settings, instance, stale, progress)
    else:
        progress("  event store is up to date with the landed days")
    materialize_rebuild(settings, instance, progress)
