"""The OpenSearch segment-search backend: one physical index per build behind an atomically swapped alias.

Mapping (constant size, whatever the number of brands, generic names or categories)::

    dynamic: strict
    ext_id, gender            keyword
    city, brand, generic, category            rank_features: escaped key -> value, truncated by Lucene
    city_lo, brand_lo, generic_lo, category_lo rank_features: escaped key -> value - truncated value
    exact                     object, "enabled": false: {dimension: {escaped key: exact float64}}
                              for the five dimensions (ecomm too), kept in _source for reporting

The rank feature fields are left out of the stored ``_source``; they exist only as postings.
Eleven fields, however many keys the personas carry: the legacy design (one numeric field
per key) had to keep raising ``index.mapping.total_fields.limit``.

Keys are escaped so that any string is a usable feature name and ``_source`` path:
``%`` → ``%25``, ``.`` → ``%2E`` (the rank_feature query splits ``field.feature`` on the
last dot), ``*`` → ``%2A`` (a wildcard in ``_source`` filters); the empty key is ``%``.
:func:`unescape_key` reverses :func:`escape_key`.

Ranking. A query is a ``bool`` with a ``filter`` (the gender term, or ``match_all``) and,
for each component given (tier, brand, generic name, category) with a weight above 0, two
``should`` clauses ``rank_feature`` (``linear``, boost = the weight) on ``<dim>`` and
``<dim>_lo``; the constants of the components not given (C = 1/3, B = G = K = 1) are the
same for everyone and are added client-side. Hits are sorted ``_score`` desc, ``ext_id`` asc.

Precision. Lucene keeps a feature value with 8 mantissa bits (the float's bits >> 15),
a relative truncation error below 2^-8, too coarse for the contract's 1e-3 ranking
tolerance when scores are near 1. Each value v is therefore indexed as ``hi`` = v truncated
to 8 mantissa bits (exact in Lucene) plus ``lo`` = v - hi (itself truncated, error below
2^-8 of lo < 2^-8 of v), so a component is approximated to about 2^-16 of its value. Reported
scores never use the approximation: every fetched candidate is re-scored with
:func:`~persona_assets.query.scoring.score_persona` from the exact float64 values in
``_source`` (bit-identical to the embedded index). The candidate window starts at
1.25 × ``from + size`` + 10; it is widened (``search_after``, on the same physical index) until no
persona left out can score more than ``rank_tolerance`` (the contract's 1e-3) above the
k-th returned one: an unfetched persona has an approximate score at most the window's last
one, so its exact score is at most that × (1 + 2^-14) plus the constants. With the hi/lo split
the first window settles the contract's 1e-3 in practice; widening matters for a smaller
``rank_tolerance`` and stops at ``window_cap`` candidates (at least ``from + size``) with a
warning in the log. Exact ties between personas whose components differ (0.35·1 + 0 vs
0.15·1 + 0.20·1) may be cut at the page boundary differently from the embedded index (allowed:
the left-out persona scores no more than the returned one). A query with nothing to rank by
(no criteria, or only zero weights) is the ``ext_id`` order: ``from``/``size`` (the contract keeps
``from + size`` within 10,000, ``max_result_window``). Otherwise a page costs O(``from + size``)
fetched candidates.

Publishing. Every publish creates ``<alias>-<build_id>`` (replicas 0, refresh off while
loading), bulk-loads it with ``opensearchpy.helpers.parallel_bulk`` (documents serialised
column-wise with pyarrow; ``_id`` = ext_id, so a retry never duplicates), retries failed
documents with exponential back-off in smaller and smaller requests (a document that fails a
whole request is isolated from its neighbours; an ext_id over OpenSearch's 512-byte id limit
fails alone without being sent), refreshes,
restores the settings, and then moves the alias with one ``_aliases`` call (remove from the
old indices + add to the new one). Queries through the alias see the old build or the new
one, never a half-loaded index. Old builds of this alias are deleted afterwards. Documents
that still fail are reported in :attr:`PublishReport.failed`; if more than
``max_failed_fraction`` of them fail, the new index is dropped and the old build stays live.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from persona_assets.query.request import MAX_WINDOW, SegmentQuery
from persona_assets.query.scoring import NO_TIER_C, ScoreWeights, score_persona
from persona_assets.stores.arrow_inputs import as_table, first, first_repeat, float_column, string_column
from persona_assets.stores.embedded_index import DIMENSIONS, GENDERS, Hit, IndexNotBuiltError, SearchHits
from persona_assets.stores.relational import MAX_NAME_LENGTH
from persona_assets.stores.search_backend import PublishReport

__all__ = [
    "APPROX_RELATIVE_ERROR",
    "SCORED_DIMENSIONS",
    "Documents",
    "OpenSearchBackend",
    "build_documents",
    "escape_key",
    "index_mapping",
    "redact_url",
    "unescape_key",
]

logger = logging.getLogger(__name__)

#: The dimensions a query scores, with the request component they feed.
SCORED_DIMENSIONS = ("city", "brand", "generic", "category")
LO_SUFFIX = "_lo"
EXACT_FIELD = "exact"
VERIFY_CERTS_ENV = "PERSONA_OPENSEARCH_VERIFY_CERTS"
CA_CERTS_ENV = "PERSONA_OPENSEARCH_CA_CERTS"

#: Upper bound of (exact - approximate) / approximate for the variable part of a score: the hi/lo
#: split leaves < 2^-16 per component, float32 products and sums a few 2^-24; 2^-14 is generous.
APPROX_RELATIVE_ERROR = 2.0**-14
#: Absolute slack: values below float32's smallest normal (1.2e-38) cannot be rank features.
_APPROX_ABSOLUTE_ERROR = 1e-12
_F32_MIN_NORMAL = float(np.finfo(np.float32).tiny)
_F32_MAX = float(np.finfo(np.float32).max)
#: Lucene refuses terms (feature names) longer than this many UTF-8 bytes.
_MAX_TERM_BYTES = 32766
#: OpenSearch refuses document ids longer than this many UTF-8 bytes (for the whole _bulk request).
_MAX_ID_BYTES = 512
#: search_after page size, and the index's max_result_window (the contract's largest from + size).
_PAGE_MAX = MAX_WINDOW
_BUILD_RE_TEMPLATE = r"{alias}-[0-9]{{8}}t[0-9]{{12}}z-[0-9a-f]{{6}}"
_STALE_BUILD_SECONDS = 24 * 3600
_ESCAPES = {"%": "%25", ".": "%2E", "*": "%2A"}
_ESCAPE_RE = re.compile(r"[%.*]")
_UNESCAPE_RE = re.compile(r"%(25|2E|2A)")
_UNESCAPES = {"25": "%", "2E": ".", "2A": "*"}
_NEEDS_JSON_ESCAPE = r'["\\\x00-\x1f]'
_SORT = [{"_score": {"order": "desc"}}, {"ext_id": {"order": "asc"}}]


# --------------------------------------------------------------------------- keys and mapping


def escape_key(key: str) -> str:
    """A key as a feature name / ``_source`` path element: no ``.`` or ``*``; reversible."""
    if key == "":
        return "%"
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], key)


def unescape_key(name: str) -> str:
    """The key :func:`escape_key` turned into ``name``."""
    if name == "%":
        return ""
    return _UNESCAPE_RE.sub(lambda m: _UNESCAPES[m.group(1)], name)


def index_mapping() -> dict[str, Any]:
    """The mapping of every build: the same eleven fields whatever the data."""
    properties: dict[str, Any] = {
        "ext_id": {"type": "keyword"},
        "gender": {"type": "keyword"},
    }
    for dim in SCORED_DIMENSIONS:
        properties[dim] = {"type": "rank_features"}
        properties[dim + LO_SUFFIX] = {"type": "rank_features"}
    properties[EXACT_FIELD] = {"type": "object", "enabled": False}
    rank_fields = [name for name in properties if properties[name]["type"] == "rank_features"]
    return {
        "dynamic": "strict",
        "_source": {"excludes": rank_fields},
        "_meta": {"persona_format": 1},
        "properties": properties,
    }


def _env_flag(value: str | None, default: bool) -> bool:
    if value is None or not value.strip():
        return default
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{VERIFY_CERTS_ENV}={value!r}: expected true/false")


def redact_url(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _client_from_url(url: str) -> Any:
    """An ``OpenSearch`` client; credentials and TLS come from the URL (plus two optional variables)."""
    from opensearchpy import OpenSearch

    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"OpenSearch URL {redact_url(url)!r}: expected http(s)://[user:password@]host[:port]")
    host: dict[str, Any] = {"host": parts.hostname, "port": parts.port or (443 if parts.scheme == "https" else 9200)}
    if parts.path and parts.path != "/":
        host["url_prefix"] = parts.path
    kwargs: dict[str, Any] = {"hosts": [host], "timeout": 60, "pool_maxsize": 8}
    if parts.username is not None or parts.password is not None:
        kwargs["http_auth"] = (
            urllib.parse.unquote(parts.username or ""),
            urllib.parse.unquote(parts.password or ""),
        )
    if parts.scheme == "https":
        verify = _env_flag(os.environ.get(VERIFY_CERTS_ENV), True)
        kwargs.update(use_ssl=True, verify_certs=verify, ssl_show_warn=verify)
        ca_certs = os.environ.get(CA_CERTS_ENV)
        if ca_certs:
            kwargs["ca_certs"] = ca_certs
    return OpenSearch(**kwargs)


# --------------------------------------------------------------------------- documents


def _concat(*parts: Any, skip_nulls: bool = False) -> pa.Array:
    """Element-wise concatenation of large_string arrays and str constants (a null part: null, or '' when ``skip_nulls``)."""
    args = [pa.scalar(part, pa.large_string()) if isinstance(part, str) else part for part in parts]
    empty = pa.scalar("", pa.large_string())
    if skip_nulls:
        return pc.binary_join_element_wise(*args, empty, null_handling="replace", null_replacement="")
    return pc.binary_join_element_wise(*args, empty)


def _json_strings(values: pa.Array) -> pa.Array:
    """Each string as a JSON string literal (quotes included)."""
    needs = pc.match_substring_regex(values, _NEEDS_JSON_ESCAPE)
    quoted = _concat('"', values, '"')
    if not pc.any(needs).as_py():
        return quoted
    plain = quoted.to_pylist()
    for i in np.flatnonzero(needs.to_numpy(zero_copy_only=False)).tolist():
        plain[i] = json.dumps(values[i].as_py(), ensure_ascii=False)
    return pa.array(plain, type=pa.large_string())


def _group_objects(group_ids: np.ndarray, fragments: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Join consecutive fragments of equal (sorted) group id with ','; return (group id, joined)."""
    if group_ids.size == 0:
        return np.zeros(0, dtype=np.int64), pa.array([], type=pa.large_string())
    starts = np.concatenate(([0], np.flatnonzero(group_ids[1:] != group_ids[:-1]) + 1))
    offsets = np.concatenate((starts, [group_ids.size])).astype(np.int64)
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), fragments)
    return group_ids[starts], pc.binary_join(lists, pa.scalar(",", pa.large_string()))


def _scatter(rows: np.ndarray, strings: pa.Array, n_users: int) -> pa.Array:
    """A length-``n_users`` array holding ``strings[i]`` at ``rows[i]`` and null elsewhere."""
    index = np.full(n_users, -1, dtype=np.int64)
    index[rows] = np.arange(rows.size, dtype=np.int64)
    return strings.take(pa.array(index, mask=index < 0))


@dataclass
class Documents:
    """The bulk sources of one build: ``sources[i]`` is the JSON document of ``ext_ids[i]``."""

    ext_ids: list[str]
    sources: pa.Array  # large_string, one JSON document per user (same order as ext_ids)

    def __len__(self) -> int:
        return len(self.ext_ids)


def _truncate_mantissa(values: np.ndarray, bits: int = 8) -> np.ndarray:
    """``values`` (float64, ≥ 0) with only the top ``bits`` mantissa bits kept (never above the value)."""
    raw = values.view(np.uint64)
    mask = np.uint64(~((1 << (52 - bits)) - 1) & 0xFFFFFFFFFFFFFFFF)
    return (raw & mask).view(np.float64)


def build_documents(users: pd.DataFrame | pa.Table, affinities: pd.DataFrame | pa.Table) -> Documents:
    """Validate the inputs (as the embedded index does) and serialise one JSON document per user, column-wise."""
    table = as_table(users, "users", ("ext_id", "gender"))
    ext = string_column(table, "users", "ext_id").combine_chunks()
    gender = string_column(table, "users", "gender").combine_chunks()
    n_users = len(ext)
    if pc.count_distinct(ext).as_py() != n_users:
        counts = pc.value_counts(ext)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise ValueError(f"users: duplicate ext_id {dup!r}")
    known = pc.is_in(gender, value_set=pa.array(GENDERS, type=pa.large_string()))
    if n_users and not pc.all(known).as_py():
        raise ValueError(f"users: gender {first(gender, pc.invert(known))!r} is not one of {', '.join(GENDERS)}")

    aff = as_table(affinities, "affinities", ("ext_id", "dimension", "key", "value"))
    a_ext = string_column(aff, "affinities", "ext_id").combine_chunks()
    a_dim = string_column(aff, "affinities", "dimension").combine_chunks()
    a_key = string_column(aff, "affinities", "key").combine_chunks()
    a_val = float_column(aff, "affinities", "value").combine_chunks()
    row_arr = pc.index_in(a_ext, value_set=ext)
    if row_arr.null_count:
        raise ValueError(
            f"affinities: ext_id {first(a_ext, pc.is_null(row_arr))!r} is not in users "
            f"({row_arr.null_count} affinity row(s) without a user)"
        )
    dim_arr = pc.index_in(a_dim, value_set=pa.array(DIMENSIONS, type=pa.large_string()))
    if dim_arr.null_count:
        raise ValueError(
            f"affinities: dimension {first(a_dim, pc.is_null(dim_arr))!r} is not one of {', '.join(DIMENSIONS)}"
        )
    values = a_val.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if values.size and not (np.isfinite(values).all() and (values >= 0).all() and (values <= _F32_MAX).all()):
        raise ValueError("affinities: column 'value' must hold finite numbers >= 0 (and within float32 range)")

    encoded = pc.dictionary_encode(a_key)
    key_vocab = encoded.dictionary
    key_idx = encoded.indices.to_numpy().astype(np.int64)
    rows = row_arr.to_numpy().astype(np.int64)
    dims = dim_arr.to_numpy().astype(np.int64)
    n_dims = len(DIMENSIONS)
    group = rows * n_dims + dims
    composite = group * max(len(key_vocab), 1) + key_idx
    order, i = first_repeat(composite)
    if i is not None:
        raise ValueError(
            f"affinities: duplicate (ext_id, dimension, key) ({ext[int(rows[i])].as_py()!r}, "
            f"{DIMENSIONS[int(dims[i])]!r}, {key_vocab[int(key_idx[i])].as_py()!r})"
        )
    group = group[order]
    dims = dims[order]
    values = values[order]

    # Escaped keys as JSON literals, once per distinct key.
    vocab_json = pa.array(
        [json.dumps(escape_key(k), ensure_ascii=False) for k in key_vocab.to_pylist()], type=pa.large_string()
    )
    key_json = vocab_json.take(pa.array(key_idx[order]))
    exact_frag = _concat(key_json, ":", pc.cast(pa.array(values), pa.large_string()))

    # The rank features: hi = the value with 8 mantissa bits (what Lucene keeps exactly), lo = the rest.
    hi = _truncate_mantissa(values)
    lo = (values - hi).astype(np.float32)
    scored = dims != DIMENSIONS.index("ecomm")
    keep_hi = scored & (hi >= _F32_MIN_NORMAL)
    keep_lo = scored & (lo >= _F32_MIN_NORMAL)
    hi_frag = _concat(key_json.filter(pa.array(keep_hi)), ":", pc.cast(pa.array(hi[keep_hi]), pa.large_string()))
    lo_frag = _concat(key_json.filter(pa.array(keep_lo)), ":", pc.cast(pa.array(lo[keep_lo]), pa.large_string()))

    pieces: list[Any] = ['{"ext_id":', _json_strings(ext), ',"gender":"', gender, '"']
    for frags, mask, suffix in ((hi_frag, keep_hi, ""), (lo_frag, keep_lo, LO_SUFFIX)):
        g_ids, joined = _group_objects(group[mask], frags)
        g_rows, g_dims = g_ids // n_dims, g_ids % n_dims
        for dim in SCORED_DIMENSIONS:
            sel = g_dims == DIMENSIONS.index(dim)
            per_user = _scatter(g_rows[sel], joined.filter(pa.array(sel)), n_users)
            pieces.append(_concat(f',"{dim}{suffix}":{{', per_user, "}"))
    g_ids, joined = _group_objects(group, exact_frag)
    g_rows, g_dims = g_ids // n_dims, g_ids % n_dims
    pieces.append(f',"{EXACT_FIELD}":{{')
    for j, dim in enumerate(DIMENSIONS):
        sel = g_dims == j
        pieces.append(("" if j == 0 else ",") + f'"{dim}":{{')
        pieces.append(_scatter(g_rows[sel], joined.filter(pa.array(sel)), n_users))
        pieces.append("}")
    pieces.append("}}")
    sources = _concat(*pieces, skip_nulls=True)
    return Documents(ext_ids=ext.to_pylist(), sources=sources)


# --------------------------------------------------------------------------- backend


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        if isinstance(cause, dict):
            text += f" (caused by {cause.get('type', '')}: {cause.get('reason', '')})"
        return text[:1000]
    return str(error)[:1000]


class _BuildGone(Exception):
    """The physical index a paged search was reading has been swapped out and deleted."""


@dataclass(frozen=True)
class _Plan:
    body_query: dict[str, Any]
    includes: list[str]
    given: list[tuple[str, str, str]]  # (dimension, key, escaped key)
    constant: float  # the constant components' share of every score
    has_variable: bool


class OpenSearchBackend:
    """Segment search in OpenSearch (see the module docstring for the design).

    ``url``: ``http(s)://[user:password@]host:port``; ``PERSONA_OPENSEARCH_VERIFY_CERTS`` (true/false)
    and ``PERSONA_OPENSEARCH_CA_CERTS`` (a CA bundle path) apply to https. ``alias``: the name
    queries go through; builds are ``<alias>-<build_id>``. ``bulk_chunk``: documents per ``_bulk``
    request. ``max_retries``: rounds of retries for documents that fail. ``client``: an existing
    ``opensearchpy.OpenSearch`` (then ``url`` is only used in messages).
    """

    name = "opensearch"

    #: Concurrent ``_bulk`` requests (parallel_bulk threads).
    bulk_threads: int = 2
    #: Seconds before the first retry round; doubled for each further round.
    retry_backoff: float = 0.5
    #: More failed documents than this share of the build: the new build is dropped, the old one stays live.
    max_failed_fraction: float = 0.1
    #: The ranking guarantee: no persona left out may score more than this above a returned one.
    rank_tolerance: float = 1e-3
    #: The first candidate window is ``overfetch × (from + size) + 10`` (only ``from + size`` when nothing is scored).
    overfetch: float = 1.25
    #: Candidates fetched at most per query (at least ``from + size``); beyond it the guarantee is logged as unproven.
    window_cap: int = 10_000
    #: Primary shards and replicas of each build (replicas are 0 while loading).
    shards: int = 1
    replicas: int = 0
    #: Seconds one ``_bulk`` request may take.
    bulk_timeout: float = 120.0

    def __init__(
        self,
        url: str,
        alias: str = "persona_personas",
        *,
        bulk_chunk: int = 2000,
        max_retries: int = 4,
        client: Any = None,
    ) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.+-]*", alias or "") or alias in (".", ".."):
            raise ValueError(f"OpenSearch alias {alias!r}: use lower-case letters, digits, '_', '-', '.', '+'")
        if bulk_chunk < 1:
            raise ValueError(f"bulk_chunk must be at least 1, got {bulk_chunk}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        self.url = url
        self.alias = alias
        self.bulk_chunk = bulk_chunk
        self.max_retries = max_retries
        self.client = client if client is not None else _client_from_url(url)
        self._build_re = re.compile(_BUILD_RE_TEMPLATE.format(alias=re.escape(alias)))

    def __repr__(self) -> str:
        return f"OpenSearchBackend({redact_url(self.url)!r}, alias={self.alias!r})"

    # ------------------------------------------------------------------ publish

    def index_name(self, build_id: str) -> str:
        return f"{self.alias}-{build_id}"

    def publish(self, users: pd.DataFrame, affinities: pd.DataFrame) -> PublishReport:
        """Load every persona into a new physical index, swap the alias to it, delete the old builds."""
        started = time.perf_counter()
        docs = build_documents(users, affinities)
        serialise_seconds = time.perf_counter() - started
        build_id = datetime.now(UTC).strftime("%Y%m%dt%H%M%S%fz") + "-" + secrets.token_hex(3)
        index = self.index_name(build_id)
        self.client.indices.create(
            index=index,
            body={
                "settings": {
                    "index": {
                        "number_of_shards": self.shards,
                        "number_of_replicas": 0,
                        "refresh_interval": "-1",
                        "max_result_window": _PAGE_MAX,
                    }
                },
                "mappings": index_mapping(),
            },
        )
        previous: list[str] = []
        try:
            load_started = time.perf_counter()
            failed, retry_rounds, retried = self._load(index, docs)
            load_seconds = time.perf_counter() - load_started
            if len(docs) and len(failed) > self.max_failed_fraction * len(docs):
                sample = dict(list(failed.items())[:3])
                raise RuntimeError(
                    f"OpenSearch build {index}: {len(failed):,} of {len(docs):,} personas could not be indexed "
                    f"(more than {self.max_failed_fraction:.0%}); the live build was kept. First errors: {sample}"
                )
            self.client.indices.refresh(index=index)
            self.client.indices.put_settings(
                index=index,
                body={"index": {"refresh_interval": None, "number_of_replicas": self.replicas}},
            )
            if self.replicas:
                self.client.cluster.health(index=index, wait_for_status="green", timeout="300s")
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
                except Exception:  # keep the original error
                    logger.exception("could not delete the unpublished build %s", index)
                raise
        deleted = self._delete_old_builds(keep=index, previous=previous)
        seconds = time.perf_counter() - started
        if failed:
            logger.warning("OpenSearch build %s: %d persona(s) could not be indexed", index, len(failed))
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
            failed=failed,
            details={
                "index": index,
                "serialise_seconds": round(serialise_seconds, 3),
                "load_seconds": round(load_seconds, 3),
                "seconds": round(seconds, 3),
                "docs_per_second": round(len(docs) / seconds, 1) if seconds > 0 else 0.0,
                "retry_rounds": retry_rounds,
                "retried_documents": retried,
                "deleted_indices": len(deleted),
            },
        )

    def upsert(self, users: pd.DataFrame, affinities: pd.DataFrame, removed: Sequence[str] = ()) -> PublishReport:
        """Index these personas into the live build (``_id`` = ext_id overwrites), delete ``removed``,
        and refresh it."""
        index = self.live_index()
        if index is None:
            raise self._not_built()
        docs = build_documents(users, affinities)
        failed, retry_rounds, retried = self._load(index, docs) if len(docs) else ({}, 0, 0)
        if removed:
            from opensearchpy import helpers

            helpers.bulk(
                self.client,
                ({"_op_type": "delete", "_index": index, "_id": ext_id} for ext_id in removed),
                raise_on_error=False,
            )
        self.client.indices.refresh(index=index)
        return PublishReport(
            build_id=index,
            document_count=int(self.client.count(index=index)["count"]),
            failed=failed,
            details={"retry_rounds": retry_rounds, "retried_documents": retried},
        )

    @staticmethod
    def _actions(docs: Documents, positions: Sequence[int]) -> Iterator[tuple[dict[str, Any], str]]:
        """``(action, source)`` pairs for ``helpers`` (sources stay pre-serialised JSON strings)."""
        batch = 8192
        for start in range(0, len(positions), batch):
            part = positions[start : start + batch]
            if isinstance(part, range):
                texts = docs.sources.slice(part.start, len(part)).to_pylist()
            else:
                texts = docs.sources.take(pa.array(part, type=pa.int64())).to_pylist()
            for i, text in zip(part, texts, strict=True):
                yield {"index": {"_id": docs.ext_ids[i]}}, text

    def _bulk_round(
        self,
        index: str,
        docs: Documents,
        positions: Sequence[int],
        parallel: bool,
        chunk_size: int | None = None,
    ) -> dict[str, str]:
        """One pass of ``_bulk`` requests over ``positions``; returns ext_id → error of the documents that failed."""
        from opensearchpy import helpers

        options: dict[str, Any] = {
            "chunk_size": chunk_size or self.bulk_chunk,
            "max_chunk_bytes": 50 * 1024 * 1024,
            "expand_action_callback": lambda action: action,
            "raise_on_error": False,
            "raise_on_exception": False,
            "index": index,
            "request_timeout": self.bulk_timeout,
            "filter_path": "items.*._id,items.*.status,items.*.error",
        }
        if parallel and self.bulk_threads > 1:
            results = helpers.parallel_bulk(
                self.client,
                self._actions(docs, positions),
                thread_count=self.bulk_threads,
                queue_size=self.bulk_threads,
                **options,
            )
        else:
            results = helpers.streaming_bulk(self.client, self._actions(docs, positions), max_retries=0, **options)
        failed: dict[str, str] = {}
        for ok, item in results:
            if ok:
                continue
            (_op, info), *_ = item.items()
            ext_id = info.get("_id")
            if ext_id is None:  # cannot happen with our actions; keep it visible all the same
                logger.error("bulk failure without a document id: %s", str(info)[:500])
                continue
            failed[str(ext_id)] = _error_text(info.get("error", f"status {info.get('status')}"))
        return failed

    def _load(self, index: str, docs: Documents) -> tuple[dict[str, str], int, int]:
        """Bulk-load every document; retry the failed ones; return (failed, retry rounds, documents retried).

        An ext_id longer than OpenSearch's 512-byte ``_id`` limit would fail its whole ``_bulk``
        request (a request validation error), so such documents are not sent: they fail alone.
        Retry rounds send smaller and smaller requests (``bulk_chunk / 8^round``), so that any other
        document that fails a whole request is isolated from its neighbours.
        """
        too_long = {
            ext_id: f"ext_id is {len(ext_id.encode('utf-8'))} bytes long; OpenSearch document ids are at most {_MAX_ID_BYTES}"
            for ext_id in docs.ext_ids
            if len(ext_id) > _MAX_ID_BYTES // 4 and len(ext_id.encode("utf-8")) > _MAX_ID_BYTES
        }
        if too_long:
            sendable: Sequence[int] = [i for i, e in enumerate(docs.ext_ids) if e not in too_long]
        else:
            sendable = range(len(docs))
        failed = self._bulk_round(index, docs, sendable, parallel=True)
        rounds = retried = 0
        if failed:
            position = {ext_id: i for i, ext_id in enumerate(docs.ext_ids)}
            for attempt in range(1, self.max_retries + 1):
                if not failed:
                    break
                delay = self.retry_backoff * 2 ** (attempt - 1)
                logger.warning(
                    "OpenSearch build %s: %d document(s) failed; retry %d/%d in %.2fs (e.g. %s)",
                    index,
                    len(failed),
                    attempt,
                    self.max_retries,
                    delay,
                    next(iter(failed.values())),
                )
                time.sleep(delay)
                rounds += 1
                retried += len(failed)
                positions = sorted(position[ext_id] for ext_id in failed)
                chunk = max(1, self.bulk_chunk // 8**attempt)
                failed = self._bulk_round(index, docs, positions, parallel=False, chunk_size=chunk)
        return failed | too_long, rounds, retried

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
            if name == keep or name in doomed or not self._build_re.fullmatch(name):
                continue
            if info.get("aliases"):
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

    def _plan(self, query: SegmentQuery, w: ScoreWeights) -> _Plan:
        components = (
            ("city", query.city_tier, w.city, NO_TIER_C),
            ("brand", query.brand, w.brand, 1.0),
            ("generic", query.generic_name, w.generic, 1.0),
            ("category", query.category_id, w.category, 1.0),
        )
        should: list[dict[str, Any]] = []
        includes = ["gender"]
        given: list[tuple[str, str, str]] = []
        constant = 0.0
        for dim, key, weight, default in components:
            if key is None:
                constant += weight * default
                continue
            escaped = escape_key(key)
            given.append((dim, key, escaped))
            if len(key) > MAX_NAME_LENGTH:
                continue  # no stored persona has such a key (imports reject longer names): it scores 0
            includes.append(f"{EXACT_FIELD}.{dim}.{escaped}")
            if weight <= 0 or len(escaped.encode("utf-8")) > _MAX_TERM_BYTES:
                continue  # no score from it, or no document can hold such a feature
            for field in (dim, dim + LO_SUFFIX):
                should.append({"rank_feature": {"field": f"{field}.{escaped}", "linear": {}, "boost": weight}})
        gender_filter: dict[str, Any] = (
            {"match_all": {}} if query.gender is None else {"term": {"gender": query.gender}}
        )
        return _Plan(
            body_query={"bool": {"filter": [gender_filter], "should": should}},
            includes=includes,
            given=given,
            constant=constant,
            has_variable=bool(should),
        )

    def search(self, query: SegmentQuery, weights: ScoreWeights | None = None) -> SearchHits:
        """Rank the personas passing the gender filter; exact scores, a valid top-k within ``rank_tolerance``."""
        w = weights or ScoreWeights()
        plan = self._plan(query, w)
        for _attempt in range(5):
            try:
                return self._search_once(plan, query, w)
            except _BuildGone:
                continue  # the alias moved on while we paged: start again on the new build
        raise RuntimeError(f"OpenSearch alias {self.alias!r} kept changing during a search")

    def _request(self, index: str, body: dict[str, Any], *, first: bool) -> dict[str, Any]:
        from opensearchpy import NotFoundError

        try:
            return self.client.search(index=index, body=body)
        except NotFoundError:
            if first:
                raise self._not_built() from None
            raise _BuildGone from None

    def _search_once(self, plan: _Plan, query: SegmentQuery, w: ScoreWeights) -> SearchHits:
        k = query.offset + query.size
        body: dict[str, Any] = {"query": plan.body_query, "track_total_hits": True}
        if query.size <= 0:
            response = self._request(self.alias, {**body, "size": 0}, first=True)
            return SearchHits(total=int(response["hits"]["total"]["value"]))
        if not plan.has_variable:
            return self._constant_page(plan, query, w)
        body.update(
            sort=_SORT,
            _source={"includes": plan.includes},
            size=min(math.ceil(self.overfetch * k) + 10, _PAGE_MAX),
        )
        response = self._request(self.alias, body, first=True)
        total = int(response["hits"]["total"]["value"])
        if query.offset >= total:
            return SearchHits(total=total)
        k = min(k, total)
        cap = max(self.window_cap, k)
        hits = response["hits"]["hits"]
        candidates: list[tuple[float, str, dict[str, float], str]] = []
        physical = hits[0]["_index"] if hits else self.alias
        self._score_hits(hits, plan, query, w, candidates)
        last_sort = hits[-1]["sort"] if hits else None
        while hits and len(candidates) < total:
            if len(candidates) >= k:
                candidates.sort(key=lambda c: (-c[0], c[1]))
                kth = candidates[k - 1][0]
                bound = plan.constant + float(last_sort[0]) * (1 + APPROX_RELATIVE_ERROR) + _APPROX_ABSOLUTE_ERROR
                if bound <= kth + self.rank_tolerance:
                    break
                if len(candidates) >= cap:
                    logger.warning(
                        "OpenSearch search %s: stopped at the window cap of %d candidates; a persona left out "
                        "may score up to %.3g above the last one returned (tolerance %.3g)",
                        query,
                        cap,
                        bound - kth,
                        self.rank_tolerance,
                    )
                    break
            size = min(_PAGE_MAX, cap - len(candidates), max(len(candidates), k - len(candidates)))
            page = {
                "query": plan.body_query,
                "sort": _SORT,
                "_source": {"includes": plan.includes},
                "size": max(size, 1),
                "search_after": last_sort,
                "track_total_hits": False,
            }
            hits = self._request(physical, page, first=False)["hits"]["hits"]
            if hits:
                self._score_hits(hits, plan, query, w, candidates)
                last_sort = hits[-1]["sort"]
        candidates.sort(key=lambda c: (-c[0], c[1]))
        page_hits = [
            Hit(ext_id=ext_id, score=score, components=components, gender=gender)
            for score, ext_id, components, gender in candidates[query.offset : query.offset + query.size]
        ]
        return SearchHits(total=total, hits=page_hits)

    def _constant_page(self, plan: _Plan, query: SegmentQuery, w: ScoreWeights) -> SearchHits:
        """Nothing to rank by: everyone passing the filter scores the same, so the page is the ext_id order
        (plain ``from``/``size``: the contract keeps ``from + size`` within ``max_result_window``)."""
        body = {
            "query": plan.body_query,
            "sort": [{"ext_id": {"order": "asc"}}],
            "track_total_hits": True,
            "from": query.offset,
            "size": query.size,
            "_source": {"includes": plan.includes},
        }
        response = self._request(self.alias, body, first=True)
        total = int(response["hits"]["total"]["value"])
        hits = response["hits"]["hits"]
        candidates: list[tuple[float, str, dict[str, float], str]] = []
        self._score_hits(hits, plan, query, w, candidates)
        candidates.sort(key=lambda c: (-c[0], c[1]))
        return SearchHits(
            total=total,
            hits=[Hit(ext_id=e, score=s, components=c, gender=g) for s, e, c, g in candidates],
        )

    @staticmethod
    def _score_hits(
        hits: list[dict[str, Any]],
        plan: _Plan,
        query: SegmentQuery,
        w: ScoreWeights,
        out: list[tuple[float, str, dict[str, float], str]],
    ) -> None:
        for hit in hits:
            source = hit.get("_source") or {}
            exact = source.get(EXACT_FIELD) or {}
            persona: dict[str, Any] = {"gender": source.get("gender")}
            for dim, key, escaped in plan.given:
                value = (exact.get(dim) or {}).get(escaped)
                if value is not None:
                    persona[dim] = {key: value}
            score, components = score_persona(persona, query, w)
            out.append((score, hit["_id"], components, source.get("gender")))
