"""Lookalike audiences in OpenSearch: rank features times each map's inverse length, then exact rescoring.

The similarity (``search_backend.Centroid``) is, per dimension, a weighted sum of the persona's values at
the centroid's keys times the inverse length of its map. A search is therefore, with no per-document
script, a ``bool`` whose ``should`` holds one ``function_score`` per dimension: its query sums
``rank_feature`` clauses (``linear``, boost = the key's coefficient) on ``<dim>`` and ``<dim>_lo``, and a
``field_value_factor`` multiplies that sum by the document's ``inverse_norm.<dim>``. The gender and home-tier
filters are ``filter`` terms; the seed is a ``must_not`` on ids.

Lucene's order is approximate (a value under 1/16 is indexed without its ``lo``, within 2^-8 of it below;
scores are float32), so every fetched candidate is re-scored with :meth:`Centroid.score` from the exact
values in ``_source`` and the window is widened (``search_after``) until no persona left out can reach
the k-th similarity: a persona's exact similarity is at most its approximate one × (1 + 2^-7).

Document frequencies (how many personas hold a key, for the centroid's weights) come from one ``filters``
aggregation over the live build.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from persona_assets.query.request import MAX_WINDOW
from persona_assets.stores.opensearch_documents import (
    EXACT_FIELD,
    FORMAT,
    HOME_TIER_FIELD,
    INVERSE_NORM_FIELD,
    LO_SUFFIX,
    MAX_TERM_BYTES,
    escape_key,
)
from persona_assets.stores.opensearch_search import complete_search
from persona_assets.stores.search_backend import (
    SIMILARITY_DIMENSIONS,
    IndexTooOld,
    KeyFrequencies,
    Lookalike,
    LookalikeSearch,
)

__all__ = ["key_frequencies", "lookalike_search"]

logger = logging.getLogger(__name__)

#: Bound of exact / approximate similarity (truncated features, float32 arithmetic).
_RELATIVE_ERROR = 2.0**-7
_ABSOLUTE_ERROR = 1e-12
#: Candidates of the first request, at least: each request ranks every matching persona again (~0.4 s at 1M
#: on two cores), and at 1M the window bound needed a few hundred candidates past the k-th.
_FIRST_WINDOW = 1000
#: Candidates fetched at most; beyond it the ranking is logged as unproven.
_WINDOW_CAP = 5 * MAX_WINDOW
_SORT = [{"_score": {"order": "desc"}}, {"ext_id": {"order": "asc"}}]


def _usable(key: str) -> str | None:
    escaped = escape_key(key)
    return escaped if len(escaped.encode("utf-8")) <= MAX_TERM_BYTES else None


def _check_format(client: Any, physical: str) -> None:
    mapping = client.indices.get_mapping(index=physical)
    meta = next(iter(mapping.values()))["mappings"].get("_meta") or {}
    found = meta.get("persona_format")
    if not isinstance(found, int) or found < FORMAT:
        raise IndexTooOld(
            f"the live OpenSearch build {physical} has format {found!r}, older than lookalikes (format {FORMAT}); "
            "rebuild it with `persona materialize`"
        )


def key_frequencies(client: Any, alias: str, keys: Mapping[str, Sequence[str]], documents: int) -> KeyFrequencies:
    """How many personas hold each key: one ``filters`` aggregation, a filter per key."""
    filters: dict[str, Any] = {}
    named: dict[str, tuple[str, str]] = {}
    for dim, wanted in keys.items():
        for key in wanted:
            escaped = _usable(key)
            if escaped is None:
                continue
            name = str(len(named))
            named[name] = (dim, key)
            filters[name] = {"rank_feature": {"field": f"{dim}.{escaped}"}}
    counts: dict[str, dict[str, int]] = {dim: {} for dim in keys}
    if filters:
        body = {"size": 0, "track_total_hits": False, "aggs": {"df": {"filters": {"filters": filters}}}}
        buckets = complete_search(client, alias, body)["aggregations"]["df"]["buckets"]
        for name, bucket in buckets.items():
            dim, key = named[name]
            counts[dim][key] = int(bucket["doc_count"])
    return KeyFrequencies(documents=documents, counts=counts)


class _Plan:
    """The request body of a search and what re-scoring reads from ``_source``."""

    def __init__(self, search: LookalikeSearch) -> None:
        centroid = search.centroid
        should: list[dict[str, Any]] = []
        self.includes = ["gender", HOME_TIER_FIELD, INVERSE_NORM_FIELD]
        self.keys: list[tuple[str, str, str]] = []  # dimension, key, escaped key
        for dim in SIMILARITY_DIMENSIONS:
            clauses = []
            for key, coefficient in zip(centroid.keys.get(dim, ()), centroid.coefficients.get(dim, ()), strict=True):
                escaped = _usable(key)
                if escaped is None:
                    continue  # no document can hold such a feature
                self.keys.append((dim, key, escaped))
                self.includes += [f"{dim}.{escaped}", f"{EXACT_FIELD}.{dim}.{escaped}"]
                for field in (dim, dim + LO_SUFFIX):
                    clauses.append(
                        {"rank_feature": {"field": f"{field}.{escaped}", "linear": {}, "boost": coefficient}}
                    )
            if clauses:
                should.append(
                    {
                        "function_score": {
                            "query": {"bool": {"should": clauses}},
                            "field_value_factor": {"field": f"{INVERSE_NORM_FIELD}.{dim}", "missing": 0},
                            "boost_mode": "multiply",
                        }
                    }
                )
        filters: list[dict[str, Any]] = []
        if search.gender is not None:
            filters.append({"term": {"gender": search.gender}})
        if search.city_tier is not None:
            filters.append({"term": {HOME_TIER_FIELD: search.city_tier}})
        query: dict[str, Any] = {"filter": filters, "should": should, "minimum_should_match": 1}
        if search.excluded:
            query["must_not"] = [{"ids": {"values": sorted(search.excluded)}}]
        self.query = {"bool": query}
        self.empty = not should


def _rescored(hit: dict[str, Any], plan: _Plan, search: LookalikeSearch) -> Lookalike:
    source = hit.get("_source") or {}
    exact = source.get(EXACT_FIELD) or {}
    values: dict[str, dict[str, float]] = {}
    for dim, key, escaped in plan.keys:
        value = (exact.get(dim) or {}).get(escaped)
        if value is None:
            value = (source.get(dim) or {}).get(escaped)
        if value is not None:
            values.setdefault(dim, {})[key] = float(value)
    inverse = {dim: float(v) for dim, v in (source.get(INVERSE_NORM_FIELD) or {}).items()}
    similarity, shared = search.centroid.score(values, inverse)
    return Lookalike(
        ext_id=hit["_id"],
        similarity=similarity,
        gender=source.get("gender"),
        city_tier=source.get(HOME_TIER_FIELD),
        shared=shared,
    )


def lookalike_search(client: Any, alias: str, search: LookalikeSearch) -> list[Lookalike]:
    """The best ``search.size`` personas behind ``alias`` (exact similarities, exact order); restarted when
    a rebuild swaps the alias and deletes the build being paged. A missing alias raises ``NotFoundError``."""
    plan = _Plan(search)
    if plan.empty or search.size <= 0:
        return []
    for attempt in range(5):
        try:
            return _ranked(client, alias, plan, search)
        except _BuildGone:
            if attempt == 4:
                raise RuntimeError(f"OpenSearch alias {alias!r} kept changing during a lookalike search") from None
    raise AssertionError("unreachable")


class _BuildGone(Exception):
    pass


def _ranked(client: Any, alias: str, plan: _Plan, search: LookalikeSearch) -> list[Lookalike]:
    from opensearchpy import NotFoundError

    k = search.size
    body: dict[str, Any] = {
        "query": plan.query,
        "sort": _SORT,
        "_source": {"includes": plan.includes},
        "size": min(max(math.ceil(1.25 * k) + 10, _FIRST_WINDOW), MAX_WINDOW),
        "track_total_hits": False,
    }
    hits = complete_search(client, alias, body)["hits"]["hits"]
    if not hits:
        return []
    physical = hits[0]["_index"]
    _check_format(client, physical)
    candidates = [_rescored(hit, plan, search) for hit in hits]
    last = hits[-1]["sort"]
    while len(hits) == body["size"]:
        candidates.sort(key=lambda c: (-c.similarity, c.ext_id))
        bound = float(last[0]) * (1 + _RELATIVE_ERROR) + _ABSOLUTE_ERROR
        kept = [c for c in candidates if c.similarity >= search.min_similarity]
        if bound < search.min_similarity or (len(kept) >= k and bound < kept[k - 1].similarity):
            break
        if len(candidates) >= _WINDOW_CAP:
            logger.warning("OpenSearch lookalikes: stopped at the window cap of %d candidates", _WINDOW_CAP)
            break
        body = {**body, "size": min(MAX_WINDOW, max(len(candidates), k)), "search_after": last}
        try:
            hits = complete_search(client, physical, body)["hits"]["hits"]
        except NotFoundError:
            raise _BuildGone from None
        if not hits:
            break
        candidates += [_rescored(hit, plan, search) for hit in hits]
        last = hits[-1]["sort"]
    kept = [c for c in candidates if c.similarity > 0 and c.similarity >= search.min_similarity]
    kept.sort(key=lambda c: (-c.similarity, c.ext_id))
    return kept[:k]
