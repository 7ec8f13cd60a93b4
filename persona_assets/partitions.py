"""The daily partitions of the raw event assets (UTC days, from PERSONA_EVENTS_START to today)."""

from __future__ import annotations

from dagster import DailyPartitionsDefinition

from persona_assets.settings import PersonaSettings

daily_events = DailyPartitionsDefinition(
    start_date=PersonaSettings.from_env().events_start.isoformat(), timezone="UTC", end_offset=1
)
