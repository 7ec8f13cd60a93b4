"""The packaged real catalog as arrays, its interest groups, and popularity-weighted product draws.

Used by :mod:`persona_assets.synthetic.generator`; the model is described there.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import pyarrow as pa

DATA_PACKAGE = "persona_assets.synthetic"
MEN, WOMEN = 0, 1  # user genders (products use 0 none, 1 men, 2 women, 3 unisex)

EXPLORE_ANY_GENDER = 0.1  # of the visits not from an interest, share drawn from all products (else compatible ones)
SAME_GENDER_BOOST = 2.0  # products of the user's own gender weigh (1 + boost) x in every draw
IN_GROUP_POWER = 0.5  # inside an interest, products are drawn with weight (Zipf weight) ** power
INTEREST_GROUP_POWER = 0.8  # interest groups are drawn with weight (group popularity) ** power
MIN_GENERIC_GROUP = 2  # products needed for a generic name to be an interest
MIN_BRAND_GROUP = 3  # products needed for a brand to be an interest
ZIPF_S = 1.0
ZIPF_OFFSET = 5.0


class Catalog:
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
    def load(cls) -> Catalog:
        with resources.files(DATA_PACKAGE).joinpath("data", "products.csv.gz").open("rb") as f:
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
        #: each interest group's name: the generic name or the brand
        self.group_names = [*np.asarray(gen_names)[gen_ok].tolist(), *np.asarray(brand_names)[brand_ok].tolist()]
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


class Sampler:
    """Popularity-weighted draws, per user gender, from interest groups and from the catalog."""

    def __init__(self, rng: np.random.Generator, cat: Catalog) -> None:
        n = len(cat)
        rank = np.empty(n, np.float64)
        rank[rng.permutation(n)] = np.arange(n)
        self.weight = 1.0 / (rank + ZIPF_OFFSET) ** ZIPF_S
        self.cat = cat
        self.by_gender = {}
        for user_gender, same, opposite in ((MEN, 1, 2), (WOMEN, 2, 1)):
            ok = cat.gender != opposite
            boost = np.where(cat.gender == same, 1.0 + SAME_GENDER_BOOST, 1.0)
            mask = ok[cat.member_product]
            grp, prod = cat.member_group[mask], cat.member_product[mask]
            keys, lo, hi = segment_cdf(grp, self.weight[prod] ** IN_GROUP_POWER * boost[prod], cat.n_groups)
            group_w = np.bincount(grp, weights=self.weight[prod] * boost[prod], minlength=cat.n_groups)
            group_cdf = cdf(group_w**INTEREST_GROUP_POWER)
            compat_cdf = cdf(np.where(ok, self.weight * boost, 0.0))
            self.by_gender[user_gender] = (keys, lo, hi, prod, group_cdf, compat_cdf)
        self.any_cdf = cdf(self.weight)

    def groups(
        self, rng: np.random.Generator, gender: int, size: tuple[int, ...], *, uniform: bool = False
    ) -> np.ndarray:
        """Interest groups compatible with ``gender``: by popularity, or all equally likely (``uniform``)."""
        group_cdf = self.by_gender[gender][4]
        if uniform:
            compatible = np.diff(group_cdf, prepend=0.0) > 0
            group_cdf = cdf(compatible.astype(np.float64))
        return draw_cdf(group_cdf, rng.random(size))

    def in_group(self, rng: np.random.Generator, gender: int, group: np.ndarray) -> np.ndarray:
        keys, lo, hi, prod, _, _ = self.by_gender[gender]
        pos = np.searchsorted(keys, group + rng.random(len(group)), side="right")
        return prod[np.clip(pos, lo[group], hi[group] - 1)]

    def explore(self, rng: np.random.Generator, gender: int, size: int) -> np.ndarray:
        compat = draw_cdf(self.by_gender[gender][5], rng.random(size))
        anyone = draw_cdf(self.any_cdf, rng.random(size))
        return np.where(rng.random(size) < EXPLORE_ANY_GENDER, anyone, compat)


def cdf(weights: np.ndarray) -> np.ndarray:
    """Normalised cumulative sum of ``weights``."""
    c = np.cumsum(weights, dtype=np.float64)
    return c / c[-1]


def draw_cdf(cumulative: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Indices drawn by inverting a normalised cumulative distribution at uniforms ``u``."""
    return np.minimum(np.searchsorted(cumulative, u, side="right"), len(cumulative) - 1)


def segment_cdf(group: np.ndarray, weight: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
