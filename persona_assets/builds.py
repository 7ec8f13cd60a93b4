"""Which rebuild a step works on: every build keeps its own files and its own flag snapshot.

A build is named by the run that computed its raw affinities (``user_raw_affinities``), and each later
step records the build it worked on in its materialisation. A step takes the build of the upstream it
reads: that upstream's materialisation in this run if it ran here, else its latest (a step re-executed
alone continues the last build). Two rebuilds at once, from any entry point, therefore never read each
other's files or advance flags by each other's snapshot; the one whose index is swapped in last re-flags
whoever changed since its own snapshot (``stores.changes.reflag_changed_since``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable

from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, EventLogEntry, Failure, RunsFilter
from sqlalchemy.engine import Engine

from persona_assets.settings import HomeLayout
from persona_assets.stores.changes import drop_rebuild_snapshots, snapshot_builds

BUILD_METADATA_KEY = "build"
# The assets whose materialisations name a build a later step may still continue from.
BUILD_ASSETS = ("user_raw_affinities", "attribute_vocabulary", "user_personas")


# A run in one of these states will not change again (Dagster's own set, spelled out: its constant is private).
FINISHED = frozenset({DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED})


def _build_named(entry: EventLogEntry | None) -> str | None:
    materialization = entry.asset_materialization if entry is not None else None
    build = materialization.metadata.get(BUILD_METADATA_KEY) if materialization is not None else None
    return None if build is None else str(build.value)


def latest_build(instance: DagsterInstance, asset: str) -> str | None:
    """The build of ``asset``'s latest materialisation (None before the first)."""
    return _build_named(instance.get_latest_materialization_event(AssetKey(asset)))


def upstream_build(instance: DagsterInstance, run_id: str, upstream: str) -> str:
    """The build whose files ``upstream`` left for the calling step (see the module's docstring)."""
    key = AssetKey(upstream)
    in_run = [
        record.event_log_entry
        for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
        if record.asset_key == key
    ]
    build = _build_named(in_run[-1]) if in_run else latest_build(instance, upstream)
    if build is None:
        raise Failure(f"{upstream} has no build to continue from: materialise it (or the whole rebuild) first")
    return build


def _builds_in_use(instance: DagsterInstance) -> set[str]:
    """Builds a run may still read: those of runs not finished, and the latest of each build asset."""
    unfinished = [status for status in DagsterRunStatus if status not in FINISHED]
    in_use = set(instance.get_run_ids(RunsFilter(statuses=unfinished)))
    return in_use | {build for asset in BUILD_ASSETS if (build := latest_build(instance, asset)) is not None}


def prune_builds(instance: DagsterInstance, layout: HomeLayout, engine: Engine, keep: Iterable[str] = ()) -> list[str]:
    """Remove the files and flag snapshots of builds no run can read any more: finished runs superseded
    by a later build, and runs that died (``run_owners.fail_abandoned_runs`` marks a killed command's run
    failed). Files of the layout before builds had directories of their own go too. Returns the builds
    removed."""
    in_use = _builds_in_use(instance) | set(keep)
    on_disk = {path.name for path in layout.builds_dir.iterdir()} if layout.builds_dir.is_dir() else set()
    stale = sorted((on_disk | set(snapshot_builds(engine))) - in_use)
    for build in stale:
        shutil.rmtree(layout.build_dir(build), ignore_errors=True)
    drop_rebuild_snapshots(engine, stale)
    for leftover in layout.work_dir.glob("*.parquet"):
        leftover.unlink(missing_ok=True)
    return stale
