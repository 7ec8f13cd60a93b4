"""OpenSearch mapping and documents: what a build looks like, and one persona batch as ``_bulk`` lines.

Mapping (constant size, whatever the number of brands, generic names or categories)::

    dynamic: strict
    ext_id, gender                             keyword
    city, brand, generic, category             rank_features: escaped key -> the exact value (Lucene keeps
                                               8 mantissa bits of it: "hi")
    city_lo, brand_lo, generic_lo, category_lo rank_features: escaped key -> value - hi
    exact                                      object, "enabled": false: {dimension: {escaped key: float64}}
                                               for what the rank features cannot hold: the ecomm map, and
                                               values too small to be a feature (0, below float32's normal range)
    inverse_norm.city, .brand, .generic,       double: 1 / the Euclidean length of the map (absent when empty),
      .category                                what a lookalike search multiplies each dimension's sum by
    home_tier                                  keyword: the tier with the largest share of the city map

Seventeen fields, however many keys the personas carry: the legacy design (one numeric field per key)
had to keep raising ``index.mapping.total_fields.limit``. ``_source`` is stored whole, so it holds each
value exactly as sent: a search reads the exact float64 value of ``<dim>.<key>`` back from it (bit for
bit what the embedded index scores), while Lucene indexes that value's float32, truncated. Builds of
format 2 kept every exact value in ``exact`` as well (the search still reads them: ``exact`` first).
Not sending the values twice made a document ~40 % smaller and the node's indexing CPU per persona a
quarter lower (the node parses, stores and logs every byte of ``_source``). Filtering the rank features
out of ``_source`` instead made the node re-serialise every document, half again its indexing CPU.

Keys are escaped so that any string is a usable feature name and ``_source`` path: ``%`` → ``%25``,
``.`` → ``%2E`` (the rank_feature query splits ``field.feature`` on the last dot), ``*`` → ``%2A`` (a
wildcard in ``_source`` filters); the empty key is ``%``. :func:`unescape_key` reverses :func:`escape_key`.

Precision. Lucene keeps a feature value with 8 mantissa bits (the float's bits >> 15), a relative
truncation error below 2^-8, too coarse for the contract's 1e-3 ranking tolerance when scores are
near 1. For a value v ≥ :data:`LO_FROM` (1/16) the document therefore also carries ``lo`` = v - hi,
where hi is what Lucene makes of v (its float32, truncated); lo is itself truncated, error below 2^-8
of lo < 2^-8 of v, so hi + lo is v to about 2^-16 (:data:`APPROX_RELATIVE_ERROR`; when rounding v to
float32 carried it up to hi, hi exceeds v by less than 2^-24 of it and there is no lo). A smaller
value has no ``lo``: hi is within v·2^-8 < 2^-12 (:data:`UNSPLIT_ERROR`) of it, a quarter of the
tolerance at the default weights. Rank features are most of the node's indexing work (a few µs each),
and in real personas most values are small (brand, generic and category maps spread over many keys):
this drops ~60 % of the ``lo`` features, ~15 % of the node's CPU per document. Reported scores never
use the approximation: the search re-scores candidates from the exact values in ``_source`` and widens
its window by the error bound (see ``opensearch_search``).

Documents are serialised column-wise with Arrow compute, one batch of whole personas at a time: each
map is already one list per persona, so its JSON object is a join of ``"key":value`` fragments over
the map's own offsets. :class:`BulkDocuments` keeps a batch's action and source lines contiguous, so
a ``_bulk`` request body is a slice of one buffer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from persona_assets.stores.persona_stream import MapEntries, map_entries
from persona_assets.stores.search_backend import (
    DIMENSIONS,
    SIMILARITY_DIMENSIONS,
    TIERS,
    home_tier_codes,
    inverse_norms_by_row,
)

__all__ = [
    "APPROX_RELATIVE_ERROR",
    "EXACT_FIELD",
    "FORMAT",
    "HOME_TIER_FIELD",
    "INVERSE_NORM_FIELD",
    "LO_FROM",
    "LO_SUFFIX",
    "MAX_ID_BYTES",
    "MAX_TERM_BYTES",
    "SCORED_DIMENSIONS",
    "UNSPLIT_ERROR",
    "BulkDocuments",
    "KeyLiterals",
    "encode_batch",
    "escape_key",
    "index_mapping",
    "lookalike_mapping",
    "lucene_feature_value",
    "unescape_key",
]

#: The dimensions a query scores (ecomm is only reported).
SCORED_DIMENSIONS = ("city", "brand", "generic", "category")
LO_SUFFIX = "_lo"
EXACT_FIELD = "exact"
INVERSE_NORM_FIELD = "inverse_norm"
HOME_TIER_FIELD = "home_tier"
#: ``_meta.persona_format`` of new builds; 4 added the lookalike fields (inverse norms, home tier).
FORMAT = 4
#: Upper bound of (exact - approximate) / approximate for the variable part of a score: the hi/lo
#: split leaves < 2^-16 per component, float32 products and sums a few 2^-24; 2^-14 is generous.
APPROX_RELATIVE_ERROR = 2.0**-14
#: Values from here up are indexed as hi + lo; smaller ones as hi alone.
LO_FROM = 2.0**-4
#: Upper bound of (exact - approximate) for one component indexed without lo (before its weight).
UNSPLIT_ERROR = LO_FROM * 2.0**-8
#: Lucene refuses terms (feature names) longer than this many UTF-8 bytes.
MAX_TERM_BYTES = 32766
#: OpenSearch refuses document ids longer than this many UTF-8 bytes (for the whole _bulk request).
MAX_ID_BYTES = 512
_F32_MIN_NORMAL = float(np.finfo(np.float32).tiny)
_F32_MAX = float(np.finfo(np.float32).max)
_ESCAPES = {"%": "%25", ".": "%2E", "*": "%2A"}
_ESCAPE_RE = re.compile(r"[%.*]")
_UNESCAPE_RE = re.compile(r"%(25|2E|2A)")
_UNESCAPES = {"25": "%", "2E": ".", "2A": "*"}
_NEEDS_JSON_ESCAPE = r'["\\\x00-\x1f]'


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


def lookalike_mapping() -> dict[str, Any]:
    """The fields format 4 added for lookalikes; put into an older live build before upserting into it."""
    norms = {dim: {"type": "double"} for dim in SCORED_DIMENSIONS}
    return {"properties": {INVERSE_NORM_FIELD: {"properties": norms}, HOME_TIER_FIELD: {"type": "keyword"}}}


def index_mapping() -> dict[str, Any]:
    """The mapping of every build: the same seventeen fields whatever the data."""
    properties: dict[str, Any] = {"ext_id": {"type": "keyword"}, "gender": {"type": "keyword"}}
    for dim in SCORED_DIMENSIONS:
        properties[dim] = {"type": "rank_features"}
        properties[dim + LO_SUFFIX] = {"type": "rank_features"}
    properties[EXACT_FIELD] = {"type": "object", "enabled": False}
    properties |= lookalike_mapping()["properties"]
    return {"dynamic": "strict", "_meta": {"persona_format": FORMAT}, "properties": properties}


# --------------------------------------------------------------------------- serialisation


def _concat(*parts: Any) -> pa.Array:
    """Element-wise concatenation of string arrays and str constants."""
    args = [
        pa.scalar(part, pa.large_string()) if isinstance(part, str) else part.cast(pa.large_string()) for part in parts
    ]
    return pc.binary_join_element_wise(*args, pa.scalar("", pa.large_string()))


def _json_strings(values: pa.Array) -> pa.Array:
    """Each string as a JSON string literal (quotes included)."""
    values = values.cast(pa.large_string())
    quoted = _concat('"', values, '"')
    needs = pc.match_substring_regex(values, _NEEDS_JSON_ESCAPE)
    if not pc.any(needs).as_py():
        return quoted
    plain = quoted.to_pylist()
    for i in np.flatnonzero(needs.to_numpy(zero_copy_only=False)).tolist():
        plain[i] = json.dumps(values[i].as_py(), ensure_ascii=False)
    return pa.array(plain, type=pa.large_string())


def _per_row(offsets: np.ndarray, fragments: pa.Array) -> pa.Array:
    """Fragments ``offsets[i]:offsets[i+1]`` joined with ',' for each row ('' when none)."""
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), fragments)
    return pc.binary_join(lists, pa.scalar(",", pa.large_string()))


def _truncate_mantissa(values: np.ndarray, bits: int = 8) -> np.ndarray:
    """``values`` (float64, ≥ 0) with only the top ``bits`` mantissa bits kept (never above the value)."""
    mask = np.uint64(~((1 << (52 - bits)) - 1) & 0xFFFFFFFFFFFFFFFF)
    return (values.view(np.uint64) & mask).view(np.float64)


class KeyLiterals:
    """Escaped keys as JSON member names (``"key":``), made once per distinct key for the whole publish."""

    def __init__(self) -> None:
        self._known: dict[str, str] = {}

    def __call__(self, keys: pa.Array) -> tuple[list[str], np.ndarray]:
        """The distinct keys' member names, and each key's index among them."""
        encoded = pc.dictionary_encode(keys)
        names = [
            self._known.get(key) or self._known.setdefault(key, json.dumps(escape_key(key), ensure_ascii=False) + ":")
            for key in encoded.dictionary.to_pylist()
        ]
        return names, encoded.indices.to_numpy()


def lucene_feature_value(values: np.ndarray) -> np.ndarray:
    """What Lucene indexes for rank feature values (float64, ≥ 0): their float32, cut to 8 mantissa bits."""
    return _truncate_mantissa(values.astype(np.float32).astype(np.float64))


class _ValueTexts:
    """The JSON numbers of a batch's values: exact and lo, each formatted once per distinct value.

    Formatting floats is most of the client's work, and normalised counts repeat a lot (1/3, 1/2, ...);
    lo is a function of the value, so one hash of the batch's values serves both.
    """

    def __init__(self, values: np.ndarray) -> None:
        if values.size and not (values <= _F32_MAX).all():
            raise ValueError("affinities: column 'value' must hold finite numbers >= 0 (and within float32 range)")
        encoded = pc.dictionary_encode(pa.array(values, pa.float64()))
        distinct, self.index = encoded.dictionary.to_numpy(), encoded.indices.to_numpy()
        lo = (distinct - lucene_feature_value(distinct)).astype(np.float32)
        self.exact, self.lo = (pa.array(part).cast(pa.string()).to_pylist() for part in (distinct, lo))
        #: a rank feature must be a positive normal float32; the rest (0, tiny values) stay in ``exact``
        self.is_feature = distinct.astype(np.float32) >= _F32_MIN_NORMAL
        self.has_lo = (lo >= _F32_MIN_NORMAL) & (distinct >= LO_FROM)


def _object(
    offsets: np.ndarray,
    names: list[str],
    name_index: np.ndarray,
    texts: list[str],
    text_index: np.ndarray,
    keep: np.ndarray | None = None,
) -> pa.Array:
    """Per row, the body of a JSON object ``"key":value,...`` of its members (those where ``keep``).

    Member ``i`` is ``names[name_index[i]]`` then ``texts[text_index[i]]``. Every piece comes from one
    small table of distinct strings (names, ``,``-led names, texts), so a row's object is a single
    ``take`` of interleaved pieces and a join: no per-member concatenation.
    """
    if keep is not None:
        kept_before = np.concatenate(([0], np.cumsum(keep)))
        offsets, name_index, text_index = kept_before[offsets], name_index[keep], text_index[keep]
    first = np.zeros(name_index.size, dtype=bool)
    first[offsets[:-1][np.diff(offsets) > 0]] = True
    table = pa.array([*names, *("," + n for n in names), *texts], pa.large_string())
    pieces = np.empty(2 * name_index.size, dtype=np.int64)
    pieces[0::2] = name_index + np.where(first, 0, len(names))
    pieces[1::2] = text_index + 2 * len(names)
    lists = pa.LargeListArray.from_arrays(pa.array(2 * offsets, pa.int64()), table.take(pa.array(pieces)))
    return pc.binary_join(lists, pa.scalar("", pa.large_string()))


@dataclass(frozen=True)
class BulkDocuments:
    """One batch as ``_bulk`` lines: ``lines[i]`` is the action and source line of ``ext_ids[i]``.

    ``refused`` holds the personas that cannot be sent at all (ext_id → why); they are not in ``lines``.
    """

    ext_ids: pa.Array
    lines: pa.Array  # large_string, each ending in "\n"
    refused: dict[str, str]

    def __len__(self) -> int:
        return len(self.ext_ids)

    def byte_offsets(self) -> np.ndarray:
        """Where each line starts in the lines' data buffer (and where the last ends)."""
        buffer = self.lines.buffers()[1]
        return np.frombuffer(buffer, dtype=np.int64, count=len(self.lines) + 1, offset=self.lines.offset * 8)

    def body(self, start: int, stop: int) -> bytes:
        """The request body of documents ``start:stop``: one slice of the lines' buffer."""
        offsets = self.byte_offsets()
        return self.lines.buffers()[2][int(offsets[start]) : int(offsets[stop])].to_pybytes()

    def body_of(self, positions: list[int]) -> bytes:
        """The request body of the documents at ``positions`` (retries)."""
        return "".join(self.lines.take(pa.array(positions, pa.int64())).to_pylist()).encode("utf-8")


def _refuse_long_ids(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict[str, str]]:
    """An ext_id over OpenSearch's id limit fails its whole ``_bulk`` request, so it is never sent."""
    lengths = pc.binary_length(batch.column(0))
    too_long = pc.greater(lengths, MAX_ID_BYTES)
    if not pc.any(too_long).as_py():
        return batch, {}
    refused = {
        ext_id: f"ext_id is {len(ext_id.encode('utf-8'))} bytes long; OpenSearch document ids are at most {MAX_ID_BYTES}"
        for ext_id in batch.column(0).filter(too_long).to_pylist()
    }
    return batch.filter(pc.invert(too_long)), refused


def encode_batch(batch: pa.RecordBatch, key_literals: KeyLiterals | None = None) -> BulkDocuments:
    """The ``_bulk`` lines of a checked persona batch (``persona_stream.checked_batches``)."""
    key_literals = key_literals or KeyLiterals()
    batch, refused = _refuse_long_ids(batch)
    entries = {dim: map_entries(batch, dim) for dim in DIMENSIONS}
    texts = _ValueTexts(np.concatenate([e.values for e in entries.values()]))
    bounds = np.cumsum([0] + [e.values.size for e in entries.values()])
    ext_json = _json_strings(batch.column(0))
    pieces: list[Any] = ['{"index":{"_id":', ext_json, '}}\n{"ext_id":', ext_json, ',"gender":"', batch.column(1), '"']
    exact: list[Any] = []
    for i, (dim, mine) in enumerate(entries.items()):
        names, name_index = key_literals(mine.keys)
        value_index = texts.index[bounds[i] : bounds[i + 1]]
        members = (mine.offsets, names, name_index)
        # exact holds every value of ecomm, and of a scored dimension the values no feature can hold
        is_feature = texts.is_feature[value_index] if dim in SCORED_DIMENSIONS else None
        if is_feature is None or not is_feature.all():
            kept = _object(*members, texts.exact, value_index, keep=None if is_feature is None else ~is_feature)
            exact += [("," if exact else "") + f'"{dim}":{{', kept, "}"]
        if is_feature is None:
            continue
        for suffix, part, present in (("", texts.exact, is_feature), (LO_SUFFIX, texts.lo, texts.has_lo[value_index])):
            body = _object(*members, part, value_index, keep=present)
            pieces += [f',"{dim}{suffix}":{{', body, "}"]
    pieces += [f',"{EXACT_FIELD}":{{', *exact, "}", *_similarity_fields(entries, len(batch)), "}\n"]
    return BulkDocuments(ext_ids=batch.column(0), lines=_concat(*pieces), refused=refused)


def _similarity_fields(entries: dict[str, MapEntries], rows: int) -> list[Any]:
    """The pieces of ``,"inverse_norm":{...}`` and ``,"home_tier":"TierN"`` (each row's members only).

    ``search_backend.inverse_norms_by_row``, as the embedded index computes them: every backend multiplies by the
    same float."""
    names, name_index, texts, text_index = [], [], [], []
    for dim in SIMILARITY_DIMENSIONS:
        inverse = inverse_norms_by_row(entries[dim].parents, entries[dim].values, rows)
        names.append(f'"{dim}":')
        name_index.append(np.full(rows, len(names) - 1))
        texts.append(inverse)
        text_index.append(inverse > 0)
    present = np.column_stack(text_index)  # rows x dims
    offsets = np.concatenate(([0], np.cumsum(present.sum(axis=1))))
    order = np.flatnonzero(present.ravel())  # row-major: each row's dimensions in order
    inverse_texts = pa.array(np.column_stack(texts).ravel()[order]).cast(pa.string()).to_pylist()
    members = _object(offsets, names, np.column_stack(name_index).ravel()[order], inverse_texts, np.arange(order.size))
    city_entries = entries["city"]
    tier = pc.index_in(city_entries.keys, value_set=pa.array(TIERS))
    known = tier.is_valid().to_numpy(zero_copy_only=False)
    city = np.zeros((rows, len(TIERS)))
    city[city_entries.parents[known], tier.drop_null().to_numpy()] = city_entries.values[known]
    labels = np.array([*(f',"{HOME_TIER_FIELD}":"{name}"' for name in TIERS), ""])  # code -1: the last, none
    tier_text = pa.array(labels[home_tier_codes(city)])
    return [f',"{INVERSE_NORM_FIELD}":{{', members, "}", tier_text]
