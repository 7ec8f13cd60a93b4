"""The daily-partitioned raw event assets: publish landed days and flag the users they touch."""

import time
import warnings

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    BetaWarning,
    MaterializeResult,
    MetadataValue,
    asset,
)

from persona_assets.ingest.importer import latest_import_rejects
from persona_assets.partitions import daily_events
from persona_assets.resources import EventStoreResource, RelationalStore
from persona_assets.stores.changes import flag_users_changed
from persona_assets.stores.events import EVENT_KINDS, EventKind

# Single-run backfills of a day range are what we want here; the parameter is marked beta.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=BetaWarning)


def build_raw_event_asset(kind: EventKind) -> AssetsDefinition:
    """One partitioned asset per event kind; a run may cover a range of days (single-run backfills)."""

    @asset(
        name=f"raw_{kind.name}",
        partitions_def=daily_events,
        backfill_policy=BackfillPolicy.single_run(),
        group_name="events",
        kinds={"parquet"},
        description=f"{kind.name.capitalize()} of each UTC day, from {kind.csv_file} imports; "
        "materialising a day replaces it and flags its users (hasChanged = 1).",
    )
    def raw_events(
        context: AssetExecutionContext, event_store: EventStoreResource, relational_store: RelationalStore
    ) -> MaterializeResult:
        started = time.perf_counter()
        store = event_store.store
        touched: set[str] = set()
        rows = 0
        days = context.partition_keys
        for day in days:
            day_rows, users = store.publish(kind.name, day)
            rows += day_rows
            touched |= users
        flagged = flag_users_changed(relational_store.engine, touched)
        context.log.info(f"raw_{kind.name}: published {len(days)} day(s), {rows:,} events, flagged {flagged:,} users")
        rejected = latest_import_rejects(relational_store.engine, kind.csv_file)
        return MaterializeResult(
            metadata={
                "days": len(days),
                "rejected_in_last_import": sum(rejected.values()),
                "rejected_by_reason": MetadataValue.json(rejected),
                "events": rows,
                "users_flagged": flagged,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )

    return raw_events


raw_event_assets = [build_raw_event_asset(kind) for kind in EVENT_KINDS.values()]
