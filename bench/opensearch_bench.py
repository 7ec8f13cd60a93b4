"""Benchmark: the OpenSearch backend against the legacy indexing and query patterns, on a real node.

Usage: .venv/bin/python bench/opensearch_bench.py [--users 100000] [--seed 7] [--queries 200]
       [--url http://127.0.0.1:9200 | --home /tmp/persona-os-bench] [--out docs/bench/opensearch-100k.json]

Personas: the latest build's hand-off files (users, affinities, keys) when they
exist (and ``--synthetic`` is not given), else ``--users`` synthetic personas built directly:
~30 keys per user across brand / generic / category / city / ecomm, Zipf-skewed key
popularity, values = small integer counts normalised per dimension (so many exact ties).

(a) Indexing: ``OpenSearchBackend.publish`` (new index, streamed batches, alias swap) against the
    legacy pattern: the same personas as documents with one dynamic numeric field per key
    (``brand_nike``, ``generic_t-shirt``, ``category_12`` ...; ``index.mapping.total_fields.limit``
    raised as the legacy system had to), sent in batches of 100 documents, one ``_bulk`` request
    at a time, each awaited before the next. Both figures in personas/s and their ratio.
(b) Queries: 200 varied top-20 segment queries through ``OpenSearchBackend.search`` (exact
    scores, valid top-k) against the legacy Painless ``script_score`` query over the legacy
    index (a script that computes 0.15·C + 0.35·B + 0.20·G + 0.30·K from doc values for every
    document passing the gender filter), each run ``--rounds`` times, the two interleaved query
    by query so that both see the same machine load. p50 / p99 in ms (client-side wall time,
    JSON decoding included) and their ratio.

Prints one JSON object (also written to ``--out`` when given) with the command, the machine and the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from persona_work import named_affinities_sql

from persona_assets.query import ScoreWeights, SegmentQuery
from persona_assets.stores.opensearch_index import OpenSearchBackend
from persona_assets.stores.persona_stream import persona_batches_from_frames

TIERS = ("Tier1", "Tier2", "Tier3")
SITES = ("flipkart", "amazon", "myntra", "ajio", "nykaa")

# ------------------------------------------------------------------ the legacy query (bench only)

# The legacy segment query: every document passing the gender filter is scored by a Painless
# script reading one dynamic numeric field per key. A missing field counts 0; constants for the
# criteria not given are passed as params (C = 1/3, B = G = K = 1).
LEGACY_SCRIPT = """
double c = params.c_const; double b = params.b_const; double g = params.g_const; double k = params.k_const;
if (params.c_field != null) { c = doc.containsKey(params.c_field) && !doc[params.c_field].empty ? doc[params.c_field].value : 0.0; }
if (params.b_field != null) { b = doc.containsKey(params.b_field) && !doc[params.b_field].empty ? doc[params.b_field].value : 0.0; }
if (params.g_field != null) { g = doc.containsKey(params.g_field) && !doc[params.g_field].empty ? doc[params.g_field].value : 0.0; }
if (params.k_field != null) { k = doc.containsKey(params.k_field) && !doc[params.k_field].empty ? doc[params.k_field].value : 0.0; }
return params.wc * c + params.wb * b + params.wg * g + params.wk * k;
"""


def legacy_field(dim: str, key: str) -> str:
    """The legacy per-key field name (dots would nest objects, so they become underscores)."""
    return f"{dim}_{key}".replace(".", "_")


def legacy_query(query: SegmentQuery, w: ScoreWeights) -> dict:
    params = {
        "wc": w.city,
        "wb": w.brand,
        "wg": w.generic,
        "wk": w.category,
        "c_const": 1.0 / 3.0,
        "b_const": 1.0,
        "g_const": 1.0,
        "k_const": 1.0,
        "c_field": legacy_field("city", query.city_tier) if query.city_tier else None,
        "b_field": legacy_field("brand", query.brand) if query.brand else None,
        "g_field": legacy_field("generic", query.generic_name) if query.generic_name else None,
        "k_field": legacy_field("category", query.category_id) if query.category_id else None,
    }
    gender = {"match_all": {}} if query.gender is None else {"term": {"gender": query.gender}}
    return {
        "query": {
            "script_score": {
                "query": {"bool": {"filter": [gender]}},
                "script": {"source": LEGACY_SCRIPT, "params": params},
            }
        },
        "sort": [{"_score": "desc"}, {"ext_id": "asc"}],
        "track_total_hits": True,
        "from": query.offset,
        "size": query.size,
        "_source": ["ext_id", "gender"],
    }


def legacy_documents(users: pd.DataFrame, affinity: pd.DataFrame) -> list[str]:
    """One JSON document per persona with one numeric field per key (the legacy shape)."""
    fields = [legacy_field(d, k) for d, k in zip(affinity["dimension"], affinity["key"], strict=True)]
    per_user: dict[str, dict] = {}
    for ext_id, field, value in zip(affinity["ext_id"], fields, affinity["value"].tolist(), strict=True):
        per_user.setdefault(ext_id, {})[field] = value
    docs = []
    for ext_id, gender in zip(users["ext_id"], users["gender"], strict=True):
        doc = {"ext_id": ext_id, "gender": gender, **per_user.get(ext_id, {})}
        docs.append(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
    return docs


def legacy_index(client, index: str, users: pd.DataFrame, affinity: pd.DataFrame, batch: int = 100) -> dict:
    """Index the legacy way: batches of ``batch`` documents, one ``_bulk`` at a time, each awaited."""
    n_fields = int(affinity.groupby(["dimension", "key"]).ngroups)
    client.indices.delete(index=index, ignore=[404])
    client.indices.create(
        index=index,
        body={
            "settings": {
                "index": {
                    "number_of_shards": 1,
                    "number_of_replicas": 0,
                    "mapping.total_fields.limit": n_fields + 100,
                }
            },
            "mappings": {
                "dynamic": True,
                "dynamic_templates": [
                    {"affinities": {"match_mapping_type": "*", "match": "*_*", "mapping": {"type": "double"}}}
                ],
                "properties": {"ext_id": {"type": "keyword"}, "gender": {"type": "keyword"}},
            },
        },
    )
    started = time.perf_counter()
    docs = legacy_documents(users, affinity)
    ids = users["ext_id"].tolist()
    errors = 0
    for start in range(0, len(docs), batch):
        lines = []
        for ext_id, doc in zip(ids[start : start + batch], docs[start : start + batch], strict=True):
            lines.append(json.dumps({"index": {"_id": ext_id}}, ensure_ascii=False))
            lines.append(doc)
        response = client.bulk(index=index, body="\n".join(lines) + "\n", request_timeout=120)
        if response.get("errors"):
            errors += sum(1 for item in response["items"] if item["index"].get("error"))
    client.indices.refresh(index=index)
    seconds = time.perf_counter() - started
    count = int(client.count(index=index)["count"])
    return {"seconds": seconds, "documents": count, "errors": errors, "fields": n_fields}


# ------------------------------------------------------------------ synthetic personas


def _zipf_probabilities(n: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


def synthetic_personas(n_users: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users and their normalised affinities (long table), ~30 keys per user, skewed key popularity."""
    rng = np.random.default_rng(seed)
    ext_ids = np.array([f"u{seed:02d}{i:07d}" for i in rng.permutation(n_users)], dtype=object)
    gender = rng.choice(["men", "women", "unisex"], size=n_users, p=[0.42, 0.40, 0.18])
    brand_names = [f"brand {i:03d}" for i in range(300)]
    brand_names[:6] = ["nike", "puma", "adidas", "dr. martens", "h&m", "levi's"]
    generic_names = [f"generic {i:03d}" for i in range(500)]
    generic_names[:5] = ["t-shirt", "shoes", "jeans", "kurta", "watch"]
    categories = [str(i) for i in rng.choice(np.arange(1, 100_000), size=2000, replace=False)]
    dims = {
        # dimension: (vocabulary, mean keys per user, Zipf exponent)
        "brand": (brand_names, 8, 1.1),
        "generic": (generic_names, 8, 1.0),
        "category": (categories, 10, 0.9),
        "city": (list(TIERS), 1.6, 0.8),
        "ecomm": (list(SITES), 1.5, 1.2),
    }
    frames = []
    for dim, (vocab, mean, exponent) in dims.items():
        counts = np.clip(rng.poisson(mean, size=n_users), 1 if dim in ("city", "ecomm") else 0, len(vocab))
        user_rows = np.repeat(np.arange(n_users), counts)
        keys = rng.choice(len(vocab), size=user_rows.size, p=_zipf_probabilities(len(vocab), exponent))
        frame = pd.DataFrame({"row": user_rows, "k": keys}).drop_duplicates()
        # Raw counts: visits (1) mostly, sometimes a purchase (+40) or a search (+5).
        raw = rng.choice([1, 1, 1, 2, 3, 5, 6, 41], size=len(frame)).astype(np.float64)
        sums = np.bincount(frame["row"].to_numpy(), weights=raw, minlength=n_users)
        frame["value"] = raw / sums[frame["row"].to_numpy()]
        frame["dimension"] = dim
        frame["key"] = np.asarray(vocab, dtype=object)[frame["k"].to_numpy()]
        frames.append(frame)
    long = pd.concat(frames, ignore_index=True)
    affinity = pd.DataFrame(
        {
            "ext_id": ext_ids[long["row"].to_numpy()],
            "dimension": long["dimension"].to_numpy(),
            "key": long["key"].to_numpy(),
            "value": long["value"].to_numpy(),
        }
    )
    users = pd.DataFrame({"ext_id": ext_ids, "gender": gender})
    return users, affinity


def load_personas(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    home = os.environ.get("PERSONA_HOME")
    if home and not args.synthetic:
        from persona_assets.builds import latest_build
        from persona_assets.pipeline import dagster_instance
        from persona_assets.settings import PersonaSettings
        from persona_assets.stores.search_backend import PersonaHandOff

        settings = PersonaSettings.from_env()
        work = settings.layout.build_dir(latest_build(dagster_instance(settings), "user_personas") or "none")
        hand_off = PersonaHandOff.in_directory(work)
        if all(path.exists() for path in hand_off.files):
            users = pd.read_parquet(hand_off.users)[["ext_id", "gender"]]
            affinity = duckdb.sql(f"SELECT * FROM {named_affinities_sql(hand_off)}").df()
            return users, affinity, f"{work} (the hand-off files)"
    users, affinity = synthetic_personas(args.users, args.seed)
    return users, affinity, f"synthetic: {args.users} users, seed {args.seed}"


# ------------------------------------------------------------------ queries


def segment_queries(affinity: pd.DataFrame, n: int, seed: int) -> list[SegmentQuery]:
    """Varied top-20 queries: popular and rare keys, every combination of criteria, gender filters."""
    rng = random.Random(seed)
    by_dim = {
        dim: group["key"].value_counts().index.tolist() for dim, group in affinity.groupby("dimension", observed=True)
    }

    def pick(dim: str) -> str:
        keys = by_dim.get(dim) or ["none"]
        # Half from the 20 most popular keys, half from anywhere (rare ones included).
        return rng.choice(keys[:20]) if rng.random() < 0.5 else rng.choice(keys)

    queries = []
    for i in range(n):
        shape = i % 8
        queries.append(
            SegmentQuery(
                gender=rng.choice([None, "men", "women"]),
                city_tier=rng.choice([None, "Tier1", "Tier2", "Tier3"]) if shape != 0 else None,
                brand=pick("brand") if shape in (1, 3, 5, 7) else None,
                generic_name=pick("generic") if shape in (2, 3, 6, 7) else None,
                category_id=pick("category") if shape in (4, 5, 6, 7) else None,
                category_level=3 if shape in (4, 5, 6, 7) else None,
                size=20,
            )
        )
    return queries


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _summary(times: list[float]) -> dict:
    return {
        "p50_ms": round(percentile(times, 50), 2),
        "p99_ms": round(percentile(times, 99), 2),
        "mean_ms": round(statistics.fmean(times), 2),
    }


def time_queries(runs: dict, queries: list[SegmentQuery], rounds: int = 3, warmup: int = 20) -> dict:
    """Time each runner on every query, interleaved (query by query, alternating who goes first)."""
    for query in queries[:warmup]:
        for run in runs.values():
            run(query)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(rounds):
        for i, query in enumerate(queries):
            order = names if (i + round_) % 2 == 0 else names[::-1]
            for name in order:
                started = time.perf_counter()
                runs[name](query)
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: _summary(values) for name, values in times.items()}


# ------------------------------------------------------------------ main


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = round(int(mem) / 1024 / 1024, 1)
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="times each query is run (interleaved)")
    parser.add_argument("--url", help="an OpenSearch node to use (default: start the project's throwaway node)")
    parser.add_argument("--home", default="/tmp/persona-os-bench", help="where the throwaway node lives")
    parser.add_argument("--synthetic", action="store_true", help="ignore the latest build's parquet files")
    parser.add_argument("--keep-node", action="store_true", help="leave the throwaway node running")
    parser.add_argument("--out", help="also write the JSON result here")
    args = parser.parse_args(argv)

    started_node = False
    url = args.url
    if not url:
        from persona_assets import services

        url = services.opensearch.start(args.home)
        started_node = True
    try:
        users, affinity, source = load_personas(args)
        print(f"personas: {len(users):,} users, {len(affinity):,} affinity rows ({source})", file=sys.stderr)
        backend = OpenSearchBackend(url, alias="bench_personas")
        client = backend.client
        reports = []
        for attempt in range(2):  # the first publish into a node also warms the JVM; time the second
            reports.append(backend.publish(persona_batches_from_frames(users, affinity)))
            print(f"publish #{attempt + 1}: {reports[-1].details}", file=sys.stderr)
        report = reports[-1]
        ours_seconds = float(report.details["seconds"])
        legacy = legacy_index(client, "bench_legacy_personas", users, affinity)
        print(f"legacy indexing: {legacy}", file=sys.stderr)

        queries = segment_queries(affinity, args.queries, args.seed)
        weights = ScoreWeights()
        timed = time_queries(
            {
                "ours": lambda q: backend.search(q, weights),
                "legacy": lambda q: client.search(index="bench_legacy_personas", body=legacy_query(q, weights)),
            },
            queries,
            rounds=args.rounds,
        )
        ours_q, legacy_q = timed["ours"], timed["legacy"]
        # Sanity: both rank alike (legacy scores are Lucene float32, hence the 1e-5).
        agree = 0
        for query in queries[:50]:
            mine = [h.score for h in backend.search(query, weights).hits]
            theirs = client.search(index="bench_legacy_personas", body=legacy_query(query, weights))["hits"]["hits"]
            agree += len(mine) == len(theirs) and all(
                abs(a - b["_score"]) <= 1e-5 for a, b in zip(mine, theirs, strict=True)
            )
        n = len(users)
        ours_rate = n / ours_seconds
        legacy_rate = n / legacy["seconds"]
        result = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine(),
            "opensearch": client.info()["version"]["number"],
            "personas": n,
            "affinity_rows": len(affinity),
            "source": source,
            "indexing": {
                "ours": {
                    "docs_per_second": round(ours_rate, 1),
                    "seconds": round(ours_seconds, 2),
                    "first_publish_docs_per_second": reports[0].details["docs_per_second"],
                    "load_seconds": report.details["load_seconds"],
                    "bulk_chunk": backend.bulk_chunk,
                    "threads": backend.bulk_threads,
                    "failed": len(report.failed),
                    "mapping_fields": len(
                        client.indices.get_mapping(index=backend.alias)[report.details["index"]]["mappings"][
                            "properties"
                        ]
                    ),
                },
                "legacy": {
                    "docs_per_second": round(legacy_rate, 1),
                    "seconds": round(legacy["seconds"], 2),
                    "batch": 100,
                    "errors": legacy["errors"],
                    "mapping_fields": legacy["fields"] + 2,
                },
                "ratio": round(ours_rate / legacy_rate, 2),
            },
            "queries": {
                "count": len(queries),
                "rounds": args.rounds,
                "size": 20,
                "ours": ours_q,
                "legacy_script_score": legacy_q,
                "p50_ratio_legacy_over_ours": round(legacy_q["p50_ms"] / ours_q["p50_ms"], 2),
                "p99_ratio_legacy_over_ours": round(legacy_q["p99_ms"] / ours_q["p99_ms"], 2),
                "same_top20_scores_as_legacy": f"{agree}/{min(50, len(queries))}",
            },
        }
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        client.indices.delete(index="bench_legacy_personas", ignore=[404])
    finally:
        if started_node and not args.keep_node:
            from persona_assets import services

            services.opensearch.stop(args.home)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
