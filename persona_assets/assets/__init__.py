"""Software-defined assets, grouped by domain: reference data, events, personas."""

from dagster import load_assets_from_modules

from persona_assets.assets import events, personas, reference

all_assets = [*load_assets_from_modules([reference, personas]), *events.raw_event_assets]
