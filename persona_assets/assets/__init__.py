"""Software-defined assets, grouped by domain: reference data, events, personas, audiences."""

from dagster import load_assets_from_modules

from persona_assets.assets import audiences, events, personas, reference

all_assets = [*load_assets_from_modules([reference, personas, audiences]), *events.raw_event_assets]
