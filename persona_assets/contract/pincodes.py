"""tier(pincode): India Post directory (``indian-pincode``) joined to the HRA city classification.

The whole directory (about 19.6k pincodes) is turned into one table once per
materialisation of ``pincode_tiers``; events then join on it, so no event is
looked up one at a time.
"""

from __future__ import annotations

import importlib.metadata
from functools import cache
from importlib import resources

import indian_pincode
import pandas as pd

TIER_RANK = {"Tier1": 1, "Tier2": 2, "Tier3": 3}
TIER_NAMES = tuple(TIER_RANK)


def load_city_tiers() -> pd.DataFrame:
    """The packaged ``city_tiers.csv`` exploded to one (state, district, tier) row per district."""
    with resources.files("persona_assets.reference").joinpath("city_tiers.csv").open(encoding="utf-8") as f:
        cities = pd.read_csv(f, dtype=str, keep_default_na=False)
    rows = cities.assign(district=cities["district"].str.split(";")).explode("district")
    rows["state"] = rows["state"].str.strip().str.upper()
    rows["district"] = rows["district"].str.strip().str.upper()
    unknown = sorted(set(rows["tier"]) - {"Tier1", "Tier2"})
    if unknown:
        raise ValueError(f"city_tiers.csv: column 'tier' holds unknown values {unknown}")
    return rows[["state", "district", "tier", "city"]].reset_index(drop=True)


def directory_version() -> str:
    """The directory's release, as its package says it (public metadata; the package is pinned exactly,
    so one release is one directory)."""
    return f"indian-pincode {importlib.metadata.version('indian-pincode')}"


@cache
def pincode_tier_table() -> pd.DataFrame:
    """Every pincode the directory knows, with its primary state, districts and tier.

    Columns: ``pincode`` (6-digit string), ``state``, ``districts`` (``;``-joined), ``tier``, ``city``
    (the classified city that gave the tier, empty for Tier3).
    """
    directory = [indian_pincode.get_details(pin) for pin in indian_pincode.get_pincodes()]
    pairs = pd.DataFrame(
        {
            "pincode": [d["pincode"] for d in directory],
            "state": [(d["state"] or "").upper() for d in directory],
            "district": [d["districts"] or [""] for d in directory],
        }
    )
    districts = pairs.assign(districts=pairs["district"].map(";".join))
    pairs = districts.explode("district")
    pairs["district"] = pairs["district"].str.upper()
    classified = pairs.merge(load_city_tiers(), on=["state", "district"], how="left")
    classified["tier"] = classified["tier"].fillna("Tier3")
    classified["rank"] = classified["tier"].map(TIER_RANK)
    best = (
        classified.sort_values(["pincode", "rank", "city"], na_position="last")
        .drop_duplicates("pincode")
        .reset_index(drop=True)
    )
    best["city"] = best["city"].fillna("")
    return best[["pincode", "state", "districts", "tier", "city"]]


def tier_of(pincode: str) -> str | None:
    """Reference lookup for one pincode (tests and small inputs); None when unknown or malformed."""
    pin = pincode.strip()
    if len(pin) != 6 or not (pin.isascii() and pin.isdigit()):
        return None
    table = pincode_tier_table()
    match = table.loc[table["pincode"] == pin, "tier"]
    return None if match.empty else str(match.iloc[0])
