"""Synthetic persona hand-off files (``PersonaHandOff``: users, affinities as integers, keys) at any scale.

The index benchmarks need a million normalised personas without running import and the rebuild
first. This writes the three files ``user_personas`` leaves in its build directory, with the
same columns, in chunks of users (memory stays flat whatever ``--users``):

* ~30 affinity rows per user over the five dimensions (brand ~7, generic ~8, category ~14 — three
  levels per product —, city 1–3, ecomm 1–2), key popularity Zipf-skewed;
* brand and generic keys: the 300 / 500 most frequent names of the real catalog in
  ``persona_assets/synthetic/data`` (trimmed, lower-cased, as the vocabulary keeps them),
  categories: every id of its hierarchy, sites: its ``pos`` values;
* values: small integer counts (visits 1, searches 5, purchases 41) normalised per dimension, so
  there are many exact ties, as in real personas.

Usage: python bench/persona_work.py WORK_DIR [--users 1000000] [--seed 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CATALOG = Path(__file__).resolve().parent.parent / "persona_assets" / "synthetic" / "data"
CHUNK_USERS = 100_000
#: dimension: (mean keys per user, minimum keys, Zipf exponent of key popularity)
SHAPE = {
    "brand": (7.0, 0, 1.05),
    "generic": (8.0, 0, 1.0),
    "category": (14.0, 0, 0.9),
    "city": (1.5, 1, 0.8),
    "ecomm": (1.4, 1, 1.2),
}
RAW_WEIGHTS = np.array([1, 1, 1, 2, 3, 5, 6, 41], dtype=np.float64)


def catalog_vocabulary() -> dict[str, list[str]]:
    """Keys per dimension, most popular first (brands and generic names by product count)."""
    products = pd.read_csv(CATALOG / "products.csv.gz", dtype=str, keep_default_na=False)
    categories = pd.read_csv(CATALOG / "categories.csv.gz", dtype=str, keep_default_na=False)

    def by_count(column: str, top: int) -> list[str]:
        names = products[column].str.strip().str.lower()
        return names[names != ""].value_counts().index[:top].tolist()

    return {
        "brand": by_count("brand", 300),
        "generic": by_count("generic_name", 500),
        "category": categories["cat_id"].str.strip().tolist(),
        "city": ["Tier1", "Tier2", "Tier3"],
        "ecomm": sorted(products["pos"].str.strip().str.lower().replace("", np.nan).dropna().unique()),
    }


def _zipf(n: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


def ext_ids(first: int, count: int, users: int) -> pa.Array:
    """Distinct ids like ``C0482913375``, in an order unrelated to their code-point order."""
    numbers = (np.arange(first, first + count, dtype=np.int64) * 7_919_000_003 + 12_345) % 10_000_000_000
    return pa.array(np.char.add("C", np.char.zfill(numbers.astype(str), 10)), pa.string())


def key_ids(vocabulary: dict[str, list[str]]) -> tuple[dict[str, int], pa.Table]:
    """The first kid of each dimension's keys, and the keys table (kid, dimension, key)."""
    first, dimensions, keys = {}, [], []
    for dim in SHAPE:
        first[dim] = len(keys)
        dimensions += [dim] * len(vocabulary[dim])
        keys += vocabulary[dim]
    table = pa.table({"kid": pa.array(range(len(keys)), pa.int32()), "dimension": dimensions, "key": keys})
    return first, table


def chunk_tables(
    rng: np.random.Generator,
    vocabulary: dict[str, list[str]],
    first_kid: dict[str, int],
    first: int,
    count: int,
    users: int,
) -> tuple[pa.Table, pa.Table]:
    ids = ext_ids(first, count, users)
    gender = rng.choice(np.array(["men", "women", "unisex"]), size=count, p=[0.42, 0.40, 0.18])
    parts = []
    for dim, (mean, least, exponent) in SHAPE.items():
        keys = vocabulary[dim]
        wanted = np.clip(rng.poisson(mean - least, size=count) + least, 0, len(keys))
        rows = np.repeat(np.arange(count, dtype=np.int64), wanted)
        picks = rng.choice(len(keys), size=rows.size, p=_zipf(len(keys), exponent))
        pairs = np.sort(rows * len(keys) + picks)
        pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]  # a key once per user
        rows, picks = pairs // len(keys), pairs % len(keys)
        raw = RAW_WEIGHTS[rng.integers(0, RAW_WEIGHTS.size, size=rows.size)]
        values = raw / np.bincount(rows, weights=raw, minlength=count)[rows]
        parts.append(
            pa.table(
                {
                    "uid": pa.array(rows + first, pa.int32()),
                    "kid": pa.array(picks + first_kid[dim], pa.int32()),
                    "value": pa.array(values, pa.float64()),
                }
            )
        )
    uids = pa.array(np.arange(first, first + count), pa.int32())
    return pa.table({"ext_id": ids, "uid": uids, "gender": pa.array(gender, pa.string())}), pa.concat_tables(parts)


def write_work_files(work_dir: Path, users: int, seed: int = 7) -> dict[str, int]:
    """Write the hand-off files into ``work_dir`` (replacing them); returns the row counts."""
    from persona_assets.stores.search_backend import PersonaHandOff

    work_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocabulary = catalog_vocabulary()
    first_kid, keys = key_ids(vocabulary)
    hand_off = PersonaHandOff.in_directory(work_dir)
    pq.write_table(keys, hand_off.keys, compression="zstd")
    user_rows = affinity_rows = 0
    users_writer = affinity_writer = None
    try:
        for first in range(0, users, CHUNK_USERS):
            count = min(CHUNK_USERS, users - first)
            user_table, affinity_table = chunk_tables(rng, vocabulary, first_kid, first, count, users)
            if users_writer is None:
                users_writer = pq.ParquetWriter(hand_off.users, user_table.schema, compression="zstd")
                affinity_writer = pq.ParquetWriter(hand_off.affinities, affinity_table.schema, compression="zstd")
            users_writer.write_table(user_table)
            affinity_writer.write_table(affinity_table)
            user_rows += user_table.num_rows
            affinity_rows += affinity_table.num_rows
    finally:
        for writer in (users_writer, affinity_writer):
            if writer is not None:
                writer.close()
    return {"users": user_rows, "affinity_rows": affinity_rows}


def named_affinities_sql(hand_off) -> str:
    """The hand-off's affinities as a DuckDB relation with names, ``(ext_id, dimension, key, value)``: what
    refreshes and code before the integer hand-off read."""
    from persona_assets.compute.duck import parquet_relation

    users, affinities, keys = (parquet_relation(path) for path in hand_off.files)
    return (
        f"(SELECT u.ext_id, k.dimension, k.key, a.value FROM {affinities} a JOIN {users} u USING (uid) "
        f"JOIN {keys} k USING (kid))"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    counts = write_work_files(args.work_dir, args.users, args.seed)
    print(f"{counts} in {time.perf_counter() - started:.1f}s -> {args.work_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
