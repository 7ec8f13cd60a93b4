"""Benchmark: the growth curve. Import and every rebuild step at several sizes, each in its own process.

Usage: .venv/bin/python bench/scale.py [--users 100000,300000,1000000] [--workdir /work/data/scale]
       [--shape "--wide"] [--out docs/bench/scale] [--db-url URL --opensearch-url URL] [--once]

For each size, on data from ``persona generate DIR --users N --seed 42 <shape>`` (cached in WORKDIR; its
``shape.json`` is recorded when the generator writes one):
1. ``persona import`` into a fresh PERSONA_HOME: seconds and peak RSS of that process;
2. the full rebuild as one Dagster run in a process of its own: its wall time and peak RSS, and per
   asset the step's seconds and peak RSS (RSS sampled every 50 ms, read off each step's time window);
3. the baseline in the same run: a hand-written DuckDB query of the raw affinities alone (must agree
   with ours row for row);
4. query latency at that size: 200 varied top-20 queries in-process, ranking alone and full answers;
5. the full rebuild once more over the same data (wall time and peak RSS): the daily case, where most
   rows are unchanged.

Writes OUT.json, OUT.md (the table for docs/benchmarks.md) and OUT.png (seconds and peak RSS against
users, one line per step). PERSONA_MEMORY_LIMIT / PERSONA_THREADS apply as set in the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import baseline_raw_affinities, query_latency, redact

from persona_assets.stores.relational import create_mysql_database

REBUILD_STEPS = ["user_raw_affinities", "user_activity", "attribute_vocabulary", "user_personas", "persona_index"]


def _measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``command``; its wall seconds, its own peak RSS (MiB, via wait4) and its stdout."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed with exit code {child.returncode}")
    return seconds, usage.ru_maxrss / 1024, output


def _phase(name: str) -> list[str]:
    return [sys.executable, __file__, "--phase", name]


class RssSampler:
    """Samples this process's resident set size every ``interval`` seconds in a thread, so the peak of
    each step of one Dagster run can be read off its time window afterwards."""

    def __init__(self, interval: float = 0.05) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)

    def _sample(self, interval: float) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        with open("/proc/self/statm") as statm:
            while not self._stop.is_set():
                statm.seek(0)
                self.samples.append((time.time(), int(statm.read().split()[1]) * page))
                self._stop.wait(interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_mib(self, start: float, end: float) -> float:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        return max(inside, default=0) / 2**20


def phase_rebuild() -> dict:
    """Inside a child: the full rebuild as one Dagster run; per step its seconds and peak RSS."""
    from dagster import DagsterEventType

    from persona_assets.pipeline import dagster_instance, materialize_rebuild
    from persona_assets.settings import PersonaSettings

    settings = PersonaSettings.from_env()
    instance = dagster_instance(settings)
    started = time.perf_counter()
    with RssSampler() as sampler:
        result = materialize_rebuild(settings, instance, lambda m: print(m, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - started
    windows: dict[str, list[float]] = {}
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            windows[event.step_key] = [entry.timestamp, entry.timestamp]
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            windows.setdefault(event.step_key, [entry.timestamp, entry.timestamp])[1] = entry.timestamp
    steps = {}
    for name in REBUILD_STEPS:
        start, end = windows[name]
        steps[name] = {"seconds": round(end - start, 2), "peak_rss_mib": round(sampler.peak_mib(start, end))}
    check_windows = [w for key, w in windows.items() if key not in REBUILD_STEPS]
    steps["asset checks"] = {
        "seconds": round(sum(end - start for start, end in check_windows), 2),
        "peak_rss_mib": round(max((sampler.peak_mib(*w) for w in check_windows), default=0)),
    }
    return {"seconds": round(seconds, 2), "steps": steps}


def run_phase(args: argparse.Namespace) -> dict:
    """Inside a child process: the rebuild, the baseline, or the queries."""
    if args.phase == "rebuild":
        return phase_rebuild()
    if args.phase == "baseline":
        return baseline_raw_affinities()
    return query_latency(200, 7)


def one_size(users: int, args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    data_dir = workdir / f"data-{users}-{'-'.join(shlex.split(args.shape)).strip('-') or 'default'}"
    persona = str(Path(sys.executable).with_name("persona"))
    if not (data_dir / "visits.csv").exists():
        print(f"generating {users:,} users into {data_dir}", file=sys.stderr, flush=True)
        generate = [persona, "generate", str(data_dir), "--users", str(users), "--seed", "42", *shlex.split(args.shape)]
        subprocess.run(generate, check=True, stdout=subprocess.DEVNULL)
    shape_file = data_dir / "shape.json"
    shape = json.loads(shape_file.read_text()) if shape_file.exists() else None

    home = workdir / f"home-{users}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    # No DAGSTER_HOME: `persona` then sets up $PERSONA_HOME/dagster with the project's dagster.yaml, as a user gets.
    env = {**os.environ, "PERSONA_HOME": str(home)}
    for name in ("DAGSTER_HOME", "PERSONA_DB_URL", "PERSONA_OPENSEARCH_URL", "PERSONA_OPENSEARCH_ALIAS"):
        env.pop(name, None)
    if args.db_url:
        env["PERSONA_DB_URL"] = create_mysql_database(args.db_url, f"persona_scale_{users}")
    if args.opensearch_url:
        env.update({"PERSONA_OPENSEARCH_URL": args.opensearch_url, "PERSONA_OPENSEARCH_ALIAS": f"scale_{users}"})

    steps: dict[str, dict[str, float]] = {}
    print(f"[{users:,}] persona import", file=sys.stderr, flush=True)
    seconds, rss, _ = _measured([persona, "import", str(data_dir)], env)
    steps["import"] = {"seconds": round(seconds, 2), "peak_rss_mib": round(rss)}
    print(f"[{users:,}] full rebuild", file=sys.stderr, flush=True)
    seconds, rss, output = _measured(_phase("rebuild"), env)
    rebuild = json.loads(output)
    steps.update(rebuild["steps"])
    print(f"[{users:,}] baseline and queries", file=sys.stderr, flush=True)
    _, baseline_rss, output = _measured(_phase("baseline"), env)
    baseline = {**json.loads(output), "peak_rss_mib": round(baseline_rss)}
    _, _, output = _measured(_phase("queries"), env)
    queries = json.loads(output)
    # The daily case: the same rebuild again over the same data. Rows that did not change cost SQLite no
    # page writes, so this is what a rebuild after a day of new events is closest to.
    again_seconds = again_rss = None
    if not args.once:
        print(f"[{users:,}] full rebuild again", file=sys.stderr, flush=True)
        again_seconds, again_rss, _ = _measured(_phase("rebuild"), env)
    return {
        "users": users,
        "shape": shape,
        "events": baseline["events"],
        "steps": steps,
        # The whole run: every step, the checks and Dagster's own work; the peak is the process's (wait4).
        "rebuild_seconds": rebuild["seconds"],
        "rebuild_peak_rss_mib": round(rss),
        "baseline": baseline,
        "rebuild_over_baseline": round(rebuild["seconds"] / baseline["seconds"], 2),
        "queries": queries,
        "rebuild_again_seconds": None if again_seconds is None else round(again_seconds, 2),
        "rebuild_again_peak_rss_mib": None if again_rss is None else round(again_rss),
    }


def markdown(result: dict) -> str:
    sizes = result["sizes"]
    header = "| step | " + " | ".join(f"{s['users']:,} users: s / peak MiB" for s in sizes) + " |"
    lines = [header, "|---|" + "---|" * len(sizes)]
    for step in ["import", *REBUILD_STEPS, "asset checks"]:
        cells = [f"{s['steps'][step]['seconds']:.1f} / {s['steps'][step]['peak_rss_mib']:,}" for s in sizes]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines.append(
        "| **full rebuild (one Dagster run)** | "
        + " | ".join(f"**{s['rebuild_seconds']:.1f}** / {s['rebuild_peak_rss_mib']:,}" for s in sizes)
        + " |"
    )
    lines.append(
        "| the same rebuild again (rows unchanged) | "
        + " | ".join(
            "not run"
            if s["rebuild_again_seconds"] is None
            else f"{s['rebuild_again_seconds']:.1f} / {s['rebuild_again_peak_rss_mib']:,}"
            for s in sizes
        )
        + " |"
    )
    lines.append(
        "| baseline: hand-written DuckDB raw affinities | "
        + " | ".join(f"{s['baseline']['seconds']:.1f} / {s['baseline']['peak_rss_mib']:,}" for s in sizes)
        + " |"
    )
    lines.append("| rebuild ÷ baseline | " + " | ".join(f"{s['rebuild_over_baseline']:.1f}×" for s in sizes) + " |")
    lines.append(
        "| query p99, ranking / full answer (ms) | "
        + " | ".join(
            f"{s['queries']['rank_ms']['p99']:.1f} / {s['queries']['full_answer_ms']['p99']:.1f}" for s in sizes
        )
        + " |"
    )
    lines.append(
        "| events (visits + checkouts + searches) | "
        + " | ".join(f"{sum(s['events'].values()):,}" for s in sizes)
        + " |"
    )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["sizes"]
    users = [s["users"] for s in sizes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for step in ["import", *REBUILD_STEPS]:
        left.plot(users, [s["steps"][step]["seconds"] for s in sizes], marker="o", label=step)
        right.plot(users, [s["steps"][step]["peak_rss_mib"] / 1024 for s in sizes], marker="o", label=step)
    left.plot(users, [s["rebuild_seconds"] for s in sizes], marker="s", color="black", label="full rebuild")
    right.plot(
        users, [s["rebuild_peak_rss_mib"] / 1024 for s in sizes], marker="s", color="black", label="full rebuild"
    )
    left.plot(
        users, [s["baseline"]["seconds"] for s in sizes], marker="x", color="grey", linestyle="--", label="baseline"
    )
    left.set(xlabel="users", ylabel="seconds", title="time per step")
    right.set(
        xlabel="users",
        ylabel="peak RSS (GiB)",
        title=f"memory per step (PERSONA_MEMORY_LIMIT={result['memory_limit']})",
    )
    for axis in (left, right):
        axis.ticklabel_format(axis="x", style="plain")
        axis.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle(f"{result['stores']}, {result['machine']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", default="100000,300000,1000000", help="comma-separated sizes")
    parser.add_argument("--workdir", default="/tmp/persona-scale")
    parser.add_argument("--shape", default="--wide", help="extra `persona generate` arguments (the data's shape)")
    parser.add_argument("--out", default=None, help="write OUT.json, OUT.md and OUT.png")
    parser.add_argument("--db-url", default=None, help="a MySQL/MariaDB server URL: a fresh database per size")
    parser.add_argument("--opensearch-url", default=None, help="index into OpenSearch instead of the embedded index")
    parser.add_argument("--once", action="store_true", help="skip the second rebuild (the daily case)")
    parser.add_argument("--phase", choices=["rebuild", "baseline", "queries"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args)))
        return 0
    sizes = [one_size(int(n), args) for n in args.users.split(",")]
    result = {
        "command": " ".join([".venv/bin/python", "bench/scale.py", *map(redact, sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Python {platform.python_version()}",
        "stores": ("MariaDB" if args.db_url else "SQLite")
        + " + "
        + ("OpenSearch" if args.opensearch_url else "embedded index"),
        "memory_limit": os.environ.get("PERSONA_MEMORY_LIMIT", "default"),
        "sizes": sizes,
    }
    print(json.dumps(result, indent=2))
    print(markdown(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(result))
        plot(result, out.with_suffix(".png"))
    return 0 if all(s["baseline"]["mismatched_rows"] == 0 for s in sizes) else 1


if __name__ == "__main__":
    sys.exit(main())
