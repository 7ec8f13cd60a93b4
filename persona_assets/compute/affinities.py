"""Raw affinities, vocabulary and normalised personas as set-based DuckDB SQL (contract sections 2-3).

Every function works on whole tables inside one DuckDB connection: no per-user or
per-event Python. Long tables carry the maps: ``(ext_id, dimension, key, weight)``.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from persona_assets.compute.duck import memory_limit_bytes, parquet_relation
from persona_assets.contract.tokens import token_key, token_regex_re2, tokenize
from persona_assets.stores.events import EVENT_KINDS, EventStore

# The version of what these functions compute, given to the rebuild's assets as their code_version: the
# UI then marks a build made by another version as out of date. Bump it with any change of results
# (weights, rules, the vocabulary), not with a faster way to the same results.
COMPUTATION_VERSION = "contract-1"

VISIT_WEIGHT = 1
CHECKOUT_WEIGHT = 40
SEARCH_WEIGHT = 5
PRODUCT_DIMENSIONS = ("brand", "generic", "category", "ecomm")
MAP_DIMENSIONS = ("brand", "generic", "category", "city", "ecomm")


def register_events(con: duckdb.DuckDBPyConnection, store: EventStore, only_users: list[str] | None = None) -> None:
    """Views ``visits``, ``checkouts``, ``searches`` over every published day (empty when none).

    With ``only_users``, they are tables of just those users' events (a refresh of a few users): every
    day is read once, here, rather than by each step that reads events.
    """
    scope, relation = "", "VIEW"
    if only_users is not None:
        con.register("only_users_arrow", pa.table({"ext_id": pa.array(only_users, pa.string())}))
        con.execute("CREATE OR REPLACE TABLE only_users AS SELECT DISTINCT ext_id FROM only_users_arrow")
        scope, relation = " WHERE ext_id IN (SELECT ext_id FROM only_users)", "TEMP TABLE"
    for kind in EVENT_KINDS.values():
        pattern = store.published_glob(kind.name)
        if pattern is None:
            con.register(f"{kind.name}_empty", kind.schema.empty_table())
            source = f"{kind.name}_empty"
        else:
            source = parquet_relation(pattern)
        con.execute(f"CREATE OR REPLACE {relation} {kind.name} AS SELECT * FROM {source}{scope}")


def register_reference(
    con: duckdb.DuckDBPyConnection, products: pd.DataFrame, categories: pd.DataFrame, pincode_tiers: pd.DataFrame
) -> None:
    """Tables ``products``, ``categories``, ``pincode_tiers`` and the searchable ``names``."""
    con.register("products_df", products)
    con.execute("CREATE OR REPLACE TABLE products AS SELECT * FROM products_df")
    register_categories(con, categories)
    con.register("tiers_df", pincode_tiers[["pincode", "tier"]])
    con.execute("CREATE OR REPLACE TABLE pincode_tiers AS SELECT pincode, tier FROM tiers_df")
    con.register("names_df", searchable_names(products))
    con.execute("CREATE OR REPLACE TABLE names AS SELECT * FROM names_df")


def register_categories(con: duckdb.DuckDBPyConnection, categories: pd.DataFrame) -> None:
    """Table ``categories(cat_id)``: the hierarchy's ids as map keys (canonical decimal strings)."""
    con.register("categories_df", categories[["cat_id"]])
    con.execute("CREATE OR REPLACE TABLE categories AS SELECT CAST(cat_id AS VARCHAR) AS cat_id FROM categories_df")


def searchable_names(products: pd.DataFrame) -> pd.DataFrame:
    """Every distinct brand and generic name of the catalog with its token key (names without tokens dropped).

    Catalog-sized (tens of thousands of names), so tokenising each name in Python is cheap.
    """
    frames = []
    for dimension, column in (("brand", "brand"), ("generic", "generic_name")):
        names = pd.Series(products[column].dropna().unique(), dtype=object)
        names = names[names != ""]
        keys = names.map(token_key)
        frames.append(
            pd.DataFrame(
                {
                    "dimension": dimension,
                    "name": names,
                    "token_key": keys,
                    "n_tokens": names.map(lambda n: len(tokenize(n))),
                }
            )
        )
    names = pd.concat(frames, ignore_index=True)
    return names[names["n_tokens"] > 0].reset_index(drop=True)


def _tokenised_search_texts(con: duckdb.DuckDBPyConnection) -> None:
    """Table ``search_text_tokens(query, tokens)`` over the distinct query texts.

    ASCII texts are tokenised by DuckDB with the contract's pattern; the rare non-ASCII ones
    by Python, whose ``str.lower`` the rule is defined by (DuckDB lower-cases a few letters
    such as the Turkish dotted I differently).
    """
    pattern = token_regex_re2()
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE search_texts AS
        SELECT DISTINCT query FROM searches WHERE query IS NOT NULL AND query <> ''
        """
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE search_text_tokens AS "
        "SELECT query, regexp_extract_all(lower(query), $pattern) AS tokens FROM search_texts "
        "WHERE regexp_full_match(query, '[\\x00-\\x7f]*')",
        {"pattern": pattern},
    )
    others = con.execute(
        "SELECT query FROM search_texts WHERE NOT regexp_full_match(query, '[\\x00-\\x7f]*')"
    ).fetchall()
    if others:
        texts = [row[0] for row in others]
        extra = pa.table({"query": texts, "tokens": [tokenize(t) for t in texts]})
        con.register("non_ascii_tokens", extra)
        con.execute("INSERT INTO search_text_tokens SELECT query, tokens FROM non_ascii_tokens")


def compute_search_matches(con: duckdb.DuckDBPyConnection) -> None:
    """Table ``search_matches(query, dimension, name)``: every catalog name found in each distinct text."""
    _tokenised_search_texts(con)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE search_matches AS
        WITH lengths AS (SELECT DISTINCT n_tokens AS n FROM names),
        grams AS (
            SELECT t.query, array_to_string(list_slice(t.tokens, r.i, r.i + l.n - 1), ' ') AS gram
            FROM search_text_tokens t
            CROSS JOIN lengths l
            CROSS JOIN LATERAL (SELECT unnest(range(1, len(t.tokens) - l.n + 2)) AS i) r
            WHERE len(t.tokens) >= l.n
        )
        SELECT DISTINCT g.query, n.dimension, n.name
        FROM grams g JOIN names n ON n.token_key = g.gram
        """
    )


def create_users(con: duckdb.DuckDBPyConnection) -> None:
    """Table ``users(ext_id, uid)``: every user with events, numbered 0..n-1.

    The dense ``uid`` is what every big table carries instead of the ext_id string, and what the writes
    of per-user rows are cut into ranges by (:func:`user_ranges`). Numbered in ext_id order, so each range
    reaches the relational store in primary-key order: its B-tree grows at the end instead of splitting
    pages all over (several times faster on SQLite and InnoDB alike).
    """
    con.execute(
        f"CREATE OR REPLACE TABLE users AS SELECT ext_id, CAST(row_number() OVER (ORDER BY ext_id) - 1 AS INTEGER) "
        f"AS uid FROM ({USERS_SQL})"
    )


def compute_raw_affinities(con: duckdb.DuckDBPyConnection) -> None:
    """Tables ``users(ext_id, uid)``, ``affinity_keys(kid, dimension, key, json_key)``,
    ``raw_affinity_ids(uid, kid, weight)``, ``user_queries`` (:func:`create_user_queries`: the legacy
    row's search terms), ``user_products`` (:func:`create_user_products`) and ``pincode_events``
    (:func:`create_pincode_events`), and the view ``raw_affinity(ext_id, dimension, key, weight)``
    (contract section 2).

    ``raw_affinity`` also carries the ``gender`` dimension (keys men/women/unisex), which is
    not a persona map but feeds the gender label.

    The sums run over integer surrogates (a number per user, product and (dimension, key)) and stay in
    that form: the big tables then move 16-byte rows instead of strings, which at a million users is what
    decides whether a step stays in memory or spills gigabytes. Names are joined back only where they
    leave (the view, the JSON rows, the hand-off files).
    """
    create_users(con)
    compute_search_matches(con)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE product_ids AS
        SELECT pid, CAST(row_number() OVER () AS INTEGER) AS prod FROM products;

        -- Every key a product adds to: its maps (weighted) and its gender (counted).
        CREATE OR REPLACE TEMP TABLE product_keys AS
        SELECT pid, 'brand' AS dimension, brand AS key FROM products WHERE brand <> ''
        UNION ALL SELECT pid, 'generic', generic_name FROM products WHERE generic_name <> ''
        UNION ALL SELECT pid, 'category', CAST(cat_l1 AS VARCHAR) FROM products WHERE cat_l1 IS NOT NULL
        UNION ALL SELECT pid, 'category', CAST(cat_l2 AS VARCHAR) FROM products WHERE cat_l2 IS NOT NULL
        UNION ALL SELECT pid, 'category', CAST(cat_l3 AS VARCHAR) FROM products WHERE cat_l3 IS NOT NULL
        UNION ALL SELECT pid, 'ecomm', pos FROM products WHERE pos <> ''
        UNION ALL SELECT pid, 'gender', gender FROM products WHERE gender IS NOT NULL;

        CREATE OR REPLACE TABLE affinity_keys AS
        SELECT CAST(row_number() OVER () AS INTEGER) AS kid, dimension, key,
               CAST(to_json(key) AS VARCHAR) || ':' AS json_key
        FROM (
            SELECT DISTINCT dimension, key FROM product_keys
            UNION SELECT DISTINCT 'city', tier FROM pincode_tiers
            UNION SELECT DISTINCT dimension, name FROM search_matches
        );
        CREATE OR REPLACE TEMP TABLE product_key_ids AS
        SELECT p.prod, k.kid, pk.dimension = 'gender' AS counts_events
        FROM product_keys pk JOIN product_ids p USING (pid) JOIN affinity_keys k USING (dimension, key);
        CREATE OR REPLACE TEMP TABLE pincode_key_ids AS
        SELECT t.pincode, k.kid FROM pincode_tiers t JOIN affinity_keys k ON k.dimension = 'city' AND k.key = t.tier;

        -- The pass over the product events of catalogued products, one row per (user, product,
        -- pincode): the weight for the product maps, the event count for gender/city, and the latest
        -- visit and purchase (the activity read model's products, :func:`create_user_products`).
        CREATE OR REPLACE TEMP TABLE product_events AS
        SELECT u.uid, p.prod, e.pincode, SUM(e.weight) AS weight, COUNT(*) AS events,
               MAX(e.ts) FILTER (WHERE NOT e.checkout) AS visited_at,
               MAX(e.ts) FILTER (WHERE e.checkout) AS purchased_at
        FROM ({PRODUCT_EVENTS_SQL}) e
        JOIN product_ids p ON p.pid = e.pid
        JOIN users u ON u.ext_id = e.ext_id
        GROUP BY ALL;

        -- Events of pids the catalog does not know (NULL included): in no map, but still activity, and
        -- reported. Few in a healthy feed, so kept apart: the pass above groups by integers only.
        CREATE OR REPLACE TEMP TABLE unknown_product_events AS
        SELECT u.uid, e.pid, e.pincode, COUNT(*) AS events,
               MAX(e.ts) FILTER (WHERE NOT e.checkout) AS visited_at,
               MAX(e.ts) FILTER (WHERE e.checkout) AS purchased_at
        FROM (
            SELECT * FROM ({PRODUCT_EVENTS_SQL}) a WHERE NOT EXISTS (SELECT 1 FROM product_ids p WHERE p.pid = a.pid)
        ) e
        JOIN users u ON u.ext_id = e.ext_id
        GROUP BY ALL;

        CREATE OR REPLACE TEMP TABLE search_keys AS
        SELECT u.uid, k.kid
        FROM searches s
        JOIN search_matches m ON m.query = s.query
        JOIN users u ON u.ext_id = s.ext_id
        JOIN affinity_keys k ON k.dimension = m.dimension AND k.key = m.name;
        """
    )
    # Sums of whole numbers, so exact integers.
    create_by_user_range(
        con,
        "raw_affinity_ids",
        f"""
        SELECT uid, kid, SUM(weight)::BIGINT AS weight FROM (
            SELECT e.uid, k.kid, CASE WHEN k.counts_events THEN e.events ELSE e.weight END AS weight
            FROM product_events e JOIN product_key_ids k ON k.prod = e.prod WHERE e.uid {IN_RANGE}
            UNION ALL
            SELECT e.uid, c.kid, e.events FROM product_events e JOIN pincode_key_ids c ON c.pincode = e.pincode
            WHERE e.uid {IN_RANGE}
            UNION ALL
            SELECT uid, kid, {SEARCH_WEIGHT} FROM search_keys WHERE uid {IN_RANGE}
        )
        GROUP BY ALL
        """,
    )
    create_user_products(con)
    create_pincode_events(con)
    con.execute("DROP TABLE product_events; DROP TABLE unknown_product_events; DROP TABLE search_keys")
    _name_view(con, "raw_affinity", "raw_affinity_ids", "weight")
    create_user_queries(con)


def _name_view(con: duckdb.DuckDBPyConnection, view: str, table: str, value: str) -> None:
    """``view(ext_id, dimension, key, value)``: an id table with its names joined back."""
    con.execute(
        f"CREATE OR REPLACE VIEW {view} AS SELECT u.ext_id, k.dimension, k.key, t.{value} "
        f"FROM {table} t JOIN users u USING (uid) JOIN affinity_keys k USING (kid)"
    )


def load_raw_affinities(con: duckdb.DuckDBPyConnection, work_dir: Path) -> None:
    """The tables :func:`compute_raw_affinities` leaves, as views over the files :func:`save_raw_affinities`
    wrote (how the vocabulary and ``user_personas`` pick them up in connections of their own)."""
    for table in RAW_AFFINITY_TABLES:
        path = work_dir / f"{table}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: materialise user_raw_affinities first")
        con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM {parquet_relation(path)}")
    _name_view(con, "raw_affinity", "raw_affinity_ids", "weight")


def save_raw_affinities(con: duckdb.DuckDBPyConnection, work_dir: Path) -> None:
    for table in RAW_AFFINITY_TABLES:
        write_parquet(con, table, work_dir / f"{table}.parquet")


RAW_AFFINITY_TABLES = ("users", "affinity_keys", "raw_affinity_ids", "user_queries", "user_products", "pincode_events")


def compute_vocabulary(con: duckdb.DuckDBPyConnection, brand_size: int, generic_size: int) -> pd.DataFrame:
    """Top brands and generic names by raw affinity summed over users; ties by name (code-point order)."""
    return con.execute(
        """
        WITH totals AS (
            SELECT k.dimension AS kind, k.key AS name, t.total
            FROM (SELECT kid, SUM(weight) AS total FROM raw_affinity_ids GROUP BY kid HAVING SUM(weight) > 0) t
            JOIN affinity_keys k USING (kid)
            WHERE k.dimension IN ('brand', 'generic')
        ),
        ranked AS (
            SELECT kind, name, total,
                   row_number() OVER (PARTITION BY kind ORDER BY total DESC, name COLLATE "binary" ASC) AS rank
            FROM totals
        )
        SELECT kind, name, rank::INTEGER AS rank, total FROM ranked
        WHERE (kind = 'brand' AND rank <= $brand) OR (kind = 'generic' AND rank <= $generic)
        ORDER BY kind, rank
        """,
        {"brand": brand_size, "generic": generic_size},
    ).df()


def compute_personas(con: duckdb.DuckDBPyConnection, vocabulary: pd.DataFrame) -> None:
    """Tables ``persona_users(ext_id, uid, gender)``, ``kept_keys(kid, dimension)`` and
    ``persona_affinity_ids(uid, kid, value)``, and the views ``persona_affinity(ext_id, dimension, key,
    value)`` and ``persona_keys(kid, dimension, key)`` (the kept keys), from the tables of
    :func:`compute_raw_affinities`.

    Each map is divided by its sum with a GROUP BY and a join on integers (no window over strings).
    """
    con.register("vocabulary_df", vocabulary[["kind", "name"]])
    con.execute(
        """
        CREATE OR REPLACE TABLE kept_keys AS
        SELECT k.kid, k.dimension FROM affinity_keys k
        WHERE k.dimension IN ('city', 'ecomm')
           OR (k.dimension IN ('brand', 'generic')
               AND EXISTS (SELECT 1 FROM vocabulary_df v WHERE v.kind = k.dimension AND v.name = k.key))
           OR (k.dimension = 'category' AND EXISTS (SELECT 1 FROM categories c WHERE c.cat_id = k.key));

        CREATE OR REPLACE TABLE persona_users AS
        WITH g AS (
            SELECT r.uid,
                   SUM(CASE WHEN k.key = 'men' THEN r.weight ELSE 0 END) AS m,
                   SUM(CASE WHEN k.key = 'women' THEN r.weight ELSE 0 END) AS w
            FROM raw_affinity_ids r JOIN affinity_keys k USING (kid) WHERE k.dimension = 'gender' GROUP BY r.uid
        )
        SELECT u.ext_id, u.uid,
               CASE WHEN COALESCE(g.m, 0) + COALESCE(g.w, 0) = 0 THEN 'unisex'
                    WHEN g.m / (g.m + g.w) >= 0.8 THEN 'men'
                    WHEN g.w / (g.m + g.w) >= 0.8 THEN 'women'
                    ELSE 'unisex' END AS gender
        FROM users u LEFT JOIN g ON g.uid = u.uid;
        """
    )
    create_by_user_range(
        con,
        "persona_affinity_ids",
        f"""
        WITH kept AS (
            SELECT r.uid, r.kid, k.dimension, r.weight
            FROM raw_affinity_ids r JOIN kept_keys k USING (kid) WHERE r.weight > 0 AND r.uid {IN_RANGE}
        ),
        totals AS (SELECT uid, dimension, SUM(weight) AS total FROM kept GROUP BY ALL)
        SELECT kept.uid, kept.kid, CAST(kept.weight AS DOUBLE) / totals.total AS value
        FROM kept JOIN totals USING (uid, dimension)
        """,
    )
    _name_view(con, "persona_affinity", "persona_affinity_ids", "value")
    con.execute(
        "CREATE OR REPLACE VIEW persona_keys AS SELECT k.kid, k.dimension, k.key FROM kept_keys JOIN affinity_keys k "
        "USING (kid)"
    )


def user_ranges(con: duckdb.DuckDBPyConnection, users_per_range: int) -> list[tuple[int, int]]:
    """``(first, last)`` uid ranges (inclusive) of at most ``users_per_range`` users covering ``users``."""
    count = int(con.execute("SELECT COUNT(*) FROM users").fetchall()[0][0])
    step = max(1, users_per_range)
    return [(first, min(first + step, count) - 1) for first in range(0, count, step)]


IN_RANGE = "BETWEEN $first AND $last"
"""The filter every per-range query puts on its uid columns (parameters ``first``, ``last``)."""

_AGGREGATION_BYTES_PER_USER = 24 * 1024


def users_per_aggregation(con: duckdb.DuckDBPyConnection) -> int:
    """Users per GROUP BY of the per-user sums under the connection's memory limit (3GiB: ~131,000).

    One GROUP BY of every user's ~75 (user, key) groups spills past a few GiB at a million users, and its
    hash table outgrows the caches long before; a range of users at a time stays in memory (at 1M users
    on this project's machine: 32 s in one GROUP BY, 22 s in eight; docs/benchmarks.md).
    """
    return max(1, memory_limit_bytes(con) // _AGGREGATION_BYTES_PER_USER)


def create_by_user_range(con: duckdb.DuckDBPyConnection, table: str, sql: str) -> None:
    """Table ``table`` from ``sql`` (a SELECT whose uid columns are filtered by :data:`IN_RANGE`), run one
    uid range of :func:`users_per_aggregation` users at a time and laid out in (uid, kid) order."""
    ordered = f"{sql} ORDER BY uid, kid"
    con.execute(f"CREATE OR REPLACE TABLE {table} AS {ordered}", {"first": 0, "last": -1})
    for first, last in user_ranges(con, users_per_aggregation(con)):
        con.execute(f"INSERT INTO {table} {ordered}", {"first": first, "last": last})


def persona_rows_sql(search_terms_limit: int = 100) -> str:
    """Each user of one uid range with both rows the store keeps of them, from one GROUP BY: the
    ``user_personas`` columns (the kept keys' weights as JSON, layout beside ``relational.user_personas``)
    as :data:`PERSONA_COLUMNS` and the legacy ``user_persona`` columns (every raw map and the latest search
    texts) as :data:`LEGACY_COLUMNS`, in uid order.

    The kept maps are the raw ones filtered (``kept_keys``, weight > 0), so both come from one pass over
    ``raw_affinity_ids``, each key's JSON text spelled once (quoted once per key in ``affinity_keys``); two
    passes cost a 1M-user rebuild about 22 s of DuckDB, most of it aggregating the same 67M rows twice.
    Needs the tables of :func:`compute_personas` and ``user_queries`` (:func:`create_user_queries`).
    """

    def json_object(dimension: str, kept: bool) -> str:
        condition = f"dimension = '{dimension}'" + (" AND kept" if kept else "")
        return f"'{{' || string_agg(pair, ',') FILTER (WHERE {condition}) || '}}'"

    maps = ",\n".join(
        [f'{json_object(d, False)} AS "raw_{d}"' for d in (*MAP_DIMENSIONS, "gender")]
        + [f'{json_object(d, True)} AS "kept_{d}"' for d in MAP_DIMENSIONS]
    )
    persona = ", ".join([f"CAST(COALESCE(m.kept_{d}, '{{}}') AS VARCHAR) AS \"p_{d}\"" for d in MAP_DIMENSIONS])
    legacy = ", ".join(
        [f"CAST(COALESCE(m.raw_{d}, '{{}}') AS VARCHAR) AS \"l_{d}\"" for d in (*MAP_DIMENSIONS, "gender")]
    )
    return f"""
        WITH pairs AS (
            SELECT t.uid, k.dimension, k.json_key || CAST(t.weight AS VARCHAR) AS pair,
                   (kept.kid IS NOT NULL AND t.weight > 0) AS kept
            FROM raw_affinity_ids t JOIN affinity_keys k USING (kid) LEFT JOIN kept_keys kept USING (kid)
            WHERE t.uid {IN_RANGE}
        ),
        maps AS (SELECT uid,\n{maps}\nFROM pairs GROUP BY uid),
        terms AS (
            SELECT uid, to_json(list(query ORDER BY last_at DESC, query)[1:{int(search_terms_limit)}]) AS terms
            FROM user_queries WHERE uid {IN_RANGE} GROUP BY uid
        )
        SELECT u.ext_id, u.gender AS p_gender, {persona},
               CAST(COALESCE(t.terms, '[]') AS VARCHAR) AS l_search_terms, {legacy}
        FROM persona_users u LEFT JOIN maps m ON m.uid = u.uid LEFT JOIN terms t ON t.uid = u.uid
        WHERE u.uid {IN_RANGE}
        ORDER BY u.uid
        """


#: ``user_personas`` column <- column of :func:`persona_rows_sql`.
PERSONA_COLUMNS = {
    "ext_id": "ext_id",
    "gender": "p_gender",
    "city": "p_city",
    "ecomm": "p_ecomm",
    "brand_affinity": "p_brand",
    "generic_affinity": "p_generic",
    "category_affinity": "p_category",
}
#: Legacy ``user_persona`` column <- column of :func:`persona_rows_sql`.
LEGACY_COLUMNS = {
    "extId": "ext_id",
    "searchTerms": "l_search_terms",
    "gender": "l_gender",
    "city": "l_city",
    "ecomm": "l_ecomm",
    "brandAffinity": "l_brand",
    "categoryAffinity": "l_category",
    "genericAffinity": "l_generic",
}


def create_user_queries(con: duckdb.DuckDBPyConnection) -> None:
    """Table ``user_queries(uid, query, last_at)``: each user's distinct search texts with their latest time."""
    con.execute(
        "CREATE OR REPLACE TABLE user_queries AS "
        "SELECT u.uid, s.query, MAX(s.ts) AS last_at FROM searches s JOIN users u USING (ext_id) GROUP BY ALL "
        "ORDER BY uid"  # a uid range of the per-range queries is then a few row groups, not a scan of all
    )


def create_user_products(con: duckdb.DuckDBPyConnection) -> None:
    """Table ``user_products(uid, pid, visited_us, purchased_us)``: every product a user touched, with the
    latest visit and purchase (epoch microseconds), from :func:`compute_raw_affinities`' ``product_events``
    and ``unknown_product_events`` (one pass over the events serves the maps and the activity read model)."""
    con.execute(
        """
        CREATE OR REPLACE TABLE user_products AS
        SELECT uid, pid, epoch_us(visited_at) AS visited_us, epoch_us(purchased_at) AS purchased_us
        FROM (
            SELECT e.uid, p.pid, e.visited_at, e.purchased_at
            FROM (
                SELECT uid, prod, MAX(visited_at) AS visited_at, MAX(purchased_at) AS purchased_at
                FROM product_events GROUP BY uid, prod
            ) e
            JOIN product_ids p USING (prod)
            UNION ALL
            SELECT uid, pid, MAX(visited_at), MAX(purchased_at) FROM unknown_product_events GROUP BY uid, pid
        )
        ORDER BY uid
        """
    )


def create_pincode_events(con: duckdb.DuckDBPyConnection) -> None:
    """Table ``pincode_events(pincode, events, unknown_pid_events)``: the product events of each pincode
    as written (NULL and blanks included), and of those the ones whose pid the catalog does not know.
    What the rebuild reports and ``unknown_pincode_rate`` judges, without another pass over the events."""
    con.execute(
        """
        CREATE OR REPLACE TABLE pincode_events AS
        SELECT pincode, SUM(events)::BIGINT AS events, SUM(unknown)::BIGINT AS unknown_pid_events
        FROM (
            SELECT pincode, events, 0 AS unknown FROM product_events
            UNION ALL SELECT pincode, events, events FROM unknown_product_events
        )
        GROUP BY pincode
        """
    )


PRODUCT_EVENTS_SQL = f"""
    SELECT ext_id, pid, pincode, ts, {VISIT_WEIGHT} AS weight, false AS checkout FROM visits
    UNION ALL SELECT ext_id, pid, pincode, ts, {CHECKOUT_WEIGHT}, true FROM checkouts
"""
"""Visits and checkouts as one relation, each with its map weight."""


USER_ACTIVITY_SQL = f"""
    WITH per_user_products AS (
        SELECT uid,
               '{{"visited":' || COALESCE(CAST(to_json(list(pid ORDER BY visited_us DESC, pid COLLATE "binary")
                   FILTER (WHERE visited_us IS NOT NULL)) AS VARCHAR), '[]')
               || ',"purchased":' || COALESCE(CAST(to_json(list(pid ORDER BY purchased_us DESC, pid COLLATE "binary")
                   FILTER (WHERE purchased_us IS NOT NULL)) AS VARCHAR), '[]') || '}}' AS products
        FROM user_products WHERE uid {IN_RANGE} GROUP BY uid
    ),
    per_user_searches AS (
        SELECT uid, CAST(to_json(list(query ORDER BY last_at DESC, query COLLATE "binary")) AS VARCHAR) AS searches
        FROM user_queries WHERE uid {IN_RANGE} GROUP BY uid
    )
    SELECT u.ext_id, COALESCE(p.products, '{{"visited":[],"purchased":[]}}') AS products,
           COALESCE(s.searches, '[]') AS searches
    FROM users u
    LEFT JOIN per_user_products p ON p.uid = u.uid
    LEFT JOIN per_user_searches s ON s.uid = u.uid
    WHERE u.uid {IN_RANGE}
"""
"""One row per user of a uid range: the distinct pids visited and purchased and the distinct search texts,
each newest first (ties by code point), as JSON (the layout is beside ``relational.user_activity``).
Needs ``users``, ``user_products`` and ``user_queries``."""

USERS_SQL = """
    SELECT DISTINCT ext_id FROM (
        SELECT ext_id FROM visits UNION ALL SELECT ext_id FROM checkouts UNION ALL SELECT ext_id FROM searches
    )
"""


def write_parquet(con: duckdb.DuckDBPyConnection, table: str, path: Path) -> None:
    """``table`` as a build's hand-off file: read once or twice and removed with the build, so Snappy (a 100k
    rebuild's files written ~30 % faster than with zstd, ~30 % larger)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.parquet")
    con.execute(f"COPY {table} TO '{tmp}' (FORMAT parquet, COMPRESSION snappy)")
    tmp.replace(path)
