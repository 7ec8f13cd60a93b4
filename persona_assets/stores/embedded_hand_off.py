"""An embedded build straight from the rebuild's hand-off files, grouped by DuckDB.

``persona_index`` hands over three files (:class:`~persona_assets.stores.search_backend.PersonaHandOff`:
users, affinities as ``(uid, kid, value)``, keys). Streaming them as whole personas (:mod:`persona_stream`)
and taking the maps apart again (:func:`embedded_build.build_index`) is what a backend that indexes
documents needs; the embedded index only needs the postings grouped by (dimension, key), rows ascending.
DuckDB numbers the users in code-point order and the keys in the build's order, and sorts the affinity
rows by (slot, row) — integers joined to integers, no string touched per row — under the configured
memory limit (spilling beyond it); Python copies the sorted columns into the build's arrays. No map is
built, no scratch file is written, and the result is array for array what ``build_index`` makes of the
same personas (tested). The footprint is DuckDB's budget plus the finished postings (12 bytes each).

The input is checked as the stream is: duplicate or null ext_ids or uids, unknown genders or
dimensions, null or duplicate keys, affinity rows without a user or a key, duplicate keys in a map,
values that are null, negative or not finite — a ``ValueError`` names the first fault and nothing is
published.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from persona_assets.compute.duck import connect, parquet_relation
from persona_assets.stores.embedded_build import IndexBuild, KeySlices, write_build
from persona_assets.stores.search_backend import DIMENSIONS, GENDERS, PersonaHandOff

__all__ = ["build_index_from_hand_off"]

_CHUNK_ROWS = 1 << 20
_COLUMNS = {
    "users": ("ext_id", "uid", "gender"),
    "affinities": ("uid", "kid", "value"),
    "keys": ("kid", "dimension", "key"),
}


def _source(path: Path, name: str) -> str:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: materialise user_personas first")
    missing = [c for c in _COLUMNS[name] if c not in pq.read_schema(path).names]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)} in {path}")
    return parquet_relation(path)


def _first(con: duckdb.DuckDBPyConnection, sql: str) -> tuple | None:
    return con.execute(sql).fetchone()


def _users(con: duckdb.DuckDBPyConnection, source: str) -> pa.Table:
    """Table ``hand_off_users(ext_id, gender, uid, r)``, checked; the users in row order."""
    con.execute(
        "CREATE TABLE hand_off_users AS SELECT ext_id, gender, uid, "
        f"(row_number() OVER (ORDER BY ext_id) - 1)::INTEGER AS r FROM {source}"
    )
    if _first(con, "SELECT 1 FROM hand_off_users WHERE ext_id IS NULL LIMIT 1"):
        raise ValueError("users: column 'ext_id' holds null value(s)")
    duplicate = _first(con, "SELECT ext_id FROM hand_off_users GROUP BY ext_id HAVING count(*) > 1 LIMIT 1")
    if duplicate:
        raise ValueError(f"users: duplicate ext_id {duplicate[0]!r}")
    if _first(con, "SELECT 1 FROM hand_off_users WHERE uid IS NULL LIMIT 1"):
        raise ValueError("users: column 'uid' holds null value(s)")
    duplicate = _first(con, "SELECT uid FROM hand_off_users GROUP BY uid HAVING count(*) > 1 LIMIT 1")
    if duplicate:
        raise ValueError(f"users: duplicate uid {duplicate[0]!r}")
    known = ", ".join("'" + g + "'" for g in GENDERS)
    bad = _first(con, f"SELECT gender FROM hand_off_users WHERE gender IS NULL OR gender NOT IN ({known}) LIMIT 1")
    if bad:
        raise ValueError(f"users: gender {bad[0]!r} is not one of {', '.join(GENDERS)}")
    return con.sql("SELECT ext_id, gender FROM hand_off_users ORDER BY r").to_arrow_table()


def _slots(con: duckdb.DuckDBPyConnection, keys: str, affinities: str) -> KeySlices:
    """Table ``hand_off_slots(kid, dimension, key, slot)``: the keys that hold postings, in the build's
    (dimension, key) order, checked."""
    dimensions = "[" + ", ".join("'" + d + "'" for d in DIMENSIONS) + "]"
    con.execute(f"CREATE TABLE hand_off_keys AS SELECT kid, dimension, key FROM {keys}")
    duplicate = _first(con, "SELECT kid FROM hand_off_keys GROUP BY kid HAVING count(*) > 1 LIMIT 1")
    if duplicate:
        raise ValueError(f"keys: duplicate kid {duplicate[0]!r}")
    con.execute(
        "CREATE TABLE hand_off_slots AS SELECT kid, dimension, key, "
        "(row_number() OVER (ORDER BY list_position(" + dimensions + ", dimension), key) - 1)::INTEGER AS slot "
        f"FROM hand_off_keys WHERE kid IN (SELECT DISTINCT kid FROM {affinities})"
    )
    bad = _first(
        con, f"SELECT dimension FROM hand_off_slots WHERE list_position({dimensions}, dimension) IS NULL LIMIT 1"
    )
    if bad:
        raise ValueError(f"affinities: dimension {bad[0]!r} is not one of {', '.join(DIMENSIONS)}")
    if _first(con, "SELECT 1 FROM hand_off_slots WHERE key IS NULL LIMIT 1"):
        raise ValueError("affinities: column 'key' holds null value(s)")
    duplicate = _first(
        con, "SELECT dimension, key FROM hand_off_slots GROUP BY dimension, key HAVING count(*) > 1 LIMIT 1"
    )
    if duplicate:
        raise ValueError(f"keys: duplicate (dimension, key) {duplicate!r}")
    slots = con.sql("SELECT dimension, key FROM hand_off_slots ORDER BY slot").to_arrow_table()
    empty = np.zeros(slots.num_rows, dtype=np.int64)
    return KeySlices(slots["dimension"].to_pylist(), slots["key"].to_pylist(), empty, empty.copy())


def _fault(
    con: duckdb.DuckDBPyConnection, affinities: str, slot: np.ndarray, rows: np.ndarray, values: np.ndarray
) -> str:
    """The first fault of one sorted chunk (slots of -1 have no key, rows of -1 no user), or ''."""
    if (slot < 0).any():
        orphan = _first(con, f"SELECT a.kid FROM {affinities} a ANTI JOIN hand_off_keys k USING (kid) LIMIT 1")
        return f"affinities: kid {orphan[0] if orphan else None!r} is not in keys"
    if (rows < 0).any():
        orphan = _first(
            con,
            f"SELECT a.uid, count(*) OVER () FROM {affinities} a ANTI JOIN hand_off_users u USING (uid) LIMIT 1",
        )
        return (
            f"affinities: uid {orphan[0] if orphan else None!r} is not in users ({orphan[1] if orphan else 0} row(s))"
        )
    if np.isnan(values).any():
        return "affinities: column 'value' holds null value(s)"
    if not (np.isfinite(values).all() and (values >= 0).all()):
        return "affinities: column 'value' must hold finite numbers >= 0"
    same = (slot[1:] == slot[:-1]) & (rows[1:] == rows[:-1])
    if same.any():
        return f"affinities: duplicate (ext_id, dimension, key) at row {int(rows[1:][same][0])}"
    return ""


def build_index_from_hand_off(hand_off: PersonaHandOff, index_dir: Path, *, keep_builds: int = 2) -> IndexBuild:
    """Publish a build of the personas in the hand-off files (see the module's docstring)."""
    users_source = _source(hand_off.users, "users")
    affinity_source = _source(hand_off.affinities, "affinities")
    keys_source = _source(hand_off.keys, "keys")
    con = connect(hand_off.limits)
    try:
        users = _users(con, users_source)
        slices = _slots(con, keys_source, affinity_source)
        total = int(con.execute(f"SELECT count(*) FROM {affinity_source}").fetchone()[0])
        rows = np.empty(total, dtype=np.int32)
        values = np.empty(total, dtype=np.float64)
        counts = np.zeros(len(slices.key), dtype=np.int64)
        sorting = con.cursor()  # the diagnostics of a fault query the connection while this one is read
        reader = sorting.sql(
            "SELECT coalesce(s.slot, -1) AS slot, coalesce(u.r, -1) AS r, coalesce(a.value, 'NaN'::DOUBLE) AS value "
            f"FROM {affinity_source} a LEFT JOIN hand_off_slots s USING (kid) "
            "LEFT JOIN hand_off_users u USING (uid) ORDER BY slot, r"
        ).to_arrow_reader(_CHUNK_ROWS)
        filled, last = 0, (-1, -1)
        for chunk in reader:
            slot = chunk.column(0).to_numpy()
            chunk_rows = chunk.column(1).to_numpy()
            chunk_values = chunk.column(2).to_numpy()
            fault = _fault(con, affinity_source, slot, chunk_rows, chunk_values)
            if not fault and chunk.num_rows and (int(slot[0]), int(chunk_rows[0])) == last:
                fault = f"affinities: duplicate (ext_id, dimension, key) at row {last[1]}"
            if fault:
                raise ValueError(fault)
            rows[filled : filled + chunk.num_rows] = chunk_rows
            values[filled : filled + chunk.num_rows] = chunk_values
            counts += np.bincount(slot, minlength=counts.size)
            filled += chunk.num_rows
            if chunk.num_rows:
                last = (int(slot[-1]), int(chunk_rows[-1]))
        if filled != total:
            raise ValueError(f"affinities: {total - filled} row(s) changed while the build read them")
    finally:
        con.close()
    ends = np.cumsum(counts)
    slices = KeySlices(slices.dimension, slices.key, ends - counts, ends)
    return write_build(index_dir, users, rows, values, slices, keep_builds=keep_builds)
