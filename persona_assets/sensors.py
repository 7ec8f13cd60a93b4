"""Automation: the refresh sensor on ``hasChanged``, the daily schedule, and the rebuild after ingestion."""

import uuid
from datetime import UTC, timedelta

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    AssetRecordsFilter,
    Config,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    OpExecutionContext,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    in_process_executor,
    job,
    op,
    schedule,
    sensor,
)

from persona_assets.assets.audiences import membership_metadata, sync_segment_partitions
from persona_assets.automation import rebuild_after_ingest_sensor
from persona_assets.checks import asset_checks
from persona_assets.jobs import COMPUTE_POOL, REBUILD_TAG, ingest_events_job
from persona_assets.refresh import refresh_users
from persona_assets.resources import ComputeResource, EventStoreResource, RelationalStore, SearchIndexResource
from persona_assets.run_owners import fail_abandoned_runs
from persona_assets.settings import PersonaSettings
from persona_assets.stores.audience_tables import stamp
from persona_assets.stores.changes import claim_users, claimed_users, release_claim
from persona_assets.stores.membership import refresh_membership
from persona_assets.stores.refusals import clear_refusals, record_refusals
from persona_assets.stores.segments import SegmentUnreadable, list_segments

PERSONA_INDEX_KEY = AssetKey("persona_index")
SEGMENT_MEMBERS_KEY = AssetKey("segment_members")
# Every blocking check of the definitions: what one refuses must not reach the index by a refresh either.
BLOCKING_CHECK_KEYS = sorted(
    (spec.key for checks in asset_checks for spec in checks.check_specs if spec.blocking),
    key=lambda key: key.to_user_string(),
)


# Read when the code location loads: the sensor's interval is fixed at definition time.
# Read once at import for the automation's knobs (interval, statuses, the alert webhook).
AUTOMATION_SETTINGS = PersonaSettings.from_env()
REFRESH = AUTOMATION_SETTINGS.refresh
# PERSONA_AUTOMATION: whether a new instance starts the schedule and the sensors (the UI's switch wins after).
SENSOR_STATUS = DefaultSensorStatus.RUNNING if AUTOMATION_SETTINGS.automation else DefaultSensorStatus.STOPPED
SCHEDULE_STATUS = DefaultScheduleStatus.RUNNING if AUTOMATION_SETTINGS.automation else DefaultScheduleStatus.STOPPED


class RefreshConfig(Config):
    """Which claim (set of users) this run refreshes."""

    claim: str


@op(out={}, pool=COMPUTE_POOL)
def refresh_claimed_users(
    context: OpExecutionContext,
    config: RefreshConfig,
    relational_store: RelationalStore,
    event_store: EventStoreResource,
    search_index: SearchIndexResource,
    compute: ComputeResource,
):
    """Recompute the claimed users and upsert them into the live index; the claim is released either way."""
    engine = relational_store.engine
    ext_ids = claimed_users(engine, config.claim)
    try:
        report = refresh_users(ext_ids, engine, event_store, search_index.backend(), compute.limits)
        # Refused documents back off (then wait in the dead letter); the others are indexed at last.
        retry = PersonaSettings.from_env().retry
        dead = record_refusals(engine, report.failed, retry)
        clear_refusals(engine, [ext_id for ext_id in ext_ids if ext_id not in report.failed])
    finally:
        release_claim(engine, config.claim)
    if dead:
        context.log.warning(f"{dead:,} user(s) refused {retry.max_failures} times: see `persona dead-letter`")
    context.log.info(
        f"refreshed {report.users:,} users in {report.seconds:.1f}s: {report.calculated:,} 1 → 2, "
        f"{report.searchable:,} 2 → 0, {len(report.failed):,} not indexed"
    )
    yield AssetObservation(asset_key="persona_index", metadata={"refresh": config.claim, **report.as_metadata()})
    # The saved segments' members move for the refreshed users only (stores.membership.refresh_membership).
    # The users are searchable already: a saved segment that no longer reads is said, not a failed refresh.
    try:
        moved = refresh_membership(engine, ext_ids, PersonaSettings.from_env().weights)
    except SegmentUnreadable as error:
        context.log.warning(f"saved segments' members not updated: {error}")
        moved = []
    for run in moved:
        yield AssetMaterialization(
            asset_key=SEGMENT_MEMBERS_KEY,
            partition=run.segment,
            metadata={**membership_metadata(run), "refresh": config.claim},
        )


# In-process executor: one step, so no second process to start (the flag-to-searchable time is mostly start-up).
@job(
    tags={"persona/refresh": "true"},
    executor_def=in_process_executor,
    description="Recompute a batch of flagged users and upsert them (sensor).",
)
def refresh_changed_users():
    refresh_claimed_users()


def _rebuild_in_progress(context: SensorEvaluationContext) -> bool:
    """A full rebuild is queued or running: a run tagged as one (the job, the CLI) or any run that
    materialises ``persona_index`` (e.g. "Materialize all" in the UI)."""
    active = [
        DagsterRunStatus.QUEUED,
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
    ]
    records = context.instance.get_run_records(RunsFilter(statuses=active), limit=200)
    return any(
        REBUILD_TAG.items() <= record.dagster_run.tags.items()
        or PERSONA_INDEX_KEY in (record.dagster_run.asset_selection or ())
        for record in records
    )


def refused_by_blocking_checks(instance: DagsterInstance, keys: list[AssetCheckKey] = BLOCKING_CHECK_KEYS) -> list[str]:
    """The blocking checks whose latest evaluation failed at ERROR ("asset:check").

    A refresh runs no checks, so while one of these stands, the data it refused (a flood of unknown
    pincodes, a bad map, an import full of rejects) would reach the live index through the hasChanged
    sensor although the rebuild stopped in front of it. The sensor waits until a later evaluation of the
    same check passes: the data fixed and re-imported, or the threshold deliberately raised.
    """
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    refused = []
    for key, record in latest.items():
        event = record.event.dagster_event if record.event else None
        evaluation = event.event_specific_data if event else None  # only planned: a run still going, or dead
        if (
            isinstance(evaluation, AssetCheckEvaluation)
            and not evaluation.passed
            and evaluation.severity == AssetCheckSeverity.ERROR
        ):
            refused.append(key.to_user_string())
    return sorted(refused)


@sensor(
    job=refresh_changed_users,
    minimum_interval_seconds=REFRESH.interval_seconds,
    default_status=SENSOR_STATUS,
    description="Users with hasChanged = 1 (or left at 2) → bounded batches, each claimed by one refresh run.",
)
def changed_users_sensor(
    context: SensorEvaluationContext, relational_store: RelationalStore, search_index: SearchIndexResource
):
    for run_id in fail_abandoned_runs(context.instance):  # a killed command's rebuild would block us for ever
        context.log.warning(f"run {run_id} was left running by a command whose process is gone: marked failed")
    if _rebuild_in_progress(context):
        return SkipReason("a full rebuild is running; it recomputes everyone")
    refused = refused_by_blocking_checks(context.instance)
    if refused:
        return SkipReason(
            f"the latest evaluation of blocking check(s) {', '.join(refused)} failed: no refresh publishes "
            "what they refused; fix the data (or the threshold) and rebuild"
        )
    try:
        if search_index.backend().document_count() == 0:
            return SkipReason("no index yet: materialise the full rebuild first")
    except FileNotFoundError:
        return SkipReason("no index yet: materialise the full rebuild first")
    requests = []
    for _ in range(REFRESH.max_runs_per_tick):
        claim = f"refresh-{uuid.uuid4().hex[:16]}"
        ids = claim_users(relational_store.engine, claim, REFRESH.batch_size, REFRESH.claim_ttl_seconds)
        if not ids:
            break
        requests.append(
            RunRequest(
                run_key=claim,
                run_config={"ops": {"refresh_claimed_users": {"config": {"claim": claim}}}},
                tags={"persona/claim": claim, "persona/users": str(len(ids))},
            )
        )
    return requests or SkipReason("no flagged users")


@schedule(
    job=ingest_events_job,
    cron_schedule="0 6 * * *",
    execution_timezone="Asia/Kolkata",
    default_status=SCHEDULE_STATUS,
    description="06:00 IST (00:30 UTC): publish yesterday's UTC day; the rebuild follows when it succeeds.",
)
def daily_ingest_schedule(context: ScheduleEvaluationContext):
    day = (context.scheduled_execution_time.astimezone(UTC).date() - timedelta(days=1)).isoformat()
    return RunRequest(run_key=f"ingest-{day}", partition_key=day)


def _latest_materialization(instance: DagsterInstance, key: AssetKey, partition: str | None = None):
    """The newest materialisation record of ``key`` (of one partition), or None."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=None if partition is None else [partition]), limit=1
    ).records
    return records[0] if records else None


@sensor(
    asset_selection=[SEGMENT_MEMBERS_KEY],
    minimum_interval_seconds=30,
    default_status=SENSOR_STATUS,
    description="Keeps one segment_members partition per saved segment; requests the members of each segment "
    "not computed since the last rebuild's persona_index, or since its definition was saved.",
)
def segment_membership_sensor(context: SensorEvaluationContext, relational_store: RelationalStore):
    # A sensor rather than declarative automation: the partitions follow rows of the relational store (saved
    # segments), which no materialisation records, and a new or replaced definition needs its members too.
    saved = {stored.segment.name: stored for stored in list_segments(relational_store.engine)}
    added, deleted = sync_segment_partitions(context.instance, saved)
    if added or deleted:
        context.log.info(f"segment partitions added: {added or 'none'}; deleted: {deleted or 'none'}")
    if _rebuild_in_progress(context):
        return SkipReason("a full rebuild is running; the members follow it")
    index_record = _latest_materialization(context.instance, PERSONA_INDEX_KEY)
    if index_record is None:
        return SkipReason("no index yet: materialise the full rebuild first")
    index = index_record.storage_id
    requests = []
    for name, stored in sorted(saved.items()):
        latest = _latest_materialization(context.instance, SEGMENT_MEMBERS_KEY, name)
        fresh = latest and latest.storage_id > index and latest.timestamp >= stored.updated_at.timestamp()
        if not fresh:
            requests.append(RunRequest(run_key=f"{name}@{index}@{stamp(stored.updated_at)}", partition_key=name))
    return SensorResult(run_requests=requests) if requests else SkipReason("every saved segment's members are current")


rebuild_after_ingest = rebuild_after_ingest_sensor(SENSOR_STATUS)
