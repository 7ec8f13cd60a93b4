"""DuckDB connections that stay inside the memory they are configured for.

Every DuckDB step of the project (import, rebuild, refresh, checks, export) opens its
connection here, so ``PERSONA_MEMORY_LIMIT``/``PERSONA_THREADS`` bound all of them and a
step larger than memory spills to ``PERSONA_HOME/tmp/duckdb`` instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb


@dataclass(frozen=True)
class DuckDBLimits:
    """What one DuckDB connection may use: memory (DuckDB syntax, e.g. ``4GiB``), threads, spill folder."""

    memory_limit: str = "4GiB"
    threads: int = 2
    temp_directory: Path | None = None


def connect(limits: DuckDBLimits | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection bounded by ``limits`` (defaults when None: tests, small tools)."""
    limits = limits or DuckDBLimits()
    config: dict[str, str] = {
        "memory_limit": limits.memory_limit,
        "threads": str(int(limits.threads)),
        # Order is never relied on without ORDER BY; letting DuckDB drop it saves memory in big sorts and COPYs.
        "preserve_insertion_order": "false",
    }
    if limits.temp_directory is not None:
        limits.temp_directory.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(limits.temp_directory)
    return duckdb.connect(config=config)
