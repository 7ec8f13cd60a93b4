"""Benchmark: publishing N personas into each index backend, streamed in batches, against the code it replaced.

Usage: .venv/bin/python bench/index_bench.py --url "$PERSONA_OPENSEARCH_URL" [--users 1000000]
       [--work /tmp/persona-index-bench/work-1000000] [--baseline-commit 5a89df0] [--memory-limit 2GiB]
       [--backends opensearch,embedded] [--skip-baseline] [--out docs/bench/index-1m.json]
       [--compare-commit C --rounds N]

Personas: the hand-off files in ``WORK`` (``PersonaHandOff``: users, affinities as integers, keys) — what ``user_personas``
leaves for ``persona_index`` — written by ``bench/persona_work.py`` when absent (~28 affinity rows per
user, keys from the real catalog).

For each backend, three phases, each in a process of its own so that its peak RSS is its own:

* ``streamed`` (this checkout): what ``persona_index`` runs — ``persona_batches_from_hand_off`` (DuckDB
  under ``--memory-limit``) into ``backend.publish``;
* ``upsert`` (this checkout): what a refresh run does to that build — ``backend.upsert`` of
  ``--upsert`` personas (the first ones of the users file, every value halved), streamed from DuckDB;
* ``baseline`` (``--baseline-commit``, extracted with ``git archive``): the same files read whole
  into pandas and published with the code of that commit (for OpenSearch: every document serialised
  at once, then ``parallel_bulk``).

``--compare-commit C --rounds N`` instead runs the streamed publish of this checkout and of commit C
(same work files, each with its own defaults) alternately, N times each: on a VM whose speed drifts
between minutes, only an interleaved A/B says which is faster.

Reported per phase: wall seconds, personas/s, peak RSS, the process's CPU seconds and (OpenSearch)
the node's CPU seconds from ``_nodes/stats`` — on a shared 2-core machine the CPU figures are the
steadier ones. The embedded builds also answer a fixed set of queries; streamed and baseline digests must match
(identical floats). Builds go under a throwaway alias / directory that is deleted at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import redact
from persona_work import named_affinities_sql

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
QUERIES = [
    {},
    {"gender": "men", "cityTier": "Tier1", "size": 20},
    {"brand": "allure auto", "size": 100},
    {"genericName": "necklaces", "cityTier": 2, "size": 50},
    {"level1Cat": 8, "gender": "women", "size": 20},
    {"brand": "voylla", "genericName": "rings", "level3Cat": 362, "from": 40, "size": 20},
]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _node_cpu_seconds(url: str) -> float | None:
    from opensearchpy import OpenSearch

    stats = OpenSearch(url.split(",")).nodes.stats(metric="process")  # every node of a cluster
    return sum(node["process"]["cpu"]["total_in_millis"] for node in stats["nodes"].values()) / 1000


def _backend(kind: str, url: str, alias: str, index_dir: Path):
    if kind == "opensearch":
        from persona_assets.stores.opensearch_index import OpenSearchBackend

        return OpenSearchBackend(url, alias=alias)
    try:
        from persona_assets.stores.embedded_backend import EmbeddedBackend
    except ImportError:  # the baseline commit kept it beside the protocol
        from persona_assets.stores.search_backend import EmbeddedBackend
    return EmbeddedBackend(index_dir)


def _query_digest(backend) -> str:
    from persona_assets.query import ScoreWeights, parse_segment_request

    digest = hashlib.sha256()
    for request in QUERIES:
        hits = backend.search(parse_segment_request(request), ScoreWeights())
        digest.update(repr((hits.total, [(h.ext_id, h.score, h.components) for h in hits.hits])).encode())
    return digest.hexdigest()[:16]


def _changed_personas(args: argparse.Namespace, hand_off):
    """A DuckDB connection holding what a refresh would upsert: the first users, every value halved."""
    from persona_assets.compute.duck import DuckDBLimits, connect, parquet_relation

    con = connect(DuckDBLimits(args.memory_limit, args.threads, Path(args.index_dir) / "spill"))
    con.execute(f"CREATE TABLE changed_users AS SELECT * FROM {parquet_relation(hand_off.users)} LIMIT {args.upsert}")
    con.execute(
        f"CREATE TABLE changed_affinity AS SELECT a.ext_id, a.dimension, a.key, a.value / 2 AS value "
        f"FROM {named_affinities_sql(hand_off)} a SEMI JOIN changed_users u ON u.ext_id = a.ext_id"
    )
    return con


def phase(args: argparse.Namespace) -> dict:
    """One publish, in this process: streamed from the work files, or (baseline) read whole with pandas."""
    work = Path(args.work)
    from persona_assets.compute.duck import DuckDBLimits
    from persona_assets.stores.search_backend import PersonaHandOff

    limits = DuckDBLimits(args.memory_limit, args.threads, Path(args.index_dir) / "spill")
    hand_off = PersonaHandOff.in_directory(work, limits)
    backend = _backend(args.backend, args.url, args.alias, Path(args.index_dir))
    changed = _changed_personas(args, hand_off) if args.phase == "upsert" else None
    node_before = _node_cpu_seconds(args.url) if args.backend == "opensearch" else None
    cpu_before, started = _cpu_seconds(), time.perf_counter()
    if args.phase == "streamed":
        from persona_assets.stores.persona_stream import persona_batches_from_hand_off

        report = backend.publish(persona_batches_from_hand_off(hand_off))
    elif args.phase == "upsert":
        from persona_assets.stores.persona_stream import persona_batches

        report = backend.upsert(persona_batches(changed, "changed_users", "changed_affinity"))
    else:
        import duckdb
        import pandas as pd

        affinities = duckdb.sql(f"SELECT * FROM {named_affinities_sql(hand_off)}").df()
        report = backend.publish(pd.read_parquet(hand_off.users)[["ext_id", "gender"]], affinities)
    seconds = time.perf_counter() - started
    sent = args.upsert if args.phase == "upsert" else report.document_count
    result = {
        "seconds": round(seconds, 2),
        "personas_per_second": round(sent / seconds, 1),
        "documents": report.document_count,
        "failed": len(report.failed),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "process_cpu_seconds": round(_cpu_seconds() - cpu_before, 1),
    }
    if node_before is not None:
        result["node_cpu_seconds"] = round(_node_cpu_seconds(args.url) - node_before, 1)
    if args.backend == "embedded":
        result["query_digest"] = _query_digest(backend)
    return result


def run_phase(args: argparse.Namespace, backend: str, which: str, pythonpath: Path) -> dict:
    command = [sys.executable, __file__, "--phase", which, "--backend", backend, "--work", args.work]
    index_dir = Path(args.scratch) / ("streamed" if which == "upsert" else which)
    command += ["--url", args.url or "", "--alias", args.alias, "--index-dir", str(index_dir)]
    command += ["--memory-limit", args.memory_limit, "--threads", str(args.threads), "--upsert", str(args.upsert)]
    env = {**os.environ, "PYTHONPATH": f"{pythonpath}{os.pathsep}{BENCH}"}
    print(f"{backend} {which} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{backend} {which} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{backend} {which}: {result}", file=sys.stderr, flush=True)
    return result


def machine() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    info["memory_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024, 1)
    return info


def baseline_checkout(commit: str, into: Path) -> Path:
    """The package as of ``commit`` (``git archive``: no worktree, nothing of this checkout touched)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "persona_assets"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def compare(args: argparse.Namespace, backends: list[str], other: Path) -> dict[str, dict]:
    """Streamed publishes of this checkout and of ``other``, interleaved; per side every round and the median."""
    results: dict[str, dict] = {}
    for backend in backends:
        rounds: dict[str, list[dict]] = {"this checkout": [], args.compare_commit: []}
        for _ in range(args.rounds):
            rounds["this checkout"].append(run_phase(args, backend, "streamed", REPO))
            rounds[args.compare_commit].append(run_phase(args, backend, "streamed", other))
        medians = {side: statistics.median(r["personas_per_second"] for r in runs) for side, runs in rounds.items()}
        results[backend] = {
            "rounds": rounds,
            "median_personas_per_second": medians,
            "speedup": round(medians["this checkout"] / medians[args.compare_commit], 2),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--work", help="directory of the two work files (default: written under /tmp)")
    parser.add_argument("--url", help="the OpenSearch node (needed for the opensearch backend)")
    parser.add_argument("--backends", default="opensearch,embedded")
    parser.add_argument("--baseline-commit", default="5a89df0")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--memory-limit", default="2GiB", help="DuckDB's budget for the streamed phase")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--upsert", type=int, default=10_000, help="personas the upsert phase replaces")
    parser.add_argument("--compare-commit", help="A/B: the streamed publish of this commit against this checkout")
    parser.add_argument("--rounds", type=int, default=2, help="publishes of each side in an A/B")
    parser.add_argument("--out")
    # One phase in this process (used by the driver above).
    parser.add_argument("--phase", choices=["streamed", "upsert", "baseline"])
    parser.add_argument("--backend", choices=["opensearch", "embedded"])
    parser.add_argument("--alias", default="")
    parser.add_argument("--index-dir", default="")
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(phase(args)))
        return 0

    args.work = args.work or f"/tmp/persona-index-bench/work-{args.users}"
    if not (Path(args.work) / "persona_keys.parquet").exists():
        from persona_work import write_work_files

        print(f"writing {args.users:,} personas to {args.work} ...", file=sys.stderr, flush=True)
        write_work_files(Path(args.work), args.users)
    backends = [b for b in args.backends.split(",") if b]
    if "opensearch" in backends and not args.url:
        parser.error("--url is needed for the opensearch backend")
    args.alias = f"bench_{secrets.token_hex(3)}_personas"
    args.scratch = tempfile.mkdtemp(prefix="persona-index-bench-")
    results: dict[str, dict] = {}
    try:
        if args.compare_commit:
            results = compare(args, backends, baseline_checkout(args.compare_commit, Path(args.scratch) / "compare"))
            backends = []
        base = None if args.skip_baseline else baseline_checkout(args.baseline_commit, Path(args.scratch) / "base")
        for backend in backends:
            results[backend] = {"streamed": run_phase(args, backend, "streamed", REPO)}
            results[backend]["upsert"] = run_phase(args, backend, "upsert", REPO)
            if base is not None:
                results[backend]["baseline"] = run_phase(args, backend, "baseline", base)
                ratio = (
                    results[backend]["streamed"]["personas_per_second"]
                    / results[backend]["baseline"]["personas_per_second"]
                )
                results[backend]["speedup"] = round(ratio, 2)
    finally:
        shutil.rmtree(args.scratch, ignore_errors=True)
        if args.url:
            from opensearchpy import OpenSearch

            OpenSearch(args.url.split(",")).indices.delete(index=f"{args.alias}*", ignore_unavailable=True)
    embedded = results.get("embedded", {})
    digests = {embedded[phase_]["query_digest"] for phase_ in ("streamed", "baseline") if phase_ in embedded}
    output = {
        "command": " ".join(redact(a) for a in [Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "personas": args.users,
        "memory_limit": args.memory_limit,
        "results": results,
        "embedded_streamed_and_baseline_answer_alike": len(digests) == 1 if len(digests) else None,
    }
    text = json.dumps(output, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
