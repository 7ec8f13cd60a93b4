"""The seam between the pipeline and a segment-search backend.

Two implementations: the embedded index (no server, the default) and OpenSearch
(``PERSONA_OPENSEARCH_URL``). The rebuild publishes a whole new build and swaps it in
atomically; the query ranks there. Both answer under the same contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd

from persona_assets.query.request import SegmentQuery
from persona_assets.query.scoring import ScoreWeights
from persona_assets.stores.embedded_index import SearchHits, build_index, open_index


@dataclass(frozen=True)
class PublishReport:
    """What a publish did: the live build, how many documents it holds, and the users it could not index.

    ``failed`` maps ext_id → the last error; those users' ``hasChanged`` flags must not advance.
    """

    build_id: str
    document_count: int
    failed: dict[str, str] = field(default_factory=dict)
    details: dict[str, int | float | str] = field(default_factory=dict)


class SearchBackend(Protocol):
    """What the pipeline and the query service need of a search backend."""

    name: str

    def publish(self, users: pd.DataFrame, affinities: pd.DataFrame) -> PublishReport:
        """Index every persona into a new build and swap it in atomically; old builds are removed."""
        ...

    def search(self, query: SegmentQuery, weights: ScoreWeights) -> SearchHits:
        """Rank the personas passing the gender filter; ``total`` counts them."""
        ...

    def document_count(self) -> int:
        """Personas in the live build."""
        ...


class EmbeddedBackend:
    """The embedded index under ``PERSONA_HOME/index``."""

    name = "embedded"

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir

    def publish(self, users: pd.DataFrame, affinities: pd.DataFrame) -> PublishReport:
        build = build_index(users, affinities, self.index_dir)
        return PublishReport(
            build_id=build.build_id,
            document_count=build.document_count,
            details={"postings": build.posting_count},
        )

    def search(self, query: SegmentQuery, weights: ScoreWeights) -> SearchHits:
        return open_index(self.index_dir).search(query, weights)

    def document_count(self) -> int:
        return open_index(self.index_dir).document_count
