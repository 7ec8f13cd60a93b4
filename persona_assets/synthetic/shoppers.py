"""Shoppers and what they do: users, visits and checkouts, drawn with numpy over whole arrays.

The model is described in :mod:`persona_assets.synthetic.generator`. Everything that is the same for
all users (pincode weights, names, product popularity) is drawn once into a :class:`World`; users are
then drawn in blocks, each block with its own random streams, so memory follows the block size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from persona_assets.contract.pincodes import pincode_tier_table
from persona_assets.synthetic.catalog import DATA_PACKAGE, MEN, WOMEN, Catalog, Sampler, cdf, draw_cdf

MEN_SHARE = 0.56  # share of users who are men (Indian e-commerce skews male)
TIER_SHARE = {"Tier1": 0.32, "Tier2": 0.38, "Tier3": 0.30}
PINCODE_JITTER_SIGMA = 0.6
REGIONAL_SURNAME_SHARE = 0.65  # of users whose home state has regional surnames
ACTIVITY_SIGMA = 0.9  # log-normal sigma of per-user activity (mean 1)
FRESH_MEAN = 21.5  # wanted distinct products per user = 1 + Poisson(FRESH_MEAN * activity); ~20 are found
REPEAT_RATE = 0.25  # repeat visits per distinct product: repeats / all visits = 0.25 / 1.25 = 20%
CANDIDATE_FACTOR = 2.0  # fresh-visit candidates drawn per wanted distinct product (duplicates are dropped)
VISITS_PER_SESSION = 5.0
INTEREST_SHARE = 0.88  # fresh visits drawn from the user's interests
HOME_SHARE = 0.93  # visits from the home pincode
CHECKOUT_HOME_SHARE = 0.90  # checkouts delivered to the home pincode
BUY_FRESH = 0.04
BUY_REPEAT = 0.09
ORDER_GAP_S = 1800
# Share of sessions starting in each IST hour 0..23 (evening peak, lunchtime bump).
IST_HOUR_PROFILE = np.array(
    [1.2, 0.6, 0.3, 0.2, 0.2, 0.4, 1.0, 2.0, 3.0, 3.6, 4.0, 4.4, 4.8, 5.0, 4.6, 4.4, 4.4, 4.8, 5.6, 6.6, 7.4,
     7.6, 6.4, 3.4]
)  # fmt: skip
IST_OFFSET_S = 5 * 3600 + 1800

Window = tuple[int, int]  # inclusive bounds of event times, in epoch seconds


class World:
    """What all users share: home pincode weights, the name lists, product popularity."""

    def __init__(self, pincode_rng: np.random.Generator, product_rng: np.random.Generator, cat: Catalog) -> None:
        table = pincode_tier_table()
        table = table[(table["state"] != "") & table["pincode"].str.fullmatch(r"[0-9]{6}")].reset_index(drop=True)
        tier_n = table["tier"].value_counts()
        base = table["tier"].map(lambda t: TIER_SHARE[t] / tier_n[t]).to_numpy(np.float64)
        jitter = pincode_rng.lognormal(0.0, PINCODE_JITTER_SIGMA, len(table))
        self.pincodes = table["pincode"].to_numpy()
        self.pincode_states = table["state"].to_numpy()
        self.pincode_cdf = cdf(base * jitter)
        self.sampler = Sampler(product_rng, cat)

        with resources.files(DATA_PACKAGE).joinpath("data", "indian_names.csv").open(encoding="utf-8") as f:
            names = pd.read_csv(f, comment="#", dtype=str, keep_default_na=False)
        first = names[names["kind"] == "first"]
        self.men_first = first.loc[first["gender"] == "men", "name"].to_numpy()
        self.women_first = first.loc[first["gender"] == "women", "name"].to_numpy()
        last = names[names["kind"] == "last"]
        self.pan_surnames = last.loc[last["states"] == "", "name"].to_numpy()
        regional = last[last["states"] != ""].assign(state=lambda d: d["states"].str.split(";")).explode("state")
        regional = regional.sort_values(["state", "name"], kind="stable")
        self.regional_states = regional["state"].to_numpy()
        self.regional_surnames = regional["name"].to_numpy()

    def away_pincodes(self, rng: np.random.Generator, home: np.ndarray, home_share: float) -> np.ndarray:
        """The home pincode with probability ``home_share``, else one drawn like a home."""
        away = draw_cdf(self.pincode_cdf, rng.random(len(home)))
        return np.where(rng.random(len(home)) < home_share, home, away)


# ---- users -------------------------------------------------------------------------------------
@dataclass
class People:
    gender: np.ndarray  # MEN / WOMEN
    home: np.ndarray  # index into World.pincodes
    activity: np.ndarray
    name: pa.Array


def draw_people(rng: np.random.Generator, world: World, n: int) -> People:
    home = draw_cdf(world.pincode_cdf, rng.random(n))
    gender = np.where(rng.random(n) < MEN_SHARE, MEN, WOMEN).astype(np.int8)
    activity = rng.lognormal(-(ACTIVITY_SIGMA**2) / 2, ACTIVITY_SIGMA, n)
    u = rng.random(n)
    men, women = world.men_first, world.women_first
    given = np.where(
        gender == MEN,
        men[np.minimum((u * len(men)).astype(np.int64), len(men) - 1)],
        women[np.minimum((u * len(women)).astype(np.int64), len(women) - 1)],
    )
    # Surnames: regional when the user's home state has regional surnames (and a coin says so), else pan-Indian.
    states = world.pincode_states[home]
    reg_names, pan = world.regional_surnames, world.pan_surnames
    lo = np.searchsorted(world.regional_states, states, side="left")
    hi = np.searchsorted(world.regional_states, states, side="right")
    u1, u2 = rng.random(n), rng.random(n)
    use_reg = (hi > lo) & (u1 < REGIONAL_SURNAME_SHARE)
    reg_pick = reg_names[np.minimum(lo + (u2 * (hi - lo)).astype(np.int64), max(len(reg_names) - 1, 0))]
    pan_pick = pan[np.minimum((u2 * len(pan)).astype(np.int64), len(pan) - 1)]
    surname = np.where(use_reg, reg_pick, pan_pick)
    name = pc.binary_join_element_wise(pa.array(given), pa.array(surname), " ")
    return People(gender=gender, home=home, activity=activity, name=name)


# ---- visits ------------------------------------------------------------------------------------
@dataclass
class Visits:
    user: np.ndarray
    product: np.ndarray
    pincode: np.ndarray
    t: np.ndarray
    repeat: np.ndarray
    fresh_lo: np.ndarray  # per user: range of that user's fresh visits (first rows of the arrays)
    fresh_n: np.ndarray


def draw_visits(
    rng: np.random.Generator,
    world: World,
    people: People,
    window: Window,
    *,
    interests: tuple[int, int],
    interest_share: float,
    fresh_mean: float,
    repeat_rate: float,
    focus: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> Visits:
    """Fresh visits, ``interest_share`` of them from ``interests`` (lo, hi) groups per user, then repeats.

    ``focus(candidate_users, candidate_products)`` may replace candidate products in place before the
    distinct ones are kept (planted groups, :mod:`.planted`).
    """
    n = len(people.gender)
    sampler = world.sampler
    catalog_size = len(sampler.weight)
    start, end = window

    # Interests: lo..hi groups per user with Dirichlet(1) weights (unused slots weigh 0).
    fewest, most = interests
    k = rng.integers(fewest, most + 1, n)
    slot_group = np.empty((n, most), np.int64)
    for g in (MEN, WOMEN):
        sel = people.gender == g
        slot_group[sel] = sampler.groups(rng, g, (int(sel.sum()), most))
    slot_w = rng.gamma(1.0, 1.0, (n, most)) * (np.arange(most)[None, :] < k[:, None])
    slot_cdf = np.cumsum(slot_w, axis=1)
    slot_cdf /= slot_cdf[:, -1:]

    # Fresh visits: oversample candidates, keep each user's first distinct products.
    target = 1 + rng.poisson(fresh_mean * people.activity)
    cand_n = np.ceil(target * CANDIDATE_FACTOR).astype(np.int64) + 4
    cu = np.repeat(np.arange(n), cand_n)
    x = rng.random(len(cu))
    slot = sum((slot_cdf[cu, j] <= x).astype(np.int64) for j in range(most - 1))  # per slot column, not per event
    group = slot_group[cu, slot]
    del x, slot
    from_interest = rng.random(len(cu)) < interest_share
    cp = np.empty(len(cu), np.int64)
    for g in (MEN, WOMEN):
        sel = people.gender[cu] == g
        a = sel & from_interest
        cp[a] = sampler.in_group(rng, g, group[a])
        b = sel & ~from_interest
        cp[b] = sampler.explore(rng, g, int(b.sum()))
    del group, from_interest
    if focus is not None:
        focus(cu, cp)
    _, first = np.unique(cu * catalog_size + cp, return_index=True)
    first.sort()
    fu, fp = cu[first], cp[first]
    del cu, cp, first
    user_lo = np.searchsorted(fu, np.arange(n), side="left")
    rank = np.arange(len(fu)) - user_lo[fu]
    keep = rank < target[fu]
    fu, fp = fu[keep], fp[keep]
    fresh_n = np.bincount(fu, minlength=n)
    fresh_lo = np.concatenate([[0], np.cumsum(fresh_n)[:-1]])

    # Sessions: start time = random day + IST time-of-day profile; visits follow within the session.
    sess_n = 1 + rng.poisson(fresh_n / VISITS_PER_SESSION)
    sess_lo = np.concatenate([[0], np.cumsum(sess_n)[:-1]])
    n_sess = int(sess_n.sum())
    day = rng.integers(0, (end - start + 1) // 86400, n_sess)
    hour = draw_cdf(cdf(IST_HOUR_PROFILE), rng.random(n_sess))
    sod = (hour * 3600 + rng.integers(0, 3600, n_sess) - IST_OFFSET_S) % 86400
    sess_t = start + day * 86400 + sod
    sess = sess_lo[fu] + (rng.random(len(fu)) * sess_n[fu]).astype(np.int64)
    ft = np.minimum(sess_t[sess] + rng.gamma(1.0, 600.0, len(fu)).astype(np.int64), end)

    # Repeats: a later visit of one of the user's fresh products.
    rep_n = rng.binomial(fresh_n, repeat_rate)
    ru = np.repeat(np.arange(n), rep_n)
    src = fresh_lo[ru] + (rng.random(len(ru)) * fresh_n[ru]).astype(np.int64)
    left = end - ft[src]
    rt = ft[src] + np.minimum(1 + (left * rng.random(len(ru)) ** 3).astype(np.int64), left)

    user = np.concatenate([fu, ru])
    return Visits(
        user=user,
        product=np.concatenate([fp, fp[src]]),
        t=np.concatenate([ft, rt]),
        repeat=np.concatenate([np.zeros(len(fu), bool), np.ones(len(ru), bool)]),
        pincode=world.away_pincodes(rng, people.home[user], HOME_SHARE),
        fresh_lo=fresh_lo,
        fresh_n=fresh_n,
    )


# ---- checkouts ---------------------------------------------------------------------------------
@dataclass
class Orders:
    """Checkout rows (one per distinct product of an order) and, per order, its time and user."""

    order: np.ndarray  # per row: index into order_t / order_user
    user: np.ndarray
    product: np.ndarray
    pincode: np.ndarray
    t: np.ndarray
    order_t: np.ndarray
    order_user: np.ndarray


def draw_checkouts(rng: np.random.Generator, world: World, people: People, visits: Visits, window: Window) -> Orders:
    _, end = window
    p_buy = np.where(visits.repeat, BUY_REPEAT, BUY_FRESH)
    bought = np.flatnonzero(rng.random(len(visits.user)) < p_buy)
    user, product = visits.user[bought], visits.product[bought]
    t = np.minimum(visits.t[bought] + rng.gamma(2.0, 300.0, len(bought)).astype(np.int64), end)
    o = np.lexsort((product, t, user))
    user, product, t = user[o], product[o], t[o]
    new = np.ones(len(user), bool)
    new[1:] = (user[1:] != user[:-1]) | (t[1:] - t[:-1] > ORDER_GAP_S)
    order = np.cumsum(new) - 1
    n_orders = int(new.sum())
    order_t = np.zeros(n_orders, np.int64)
    np.maximum.at(order_t, order, t)
    # One row per distinct product of an order.
    _, first = np.unique(order * (product.max(initial=0) + 1) + product, return_index=True)
    first.sort()
    order, user, product = order[first], user[first], product[first]
    order_user = np.zeros(n_orders, np.int64)
    order_user[order] = user
    order_pin = world.away_pincodes(rng, people.home[order_user], CHECKOUT_HOME_SHARE)
    return Orders(
        order=order,
        user=user,
        product=product,
        pincode=order_pin[order],
        t=order_t[order],
        order_t=order_t,
        order_user=order_user,
    )


def order_numbers(order_t: np.ndarray, order_user: np.ndarray) -> np.ndarray:
    """Per order, its 0-based number by time, then user: order ids grow with ``ordered_at``."""
    number = np.empty(len(order_t), np.int64)
    number[np.lexsort((order_user, order_t))] = np.arange(len(order_t))
    return number
