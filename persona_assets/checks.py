"""Asset checks: the hand-offs that could publish bad data, checked where they happen.

| check (asset)                                       | blocking | severity on failure                  |
|-----------------------------------------------------|----------|--------------------------------------|
| ``reject_rate`` (raw_visits, raw_checkouts, raw_searches, product_catalog, category_hierarchy) | yes | ERROR |
| ``unknown_pincode_rate`` (user_raw_affinities)      | yes      | ERROR                                |
| ``maps_sum_to_one`` (user_personas)                 | yes      | ERROR                                |
| ``document_count_matches_personas`` (persona_index) | no       | ERROR                                |
| ``no_user_stuck_at_calculated`` (persona_index)     | no       | WARN when every stuck user is one the backend refused, else ERROR |

A blocking check that fails stops every asset downstream of its asset *in the same run*: Dagster
skips them and the run fails, naming the check (the check also logs its finding at ERROR). So in
``full_rebuild`` a flood of unknown pincodes stops vocabulary, personas and index, and a bad map
stops ``persona_index`` (the live build and the hasChanged = 2 flags stay); a flood of event rejects
fails the ``ingest_events`` run, and ``rebuild_after_ingest``, which follows successful runs only,
does not start the rebuild; in one run of everything (the UI) it stops the rebuild directly. What a
check cannot undo is its own asset, already materialised when it runs. The checks of
``persona_index`` do not block: nothing is downstream of the index and a failed step would not take
a published build back.

The checks run wherever Dagster is given them with the assets: ``definitions.py`` registers them,
so the jobs, schedule, sensors and UI of the code location run them. (A bare ``materialize()`` of
``persona_assets.assets.all_assets`` does not: pass ``[*all_assets, *asset_checks]``.)
``reject_rate`` is not partitioned on the daily raw event assets: it judges the last import, not a
day; Dagster 1.13 still plans it once per day of a run and shows those per-day entries as skipped.

Thresholds come from the environment and are read when a check runs (see :class:`CheckSettings`).
The two rate checks judge nothing below ``PERSONA_CHECK_MIN_ROWS`` rows (default 1000): a rate over
a handful of rows is noise (one bad row of three is 33 %), and a small import's rejects are listed
by ``persona import`` anyway. Every count is set-based (SQL or DuckDB over whole tables), never a
computation per row in Python.
"""

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import duckdb
import orjson
import sqlalchemy as sa
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    asset_check,
)

from persona_assets.assets.reference import load_pincode_tiers
from persona_assets.compute import affinities
from persona_assets.ingest.importer import latest_import_file_summary
from persona_assets.resources import ComputeResource, EventStoreResource, RelationalStore, SearchIndexResource
from persona_assets.stores import relational
from persona_assets.stores.changes import CALCULATED

SAMPLE_SIZE = 20
# Relational personas are streamed through DuckDB this many rows at a time (memory stays flat).
RELATIONAL_CHUNK_ROWS = 20_000
# user_personas column -> the map's dimension name in persona_affinity.
RELATIONAL_MAP_COLUMNS = {
    "city": "city",
    "ecomm": "ecomm",
    "brand_affinity": "brand",
    "generic_affinity": "generic",
    "category_affinity": "category",
}


# --------------------------------------------------------------------------- thresholds


def _env_rate(env: Mapping[str, str], name: str, default: float) -> float:
    text = (env.get(name) or "").strip()
    if not text:
        return default
    try:
        value = float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError as error:
        raise ValueError(f"{name}: {text!r} is not a rate (a number between 0 and 1, or a percentage)") from error
    if not 0 <= value <= 1:
        raise ValueError(f"{name}: {text!r} is not a rate between 0 and 1 (0% and 100%)")
    return value


def _env_count(env: Mapping[str, str], name: str, default: int) -> int:
    text = (env.get(name) or "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError as error:
        raise ValueError(f"{name}: {text!r} is not a whole number") from error
    if value < 0:
        raise ValueError(f"{name}: {text!r} must be ≥ 0")
    return value


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds of the asset checks, from ``PERSONA_*`` variables (read when a check runs).

    * ``PERSONA_MAX_REJECT_RATE`` (default 0.05): rejected rows / rows read of a file's last import.
    * ``PERSONA_MAX_UNKNOWN_PINCODE_RATE`` (default 0.20): product events whose pincode the
      directory does not know / product events that carry a pincode.
    * ``PERSONA_CHECK_MIN_ROWS`` (default 1000): fewer rows than this and the two rates are
      reported but not judged.

    Rates are fractions (``0.05``) or percentages (``5%``); the check passes at exactly the threshold.
    """

    max_reject_rate: float = 0.05
    max_unknown_pincode_rate: float = 0.20
    min_rows: int = 1000
    # How far from 1 a normalised map's sum may be (floating-point rounding of the division).
    map_sum_tolerance: float = 1e-9

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "CheckSettings":
        env = os.environ if environ is None else environ
        return cls(
            max_reject_rate=_env_rate(env, "PERSONA_MAX_REJECT_RATE", cls.max_reject_rate),
            max_unknown_pincode_rate=_env_rate(env, "PERSONA_MAX_UNKNOWN_PINCODE_RATE", cls.max_unknown_pincode_rate),
            min_rows=_env_count(env, "PERSONA_CHECK_MIN_ROWS", cls.min_rows),
        )


def _report_failure(context: AssetCheckExecutionContext, result: AssetCheckResult) -> AssetCheckResult:
    """Log a failed check's description (the command line prints warnings; Dagster's error names only the check)."""
    if not result.passed:
        spec = context.check_specs[0]
        log = context.log.error if result.severity == AssetCheckSeverity.ERROR else context.log.warning
        log(f"asset check {spec.asset_key.to_user_string()}:{spec.name} failed: {result.description}")
    return result


def _rate(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _judge_rate(count: int, total: int, limit: float, min_rows: int, total_label: str) -> tuple[float, bool, bool, str]:
    """``count / total`` against ``limit``: (rate, judged, passed, verdict text). Not judged below ``min_rows``."""
    rate = _rate(count, total)
    judged = total >= min_rows
    passed = not judged or rate <= limit
    if not judged:
        verdict = f"not judged: {total:,} {total_label} < PERSONA_CHECK_MIN_ROWS = {min_rows:,}"
    else:
        verdict = f"{'≤' if passed else '>'} the {limit:.2%} allowed"
    return rate, judged, passed, verdict


# --------------------------------------------------------------------------- reject rate


# (asset, file of the import it publishes)
REJECT_RATE_TARGETS = (
    ("raw_visits", "visits.csv"),
    ("raw_checkouts", "checkouts.csv"),
    ("raw_searches", "searches.csv"),
    ("product_catalog", "products.csv"),
    ("category_hierarchy", "categories.csv"),
)


def build_reject_rate_check(asset_name: str, file_name: str) -> AssetChecksDefinition:
    @asset_check(
        asset=asset_name,
        name="reject_rate",
        blocking=True,
        description=(
            f"Rejected rows / rows read of {file_name} in its last import ≤ PERSONA_MAX_REJECT_RATE (default 5%). "
            "Blocking, ERROR: a flood of rejects means a broken feed, so nothing downstream is built on it: "
            "the run fails, and the rebuild that follows a successful ingestion does not start (the good rows "
            "are published and the rejects kept in import_rejects). Not judged below PERSONA_CHECK_MIN_ROWS "
            "rows read."
        ),
    )
    def reject_rate(context: AssetCheckExecutionContext, relational_store: RelationalStore) -> AssetCheckResult:
        settings = CheckSettings.from_env()
        found = latest_import_file_summary(relational_store.engine, file_name)
        if found is None:
            return AssetCheckResult(
                passed=True,
                description=f"no import has contained {file_name} yet",
                metadata={"file": file_name},
            )
        import_id, summary = found
        rejected_by_reason = {str(k): int(v) for k, v in dict(summary.get("rejected", {})).items()}
        rows_read = int(summary.get("rows_read", 0))
        rejected = sum(rejected_by_reason.values())
        rate, judged, passed, verdict = _judge_rate(
            rejected, rows_read, settings.max_reject_rate, settings.min_rows, "rows read"
        )
        description = (
            f"{file_name} in import {import_id}: {rejected:,} of {rows_read:,} rows rejected ({rate:.2%}), {verdict}"
        )
        return _report_failure(
            context,
            AssetCheckResult(
                passed=passed,
                severity=AssetCheckSeverity.ERROR,
                description=description,
                metadata={
                    "file": file_name,
                    "import_id": import_id,
                    "rows_read": rows_read,
                    "rejected": rejected,
                    "reject_rate": round(rate, 6),
                    "max_reject_rate": settings.max_reject_rate,
                    "judged": judged,
                    "min_rows": settings.min_rows,
                    "rejected_by_reason": MetadataValue.json(rejected_by_reason),
                },
            ),
        )

    return reject_rate


reject_rate_checks = [build_reject_rate_check(asset_name, file_name) for asset_name, file_name in REJECT_RATE_TARGETS]


# --------------------------------------------------------------------------- unknown pincodes

UNKNOWN_PINCODE_SQL = """
    WITH product_events AS (
        SELECT pincode FROM visits UNION ALL SELECT pincode FROM checkouts
    ),
    classified AS (
        SELECT e.pincode,
               e.pincode IS NULL OR trim(e.pincode) = '' AS missing,
               t.pincode IS NULL AS unknown
        FROM product_events e LEFT JOIN tiers t ON t.pincode = e.pincode
    )
    SELECT COUNT(*) AS product_events,
           COUNT(*) FILTER (WHERE missing) AS missing_pincode_events,
           COUNT(*) FILTER (WHERE NOT missing) AS events_with_pincode,
           COUNT(*) FILTER (WHERE NOT missing AND unknown) AS unknown_pincode_events
    FROM classified
"""

TOP_UNKNOWN_PINCODES_SQL = """
    SELECT e.pincode, COUNT(*) AS events
    FROM (SELECT pincode FROM visits UNION ALL SELECT pincode FROM checkouts) e
    WHERE e.pincode IS NOT NULL AND trim(e.pincode) <> ''
      AND NOT EXISTS (SELECT 1 FROM tiers t WHERE t.pincode = e.pincode)
    GROUP BY e.pincode ORDER BY events DESC, e.pincode LIMIT $limit
"""


@asset_check(
    asset="user_raw_affinities",
    name="unknown_pincode_rate",
    blocking=True,
    description=(
        "Product events (visits + checkouts) whose pincode the India Post directory (pincode_tiers) does not "
        "know, over product events that carry a pincode, ≤ PERSONA_MAX_UNKNOWN_PINCODE_RATE (default 20%). "
        "An empty pincode is missing, not unknown (reported, not counted). Blocking, ERROR: a flood of "
        "unknown pincodes means a broken feed (e.g. `560001.0`), and personas built on it would lose their "
        "city tiers, so vocabulary, personas and index are not rebuilt in that run. Not judged below "
        "PERSONA_CHECK_MIN_ROWS events with a pincode."
    ),
)
def unknown_pincode_rate(
    context: AssetCheckExecutionContext, event_store: EventStoreResource, compute: ComputeResource
) -> AssetCheckResult:
    settings = CheckSettings.from_env()
    con = compute.connect()
    affinities.register_events(con, event_store.store)
    con.register("tiers_df", load_pincode_tiers(event_store)[["pincode"]])
    con.execute("CREATE TABLE tiers AS SELECT DISTINCT pincode FROM tiers_df")
    row = con.execute(UNKNOWN_PINCODE_SQL).fetchall()[0]
    product_events, missing, with_pincode, unknown = (int(v) for v in row)
    top = con.execute(TOP_UNKNOWN_PINCODES_SQL, {"limit": SAMPLE_SIZE}).fetchall()
    rate, judged, passed, verdict = _judge_rate(
        unknown, with_pincode, settings.max_unknown_pincode_rate, settings.min_rows, "events with a pincode"
    )
    description = (
        f"{unknown:,} of {with_pincode:,} product events with a pincode have one the directory does not know "
        f"({rate:.2%}), {verdict}; {missing:,} events have no pincode"
    )
    return _report_failure(
        context,
        AssetCheckResult(
            passed=passed,
            severity=AssetCheckSeverity.ERROR,
            description=description,
            metadata={
                "product_events": product_events,
                "events_with_pincode": with_pincode,
                "unknown_pincode_events": unknown,
                "missing_pincode_events": missing,
                "unknown_pincode_rate": round(rate, 6),
                "max_unknown_pincode_rate": settings.max_unknown_pincode_rate,
                "judged": judged,
                "min_rows": settings.min_rows,
                "top_unknown_pincodes": MetadataValue.json({str(p): int(n) for p, n in top}),
            },
        ),
    )


# --------------------------------------------------------------------------- maps sum to 1


# A map is bad when its values do not sum to 1 (within $tol) or one of them is not a finite number in
# (0, 1]; a map with no keys is allowed. Both sources land their bad maps, and only those, in ``bad_maps``.
def _bad_value(v: str) -> str:
    return f"({v} IS NULL OR NOT isfinite({v}) OR {v} <= 0 OR {v} > 1 + $tol)"


IS_BAD_MAP = "(bad_values > 0 OR total IS NULL OR NOT isfinite(total) OR abs(total - 1) > $tol)"

PARQUET_MAPS_SQL = f"""
    CREATE OR REPLACE TEMP TABLE parquet_maps AS
    SELECT ext_id, dimension, SUM(value) AS total, COUNT(*) AS keys,
           COUNT(*) FILTER (WHERE {_bad_value("value")}) AS bad_values
    FROM read_parquet($path) GROUP BY ext_id, dimension
"""

WORST_MAPS_SQL = """
    SELECT source, ext_id, dimension, total, keys, bad_values FROM bad_maps
    ORDER BY (total IS NULL OR NOT isfinite(total)) DESC, abs(total - 1) DESC, bad_values DESC, ext_id, dimension
    LIMIT $limit
"""


def _judge_json_map(text: str | None, tolerance: float) -> tuple[int, float | None, int] | None:
    """(keys, sum, bad values) of one JSON map, or None when the text is not a JSON object.

    A value that is not a finite number in (0, 1 + tolerance] is a bad value (JSON true/false count as 1/0,
    as DuckDB's cast to DOUBLE reads them). The common case, a good map, costs three C-level passes.
    """
    try:
        parsed = orjson.loads(text) if text is not None else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    values = parsed.values()
    if not values:
        return 0, 0.0, 0
    try:
        total, low, high = math.fsum(values), min(values), max(values)
    except TypeError:  # a value that is not a number: count the bad ones one by one
        numbers = [v for v in values if isinstance(v, int | float)]
        bad = len(values) - len(numbers) + sum(1 for v in numbers if not 0 < v <= 1 + tolerance)
        return len(values), None, bad
    if low > 0 and high <= 1 + tolerance:  # NaN fails these comparisons, so it takes the slow count below
        return len(values), total, 0
    return len(values), total, sum(1 for v in values if not 0 < v <= 1 + tolerance)


def _is_bad_map(keys: int, total: float | None, bad: int, tolerance: float) -> bool:
    return keys > 0 and (bad > 0 or total is None or not math.isfinite(total) or abs(total - 1) > tolerance)


def _relational_maps(con: duckdb.DuckDBPyConnection, engine: sa.engine.Engine, tolerance: float) -> tuple[int, int]:
    """Read ``user_personas`` a chunk at a time (memory stays flat) and judge every JSON map; bad maps land
    in DuckDB's ``bad_maps``, text that is not a JSON object in ``bad_json``.

    Judged in Python with orjson: several times faster than casting each text to a DuckDB MAP, and a
    million personas hold five million maps. Returns (personas read, non-empty maps
    checked).
    """
    table = relational.user_personas
    columns = ["ext_id", *RELATIONAL_MAP_COLUMNS]
    dimensions = list(RELATIONAL_MAP_COLUMNS.values())
    personas = checked = 0
    bad_maps: list[tuple] = []
    bad_json: list[tuple] = []
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(sa.select(*(table.c[c] for c in columns)))
        for rows in result.partitions(RELATIONAL_CHUNK_ROWS):
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
            bad_maps, bad_json = [], []
    return personas, checked


@asset_check(
    asset="user_personas",
    name="maps_sum_to_one",
    blocking=True,
    description=(
        "Every normalised map (city, ecomm, brand, generic, category) of every persona sums to 1 within 1e-9, "
        "with every value a finite number in (0, 1]; an empty map is allowed. Checked on both copies the "
        "asset writes: work/persona_affinity.parquet (what persona_index publishes) and the relational "
        "user_personas JSON (what export and queries read). Blocking, ERROR: a bad map never reaches the "
        "search index (persona_index is skipped, the live build and the hasChanged = 2 flags stay)."
    ),
)
def maps_sum_to_one(
    context: AssetCheckExecutionContext,
    event_store: EventStoreResource,
    relational_store: RelationalStore,
    compute: ComputeResource,
) -> AssetCheckResult:
    tolerance = CheckSettings.from_env().map_sum_tolerance
    path = event_store.layout.work_dir / "persona_affinity.parquet"
    if not path.exists():
        return _report_failure(
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
    con.execute(PARQUET_MAPS_SQL, {"path": str(path), "tol": tolerance})
    con.execute(
        "INSERT INTO bad_maps SELECT 'parquet', ext_id, dimension, total, keys, bad_values FROM parquet_maps "
        f"WHERE {IS_BAD_MAP}",
        {"tol": tolerance},
    )
    checked_parquet = int(con.execute("SELECT COUNT(*) FROM parquet_maps").fetchall()[0][0])
    personas, checked_relational = _relational_maps(con, relational_store.engine, tolerance)
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
    passed = not offending and not bad_json
    if passed:
        description = (
            f"every map sums to 1 (±{tolerance:g}): {checked_parquet:,} non-empty maps in the Parquet hand-off, "
            f"{checked_relational:,} in user_personas ({personas:,} personas)"
        )
    else:
        first = worst[0] if worst else bad_json_sample[0]
        description = (
            f"{offending.get('parquet', 0):,} map(s) in work/persona_affinity.parquet and "
            f"{offending.get('relational', 0) + bad_json:,} in user_personas do not sum to 1 (±{tolerance:g}) "
            f"or hold a value outside (0, 1]; first: {first}"
        )
    return _report_failure(
        context,
        AssetCheckResult(
            passed=passed,
            severity=AssetCheckSeverity.ERROR,
            description=description,
            metadata={
                "personas": personas,
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


# --------------------------------------------------------------------------- the index


def _latest_index_refusals(context: AssetCheckExecutionContext) -> tuple[int, dict[str, str]]:
    """(count, sample ext_id -> error) of the documents the last publish of persona_index refused.

    Read from that materialisation's metadata (``failed_documents``, ``failed_sample``); (0, {}) when
    there is none.
    """
    event = context.instance.get_latest_materialization_event(AssetKey("persona_index"))
    materialization = event.asset_materialization if event else None
    if materialization is None:
        return 0, {}
    metadata = materialization.metadata
    count = metadata.get("failed_documents")
    sample = metadata.get("failed_sample")
    refused = int(count.value) if count is not None and isinstance(count.value, int | float) else 0
    refused_sample = dict(sample.value) if sample is not None and isinstance(sample.value, dict) else {}
    return refused, {str(k): str(v) for k, v in refused_sample.items()}


def _count(engine: sa.engine.Engine, select: sa.Select) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select).scalar_one())


@asset_check(
    asset="persona_index",
    name="document_count_matches_personas",
    description=(
        "The live build's document count equals the persona count (rows of user_personas) minus the documents "
        "the backend refused in that publish (persona_index's `failed_documents`; those users stay at "
        "hasChanged = 2 and are watched by no_user_stuck_at_calculated). Not blocking (nothing is downstream, "
        "and the build is already live); ERROR: a mismatch means personas were lost or stale ones kept."
    ),
)
def document_count_matches_personas(
    context: AssetCheckExecutionContext, relational_store: RelationalStore, search_index: SearchIndexResource
) -> AssetCheckResult:
    documents = search_index.backend().document_count()
    personas = _count(relational_store.engine, sa.select(sa.func.count()).select_from(relational.user_personas))
    refused, refused_sample = _latest_index_refusals(context)
    expected = personas - refused
    passed = documents == expected
    description = (
        f"{documents:,} documents in the live build, {personas:,} personas"
        + (f" of which {refused:,} refused by the backend" if refused else "")
        + ("" if passed else f": expected {expected:,} ({documents - expected:+,})")
    )
    return _report_failure(
        context,
        AssetCheckResult(
            passed=passed,
            severity=AssetCheckSeverity.ERROR,
            description=description,
            metadata={
                "documents": documents,
                "personas": personas,
                "refused_by_backend": refused,
                "expected_documents": expected,
                "difference": documents - expected,
                "refused_sample": MetadataValue.json(refused_sample),
            },
        ),
    )


@asset_check(
    asset="persona_index",
    name="no_user_stuck_at_calculated",
    description=(
        "After the index is published no user is left at hasChanged = 2 (calculated, not searchable). "
        "Users whose document the backend refused legitimately stay at 2 until a later rebuild indexes them: "
        "if every stuck user is one of those, the check fails with WARN; any other stuck user means a lost "
        "flag transition: ERROR. Not blocking (nothing is downstream of the index)."
    ),
)
def no_user_stuck_at_calculated(
    context: AssetCheckExecutionContext, relational_store: RelationalStore
) -> AssetCheckResult:
    table = relational.user_persona
    engine = relational_store.engine
    at_2 = table.c.hasChanged == CALCULATED
    # Users a refresh run holds (user_claims) pass through 2 on their way to 0: in flight, not stuck.
    claims = getattr(relational, "user_claims", None)
    in_flight = (
        sa.select(sa.literal(1)).where(claims.c.extId == table.c.extId).exists() if claims is not None else sa.false()
    )
    stuck_where = sa.and_(at_2, sa.not_(in_flight))

    def ids(*where: sa.ColumnElement) -> list[str]:
        select = sa.select(table.c.extId).where(*where).order_by(table.c.extId).limit(SAMPLE_SIZE)
        with engine.connect() as conn:
            return [str(ext_id) for (ext_id,) in conn.execute(select)]

    stuck = _count(engine, sa.select(sa.func.count()).select_from(table).where(stuck_where))
    in_flight_count = _count(engine, sa.select(sa.func.count()).select_from(table).where(at_2, in_flight))
    sample = ids(stuck_where) if stuck else []
    refused, refused_sample = _latest_index_refusals(context)
    if not stuck:
        unexplained: list[str] = []
    elif refused and len(refused_sample) >= refused:
        # Every refused id is known: each stuck user must be one of them (a refused user may be back at 1).
        unexplained = ids(stuck_where, table.c.extId.not_in(list(refused_sample)))
    else:
        # Only a sample of the refused ids is kept: judge by count.
        unexplained = [] if stuck <= refused else sample
    passed = stuck == 0
    explained = not unexplained
    if passed:
        description = "no user is left at hasChanged = 2" + (
            f" ({in_flight_count:,} in a running refresh)" if in_flight_count else ""
        )
    elif explained:
        description = (
            f"{stuck:,} user(s) at hasChanged = 2, each refused by the search backend in the last publish "
            f"({refused:,} refused); the next refresh or rebuild retries them; e.g. {sample[:5]}"
        )
    else:
        description = (
            f"{stuck:,} user(s) stuck at hasChanged = 2, not explained by the {refused:,} document(s) the last "
            f"publish refused: a lost flag transition; e.g. {unexplained[:5]}"
        )
    return _report_failure(
        context,
        AssetCheckResult(
            passed=passed,
            severity=AssetCheckSeverity.WARN if explained else AssetCheckSeverity.ERROR,
            description=description,
            metadata={
                "stuck_users": stuck,
                "in_running_refresh": in_flight_count,
                "refused_by_backend": refused,
                "stuck_sample": MetadataValue.json(sample),
                "unexplained_sample": MetadataValue.json(unexplained),
            },
        ),
    )


asset_checks: list[AssetChecksDefinition] = [
    *reject_rate_checks,
    unknown_pincode_rate,
    maps_sum_to_one,
    document_count_matches_personas,
    no_user_stuck_at_calculated,
]
"""Every check of the project (registered with the assets in ``definitions.py``)."""
