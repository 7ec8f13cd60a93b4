"""The segment query (contract section 4): rank in the search backend, enrich from the relational store.

One service, two front doors: ``persona query`` and ``POST /fetchPersonas``. It takes a plain engine and
a plain :class:`~persona_assets.stores.search_backend.SearchBackend`, so neither door needs Dagster.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from opensearchpy.exceptions import ConnectionError as OpenSearchConnectionError
from sqlalchemy.engine import Connection, Engine

from persona_assets.contract.tokens import contains_name, tokenize
from persona_assets.query.request import SegmentQuery, parse_segment_request
from persona_assets.query.scoring import ScoreWeights
from persona_assets.stores import relational
from persona_assets.stores.search_backend import IndexNotBuiltError, SearchBackend

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
    if isinstance(error, _STORE_DOWN):
        return f"the relational store cannot be reached: {describe_error(error)}"
    if isinstance(error, OpenSearchConnectionError):
        return f"the search index cannot be reached: {describe_error(error)}"
    return None


def fetch_personas(
    payload: object, engine: Engine, backend: SearchBackend, weights: ScoreWeights | None = None
) -> dict[str, Any]:
    """Validate ``payload`` (raises ``InvalidRequest`` naming the field) and answer it."""
    query = parse_segment_request(payload)
    hits = backend.search(query, weights or ScoreWeights.from_env())
    with engine.connect() as conn:
        activity = _activity(conn, [hit.ext_id for hit in hits.hits])
        matches = _product_matcher(conn, query, activity)
    name_tokens = [tokenize(n) for n in (query.brand, query.generic_name) if n is not None]
    results = []
    for hit in hits.hits:
        products, searches = activity.get(hit.ext_id, ([], []))
        results.append(
            {
                "ext_id": hit.ext_id,
                "score": hit.score,
                "components": hit.components,
                "gender": hit.gender,
                "visited": _recent_pids(products, _VISITED, matches),
                "purchased": _recent_pids(products, _PURCHASED, matches),
                "search_terms": _recent_terms(searches, name_tokens),
            }
        )
    return {"total": hits.total, "results": results}


Entry = list[Any]  # one positional entry of a user_activity JSON column
Activity = dict[str, tuple[list[Entry], list[Entry]]]


def _activity(conn: Connection, ext_ids: list[str]) -> Activity:
    """The ``user_activity`` rows of the page's users, JSON decoded (orjson: a page decodes ~20 rows of a
    few KiB each, a good share of an answer's CPU with the standard library)."""
    if not ext_ids:
        return {}
    table = relational.user_activity
    rows = conn.execute(sa.select(table).where(table.c.ext_id.in_(ext_ids))).all()
    return {
        row.ext_id: (_entries(row.products, _PRODUCT_FIELDS), _entries(row.searches, _SEARCH_FIELDS)) for row in rows
    }


_PRODUCT_FIELDS = ("pid", "visited_us", "purchased_us")
_SEARCH_FIELDS = ("query", "searched_us")
_PID, _VISITED, _PURCHASED = range(3)
_QUERY, _SEARCHED = range(2)


def _entries(text: str, fields: tuple[str, ...]) -> list[Entry]:
    """A ``user_activity`` JSON column as positional entries (rows of older builds hold objects)."""
    entries = [[item[f] for f in fields] if isinstance(item, dict) else item for item in orjson.loads(text)]
    if any(len(entry) != len(fields) for entry in entries):
        raise ValueError(f"user_activity: an entry does not hold the {len(fields)} fields {fields}")
    return entries


def _product_matcher(conn: Connection, query: SegmentQuery, activity: Activity) -> set[str] | None:
    """The page's pids that match every product-level criterion; None when no criterion is given."""
    if not query.has_product_criteria:
        return None
    pids = sorted({item[_PID] for products, _ in activity.values() for item in products})
    if not pids:
        return set()
    p = relational.products
    select = sa.select(p.c.pid).where(p.c.pid.in_(pids))
    if query.brand is not None:
        select = select.where(p.c.brand == query.brand)
    if query.generic_name is not None:
        select = select.where(p.c.generic_name == query.generic_name)
    if query.category_id is not None:
        category = int(query.category_id)
        if abs(category) > relational.INT64_MAX:
            return set()  # no stored id can be that large
        select = select.where(p.c[f"cat_l{query.category_level}"] == category)
    return {row.pid for row in conn.execute(select)}


def _recent_pids(products: list[Entry], when: int, matches: set[str] | None) -> list[str]:
    """Distinct pids with an event at position ``when`` (and matching, when criteria are given), newest first."""
    kept = [p for p in products if p[when] is not None and (matches is None or p[_PID] in matches)]
    kept.sort(key=lambda p: (-p[when], p[_PID]))
    return [p[_PID] for p in kept[:MAX_PRODUCTS]]


def _recent_terms(searches: list[Entry], name_tokens: list[list[str]]) -> list[str]:
    """Distinct texts containing the brand or generic name (all when neither is given), newest first."""
    kept = [s for s in searches if not name_tokens or any(contains_name(tokenize(s[_QUERY]), n) for n in name_tokens)]
    kept.sort(key=lambda s: (-s[_SEARCHED], s[_QUERY]))
    return [s[_QUERY] for s in kept[:MAX_SEARCH_TERMS]]
