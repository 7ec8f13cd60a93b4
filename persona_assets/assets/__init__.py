"""Software-defined assets, grouped by domain: reference data, events, personas."""
