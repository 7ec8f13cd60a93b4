"""What every check shares (their thresholds are ``settings.CheckSettings``)."""

import sqlalchemy as sa
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
)

from persona_assets.settings import CheckSettings

__all__ = ["SAMPLE_SIZE", "CheckSettings", "count_rows", "judge_rate", "rate_of", "report_failure"]

SAMPLE_SIZE = 20


def report_failure(context: AssetCheckExecutionContext, result: AssetCheckResult) -> AssetCheckResult:
    """Log a failed check's description (the command line prints warnings; Dagster's error names only the check)."""
    if not result.passed:
        spec = context.check_specs[0]
        log = context.log.error if result.severity == AssetCheckSeverity.ERROR else context.log.warning
        log(f"asset check {spec.asset_key.to_user_string()}:{spec.name} failed: {result.description}")
    return result


def rate_of(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def judge_rate(count: int, total: int, limit: float, min_rows: int, total_label: str) -> tuple[float, bool, bool, str]:
    """``count / total`` against ``limit``: (rate, judged, passed, verdict text). Not judged below ``min_rows``."""
    rate = rate_of(count, total)
    judged = total >= min_rows
    passed = not judged or rate <= limit
    if not judged:
        verdict = f"not judged: {total:,} {total_label} < PERSONA_CHECK_MIN_ROWS = {min_rows:,}"
    else:
        verdict = f"{'≤' if passed else '>'} the {limit:.2%} allowed"
    return rate, judged, passed, verdict


def count_rows(engine: sa.engine.Engine, select: sa.Select) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select).scalar_one())
