"""The daily partitions of the raw event assets (UTC days, from PERSONA_EVENTS_START to today), and
how fresh the daily cadence keeps them and the index."""

from __future__ import annotations

from datetime import timedelta

from dagster import DailyPartitionsDefinition, FreshnessPolicy

from persona_assets.settings import PersonaSettings

daily_events = DailyPartitionsDefinition(
    start_date=PersonaSettings.from_env().events_start.isoformat(), timezone="UTC", end_offset=1
)

# The schedule publishes yesterday at 00:30 UTC (06:00 IST) and the rebuild follows. The UI (Dagster's
# freshness daemon) marks a raw event asset late when it was not materialised between 00:00 and 01:30
# UTC (the schedule's hour), and the index when no rebuild finished between 00:00 and 03:00 UTC
# (08:30 IST): a schedule that did not run or a run that failed shows on the asset, not only in the runs.
RAW_DAY_FRESHNESS = FreshnessPolicy.cron(deadline_cron="30 1 * * *", lower_bound_delta=timedelta(hours=1, minutes=30))
INDEX_FRESHNESS = FreshnessPolicy.cron(deadline_cron="0 3 * * *", lower_bound_delta=timedelta(hours=3))
