"""The full rebuild: raw affinities → vocabulary → normalised personas → search index.

Intermediate long tables are handed from one asset to the next as Parquet files in the build's own
directory under ``PERSONA_HOME/work/builds`` (``assets.builds``); each step is one DuckDB pass over whole
tables.
"""

import time
from pathlib import Path

import duckdb
import pandas as pd
from dagster import AssetExecutionContext, Config, Failure, MaterializeResult, MetadataValue, asset

from persona_assets.assets.reference import load_pincode_tiers
from persona_assets.automation import REBUILD_AFTER_INGEST, WITH_THE_REBUILD
from persona_assets.builds import BUILD_METADATA_KEY, prune_builds, upstream_build
from persona_assets.compute import affinities, persona_store
from persona_assets.jobs import COMPUTE_POOL
from persona_assets.partitions import INDEX_FRESHNESS
from persona_assets.resources import ComputeResource, EventStoreResource, RelationalStore, SearchIndexResource
from persona_assets.settings import PersonaSettings
from persona_assets.stores import relational
from persona_assets.stores.changes import (
    CALCULATED,
    NEEDS_CALCULATION,
    SEARCHABLE,
    RebuildSnapshot,
    advance_flags,
    calculated_since_rebuild_snapshot,
    count_calculated_since_rebuild_snapshot,
    forget_in_rebuild_snapshot,
    reflag_changed_since,
    snapshot_flags_for_rebuild,
)
from persona_assets.stores.refusals import clear_refusals, record_refusals
from persona_assets.stores.search_backend import PersonaHandOff

RAW_EVENT_DEPS = ["raw_visits", "raw_checkouts", "raw_searches"]


def _work(event_store: EventStoreResource, build: str, name: str) -> Path:
    return event_store.layout.build_dir(build) / f"{name}.parquet"


def _hand_off(event_store: EventStoreResource, build: str, compute: ComputeResource) -> PersonaHandOff:
    """The files ``user_personas`` hands its personas to ``persona_index`` in (and the checks read)."""
    return PersonaHandOff.in_directory(event_store.layout.build_dir(build), compute.limits)


def _build_of(context: AssetExecutionContext, upstream: str) -> str:
    return upstream_build(context.instance, context.run.run_id, upstream)


def _connect_with_reference(
    event_store: EventStoreResource, relational_store: RelationalStore, compute: ComputeResource
) -> duckdb.DuckDBPyConnection:
    con = compute.connect()
    engine = relational_store.engine
    affinities.register_events(con, event_store.store)
    affinities.register_reference(
        con,
        relational.read_frame(engine, relational.products),
        relational.read_frame(engine, relational.categories),
        load_pincode_tiers(event_store),
    )
    return con


@asset(
    group_name="personas",
    deps=["product_catalog", "category_hierarchy", "pincode_tiers", *RAW_EVENT_DEPS],
    kinds={"duckdb", "sql"},
    pool=COMPUTE_POOL,
    code_version=affinities.COMPUTATION_VERSION,
    automation_condition=REBUILD_AFTER_INGEST,
)
def user_raw_affinities(
    context: AssetExecutionContext,
    event_store: EventStoreResource,
    relational_store: RelationalStore,
    compute: ComputeResource,
) -> MaterializeResult:
    """Weighted interaction sums per user (contract section 2), handed to ``user_personas`` (which writes them
    to the legacy ``user_persona`` columns once the personas are computed)."""
    started = time.perf_counter()
    engine = relational_store.engine
    build = context.run.run_id  # this run starts a build of its own
    pruned = prune_builds(context.instance, event_store.layout, engine, keep=[build])
    if pruned:
        context.log.info(f"removed the files and flag snapshots of {len(pruned)} earlier builds")
    # Read the flags before any event, so a user changed from here on keeps hasChanged = 1.
    snapshot_flags_for_rebuild(engine, build)
    con = _connect_with_reference(event_store, relational_store, compute)
    affinities.compute_raw_affinities(con)
    context.log.info(f"raw affinities computed in {time.perf_counter() - started:.1f}s")
    work = event_store.layout.build_dir(build)
    work.mkdir(parents=True, exist_ok=True)
    affinities.save_raw_affinities(con, work)
    stats = (
        con.execute(
            """
        SELECT
          (SELECT COUNT(*) FROM users) AS users,
          (SELECT COUNT(*) FROM raw_affinity_ids) AS affinity_rows,
          COALESCE(SUM(e.events), 0) AS product_events,
          COALESCE(SUM(e.unknown_pid_events), 0) AS unknown_pid_events,
          COALESCE(SUM(e.events) FILTER (WHERE e.pincode IS NOT NULL AND t.pincode IS NULL), 0)
            AS unknown_pincode_events,
          (SELECT COUNT(*) FROM searches) AS searches
        FROM pincode_events e
        LEFT JOIN (SELECT DISTINCT pincode FROM pincode_tiers) t ON t.pincode = e.pincode
        """
        )
        .df()
        .iloc[0]
    )
    metadata: dict = {name: int(value) for name, value in stats.items()}
    metadata["dagster/row_count"] = metadata["affinity_rows"]
    metadata[BUILD_METADATA_KEY] = build
    metadata["seconds"] = round(time.perf_counter() - started, 3)
    return MaterializeResult(metadata=metadata)


@asset(
    group_name="personas",
    deps=[user_raw_affinities],
    kinds={"duckdb", "sql"},
    pool=COMPUTE_POOL,
    code_version=affinities.COMPUTATION_VERSION,
    automation_condition=WITH_THE_REBUILD,
)
def user_activity(
    context: AssetExecutionContext,
    event_store: EventStoreResource,
    relational_store: RelationalStore,
    compute: ComputeResource,
) -> MaterializeResult:
    """Each user's products (latest visit and purchase) and search texts: the query's ``visited``,
    ``purchased`` and ``search_terms`` come from here. Read from the build of ``user_raw_affinities``, whose
    one pass over the events also keeps these (a pass of its own cost a 100k rebuild ~1.5 s)."""
    started = time.perf_counter()
    build = _build_of(context, "user_raw_affinities")
    con = compute.connect()
    affinities.load_raw_affinities(con, event_store.layout.build_dir(build))
    users = persona_store.write_activity(relational_store.engine, con)
    return MaterializeResult(
        metadata={
            BUILD_METADATA_KEY: build,
            "dagster/row_count": users,
            "users": users,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


class VocabularyConfig(Config):
    """How many brands and generic names enter the vocabulary (the legacy ``getBrandGenericName``)."""

    brand_size: int = 300
    generic_size: int = 500


@asset(
    group_name="personas",
    deps=[user_raw_affinities],
    kinds={"duckdb", "sql"},
    pool=COMPUTE_POOL,
    code_version=affinities.COMPUTATION_VERSION,
    automation_condition=WITH_THE_REBUILD,
)
def attribute_vocabulary(
    context: AssetExecutionContext,
    config: VocabularyConfig,
    event_store: EventStoreResource,
    relational_store: RelationalStore,
    compute: ComputeResource,
) -> MaterializeResult:
    """Top brands and generic names by raw affinity summed over all users (ties: name ascending)."""
    if config.brand_size < 0 or config.generic_size < 0:
        raise ValueError("attribute_vocabulary: brand_size and generic_size must be ≥ 0")
    started = time.perf_counter()
    build = _build_of(context, "user_raw_affinities")
    con = compute.connect()
    affinities.load_raw_affinities(con, event_store.layout.build_dir(build))
    vocabulary = affinities.compute_vocabulary(con, config.brand_size, config.generic_size)
    vocabulary.to_parquet(_work(event_store, build, "vocabulary"), index=False)
    relational.replace_table(relational_store.engine, relational.attribute_vocabulary, vocabulary)
    counts = vocabulary["kind"].value_counts()
    return MaterializeResult(
        metadata={
            BUILD_METADATA_KEY: build,
            "dagster/row_count": len(vocabulary),
            "brands": int(counts.get("brand", 0)),
            "generic_names": int(counts.get("generic", 0)),
            "seconds": round(time.perf_counter() - started, 3),
            "top_brands": MetadataValue.md(
                ", ".join(vocabulary.loc[vocabulary["kind"] == "brand", "name"].head(10).tolist())
            ),
        }
    )


@asset(
    group_name="personas",
    deps=[user_raw_affinities, attribute_vocabulary, "category_hierarchy"],
    kinds={"duckdb", "sql"},
    pool=COMPUTE_POOL,
    code_version=affinities.COMPUTATION_VERSION,
    automation_condition=WITH_THE_REBUILD,
)
def user_personas(
    context: AssetExecutionContext,
    event_store: EventStoreResource,
    relational_store: RelationalStore,
    compute: ComputeResource,
) -> MaterializeResult:
    """Normalised personas (contract section 3): gender label, maps kept to the vocabulary and summing to 1.

    Also each user's legacy ``user_persona`` row (raw maps, latest search texts), whose flag moves 1 → 2
    in the same write: rows of kilobytes are rewritten once, not once for the maps and again for the flag.
    """
    started = time.perf_counter()
    engine = relational_store.engine
    build = _build_of(context, "user_raw_affinities")
    vocabulary_build = _build_of(context, "attribute_vocabulary")
    if vocabulary_build != build:
        raise Failure(
            f"attribute_vocabulary was computed for build {vocabulary_build}, user_raw_affinities is at build "
            f"{build}: materialise attribute_vocabulary again first"
        )
    snapshot = RebuildSnapshot(build)
    con = compute.connect()
    affinities.load_raw_affinities(con, event_store.layout.build_dir(build))
    affinities.register_categories(con, relational.read_frame(engine, relational.categories))
    vocabulary = pd.read_parquet(_work(event_store, build, "vocabulary"))
    affinities.compute_personas(con, vocabulary)
    hand_off = _hand_off(event_store, build, compute)
    affinities.write_parquet(con, "persona_users", hand_off.users)
    affinities.write_parquet(con, "persona_affinity_ids", hand_off.affinities)
    affinities.write_parquet(con, "persona_keys", hand_off.keys)
    stored = persona_store.write_personas(engine, con, has_changed=calculated_since_rebuild_snapshot(engine, snapshot))
    # Users flagged with no event left have no row above and are calculated too (nothing to index): the
    # few still at 1 are found through the flag's index, so this no longer rewrites every row.
    advance_flags(engine, snapshot, [NEEDS_CALCULATION], CALCULATED)
    calculated = count_calculated_since_rebuild_snapshot(engine, snapshot)
    context.log.info(f"{stored:,} personas stored; {calculated:,} users calculated (hasChanged 2)")
    genders = dict(con.execute("SELECT gender, COUNT(*) FROM persona_users GROUP BY gender").fetchall())
    return MaterializeResult(
        metadata={
            BUILD_METADATA_KEY: build,
            "dagster/row_count": stored,
            "personas": stored,
            "by_gender": MetadataValue.json(genders),
            # Users at 2 unchanged since the snapshot (moved 1 → 2 by this write, or left at 2 by a refusal before):
            # the single upsert has no count of its own moves.
            "users_at_2": calculated,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


@asset(
    group_name="personas",
    deps=[user_personas],
    kinds={"parquet"},
    pool=COMPUTE_POOL,
    code_version=affinities.COMPUTATION_VERSION,
    freshness_policy=INDEX_FRESHNESS,
    automation_condition=WITH_THE_REBUILD,
)
def persona_index(
    context: AssetExecutionContext,
    event_store: EventStoreResource,
    relational_store: RelationalStore,
    search_index: SearchIndexResource,
    compute: ComputeResource,
) -> MaterializeResult:
    """A fresh segment-search index of the normalised personas, swapped in atomically.

    The backend reads the work files its own way within the compute limits (the embedded index has DuckDB
    group the postings; OpenSearch streams whole personas in batches), so memory does not grow with the
    number of users. Users the backend could not index keep hasChanged = 2 and are listed in the metadata.
    """
    started = time.perf_counter()
    engine = relational_store.engine
    build = _build_of(context, "user_personas")
    snapshot = RebuildSnapshot(build)
    backend = search_index.backend()
    hand_off = _hand_off(event_store, build, compute)
    report = backend.publish_hand_off(hand_off)
    # Users the index refused stay at 2: out of the snapshot, their flags do not advance; the refresh
    # sensor retries them with back-off (stores.refusals). Everyone else was indexed.
    forget_in_rebuild_snapshot(engine, snapshot, list(report.failed))
    record_refusals(engine, report.failed, PersonaSettings.from_env().retry)
    clear_refusals(engine, keep=list(report.failed))
    searchable = advance_flags(engine, snapshot, [CALCULATED], SEARCHABLE)
    # Another build swapped in meanwhile, or a refresh indexed users into the build just replaced: those
    # changed since this build's snapshot go back to 1.
    reflagged = reflag_changed_since(engine, snapshot)
    # Builds this swap superseded (and those of runs that died) are of no use any more.
    prune_builds(context.instance, event_store.layout, engine, keep=[build])
    context.log.info(
        f"{backend.name} build {report.build_id}: {report.document_count:,} documents; {searchable:,} users 2 → 0"
    )
    if report.failed:
        context.log.warning(f"{len(report.failed):,} personas could not be indexed; they stay at hasChanged = 2")
    return MaterializeResult(
        metadata={
            BUILD_METADATA_KEY: build,
            "backend": backend.name,
            "build_id": report.build_id,
            "dagster/row_count": report.document_count,
            "documents": report.document_count,
            "failed_documents": len(report.failed),
            "failed_sample": MetadataValue.json(dict(list(report.failed.items())[:20])),
            **report.details,
            "flags_2_to_0": searchable,
            "reflagged_changed_during_rebuild": reflagged,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
