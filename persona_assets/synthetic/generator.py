"""Generate a synthetic import directory: Indian shoppers browsing, buying and searching the real catalog.

The catalog (``products.csv``/``categories.csv``) is the real Flipkart + Amazon India data built by
``scripts/build_synthetic_catalog.py`` and shipped in ``persona_assets/synthetic/data``; only the
users and their events are synthetic. Everything is drawn with numpy over whole arrays (no
per-user or per-event Python loop) and written with ``pyarrow.csv``.

Model (the parameters are the constants of :mod:`.shoppers`, :mod:`.catalog` and :mod:`.searches`):

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
import pyarrow as pa

from persona_assets.synthetic.catalog import DATA_PACKAGE, Catalog
from persona_assets.synthetic.csv_output import Quoting, ids, iso, write_csv
from persona_assets.synthetic.searches import SEARCH_MEAN, draw_searches
from persona_assets.synthetic.shoppers import (
    FRESH_MEAN,
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
        raw = gzip.decompress(resources.files(DATA_PACKAGE).joinpath("data", f"{name}.gz").read_bytes())
        (out_dir / name).write_bytes(raw)
        counts[name] = raw.count(b"\n") - 1
    cat = Catalog.load()

    start = int(dt.datetime(end_date.year, end_date.month, end_date.day, tzinfo=dt.UTC).timestamp())
    start -= (days - 1) * 86400
    window = (start, start + days * 86400 - 1)  # inclusive bounds, in epoch seconds

    say(f"drawing {users:,} users (names, home pincodes, interests)")
    rngs = [np.random.default_rng([seed, stream]) for stream in range(8)]
    world = World(rngs[0], rngs[1], cat)
    people = draw_people(rngs[0], world, users)

    say("drawing visits")
    visits = draw_visits(rngs[1], world, people, window, interests=(2, 4), fresh_mean=FRESH_MEAN)

    say("drawing checkouts")
    orders = draw_checkouts(rngs[2], world, people, visits, window)
    order_number = order_numbers(orders.order_t, orders.order_user)[orders.order]

    say("drawing searches")
    searches = draw_searches(rngs[3], cat, people, visits, window, search_mean=SEARCH_MEAN)

    say("writing users.csv, visits.csv, checkouts.csv, searches.csv")
    ext = ids("U", np.arange(1, users + 1), 7)
    pins = pa.array(world.pincodes)
    pid = pa.array(cat.pid)

    def user_columns(rows: slice) -> list[pa.Array]:
        return [ext[rows], people.name[rows], people.gender_label[rows], pins.take(people.home[rows])]

    write_csv(out_dir / "users.csv", USER_COLUMNS, users, user_columns, Quoting.ALWAYS, say)
    counts["users.csv"] = users

    o = np.lexsort((visits.product, visits.user, visits.t))

    def visit_columns(rows: slice) -> list[pa.Array]:
        r = o[rows]
        return [ext.take(visits.user[r]), pid.take(visits.product[r]), pins.take(visits.pincode[r]), iso(visits.t[r])]

    write_csv(out_dir / "visits.csv", VISIT_COLUMNS, len(o), visit_columns, Quoting.NEEDED, say)
    counts["visits.csv"] = len(o)

    o = np.lexsort((orders.product, order_number, orders.t))

    def checkout_columns(rows: slice) -> list[pa.Array]:
        r = o[rows]
        return [
            ids("O", order_number[r] + 1, 8),
            ext.take(orders.user[r]),
            pid.take(orders.product[r]),
            pins.take(orders.pincode[r]),
            iso(orders.t[r]),
        ]

    write_csv(out_dir / "checkouts.csv", CHECKOUT_COLUMNS, len(o), checkout_columns, Quoting.NEEDED, say)
    counts["checkouts.csv"] = len(o)

    o = np.lexsort((searches.user, searches.t))

    def search_columns(rows: slice) -> list[pa.Array]:
        r = o[rows]
        return [ext.take(searches.user[r]), searches.query.take(pa.array(r)), iso(searches.t[r])]

    write_csv(out_dir / "searches.csv", SEARCH_COLUMNS, len(o), search_columns, Quoting.ALWAYS, say)
    counts["searches.csv"] = len(o)
    say(", ".join(f"{k}: {v:,}" for k, v in counts.items()))
    return counts
