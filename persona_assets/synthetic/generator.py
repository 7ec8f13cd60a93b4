"""Generate a synthetic import directory: Indian shoppers browsing, buying and searching the real catalog.

The catalog (``products.csv``/``categories.csv``) is the real Flipkart + Amazon India data built by
``scripts/build_synthetic_catalog.py`` and shipped in ``persona_assets/synthetic/data``; only the
users and their events are synthetic. Everything is drawn with numpy over whole arrays (no
per-user or per-event Python loop), users in blocks when the shape says so, and written in slices of
rows (:mod:`.csv_output`).

Model (the parameters are the constants of :mod:`.shoppers`, :mod:`.catalog` and :mod:`.searches`):

- **Users** ``U0000001``...: gender men/women, a first name of that gender and a surname (regional
  surnames for users whose home state has some), and a home pincode drawn from every pincode the
  India Post directory knows with a state, weighted so that Tier1 / Tier2 / Tier3 get
  ``TIER_SHARE`` of users (so a Tier1 pincode is ~20x as likely as a Tier3 one), times a per-pincode
  log-normal jitter.
- **Activity**: a log-normal per-user activity level scales the number of distinct products
  visited (``Shape.fresh_mean``), sessions and searches (about 30 events per user on average).
- **Interests**: each user has 2-4 interests (``Shape.interests``), each a generic name (``smart watches``) or a brand,
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
  a little before that visit; Poisson(``SEARCH_MEAN`` * sqrt(activity)) per user, about 2.7 on
  average, or ``Shape.searches_per_user`` on average.

Timestamps are whole seconds in the window of ``days`` calendar days ending with ``end_date``:
``[end_date - (days - 1) 00:00:00, end_date + 1 day 00:00:00)`` UTC, written as
``2026-10-05T13:02:11+00:00``. Output is byte-identical for the same (users, seed, end_date, shape).

Shapes (:class:`Shape`): the default is the original 30-day shape, byte for byte. :data:`WIDE`
(``persona generate --wide``) is the acceptance benchmark's: 730 days; 8-12 interests, but 90% of
distinct products found by exploring the catalog; 5% repeat visits; 4.4 searches per shopper, each
about a product never visited; 1% adversarial shoppers (:mod:`.adversarial`); 100,000 users per
block. Measured at 100k users through ``persona import`` + ``persona materialize``: 73.9 raw
affinity rows, 4.41 searches and 29.7 events per shopper. ``shape.json`` in the output says which
shape was drawn.

Planted interest groups (``Shape.planted_groups``, ``persona generate --planted-groups N``): shoppers
who share a taste, the ground truth of the lookalike benchmark (:mod:`.planted`); who joined which group
is in ``planted_groups.csv`` and each group's interests in ``shape.json``. Without them the data is what
it was, byte for byte.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa

from persona_assets.synthetic.adversarial import decorate_queries, pick_adversarial
from persona_assets.synthetic.adversarial import ext_ids as adversarial_ext_ids
from persona_assets.synthetic.catalog import DATA_PACKAGE, MEN, Catalog
from persona_assets.synthetic.csv_output import Quoting, ids, iso, sorted_rows, write_csv
from persona_assets.synthetic.planted import PlantedProfiles, assign_members, focus_products
from persona_assets.synthetic.searches import SEARCH_MEAN, Searches, draw_searches, search_mean_for
from persona_assets.synthetic.shoppers import (
    FRESH_MEAN,
    INTEREST_SHARE,
    REPEAT_RATE,
    Orders,
    People,
    Visits,
    World,
    draw_checkouts,
    draw_people,
    draw_visits,
    order_numbers,
)

VISIT_COLUMNS = ["ext_id", "pid", "pincode", "visited_at"]
CHECKOUT_COLUMNS = ["order_id", "ext_id", "pid", "pincode", "ordered_at"]
SEARCH_COLUMNS = ["ext_id", "query", "searched_at"]
USER_COLUMNS = ["ext_id", "name", "gender", "pincode"]
SHAPE_FILE = "shape.json"
PLANTED_FILE = "planted_groups.csv"
EVENT_FILES = ("visits.csv", "checkouts.csv", "searches.csv")


@dataclass(frozen=True)
class Shape:
    """How long a window, and how much each shopper does in it. The defaults are the original shape."""

    days: int = 30  # calendar days of the window ending at the end date
    interests: tuple[int, int] = (2, 4)  # fewest and most interests per shopper
    interest_share: float = INTEREST_SHARE  # share of distinct products visited that come from the interests
    fresh_mean: float = FRESH_MEAN  # distinct products visited per shopper ~ 1 + Poisson(fresh_mean * activity)
    repeat_rate: float = REPEAT_RATE  # repeat visits per distinct product visited
    searches_per_user: float | None = None  # mean searches per shopper; None: Poisson(SEARCH_MEAN * sqrt(activity))
    unvisited_search_share: float = 0.0  # share of searches about a product the shopper never visits
    adversarial_share: float = 0.0  # share of shoppers with adversarial ext_ids and search texts
    block_users: int | None = None  # users drawn at a time (bounds memory); None: all, from the original streams
    planted_groups: int = 0  # interest groups planted among the shoppers (.planted); 0: none
    planted_share: float = 0.05  # share of shoppers who join a planted group of their gender
    planted_focus: float = 0.5  # share of a member's candidate products drawn from the group's interests
    planted_draw: str = "uniform"  # a planted group's interests: "uniform" over interest groups, or "popular"

    @property
    def search_mean(self) -> float:
        return SEARCH_MEAN if self.searches_per_user is None else search_mean_for(self.searches_per_user)

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field that cannot be drawn."""
        fewest, most = self.interests
        problems = {
            "days must be at least 1": self.days < 1,
            "interests must be LO-HI with 1 <= LO <= HI": not 1 <= fewest <= most,
            "fresh_mean must be positive": not self.fresh_mean > 0,
            "repeat_rate must not be negative": not self.repeat_rate >= 0,
            "interest_share must be between 0 and 1": not 0.0 <= self.interest_share <= 1.0,
            "unvisited_search_share must be between 0 and 1": not 0.0 <= self.unvisited_search_share <= 1.0,
            "searches per user must be positive": self.searches_per_user is not None and not self.searches_per_user > 0,
            "adversarial share must be between 0 and 1": not 0.0 <= self.adversarial_share <= 1.0,
            "block_users must be at least 1": self.block_users is not None and self.block_users < 1,
            "planted groups must not be negative": self.planted_groups < 0,
            "planted share must be between 0 and 1": not 0.0 <= self.planted_share <= 1.0,
            "planted focus must be between 0 and 1": not 0.0 <= self.planted_focus <= 1.0,
            "planted draw must be uniform or popular": self.planted_draw not in ("uniform", "popular"),
        }
        for message, bad in problems.items():
            if bad:
                raise ValueError(message)


DEFAULT_SHAPE = Shape()
# The acceptance benchmark's shape (measured by importing and materialising 100k users; README):
# two years of daily partitions; about 73 raw affinity rows (user, dimension, key) per shopper,
# 4.4 searches and 29-30 events (visits + checkouts + searches); 1% adversarial shoppers. Over two
# years tastes wander: most distinct products are found by exploring the catalog rather than from
# the 8-12 interests, few visits are repeats, and searches name products the shopper never opened,
# so personas are wide. Users are drawn 100,000 at a time, so a million fit in a few GiB.
WIDE = Shape(
    days=730,
    interests=(8, 12),
    interest_share=0.1,
    fresh_mean=22.1,
    repeat_rate=0.05,
    searches_per_user=4.4,
    unvisited_search_share=1.0,
    adversarial_share=0.01,
    block_users=100_000,
)


def generate_dataset(
    out_dir: Path,
    users: int,
    seed: int,
    *,
    end_date: dt.date = dt.date(2026, 10, 31),
    days: int | None = None,
    shape: Shape = DEFAULT_SHAPE,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write a synthetic import directory into ``out_dir`` and return ``{file name: data rows}``.

    Files: ``products.csv``, ``categories.csv`` (the packaged real catalog), ``visits.csv``,
    ``checkouts.csv``, ``searches.csv`` (contract section 1), the side file ``users.csv``
    (``ext_id,name,gender,pincode``; the importer ignores it) and ``shape.json`` (what was drawn).
    ``days`` is short for ``dataclasses.replace(shape, days=days)``.
    """
    if days is not None:
        shape = dataclasses.replace(shape, days=days)
    if users < 1:
        raise ValueError("users must be at least 1")
    shape.check()
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}

    say("copying the real catalog (products.csv, categories.csv)")
    for name in ("products.csv", "categories.csv"):
        raw = gzip.decompress(resources.files(DATA_PACKAGE).joinpath("data", f"{name}.gz").read_bytes())
        (out_dir / name).write_bytes(raw)
        counts[name] = raw.count(b"\n") - 1
    cat = Catalog.load()
    first_day = end_date - dt.timedelta(days=shape.days - 1)
    start = int(dt.datetime(first_day.year, first_day.month, first_day.day, tzinfo=dt.UTC).timestamp())
    window = (start, start + shape.days * 86400 - 1)  # inclusive bounds, in epoch seconds

    adversarial = pick_adversarial(seed, users, shape.adversarial_share)
    world, profiles, drawn = _draw_in_blocks(seed, users, cat, window, shape, adversarial, say)
    ext = adversarial_ext_ids(ids("U", np.arange(1, users + 1), 7), adversarial)
    _write_files(out_dir, ext, pa.array(world.pincodes), pa.array(cat.pid), drawn, counts, say)
    say(", ".join(f"{k}: {v:,}" for k, v in counts.items()))
    description = describe(users, seed, first_day, end_date, shape, counts, len(adversarial))
    if profiles is not None:
        members = np.flatnonzero(drawn.planted >= 0)
        write_csv(
            out_dir / PLANTED_FILE,
            ["ext_id", "group"],
            len(members),
            lambda rows: [ext.take(pa.array(members[rows])), pa.array(drawn.planted[members[rows]]).cast(pa.string())],
            Quoting.NEEDED,
            say,
        )
        description["planted_groups"] = profiles.describe(cat, drawn.planted)
    (out_dir / SHAPE_FILE).write_text(json.dumps(description, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return counts


def describe(
    users: int,
    seed: int,
    first_day: dt.date,
    end_date: dt.date,
    shape: Shape,
    counts: dict[str, int],
    adversarial_users: int,
) -> dict:
    """The content of ``shape.json``: the arguments that reproduce the data and what they gave."""
    events = sum(counts[name] for name in EVENT_FILES)
    preset = {DEFAULT_SHAPE: "default", WIDE: "wide"}.get(shape, "custom")
    return {
        "users": users,
        "seed": seed,
        "days": shape.days,
        "first_day": first_day.isoformat(),
        "last_day": end_date.isoformat(),
        "preset": preset,
        "shape": {**dataclasses.asdict(shape), "search_mean": round(shape.search_mean, 6)},
        "adversarial_users": adversarial_users,
        "rows": counts,
        "per_user": {
            "visits": round(counts["visits.csv"] / users, 3),
            "checkouts": round(counts["checkouts.csv"] / users, 3),
            "searches": round(counts["searches.csv"] / users, 3),
            "events": round(events / users, 3),
        },
    }


@dataclass
class _Drawn:
    """What is written, for all users: global 0-based user indices; order numbers not yet by time."""

    gender: np.ndarray
    home: np.ndarray
    name: pa.Array
    planted: np.ndarray  # the planted group each user joined, -1 for none
    visit_user: np.ndarray
    visit_product: np.ndarray
    visit_pincode: np.ndarray
    visit_t: np.ndarray
    checkout_order: np.ndarray  # per row: index into order_t / order_user
    checkout_user: np.ndarray
    checkout_product: np.ndarray
    checkout_pincode: np.ndarray
    checkout_t: np.ndarray
    order_t: np.ndarray
    order_user: np.ndarray
    search_user: np.ndarray
    search_query: pa.Array
    search_t: np.ndarray

    @classmethod
    def of_block(
        cls,
        user_offset: int,
        order_offset: int,
        people: People,
        planted: np.ndarray,
        visits: Visits,
        orders: Orders,
        searches: Searches,
    ) -> _Drawn:
        """A block's draws with global user and order indices, in the narrowest integer types that hold them."""
        return cls(
            gender=people.gender,
            home=people.home.astype(np.int32),
            name=people.name,
            planted=planted.astype(np.int32),
            visit_user=(visits.user + user_offset).astype(np.int32),
            visit_product=visits.product.astype(np.int32),
            visit_pincode=visits.pincode.astype(np.int32),
            visit_t=visits.t,
            checkout_order=orders.order + order_offset,
            checkout_user=(orders.user + user_offset).astype(np.int32),
            checkout_product=orders.product.astype(np.int32),
            checkout_pincode=orders.pincode.astype(np.int32),
            checkout_t=orders.t,
            order_t=orders.order_t,
            order_user=orders.order_user + user_offset,
            search_user=(searches.user + user_offset).astype(np.int32),
            search_query=searches.query,
            search_t=searches.t,
        )

    @classmethod
    def concatenate(cls, blocks: list[_Drawn]) -> _Drawn:
        if len(blocks) == 1:
            return blocks[0]
        columns = {}
        for field in dataclasses.fields(cls):
            parts = [getattr(block, field.name) for block in blocks]
            columns[field.name] = pa.concat_arrays(parts) if isinstance(parts[0], pa.Array) else np.concatenate(parts)
        return cls(**columns)


def _draw_in_blocks(
    seed: int,
    users: int,
    cat: Catalog,
    window: tuple[int, int],
    shape: Shape,
    adversarial: np.ndarray,
    say: Callable[[str], None],
) -> tuple[World, PlantedProfiles | None, _Drawn]:
    """Draw users ``shape.block_users`` at a time; each block keeps only the columns written later.

    ``adversarial``: sorted indices of the users whose search texts get adversarial decorations.
    """
    is_adversarial = np.zeros(users, bool)
    is_adversarial[adversarial] = True
    streams = [np.random.default_rng([seed, stream]) for stream in range(4)]
    say("drawing what all users share (pincode weights, product popularity)")
    world = World(streams[0], streams[1], cat)
    profiles = None
    if shape.planted_groups:
        uniform = shape.planted_draw == "uniform"
        profiles = PlantedProfiles.draw(seed, shape.planted_groups, world.sampler, uniform=uniform)
    block = shape.block_users or users
    starts = range(0, users, block)
    blocks: list[_Drawn] = []
    orders_before = 0
    for number, lo in enumerate(starts):
        n = min(block, users - lo)
        if shape.block_users is not None:
            streams = [np.random.default_rng([seed, stream, number]) for stream in range(4)]
        say(f"block {number + 1}/{len(starts)}: drawing users {lo + 1:,}-{lo + n:,} and their events")
        people = draw_people(streams[0], world, n)
        planted = np.full(n, -1, np.int64)
        focus = None
        if profiles is not None:
            planted = assign_members(seed, number, profiles, people.gender, shape.planted_share)
            focus = functools.partial(
                focus_products, seed, number, profiles, world.sampler, planted, people.gender, shape.planted_focus
            )
        visits = draw_visits(
            streams[1],
            world,
            people,
            window,
            interests=shape.interests,
            interest_share=shape.interest_share,
            fresh_mean=shape.fresh_mean,
            repeat_rate=shape.repeat_rate,
            focus=focus,
        )
        orders = draw_checkouts(streams[2], world, people, visits, window)
        searches = draw_searches(
            streams[3],
            cat,
            world.sampler,
            people,
            visits,
            window,
            search_mean=shape.search_mean,
            unvisited_share=shape.unvisited_search_share,
        )
        searches.query = decorate_queries(searches.query, is_adversarial[lo : lo + n][searches.user])
        say(f"  {len(visits.user):,} visits, {len(orders.user):,} checkout rows, {len(searches.user):,} searches")
        blocks.append(_Drawn.of_block(lo, orders_before, people, planted, visits, orders, searches))
        orders_before += len(orders.order_t)
    return world, profiles, _Drawn.concatenate(blocks)


def _write_files(
    out_dir: Path,
    ext: pa.Array,
    pins: pa.Array,
    pid: pa.Array,
    d: _Drawn,
    counts: dict[str, int],
    say: Callable[[str], None],
) -> None:
    """The CSV files, each sorted like an export: events by time (then user, product). ``ext``: ids by user."""
    users = len(ext)

    say("writing users.csv")
    gender = pa.array(np.where(d.gender == MEN, "men", "women"))

    def user_columns(rows: slice) -> list[pa.Array]:
        return [ext[rows], d.name[rows], gender[rows], pins.take(d.home[rows])]

    write_csv(out_dir / "users.csv", USER_COLUMNS, users, user_columns, Quoting.ALWAYS, say)
    counts["users.csv"] = users

    say("sorting and writing visits.csv")
    o = sorted_rows(d.visit_t, d.visit_user, d.visit_product)

    def visit_columns(rows: slice) -> list[pa.Array]:
        r = o[rows]
        return [
            ext.take(d.visit_user[r]),
            pid.take(d.visit_product[r]),
            pins.take(d.visit_pincode[r]),
            iso(d.visit_t[r]),
        ]

    write_csv(out_dir / "visits.csv", VISIT_COLUMNS, len(o), visit_columns, Quoting.NEEDED, say)
    counts["visits.csv"] = len(o)

    say("sorting and writing checkouts.csv")
    order_number = order_numbers(d.order_t, d.order_user)[d.checkout_order]
    o = sorted_rows(d.checkout_t, order_number, d.checkout_product)

    def checkout_columns(rows: slice) -> list[pa.Array]:
        r = o[rows]
        return [
            ids("O", order_number[r] + 1, 8),
            ext.take(d.checkout_user[r]),
            pid.take(d.checkout_product[r]),
            pins.take(d.checkout_pincode[r]),
            iso(d.checkout_t[r]),
        ]

    write_csv(out_dir / "checkouts.csv", CHECKOUT_COLUMNS, len(o), checkout_columns, Quoting.NEEDED, say)
    counts["checkouts.csv"] = len(o)

    say("sorting and writing searches.csv")
    o = sorted_rows(d.search_t, d.search_user)

    def search_columns(rows: slice) -> list[pa.Array]:
        r = o[rows]
        return [ext.take(d.search_user[r]), d.search_query.take(pa.array(r)), iso(d.search_t[r])]

    write_csv(out_dir / "searches.csv", SEARCH_COLUMNS, len(o), search_columns, Quoting.ALWAYS, say)
    counts["searches.csv"] = len(o)
