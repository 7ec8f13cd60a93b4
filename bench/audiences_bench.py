"""Benchmark: saved segments' members at scale: compute, export (each format), overlap; time and peak RSS.

Usage: PERSONA_HOME=<a rebuilt home> .venv/bin/python bench/audiences_bench.py [--out docs/bench/audiences-1m]

On the home's store (e.g. ``bench/scale.py``'s 1M home), saves two segments (replacing them):
``everyone`` (``{}``, ``minScore`` 0: every persona is a member) and ``top-brand`` (the top 100,000 for the
vocabulary's first brand in Tier1), then runs each command in a process of its own and records its wall
seconds and peak RSS (wait4): ``persona segment compute`` of each, ``persona segment export everyone``
to .csv, .parquet and .jsonl, ``persona segment overlap``. Baseline in the same run: ``persona export``,
the streamed JSON-lines export of every persona that already existed (same rows read, no scoring).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa


def measured(command: list[str]) -> dict:
    """Run ``command``; its wall seconds and its own peak RSS (MiB)."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{shlex.join(command)} failed")
    return {
        "command": shlex.join(command),
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        "output": output.strip()[:500],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)

    from persona_assets.settings import PersonaSettings
    from persona_assets.stores import relational

    settings = PersonaSettings.from_env()
    engine = relational.store_engine(settings.db_url)
    with engine.connect() as conn:
        personas = conn.execute(sa.select(sa.func.count()).select_from(relational.user_personas)).scalar_one()
        brand = conn.execute(
            sa.select(relational.attribute_vocabulary.c.name)
            .where(relational.attribute_vocabulary.c.kind == "brand")
            .order_by(relational.attribute_vocabulary.c.rank)
            .limit(1)
        ).scalar_one()
    persona = str(Path(sys.executable).with_name("persona"))
    definitions = {
        "everyone": {"query": {}, "membership": {"minScore": 0}},
        "top-brand": {"query": {"brand": brand, "cityTier": "Tier1"}, "membership": {"top": 100_000}},
    }
    for name, definition in definitions.items():
        subprocess.run(
            [persona, "segment", "save", name, "--replace", "--definition", json.dumps(definition)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    steps: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(dir=settings.layout.home) as scratch:
        out = Path(scratch)
        print(f"baseline: persona export of {personas:,} personas", file=sys.stderr, flush=True)
        steps["baseline: persona export (every persona, JSON lines)"] = measured(
            [persona, "export", str(out / "all.jsonl")]
        )
        for name in definitions:
            print(f"compute {name}", file=sys.stderr, flush=True)
            steps[f"segment compute {name}"] = measured([persona, "segment", "compute", name])
        for fmt in ("csv", "parquet", "jsonl"):
            print(f"export everyone .{fmt}", file=sys.stderr, flush=True)
            target = out / f"everyone.{fmt}"
            steps[f"segment export everyone .{fmt}"] = {
                **measured([persona, "segment", "export", "everyone", str(target)]),
                "bytes": target.stat().st_size,
            }
        steps["segment overlap everyone top-brand"] = measured([persona, "segment", "overlap", "everyone", "top-brand"])
    baseline = steps["baseline: persona export (every persona, JSON lines)"]["seconds"]
    result = {
        "personas": personas,
        "memory_limit": os.environ.get("PERSONA_MEMORY_LIMIT", "(default)"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "steps": steps,
    }
    lines = ["| step | seconds | ÷ baseline | peak RSS (MiB) |", "|---|---|---|---|"]
    for step, figures in steps.items():
        lines.append(
            f"| {step} | {figures['seconds']:.1f} | {figures['seconds'] / baseline:.2f} | {figures['peak_rss_mib']:,} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        Path(f"{args.out}.md").write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
