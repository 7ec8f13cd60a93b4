"""A saved segment's members for activation: CSV, Parquet or JSON Lines, encoded chunk by chunk (pure).

The members stream in as ``user_personas`` rows (``membership.PersonaRow``); each is scored as the segment
query scores it and written with its components, gender and city tier. :func:`encode` turns record
chunks into bytes as they come, so a file or an HTTP response of a million members holds one chunk in
memory (docs/audiences.md).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from persona_assets.audiences.definitions import SavedSegment
from persona_assets.audiences.membership import MAP_COLUMNS, PersonaRow, columns_needed
from persona_assets.query.request import InvalidRequest
from persona_assets.query.scoring import ScoreWeights, score_persona
from persona_assets.stores.relational import normalised_map
from persona_assets.stores.search_backend import home_tier

__all__ = [
    "COLUMNS",
    "FORMATS",
    "columns_for",
    "encode",
    "format_of_path",
    "member_records",
    "parse_format",
]

#: Export format -> its media type.
FORMATS = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "jsonl": "application/x-ndjson",
}
#: The columns of a CSV or Parquet export, in order (JSON Lines nests C, B, G, K under "components").
COLUMNS = ("ext_id", "score", "C", "B", "G", "K", "gender", "city_tier")
_SCHEMA = pa.schema(
    [
        pa.field("ext_id", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        *(pa.field(component, pa.float64(), nullable=False) for component in "CBGK"),
        pa.field("gender", pa.string(), nullable=False),
        pa.field("city_tier", pa.string()),
    ]
)

Record = tuple[str, float, float, float, float, float, str, str | None]


def parse_format(value: str) -> str:
    """``csv``, ``parquet`` or ``jsonl``; :class:`InvalidRequest` naming ``format`` otherwise."""
    if value not in FORMATS:
        raise InvalidRequest("format", f"must be one of {', '.join(FORMATS)}, got {value[:50]!r}")
    return value


def format_of_path(path: Path) -> str:
    """The format a file's extension names (``.csv``, ``.parquet``, ``.jsonl``)."""
    extension = Path(path).suffix.lower().lstrip(".")
    if extension not in FORMATS:
        raise InvalidRequest("file", f"{path}: name it .csv, .parquet or .jsonl (the format follows the extension)")
    return extension


def member_records(
    rows: Iterable[PersonaRow], segment: SavedSegment, weights: ScoreWeights, chunk_rows: int = 10_000
) -> Iterator[list[Record]]:
    """Each member row scored for the segment (``score_persona``, as its membership was), in chunks.

    ``rows`` must carry the city map and those the query reads (:func:`columns_for`)."""
    chunk: list[Record] = []
    for ext_id, gender, maps in rows:
        persona = {key: normalised_map(maps[column]) for key, column in MAP_COLUMNS.items() if column in maps}
        score, components = score_persona(persona, segment.query, weights)
        chunk.append((ext_id, score, *(components[c] for c in "CBGK"), gender, home_tier(persona["city"])))
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def columns_for(segment: SavedSegment) -> list[str]:
    """The ``user_personas`` map columns :func:`member_records` needs for ``segment``: those its query reads
    and the city map (the shopper's tier)."""
    return sorted({"city", *columns_needed([segment])})


class _Collected(io.RawIOBase):
    """A write-only sink whose bytes are taken after each write (Parquet written as a stream)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def encode(chunks: Iterable[list[Record]], fmt: str) -> Iterator[bytes]:
    """The bytes of an export in ``fmt``, yielded chunk by chunk (a header first for CSV; a Parquet file
    has one row group per chunk and its footer last)."""
    if fmt == "jsonl":
        for chunk in chunks:
            yield b"".join(
                orjson.dumps(
                    {
                        "ext_id": ext_id,
                        "score": score,
                        "components": {"C": c, "B": b, "G": g, "K": k},
                        "gender": gender,
                        "cityTier": tier,
                    },
                    option=orjson.OPT_APPEND_NEWLINE,
                )
                for ext_id, score, c, b, g, k, gender, tier in chunk
            )
    elif fmt == "csv":
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(COLUMNS)
        for chunk in chunks:
            writer.writerows((*record[:7], record[7] or "") for record in chunk)
            yield text.getvalue().encode("utf-8")
            text.seek(0)
            text.truncate()
        yield text.getvalue().encode("utf-8")
    elif fmt == "parquet":
        sink = _Collected()
        with pq.ParquetWriter(sink, _SCHEMA, compression="zstd") as writer:
            for chunk in chunks:
                writer.write_table(
                    pa.Table.from_pylist([dict(zip(COLUMNS, record, strict=True)) for record in chunk], _SCHEMA)
                )
                yield sink.take()
        yield sink.take()
    else:
        parse_format(fmt)
