"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import random
import re
import time


def redact(argument: str) -> str:
    """Hide a password in a URL argument (recorded commands go into docs/)."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", argument)


BASELINE_SQL = """
WITH ev AS (
  SELECT ext_id, pid, pincode, 1 AS w FROM visits
  UNION ALL SELECT ext_id, pid, pincode, 40 FROM checkouts
),
prod AS (SELECT * FROM products),
contrib AS (
  SELECT ev.ext_id, 'brand' AS dimension, p.brand AS key, ev.w AS weight FROM ev JOIN prod p USING (pid) WHERE p.brand <> ''
  UNION ALL SELECT ev.ext_id, 'generic', p.generic_name, ev.w FROM ev JOIN prod p USING (pid) WHERE p.generic_name <> ''
  UNION ALL SELECT ev.ext_id, 'category', CAST(p.cat_l1 AS VARCHAR), ev.w FROM ev JOIN prod p USING (pid) WHERE p.cat_l1 IS NOT NULL
  UNION ALL SELECT ev.ext_id, 'category', CAST(p.cat_l2 AS VARCHAR), ev.w FROM ev JOIN prod p USING (pid) WHERE p.cat_l2 IS NOT NULL
  UNION ALL SELECT ev.ext_id, 'category', CAST(p.cat_l3 AS VARCHAR), ev.w FROM ev JOIN prod p USING (pid) WHERE p.cat_l3 IS NOT NULL
  UNION ALL SELECT ev.ext_id, 'ecomm', p.pos, ev.w FROM ev JOIN prod p USING (pid) WHERE p.pos <> ''
  UNION ALL SELECT ev.ext_id, 'gender', p.gender, 1 FROM ev JOIN prod p USING (pid) WHERE p.gender IS NOT NULL
  UNION ALL SELECT ev.ext_id, 'city', t.tier, 1 FROM ev JOIN prod p USING (pid) JOIN pincode_tiers t ON t.pincode = ev.pincode
  UNION ALL
  -- Searches: a name is found when its tokens are one of the query's n-grams (n = a name's token count);
  -- +5 once per search and name.
  SELECT ext_id, dimension, name, 5 FROM (
    SELECT DISTINCT s.search_row, s.ext_id, n.dimension, n.name
    FROM (SELECT row_number() OVER () AS search_row, ext_id, regexp_extract_all(lower(query), $pattern) AS tokens
          FROM searches) s
    CROSS JOIN (SELECT DISTINCT n_tokens AS len FROM names) l
    CROSS JOIN LATERAL (SELECT unnest(range(1, len(s.tokens) - l.len + 2)) AS i) g
    JOIN names n ON n.n_tokens = l.len AND n.token_key = array_to_string(s.tokens[g.i:g.i + l.len - 1], ' ')
  )
)
SELECT ext_id, dimension, key, SUM(weight)::BIGINT AS weight FROM contrib GROUP BY ALL
"""


def baseline_raw_affinities() -> dict:
    """The hand-written DuckDB baseline over the current PERSONA_HOME, and whether it agrees with ours."""
    import pandas as pd

    from persona_assets.assets.reference import PINCODE_TIERS_FILE
    from persona_assets.builds import latest_build
    from persona_assets.compute import affinities
    from persona_assets.compute.duck import connect
    from persona_assets.contract.tokens import token_regex_re2
    from persona_assets.pipeline import dagster_instance
    from persona_assets.settings import PersonaSettings
    from persona_assets.stores import relational
    from persona_assets.stores.events import EventStore

    settings = PersonaSettings.from_env()
    engine = relational.store_engine(settings.db_url)
    con = connect(settings.duckdb_limits)
    affinities.register_events(con, EventStore(settings.layout.landing_dir, settings.layout.events_dir))
    affinities.register_reference(
        con,
        relational.read_frame(engine, relational.products),
        relational.read_frame(engine, relational.categories),
        pd.read_parquet(settings.layout.reference_dir / PINCODE_TIERS_FILE),
    )
    started = time.perf_counter()
    con.execute(f"CREATE TABLE baseline AS {BASELINE_SQL}", {"pattern": token_regex_re2()})
    seconds = time.perf_counter() - started
    build = latest_build(dagster_instance(settings), "user_raw_affinities")
    affinities.load_raw_affinities(con, settings.layout.build_dir(build or "none"))
    con.execute("CREATE VIEW ours AS SELECT * FROM raw_affinity")
    mismatches = con.execute(
        """
        SELECT COUNT(*) FROM (
          (SELECT * FROM ours EXCEPT ALL SELECT * FROM baseline) UNION ALL (SELECT * FROM baseline EXCEPT ALL SELECT * FROM ours)
        )
        """
    ).fetchall()[0][0]
    counts = con.execute(
        "SELECT (SELECT COUNT(*) FROM visits), (SELECT COUNT(*) FROM checkouts), (SELECT COUNT(*) FROM searches)"
    ).fetchall()[0]
    return {
        "seconds": seconds,
        "mismatched_rows": mismatches,
        "events": {"visits": counts[0], "checkouts": counts[1], "searches": counts[2]},
    }


def _varied_requests(engine, count: int, seed: int) -> list[dict]:
    from persona_assets.stores import relational

    vocab = relational.read_frame(engine, relational.attribute_vocabulary)
    brands = vocab.loc[vocab["kind"] == "brand", "name"].tolist()
    generics = vocab.loc[vocab["kind"] == "generic", "name"].tolist()
    cats = relational.read_frame(engine, relational.categories)
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        request: dict = {"size": 20}
        if rng.random() < 0.6:
            request["gender"] = rng.choice(["men", "women", "any"])
        if rng.random() < 0.6:
            request["cityTier"] = rng.choice(["Tier1", "tier 2", "3"])
        if rng.random() < 0.7:
            request["brand"] = rng.choice(brands[:100])
        if rng.random() < 0.5:
            request["genericName"] = rng.choice(generics[:200])
        if rng.random() < 0.5:
            level = rng.choice([1, 2, 3])
            ids = cats.loc[cats["level"] == level, "cat_id"].tolist() or cats["cat_id"].tolist()
            request[f"level{level}Cat"] = int(rng.choice(ids))
        requests.append(request)
    return requests


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def query_latency(count: int, seed: int) -> dict:
    """p50/p99 of COUNT varied top-20 queries in-process: index ranking alone, and the full answer."""
    from persona_assets.query.request import parse_segment_request
    from persona_assets.query.service import fetch_personas
    from persona_assets.settings import PersonaSettings
    from persona_assets.stores import relational
    from persona_assets.stores.backends import search_backend_for

    settings = PersonaSettings.from_env()
    engine, index = relational.store_engine(settings.db_url), search_backend_for(settings)
    requests = _varied_requests(engine, count, seed)
    weights = settings.weights
    parsed = [parse_segment_request(r) for r in requests]
    for query in parsed[:20]:
        index.search(query, weights)  # warm caches
    rank_ms, full_ms = [], []
    for query in parsed:
        started = time.perf_counter()
        index.search(query, weights)
        rank_ms.append((time.perf_counter() - started) * 1000)
    for request in requests:
        started = time.perf_counter()
        fetch_personas(request, engine, index, weights)
        full_ms.append((time.perf_counter() - started) * 1000)
    return {
        "personas": index.document_count(),
        "queries": count,
        "rank_ms": {"p50": _percentile(rank_ms, 0.5), "p99": _percentile(rank_ms, 0.99)},
        "full_answer_ms": {"p50": _percentile(full_ms, 0.5), "p99": _percentile(full_ms, 0.99)},
    }
