"""What a deployment is made of works as shipped: ``pip install -e '.[production]'`` gives a Dagster
instance on MySQL/MariaDB (``deploy/dagster.production.yaml``) that stores runs and enforces the
``persona_compute`` pool; the dependency set is the one ``constraints.txt`` pins."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import Pipeline, production_services, write_import_dir

from persona_assets.stores.relational import create_mysql_database

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.services
def test_the_production_instance_runs_on_mariadb_with_the_compute_pool(tmp_path, monkeypatch):
    from dagster import DagsterInstance, asset, materialize

    from persona_assets.jobs import COMPUTE_POOL

    url = sa.engine.make_url(create_mysql_database(production_services()["db"], "persona_dagster_instance"))
    for name, value in {
        "DAGSTER_MYSQL_HOST": url.host,
        "DAGSTER_MYSQL_PORT": str(url.port),
        "DAGSTER_MYSQL_USER": url.username,
        "DAGSTER_MYSQL_PASSWORD": url.password,
        "DAGSTER_MYSQL_DB": url.database,
        "DAGSTER_COMPUTE_LOGS_DIR": str(tmp_path / "compute-logs"),
        "DAGSTER_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
    }.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster-home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.production.yaml", home / "dagster.yaml")
    instance = DagsterInstance.from_config(str(home))
    try:
        assert type(instance.run_storage).__name__ == "MySQLRunStorage"
        assert instance.event_log_storage.supports_global_concurrency_limits

        seen = {}

        @asset(pool=COMPUTE_POOL)
        def pooled() -> int:
            # while this step runs it holds the pool's one slot, in MySQL
            info = instance.event_log_storage.get_concurrency_info(COMPUTE_POOL)
            seen.update(slots=info.slot_count, active=info.active_slot_count)
            return 1

        result = materialize([pooled], instance=instance)
        assert result.success
        assert seen == {"slots": 1, "active": 1}
        stored = instance.get_run_by_id(result.run_id)
        assert stored is not None and stored.is_success
    finally:
        instance.dispose()


def test_the_installed_dependencies_are_the_pinned_ones():
    """constraints.txt (what CI installs with) pins every package of the environment; a drift fails here."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    assert pins["dagster"] == importlib.metadata.version("dagster") == "1.13.27"
    for name in ("dagster-mysql", "dagster-postgres", "dagster-webserver", "duckdb", "pyarrow", "pandas"):
        assert importlib.metadata.version(name) == pins[name], name


def _private_uses(path: Path) -> list[str]:
    """``from pkg._private import x``, ``import pkg._private`` and ``module._name`` of a third-party module,
    outside ``if TYPE_CHECKING:`` blocks."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(child) for child in ast.walk(node)}
    third_party, found = set(), []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("persona_assets") and re.search(r"(^|\.)_[a-z]", node.module):
                found.append(f"{path.name}:{node.lineno} from {node.module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("persona_assets"):
                    third_party.add(alias.asname or alias.name.split(".")[0])
                    if re.search(r"\._[a-z]", alias.name):
                        found.append(f"{path.name}:{node.lineno} import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in third_party
            and re.fullmatch(r"_[a-z]\w*", node.attr)
        ):
            found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_no_private_api_of_a_dependency_is_used_at_run_time():
    """A private name (``indian_pincode._load``, ``dagster._core…``) may change in any patch release."""
    found = [use for path in sorted((REPO / "persona_assets").rglob("*.py")) for use in _private_uses(path)]
    assert found == []


def test_the_private_use_finder_finds_them(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import indian_pincode\nfrom dagster._core.x import y\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from dagster._utils.error import E\nv = indian_pincode._load()\n",
        encoding="utf-8",
    )
    assert _private_uses(sample) == ["sample.py:2 from dagster._core.x", "sample.py:6 indian_pincode._load"]


def test_the_schedule_and_sensors_start_stopped_unless_automation_is_on(tmp_path):
    """A staging copy publishes nothing on its own; production sets PERSONA_AUTOMATION=on."""
    import json
    import os
    import subprocess
    import sys

    script = (
        "import json, persona_assets.definitions as d\n"
        "print(json.dumps({i.name: i.default_status.value for i in [*d.defs.sensors, *d.defs.schedules]}))"
    )
    statuses = {}
    for automation in ("", "on", "off"):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PERSONA_", "DAGSTER_"))}
        env |= {"PERSONA_HOME": str(tmp_path / "home"), "PERSONA_AUTOMATION": automation}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        statuses[automation] = json.loads(out.stdout)
    names = {
        "changed_users_sensor",
        "segment_membership_sensor",
        "rebuild_after_ingest",
        "alert_on_run_failure",
        "daily_ingest_schedule",
    }
    assert set(statuses["on"]) == names
    assert set(statuses["on"].values()) == {"RUNNING"}
    assert set(statuses[""].values()) == set(statuses["off"].values()) == {"STOPPED"}


def test_each_asset_is_described_for_the_backend_it_runs_on(tmp_path):
    from persona_assets.assets import all_assets
    from persona_assets.assets.described import TABLES, describe
    from persona_assets.settings import PersonaSettings

    def graph(env):
        settings = PersonaSettings.from_env({"PERSONA_HOME": str(tmp_path), **env})
        specs = {spec.key.to_user_string(): spec for asset in describe(all_assets, settings) for spec in asset.specs}
        return specs

    embedded = graph({"PERSONA_ASSET_OWNERS": "team:data-platform, ravi@shop.in"})
    production = graph(
        {"PERSONA_DB_URL": "mysql+pymysql://u:p@db/persona", "PERSONA_OPENSEARCH_URL": "https://search:9200"}
    )
    assert set(embedded["user_personas"].kinds) == {"duckdb", "sqlite"}
    assert set(production["user_personas"].kinds) == {"duckdb", "mysql"}
    assert set(embedded["persona_index"].kinds) == {"parquet"}
    assert set(production["persona_index"].kinds) == {"opensearch"}
    assert production["persona_index"].metadata["dagster/table_name"] == "persona_personas"
    assert embedded["persona_index"].metadata["dagster/uri"] == (tmp_path / "index").as_uri()
    assert embedded["raw_visits"].metadata["dagster/uri"] == (tmp_path / "events" / "visits").as_uri()
    for key, table in TABLES.items():
        schema = embedded[key].metadata["dagster/column_schema"]
        assert [column.name for column in schema.columns] == [column.name for column in table.columns]
        assert embedded[key].metadata["dagster/table_name"] == table.name
    assert all(spec.owners == ["team:data-platform", "ravi@shop.in"] for spec in embedded.values())
    assert all(spec.owners == [] for spec in production.values())
    assert embedded["raw_visits"].tags["domain"] == "events"
    for key in ("raw_visits", "raw_checkouts", "raw_searches", "persona_index"):
        assert embedded[key].freshness_policy is not None, key
    from persona_assets.compute.affinities import COMPUTATION_VERSION

    rebuild = ("user_raw_affinities", "user_activity", "attribute_vocabulary", "user_personas", "persona_index")
    assert {key: embedded[key].code_version for key in rebuild} == dict.fromkeys(rebuild, COMPUTATION_VERSION)
    with pytest.raises(ValueError, match="PERSONA_ASSET_OWNERS"):
        graph({"PERSONA_ASSET_OWNERS": "just-a-name"})


def test_each_materialisation_states_its_row_count(tmp_path):
    from dagster import AssetKey

    from persona_assets.pipeline import dagster_instance

    pipeline = Pipeline(tmp_path / "shop")
    day = "2026-11-02T10:00:00"
    source = write_import_dir(
        tmp_path / "import",
        products=[("P1", "flipkart", "t", "boAt", "Earbuds", "men", "1", "", "", "1")],
        categories=[("1", "Electronics", "")],
        visits=[("u1", "P1", "560001", day), ("u2", "P1", "560001", day), ("u2", "P1", "400601", day)],
    )
    pipeline.import_dir(source)
    pipeline.materialize()
    with pipeline.env():
        instance = dagster_instance(pipeline.settings)
        counts = {
            key: instance.get_latest_materialization_event(AssetKey(key))
            .asset_materialization.metadata["dagster/row_count"]
            .value
            for key in ("product_catalog", "category_hierarchy", "user_personas", "persona_index", "user_activity")
        }
    assert counts == {
        "product_catalog": 1,
        "category_hierarchy": 1,
        "user_personas": 2,
        "persona_index": 2,
        "user_activity": 2,
    }


def test_the_demo_shows_a_segment_whose_answer_is_a_ranking(tmp_path):
    """The top brand's buyers all score 1.0 (each bought nothing else): the demo moves on to a brand
    whose answer ranks, and says what to try next."""
    from persona_assets.demo import demo_segment, next_steps
    from persona_assets.stores import relational
    from persona_assets.stores.backends import search_backend_for

    day = "2026-11-02T10:00:00"
    products = [
        ("A1", "flipkart", "t", "Acme", "Earbuds", "men", "1", "", "", "1"),
        ("Z1", "flipkart", "t", "Zed", "Watches", "men", "1", "", "", "1"),
        ("N1", "flipkart", "t", "Nova", "Watches", "men", "1", "", "", "1"),
    ]
    visits = [(f"a{i}", "A1", "560001", day) for i in range(6) for _ in range(5)]
    visits += [(f"z{i}", "Z1", "560001", day) for i in range(6) for _ in range(i + 1)]
    visits += [(f"z{i}", "N1", "560001", day) for i in range(6) for _ in range(6 - i)]
    pipeline = Pipeline(tmp_path / "shop")
    pipeline.import_dir(
        write_import_dir(tmp_path / "import", products=products, categories=[("1", "Gear", "")], visits=visits)
    )
    pipeline.materialize()
    settings = pipeline.settings
    with pipeline.env():
        request = demo_segment(relational.store_engine(settings.db_url), search_backend_for(settings), settings.weights)
    assert request["brand"] == "nova" and request["genericName"] == "watches", request  # acme ties, nova ranks
    scores = [hit["score"] for hit in pipeline.query(request)["results"]]
    assert len(set(scores)) > 1
    assert "persona serve" in next_steps(request) and '"brand": "nova"' in next_steps(request)
