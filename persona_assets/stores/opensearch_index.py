"""The OpenSearch segment-search backend: one physical index per build behind an atomically swapped alias.

The concerns live apart: the client (URL, TLS, a cluster's nodes) in ``opensearch_client``, the
mapping and the documents in ``opensearch_documents``, the bulk pipeline in ``opensearch_bulk``, the
ranking in ``opensearch_search``. This module runs the build lifecycle.

Publishing. Every publish creates ``<alias>-<build_id>`` (refresh off while loading; its replicas, if any,
from the start, so that a node leaving a cluster mid-load loses no document: a replica takes over),
streams the persona batches into it (each batch checked, encoded and sent while the next is read; a
bounded number of ``_bulk`` requests in flight; failed documents retried with back-off), refreshes,
restores the settings, and then moves the alias with one ``_aliases`` call (remove from the old indices
+ add to the new one). Queries through the alias see the old build or the new one, never a
half-loaded index. Old builds of this alias are deleted afterwards. Documents that still fail are
reported in :attr:`PublishReport.failed`; if more than ``max_failed_fraction`` of them fail — or the
stream turns out to be invalid — the new index is dropped and the old build stays live.

An upsert streams its personas the same way into the live index (``_id`` = ext_id overwrites),
deletes the removed users and refreshes.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from persona_assets.query.request import MAX_WINDOW, SegmentQuery
from persona_assets.query.scoring import ScoreWeights
from persona_assets.stores.opensearch_bulk import BulkLoader, LoadReport
from persona_assets.stores.opensearch_client import client_from_url, redact_url, waiting
from persona_assets.stores.opensearch_documents import (
    FORMAT,
    BulkDocuments,
    KeyLiterals,
    encode_batch,
    index_mapping,
    lookalike_mapping,
)
from persona_assets.stores.opensearch_lookalikes import key_frequencies, lookalike_search
from persona_assets.stores.opensearch_search import IndexMissing, RankWindow, search_alias
from persona_assets.stores.persona_stream import checked_batches, persona_batches_from_hand_off
from persona_assets.stores.search_backend import (
    IndexNotBuiltError,
    KeyFrequencies,
    Lookalike,
    LookalikeSearch,
    PersonaBatches,
    PersonaHandOff,
    PublishReport,
    SearchHits,
)

__all__ = ["OpenSearchBackend"]

logger = logging.getLogger(__name__)

_BUILD_RE_TEMPLATE = r"{alias}-[0-9]{{8}}t[0-9]{{12}}z-[0-9a-f]{{6}}"
_STALE_BUILD_SECONDS = 24 * 3600


def _encoded(personas: PersonaBatches) -> Iterator[BulkDocuments]:
    """Checked, then encoded, batch by batch (lazily: the bulk pipeline pulls as it makes room)."""
    key_literals = KeyLiterals()
    for batch in checked_batches(personas):
        yield encode_batch(batch, key_literals)


class OpenSearchBackend:
    """Segment search in OpenSearch (see the module docstring for the design).

    ``url``: ``http(s)://[user:password@]host:port``; ``PERSONA_OPENSEARCH_VERIFY_CERTS`` (true/false)
    and ``PERSONA_OPENSEARCH_CA_CERTS`` (a CA bundle path) apply to https. ``alias``: the name
    queries go through; builds are ``<alias>-<build_id>``. ``bulk_chunk``: documents per ``_bulk``
    request. ``max_retries``: rounds of retries for documents that fail. ``shards``, ``replicas``: of each
    new build (one node with two or more cores answers a query about a third faster from two shards:
    each is searched on a core of its own). ``client``: an existing
    ``opensearchpy.OpenSearch`` (then ``url`` is only used in messages).
    """

    name = "opensearch"

    #: Concurrent ``_bulk`` requests (as many more wait queued; the encoder waits beyond that).
    bulk_threads: int = 3
    #: Seconds before the first retry round; doubled for each further round.
    retry_backoff: float = 0.5
    #: More failed documents than this share of the build: the new build is dropped, the old one stays live.
    max_failed_fraction: float = 0.1
    #: The ranking guarantee: no persona left out may score more than this above a returned one.
    rank_tolerance: float = 1e-3
    #: The first candidate window is ``overfetch × (from + size) + 10`` (only ``from + size`` when nothing is scored).
    overfetch: float = 1.25
    #: Candidates fetched at most per query (at least ``from + size``); beyond it the guarantee is logged as unproven.
    window_cap: int = MAX_WINDOW
    #: Seconds one ``_bulk`` request may take.
    bulk_timeout: float = 120.0
    #: Seconds a new build with replicas may take to have an active primary of every shard.
    health_timeout: float = 300.0

    def __init__(
        self,
        url: str,
        alias: str = "persona_personas",
        *,
        bulk_chunk: int = 1000,
        max_retries: int = 4,
        shards: int = 2,
        replicas: int = 0,
        verify_certs: bool = True,
        ca_certs: str | None = None,
        client: Any = None,
    ) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.+-]*", alias or "") or alias in (".", ".."):
            raise ValueError(f"OpenSearch alias {alias!r}: use lower-case letters, digits, '_', '-', '.', '+'")
        if bulk_chunk < 1:
            raise ValueError(f"bulk_chunk must be at least 1, got {bulk_chunk}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        if shards < 1 or replicas < 0:
            raise ValueError(f"an OpenSearch build needs shards >= 1 and replicas >= 0, got {shards} and {replicas}")
        self.url = url
        self.alias = alias
        self.bulk_chunk = bulk_chunk
        self.max_retries = max_retries
        #: Primary shards and replicas of each new build (replicas are 0 while loading).
        self.shards, self.replicas = shards, replicas
        self.client = client if client is not None else client_from_url(url, verify_certs, ca_certs)
        self._build_re = re.compile(_BUILD_RE_TEMPLATE.format(alias=re.escape(alias)))

    def __repr__(self) -> str:
        return f"OpenSearchBackend({redact_url(self.url)!r}, alias={self.alias!r})"

    # ------------------------------------------------------------------ publish

    def index_name(self, build_id: str) -> str:
        return f"{self.alias}-{build_id}"

    def _loader(self, index: str, *, require_alias: bool = False) -> BulkLoader:
        return BulkLoader(
            self.client,
            index,
            require_alias=require_alias,
            chunk_docs=self.bulk_chunk,
            threads=self.bulk_threads,
            max_retries=self.max_retries,
            retry_backoff=self.retry_backoff,
            timeout=self.bulk_timeout,
        )

    def publish_hand_off(self, hand_off: PersonaHandOff) -> PublishReport:
        """Documents are whole personas: the hand-off is streamed as such (``persona_stream``)."""
        return self.publish(persona_batches_from_hand_off(hand_off))

    def publish(self, personas: PersonaBatches) -> PublishReport:
        """Load every persona into a new physical index, swap the alias to it, delete the old builds."""
        started = time.perf_counter()
        build_id = datetime.now(UTC).strftime("%Y%m%dt%H%M%S%fz") + "-" + secrets.token_hex(3)
        index = self.index_name(build_id)
        loading = {"number_of_shards": self.shards, "number_of_replicas": self.replicas, "refresh_interval": "-1"}
        self.client.indices.create(
            index=index,
            body={"settings": {"index": {**loading, "max_result_window": MAX_WINDOW}}, "mappings": index_mapping()},
        )
        previous: list[str] = []
        try:
            if self.replicas:  # every shard's copies active before loading, so a replica can take over from then on
                self._wait_for_copies(index)
            loaded = self._loader(index).load(_encoded(personas))
            load_seconds = time.perf_counter() - started
            if loaded.documents and len(loaded.failed) > self.max_failed_fraction * loaded.documents:
                sample = dict(list(loaded.failed.items())[:3])
                raise RuntimeError(
                    f"OpenSearch build {index}: {len(loaded.failed):,} of {loaded.documents:,} personas could not "
                    f"be indexed (more than {self.max_failed_fraction:.0%}); the live build was kept. "
                    f"First errors: {sample}"
                )
            self.client.indices.refresh(index=index)
            self.client.indices.put_settings(index=index, body={"index": {"refresh_interval": None}})
            if self.replicas:
                self._wait_for_copies(index)
            document_count = int(self.client.count(index=index)["count"])
            previous = [name for name in self._alias_targets() if name != index]
            self._swap_alias(index, previous)
        except BaseException:
            # A swap whose answer was lost may still have happened: never delete the live build.
            if self._swap_happened(index):
                logger.warning("the alias swap to %s reported an error but took effect", index)
            else:
                try:
                    self.client.indices.delete(index=index, ignore=[404])
                except Exception as cleanup:  # keep the original error; a later publish deletes it (a day old)
                    logger.warning("could not delete the unpublished build %s: %s", index, cleanup)
                raise
        deleted = self._delete_old_builds(keep=index, previous=previous)
        seconds = time.perf_counter() - started
        if loaded.failed:
            logger.warning("OpenSearch build %s: %d persona(s) could not be indexed", index, len(loaded.failed))
        logger.info(
            "OpenSearch build %s live behind alias %s: %d documents in %.1fs",
            index,
            self.alias,
            document_count,
            seconds,
        )
        return PublishReport(
            build_id=build_id,
            document_count=document_count,
            failed=loaded.failed,
            details={
                "index": index,
                "load_seconds": round(load_seconds, 3),
                "seconds": round(seconds, 3),
                "docs_per_second": round(loaded.documents / seconds, 1) if seconds > 0 else 0.0,
                **self._retry_details(loaded),
                "deleted_indices": len(deleted),
            },
        )

    def _wait_for_copies(self, index: str) -> None:
        """Before loading and before the swap: every shard's primary active (health yellow), which a cluster
        that lost a node still reaches; then a short wait for the replicas (green), which it may not until
        the node is back."""
        health = self.client.cluster.health(
            index=index, wait_for_status="yellow", ignore=[408], **waiting(self.health_timeout)
        )
        if health.get("status") not in ("yellow", "green"):
            raise RuntimeError(
                f"OpenSearch build {index}: shards without an active copy after {self.health_timeout:g} s "
                f"(health {health.get('status')}); the live build was kept"
            )
        if health.get("status") != "green":
            health = self.client.cluster.health(index=index, wait_for_status="green", ignore=[408], **waiting(10))
            if health.get("status") != "green":
                logger.warning(
                    "OpenSearch build %s goes live with replicas missing (health %s: a node is away); the cluster "
                    "allocates them when it can",
                    index,
                    health.get("status"),
                )

    @staticmethod
    def _retry_details(loaded: LoadReport) -> dict[str, int]:
        return {"retry_rounds": loaded.retry_rounds, "retried_documents": loaded.retried_documents}

    def upsert(self, personas: PersonaBatches, removed: Sequence[str] = ()) -> PublishReport:
        """Index these personas into the live build (``_id`` = ext_id overwrites), delete ``removed``,
        and refresh it.

        Every write goes through the alias (``require_alias``), not to the build it pointed at when the
        refresh began: a rebuild that swaps the alias meanwhile and deletes the old build then gets the
        writes that come after the swap, and a write can never re-create the deleted build as an empty,
        unmapped index of its own (a late write to a deleted index's name would).
        """
        if self.live_index() is None:
            raise self._not_built()
        self._add_new_fields()
        loaded = self._loader(self.alias, require_alias=True).load(_encoded(personas))
        if removed:
            from opensearchpy import helpers

            helpers.bulk(
                self.client,
                ({"_op_type": "delete", "_index": self.alias, "_id": ext_id} for ext_id in removed),
                raise_on_error=False,
            )
        from opensearchpy.exceptions import NotFoundError

        try:
            self.client.indices.refresh(index=self.alias)
            document_count = int(self.client.count(index=self.alias)["count"])
        except NotFoundError:  # the alias went away while we wrote: nothing was created in its place
            raise self._not_built() from None
        return PublishReport(
            build_id=self.live_index() or self.alias,
            document_count=document_count,
            failed=loaded.failed,
            details=self._retry_details(loaded),
        )

    def _add_new_fields(self) -> None:
        """A build of an older format gets the fields documents now carry (its strict mapping would refuse
        them); it keeps its format, so lookalikes still ask for a rebuild."""
        from opensearchpy import NotFoundError

        try:
            for mapping in self.client.indices.get_mapping(index=self.alias).values():
                if (mapping["mappings"].get("_meta") or {}).get("persona_format", 0) < FORMAT:
                    self.client.indices.put_mapping(index=self.alias, body=lookalike_mapping())
        except NotFoundError:
            raise self._not_built() from None

    # ------------------------------------------------------------------ builds and the alias

    def _alias_targets(self) -> list[str]:
        from opensearchpy import NotFoundError

        try:
            return sorted(self.client.indices.get_alias(name=self.alias))
        except NotFoundError:
            return []

    def _swap_alias(self, index: str, previous: list[str]) -> None:
        """Point the alias at ``index`` and away from ``previous`` in one atomic ``_aliases`` call."""
        actions: list[dict[str, Any]] = []
        if previous:
            actions.append({"remove": {"indices": previous, "alias": self.alias}})
        actions.append({"add": {"index": index, "alias": self.alias}})
        self.client.indices.update_aliases(body={"actions": actions})

    def _swap_happened(self, index: str) -> bool:
        try:
            return self._alias_targets() == [index]
        except Exception:
            return False

    def _delete_old_builds(self, *, keep: str, previous: list[str]) -> list[str]:
        """Delete the builds the alias left, and abandoned builds of this alias older than a day."""
        from opensearchpy import NotFoundError

        doomed = [name for name in previous if self._build_re.fullmatch(name)]
        for name in previous:
            if name not in doomed:
                logger.warning(
                    "alias %s pointed at %s, which is not one of its builds; left in place", self.alias, name
                )
        try:
            listing = self.client.indices.get(
                index=f"{self.alias}-*",
                params={"filter_path": "*.settings.index.creation_date,*.aliases"},
            )
        except NotFoundError:
            listing = {}
        now_ms = time.time() * 1000
        for name, info in (listing or {}).items():
            if name == keep or name in doomed or not self._build_re.fullmatch(name) or info.get("aliases"):
                continue
            created = int(info.get("settings", {}).get("index", {}).get("creation_date", now_ms))
            if now_ms - created > _STALE_BUILD_SECONDS * 1000:
                doomed.append(name)
        deleted = []
        for name in doomed:
            try:
                self.client.indices.delete(index=name, ignore=[404])
                deleted.append(name)
            except Exception:
                logger.exception("could not delete the old build %s", name)
        return deleted

    def live_index(self) -> str | None:
        """The physical index behind the alias, or None before the first publish."""
        targets = self._alias_targets()
        return targets[0] if targets else None

    def document_count(self) -> int:
        from opensearchpy import NotFoundError

        try:
            return int(self.client.count(index=self.alias)["count"])
        except NotFoundError:
            raise self._not_built() from None

    def _not_built(self) -> IndexNotBuiltError:
        return IndexNotBuiltError(
            f"no OpenSearch build behind alias {self.alias!r} at {redact_url(self.url)}; "
            "materialise the persona_index asset first"
        )

    # ------------------------------------------------------------------ search

    def key_frequencies(self, keys: Mapping[str, Sequence[str]]) -> KeyFrequencies:
        from opensearchpy import NotFoundError

        documents = self.document_count()
        try:
            return key_frequencies(self.client, self.alias, keys, documents)
        except NotFoundError:
            raise self._not_built() from None

    def lookalikes(self, search: LookalikeSearch) -> list[Lookalike]:
        """Exact similarities in exact order (``opensearch_lookalikes``)."""
        from opensearchpy import NotFoundError

        try:
            return lookalike_search(self.client, self.alias, search)
        except NotFoundError:
            raise self._not_built() from None

    def search(self, query: SegmentQuery, weights: ScoreWeights | None = None) -> SearchHits:
        """Rank the personas passing the gender filter; exact scores, a valid top-k within ``rank_tolerance``."""
        window = RankWindow(tolerance=self.rank_tolerance, overfetch=self.overfetch, cap=self.window_cap)
        try:
            return search_alias(self.client, self.alias, query, weights or ScoreWeights(), window)
        except IndexMissing:
            raise self._not_built() from None
