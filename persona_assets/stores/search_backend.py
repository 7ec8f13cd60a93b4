"""The seam between the pipeline and a segment-search backend.

Two implementations: the embedded index (no server, the default) and OpenSearch
(``PERSONA_OPENSEARCH_URL``). The rebuild publishes a whole new build and swaps it in
atomically; the query ranks there. Both answer under the same contract.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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

    def upsert(self, users: pd.DataFrame, affinities: pd.DataFrame, removed: Sequence[str] = ()) -> PublishReport:
        """Replace (or add) these personas in the live build and drop ``removed`` (users left with no
        events); searchable when this returns."""
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
        with self._writer_lock():
            build = build_index(users, affinities, self.index_dir)
        return PublishReport(
            build_id=build.build_id,
            document_count=build.document_count,
            details={"postings": build.posting_count},
        )

    def upsert(self, users: pd.DataFrame, affinities: pd.DataFrame, removed: Sequence[str] = ()) -> PublishReport:
        """A new build = the live one with these personas replaced (and ``removed`` dropped), swapped in
        like a full build.

        Writers (rebuilds and upserts, from any process) take a file lock, so no upsert is lost to
        another writer's swap.
        """
        with self._writer_lock():
            live_users, live_affinities = open_index(self.index_dir).to_tables()
            changed = pa.array([*pd.unique(users["ext_id"]), *removed], pa.string())
            keep_users = live_users.filter(pc.invert(pc.is_in(live_users["ext_id"], value_set=changed)))
            keep_affinities = live_affinities.filter(pc.invert(pc.is_in(live_affinities["ext_id"], value_set=changed)))
            merged_users = pa.concat_tables(
                [
                    keep_users,
                    pa.Table.from_pandas(users[["ext_id", "gender"]], preserve_index=False).cast(keep_users.schema),
                ]
            )
            merged_affinities = pa.concat_tables(
                [
                    keep_affinities,
                    pa.Table.from_pandas(
                        affinities[["ext_id", "dimension", "key", "value"]], preserve_index=False
                    ).cast(keep_affinities.schema),
                ]
            )
            build = build_index(merged_users, merged_affinities, self.index_dir)
        return PublishReport(build_id=build.build_id, document_count=build.document_count)

    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        self.index_dir.mkdir(parents=True, exist_ok=True)
        with (self.index_dir / ".writer.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def search(self, query: SegmentQuery, weights: ScoreWeights) -> SearchHits:
        return open_index(self.index_dir).search(query, weights)

    def document_count(self) -> int:
        return open_index(self.index_dir).document_count
