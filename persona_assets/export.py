"""``persona export FILE``: every normalised persona as one JSON line, streamed in bounded chunks.

The personas are read with a server-side cursor in ext_id order and written as they come, so the
export of a million personas holds one chunk in memory, never the table. The file is written
under a temporary name and renamed when complete: a failed export never leaves half a file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persona_assets.stores import relational

EXPORT_CHUNK_ROWS = 10_000
PROGRESS_EVERY_ROWS = 250_000


def persona_json_line(
    ext_id: str, gender: str, city: str, ecomm: str, brand: str, generic: str, category: str
) -> bytes:
    """One export line: the stored maps (weights) normalised, as ``relational.normalised_map`` reads them."""
    persona = {
        "ext_id": ext_id,
        "gender": gender,
        "city": relational.normalised_map(city),
        "ecomm": relational.normalised_map(ecomm),
        "brand_affinity": relational.normalised_map(brand),
        "generic_affinity": relational.normalised_map(generic),
        "category_affinity": relational.normalised_map(category),
    }
    return orjson.dumps(persona, option=orjson.OPT_APPEND_NEWLINE)


def export_personas(engine: Engine, out: Path, progress: Callable[[str], None] | None = None) -> int:
    """Write every persona of ``user_personas`` to ``out`` (JSON lines, ext_id ascending); returns the count."""
    table = relational.user_personas
    select = sa.select(
        table.c.ext_id,
        table.c.gender,
        table.c.city,
        table.c.ecomm,
        table.c.brand_affinity,
        table.c.generic_affinity,
        table.c.category_affinity,
    ).order_by(table.c.ext_id)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    written = 0
    try:
        with engine.connect() as conn, tmp.open("wb") as handle:
            result = conn.execution_options(stream_results=True, yield_per=EXPORT_CHUNK_ROWS).execute(select)
            for rows in result.partitions(EXPORT_CHUNK_ROWS):
                handle.writelines(persona_json_line(*row) for row in rows)
                before, written = written, written + len(rows)
                if progress and written // PROGRESS_EVERY_ROWS > before // PROGRESS_EVERY_ROWS:
                    progress(f"  {written:,} personas written")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return written
