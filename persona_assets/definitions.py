"""The Dagster definitions: every asset, check, job, schedule, sensor and resource, assembled in one place."""

from __future__ import annotations

from dagster import Definitions

from persona_assets.alerts import alert_on_run_failure
from persona_assets.assets import all_assets
from persona_assets.assets.described import describe
from persona_assets.checks import asset_checks
from persona_assets.jobs import full_rebuild_job, ingest_events_job, reference_job
from persona_assets.resources import resources_from_settings
from persona_assets.sensors import (
    changed_users_sensor,
    daily_ingest_schedule,
    rebuild_after_ingest,
    refresh_changed_users,
    segment_membership_sensor,
)
from persona_assets.settings import PersonaSettings

SETTINGS = PersonaSettings.from_env()

defs = Definitions(
    assets=describe(all_assets, SETTINGS),
    asset_checks=asset_checks,
    resources=resources_from_settings(SETTINGS),
    jobs=[full_rebuild_job, reference_job, ingest_events_job, refresh_changed_users],
    schedules=[daily_ingest_schedule],
    sensors=[changed_users_sensor, segment_membership_sensor, rebuild_after_ingest, alert_on_run_failure],
)
