"""Search queries: 3-5 word templates around the brand and/or generic name of a product the user visited."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from persona_assets.synthetic.catalog import MEN, WOMEN, Catalog, Sampler
from persona_assets.synthetic.shoppers import ACTIVITY_SIGMA, People, Visits, Window

SEARCH_MEAN = 3.0  # searches per user = Poisson(SEARCH_MEAN * sqrt(activity))
PRICE_STEPS = np.array([300, 500, 1000, 1500, 2000, 3000, 5000, 10000, 15000, 20000, 30000, 50000, 100000])

# Query templates: (pattern, weight). {b} brand, {g} generic name, {x} men/women (the product's
# gender), {p} a round price above the product's. Every query must name {b} or {g}.
TEMPLATES: tuple[tuple[str, float], ...] = (
    ("{b} {g}", 3.0),
    ("{b} {g} for {x}", 3.0),
    ("{g} for {x}", 2.0),
    ("best {g} under {p}", 2.5),
    ("{b} {g} under {p}", 2.0),
    ("{g} for {x} under {p}", 1.5),
    ("buy {b} {g} online", 1.5),
    ("best {b} {g}", 1.5),
    ("latest {b} {g}", 1.0),
    ("{b} {g} offers", 1.0),
    ("{g} price in india", 1.0),
    ("cheap {g} online", 1.0),
    ("{b} products online", 0.7),
    ("new {b} collection", 0.7),
    ("{g}", 1.0),
)


def search_mean_for(searches_per_user: float) -> float:
    """The ``search_mean`` that gives ``searches_per_user`` on average: E[sqrt(activity)] = exp(-sigma^2 / 8)."""
    return searches_per_user / float(np.exp(-(ACTIVITY_SIGMA**2) / 8))


@dataclass
class Searches:
    user: np.ndarray
    query: pa.Array
    t: np.ndarray


def draw_searches(
    rng: np.random.Generator,
    cat: Catalog,
    sampler: Sampler,
    people: People,
    visits: Visits,
    window: Window,
    *,
    search_mean: float,
    unvisited_share: float,
) -> Searches:
    """Poisson(``search_mean`` * sqrt(activity)) searches per user, each a little before a visit.

    A search names the visited product, or with probability ``unvisited_share`` a product drawn
    like an exploring visit that the user never opened (a search that led nowhere).
    """
    start, _ = window
    n = len(people.gender)
    count = rng.poisson(search_mean * np.sqrt(people.activity))
    su = np.repeat(np.arange(n), count)
    # Two candidate source visits per search; the first that fits a template is used.
    cand_user = np.repeat(su, 2)
    src = visits.fresh_lo[cand_user] + (rng.random(len(cand_user)) * visits.fresh_n[cand_user]).astype(np.int64)
    prod = visits.product[src]
    if unvisited_share > 0:
        unvisited = np.repeat(rng.random(len(su)) < unvisited_share, 2)
        for g in (MEN, WOMEN):
            sel = unvisited & (people.gender[cand_user] == g)
            prod[sel] = sampler.explore(rng, g, int(sel.sum()))
    nb, ng = cat.brand_words[prod], cat.generic_words[prod]
    hb, hg = cat.has_brand[prod], cat.has_generic[prod]
    sex = cat.gender[prod]
    has_sex = (sex == 1) | (sex == 2)
    price = cat.price[prod]
    step = np.searchsorted(PRICE_STEPS, price, side="right")  # first step strictly above the price
    has_price = ~np.isnan(price) & (step < len(PRICE_STEPS))

    weights = np.array([w for _, w in TEMPLATES])
    valid = np.zeros((len(prod), len(TEMPLATES)), bool)
    for j, (pattern, _) in enumerate(TEMPLATES):
        fixed = len(pattern.replace("{b}", "").replace("{g}", "").replace("{x}", "x").replace("{p}", "p").split())
        words = fixed + np.where("{b}" in pattern, nb, 0) + np.where("{g}" in pattern, ng, 0)
        ok = (words >= 3) & (words <= 5)
        if "{b}" in pattern:
            ok &= hb
        if "{g}" in pattern:
            ok &= hg
        if "{x}" in pattern:
            ok &= has_sex
        if "{p}" in pattern:
            ok &= has_price
        valid[:, j] = ok
    # Weighted choice among valid templates: argmax of u ** (1 / w) (Efraimidis-Spirakis).
    score = np.where(valid, rng.random(valid.shape) ** (1.0 / weights), -1.0)
    tmpl = score.argmax(axis=1)
    fits = valid.any(axis=1).reshape(-1, 2)
    pick = np.where(fits[:, 0], 0, 1)
    keep = fits.any(axis=1)
    chosen = (np.arange(len(su)) * 2 + pick)[keep]

    prod, tmpl, src = prod[chosen], tmpl[chosen], src[chosen]
    step = np.minimum(step[chosen], len(PRICE_STEPS) - 1)
    parts = {
        "{b}": cat.brand.take(pa.array(prod)),
        "{g}": cat.generic.take(pa.array(prod)),
        "{x}": pa.array(np.where(cat.gender[prod] == 2, "women", "men")),
        "{p}": pa.array(PRICE_STEPS[step].astype(str)),
    }
    query = pa.nulls(len(prod), pa.string())
    for j, (pattern, _) in enumerate(TEMPLATES):
        pieces = [parts.get(w, pa.scalar(w)) for w in pattern.split()]
        text = pc.binary_join_element_wise(*pieces, " ") if len(pieces) > 1 else pc.cast(pieces[0], pa.string())
        query = pc.if_else(pa.array(tmpl == j), text, query)

    t = np.maximum(visits.t[src] - 1 - rng.gamma(1.0, 180.0, len(src)).astype(np.int64), start)
    return Searches(user=su[keep], query=query, t=t)
