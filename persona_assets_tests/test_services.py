"""The throwaway services for real: MariaDB and OpenSearch started in a temporary home, used, stopped.

Slow the first time on a machine (apt-get install mariadb-server, Maven downloads the OpenSearch jars);
later runs take about as long as the JVM needs to start (~5-10 s).
"""

from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path

import pytest
import sqlalchemy as sa
from opensearchpy import OpenSearch, helpers

from persona_assets import services

pytestmark = pytest.mark.services


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _check_sql(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE IF EXISTS services_probe"))
            connection.execute(
                sa.text(
                    "CREATE TABLE services_probe (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, score DOUBLE NOT NULL) ENGINE=InnoDB"
                )
            )
            connection.execute(
                sa.text("INSERT INTO services_probe VALUES (:id, :name, :score)"),
                [{"id": 1, "name": "Kolkata ✓ 👟", "score": 0.25}, {"id": 2, "name": "Pune", "score": 0.75}],
            )
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT id, name, score FROM services_probe ORDER BY score DESC")).all()
            version = connection.execute(sa.text("SELECT VERSION()")).scalar_one()
            connection.execute(sa.text("DROP TABLE services_probe"))
            connection.commit()
    finally:
        engine.dispose()
    assert [tuple(row) for row in rows] == [(2, "Pune", 0.75), (1, "Kolkata ✓ 👟", 0.25)]
    assert "MariaDB" in version


def _check_opensearch(url: str) -> None:
    client = OpenSearch(hosts=[url], timeout=30)
    assert client.info()["version"]["number"].startswith("2.19.")
    index = "services-probe"
    client.indices.create(
        index=index,
        body={
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {
                "properties": {"title": {"type": "text"}, "brand": {"type": "keyword"}, "boost": {"type": "double"}}
            },
        },
    )
    docs = [
        {"_id": "a", "title": "red running shoe", "brand": "acme", "boost": 2.0},
        {"_id": "z", "title": "blue running shoe", "brand": "zen", "boost": 1.0},
        {"_id": "o", "title": "green running shoe", "brand": "other", "boost": 5.0},
        {"_id": "x", "title": "steel kettle", "brand": "acme", "boost": 9.0},
    ]
    ok, errors = helpers.bulk(client, ({"_index": index, **doc} for doc in docs), refresh=True)
    assert ok == len(docs) and not errors

    hits = client.search(index=index, body={"query": {"match": {"title": "shoe"}}})["hits"]
    assert {hit["_id"] for hit in hits["hits"]} == {"a", "z", "o"}

    # A Painless script_score of the legacy kind: per-brand weights from params times a doc value.
    body = {
        "query": {
            "script_score": {
                "query": {"match": {"title": "shoe"}},
                "script": {
                    "lang": "painless",
                    "source": "double w = params.weights.containsKey(doc['brand'].value) ? params.weights[doc['brand'].value] : 0.0; return w * doc['boost'].value;",
                    "params": {"weights": {"acme": 3.0, "zen": 10.0}},
                },
            }
        }
    }
    hits = client.search(index=index, body=body)["hits"]["hits"]
    assert [hit["_id"] for hit in hits] == ["z", "a", "o"]
    assert [hit["_score"] for hit in hits] == pytest.approx([10.0, 6.0, 0.0])
    client.indices.delete(index=index)
    client.close()


def test_services_up_round_trip_and_down(tmp_path: Path) -> None:
    home = tmp_path / "home"
    try:
        env = services.up(home)
        assert set(env) == {"PERSONA_DB_URL", "PERSONA_OPENSEARCH_URL"}
        assert services.up(home) == env, "a second up reuses the running services"
        assert services.env(home) == env
        status = services.status(home)
        assert status["mariadb"].running and status["opensearch"].running
        assert "green" in status["opensearch"].detail or "yellow" in status["opensearch"].detail

        db_port = sa.engine.make_url(env["PERSONA_DB_URL"]).port
        search_port = urllib.parse.urlsplit(env["PERSONA_OPENSEARCH_URL"]).port
        assert db_port and search_port and _answers(db_port) and _answers(search_port)

        _check_sql(env["PERSONA_DB_URL"])
        _check_opensearch(env["PERSONA_OPENSEARCH_URL"])
    finally:
        stopped = services.down(home)

    assert stopped == {"opensearch": True, "mariadb": True}
    assert not _answers(db_port) and not _answers(search_port)
    assert not any(entry.running for entry in services.status(home).values())
    assert services.down(home) == {"opensearch": False, "mariadb": False}
    assert (home / "services" / "opensearch" / "logs" / "opensearch.log").stat().st_size > 0
    assert (home / "services" / "mariadb" / "logs" / "mariadb.err").stat().st_size > 0


def test_a_stopped_port_is_given_time_to_close() -> None:
    """A server whose socket closes a moment after its process reads as gone is stopped, not an error; one
    that keeps answering is reported."""
    import threading

    from persona_assets.services._process import port_closes

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    assert not port_closes(port, timeout=0.5)
    closer = threading.Timer(0.6, listener.close)
    closer.start()
    try:
        assert port_closes(port, timeout=10)
    finally:
        closer.cancel()
        listener.close()
