"""Credentials come from the environment and are shown nowhere: not in the resource configuration the code
location presents (what the UI's resource view shows), not in a run's events or config, not in the output of
any ``persona`` command. On a real MariaDB, whose URL carries a password (whatever the session's backend).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import Pipeline, write_import_dir
from dagster import DagsterInstance, serialize_value

REPO = Path(__file__).resolve().parent.parent
USERS = ["s1", "s2", "s3"]
CATEGORIES = [{"cat_id": "1", "name": "Audio", "parent_id": ""}]
PRODUCTS = [{"pid": "A", "pos": "amazon", "title": "Buds", "brand": "boAt", "generic_name": "earbuds", "gender": "men",
             "cat_l1": "1"}]  # fmt: skip


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline(tmp_path_factory.mktemp("secrets"), backend="mysql")


def _password(pipeline: Pipeline) -> str:
    password = sa.engine.make_url(pipeline.settings.db_url).password
    assert password and len(password) >= 8, "the test database URL must carry a password"
    return str(password)


def test_no_persona_command_prints_the_password(pipeline: Pipeline):
    password = _password(pipeline)
    visits = [
        {"ext_id": user, "pid": PRODUCTS[0]["pid"], "visited_at": "2026-10-01T10:00:00", "pincode": "560001"}
        for user in USERS
    ]
    visits.append({**visits[0], "visited_at": "not a date"})  # one rejected row, for `persona rejects` to list
    source = write_import_dir(pipeline.root / "import", products=PRODUCTS, categories=CATEGORIES, visits=visits)
    outputs = []
    for argv in (
        ("import", source),
        ("materialize",),
        ("query", json.dumps({"size": 5})),
        ("rejects",),
        ("export", pipeline.root / "export.jsonl"),
        ("dead-letter",),
        ("import", pipeline.root / "missing-directory"),  # an error on the way out, too
    ):
        code, out, err = pipeline.cli(*argv)
        outputs.append((argv[0], code, out + err))
    assert [code for _, code, _ in outputs[:-1]] == [0] * (len(outputs) - 1), outputs
    assert outputs[-1][1] != 0
    for command, _, text in outputs:
        assert text, f"persona {command} printed nothing: the check below would prove nothing"
        assert password not in text, f"persona {command} printed the database password"


def test_no_run_event_or_run_config_holds_the_password(pipeline: Pipeline):
    password = _password(pipeline)
    with pipeline.env(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        instance = DagsterInstance.get()
        records = instance.get_run_records()
        assert records, "the commands above launched no Dagster run"
        for record in records:
            run = record.dagster_run
            assert password not in serialize_value(run), f"run {run.run_id} holds the password"
            for entry in instance.all_logs(run.run_id):
                assert password not in serialize_value(entry), f"an event of run {run.run_id} holds the password"


def test_the_code_location_shows_the_urls_as_environment_variables(pipeline: Pipeline):
    """What the UI's resource view shows, through Dagster's own GraphQL on a code server of the repo's
    ``workspace.yaml``: the store URLs are the names of their environment variables, never their values."""
    from dagster_graphql.test.utils import (
        define_out_of_process_context,
        execute_dagster_graphql,
        infer_resource_selector,
    )

    password = _password(pipeline)
    query = """
        query ($selector: ResourceSelector!) {
          topLevelResourceDetailsOrError(resourceSelector: $selector) {
            __typename
            ... on ResourceDetails { configuredValues { key value type } }
          }
        }
    """
    with pipeline.env(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        instance = DagsterInstance.get()
        with define_out_of_process_context(str(REPO / "workspace.yaml"), None, instance) as context:
            shown = {}
            for resource in ("relational_store", "search_index", "event_store", "compute"):
                result = execute_dagster_graphql(
                    context, query, {"selector": infer_resource_selector(context, resource)}
                )
                details = result.data["topLevelResourceDetailsOrError"]
                assert details["__typename"] == "ResourceDetails", details
                shown[resource] = {value["key"]: value for value in details["configuredValues"]}
    assert password not in json.dumps(shown)
    db_url = shown["relational_store"]["db_url"]
    assert (db_url["type"], db_url["value"]) == ("ENV_VAR", "PERSONA_DB_URL")
    assert shown["event_store"]["home"]["type"] == "VALUE"  # plain settings stay plain
