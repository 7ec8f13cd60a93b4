"""The daily-partitioned raw event assets: publish landed days and flag the users they touch."""

import time
import warnings

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    BetaWarning,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from persona_assets.ingest.importer import latest_import_rejects
from persona_assets.partitions import RAW_DAY_FRESHNESS, daily_events
from persona_assets.resources import EventStoreResource, RelationalStore
from persona_assets.stores.changes import flag_users_changed
from persona_assets.stores.events import EVENT_KINDS, EventKind

# Single-run backfills of a day range are what we want here; the parameter is marked beta.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=BetaWarning)


class RawEventsConfig(Config):
    """How a run treats a day with no landed file."""

    # False (the default): a day whose landed file is missing while a published version exists stops the
    # run before anything is published (a late feed must not replace yesterday's events with nothing).
    # True: such a day is published empty, its published events removed, each day logged as a warning.
    publish_missing_as_empty: bool = False


class LandedDayMissing(ValueError):
    """Days to publish whose landed file is missing while a published version would be deleted."""


DAY_WAS_LANDED = "every_day_was_landed"


def build_raw_event_asset(kind: EventKind) -> AssetsDefinition:
    """One partitioned asset per event kind; a run may cover a range of days (single-run backfills)."""
    name = f"raw_{kind.name}"

    @asset(
        name=name,
        partitions_def=daily_events,
        backfill_policy=BackfillPolicy.single_run(),
        group_name="events",
        kinds={"parquet"},
        freshness_policy=RAW_DAY_FRESHNESS,
        description=f"{kind.name.capitalize()} of each UTC day, from {kind.csv_file} imports; "
        "materialising a day replaces it and flags its users (hasChanged = 1).",
        check_specs=[
            AssetCheckSpec(
                DAY_WAS_LANDED,
                asset=name,
                description="Every day of the run had a landed file (WARN: a day never landed, e.g. a late feed, "
                "published nothing).",
            )
        ],
    )
    def raw_events(
        context: AssetExecutionContext,
        config: RawEventsConfig,
        event_store: EventStoreResource,
        relational_store: RelationalStore,
    ) -> MaterializeResult:
        started = time.perf_counter()
        store = event_store.store
        touched: set[str] = set()
        rows = 0
        days = context.partition_keys
        would_delete, never_landed = store.days_not_landed(kind.name, days)
        if would_delete and not config.publish_missing_as_empty:
            shown = ", ".join(str(store.landing_path(kind.name, day)) for day in would_delete[:5])
            raise LandedDayMissing(
                f"{name}: {len(would_delete)} day(s) to publish have no landed file but a published version "
                f"({would_delete[0]} … {would_delete[-1]}; missing: {shown}); nothing was published and the "
                "published days are kept. Land them with `persona import`, or publish them empty on purpose with "
                "`persona backfill --publish-missing-as-empty FIRST LAST` (run config publish_missing_as_empty)."
            )
        for day in would_delete:
            context.log.warning(f"{name} {day}: no landed file; publishing it empty as asked (its events go)")
        for day in days:
            day_rows, users = store.publish(kind.name, day)
            rows += day_rows
            touched |= users
        flagged = flag_users_changed(relational_store.engine, touched)
        context.log.info(f"raw_{kind.name}: published {len(days)} day(s), {rows:,} events, flagged {flagged:,} users")
        rejected = latest_import_rejects(relational_store.engine, kind.csv_file)
        not_landed = sorted(would_delete + never_landed)
        landed_check = AssetCheckResult(
            check_name=DAY_WAS_LANDED,
            passed=not not_landed,
            severity=AssetCheckSeverity.WARN,
            metadata={"days_not_landed": len(not_landed), "first_days": MetadataValue.json(not_landed[:20])},
            description=None if not not_landed else f"{len(not_landed)} day(s) had no landed {kind.csv_file} rows",
        )
        return MaterializeResult(
            check_results=[landed_check],
            metadata={
                "days": len(days),
                "rejected_in_last_import": sum(rejected.values()),
                "rejected_by_reason": MetadataValue.json(rejected),
                "dagster/row_count": rows,
                "events": rows,
                "users_flagged": flagged,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    return raw_events


raw_event_assets = [build_raw_event_asset(kind) for kind in EVENT_KINDS.values()]
