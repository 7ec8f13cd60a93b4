"""Dagster resources: one per store, configured from the environment (see ``settings.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
from dagster import ConfigurableResource, EnvVar
from sqlalchemy.engine import Engine

from persona_assets.compute.duck import DuckDBLimits, connect
from persona_assets.settings import DEFAULT_OPENSEARCH_SHARDS, HomeLayout, PersonaSettings
from persona_assets.stores import relational
from persona_assets.stores.backends import search_backend
from persona_assets.stores.events import EventStore
from persona_assets.stores.search_backend import SearchBackend


class RelationalStore(ConfigurableResource):
    """Catalog, categories, users and their flags, personas, rejects: SQLite or MySQL through SQLAlchemy."""

    db_url: str

    @property
    def engine(self) -> Engine:
        return relational.store_engine(self.db_url)


class EventStoreResource(ConfigurableResource):
    """The day-partitioned Parquet event store and its landing area."""

    home: str

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(Path(self.home))

    @property
    def store(self) -> EventStore:
        return EventStore(landing_dir=self.layout.landing_dir, events_dir=self.layout.events_dir)


class ComputeResource(ConfigurableResource):
    """DuckDB for the set-based steps, bounded by ``PERSONA_MEMORY_LIMIT`` and ``PERSONA_THREADS``.

    Each step opens its own connection; what does not fit spills under ``spill_dir``.
    """

    memory_limit: str
    threads: int
    spill_dir: str

    @property
    def limits(self) -> DuckDBLimits:
        return DuckDBLimits(memory_limit=self.memory_limit, threads=self.threads, temp_directory=Path(self.spill_dir))

    def connect(self) -> duckdb.DuckDBPyConnection:
        return connect(self.limits)


class SearchIndexResource(ConfigurableResource):
    """The segment-search backend: the embedded index, or OpenSearch when ``opensearch_url`` is set."""

    home: str
    opensearch_url: str | None = None
    # The alias queries go through; each rebuild creates "<alias>-<build id>" and swaps the alias to it.
    opensearch_alias: str = "persona_personas"
    # Primary shards and replicas of each new OpenSearch build.
    opensearch_shards: int = DEFAULT_OPENSEARCH_SHARDS
    opensearch_replicas: int = 0
    # TLS of an https node: verify its certificate (against this CA bundle when set).
    opensearch_verify_certs: bool = True
    opensearch_ca_certs: str | None = None

    @property
    def index_dir(self) -> Path:
        return HomeLayout(Path(self.home)).index_dir

    def backend(self) -> SearchBackend:
        """The configured backend: OpenSearch when ``opensearch_url`` is set, else the embedded index."""
        return search_backend(
            self.index_dir,
            self.opensearch_url,
            self.opensearch_alias,
            shards=self.opensearch_shards,
            replicas=self.opensearch_replicas,
            verify_certs=self.opensearch_verify_certs,
            ca_certs=self.opensearch_ca_certs,
        )


def _secret(variable: str, value: str | None) -> str | EnvVar | None:
    """A setting that may hold a password (a database or OpenSearch URL), as Dagster's ``EnvVar`` when it is
    the process environment's: the UI's resource view and the run's config then show the variable's name,
    never its value, and each run reads the value where it executes."""
    if value is not None and os.environ.get(variable) == value:
        return EnvVar(variable)
    return value


def resources_from_settings(settings: PersonaSettings) -> dict[str, ConfigurableResource]:
    """The resources of a code location or an in-process run, from the one settings object. Code that
    needs a store outside a Dagster run takes it from the settings (``relational.store_engine``,
    ``backends.search_backend_for``): a field given as ``EnvVar`` is only resolved inside a run."""
    home = str(settings.home)
    return {
        "relational_store": RelationalStore(db_url=_secret("PERSONA_DB_URL", settings.db_url)),
        "event_store": EventStoreResource(home=home),
        "compute": ComputeResource(
            memory_limit=settings.memory_limit, threads=settings.threads, spill_dir=str(settings.layout.spill_dir)
        ),
        "search_index": SearchIndexResource(
            home=home,
            opensearch_url=_secret("PERSONA_OPENSEARCH_URL", settings.opensearch_url),
            opensearch_alias=settings.opensearch_alias,
            opensearch_shards=settings.opensearch_shards,
            opensearch_replicas=settings.opensearch_replicas,
            opensearch_verify_certs=settings.opensearch_verify_certs,
            opensearch_ca_certs=settings.opensearch_ca_certs,
        ),
    }
