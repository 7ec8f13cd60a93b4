"""Shopper personas as Dagster assets: import, compute, index and query."""
