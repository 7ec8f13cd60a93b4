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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import pyarrow as pa

from persona_assets.compute.duck import DuckDBLimits
from persona_assets.query.request import SegmentQuery
from persona_assets.query.scoring import ScoreWeights

__all__ = [
    "DIMENSIONS",
    "GENDERS",
    "PERSONA_SCHEMA",
    "SHARED_ATTRIBUTES",
    "SIMILARITY_DIMENSIONS",
    "TIERS",
    "Centroid",
    "Hit",
    "IncompleteAnswer",
    "IndexNotBuiltError",
    "IndexTooOld",
    "KeyFrequencies",
    "Lookalike",
    "LookalikeSearch",
    "PersonaBatches",
    "PersonaHandOff",
    "PublishReport",
    "SearchBackend",
    "SearchHits",
    "SharedAttribute",
    "home_tier",
    "home_tier_codes",
    "inverse_norm",
    "inverse_norms_by_row",
    "strongest",
]

#: The persona maps, in the order every backend lays them out.
DIMENSIONS = ("brand", "generic", "category", "city", "ecomm")
#: The gender labels of a persona.
GENDERS = ("men", "women", "unisex")
#: The city tiers, best first.
TIERS = ("Tier1", "Tier2", "Tier3")
#: The maps a lookalike's similarity compares, in the order it sums them (the scored ones).
SIMILARITY_DIMENSIONS = ("city", "brand", "generic", "category")
#: Attributes a lookalike reports as shared with the seed, at most.
SHARED_ATTRIBUTES = 5

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


class IndexTooOld(RuntimeError):
    """The live build predates what was asked of it (lookalikes need OpenSearch builds of format 4)."""


class IncompleteAnswer(RuntimeError):
    """Part of the index could not answer (a shard with no copy left on a running node): an answer
    without it would silently miss personas, so there is none; try again later."""


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


def home_tier(city: Mapping[str, float]) -> str | None:
    """A shopper's city tier: the tier with the largest share of their city map (the better tier on a tie);
    ``None`` with no city events."""
    best = max(TIERS, key=lambda tier: (city.get(tier, 0.0), -TIERS.index(tier)))
    return best if city.get(best, 0.0) > 0 else None


def home_tier_codes(city: np.ndarray) -> np.ndarray:
    """:func:`home_tier` of each row of a (personas x 3) matrix of city values in :data:`TIERS` order, as an
    index into :data:`TIERS` (-1: none)."""
    best = np.argmax(city, axis=1)  # the first maximum: the better tier on a tie
    return np.where(city[np.arange(len(city)), best] > 0, best, -1).astype(np.int8)


def inverse_norm(values: Iterable[float]) -> float:
    """1 / the Euclidean length of a map's values, summed in the order given (key order), 0 for an empty map."""
    total = 0.0
    for value in values:
        total += value * value
    return 1.0 / float(np.sqrt(total)) if total > 0 else 0.0


def inverse_norms_by_row(parents: np.ndarray, values: np.ndarray, rows: int) -> np.ndarray:
    """:func:`inverse_norm` of every row's map from its entries (``parents[i]``: the row of ``values[i]``),
    each row's squares summed in entry order: both backends call this, so they multiply by the same floats."""
    total = np.bincount(parents, weights=values * values, minlength=rows)
    inverse = np.zeros(rows, dtype=np.float64)
    np.divide(1.0, np.sqrt(total), out=inverse, where=total > 0)
    return inverse


class SharedAttribute(NamedTuple):
    """One key a lookalike shares with its seed, and what it adds to the similarity (a tuple: an answer
    holds thousands)."""

    dimension: str
    key: str
    contribution: float


@dataclass(frozen=True)
class Centroid:
    """A seed's mean persona cut to its largest keys, as the similarity's coefficients (docs/audiences.md).

    For dimension d, ``keys[d]`` are the kept keys (heaviest first), ``weights[d]`` their weights in the
    centroid c_d and ``coefficients[d]`` = (w_d / W) · c_d[k] / |c_d|. A persona p with maps p_d scores

        similarity = Σ_d (Σ_k p_d[k] · coefficient_d[k]) · inverse_norm(p_d)

    summed over :data:`SIMILARITY_DIMENSIONS` in that order, keys in ``keys[d]`` order: the weighted mean of
    the cosines between the persona's maps and the centroid's. :meth:`score` is the reference both backends
    reproduce float for float.
    """

    keys: Mapping[str, tuple[str, ...]]
    weights: Mapping[str, tuple[float, ...]]
    coefficients: Mapping[str, tuple[float, ...]]

    def score(
        self, values: Mapping[str, Mapping[str, float]], inverse_norms: Mapping[str, float]
    ) -> tuple[float, tuple[SharedAttribute, ...]]:
        """The similarity of a persona given its values at the centroid's keys (absent: 0) and the inverse
        norms of its whole maps, and the attributes that contribute most to it."""
        similarity = 0.0
        shared: list[SharedAttribute] = []
        for dim in SIMILARITY_DIMENSIONS:
            mine, inverse = values.get(dim) or {}, inverse_norms.get(dim, 0.0)
            dot = 0.0
            for key, coefficient in zip(self.keys.get(dim, ()), self.coefficients.get(dim, ()), strict=True):
                value = mine.get(key)
                if value:
                    dot += value * coefficient
                    shared.append(SharedAttribute(dim, key, value * coefficient * inverse))
            similarity += dot * inverse
        return similarity, strongest(shared)


def strongest(shared: Iterable[SharedAttribute]) -> tuple[SharedAttribute, ...]:
    """The :data:`SHARED_ATTRIBUTES` largest contributions (ties: dimension order, then key)."""
    order = {dim: i for i, dim in enumerate(SIMILARITY_DIMENSIONS)}
    ranked = sorted(
        (s for s in shared if s.contribution > 0), key=lambda s: (-s.contribution, order[s.dimension], s.key)
    )
    return tuple(ranked[:SHARED_ATTRIBUTES])


@dataclass(frozen=True)
class KeyFrequencies:
    """How many personas a backend holds (``documents``), and per dimension and key how many hold that key."""

    documents: int
    counts: Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class LookalikeSearch:
    """What a backend ranks for a lookalike audience: the personas most similar to ``centroid``, best first
    (ties: ext_id ascending), similarity > 0 and ≥ ``min_similarity``, at most ``size``, none of ``excluded``,
    passing the gender and home-tier filters (``None``: no filter)."""

    centroid: Centroid
    size: int
    min_similarity: float = 0.0
    excluded: frozenset[str] = frozenset()
    gender: str | None = None
    city_tier: str | None = None


@dataclass(frozen=True)
class Lookalike:
    ext_id: str
    similarity: float
    gender: str
    city_tier: str | None
    shared: tuple[SharedAttribute, ...]


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

    def key_frequencies(self, keys: Mapping[str, Sequence[str]]) -> KeyFrequencies:
        """The personas in the live build, and how many of them hold each of ``keys`` (per dimension)."""
        ...

    def lookalikes(self, search: LookalikeSearch) -> list[Lookalike]:
        """The personas most similar to a seed's centroid (:class:`LookalikeSearch`), exactly ranked."""
        ...

    def document_count(self) -> int:
        """Personas in the live build."""
        ...
