"""The Dagster definitions: every asset, resource and job, assembled in one place."""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, load_assets_from_modules

from persona_assets.assets import events, personas, reference
from persona_assets.resources import resources_from_settings
from persona_assets.settings import PersonaSettings

all_assets = [*load_assets_from_modules([reference, personas]), *events.raw_event_assets]

REFERENCE = AssetSelection.groups("reference")
EVENTS = AssetSelection.groups("events")
REBUILD = AssetSelection.groups("personas")

full_rebuild_job = define_asset_job(
    "full_rebuild", selection=REBUILD, description="Raw affinities → vocabulary → personas → a fresh index."
)
reference_job = define_asset_job("reference_data", selection=REFERENCE)
ingest_events_job = define_asset_job(
    "ingest_events",
    selection=EVENTS,
)

defs = Definitions(
    assets=all_assets,
    resources=resources_from_settings(PersonaSettings.from_env()),
    jobs=[full_rebuild_job, reference_job, ingest_events_job],
)
