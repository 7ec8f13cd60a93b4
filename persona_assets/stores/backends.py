"""The search backend a configuration names: one factory for the CLI, the HTTP server and the Dagster resource.

The query path needs nothing of Dagster: ``persona query`` and ``persona serve`` call
:func:`search_backend_for` with the settings they already read.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from persona_assets.settings import DEFAULT_OPENSEARCH_SHARDS, PersonaSettings
from persona_assets.stores.search_backend import SearchBackend

__all__ = ["search_backend", "search_backend_for"]


def search_backend(
    index_dir: Path,
    opensearch_url: str | None = None,
    alias: str = "persona_personas",
    *,
    shards: int = DEFAULT_OPENSEARCH_SHARDS,
    replicas: int = 0,
    verify_certs: bool = True,
    ca_certs: str | None = None,
) -> SearchBackend:
    """OpenSearch behind ``alias`` when ``opensearch_url`` is given (new builds with ``shards`` primary
    shards and ``replicas`` replicas; an ``https`` node's certificate checked unless ``verify_certs`` is
    off, against ``ca_certs`` when given), else the embedded index in ``index_dir``."""
    if opensearch_url:
        return _opensearch_backend(opensearch_url, alias, shards, replicas, verify_certs, ca_certs)
    from persona_assets.stores.embedded_backend import EmbeddedBackend

    return EmbeddedBackend(index_dir)


def search_backend_for(settings: PersonaSettings) -> SearchBackend:
    """The backend ``PERSONA_OPENSEARCH_URL`` / ``PERSONA_OPENSEARCH_ALIAS`` / ``PERSONA_HOME`` name."""
    return search_backend(
        settings.layout.index_dir,
        settings.opensearch_url,
        settings.opensearch_alias,
        shards=settings.opensearch_shards,
        replicas=settings.opensearch_replicas,
        verify_certs=settings.opensearch_verify_certs,
        ca_certs=settings.opensearch_ca_certs,
    )


@cache
def _opensearch_backend(
    url: str, alias: str, shards: int, replicas: int, verify_certs: bool, ca_certs: str | None
) -> SearchBackend:
    """One backend (one client and its connection pool) per node and alias, for the life of the process."""
    from persona_assets.stores.opensearch_index import OpenSearchBackend

    return OpenSearchBackend(
        url, alias=alias, shards=shards, replicas=replicas, verify_certs=verify_certs, ca_certs=ca_certs
    )
