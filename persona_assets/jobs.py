"""Asset selections and jobs: what the schedule, the sensors and the command line launch."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

REFERENCE = AssetSelection.groups("reference")
EVENTS = AssetSelection.groups("events")
REBUILD = AssetSelection.groups("personas")

# Runs that rebuild (and swap) the whole index carry this tag, so the refresh sensor waits for them.
REBUILD_TAG = {"persona/rebuild": "true"}
# Runs launched by the command line, which materialises the rebuild itself after an import.
CLI_TAG = {"persona/source": "cli"}

full_rebuild_job = define_asset_job(
    "full_rebuild",
    selection=REBUILD,
    tags=REBUILD_TAG,
    description="Raw affinities → vocabulary → personas → a fresh index, swapped in atomically.",
)
reference_job = define_asset_job("reference_data", selection=REFERENCE, description="Catalog, categories, tiers.")
ingest_events_job = define_asset_job(
    "ingest_events",
    selection=EVENTS,
    description="Publish landed days into the event store and flag their users (daily partitions).",
)
