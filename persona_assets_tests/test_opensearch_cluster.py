"""A real three-node OpenSearch cluster on loopback (``persona services up --opensearch-nodes 3``): it forms,
a build's shards and replicas spread over it, and a node that stops mid-query or mid-publish costs no
answer and no persona.

The cluster is started for this module in a temporary ``PERSONA_HOME`` (512 MiB of heap per node) and
stopped at the end; it is apart from the session's single node.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opensearchpy import OpenSearch
from test_opensearch_index import all_queries, check_answer, random_personas, reference_ranking, stream, to_tables

from persona_assets.query import ScoreWeights
from persona_assets.query.service import unavailable_reason
from persona_assets.services import opensearch
from persona_assets.stores.embedded_backend import EmbeddedBackend
from persona_assets.stores.opensearch_index import OpenSearchBackend
from persona_assets.stores.search_backend import IncompleteAnswer

pytestmark = pytest.mark.services

NODES = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("cluster-home")
    heap = os.environ.get("PERSONA_OPENSEARCH_HEAP")
    os.environ["PERSONA_OPENSEARCH_HEAP"] = "512m"
    try:
        opensearch.start(home, nodes=NODES)
        yield home
    finally:
        opensearch.stop(home)
        if heap is None:
            os.environ.pop("PERSONA_OPENSEARCH_HEAP", None)
        else:
            os.environ["PERSONA_OPENSEARCH_HEAP"] = heap


def _all_nodes_up(home: Path) -> str:
    """The cluster with every node running (a test before may have stopped one); its URL."""
    return opensearch.start(home, nodes=NODES)


def _published(
    url: str, personas: dict, tmp_path: Path, **backend_options
) -> tuple[OpenSearchBackend, EmbeddedBackend]:
    users, affinities = to_tables(personas)
    embedded = EmbeddedBackend(tmp_path / "embedded")
    embedded.publish(stream(users, affinities))
    backend = OpenSearchBackend(url, alias=f"test_{secrets.token_hex(4)}_cluster", **backend_options)
    return backend, embedded


def test_three_nodes_form_one_cluster_and_a_second_up_reuses_it(cluster: Path):
    url = _all_nodes_up(cluster)
    nodes = url.split(",")
    assert len(nodes) == NODES
    for node in nodes:  # every node answers for the same cluster of three
        health = OpenSearch(node).cluster.health()
        assert (health["cluster_name"], health["number_of_nodes"]) == ("persona-services", NODES)
    pids = [opensearch.status(cluster).pid]
    assert opensearch.start(cluster, nodes=NODES) == url  # found running, nothing restarted
    assert [opensearch.status(cluster).pid] == pids
    assert opensearch.status(cluster).detail.endswith(f"{NODES} of {NODES} nodes")
    assert opensearch.url(cluster) == url
    with pytest.raises(RuntimeError, match="3-node cluster's data"):
        opensearch.start(cluster, nodes=1)  # its nodes' state names a cluster of three


def test_a_node_stopped_mid_query_leaves_every_answer_complete_and_exact(cluster: Path, tmp_path: Path):
    url = _all_nodes_up(cluster)
    personas = random_personas(seed=23, n=400)
    backend, embedded = _published(url, personas, tmp_path, shards=3, replicas=1)
    weights = ScoreWeights()
    try:
        report = backend.publish(stream(*to_tables(personas)))
        assert (report.failed, report.document_count) == ({}, len(personas))
        settings = backend.client.indices.get_settings(index=report.details["index"])[report.details["index"]]
        assert (
            settings["settings"]["index"]["number_of_shards"],
            settings["settings"]["index"]["number_of_replicas"],
        ) == (
            "3",
            "1",
        )
        shard_nodes = {row["node"] for row in backend.client.cat.shards(index=report.details["index"], format="json")}
        assert len(shard_nodes) == NODES  # the copies spread over every node
        queries = all_queries()[::5]
        expected = {query: reference_ranking(personas, query, weights) for query in queries}
        answered: list[int] = []
        failures: list[BaseException] = []
        stop = threading.Event()

        def ask_repeatedly() -> None:
            while not stop.is_set():
                for query in queries:
                    try:
                        check_answer(
                            personas,
                            expected[query],
                            query,
                            backend.search(query, weights),
                            embedded.search(query, weights),
                        )
                        answered.append(1)
                    except BaseException as error:  # reported below
                        failures.append(error)
                        return

        asker = threading.Thread(target=ask_repeatedly)
        asker.start()
        while len(answered) < 20 and asker.is_alive():
            time.sleep(0.05)
        before = len(answered)
        assert opensearch.stop_node(cluster, 2)  # the second node leaves while queries run
        after_stop = len(answered)
        deadline = time.monotonic() + 120
        while len(answered) < after_stop + 20 and asker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        asker.join(60)
        assert not failures, failures[0]
        assert before >= 20 and len(answered) >= after_stop + 20  # answers went on with one node gone
    finally:
        backend.client.indices.delete(index=f"{backend.alias}*", ignore_unavailable=True)


def test_a_shard_left_without_a_copy_is_an_error_not_a_partial_answer(cluster: Path, tmp_path: Path):
    """Without replicas, a stopped node takes its shard's only copy: the search must say so, never answer
    from the shards left (OpenSearch's default would)."""
    url = _all_nodes_up(cluster)
    personas = random_personas(seed=31, n=300)
    backend, _embedded = _published(url, personas, tmp_path, shards=3, replicas=0)
    try:
        index = backend.publish(stream(*to_tables(personas))).details["index"]
        assert len({row["node"] for row in backend.client.cat.shards(index=index, format="json")}) == NODES
        query = all_queries()[7]
        assert backend.search(query, ScoreWeights()).total > 0
        assert opensearch.stop_node(cluster, 2)
        with pytest.raises(IncompleteAnswer, match="every shard") as raised:
            backend.search(query, ScoreWeights())
        # both doors (persona query, HTTP 503) say to try again later
        assert "cannot answer from all of its shards" in (unavailable_reason(raised.value) or "")
    finally:
        backend.client.indices.delete(index=f"{backend.alias}*", ignore_unavailable=True)


def test_publishing_survives_a_node_leaving_mid_load(cluster: Path, tmp_path: Path):
    url = _all_nodes_up(cluster)
    personas = random_personas(seed=29, n=3000)
    backend, embedded = _published(url, personas, tmp_path, shards=3, replicas=1, bulk_chunk=20)
    weights = ScoreWeights()
    loaded = threading.Event()
    original_bulk = backend.client.bulk

    def bulk_then_signal(*args, **kwargs):  # the real request; the test learns that loading has begun
        answer = original_bulk(*args, **kwargs)
        loaded.set()
        return answer

    backend.client.bulk = bulk_then_signal
    outcome: dict = {}

    node_gone = threading.Event()

    def paced():  # the first batches, then the rest of the load once the node has gone
        for number, batch in enumerate(stream(*to_tables(personas), rows_per_batch=500)):
            if number == 3:
                node_gone.wait(120)
            yield batch

    def publish() -> None:
        try:
            outcome["report"] = backend.publish(paced())
        except BaseException as error:  # reported below
            outcome["error"] = error

    try:
        publisher = threading.Thread(target=publish)
        publisher.start()
        assert loaded.wait(60)
        assert opensearch.stop_node(cluster, 3)  # a node leaves while the build loads
        assert publisher.is_alive()  # ... and the load was still going when it had gone
        node_gone.set()
        publisher.join(300)
        assert "error" not in outcome, outcome.get("error")
        report = outcome["report"]
        assert (report.failed, report.document_count) == ({}, len(personas))
        for query in all_queries()[::9]:
            ranking = reference_ranking(personas, query, weights)
            check_answer(personas, ranking, query, backend.search(query, weights), embedded.search(query, weights))
    finally:
        backend.client.indices.delete(index=f"{backend.alias}*", ignore_unavailable=True)


@pytest.mark.parametrize("nodes", ["0", "-1", "three"])
def test_services_up_refuses_a_cluster_of_no_nodes(nodes: str, capsys):
    from persona_assets.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["services", "up", "--opensearch-nodes", nodes])
    assert exit_info.value.code == 2
    assert "--opensearch-nodes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 1 node"):
        opensearch.start(Path("/nonexistent"), nodes=0)
