"""Checks of what an import hands over: rejected rows, unknown pincodes."""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from persona_assets.assets.reference import load_pincode_tiers
from persona_assets.builds import upstream_build
from persona_assets.checks._common import SAMPLE_SIZE, judge_rate, report_failure
from persona_assets.compute import affinities
from persona_assets.ingest.importer import latest_import_file_summary
from persona_assets.resources import ComputeResource, EventStoreResource, RelationalStore
from persona_assets.settings import PersonaSettings

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
        settings = PersonaSettings.from_env().checks
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
        rate, judged, passed, verdict = judge_rate(
            rejected, rows_read, settings.max_reject_rate, settings.min_rows, "rows read"
        )
        description = (
            f"{file_name} in import {import_id}: {rejected:,} of {rows_read:,} rows rejected ({rate:.2%}), {verdict}"
        )
        return report_failure(
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

# Over the build's ``pincode_events`` (``affinities.create_pincode_events``: product events per pincode as
# written), against ``tiers`` (the directory's pincodes).
UNKNOWN_PINCODE_SQL = """
    WITH classified AS (
        SELECT e.events,
               e.pincode IS NULL OR trim(e.pincode) = '' AS missing,
               t.pincode IS NULL AS unknown
        FROM pincode_events e LEFT JOIN tiers t ON t.pincode = e.pincode
    )
    SELECT COALESCE(SUM(events), 0) AS product_events,
           COALESCE(SUM(events) FILTER (WHERE missing), 0) AS missing_pincode_events,
           COALESCE(SUM(events) FILTER (WHERE NOT missing), 0) AS events_with_pincode,
           COALESCE(SUM(events) FILTER (WHERE NOT missing AND unknown), 0) AS unknown_pincode_events
    FROM classified
"""

TOP_UNKNOWN_PINCODES_SQL = """
    SELECT e.pincode, e.events
    FROM pincode_events e
    WHERE e.pincode IS NOT NULL AND trim(e.pincode) <> ''
      AND NOT EXISTS (SELECT 1 FROM tiers t WHERE t.pincode = e.pincode)
    ORDER BY e.events DESC, e.pincode LIMIT $limit
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
    settings = PersonaSettings.from_env().checks
    con = compute.connect()
    # The events as the build read them, counted per pincode in its one pass (no second scan of every day).
    build = upstream_build(context.instance, context.run.run_id, "user_raw_affinities")
    affinities.load_raw_affinities(con, event_store.layout.build_dir(build))
    con.register("tiers_df", load_pincode_tiers(event_store)[["pincode"]])
    con.execute("CREATE TABLE tiers AS SELECT DISTINCT pincode FROM tiers_df")
    row = con.execute(UNKNOWN_PINCODE_SQL).fetchall()[0]
    product_events, missing, with_pincode, unknown = (int(v) for v in row)
    top = con.execute(TOP_UNKNOWN_PINCODES_SQL, {"limit": SAMPLE_SIZE}).fetchall()
    rate, judged, passed, verdict = judge_rate(
        unknown, with_pincode, settings.max_unknown_pincode_rate, settings.min_rows, "events with a pincode"
    )
    description = (
        f"{unknown:,} of {with_pincode:,} product events with a pincode have one the directory does not know "
        f"({rate:.2%}), {verdict}; {missing:,} events have no pincode"
    )
    return report_failure(
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
