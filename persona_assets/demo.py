"""The segment ``persona demo`` answers: one whose answer shows a ranking, and what to try next.

The first brand of the vocabulary by name, alone, often gives its few buyers a brand affinity of 1.0
each: a list of ties that shows nothing of the score. The demo instead tries the shop's top brands by
total affinity, each with its most common generic product, for men in Tier-1 cities, and keeps the
first whose top five scores differ.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persona_assets.query.scoring import ScoreWeights
from persona_assets.query.service import fetch_personas
from persona_assets.stores import relational
from persona_assets.stores.search_backend import SearchBackend

BASE_SEGMENT: dict[str, Any] = {"gender": "men", "cityTier": "Tier1", "size": 5}
BRANDS_TRIED = 8

NEXT_STEPS = """\
what to try next:
  persona query '{{"gender": "women", "cityTier": 2, "genericName": "{generic}", "size": 3}}' --pretty
  persona serve &   then   curl -s localhost:8000/fetchPersonas -d '{{"brand": "{brand}"}}' -H 'content-type: application/json'
  persona export personas.jsonl   (every persona: whole audiences are for exports)
  persona ui   (the asset graph, checks and runs in Dagster; docs/data-format.md explains the inputs)"""


def _candidates(engine: Engine) -> list[tuple[str, str | None]]:
    """(brand, its most common generic name) for the top brands by total affinity."""
    vocabulary, products = relational.attribute_vocabulary, relational.products
    with engine.connect() as conn:
        brands = conn.execute(
            sa.select(vocabulary.c.name)
            .where(vocabulary.c.kind == "brand")
            .order_by(vocabulary.c.rank)
            .limit(BRANDS_TRIED)
        ).scalars()
        candidates = []
        for brand in list(brands):
            generic = conn.execute(
                sa.select(products.c.generic_name)
                .where(products.c.brand == brand, products.c.generic_name != "")
                .group_by(products.c.generic_name)
                .order_by(sa.func.count().desc(), products.c.generic_name)
                .limit(1)
            ).scalar()
            candidates.append((brand, generic))
    return candidates


def demo_segment(engine: Engine, backend: SearchBackend, weights: ScoreWeights) -> dict[str, Any]:
    """The first candidate segment whose top five scores are not all equal (else the plainest one)."""
    for brand, generic in _candidates(engine):
        request = {**BASE_SEGMENT, "brand": brand, **({"genericName": generic} if generic else {})}
        scores = [hit["score"] for hit in fetch_personas(request, engine, backend, weights)["results"]]
        if len(scores) > 1 and max(scores) - min(scores) > 1e-9:
            return request
    return dict(BASE_SEGMENT)


def next_steps(request: dict[str, Any]) -> str:
    return NEXT_STEPS.format(brand=request.get("brand", "boat"), generic=request.get("genericName", "earbuds"))
