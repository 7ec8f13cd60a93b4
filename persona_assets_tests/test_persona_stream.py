"""The persona stream both search backends take: produced by DuckDB in whole users and ext_id order, checked."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from conftest import write_hand_off

from persona_assets.compute.duck import DuckDBLimits
from persona_assets.stores.persona_stream import (
    checked_batches,
    map_entries,
    persona_batches_from_frames,
    persona_batches_from_hand_off,
)
from persona_assets.stores.search_backend import DIMENSIONS, PERSONA_SCHEMA

# Code-point order traps: upper before lower, digits before letters, leading zeros, non-ASCII.
USERS = pd.DataFrame(
    {
        "ext_id": ["zoë", "alice", "Alice", "01005", "1005", "élan", "日本", "a b", "a_b", "a-b", "quiet"],
        "gender": ["women", "women", "men", "unisex", "men", "women", "men", "unisex", "men", "women", "men"],
    }
)
AFFINITIES = pd.DataFrame(
    [
        (ext_id, dim, key, value)
        for i, ext_id in enumerate(USERS["ext_id"])
        if ext_id != "quiet"  # a user with no affinities at all
        for dim, key, value in [
            ("brand", "puma", 0.25),
            ("brand", "nike", 0.75),
            ("category", str(10 + i), 1.0),
            ("city", "Tier2", 1.0),
            ("generic", "Zebra", 0.5),
            ("generic", "apple", 0.5),
        ][: 2 + i % 5]
    ],
    columns=["ext_id", "dimension", "key", "value"],
)


def _expected() -> dict[str, dict]:
    personas = {
        e: {"gender": g, **{d: {} for d in DIMENSIONS}} for e, g in zip(USERS["ext_id"], USERS["gender"], strict=True)
    }
    for ext_id, dim, key, value in AFFINITIES.itertuples(index=False):
        personas[ext_id][dim][key] = value
    return personas


def _as_personas(batches) -> dict[str, dict]:
    personas = {}
    for batch in batches:
        for row in batch.to_pylist():
            personas[row["ext_id"]] = {"gender": row["gender"], **{d: dict(row[d] or []) for d in DIMENSIONS}}
    return personas


@pytest.mark.parametrize("rows_per_batch", [1, 3, 10_000])
def test_whole_users_in_code_point_order_with_sorted_map_keys(rows_per_batch):
    batches = list(persona_batches_from_frames(USERS, AFFINITIES, rows_per_batch=rows_per_batch))
    assert all(batch.schema.equals(PERSONA_SCHEMA) for batch in batches)
    assert max(batch.num_rows for batch in batches) <= rows_per_batch
    ids = [ext_id for batch in batches for ext_id in batch.column("ext_id").to_pylist()]
    assert ids == sorted(USERS["ext_id"])  # Python orders str by code point
    assert _as_personas(batches) == _expected()
    for batch in batches:
        for dim in DIMENSIONS:
            for keys in pa.array(batch.column(dim).to_pylist(), pa.map_(pa.string(), pa.float64())).to_pylist():
                names = [k for k, _ in keys or []]
                assert names == sorted(names)
    assert list(checked_batches(batches))  # what the producer makes passes the backends' checks


def test_from_the_hand_off_files_within_a_memory_limit(tmp_path: Path):
    limits = DuckDBLimits(memory_limit="64MiB", threads=1, temp_directory=tmp_path / "spill")
    hand_off = write_hand_off(USERS, AFFINITIES, tmp_path / "work", limits)
    assert _as_personas(persona_batches_from_hand_off(hand_off, rows_per_batch=4)) == _expected()
    missing = replace(hand_off, users=tmp_path / "missing.parquet")
    with pytest.raises(FileNotFoundError, match="user_personas"):
        list(persona_batches_from_hand_off(missing))


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda a, k: (pd.concat([a, a.head(1).assign(uid=999)]), k), "uid 999 is not in users"),
        (lambda a, k: (pd.concat([a, a.head(1).assign(kid=999)]), k), "kid 999 is not in keys"),
        (lambda a, k: (a, k.assign(dimension="colour")), "dimension 'colour'"),
        (lambda a, k: (pd.concat([a, a.head(1)]), k), "duplicate"),
    ],
)
def test_a_spoilt_hand_off_is_refused_naming_the_fault(tmp_path: Path, spoil, message):
    hand_off = write_hand_off(USERS, AFFINITIES, tmp_path / "work")
    affinities, keys = spoil(pd.read_parquet(hand_off.affinities), pd.read_parquet(hand_off.keys))
    affinities.to_parquet(hand_off.affinities, index=False)
    keys.to_parquet(hand_off.keys, index=False)
    with pytest.raises(ValueError, match=message):
        list(checked_batches(persona_batches_from_hand_off(hand_off)))


def test_map_entries_of_a_sliced_batch_with_null_maps():
    maps = pa.array([[("a", 1.0)], [("b", 2.0), ("c", 3.0)], None, [("d", 4.0)]], pa.map_(pa.string(), pa.float64()))
    entries = map_entries(pa.RecordBatch.from_arrays([maps], names=["brand"]).slice(1, 3), "brand")
    assert entries.offsets.tolist() == [0, 2, 2, 3]
    assert entries.keys.to_pylist() == ["b", "c", "d"]
    assert entries.values.tolist() == [2.0, 3.0, 4.0]
    assert entries.parents.tolist() == [0, 0, 2]


def _batch(ext_ids, genders=None, brand=None) -> pa.RecordBatch:
    n = len(ext_ids)
    columns = {"ext_id": ext_ids, "gender": genders or ["men"] * n}
    for dim in DIMENSIONS:
        columns[dim] = pa.array(brand if dim == "brand" and brand else [None] * n, pa.map_(pa.string(), pa.float64()))
    return pa.RecordBatch.from_pydict(columns)


@pytest.mark.parametrize(
    ("batches", "message"),
    [
        ([_batch(["a", "b"]), _batch(["b", "c"])], "duplicate ext_id 'b'"),
        ([_batch(["b", "a"])], "'a' after 'b'"),
        ([_batch(["b"]), _batch(["a"])], "'a' after 'b'"),
        ([_batch(["a"], genders=["male"])], "gender 'male'"),
        ([_batch(["a"], brand=[[("nike", 0.5), ("adidas", 0.5)]])], "not in code-point order"),
        ([_batch(["a"], brand=[[("nike", 0.5), ("nike", 0.5)]])], "duplicate .*'nike'"),
        ([_batch(["a"], brand=[[("nike", -1.0)]])], "finite numbers >= 0"),
        ([_batch(["a"], brand=[[("nike", None)]])], "null"),
        ([_batch(["a"]).drop_columns(["ecomm"])], "missing column.*ecomm"),
    ],
)
def test_a_bad_stream_is_refused_naming_the_fault(batches, message):
    with pytest.raises(ValueError, match=message):
        list(checked_batches(batches))


def test_equivalent_types_are_accepted():
    batch = _batch(["a", "b"], brand=[[("nike", 1.0)], None])
    wide = batch.set_column(0, "ext_id", batch.column(0).cast(pa.large_string())).set_column(
        1, "gender", batch.column(1).dictionary_encode()
    )
    (checked,) = checked_batches([wide])
    assert checked.schema.equals(PERSONA_SCHEMA)
    assert checked.column("ext_id").to_pylist() == ["a", "b"]


@pytest.mark.parametrize(
    ("affinities", "message"),
    [
        ({"ext_id": ["ghost"], "dimension": ["brand"], "key": ["nike"], "value": [1.0]}, "'ghost' is not in users"),
        ({"ext_id": ["alice"], "dimension": ["colour"], "key": ["red"], "value": [1.0]}, "dimension 'colour'"),
        ({"ext_id": ["alice"], "dimension": ["brand"], "key": [None], "value": [1.0]}, "'key' holds null"),
        ({"ext_id": ["alice"], "dimension": ["brand"], "key": ["nike"], "value": [None]}, "'value' holds 1 null"),
    ],
)
def test_bad_long_tables_are_refused_by_the_producer(affinities, message):
    with pytest.raises(ValueError, match=message):
        list(persona_batches_from_frames(USERS, pd.DataFrame(affinities)))
