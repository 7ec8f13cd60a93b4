"""The segment query (contract section 4): rank in the search backend, enrich from the relational store.

One service, two front doors: ``persona query`` now, ``POST /fetchPersonas`` later.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persona_assets.contract.tokens import contains_name, tokenize
from persona_assets.query.request import SegmentQuery, parse_segment_request
from persona_assets.query.scoring import ScoreWeights
from persona_assets.resources import SearchIndexResource
from persona_assets.stores import relational
from persona_assets.stores.embedded_index import open_index

MAX_PRODUCTS = 50
MAX_SEARCH_TERMS = 20


def fetch_personas(
    payload: object, engine: Engine, search_index: SearchIndexResource, weights: ScoreWeights | None = None
) -> dict[str, Any]:
    """Validate ``payload`` (raises ``InvalidRequest`` naming the field) and answer it."""
    query = parse_segment_request(payload)
    search_index.check_backend()
    hits = open_index(search_index.index_dir).search(query, weights or ScoreWeights.from_env())
    ext_ids = [hit.ext_id for hit in hits.hits]
    products = _product_lists(engine, query, ext_ids)
    terms = _search_terms(engine, query, ext_ids)
    results = [
        {
            "ext_id": hit.ext_id,
            "score": hit.score,
            "components": hit.components,
            "gender": hit.gender,
            "visited": products.get(hit.ext_id, {}).get("visited", []),
            "purchased": products.get(hit.ext_id, {}).get("purchased", []),
            "search_terms": terms.get(hit.ext_id, []),
        }
        for hit in hits.hits
    ]
    return {"total": hits.total, "results": results}


def _product_lists(engine: Engine, query: SegmentQuery, ext_ids: list[str]) -> dict[str, dict[str, list[str]]]:
    """Distinct pids matching every product-level criterion, most recent first, per user and list."""
    if not ext_ids:
        return {}
    up, p = relational.user_products, relational.products
    select = (
        sa.select(up.c.ext_id, up.c.pid, up.c.last_visited_us, up.c.last_purchased_us)
        .select_from(up.outerjoin(p, p.c.pid == up.c.pid))
        .where(up.c.ext_id.in_(ext_ids))
    )
    if query.brand is not None:
        select = select.where(p.c.brand == query.brand)
    if query.generic_name is not None:
        select = select.where(p.c.generic_name == query.generic_name)
    if query.category_id is not None:
        category = int(query.category_id)
        if abs(category) > relational.INT64_MAX:
            return {}  # no stored id can be that large
        select = select.where(p.c[f"cat_l{query.category_level}"] == category)
    rows = relational.read_frame(engine, select)
    lists: dict[str, dict[str, list[str]]] = {}
    for name, column in (("visited", "last_visited_us"), ("purchased", "last_purchased_us")):
        recent = rows[rows[column].notna()].sort_values(["ext_id", column, "pid"], ascending=[True, False, True])
        for ext_id, pids in recent.groupby("ext_id", sort=False)["pid"]:
            lists.setdefault(str(ext_id), {})[name] = pids.head(MAX_PRODUCTS).tolist()
    return lists


def _search_terms(engine: Engine, query: SegmentQuery, ext_ids: list[str]) -> dict[str, list[str]]:
    """The user's distinct query texts containing the brand or generic name (all when neither), newest first."""
    if not ext_ids:
        return {}
    us = relational.user_searches
    rows = relational.read_frame(
        engine, sa.select(us.c.ext_id, us.c.query, us.c.last_searched_us).where(us.c.ext_id.in_(ext_ids))
    )
    names = [tokenize(n) for n in (query.brand, query.generic_name) if n is not None]
    if names and len(rows):
        keep = rows["query"].map(lambda text: any(contains_name(tokenize(text), name) for name in names))
        rows = rows[keep.astype(bool)]
    rows = rows.sort_values(["ext_id", "last_searched_us", "query"], ascending=[True, False, True])
    return {str(k): v.head(MAX_SEARCH_TERMS).tolist() for k, v in rows.groupby("ext_id", sort=False)["query"]}


def export_rows(engine: Engine) -> pd.DataFrame:
    """Normalised personas ordered by ext_id, maps as JSON text (for ``persona export``)."""
    return relational.read_frame(engine, sa.select(relational.user_personas).order_by(relational.user_personas.c.ext_id))
