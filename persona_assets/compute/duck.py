"""DuckDB connections that stay inside the memory they are configured for.

Every DuckDB step of the project (import, rebuild, refresh, checks, export) opens its
connection here, so ``PERSONA_MEMORY_LIMIT``/``PERSONA_THREADS`` bound all of them and a
step larger than memory spills to ``PERSONA_HOME/tmp/duckdb`` instead of failing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import duckdb


@dataclass(frozen=True)
class DuckDBLimits:
    """What one DuckDB connection may use: memory (DuckDB syntax, e.g. ``4GiB``), threads, spill folder."""

    memory_limit: str = "4GiB"
    threads: int = 2
    temp_directory: Path | None = None

    @property
    def memory_bytes(self) -> int:
        return size_in_bytes(self.memory_limit)


def size_in_bytes(text: str) -> int:
    """A DuckDB size such as ``3GiB`` in bytes (KB, MB... are powers of 1000 and KiB, MiB... of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size such as 4GiB, 3GB or 512MiB")
    return int(float(match["number"]) * _UNITS[match["unit"].upper()])


_SIZE = re.compile(r"(?P<number>[0-9]+(\.[0-9]+)?)\s*(?P<unit>B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)
_UNITS = {
    "B": 1,
    **{unit: 1000**power for power, unit in enumerate(("KB", "MB", "GB", "TB"), start=1)},
    **{unit: 1024**power for power, unit in enumerate(("KIB", "MIB", "GIB", "TIB"), start=1)},
}


def connect(limits: DuckDBLimits | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection bounded by ``limits`` (defaults when None: tests, small tools)."""
    limits = limits or DuckDBLimits()
    config: dict[str, str] = {
        "memory_limit": limits.memory_limit,
        "threads": str(int(limits.threads)),
        # Order is never relied on without ORDER BY; letting DuckDB drop it saves memory in big sorts and COPYs.
        "preserve_insertion_order": "false",
        # DuckDB's blocks come from a pool that keeps the pages it has touched until the connection closes,
        # instead of handing them back to the kernel after each operator and faulting them in (zeroed) again:
        # at 1M users a third of the raw affinities' CPU time went to zeroing pages; measured alone that step
        # is ~30 % faster, in whole rebuilds within the VM's drift (docs/benchmarks.md). The pool is within
        # memory_limit and grows only as it is used.
        "block_allocator_memory": limits.memory_limit,
    }
    if limits.temp_directory is not None:
        limits.temp_directory.mkdir(parents=True, exist_ok=True)
        config["temp_directory"] = str(limits.temp_directory)
    con = duckdb.connect(config=config)
    # Long queries otherwise draw a progress bar into Dagster's captured logs and benchmark output.
    con.execute("SET enable_progress_bar = false")
    # The event store is one file per day and kind (~2,200 over two years), and a step scans each kind several
    # times: kept, the files' footers are parsed once per connection, not once per scan (at 100k users a scan
    # of a kind's 730 days took ~60 ms more without). DuckDB checks each file's modification time before using
    # what it kept. (Set here, not in ``config``: it needs the Parquet reader loaded.)
    con.execute("SET parquet_metadata_cache = true")
    return con


def memory_limit_bytes(con: duckdb.DuckDBPyConnection) -> int:
    """The memory limit ``con`` runs under, in bytes (DuckDB reports it as e.g. ``2.7 GiB``)."""
    return size_in_bytes(str(con.execute("SELECT current_setting('memory_limit')").fetchone()[0]))


def parquet_relation(path: Path | str) -> str:
    """``read_parquet('…')`` of ``path`` (or a glob), quoted for SQL text (a path may hold a quote)."""
    return "read_parquet('" + str(path).replace("'", "''") + "')"
