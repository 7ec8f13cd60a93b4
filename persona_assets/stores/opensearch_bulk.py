"""Bulk loading into OpenSearch: a bounded pipeline of ``_bulk`` requests, with retries and per-user failures.

The caller's thread encodes persona batches into :class:`~persona_assets.stores.opensearch_documents.BulkDocuments`
while ``threads`` workers send their chunks. At most ``2 × threads`` chunks are in flight or queued:
when the pipeline is full the encoder waits for the oldest, so memory holds a few batches whatever the
size of the stream, and the encoding of the next batch overlaps the node's indexing of the previous.

A chunk is ``chunk_docs`` documents (and at most ``max_chunk_bytes``), sent as one contiguous slice of
its batch's lines. Documents that fail — refused by the node, or in a request that failed as a whole
(timeout, 429, connection reset) — are retried by the same worker after an exponential back-off, in
smaller and smaller requests (``chunk_docs / 8^round``), so that a document failing a whole request is
isolated from its neighbours. What still fails after ``max_retries`` rounds is reported per ext_id
with its last error; ``_id`` = ext_id, so a retry never duplicates a document.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from persona_assets.stores.opensearch_documents import BulkDocuments

__all__ = ["BulkLoader", "LoadReport", "error_text"]

logger = logging.getLogger(__name__)

_RESPONSE_FILTER = "errors,items.*.status,items.*.error"


def error_text(error: Any) -> str:
    """A node's error (a dict with type/reason/caused_by, or an exception) as one short line."""
    if isinstance(error, dict):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        if isinstance(cause, dict):
            text += f" (caused by {cause.get('type', '')}: {cause.get('reason', '')})"
        return text[:1000]
    return str(error)[:1000]


@dataclass
class LoadReport:
    """What a load did: documents offered, the ones that failed (ext_id → last error), and the retries."""

    documents: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    retry_rounds: int = 0
    retried_documents: int = 0


@dataclass(frozen=True)
class _ChunkOutcome:
    failed: dict[str, str]
    rounds: int
    retried: int


class BulkLoader:
    """Sends persona documents into one physical index (see the module docstring)."""

    def __init__(
        self,
        client: Any,
        index: str,
        *,
        chunk_docs: int,
        threads: int,
        max_retries: int,
        retry_backoff: float,
        timeout: float,
        max_chunk_bytes: int = 50 * 1024 * 1024,
        require_alias: bool = False,
    ) -> None:
        self.client = client
        self.index = index
        # ``index`` is an alias, and a write must never create an index by that name (``require_alias``).
        self.require_alias = require_alias
        self.chunk_docs = chunk_docs
        self.threads = max(1, threads)
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.timeout = timeout
        self.max_chunk_bytes = max_chunk_bytes

    def load(self, batches: Iterable[BulkDocuments]) -> LoadReport:
        """Send every document of ``batches`` (encoded lazily, as the pipeline makes room)."""
        report = LoadReport()
        in_flight: deque[Future[_ChunkOutcome]] = deque()
        with ThreadPoolExecutor(self.threads, thread_name_prefix=f"bulk-{self.index}") as pool:
            try:
                for docs in batches:
                    report.documents += len(docs) + len(docs.refused)
                    report.failed.update(docs.refused)
                    for start, stop in self._chunks(docs):
                        if len(in_flight) >= 2 * self.threads:
                            self._collect(in_flight.popleft(), report)
                        in_flight.append(pool.submit(self._send_with_retries, docs, start, stop))
                while in_flight:
                    self._collect(in_flight.popleft(), report)
            finally:
                for future in in_flight:
                    future.cancel()
        return report

    @staticmethod
    def _collect(future: Future[_ChunkOutcome], report: LoadReport) -> None:
        outcome = future.result()
        report.failed.update(outcome.failed)
        report.retry_rounds = max(report.retry_rounds, outcome.rounds)
        report.retried_documents += outcome.retried

    def _chunks(self, docs: BulkDocuments) -> Iterable[tuple[int, int]]:
        """``[start, stop)`` ranges of at most ``chunk_docs`` documents and ``max_chunk_bytes`` (one at least)."""
        offsets = docs.byte_offsets()
        start = 0
        while start < len(docs):
            stop = min(start + self.chunk_docs, len(docs))
            while stop - start > 1 and offsets[stop] - offsets[start] > self.max_chunk_bytes:
                stop = start + (stop - start) // 2
            yield start, stop
            start = stop

    def _send_with_retries(self, docs: BulkDocuments, start: int, stop: int) -> _ChunkOutcome:
        failed = self._send(docs, list(range(start, stop)), contiguous=True)
        rounds = retried = 0
        for attempt in range(1, self.max_retries + 1):
            if not failed:
                break
            delay = self.retry_backoff * 2 ** (attempt - 1)
            logger.warning(
                "OpenSearch index %s: %d document(s) failed; retry %d/%d in %.2fs (e.g. %s)",
                self.index,
                len(failed),
                attempt,
                self.max_retries,
                delay,
                next(iter(failed.values())),
            )
            time.sleep(delay)
            rounds, retried = attempt, retried + len(failed)
            positions, size, failed = sorted(failed), max(1, self.chunk_docs // 8**attempt), {}
            for i in range(0, len(positions), size):
                failed |= self._send(docs, positions[i : i + size], contiguous=False)
        ext_ids = docs.ext_ids
        return _ChunkOutcome({ext_ids[p].as_py(): error for p, error in failed.items()}, rounds, retried)

    def _send(self, docs: BulkDocuments, positions: list[int], *, contiguous: bool) -> dict[int, str]:
        """One ``_bulk`` request; returns position → error of the documents that failed."""
        from opensearchpy.exceptions import TransportError

        body = docs.body(positions[0], positions[-1] + 1) if contiguous else docs.body_of(positions)
        try:
            only_alias = {"require_alias": "true"} if self.require_alias else {}
            response = self.client.bulk(
                body=body, index=self.index, filter_path=_RESPONSE_FILTER, request_timeout=self.timeout, **only_alias
            )
        except TransportError as error:
            return dict.fromkeys(positions, f"request failed: {error_text(error)}")
        if not response.get("errors"):
            return {}
        failed = {}
        for position, item in zip(positions, response["items"], strict=True):
            (_op, info), *_ = item.items()
            if "error" in info:
                failed[position] = error_text(info["error"])
        return failed
