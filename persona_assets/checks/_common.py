"""Thresholds from the environment and what every check shares."""

import os
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
)

SAMPLE_SIZE = 20


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
    * ``PERSONA_CHECK_RELATIONAL_SAMPLE`` (default 10000): personas of the relational ``user_personas``
      whose JSON maps ``maps_sum_to_one`` judges, drawn at random (0 = every one). Every map of the
      Parquet hand-off, which the index is built from, is judged whatever this says.

    Rates are fractions (``0.05``) or percentages (``5%``); the check passes at exactly the threshold.
    """

    max_reject_rate: float = 0.05
    max_unknown_pincode_rate: float = 0.20
    min_rows: int = 1000
    relational_sample: int = 10_000
    # How far from 1 a normalised map's sum may be (floating-point rounding of the division).
    map_sum_tolerance: float = 1e-9

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "CheckSettings":
        env = os.environ if environ is None else environ
        return cls(
            max_reject_rate=_env_rate(env, "PERSONA_MAX_REJECT_RATE", cls.max_reject_rate),
            max_unknown_pincode_rate=_env_rate(env, "PERSONA_MAX_UNKNOWN_PINCODE_RATE", cls.max_unknown_pincode_rate),
            min_rows=_env_count(env, "PERSONA_CHECK_MIN_ROWS", cls.min_rows),
            relational_sample=_env_count(env, "PERSONA_CHECK_RELATIONAL_SAMPLE", cls.relational_sample),
        )


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
