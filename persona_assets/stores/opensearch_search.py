"""Ranking a segment query in OpenSearch: approximate order from rank features, exact scores from ``_source``.

The ranking request's query is a pure disjunction: for each component given (tier, brand, generic name,
category) with a weight above 0, two ``should`` clauses ``rank_feature`` (``linear``, boost = the weight)
on ``<dim>`` and ``<dim>_lo``; the constants of the components not given (C = 1/3, B = G = K = 1) are
the same for everyone and are added client-side. The gender is a ``post_filter``, not a ``filter``
clause: a bool with a required clause makes Lucene 9 score every persona passing it, while a pure
disjunction is scored by its max-score bulk scorer, which skips the personas that cannot enter the top
k (at 1M, node ``took`` p50 15 → 4 ms, p99 32 → 16–20 ms; see docs/benchmarks.md). The post filter applies before the top
k is collected, so the hits are the best of the personas passing it, and what the collector skips for
its threshold could not have entered the page whatever their gender.
Hits are sorted ``_score`` desc, ``ext_id`` asc. The ranking request does not count its matches
(counting makes the node visit every persona passing the filter: a third of the time of a query at
1M); ``total`` is a second, filter-only request on the same physical index, which Lucene answers from
the filter's postings and the node caches per build. Personas holding none of the asked keys are not
matched by the disjunction: they score the constants (plus, at most, values too small to be a rank
feature), below everyone matched, so when fewer than ``from + size`` personas match, the page is filled
from them in ``ext_id`` order (a third request).

Reported scores never use the approximation: every fetched candidate is re-scored with
:func:`~persona_assets.query.scoring.score_persona` from the exact float64 values in ``_source`` (a rank
feature's value as sent, or ``exact`` for a value no feature can hold)
(bit-identical to the embedded index). The candidate window starts at ``overfetch × (from + size) + 10``;
it is widened (``search_after``, on the same physical index) until no persona left out can score more
than the tolerance (the contract's 1e-3) above the k-th returned one: an unfetched persona has an
approximate score at most the window's last one, so its exact score is at most that × (1 + 2^-14)
plus the error of the values indexed without ``lo`` (``UNSPLIT_ERROR`` times the weights given)
plus the constants. With the hi/lo split the first window settles the contract's 1e-3 in practice;
widening matters for a smaller tolerance and stops at the window cap (at least ``from + size``) with a
warning in the log. Exact ties between personas whose components differ (0.35·1 + 0 vs
0.15·1 + 0.20·1) may be cut at the page boundary differently from the embedded index (allowed: the
left-out persona scores no more than the returned one). A query with nothing to rank by (no criteria,
or only zero weights) is the ``ext_id`` order: plain ``from``/``size`` (the contract caps ``from + size``
at 10,000, OpenSearch's ``max_result_window``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from persona_assets.query.request import MAX_WINDOW, SegmentQuery
from persona_assets.query.scoring import NO_TIER_C, ScoreWeights, score_persona
from persona_assets.stores.opensearch_documents import (
    APPROX_RELATIVE_ERROR,
    EXACT_FIELD,
    LO_SUFFIX,
    MAX_TERM_BYTES,
    UNSPLIT_ERROR,
    escape_key,
)
from persona_assets.stores.relational import MAX_NAME_LENGTH
from persona_assets.stores.search_backend import Hit, IncompleteAnswer, SearchHits

__all__ = ["IndexMissing", "RankWindow", "complete_search", "search_alias"]

logger = logging.getLogger(__name__)

#: Absolute slack: values below float32's smallest normal (1.2e-38) cannot be rank features.
_APPROX_ABSOLUTE_ERROR = 1e-12
_SORT = [{"_score": {"order": "desc"}}, {"ext_id": {"order": "asc"}}]

Candidate = tuple[float, str, dict[str, float], str]  # score, ext_id, components, gender


class IndexMissing(Exception):
    """The alias names no index (nothing published yet)."""


#: Attempts at a search whose shards did not all answer (a node leaving: its copies move to others).
SEARCH_ATTEMPTS = 4
_RETRY_PAUSE = 0.25


def complete_search(client: Any, index: str, body: dict[str, Any]) -> dict[str, Any]:
    """``client.search`` answered by every shard, or an error: never a partial answer.

    OpenSearch answers from the shards it reached unless told otherwise, so a search while a node
    leaves could silently miss the personas of a shard. ``allow_partial_search_results=false`` turns
    that into an error, which is retried (with a short pause while the copies move), as is any answer
    that still reports a failed shard or a timeout.
    """
    from opensearchpy import TransportError

    problem = ""
    for attempt in range(SEARCH_ATTEMPTS):
        if attempt:
            time.sleep(_RETRY_PAUSE * 2 ** (attempt - 1))
        try:
            response = client.search(index=index, body=body, allow_partial_search_results=False)
        except TransportError as error:
            # a shard that failed on the node's side (5xx); a 4xx (a query refused) is raised as it is
            server_side = isinstance(error.status_code, int) and error.status_code >= 500
            if error.error != "search_phase_execution_exception" or not server_side:
                raise
            problem = f"{error.error}: {error.info}"[:500]
            continue
        shards = response.get("_shards") or {}
        if not shards.get("failed") and not response.get("timed_out"):
            return response
        problem = f"{shards.get('successful')} of {shards.get('total')} shards answered"
        problem += ", timed out" if response.get("timed_out") else ""
    logger.warning("OpenSearch search on %s stayed incomplete after %d attempts: %s", index, SEARCH_ATTEMPTS, problem)
    raise IncompleteAnswer(f"OpenSearch could not answer from every shard of {index} ({problem})")


class _BuildGone(Exception):
    """The physical index a paged search was reading has been swapped out and deleted."""


@dataclass(frozen=True)
class RankWindow:
    """How hard a search works for its ranking guarantee.

    ``tolerance``: no persona left out may score more than this above a returned one; ``overfetch``: the
    first window is ``overfetch × (from + size) + 10``; ``cap``: candidates fetched at most (at least
    ``from + size``), beyond which the guarantee is logged as unproven.
    """

    tolerance: float = 1e-3
    overfetch: float = 1.25
    cap: int = MAX_WINDOW


@dataclass(frozen=True)
class _Plan:
    ranking_query: dict[str, Any]  # the disjunction of the rank features asked
    gender_filter: dict[str, Any] | None  # the ranking's post filter; None: everyone passes
    count_query: dict[str, Any]  # the gender filter alone: what ``total`` counts
    rest_query: dict[str, Any]  # personas passing the gender filter and holding no feature asked
    includes: list[str]
    given: list[tuple[str, str, str]]  # (dimension, key, escaped key)
    constant: float  # the constant components' share of every score
    slack: float  # what values indexed without lo may add to an approximate score, at most
    has_variable: bool


def _plan(query: SegmentQuery, w: ScoreWeights) -> _Plan:
    components = (
        ("city", query.city_tier, w.city, NO_TIER_C),
        ("brand", query.brand, w.brand, 1.0),
        ("generic", query.generic_name, w.generic, 1.0),
        ("category", query.category_id, w.category, 1.0),
    )
    should: list[dict[str, Any]] = []
    includes = ["gender"]
    given: list[tuple[str, str, str]] = []
    constant = slack = 0.0
    for dim, key, weight, default in components:
        if key is None:
            constant += weight * default
            continue
        escaped = escape_key(key)
        given.append((dim, key, escaped))
        if len(key) > MAX_NAME_LENGTH:
            continue  # no stored persona has such a key (imports reject longer names): it scores 0
        includes += [f"{dim}.{escaped}", f"{EXACT_FIELD}.{dim}.{escaped}"]
        if weight <= 0 or len(escaped.encode("utf-8")) > MAX_TERM_BYTES:
            continue  # no score from it, or no document can hold such a feature
        for field in (dim, dim + LO_SUFFIX):
            should.append({"rank_feature": {"field": f"{field}.{escaped}", "linear": {}, "boost": weight}})
        slack += weight * UNSPLIT_ERROR
    gender_filter = None if query.gender is None else {"term": {"gender": query.gender}}
    passes = [gender_filter or {"match_all": {}}]
    return _Plan(
        ranking_query={"bool": {"should": should}},
        gender_filter=gender_filter,
        count_query={"bool": {"filter": passes}},
        rest_query={"bool": {"filter": passes, "must_not": should}},
        includes=includes,
        given=given,
        constant=constant,
        slack=slack,
        has_variable=bool(should),
    )


def search_alias(client: Any, alias: str, query: SegmentQuery, w: ScoreWeights, window: RankWindow) -> SearchHits:
    """Rank the personas behind ``alias`` passing the gender filter; raises :class:`IndexMissing`."""
    plan = _plan(query, w)
    for _attempt in range(5):
        try:
            return _Search(client, alias, plan, query, w, window).run()
        except _BuildGone:
            continue  # the alias moved on while we paged: start again on the new build
    raise RuntimeError(f"OpenSearch alias {alias!r} kept changing during a search")


class _Search:
    """One attempt at a query (restarted when the alias moves on while it pages)."""

    def __init__(
        self, client: Any, alias: str, plan: _Plan, query: SegmentQuery, w: ScoreWeights, window: RankWindow
    ) -> None:
        self.client, self.alias, self.plan, self.query, self.w, self.window = client, alias, plan, query, w, window

    def _request(self, index: str, body: dict[str, Any], *, first: bool) -> dict[str, Any]:
        from opensearchpy import NotFoundError

        try:
            return complete_search(self.client, index, body)
        except NotFoundError:
            if first:
                raise IndexMissing(self.alias) from None
            raise _BuildGone from None

    def run(self) -> SearchHits:
        plan, query = self.plan, self.query
        if query.size <= 0:
            return SearchHits(total=self._total(self.alias, first=True))
        if not plan.has_variable:
            return self._rest_page()
        k = query.offset + query.size
        size = min(math.ceil(self.window.overfetch * k) + 10, MAX_WINDOW)
        hits = self._request(self.alias, self._ranking_body(size), first=True)["hits"]["hits"]
        if not hits:
            return self._rest_page()  # nobody passing the filter holds a key asked
        physical = hits[0]["_index"]
        total = self._total(physical, first=False)
        if query.offset >= total:
            return SearchHits(total=total)
        candidates: list[Candidate] = []
        self._score(hits, candidates)
        if len(hits) == size:  # else every persona matched is fetched
            self._widen(physical, hits[-1]["sort"], min(k, total), total, candidates)
        if len(candidates) < min(k, total):  # fewer matched than the page needs: the rest follow
            self._fill(physical, min(k, total) - len(candidates), candidates)
        return self._page(total, candidates)

    def _ranking_body(self, size: int, search_after: list[Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "query": self.plan.ranking_query,
            "sort": _SORT,
            "_source": {"includes": self.plan.includes},
            "size": size,
            "track_total_hits": False,
        }
        if self.plan.gender_filter is not None:
            body["post_filter"] = self.plan.gender_filter
        if search_after is not None:
            body["search_after"] = search_after
        return body

    def _total(self, index: str, *, first: bool) -> int:
        """Personas passing the gender filter: counted apart from the ranking, so that the ranking need
        not visit every one of them (Lucene answers a filter's count from its postings, and the node
        caches it per build)."""
        body = {"query": self.plan.count_query, "size": 0, "track_total_hits": True}
        return int(self._request(index, body, first=first)["hits"]["total"]["value"])

    def _widen(self, physical: str, last_sort: list[Any], k: int, total: int, candidates: list[Candidate]) -> None:
        """Fetch more candidates until nobody left out can beat the k-th by more than the tolerance."""
        plan, cap = self.plan, max(self.window.cap, k)
        while len(candidates) < total:
            if len(candidates) >= k:
                candidates.sort(key=lambda c: (-c[0], c[1]))
                kth = candidates[k - 1][0]
                approximate = float(last_sort[0]) * (1 + APPROX_RELATIVE_ERROR)
                bound = plan.constant + approximate + plan.slack + _APPROX_ABSOLUTE_ERROR
                if bound <= kth + self.window.tolerance:
                    return
                if len(candidates) >= cap:
                    logger.warning(
                        "OpenSearch search %s: stopped at the window cap of %d candidates; a persona left out "
                        "may score up to %.3g above the last one returned (tolerance %.3g)",
                        self.query,
                        cap,
                        bound - kth,
                        self.window.tolerance,
                    )
                    return
            size = max(1, min(MAX_WINDOW, cap - len(candidates), max(len(candidates), k - len(candidates))))
            hits = self._request(physical, self._ranking_body(size, last_sort), first=False)["hits"]["hits"]
            self._score(hits, candidates)
            if len(hits) < size:
                return  # every persona matched is fetched
            last_sort = hits[-1]["sort"]

    def _rest_body(self, offset: int, size: int, *, count: bool) -> dict[str, Any]:
        """Personas holding no key asked, in ``ext_id`` order (they tie on the constants)."""
        return {
            "query": self.plan.rest_query,
            "sort": [{"ext_id": {"order": "asc"}}],
            "track_total_hits": count,
            "from": offset,
            "size": size,
            "_source": {"includes": self.plan.includes},
        }

    def _fill(self, physical: str, count: int, candidates: list[Candidate]) -> None:
        """The first ``count`` personas holding no key asked, after every persona matched."""
        body = self._rest_body(0, count, count=False)
        self._score(self._request(physical, body, first=False)["hits"]["hits"], candidates)

    def _rest_page(self) -> SearchHits:
        """Nobody passing the filter is ranked by a feature (nothing asked to rank by, or nobody holds a key
        asked): everyone scores the constants, so the page is the ``ext_id`` order."""
        body = self._rest_body(self.query.offset, self.query.size, count=True)
        response = self._request(self.alias, body, first=True)
        candidates: list[Candidate] = []
        self._score(response["hits"]["hits"], candidates)
        return self._page(int(response["hits"]["total"]["value"]), candidates, offset=0)

    def _page(self, total: int, candidates: list[Candidate], offset: int | None = None) -> SearchHits:
        start = self.query.offset if offset is None else offset
        candidates.sort(key=lambda c: (-c[0], c[1]))
        return SearchHits(
            total=total,
            hits=[
                Hit(ext_id=ext_id, score=score, components=components, gender=gender)
                for score, ext_id, components, gender in candidates[start : start + self.query.size]
            ],
        )

    def _score(self, hits: list[dict[str, Any]], out: list[Candidate]) -> None:
        for hit in hits:
            source = hit.get("_source") or {}
            exact = source.get(EXACT_FIELD) or {}
            persona: dict[str, Any] = {"gender": source.get("gender")}
            for dim, key, escaped in self.plan.given:
                # a value the rank features cannot hold (or any value, in builds of format 2) is in exact
                value = (exact.get(dim) or {}).get(escaped)
                if value is None:
                    value = (source.get(dim) or {}).get(escaped)
                if value is not None:
                    persona[dim] = {key: value}
            score, components = score_persona(persona, self.query, self.w)
            out.append((score, hit["_id"], components, source.get("gender")))
