"""Benchmark: lookalike audiences' quality on planted interest groups, and their latency.

Usage: PERSONA_HOME=<home> [PERSONA_DB_URL=... PERSONA_OPENSEARCH_URL=...] .venv/bin/python bench/lookalike_bench.py
       --data <the generated directory> [--groups 10] [--out docs/bench/lookalikes-1m]

The home holds the data of ``persona generate DIR --planted-groups N`` imported and rebuilt; which backend
pair answers is the environment's, as everywhere.

* **Quality.** For each of the first ``--groups`` planted groups: a seed of ``--seed-size`` (200) members
  drawn at random (seeded), the ``--size`` (1,000) best lookalikes (seed excluded), precision = the share
  of them that belong to the group. Baseline in the same run: what a marketer could do without
  lookalikes, the segment query (``fetch_personas``) of the seed's favourite brand (the heaviest brand of
  its centroid), its first 1,000 personas outside the seed, scored the same way.
* **Speed.** ``--requests`` (100) lookalike requests with seeds of ``--speed-seed-size`` (1,000) members
  of the groups, asking for ``--speed-size`` lookalikes (100, the default size, and 1,000), in-process through the service (``find_lookalikes``: seed read from the store, centroid,
  ranking, the answer built) and over HTTP (``persona serve``, one client); p50/p99. Baseline in the same
  run: the varied top-20 segment queries of ``bench/_common.query_latency``.
* ``--mass`` re-runs the quality and in-process speed with another share of the centroid's squared length
  kept (1.0 = no cut), to show what the cut costs and saves.
"""

from __future__ import annotations

import argparse
import csv
import gc
import http.client
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

from _common import _percentile, query_latency
from http_load import _free_port, _wait_healthy


def planted_groups(data: Path) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    with (data / "planted_groups.csv").open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            groups.setdefault(int(row["group"]), []).append(row["ext_id"])
    return groups


def quality(groups: dict[int, list[str]], count: int, seed_size: int, size: int, seed: int) -> list[dict]:
    from persona_assets.query.lookalikes import find_lookalikes
    from persona_assets.query.service import fetch_personas
    from persona_assets.settings import PersonaSettings
    from persona_assets.stores import relational
    from persona_assets.stores.backends import search_backend_for

    settings = PersonaSettings.from_env()
    engine, backend = relational.store_engine(settings.db_url), search_backend_for(settings)
    rng = random.Random(seed)
    rows = []
    for group in sorted(groups)[:count]:
        members = set(groups[group])
        seed_ids = rng.sample(groups[group], seed_size)
        started = time.perf_counter()
        answer = find_lookalikes({"seed": {"extIds": seed_ids}, "size": size}, engine, backend, settings.weights)
        seconds = time.perf_counter() - started
        found = [r["ext_id"] for r in answer["results"]]
        brand = next(iter(answer["seed"]["centroid"].get("brand", {})), None)
        baseline: list[str] = []
        if brand is not None:  # pages of the query (at most 1,000 each) until `size` personas outside the seed
            start, chosen = 0, set(seed_ids)
            while len(baseline) < size and start + 1000 <= 10_000:
                page = fetch_personas({"brand": brand, "size": 1000, "from": start}, engine, backend, settings.weights)
                baseline += [r["ext_id"] for r in page["results"] if r["ext_id"] not in chosen]
                start += 1000
            baseline = baseline[:size]
        rows.append(
            {
                "group": group,
                "members": len(members),
                "precision": round(sum(e in members for e in found) / max(len(found), 1), 4),
                "returned": len(found),
                "baseline_brand": brand,
                "baseline_precision": round(sum(e in members for e in baseline) / max(len(baseline), 1), 4),
                "seconds": round(seconds, 3),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def speed_requests(groups: dict[int, list[str]], count: int, seed_size: int, size: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    names = sorted(group for group, members in groups.items() if len(members) >= seed_size)
    return [
        {"seed": {"extIds": rng.sample(groups[names[i % len(names)]], seed_size)}, "size": size} for i in range(count)
    ]


def in_process_latency(requests: list[dict]) -> dict:
    from persona_assets.query.lookalikes import find_lookalikes
    from persona_assets.settings import PersonaSettings
    from persona_assets.stores import relational
    from persona_assets.stores.backends import search_backend_for

    settings = PersonaSettings.from_env()
    engine, backend = relational.store_engine(settings.db_url), search_backend_for(settings)
    for request in requests[:5]:
        find_lookalikes(request, engine, backend, settings.weights)  # warm: the index and its arrays load
    gc.freeze()  # as persona serve does once warm (api._warm)
    times = []
    for request in requests:
        started = time.perf_counter()
        find_lookalikes(request, engine, backend, settings.weights)
        times.append((time.perf_counter() - started) * 1000)
    return {
        "requests": len(times),
        "p50_ms": round(_percentile(times, 0.5), 1),
        "p99_ms": round(_percentile(times, 0.99), 1),
    }


def http_latency(requests: list[dict]) -> dict:
    """The same requests over HTTP to ``persona serve`` (one worker, one client)."""
    port = _free_port()
    persona = str(Path(sys.executable).with_name("persona"))
    server = subprocess.Popen(
        [persona, "serve", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_healthy(port, timeout=300)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        times = []
        for number, request in enumerate([*requests[:5], *requests]):
            body = json.dumps(request).encode()
            started = time.perf_counter()
            conn.request("POST", "/lookalikes", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"POST /lookalikes answered {response.status}")
            if number >= 5:
                times.append((time.perf_counter() - started) * 1000)
        return {
            "requests": len(times),
            "p50_ms": round(_percentile(times, 0.5), 1),
            "p99_ms": round(_percentile(times, 0.99), 1),
        }
    finally:
        server.terminate()
        server.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="the generated directory (planted_groups.csv)")
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--seed-size", type=int, default=200)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--speed-seed-size", type=int, default=1000)
    parser.add_argument(
        "--speed-size", type=int, action="append", help="lookalikes per timed request (default 100 and 1000)"
    )
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--mass", type=float, action="append", default=[], help="also run with this centroid mass")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--quality-only", action="store_true", help="skip every latency measurement")
    parser.add_argument("--out", help="write OUT.json")
    args = parser.parse_args(argv)

    from persona_assets.audiences import lookalikes
    from persona_assets.settings import PersonaSettings

    settings = PersonaSettings.from_env()
    groups = planted_groups(args.data)
    shape = json.loads((args.data / "shape.json").read_text(encoding="utf-8"))
    speed_sizes = args.speed_size or [100, 1000]
    requests = {n: speed_requests(groups, args.requests, args.speed_seed_size, n, seed=7) for n in speed_sizes}
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
        "backend": "opensearch" if settings.opensearch_url else "embedded",
        "data": {k: shape[k] for k in ("users", "seed", "days", "preset")} | {"shape": shape["shape"]},
        "runs": [],
    }
    for mass in [lookalikes.CENTROID_MASS, *args.mass]:
        lookalikes.CENTROID_MASS = mass
        rows = quality(groups, args.groups, args.seed_size, args.size, seed=11)
        run = {
            "centroid_mass": mass,
            "quality": rows,
            "precision_mean": round(sum(r["precision"] for r in rows) / len(rows), 4),
            "precision_min": min(r["precision"] for r in rows),
            "baseline_precision_mean": round(sum(r["baseline_precision"] for r in rows) / len(rows), 4),
        }
        if not args.quality_only:
            run["latency_in_process"] = {f"size {n}": in_process_latency(r) for n, r in requests.items()}
        report["runs"].append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "quality"}), file=sys.stderr, flush=True)
    lookalikes.CENTROID_MASS = report["runs"][0]["centroid_mass"]
    if not (args.no_http or args.quality_only):
        report["latency_http"] = {f"size {n}": http_latency(r) for n, r in requests.items()}
    if not args.quality_only:
        report["baseline_segment_query"] = query_latency(200, seed=3)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(f"{args.out}.json").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
