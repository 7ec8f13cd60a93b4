"""Memory is configuration: PERSONA_MEMORY_LIMIT and PERSONA_THREADS reach every DuckDB step, and a
tight budget changes how a step runs (spilling, one thread), never what it computes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Pipeline

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


@pytest.mark.parametrize(
    ("name", "value"),
    [("PERSONA_MEMORY_LIMIT", "lots"), ("PERSONA_MEMORY_LIMIT", "4 parsecs"), ("PERSONA_THREADS", "0")],
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


def test_a_tight_budget_gives_the_same_personas(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, users=1500, seed=5)
    exports = {}
    for name, budget in (("roomy", {}), ("tight", {"PERSONA_MEMORY_LIMIT": "96MiB", "PERSONA_THREADS": "1"})):
        pipeline = Pipeline(tmp_path / name, extra_env=budget)
        pipeline.import_dir(data)
        pipeline.materialize()
        exports[name] = pipeline.export()
    assert len(exports["tight"]) == 1500
    assert exports["tight"] == exports["roomy"]
