"""Benchmark: full rebuild (event store → queryable index) vs a hand-written DuckDB baseline; query latency.

Usage: .venv/bin/python bench/rebuild_bench.py --users 100000 [--seed 7] [--workdir /tmp/persona-bench]
       [--out docs/bench/rebuild-100k]   (writes OUT.json and OUT.png)

Steps, all in one run so the ratio compares like with like on the same machine state; each timed
phase runs in its own process, so its peak RSS is its own:
1. generate N synthetic users (cached in WORKDIR/data-N-seed) and `persona import` them into a fresh
   PERSONA_HOME (import time reported, not part of the rebuild);
2. the full rebuild through Dagster (user_raw_affinities … persona_index): wall time, per-asset time,
   peak RSS;
3. the baseline: one straightforward hand-written DuckDB query computing the same raw affinities from
   the same Parquet event store; both results must agree row for row;
4. 200 varied top-20 segment queries in-process: index ranking alone, and the full answer with the
   relational enrichment; p50 / p99.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import baseline_raw_affinities, query_latency, redact

from persona_assets.stores.relational import create_mysql_database


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_rebuild() -> dict:
    from persona_assets.pipeline import dagster_instance, materialize_rebuild
    from persona_assets.settings import PersonaSettings

    settings = PersonaSettings.from_env()
    instance = dagster_instance(settings)
    started = time.perf_counter()
    result = materialize_rebuild(settings, instance, lambda m: print(m, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - started
    steps = {}
    for event in result.get_asset_materialization_events():
        materialization = event.materialization
        value = materialization.metadata.get("seconds")
        steps[materialization.asset_key.to_user_string()] = float(value.value) if value is not None else None
    return {"seconds": seconds, "asset_seconds": steps, "peak_rss_mib": _peak_rss_mib()}


def phase_baseline() -> dict:
    return {**baseline_raw_affinities(), "peak_rss_mib": _peak_rss_mib()}


def phase_queries(count: int, seed: int) -> dict:
    return query_latency(count, seed)


def _in_child(phase: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--phase", phase, "--seed", str(args.seed), "--queries", str(args.queries)]
    output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(output)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["rebuild"]["asset_seconds"]
    stores = result["stores"]
    names = [n for n in ORDER if n in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    bottom = 0.0
    for name in names:
        left.barh(["rebuild (Dagster, all assets)"], [steps[name]], left=[bottom], label=name)
        bottom += steps[name] or 0
    overhead = result["rebuild"]["seconds"] - bottom
    left.barh(
        ["rebuild (Dagster, all assets)"], [overhead], left=[bottom], color="lightgrey", label="Dagster run overhead"
    )
    left.barh(["baseline: raw affinities only"], [result["baseline"]["seconds"]], color="grey")
    target = 120 if stores["relational"] == "MariaDB" else 30
    left.axvline(target, color="red", linestyle="--", linewidth=1, label=f"{target} s target")
    left.set_xlabel("seconds")
    left.set_title(
        f"{result['users']:,} users, {result['events_total']:,} events ({stores['relational']}, {stores['search']})",
        fontsize=10,
    )
    left.legend(fontsize=7, loc="lower right")
    q = result["queries"]
    right.bar(
        ["rank p50", "rank p99", "answer p50", "answer p99"],
        [q["rank_ms"]["p50"], q["rank_ms"]["p99"], q["full_answer_ms"]["p50"], q["full_answer_ms"]["p99"]],
    )
    right.axhline(50, color="red", linestyle="--", linewidth=1, label="50 ms target")
    right.set_ylabel("milliseconds")
    right.tick_params(axis="x", labelrotation=20, labelsize=8)
    right.set_title(f"top-20 segment queries on {q['personas']:,} personas", fontsize=10)
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


ORDER = ["user_activity", "user_raw_affinities", "attribute_vocabulary", "user_personas", "persona_index"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", default="/tmp/persona-bench")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.png")
    parser.add_argument(
        "--db-url",
        default=None,
        help="a MySQL/MariaDB server URL (e.g. from `persona services up`); the bench uses a fresh database "
        "`persona_bench` on it instead of SQLite",
    )
    parser.add_argument("--opensearch-url", default=None, help="rank in OpenSearch instead of the embedded index")
    parser.add_argument("--phase", choices=["rebuild", "baseline", "queries"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phases = {"rebuild": phase_rebuild, "baseline": phase_baseline}
        result = phases[args.phase]() if args.phase in phases else phase_queries(args.queries, args.seed)
        print(json.dumps(result))
        return 0

    workdir = Path(args.workdir)
    data_dir = workdir / f"data-{args.users}-{args.seed}"
    home = workdir / "home"
    shutil.rmtree(home, ignore_errors=True)
    os.environ.update({"PERSONA_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")})
    (home / "dagster").mkdir(parents=True)
    for name in ("PERSONA_DB_URL", "PERSONA_OPENSEARCH_URL", "PERSONA_OPENSEARCH_ALIAS"):
        os.environ.pop(name, None)
    if args.db_url:
        os.environ["PERSONA_DB_URL"] = create_mysql_database(args.db_url, "persona_bench")
    if args.opensearch_url:
        os.environ.update({"PERSONA_OPENSEARCH_URL": args.opensearch_url, "PERSONA_OPENSEARCH_ALIAS": "bench_personas"})
    persona = [str(Path(sys.executable).with_name("persona"))]
    generate_seconds = None
    if not (data_dir / "visits.csv").exists():
        started = time.perf_counter()
        subprocess.run(
            [*persona, "generate", str(data_dir), "--users", str(args.users), "--seed", str(args.seed)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    started = time.perf_counter()
    subprocess.run([*persona, "import", str(data_dir)], check=True, stdout=subprocess.DEVNULL)
    import_seconds = time.perf_counter() - started

    rebuild = _in_child("rebuild", args)
    baseline = _in_child("baseline", args)
    queries = _in_child("queries", args)
    result = {
        "command": " ".join([".venv/bin/python", "bench/rebuild_bench.py", *map(redact, sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Python {platform.python_version()}",
        "stores": {
            "relational": "MariaDB" if args.db_url else "SQLite",
            "search": "OpenSearch" if args.opensearch_url else "embedded index",
        },
        "users": args.users,
        "events_total": sum(baseline["events"].values()),
        "events": baseline["events"],
        "generate_seconds": generate_seconds,
        "import_seconds": round(import_seconds, 2),
        "rebuild": rebuild,
        "baseline": baseline,
        "rebuild_over_baseline": round(rebuild["seconds"] / baseline["seconds"], 2),
        "queries": queries,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        plot(result, out.with_suffix(".png"))
    return 0 if baseline["mismatched_rows"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
