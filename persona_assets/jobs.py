"""Asset selections and jobs: what the schedule, the sensors and the command line launch."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

REFERENCE = AssetSelection.groups("reference")
EVENTS = AssetSelection.groups("events")
REBUILD = AssetSelection.groups("personas")
SEGMENT_MEMBERS = AssetSelection.assets("segment_members")

# Runs that rebuild (and swap) the whole index carry this tag, so the refresh sensor waits for them.
REBUILD_TAG = {"persona/rebuild": "true"}
# Steps that may each take the whole PERSONA_MEMORY_LIMIT (the rebuild's, a refresh's): the instance's pool
# limit (dagster.yaml: concurrency.pools.default_limit, 1) runs one at a time across every run, whichever
# entry point launched it (command line, UI, schedule, sensor), so two runs never need twice the memory.
COMPUTE_POOL = "persona_compute"
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
