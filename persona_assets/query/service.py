"""The segment query (contract section 4): rank in the search backend, enrich from the relational store.

One service, two front doors: ``persona query`` and ``POST /fetchPersonas``. It takes a plain engine and
a plain :class:`~persona_assets.stores.search_backend.SearchBackend`, so neither door needs Dagster.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
from sqlalchemy.engine import Connection, Engine

from persona_assets.contract.tokens import contains_name, tokenize
from persona_assets.query.request import SegmentQuery, parse_segment_request
from persona_assets.query.scoring import ScoreWeights
from persona_assets.stores import relational
from persona_assets.stores.search_backend import IncompleteAnswer, IndexNotBuiltError, IndexTooOld, SearchBackend

MAX_PRODUCTS = 50
MAX_SEARCH_TERMS = 20
#: Error messages describing a failure are cut at this length.
MAX_MESSAGE_CHARS = 1000

# Store failures that mean "try again later" rather than "the service is broken".
_STORE_DOWN = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)


def describe_error(error: BaseException) -> str:
    """One line naming the error: its type and the first line of its message."""
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:MAX_MESSAGE_CHARS]


def unavailable_reason(error: BaseException) -> str | None:
    """Why no answer can be given right now (no index built yet, a store unreachable), or None when
    ``error`` is not such a state. Both doors say the same: ``persona query`` as its error line, HTTP as a 503."""
    if isinstance(error, IndexNotBuiltError):
        return f"no search index has been built yet; run `persona materialize` ({error})"
    if isinstance(error, IndexTooOld):
        return str(error)
    if isinstance(error, _STORE_DOWN):
        return f"the relational store cannot be reached: {describe_error(error)}"
    if isinstance(error, OpenSearchConnectionError):
        return f"the search index cannot be reached: {describe_error(error)}"
    if isinstance(error, IncompleteAnswer):
        return f"the search index cannot answer from all of its shards now: {error}"
    return None


def fetch_personas(payload: object, engine: Engine, backend: SearchBackend, weights: ScoreWeights) -> dict[str, Any]:
    """Validate ``payload`` (raises ``InvalidRequest`` naming the field) and answer it with ``weights``
    (``settings.PersonaSettings.weights``)."""
    query = parse_segment_request(payload)
    hits = backend.search(query, weights)
    with engine.connect() as conn:
        activity = _activity(conn, [hit.ext_id for hit in hits.hits])
        matches = _product_matcher(conn, query, activity)
    name_tokens = [tokenize(n) for n in (query.brand, query.generic_name) if n is not None]
    results = []
    for hit in hits.hits:
        recent = activity.get(hit.ext_id, _NO_ACTIVITY)
        results.append(
            {
                "ext_id": hit.ext_id,
                "score": hit.score,
                "components": hit.components,
                "gender": hit.gender,
                "visited": _matching(recent.visited, matches, MAX_PRODUCTS),
                "purchased": _matching(recent.purchased, matches, MAX_PRODUCTS),
                "search_terms": _recent_terms(recent.searches, name_tokens),
            }
        )
    return {"total": hits.total, "results": results}


class RecentActivity(NamedTuple):
    """One ``user_activity`` row decoded: distinct pids visited, pids purchased and search texts, each
    newest first (ties by code point)."""

    visited: list[str]
    purchased: list[str]
    searches: list[str]


_NO_ACTIVITY = RecentActivity([], [], [])


def _activity(conn: Connection, ext_ids: list[str]) -> dict[str, RecentActivity]:
    """The ``user_activity`` rows of the page's users, JSON decoded (orjson: a page decodes ~20 rows of a
    few KiB each, a good share of an answer's CPU with the standard library)."""
    if not ext_ids:
        return {}
    rows = conn.execute(_ACTIVITY_OF, {"ext_ids": ext_ids}).all()
    return {row.ext_id: _decode_activity(row.products, row.searches) for row in rows}


# Built once, the ids bound at execution (an expanding IN): building an IN of literals cost SQLAlchemy more
# per answer than the lookup itself (hundreds of pids for the product criteria).
_ACTIVITY_OF = sa.select(relational.user_activity).where(
    relational.user_activity.c.ext_id.in_(sa.bindparam("ext_ids", expanding=True))
)
_PIDS_AMONG = sa.select(relational.products.c.pid).where(
    relational.products.c.pid.in_(sa.bindparam("pids", expanding=True))
)


def _decode_activity(products_text: str, searches_text: str) -> RecentActivity:
    """A ``user_activity`` row; rows of older builds (one entry per product or text with its times, as
    ``[pid, visited_us, purchased_us]``/``[query, searched_us]`` or as objects) are put in the same order."""
    products, searches = orjson.loads(products_text), orjson.loads(searches_text)
    if isinstance(products, dict):
        visited, purchased = products["visited"], products["purchased"]
    else:
        entries = [_positional(item, ("pid", "visited_us", "purchased_us")) for item in products]
        visited, purchased = _newest_first(entries, 1), _newest_first(entries, 2)
    if any(not isinstance(item, str) for item in searches):
        searches = _newest_first([_positional(item, ("query", "searched_us")) for item in searches], 1)
    return RecentActivity(visited, purchased, searches)


def _positional(item: list[Any] | dict[str, Any], fields: tuple[str, ...]) -> list[Any]:
    entry = [item[f] for f in fields] if isinstance(item, dict) else item
    if len(entry) != len(fields):
        raise ValueError(f"user_activity: an entry does not hold the {len(fields)} fields {fields}")
    return entry


def _newest_first(entries: list[list[Any]], when: int) -> list[str]:
    """The names (position 0) of entries with a time at position ``when``, newest first, ties by name."""
    kept = [e for e in entries if e[when] is not None]
    kept.sort(key=lambda e: (-e[when], e[0]))
    return [e[0] for e in kept]


def _product_matcher(conn: Connection, query: SegmentQuery, activity: dict[str, RecentActivity]) -> set[str] | None:
    """The page's pids that match every product-level criterion; None when no criterion is given."""
    if not query.has_product_criteria:
        return None
    pids = sorted({pid for recent in activity.values() for pid in (*recent.visited, *recent.purchased)})
    if not pids:
        return set()
    p = relational.products
    select = _PIDS_AMONG
    if query.brand is not None:
        select = select.where(p.c.brand == query.brand)
    if query.generic_name is not None:
        select = select.where(p.c.generic_name == query.generic_name)
    if query.category_id is not None:
        category = int(query.category_id)
        if abs(category) > relational.INT64_MAX:
            return set()  # no stored id can be that large
        select = select.where(p.c[f"cat_l{query.category_level}"] == category)
    return {row.pid for row in conn.execute(select, {"pids": pids})}


def _matching(pids: list[str], matches: set[str] | None, limit: int) -> list[str]:
    """The first ``limit`` of ``pids`` (newest first) that match the product criteria (all when none)."""
    if matches is None:
        return pids[:limit]
    kept = []
    for pid in pids:
        if pid in matches:
            kept.append(pid)
            if len(kept) == limit:
                break
    return kept


def _recent_terms(searches: list[str], name_tokens: list[list[str]]) -> list[str]:
    """Texts (newest first) containing the brand or generic name (all when neither is given), at most 20."""
    if not name_tokens:
        return searches[:MAX_SEARCH_TERMS]
    kept = []
    for text in searches:
        if any(contains_name(tokenize(text), n) for n in name_tokens):
            kept.append(text)
            if len(kept) == MAX_SEARCH_TERMS:
                break
    return kept
