"""The seam between the pipeline and a segment-search backend, and the types it speaks.

Two implementations: the embedded index (``embedded_index``, no server, the default) and OpenSearch
(``opensearch_index``, ``PERSONA_OPENSEARCH_URL``). They import what they share from here, never from
each other. A full rebuild publishes a whole new build and swaps it in atomically; a refresh upserts a
few personas into the live one; the query ranks there. Both answer under the same contract.

Personas travel as a stream of Arrow record batches (:data:`PERSONA_SCHEMA`), so neither side ever
holds every persona at once: ``persona_stream.persona_batches`` produces them with DuckDB under the
configured memory limit, and a backend consumes them batch by batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from persona_assets.compute.duck import DuckDBLimits
from persona_assets.query.request import SegmentQuery
from persona_assets.query.scoring import ScoreWeights

__all__ = [
    "DIMENSIONS",
    "GENDERS",
    "PERSONA_SCHEMA",
    "Hit",
    "IndexNotBuiltError",
    "PersonaBatches",
    "PersonaHandOff",
    "PublishReport",
    "SearchBackend",
    "SearchHits",
]

#: The persona maps, in the order every backend lays them out.
DIMENSIONS = ("brand", "generic", "category", "city", "ecomm")
#: The gender labels of a persona.
GENDERS = ("men", "women", "unisex")

#: One row per persona, whole: its id, gender label and one map per dimension (key -> normalised value).
#:
#: * ``ext_id``: non-null, unique over the whole stream, rows in code-point (UTF-8 byte) order across
#:   batches, so a backend can check uniqueness and lay users out in order without holding them all;
#: * ``gender``: one of :data:`GENDERS`;
#: * each map: keys unique and in code-point order, values finite and >= 0 (a null map = no keys).
#:
#: Producers may hand over equivalent types (``large_string``, dictionaries, any float); the backends
#: check and cast each batch (``persona_stream.checked_batches``).
PERSONA_SCHEMA = pa.schema(
    [
        pa.field("ext_id", pa.string(), nullable=False),
        pa.field("gender", pa.string(), nullable=False),
        *(pa.field(dim, pa.map_(pa.string(), pa.float64())) for dim in DIMENSIONS),
    ]
)

#: A stream of persona batches (a ``pa.RecordBatchReader`` is one).
PersonaBatches = Iterable[pa.RecordBatch]


class IndexNotBuiltError(FileNotFoundError):
    """No build of the search index has been published yet."""


@dataclass(frozen=True)
class Hit:
    ext_id: str
    score: float
    components: dict[str, float]
    gender: str


@dataclass(frozen=True)
class SearchHits:
    total: int
    hits: list[Hit] = field(default_factory=list)


@dataclass(frozen=True)
class PersonaHandOff:
    """The normalised personas a full rebuild hands over as three Parquet files, and the DuckDB limits to
    read them in. The long table is in integers, as the rebuild computes it (strings would cost the writer
    and every reader a join on tens of millions of rows):

    * ``users``: ``ext_id, uid, gender`` (``uid`` unique);
    * ``affinities``: ``uid, kid, value`` (normalised maps; no (uid, kid) twice);
    * ``keys``: ``kid, dimension, key`` (``kid`` unique; no (dimension, key) twice).
    """

    users: Path
    affinities: Path
    keys: Path
    limits: DuckDBLimits | None = None

    @classmethod
    def in_directory(cls, directory: Path, limits: DuckDBLimits | None = None) -> PersonaHandOff:
        """The hand-off files of a build's directory (``persona_users``, ``persona_affinity``,
        ``persona_keys`` ``.parquet``)."""
        directory = Path(directory)
        return cls(
            directory / "persona_users.parquet",
            directory / "persona_affinity.parquet",
            directory / "persona_keys.parquet",
            limits,
        )

    @property
    def files(self) -> tuple[Path, Path, Path]:
        return self.users, self.affinities, self.keys


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

    def publish(self, personas: PersonaBatches) -> PublishReport:
        """Index every persona of the stream into a new build and swap it in atomically; old builds are
        removed. Invalid input raises ``ValueError`` and leaves the live build as it was."""
        ...

    def publish_hand_off(self, hand_off: PersonaHandOff) -> PublishReport:
        """:meth:`publish` the personas of a rebuild's hand-off files, read the way this backend reads fastest."""
        ...

    def upsert(self, personas: PersonaBatches, removed: Sequence[str] = ()) -> PublishReport:
        """Replace (or add) these personas in the live build and drop ``removed`` (users left with no
        events); searchable when this returns."""
        ...

    def search(self, query: SegmentQuery, weights: ScoreWeights) -> SearchHits:
        """Rank the personas passing the gender filter; ``total`` counts them."""
        ...

    def document_count(self) -> int:
        """Personas in the live build."""
        ...
