"""Configuration from the environment: the one place that reads the product's PERSONA_* variables.

:meth:`PersonaSettings.from_env` reads them all at once, the score weights, check thresholds, refusal
back-off and sensor knobs included, and a bad value stops it with the variable named. (``persona
services``, the local MariaDB/OpenSearch launcher for development and tests, reads its own few.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from persona_assets.compute.duck import DuckDBLimits, size_in_bytes
from persona_assets.query.scoring import ScoreWeights
from persona_assets.stores.refusals import RetryPolicy

DEFAULT_MEMORY_LIMIT = "3GiB"
#: Primary shards of each new OpenSearch build: one node with two cores searches a query on both.
DEFAULT_OPENSEARCH_SHARDS = 2


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


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds of the asset checks (read when a check runs, so a changed variable counts from the next run).

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
    def from_env(cls, env: Mapping[str, str]) -> CheckSettings:
        return cls(
            max_reject_rate=_env_rate(env, "PERSONA_MAX_REJECT_RATE", cls.max_reject_rate),
            max_unknown_pincode_rate=_env_rate(env, "PERSONA_MAX_UNKNOWN_PINCODE_RATE", cls.max_unknown_pincode_rate),
            min_rows=_whole_number(env, "PERSONA_CHECK_MIN_ROWS", str(cls.min_rows), least=0, what="rows"),
            relational_sample=_whole_number(
                env, "PERSONA_CHECK_RELATIONAL_SAMPLE", str(cls.relational_sample), least=0, what="personas"
            ),
        )


@dataclass(frozen=True)
class RefreshSettings:
    """The hasChanged sensor's knobs (``PERSONA_SENSOR_INTERVAL``, ``PERSONA_REFRESH_BATCH``, ``PERSONA_REFRESH_MAX_RUNS``,
    ``PERSONA_CLAIM_TTL_SECONDS``)."""

    interval_seconds: int = 5
    batch_size: int = 10000
    max_runs_per_tick: int = 4
    claim_ttl_seconds: int = 900

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RefreshSettings:
        return cls(
            interval_seconds=_whole_number(
                env, "PERSONA_SENSOR_INTERVAL", str(cls.interval_seconds), least=1, what="seconds"
            ),
            batch_size=_whole_number(env, "PERSONA_REFRESH_BATCH", str(cls.batch_size), least=1, what="users"),
            max_runs_per_tick=_whole_number(
                env, "PERSONA_REFRESH_MAX_RUNS", str(cls.max_runs_per_tick), least=1, what="runs"
            ),
            claim_ttl_seconds=_whole_number(
                env, "PERSONA_CLAIM_TTL_SECONDS", str(cls.claim_ttl_seconds), least=1, what="seconds"
            ),
        )


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    text = (env.get(name) or "").strip().lower()
    if not text:
        return default
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={env.get(name)!r}: expected on/off (or true/false)")


@dataclass(frozen=True)
class HomeLayout:
    """Where each kind of local state lives under ``PERSONA_HOME``."""

    home: Path

    @property
    def landing_dir(self) -> Path:
        """Validated imports waiting to be published, one Parquet file per kind and day."""
        return self.home / "landing"

    @property
    def events_dir(self) -> Path:
        """The day-partitioned event store (published partitions)."""
        return self.home / "events"

    @property
    def reference_dir(self) -> Path:
        return self.home / "reference"

    @property
    def work_dir(self) -> Path:
        """Intermediate tables handed from one rebuild asset to the next, one directory per build."""
        return self.home / "work"

    @property
    def builds_dir(self) -> Path:
        return self.work_dir / "builds"

    def build_dir(self, build: str) -> Path:
        """The files of one rebuild (named by the run that computed its raw affinities)."""
        return self.builds_dir / build

    @property
    def index_dir(self) -> Path:
        """Builds of the embedded search index."""
        return self.home / "index"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def spill_dir(self) -> Path:
        """Where DuckDB spills what does not fit in ``PERSONA_MEMORY_LIMIT`` (emptied by DuckDB itself)."""
        return self.home / "tmp" / "duckdb"


MIN_API_TOKEN_CHARS = 16


def _owners(env: Mapping[str, str]) -> tuple[str, ...]:
    owners = tuple(owner.strip() for owner in (env.get("PERSONA_ASSET_OWNERS") or "").split(",") if owner.strip())
    for owner in owners:
        if not (owner.startswith("team:") and len(owner) > 5) and "@" not in owner:
            raise ValueError(f"PERSONA_ASSET_OWNERS: {owner!r} is neither an e-mail address nor team:<name>")
    return owners


def _webhook(env: Mapping[str, str]) -> str | None:
    url = (env.get("PERSONA_ALERT_WEBHOOK") or "").strip()
    if not url:
        return None
    if not url.startswith(("https://", "http://")):
        raise ValueError("PERSONA_ALERT_WEBHOOK: expected an http(s):// URL (a chat's incoming webhook)")
    return url


@dataclass(frozen=True)
class PersonaSettings:
    """Where the product keeps its state and which backends it talks to."""

    home: Path
    db_url: str
    opensearch_url: str | None
    # First day of the daily event partitions; events before it are rejected at import.
    events_start: date = date(2015, 1, 1)
    opensearch_alias: str = "persona_personas"
    # Primary shards and replicas of each OpenSearch build (PERSONA_OPENSEARCH_SHARDS / _REPLICAS).
    opensearch_shards: int = DEFAULT_OPENSEARCH_SHARDS
    opensearch_replicas: int = 0
    # TLS of an https node (PERSONA_OPENSEARCH_VERIFY_CERTS, default true; PERSONA_OPENSEARCH_CA_CERTS).
    opensearch_verify_certs: bool = True
    opensearch_ca_certs: str | None = None
    # Answers `persona serve` computes at once per worker (PERSONA_SERVE_THREADS); None = by backend.
    serve_threads: int | None = None
    # Seconds `persona serve` gives one answer, waiting included (PERSONA_QUERY_TIMEOUT); then a 503.
    query_timeout: float = 10.0
    # Whether the schedule and the sensors start running in a new instance (PERSONA_AUTOMATION, default off:
    # a staging copy publishes nothing until switched on; production sets it on).
    automation: bool = False
    # Owners of every asset, shown in the UI (PERSONA_ASSET_OWNERS: e-mails or team:name, comma-separated).
    asset_owners: tuple[str, ...] = ()
    # Where a failed run is posted (PERSONA_ALERT_WEBHOOK, a chat's incoming webhook; it carries a token).
    alert_webhook: str | None = field(default=None, repr=False)
    # The bearer token `persona serve` requires (PERSONA_API_TOKEN); None: no token (behind a proxy).
    api_token: str | None = field(default=None, repr=False)
    # The file `persona serve --workers N` shares between its workers to spread answers evenly
    # (PERSONA_SERVE_LOAD_FILE, set by `persona serve` itself for the workers it starts).
    serve_load_file: Path | None = None
    # DuckDB's budget per step (PERSONA_MEMORY_LIMIT) and its threads (PERSONA_THREADS, default: every core).
    memory_limit: str = DEFAULT_MEMORY_LIMIT
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    # The knobs of the score, the checks, the refusal back-off and the refresh sensor.
    weights: ScoreWeights = field(default_factory=ScoreWeights)
    checks: CheckSettings = field(default_factory=CheckSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    refresh: RefreshSettings = field(default_factory=RefreshSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PersonaSettings:
        env = os.environ if environ is None else environ
        home = Path(env.get("PERSONA_HOME") or ".persona").expanduser().resolve()
        db_url = env.get("PERSONA_DB_URL") or f"sqlite:///{home / 'persona.db'}"
        opensearch_url = env.get("PERSONA_OPENSEARCH_URL") or None
        start_text = env.get("PERSONA_EVENTS_START") or "2015-01-01"
        try:
            events_start = date.fromisoformat(start_text)
        except ValueError as error:
            raise ValueError(f"PERSONA_EVENTS_START: {start_text!r} is not a YYYY-MM-DD date") from error
        memory_limit = (env.get("PERSONA_MEMORY_LIMIT") or DEFAULT_MEMORY_LIMIT).strip()
        try:
            size_in_bytes(memory_limit)
        except ValueError as error:
            raise ValueError(f"PERSONA_MEMORY_LIMIT: {error}") from None
        threads = _whole_number(env, "PERSONA_THREADS", str(os.cpu_count() or 1), least=1, what="threads")
        shards = _whole_number(env, "PERSONA_OPENSEARCH_SHARDS", str(DEFAULT_OPENSEARCH_SHARDS), least=1, what="shards")
        replicas = _whole_number(env, "PERSONA_OPENSEARCH_REPLICAS", "0", least=0, what="replicas")
        timeout_text = (env.get("PERSONA_QUERY_TIMEOUT") or "10").strip()
        try:
            query_timeout = float(timeout_text)
        except ValueError:
            query_timeout = 0.0  # refused below, like any other value that is not a positive number
        if not 0 < query_timeout < math.inf:  # also refuses nan
            raise ValueError(f"PERSONA_QUERY_TIMEOUT: {timeout_text!r} is not a number of seconds > 0")
        serve_threads = (
            _whole_number(env, "PERSONA_SERVE_THREADS", "", least=1, what="threads")
            if (env.get("PERSONA_SERVE_THREADS") or "").strip()
            else None
        )
        api_token = env.get("PERSONA_API_TOKEN") or None
        if api_token is not None and (len(api_token) < MIN_API_TOKEN_CHARS or api_token != api_token.strip()):
            raise ValueError(
                f"PERSONA_API_TOKEN: a token of at least {MIN_API_TOKEN_CHARS} characters without surrounding "
                "spaces is required (e.g. `openssl rand -hex 32`)"
            )
        return cls(
            home=home,
            db_url=db_url,
            opensearch_url=opensearch_url,
            events_start=events_start,
            opensearch_alias=env.get("PERSONA_OPENSEARCH_ALIAS") or "persona_personas",
            opensearch_shards=shards,
            opensearch_replicas=replicas,
            opensearch_verify_certs=_flag(env, "PERSONA_OPENSEARCH_VERIFY_CERTS", True),
            opensearch_ca_certs=(env.get("PERSONA_OPENSEARCH_CA_CERTS") or "").strip() or None,
            serve_threads=serve_threads,
            serve_load_file=Path(env["PERSONA_SERVE_LOAD_FILE"]) if env.get("PERSONA_SERVE_LOAD_FILE") else None,
            query_timeout=query_timeout,
            api_token=api_token,
            automation=_flag(env, "PERSONA_AUTOMATION", False),
            alert_webhook=_webhook(env),
            asset_owners=_owners(env),
            memory_limit=memory_limit,
            threads=threads,
            weights=ScoreWeights.from_env(env),
            checks=CheckSettings.from_env(env),
            retry=RetryPolicy.from_env(env),
            refresh=RefreshSettings.from_env(env),
        )

    @property
    def answer_threads(self) -> int:
        """Answers computed at once per ``persona serve`` worker. On the embedded index an answer is CPU
        work under the GIL: one at a time, the rest wait in arrival order (threads sharing the CPU only
        stretch every answer in flight: at 1M, 50 clients got 201/s, p99 549 ms with 40 threads and
        261/s, p99 286 ms with one). On OpenSearch an answer mostly waits on the node: 8 overlap."""
        if self.serve_threads is not None:
            return self.serve_threads
        return 8 if self.opensearch_url else 1

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(self.home)

    @property
    def duckdb_limits(self) -> DuckDBLimits:
        return DuckDBLimits(memory_limit=self.memory_limit, threads=self.threads, temp_directory=self.layout.spill_dir)


def _whole_number(env: Mapping[str, str], name: str, default: str, *, least: int, what: str) -> int:
    text = (env.get(name) or default).strip()
    if not text.isdigit() or int(text) < least:
        raise ValueError(f"{name}: {text!r} is not a whole number of {what} >= {least}")
    return int(text)
