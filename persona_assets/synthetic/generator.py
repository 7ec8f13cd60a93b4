"""Generate a synthetic import directory: Indian shoppers browsing, buying and searching the real catalog.

The catalog (``products.csv``/``categories.csv``) is the real Flipkart + Amazon India data built by
``scripts/build_synthetic_catalog.py`` and shipped in ``persona_assets/synthetic/data``; only the
users and their events are synthetic. Everything is drawn with numpy over whole arrays (no
per-user or per-event Python loop) and written with ``pyarrow.csv``.

Model (all parameters are the module constants below):

- **Users** ``U0000001``...: gender men/women, a first name of that gender and a surname (regional
  surnames for users whose home state has some), and a home pincode drawn from every pincode the
  India Post directory knows with a state, weighted so that Tier1 / Tier2 / Tier3 get
  ``TIER_SHARE`` of users (so a Tier1 pincode is ~20x as likely as a Tier3 one), times a per-pincode
  log-normal jitter.
- **Activity**: a log-normal per-user activity level scales the number of distinct products
  visited, sessions and searches (about 30 events per user on average).
- **Interests**: each user has 2-4 interests, each a generic name (``smart watches``) or a brand,
  drawn by popularity among groups that hold products compatible with the user's gender (a men
  user never gets an interest made only of women's products), and products of the user's own
  gender weigh ``1 + SAME_GENDER_BOOST`` times more. ``INTEREST_SHARE`` of fresh visits come from
  the interests, the rest from the whole catalog (mostly gender-compatible products).
- **Popularity**: every product has a Zipf weight ``1 / (rank + ZIPF_OFFSET) ** ZIPF_S`` over a
  seeded random ranking; draws inside an interest and from the whole catalog use these weights.
- **Visits**: distinct products first, then repeat visits of products the same user already
  visited (``REPEAT_RATE`` per distinct product, so about 20% of all visit rows are repeats), at a
  later time than the visit they repeat. Visits happen in sessions with an Indian (IST) time-of-day
  profile; ``HOME_SHARE`` of visits come from the home pincode, the rest from another pincode.
- **Checkouts**: a visit leads to a purchase with ``BUY_FRESH`` / ``BUY_REPEAT`` probability
  (about 5% of visits); one row per purchased product; a user's purchases less than
  ``ORDER_GAP_S`` apart form one order (shared ``order_id`` and ``ordered_at``).
- **Searches**: 3-5 word queries built from templates around the brand and/or generic name of a
  product the user visited (``boat smart watches for men``, ``best wrist watches under 2000``),
  a little before that visit.

Timestamps are whole seconds in the window of ``days`` calendar days ending with ``end_date``:
``[end_date - (days - 1) 00:00:00, end_date + 1 day 00:00:00)`` UTC, written as
``2026-10-05T13:02:11+00:00``. Output is byte-identical for the same (users, seed, end_date, days).
"""

from __future__ import annotations

import datetime as dt
import gzip
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from persona_assets.contract.pincodes import pincode_tier_table

# ---- model parameters -------------------------------------------------------------------------
MEN_SHARE = 0.56  # share of users who are men (Indian e-commerce skews male)
TIER_SHARE = {"Tier1": 0.32, "Tier2": 0.38, "Tier3": 0.30}
PINCODE_JITTER_SIGMA = 0.6
ACTIVITY_SIGMA = 0.9  # log-normal sigma of per-user activity (mean 1)
FRESH_MEAN = 21.5  # wanted distinct products per user = 1 + Poisson(FRESH_MEAN * activity); ~20 are found
REPEAT_RATE = 0.25  # repeat visits per distinct product: repeats / all visits = 0.25 / 1.25 = 20%
CANDIDATE_FACTOR = 2.0  # fresh-visit candidates drawn per wanted distinct product (duplicates are dropped)
SEARCH_MEAN = 3.0  # searches per user = Poisson(SEARCH_MEAN * sqrt(activity))
VISITS_PER_SESSION = 5.0
INTEREST_SHARE = 0.88  # fresh visits drawn from the user's interests
EXPLORE_ANY_GENDER = 0.1  # of the other visits, share drawn from all products (else compatible ones)
SAME_GENDER_BOOST = 2.0  # products of the user's own gender weigh (1 + boost) x in every draw
IN_GROUP_POWER = 0.5  # inside an interest, products are drawn with weight (Zipf weight) ** power
INTEREST_GROUP_POWER = 0.8  # interest groups are drawn with weight (group popularity) ** power
MIN_GENERIC_GROUP = 2  # products needed for a generic name to be an interest
MIN_BRAND_GROUP = 3  # products needed for a brand to be an interest
ZIPF_S = 1.0
ZIPF_OFFSET = 5.0
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

PRODUCT_COLUMNS = ["pid", "pos", "title", "brand", "generic_name", "gender", "cat_l1", "cat_l2", "cat_l3", "price"]
CATEGORY_COLUMNS = ["cat_id", "name", "parent_id"]
VISIT_COLUMNS = ["ext_id", "pid", "pincode", "visited_at"]
CHECKOUT_COLUMNS = ["order_id", "ext_id", "pid", "pincode", "ordered_at"]
SEARCH_COLUMNS = ["ext_id", "query", "searched_at"]
USER_COLUMNS = ["ext_id", "name", "gender", "pincode"]

_DATA = "persona_assets.synthetic"
_MEN, _WOMEN = 0, 1


def generate_dataset(
    out_dir: Path,
    users: int,
    seed: int,
    *,
    end_date: dt.date = dt.date(2026, 10, 31),
    days: int = 30,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Write a synthetic import directory into ``out_dir`` and return ``{file name: data rows}``.

    Files: ``products.csv``, ``categories.csv`` (the packaged real catalog), ``visits.csv``,
    ``checkouts.csv``, ``searches.csv`` (contract section 1) and the side file ``users.csv``
    (``ext_id,name,gender,pincode``; the importer ignores it).
    """
    if users < 1:
        raise ValueError("users must be at least 1")
    if days < 1:
        raise ValueError("days must be at least 1")
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}

    say("copying the real catalog (products.csv, categories.csv)")
    for name in ("products.csv", "categories.csv"):
        raw = gzip.decompress(resources.files(_DATA).joinpath("data", f"{name}.gz").read_bytes())
        (out_dir / name).write_bytes(raw)
        counts[name] = raw.count(b"\n") - 1
    cat = _Catalog.load()

    start = int(dt.datetime(end_date.year, end_date.month, end_date.day, tzinfo=dt.UTC).timestamp())
    start -= (days - 1) * 86400
    window = (start, start + days * 86400 - 1)  # inclusive bounds, in epoch seconds

    say(f"drawing {users:,} users (names, home pincodes, interests)")
    rngs = [np.random.default_rng([seed, stream]) for stream in range(8)]
    people = _draw_users(rngs[0], users)

    say("drawing visits")
    visits = _draw_visits(rngs[1], cat, people, window)

    say("drawing checkouts")
    orders = _draw_checkouts(rngs[2], people, visits, window)

    say("drawing searches")
    searches = _draw_searches(rngs[3], cat, people, visits, window)

    say("writing users.csv, visits.csv, checkouts.csv, searches.csv")
    ext = _ids("U", np.arange(1, users + 1), 7)
    pins = pa.array(people.pincode_table)
    pid = pa.array(cat.pid)

    _write(
        out_dir / "users.csv",
        {"ext_id": ext, "name": people.name, "gender": people.gender_label, "pincode": pins.take(people.home)},
        quote=True,
    )
    counts["users.csv"] = users

    o = np.lexsort((visits.product, visits.user, visits.t))
    _write(
        out_dir / "visits.csv",
        {
            "ext_id": ext.take(visits.user[o]),
            "pid": pid.take(visits.product[o]),
            "pincode": pins.take(visits.pincode[o]),
            "visited_at": _iso(visits.t[o]),
        },
        quote=False,
    )
    counts["visits.csv"] = len(o)

    o = np.lexsort((orders.product, orders.order, orders.t))
    _write(
        out_dir / "checkouts.csv",
        {
            "order_id": _ids("O", orders.order[o] + 1, 8),
            "ext_id": ext.take(orders.user[o]),
            "pid": pid.take(orders.product[o]),
            "pincode": pins.take(orders.pincode[o]),
            "ordered_at": _iso(orders.t[o]),
        },
        quote=False,
    )
    counts["checkouts.csv"] = len(o)

    o = np.lexsort((searches.user, searches.t))
    _write(
        out_dir / "searches.csv",
        {
            "ext_id": ext.take(searches.user[o]),
            "query": searches.query.take(pa.array(o)),
            "searched_at": _iso(searches.t[o]),
        },
        quote=True,
    )
    counts["searches.csv"] = len(o)
    say(", ".join(f"{k}: {v:,}" for k, v in counts.items()))
    return counts


# ---- catalog -----------------------------------------------------------------------------------
class _Catalog:
    """The packaged products as arrays, plus interest groups (CSR) and Zipf popularity."""

    pid: np.ndarray
    gender: np.ndarray  # 0 none, 1 men, 2 women, 3 unisex
    brand: pa.Array  # lower-cased, '' when none
    generic: pa.Array
    brand_words: np.ndarray
    generic_words: np.ndarray
    has_brand: np.ndarray
    has_generic: np.ndarray
    price: np.ndarray  # float, NaN when unknown

    @classmethod
    def load(cls) -> _Catalog:
        with resources.files(_DATA).joinpath("data", "products.csv.gz").open("rb") as f:
            df = pd.read_csv(f, compression="gzip", dtype=str, keep_default_na=False)
        self = cls()
        self.pid = df["pid"].to_numpy()
        g = df["gender"].str.strip().str.lower()
        self.gender = np.select([g == "men", g == "women", g == "unisex"], [1, 2, 3], 0).astype(np.int8)
        brand = df["brand"].str.strip().str.lower()
        generic = df["generic_name"].str.strip().str.lower()
        self.brand = pa.array(brand.to_numpy(object), pa.string())
        self.generic = pa.array(generic.to_numpy(object), pa.string())
        self.brand_words = brand.str.split().str.len().to_numpy(np.int64)
        self.generic_words = generic.str.split().str.len().to_numpy(np.int64)
        # A name with no letter/digit has no tokens and could never be "found" in a query.
        self.has_brand = brand.str.contains(r"[^\W_]", regex=True).to_numpy(bool)
        self.has_generic = generic.str.contains(r"[^\W_]", regex=True).to_numpy(bool)
        self.price = pd.to_numeric(df["price"], errors="coerce").to_numpy(np.float64)

        # Interest groups: generic names, then brands; member lists as (group, product) pairs.
        gen_codes, gen_names = pd.factorize(generic, sort=True)
        brand_codes, brand_names = pd.factorize(brand, sort=True)
        gen_ok = np.bincount(gen_codes[gen_codes >= 0], minlength=len(gen_names)) >= MIN_GENERIC_GROUP
        brand_ok = np.bincount(brand_codes[brand_codes >= 0], minlength=len(brand_names)) >= MIN_BRAND_GROUP
        gen_ok &= np.asarray(gen_names != "")
        brand_ok &= np.asarray(brand_names != "")
        gen_gid = np.where(gen_ok, np.cumsum(gen_ok) - 1, -1)
        brand_gid = np.where(brand_ok, np.cumsum(brand_ok) - 1 + gen_ok.sum(), -1)
        self.n_groups = int(gen_ok.sum() + brand_ok.sum())
        prod = np.arange(len(df))
        g1 = np.where(gen_codes >= 0, gen_gid[np.maximum(gen_codes, 0)], -1)
        g2 = np.where(brand_codes >= 0, brand_gid[np.maximum(brand_codes, 0)], -1)
        self.member_group = np.concatenate([g1[g1 >= 0], g2[g2 >= 0]])
        self.member_product = np.concatenate([prod[g1 >= 0], prod[g2 >= 0]])
        order = np.argsort(self.member_group, kind="stable")
        self.member_group, self.member_product = self.member_group[order], self.member_product[order]
        return self

    def __len__(self) -> int:
        return len(self.pid)


class _Sampler:
    """Popularity-weighted draws, per user gender, from interest groups and from the catalog."""

    def __init__(self, rng: np.random.Generator, cat: _Catalog) -> None:
        n = len(cat)
        rank = np.empty(n, np.float64)
        rank[rng.permutation(n)] = np.arange(n)
        self.weight = 1.0 / (rank + ZIPF_OFFSET) ** ZIPF_S
        self.cat = cat
        self.by_gender = {}
        for user_gender, same, opposite in ((_MEN, 1, 2), (_WOMEN, 2, 1)):
            ok = cat.gender != opposite
            boost = np.where(cat.gender == same, 1.0 + SAME_GENDER_BOOST, 1.0)
            mask = ok[cat.member_product]
            grp, prod = cat.member_group[mask], cat.member_product[mask]
            keys, lo, hi = _segment_cdf(grp, self.weight[prod] ** IN_GROUP_POWER * boost[prod], cat.n_groups)
            group_w = np.bincount(grp, weights=self.weight[prod] * boost[prod], minlength=cat.n_groups)
            group_cdf = _cdf(group_w**INTEREST_GROUP_POWER)
            compat_cdf = _cdf(np.where(ok, self.weight * boost, 0.0))
            self.by_gender[user_gender] = (keys, lo, hi, prod, group_cdf, compat_cdf)
        self.any_cdf = _cdf(self.weight)

    def groups(self, rng: np.random.Generator, gender: int, size: tuple[int, ...]) -> np.ndarray:
        group_cdf = self.by_gender[gender][4]
        return _draw_cdf(group_cdf, rng.random(size))

    def in_group(self, rng: np.random.Generator, gender: int, group: np.ndarray) -> np.ndarray:
        keys, lo, hi, prod, _, _ = self.by_gender[gender]
        pos = np.searchsorted(keys, group + rng.random(len(group)), side="right")
        return prod[np.clip(pos, lo[group], hi[group] - 1)]

    def explore(self, rng: np.random.Generator, gender: int, size: int) -> np.ndarray:
        compat = _draw_cdf(self.by_gender[gender][5], rng.random(size))
        anyone = _draw_cdf(self.any_cdf, rng.random(size))
        return np.where(rng.random(size) < EXPLORE_ANY_GENDER, anyone, compat)


def _cdf(weights: np.ndarray) -> np.ndarray:
    c = np.cumsum(weights, dtype=np.float64)
    return c / c[-1]


def _draw_cdf(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _segment_cdf(group: np.ndarray, weight: np.ndarray, n_groups: int):
    """Keys ``group + cumulative share within group`` (sorted), and each group's [lo, hi) range."""
    lo = np.searchsorted(group, np.arange(n_groups), side="left")
    hi = np.searchsorted(group, np.arange(n_groups), side="right")
    csum = np.cumsum(weight)
    before = np.concatenate([[0.0], csum])[lo]  # cumulative weight before each group
    total = np.concatenate([[0.0], csum])[hi] - before
    share = (csum - before[group]) / np.where(total > 0, total, 1.0)[group]
    last = np.zeros(len(group), bool)
    last[hi[hi > lo] - 1] = True
    share[last] = 1.0
    return group + share, lo, hi


# ---- users -------------------------------------------------------------------------------------
class _People:
    gender: np.ndarray
    gender_label: pa.Array
    name: pa.Array
    home: np.ndarray  # index into pincode_table
    pincode_table: np.ndarray
    pincode_cdf: np.ndarray
    activity: np.ndarray


def _draw_users(rng: np.random.Generator, n: int) -> _People:
    p = _People()
    table = pincode_tier_table()
    table = table[(table["state"] != "") & table["pincode"].str.fullmatch(r"[0-9]{6}")].reset_index(drop=True)
    tier_n = table["tier"].value_counts()
    base = table["tier"].map(lambda t: TIER_SHARE[t] / tier_n[t]).to_numpy(np.float64)
    jitter = rng.lognormal(0.0, PINCODE_JITTER_SIGMA, len(table))
    p.pincode_table = table["pincode"].to_numpy()
    p.pincode_cdf = _cdf(base * jitter)
    p.home = _draw_cdf(p.pincode_cdf, rng.random(n))
    p.gender = np.where(rng.random(n) < MEN_SHARE, _MEN, _WOMEN).astype(np.int8)
    p.gender_label = pa.array(np.where(p.gender == _MEN, "men", "women"))
    p.activity = rng.lognormal(-(ACTIVITY_SIGMA**2) / 2, ACTIVITY_SIGMA, n)

    with resources.files(_DATA).joinpath("data", "indian_names.csv").open(encoding="utf-8") as f:
        names = pd.read_csv(f, comment="#", dtype=str, keep_default_na=False)
    first = names[names["kind"] == "first"]
    men_first = first.loc[first["gender"] == "men", "name"].to_numpy()
    women_first = first.loc[first["gender"] == "women", "name"].to_numpy()
    u = rng.random(n)
    given = np.where(
        p.gender == _MEN,
        men_first[np.minimum((u * len(men_first)).astype(np.int64), len(men_first) - 1)],
        women_first[np.minimum((u * len(women_first)).astype(np.int64), len(women_first) - 1)],
    )
    # Surnames: 65% regional when the user's home state has regional surnames, else pan-Indian.
    last = names[names["kind"] == "last"]
    pan = last.loc[last["states"] == "", "name"].to_numpy()
    regional = last[last["states"] != ""].assign(state=lambda d: d["states"].str.split(";")).explode("state")
    regional = regional.sort_values(["state", "name"], kind="stable")
    states = table["state"].to_numpy()[p.home]
    reg_states = regional["state"].to_numpy()
    reg_names = regional["name"].to_numpy()
    lo = np.searchsorted(reg_states, states, side="left")
    hi = np.searchsorted(reg_states, states, side="right")
    u1, u2 = rng.random(n), rng.random(n)
    use_reg = (hi > lo) & (u1 < 0.65)
    reg_pick = reg_names[np.minimum(lo + (u2 * (hi - lo)).astype(np.int64), max(len(reg_names) - 1, 0))]
    pan_pick = pan[np.minimum((u2 * len(pan)).astype(np.int64), len(pan) - 1)]
    surname = np.where(use_reg, reg_pick, pan_pick)
    p.name = pc.binary_join_element_wise(pa.array(given), pa.array(surname), " ")
    return p


# ---- visits ------------------------------------------------------------------------------------
class _Visits:
    user: np.ndarray
    product: np.ndarray
    pincode: np.ndarray
    t: np.ndarray
    repeat: np.ndarray
    fresh_lo: np.ndarray  # per user: range of that user's fresh visits (first rows of the arrays)
    fresh_n: np.ndarray


def _draw_visits(rng: np.random.Generator, cat: _Catalog, people: _People, window) -> _Visits:
    n = len(people.gender)
    sampler = _Sampler(rng, cat)
    start, end = window

    # Interests: 2-4 groups per user with Dirichlet(1) weights (unused slots weigh 0).
    k = rng.integers(2, 5, n)
    slot_group = np.empty((n, 4), np.int64)
    for g in (_MEN, _WOMEN):
        sel = people.gender == g
        slot_group[sel] = sampler.groups(rng, g, (int(sel.sum()), 4))
    slot_w = rng.gamma(1.0, 1.0, (n, 4)) * (np.arange(4)[None, :] < k[:, None])
    slot_cdf = np.cumsum(slot_w, axis=1)
    slot_cdf /= slot_cdf[:, -1:]

    # Fresh visits: oversample candidates, keep each user's first distinct products.
    target = 1 + rng.poisson(FRESH_MEAN * people.activity)
    cand_n = np.ceil(target * CANDIDATE_FACTOR).astype(np.int64) + 4
    cu = np.repeat(np.arange(n), cand_n)
    x = rng.random(len(cu))
    slot = sum((slot_cdf[cu, j] <= x).astype(np.int64) for j in range(3))  # 3 columns, not per event
    group = slot_group[cu, slot]
    from_interest = rng.random(len(cu)) < INTEREST_SHARE
    cp = np.empty(len(cu), np.int64)
    for g in (_MEN, _WOMEN):
        sel = people.gender[cu] == g
        a = sel & from_interest
        cp[a] = sampler.in_group(rng, g, group[a])
        b = sel & ~from_interest
        cp[b] = sampler.explore(rng, g, int(b.sum()))
    _, first = np.unique(cu * len(cat) + cp, return_index=True)
    first.sort()
    fu, fp = cu[first], cp[first]
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
    hour = _draw_cdf(_cdf(IST_HOUR_PROFILE), rng.random(n_sess))
    sod = (hour * 3600 + rng.integers(0, 3600, n_sess) - IST_OFFSET_S) % 86400
    sess_t = start + day * 86400 + sod
    sess = sess_lo[fu] + (rng.random(len(fu)) * sess_n[fu]).astype(np.int64)
    ft = np.minimum(sess_t[sess] + rng.gamma(1.0, 600.0, len(fu)).astype(np.int64), end)

    # Repeats: a later visit of one of the user's fresh products.
    rep_n = rng.binomial(fresh_n, REPEAT_RATE)
    ru = np.repeat(np.arange(n), rep_n)
    src = fresh_lo[ru] + (rng.random(len(ru)) * fresh_n[ru]).astype(np.int64)
    left = end - ft[src]
    rt = ft[src] + np.minimum(1 + (left * rng.random(len(ru)) ** 3).astype(np.int64), left)

    v = _Visits()
    v.user = np.concatenate([fu, ru])
    v.product = np.concatenate([fp, fp[src]])
    v.t = np.concatenate([ft, rt])
    v.repeat = np.concatenate([np.zeros(len(fu), bool), np.ones(len(ru), bool)])
    away = _draw_cdf(people.pincode_cdf, rng.random(len(v.user)))
    v.pincode = np.where(rng.random(len(v.user)) < HOME_SHARE, people.home[v.user], away)
    v.fresh_lo, v.fresh_n = fresh_lo, fresh_n
    return v


# ---- checkouts ---------------------------------------------------------------------------------
class _Orders:
    order: np.ndarray
    user: np.ndarray
    product: np.ndarray
    pincode: np.ndarray
    t: np.ndarray


def _draw_checkouts(rng: np.random.Generator, people: _People, visits: _Visits, window) -> _Orders:
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
    # Number orders by time, then user, so order ids grow with ordered_at.
    order_user = np.zeros(n_orders, np.int64)
    order_user[order] = user
    renumber = np.empty(n_orders, np.int64)
    renumber[np.lexsort((order_user, order_t))] = np.arange(n_orders)
    away = _draw_cdf(people.pincode_cdf, rng.random(n_orders))
    order_pin = np.where(rng.random(n_orders) < CHECKOUT_HOME_SHARE, people.home[order_user], away)
    r = _Orders()
    r.order, r.user, r.product = renumber[order], user, product
    r.t, r.pincode = order_t[order], order_pin[order]
    return r


# ---- searches ----------------------------------------------------------------------------------
class _Searches:
    user: np.ndarray
    query: pa.Array
    t: np.ndarray


def _draw_searches(rng: np.random.Generator, cat: _Catalog, people: _People, visits: _Visits, window):
    start, _ = window
    n = len(people.gender)
    count = rng.poisson(SEARCH_MEAN * np.sqrt(people.activity))
    su = np.repeat(np.arange(n), count)
    # Two candidate source visits per search; the first that fits a template is used.
    cand_user = np.repeat(su, 2)
    src = visits.fresh_lo[cand_user] + (rng.random(len(cand_user)) * visits.fresh_n[cand_user]).astype(np.int64)
    prod = visits.product[src]
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

    s = _Searches()
    s.user = su[keep]
    s.query = query
    s.t = np.maximum(visits.t[src] - 1 - rng.gamma(1.0, 180.0, len(src)).astype(np.int64), start)
    return s


# ---- output ------------------------------------------------------------------------------------
def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pa.array(numbers, pa.int64()).cast(pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(pa.scalar(prefix), digits, "")


def _iso(seconds: np.ndarray) -> pa.Array:
    """Epoch seconds -> ``2026-10-05T13:02:11+00:00`` (Arrow's cast gives ``2026-10-05 13:02:11``)."""
    text = pa.array(seconds, pa.int64()).cast(pa.timestamp("s")).cast(pa.string())
    return pc.binary_join_element_wise(pc.binary_replace_slice(text, 10, 11, "T"), "+00:00", "")


def _write(path: Path, columns: dict, *, quote: bool) -> None:
    table = pa.table(columns)
    options = pacsv.WriteOptions(quoting_style="needed" if quote else "none", quoting_header="none")
    pacsv.write_csv(table, path, write_options=options)
