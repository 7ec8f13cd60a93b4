"""Memory is configuration: PERSONA_MEMORY_LIMIT and PERSONA_THREADS reach every DuckDB step, and a
tight budget changes how a step runs (spilling, one thread), never what it computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Pipeline

from persona_assets.compute import affinities, persona_store
from persona_assets.compute.duck import DuckDBLimits, connect
from persona_assets.resources import resources_from_settings
from persona_assets.settings import PersonaSettings
from persona_assets.synthetic.generator import generate_dataset


def test_memory_limit_and_threads_come_from_the_environment(tmp_path: Path) -> None:
    settings = PersonaSettings.from_env(
        {"PERSONA_HOME": str(tmp_path), "PERSONA_MEMORY_LIMIT": "512MiB", "PERSONA_THREADS": "1"}
    )
    assert (settings.memory_limit, settings.threads) == ("512MiB", 1)
    assert settings.duckdb_limits.temp_directory == tmp_path.resolve() / "tmp" / "duckdb"


def test_every_knob_is_read_by_the_one_settings_object(tmp_path: Path) -> None:
    """The score weights, check thresholds, refusal back-off and sensor batches come with the rest of the
    configuration, read once; a bad value stops it with the variable named."""
    settings = PersonaSettings.from_env(
        {
            "PERSONA_HOME": str(tmp_path),
            "PERSONA_SCORE_WEIGHTS": "0.1,0.2,0.3,0.4",
            "PERSONA_MAX_REJECT_RATE": "10%",
            "PERSONA_REFRESH_MAX_FAILURES": "3",
            "PERSONA_REFRESH_BATCH": "7",
        }
    )
    assert settings.weights.as_tuple() == (0.1, 0.2, 0.3, 0.4)
    assert settings.checks.max_reject_rate == 0.1
    assert settings.retry.max_failures == 3
    assert settings.refresh.batch_size == 7
    defaults = PersonaSettings.from_env({"PERSONA_HOME": str(tmp_path)})
    assert (defaults.retry.max_failures, defaults.refresh.batch_size, defaults.checks.max_reject_rate) == (
        5,
        10000,
        0.05,
    )
    for name, value in (
        ("PERSONA_SCORE_WEIGHTS", "1,2"),
        ("PERSONA_REFRESH_BATCH", "0"),
        ("PERSONA_CHECK_MIN_ROWS", "x"),
    ):
        with pytest.raises(ValueError, match=name):
            PersonaSettings.from_env({"PERSONA_HOME": str(tmp_path), name: value})


def test_answer_threads_follow_the_backend_unless_set(tmp_path: Path) -> None:
    home = {"PERSONA_HOME": str(tmp_path)}
    opensearch = {**home, "PERSONA_OPENSEARCH_URL": "http://127.0.0.1:9200"}
    assert PersonaSettings.from_env(home).answer_threads == 1  # CPU-bound: one at a time, the rest queue
    assert PersonaSettings.from_env(opensearch).answer_threads == 8  # mostly waiting on the node
    assert PersonaSettings.from_env({**opensearch, "PERSONA_SERVE_THREADS": "3"}).answer_threads == 3


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PERSONA_MEMORY_LIMIT", "lots"),
        ("PERSONA_MEMORY_LIMIT", "4 parsecs"),
        ("PERSONA_THREADS", "0"),
        ("PERSONA_OPENSEARCH_SHARDS", "0"),
        ("PERSONA_OPENSEARCH_REPLICAS", "-1"),
        ("PERSONA_SERVE_THREADS", "0"),
        ("PERSONA_QUERY_TIMEOUT", "0"),
        ("PERSONA_QUERY_TIMEOUT", "soon"),
    ],
)
def test_a_bad_budget_is_an_error_naming_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        PersonaSettings.from_env({"PERSONA_HOME": str(tmp_path), name: value})


def test_the_compute_resource_opens_bounded_connections(tmp_path: Path) -> None:
    settings = PersonaSettings.from_env(
        {"PERSONA_HOME": str(tmp_path), "PERSONA_MEMORY_LIMIT": "300MiB", "PERSONA_THREADS": "1"}
    )
    con = resources_from_settings(settings)["compute"].connect()  # type: ignore[attr-defined]
    memory, threads, spill = con.execute(
        "SELECT current_setting('memory_limit'), current_setting('threads'), current_setting('temp_directory')"
    ).fetchone()
    assert memory.replace(" ", "") in ("300.0MiB", "314.5MB", "300MiB")
    assert int(threads) == 1
    assert Path(spill) == tmp_path.resolve() / "tmp" / "duckdb"


def test_a_step_bigger_than_its_budget_spills_instead_of_failing(tmp_path: Path) -> None:
    """An aggregation over more distinct groups than fit in 64 MiB completes, through the spill folder."""
    spill = tmp_path / "spill"
    con = connect(DuckDBLimits(memory_limit="64MiB", threads=1, temp_directory=spill))
    groups, total = con.execute(
        "SELECT COUNT(*), SUM(n) FROM (SELECT 'user-' || CAST(i AS VARCHAR) AS ext_id, COUNT(*) AS n "
        "FROM range(3000000) t(i) GROUP BY ext_id)"
    ).fetchone()
    assert (groups, total) == (3_000_000, 3_000_000)


@pytest.mark.contract
def test_a_tight_budget_gives_the_same_personas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also when the per-user sums run in several user ranges (made small here: 96MiB / 256KiB = 384 users),
    on every backend pair: the same personas and the same legacy raw maps in the relational store."""
    data = tmp_path / "data"
    generate_dataset(data, users=1500, seed=5)
    exports, legacy = {}, {}
    for name, budget in (("roomy", {}), ("tight", {"PERSONA_MEMORY_LIMIT": "96MiB", "PERSONA_THREADS": "1"})):
        if name == "tight":
            monkeypatch.setattr(affinities, "_AGGREGATION_BYTES_PER_USER", 256 * 1024)
        pipeline = Pipeline(tmp_path / name, extra_env=budget)
        pipeline.import_dir(data)
        pipeline.materialize()
        exports[name] = pipeline.export()
        legacy[name] = pipeline.table("user_persona").drop(columns=["hasChanged", "change_seq"])
        legacy[name] = legacy[name].sort_values("extId").reset_index(drop=True)
    assert len(exports["tight"]) == 1500
    assert exports["tight"] == exports["roomy"]
    for column in ("gender", "city", "ecomm", "brandAffinity", "categoryAffinity", "genericAffinity"):
        parsed = {n: [json.loads(v) for v in legacy[n][column]] for n in legacy}
        assert parsed["tight"] == parsed["roomy"], column


def test_the_per_user_sums_run_in_ranges_sized_by_the_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert affinities.users_per_aggregation(connect(DuckDBLimits(memory_limit="3GiB"))) == 131_072
    assert affinities.users_per_aggregation(connect(DuckDBLimits(memory_limit="96MiB"))) == 4_096
    # The JSON rows written to the store: ranges follow the same connection's limit, capped at 20,000 users.
    assert persona_store.users_per_range(connect(DuckDBLimits(memory_limit="3GiB"))) == 20_000
    assert persona_store.users_per_range(connect(DuckDBLimits(memory_limit="256MiB"))) == 5_461
    con = connect()
    con.execute("CREATE TABLE users AS SELECT range AS uid FROM range(10)")
    con.execute("CREATE TABLE sums AS SELECT range % 10 AS uid, range % 3 AS kid, 1 AS weight FROM range(300)")
    monkeypatch.setattr(affinities, "_AGGREGATION_BYTES_PER_USER", 2**62)  # every user a range of its own
    assert affinities.users_per_aggregation(con) == 1
    affinities.create_by_user_range(
        con,
        "by_range",
        f"SELECT uid, kid, SUM(weight) AS weight FROM sums WHERE uid {affinities.IN_RANGE} GROUP BY ALL",
    )
    summary = con.execute("SELECT COUNT(*), SUM(weight), COUNT(DISTINCT (uid, kid)) FROM by_range").fetchone()
    assert summary == (30, 300, 30)
