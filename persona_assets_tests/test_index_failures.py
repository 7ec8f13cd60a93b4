"""Documents the search backend refuses: reported, retried, and their users' flags not advanced.

The refusal is real: an OpenSearch ingest pipeline with a ``fail`` processor for one user, made the
default pipeline of this test's indices by an index template. Nothing is mocked.
"""

from __future__ import annotations

import pytest
from conftest import Pipeline, production_search_client, write_import_dir
from dagster import SkipReason

from persona_assets.stores.opensearch_index import OpenSearchBackend

pytestmark = pytest.mark.services

CATEGORIES = [{"cat_id": "1", "name": "Audio", "parent_id": ""}]
PRODUCTS = [
    {"pid": "P1", "pos": "amazon", "title": "Earbuds", "brand": "boAt", "generic_name": "earbuds", "cat_l1": "1"}
]


@pytest.fixture
def refusing_one_user(tmp_path, monkeypatch):
    """A production-pair pipeline whose OpenSearch indices refuse the document of user ``u2``."""
    monkeypatch.setattr(OpenSearchBackend, "retry_backoff", 0.01)  # keep the retries, not the waiting
    pipeline = Pipeline(tmp_path / "pair", backend="production")
    alias = pipeline.settings.opensearch_alias
    client = production_search_client()
    name = f"{alias}-refuse-u2"
    client.ingest.put_pipeline(
        id=name,
        body={"processors": [{"fail": {"if": "ctx.ext_id == 'u2'", "message": "refused for the test"}}]},
    )
    client.indices.put_index_template(
        name=name,
        body={"index_patterns": [f"{alias}-*"], "template": {"settings": {"index.default_pipeline": name}}},
    )
    try:
        yield pipeline
    finally:
        client.indices.delete_index_template(name=name)
        client.ingest.delete_pipeline(id=name)


def test_a_refused_document_leaves_its_user_at_2_and_the_others_searchable(refusing_one_user: Pipeline, tmp_path):
    pipeline = refusing_one_user
    # 20 users, one refused: under the backend's 10% limit, so the new build goes live without u2.
    users = [f"u{i}" for i in range(1, 21)]
    visits = [{"ext_id": u, "pid": "P1", "pincode": "560001", "visited_at": "2026-10-01"} for u in users]
    source = write_import_dir(tmp_path / "import", products=PRODUCTS, categories=CATEGORIES, visits=visits)
    pipeline.import_dir(source)
    pipeline.materialize()

    assert pipeline.flags() == {u: (2 if u == "u2" else 0) for u in users}
    answer = pipeline.query({"brand": "boat", "size": 100})
    assert answer["total"] == 19
    assert sorted(hit["ext_id"] for hit in answer["results"]) == sorted(u for u in users if u != "u2")
    # The personas themselves were calculated and stored; only indexing failed.
    assert set(pipeline.table("user_personas")["ext_id"]) == set(users)


def test_too_many_refusals_keep_the_live_build_and_fail_the_run(refusing_one_user: Pipeline, tmp_path):
    """With more than 10% refused, publishing stops: the previous build stays live, flags stay at 2."""
    pipeline = refusing_one_user
    visits = [{"ext_id": u, "pid": "P1", "pincode": "560001", "visited_at": "2026-10-01"} for u in ("u1", "u2", "u3")]
    source = write_import_dir(tmp_path / "import", products=PRODUCTS, categories=CATEGORIES, visits=visits)
    pipeline.import_dir(source)
    code, _, err = pipeline.cli("materialize")
    assert code == 1
    assert "persona_index" in err and "1 of 3 personas could not be indexed" in err
    assert set(pipeline.flags().values()) == {2}


def test_a_user_refused_on_every_try_backs_off_then_waits_in_the_dead_letter(
    refusing_one_user: Pipeline, tmp_path, monkeypatch
):
    """Issue 8 item 5: the sensor stops re-claiming a user whose document is always refused: each refusal is
    counted, after PERSONA_REFRESH_MAX_FAILURES the user waits in the dead letter, shown by `persona
    dead-letter` and by the no_dead_lettered_users check, until `--retry` hands them back."""
    from test_operations import run_refresh, sensor_requests

    pipeline = refusing_one_user
    users = [f"u{i}" for i in range(1, 21)]
    visits = [{"ext_id": u, "pid": "P1", "pincode": "560001", "visited_at": "2026-10-01"} for u in users]
    pipeline.import_dir(write_import_dir(tmp_path / "import", products=PRODUCTS, categories=CATEGORIES, visits=visits))
    monkeypatch.setenv("PERSONA_REFRESH_MAX_FAILURES", "3")
    monkeypatch.setenv("PERSONA_REFRESH_BACKOFF_SECONDS", "0")  # no waiting between the tries here
    pipeline.materialize()  # u2 refused once, by the rebuild
    assert pipeline.flags()["u2"] == 2
    for _ in range(2):  # the second and third refusals, by refresh runs
        (request,) = sensor_requests(pipeline)
        assert request.tags["persona/users"] == "1"
        assert run_refresh(pipeline, request)
    assert isinstance(sensor_requests(pipeline), SkipReason)  # dead-lettered: no longer claimed
    assert pipeline.flags()["u2"] == 2  # never searchable with a missing document

    listed = pipeline.check("dead-letter")
    (line,) = listed.strip().splitlines()
    assert line.startswith("u2\t3 refusals") and "refused for the test" in line
    code, out, err = pipeline.cli("materialize")  # the rebuild refuses u2 again; its checks run
    assert code == 0, err
    assert "no_dead_lettered_users failed: 1 user(s) in the dead letter, e.g. 'u2'" in out + err

    pipeline.check("dead-letter", "--retry")
    assert pipeline.check("dead-letter").strip() == ""
    (request,) = sensor_requests(pipeline)  # handed back to the sensor
    assert request.tags["persona/users"] == "1"
