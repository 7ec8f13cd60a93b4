"""Checks of the published index: its document count, users left at hasChanged = 2."""

import sqlalchemy as sa
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    MetadataValue,
    asset_check,
)

from persona_assets.checks._common import SAMPLE_SIZE, count_rows, report_failure
from persona_assets.resources import RelationalStore, SearchIndexResource
from persona_assets.stores import relational
from persona_assets.stores.changes import CALCULATED
from persona_assets.stores.refusals import dead_letter

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
    personas = count_rows(relational_store.engine, sa.select(sa.func.count()).select_from(relational.user_personas))
    refused, refused_sample = _latest_index_refusals(context)
    expected = personas - refused
    passed = documents == expected
    description = (
        f"{documents:,} documents in the live build, {personas:,} personas"
        + (f" of which {refused:,} refused by the backend" if refused else "")
        + ("" if passed else f": expected {expected:,} ({documents - expected:+,})")
    )
    return report_failure(
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

    stuck = count_rows(engine, sa.select(sa.func.count()).select_from(table).where(stuck_where))
    in_flight_count = count_rows(engine, sa.select(sa.func.count()).select_from(table).where(at_2, in_flight))
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
    return report_failure(
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


@asset_check(
    asset="persona_index",
    name="no_dead_lettered_users",
    description=(
        "No user waits in the dead letter: the search backend refused their document on every one of the "
        "PERSONA_REFRESH_MAX_FAILURES tries, so the refresh sensor stopped retrying them (`persona dead-letter` "
        "lists them with the reason; `--retry` hands them back). WARN: the others are searchable."
    ),
)
def no_dead_lettered_users(context: AssetCheckExecutionContext, relational_store: RelationalStore) -> AssetCheckResult:
    count, sample = dead_letter(relational_store.engine, limit=SAMPLE_SIZE)
    described = [{"ext_id": r.ext_id, "failures": r.failures, "reason": r.reason} for r in sample]
    return report_failure(
        context,
        AssetCheckResult(
            passed=count == 0,
            severity=AssetCheckSeverity.WARN,
            description="no user in the dead letter"
            if count == 0
            else f"{count:,} user(s) in the dead letter, e.g. {sample[0].ext_id!r}: {sample[0].reason}",
            metadata={"dead_lettered_users": count, "sample": MetadataValue.json(described)},
        ),
    )
