"""``maps_sum_to_one``: both copies of the normalised maps ``user_personas`` writes."""

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import orjson
import sqlalchemy as sa
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from persona_assets.builds import upstream_build
from persona_assets.checks._common import SAMPLE_SIZE, count_rows, report_failure
from persona_assets.compute.duck import parquet_relation
from persona_assets.jobs import COMPUTE_POOL
from persona_assets.resources import ComputeResource, EventStoreResource, RelationalStore
from persona_assets.settings import PersonaSettings
from persona_assets.stores import relational
from persona_assets.stores.search_backend import PersonaHandOff

# Relational personas are streamed through DuckDB this many rows at a time (memory stays flat).
RELATIONAL_CHUNK_ROWS = 20_000
# A sample of relational personas is read by primary key this many ids per statement.
RELATIONAL_ID_CHUNK = 500
# user_personas column -> the map's dimension name in persona_affinity.
RELATIONAL_MAP_COLUMNS = {
    "city": "city",
    "ecomm": "ecomm",
    "brand_affinity": "brand",
    "generic_affinity": "generic",
    "category_affinity": "category",
}


# --------------------------------------------------------------------------- maps sum to 1


# A map is bad when its values do not sum to 1 (within $tol) or one of them is not a finite number in
# (0, 1]; a map with no keys is allowed. Both sources land their bad maps, and only those, in ``bad_maps``.
def _bad_value(v: str) -> str:
    return f"({v} IS NULL OR NOT isfinite({v}) OR {v} <= 0 OR {v} > 1 + $tol)"


IS_BAD_MAP = "(bad_values > 0 OR total IS NULL OR NOT isfinite(total) OR abs(total - 1) > $tol)"

PARQUET_MAPS_SQL = f"""
    CREATE OR REPLACE TEMP TABLE parquet_maps AS
    WITH maps AS (
        SELECT a.uid, k.dimension, SUM(a.value) AS total, COUNT(*) AS keys,
               COUNT(*) FILTER (WHERE {_bad_value("a.value")}) AS bad_values
        FROM {{affinities}} a JOIN {{keys}} k USING (kid) GROUP BY a.uid, k.dimension
    )
    SELECT u.ext_id, m.dimension, m.total, m.keys, m.bad_values FROM maps m JOIN {{users}} u USING (uid)
"""
"""Each map of the hand-off (integers, :class:`PersonaHandOff`) summed; names joined to the sums only."""

WORST_MAPS_SQL = """
    SELECT source, ext_id, dimension, total, keys, bad_values FROM bad_maps
    ORDER BY (total IS NULL OR NOT isfinite(total)) DESC, abs(total - 1) DESC, bad_values DESC, ext_id, dimension
    LIMIT $limit
"""


def _judge_json_map(text: str | None, tolerance: float) -> tuple[int, float | None, int] | None:
    """(keys, sum of the normalised values, bad values) of one stored map, or None when the text is not a
    JSON object.

    The store keeps each key's weight (``relational.user_personas``): a weight that is not a finite number
    above 0 is a bad value (JSON true/false included), and the rest are judged as export reads them,
    divided by their sum.
    """
    try:
        parsed = orjson.loads(text) if text is not None else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    weights = list(parsed.values())
    if not weights:
        return 0, 0.0, 0
    bad = sum(1 for w in weights if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w < math.inf)
    if bad:
        return len(weights), None, bad
    total = sum(weights)
    if not 0 < total < math.inf:
        return len(weights), None, 0
    values = [w / total for w in weights]
    return len(values), math.fsum(values), sum(1 for v in values if v > 1 + tolerance)


def _is_bad_map(keys: int, total: float | None, bad: int, tolerance: float) -> bool:
    return keys > 0 and (bad > 0 or total is None or not math.isfinite(total) or abs(total - 1) > tolerance)


def _relational_rows(engine: sa.engine.Engine, ext_ids: list[str] | None) -> Iterator[Sequence[sa.Row]]:
    """``user_personas`` rows (ext_id and the map columns), a chunk at a time: every row, or ``ext_ids``'."""
    table = relational.user_personas
    select = sa.select(*(table.c[c] for c in ["ext_id", *RELATIONAL_MAP_COLUMNS]))
    with engine.connect() as conn:
        if ext_ids is None:
            yield from conn.execution_options(stream_results=True).execute(select).partitions(RELATIONAL_CHUNK_ROWS)
            return
        for start in range(0, len(ext_ids), RELATIONAL_ID_CHUNK):
            yield conn.execute(select.where(table.c.ext_id.in_(ext_ids[start : start + RELATIONAL_ID_CHUNK]))).all()


def _relational_maps(
    con: duckdb.DuckDBPyConnection, engine: sa.engine.Engine, tolerance: float, ext_ids: list[str] | None
) -> tuple[int, int]:
    """Judge every JSON map of ``user_personas`` (of ``ext_ids`` only, when given); bad maps land in
    DuckDB's ``bad_maps``, text that is not a JSON object in ``bad_json``. Memory stays flat: rows come a
    chunk at a time.

    Judged in Python with orjson: several times faster than casting each text to a DuckDB MAP, and a
    million personas hold five million maps. Returns (personas read, non-empty maps checked).
    """
    dimensions = list(RELATIONAL_MAP_COLUMNS.values())
    personas = checked = 0
    for rows in _relational_rows(engine, ext_ids):
        bad_maps: list[tuple] = []
        bad_json: list[tuple] = []
        personas += len(rows)
        for ext_id, *texts in rows:
            for dimension, text in zip(dimensions, texts, strict=True):
                judged = _judge_json_map(text, tolerance)
                if judged is None:
                    bad_json.append((ext_id, dimension, text))
                    continue
                keys, total, bad = judged
                checked += keys > 0
                if _is_bad_map(keys, total, bad, tolerance):
                    bad_maps.append(("relational", ext_id, dimension, total, keys, bad))
        # Bad maps go to DuckDB a chunk at a time (its tables spill), so even a wholly bad table stays flat.
        if bad_maps:
            con.executemany("INSERT INTO bad_maps VALUES (?, ?, ?, ?, ?, ?)", bad_maps)
        if bad_json:
            con.executemany("INSERT INTO bad_json VALUES (?, ?, ?)", bad_json)
    return personas, checked


def _relational_sample(con: duckdb.DuckDBPyConnection, users_path: Path, size: int) -> tuple[list[str] | None, int]:
    """(ext_ids to judge in ``user_personas``, or None for all; how many personas the hand-off holds)."""
    count = int(con.execute("SELECT COUNT(*) FROM read_parquet($p)", {"p": str(users_path)}).fetchall()[0][0])
    if size == 0 or size >= count:
        return None, count
    rows = con.execute(
        f"SELECT ext_id FROM read_parquet($p) USING SAMPLE reservoir({int(size)} ROWS) REPEATABLE (7) ORDER BY ext_id",
        {"p": str(users_path)},
    ).fetchall()
    return [row[0] for row in rows], count


@asset_check(
    asset="user_personas",
    name="maps_sum_to_one",
    blocking=True,
    pool=COMPUTE_POOL,
    description=(
        "Every normalised map (city, ecomm, brand, generic, category) of every persona sums to 1 within 1e-9, "
        "with every value a finite number in (0, 1]; an empty map is allowed. Checked on both copies the "
        "asset writes: every map of its build's Parquet hand-off (what persona_index publishes), and of the "
        "relational user_personas JSON (what export reads) the row count and the maps of a random sample "
        "of PERSONA_CHECK_RELATIONAL_SAMPLE personas (default 10,000; 0 = all). Blocking, ERROR: a bad map "
        "never reaches the search index (persona_index is skipped, the live build and the hasChanged = 2 "
        "flags stay)."
    ),
)
def maps_sum_to_one(
    context: AssetCheckExecutionContext,
    event_store: EventStoreResource,
    relational_store: RelationalStore,
    compute: ComputeResource,
) -> AssetCheckResult:
    settings = PersonaSettings.from_env().checks
    tolerance = settings.map_sum_tolerance
    build_dir = event_store.layout.build_dir(upstream_build(context.instance, context.run.run_id, "user_personas"))
    hand_off = PersonaHandOff.in_directory(build_dir)
    missing = [path for path in hand_off.files if not path.exists()]
    if missing:
        path = missing[0]
        return report_failure(
            context,
            AssetCheckResult(
                passed=False,
                severity=AssetCheckSeverity.ERROR,
                description=f"{path} is missing: user_personas did not hand its maps over",
                metadata={"path": str(path)},
            ),
        )
    con = compute.connect()
    con.execute(
        "CREATE TABLE bad_maps (source VARCHAR, ext_id VARCHAR, dimension VARCHAR, total DOUBLE, keys BIGINT, "
        "bad_values BIGINT)"
    )
    con.execute("CREATE TABLE bad_json (ext_id VARCHAR, dimension VARCHAR, json_text VARCHAR)")
    users, affinities, keys = (parquet_relation(path) for path in hand_off.files)
    con.execute(PARQUET_MAPS_SQL.format(users=users, affinities=affinities, keys=keys), {"tol": tolerance})
    con.execute(
        "INSERT INTO bad_maps SELECT 'parquet', ext_id, dimension, total, keys, bad_values FROM parquet_maps "
        f"WHERE {IS_BAD_MAP}",
        {"tol": tolerance},
    )
    checked_parquet = int(con.execute("SELECT COUNT(*) FROM parquet_maps").fetchall()[0][0])
    sample, handed_over = _relational_sample(con, hand_off.users, settings.relational_sample)
    stored = count_rows(relational_store.engine, sa.select(sa.func.count()).select_from(relational.user_personas))
    personas, checked_relational = _relational_maps(con, relational_store.engine, tolerance, sample)
    offending = dict(con.execute("SELECT source, COUNT(*) FROM bad_maps GROUP BY source").fetchall())
    bad_json = int(con.execute("SELECT COUNT(*) FROM bad_json").fetchall()[0][0])
    worst = [
        {
            "source": source,
            "ext_id": ext_id,
            "map": dimension,
            "sum": None if total is None else float(total),
            "keys": int(keys),
            "bad_values": int(bad_values),
        }
        for source, ext_id, dimension, total, keys, bad_values in con.execute(
            WORST_MAPS_SQL, {"limit": SAMPLE_SIZE}
        ).fetchall()
    ]
    bad_json_sample = [
        {"ext_id": ext_id, "map": dimension, "text": (text or "")[:200]}
        for ext_id, dimension, text in con.execute(
            "SELECT ext_id, dimension, json_text FROM bad_json ORDER BY ext_id, dimension LIMIT $limit",
            {"limit": SAMPLE_SIZE},
        ).fetchall()
    ]
    passed = not offending and not bad_json and stored == handed_over
    judged = "every persona" if sample is None else f"a random {personas:,} of {stored:,} personas"
    if passed:
        description = (
            f"every map sums to 1 (±{tolerance:g}): {checked_parquet:,} non-empty maps in the Parquet hand-off, "
            f"{checked_relational:,} in user_personas ({judged})"
        )
    elif not offending and not bad_json:
        description = (
            f"user_personas holds {stored:,} personas but the hand-off {handed_over:,}: the relational copy is "
            "not the one computed"
        )
    else:
        first = worst[0] if worst else bad_json_sample[0]
        description = (
            f"{offending.get('parquet', 0):,} map(s) in work/persona_affinity.parquet and "
            f"{offending.get('relational', 0) + bad_json:,} in user_personas do not sum to 1 (±{tolerance:g}) "
            f"or hold a value outside (0, 1]; first: {first}"
        )
    return report_failure(
        context,
        AssetCheckResult(
            passed=passed,
            severity=AssetCheckSeverity.ERROR,
            description=description,
            metadata={
                "personas": personas,
                "personas_stored": stored,
                "personas_handed_over": handed_over,
                "relational_sampled": sample is not None,
                "maps_checked_parquet": checked_parquet,
                "maps_checked_relational": checked_relational,
                "offending_maps_parquet": int(offending.get("parquet", 0)),
                "offending_maps_relational": int(offending.get("relational", 0)),
                "maps_not_json_objects": bad_json,
                "tolerance": tolerance,
                "worst_offenders": MetadataValue.json(worst),
                "not_json_objects_sample": MetadataValue.json(bad_json_sample),
            },
        ),
    )
