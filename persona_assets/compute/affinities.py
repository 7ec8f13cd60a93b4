"""Raw affinities, vocabulary and normalised personas as set-based DuckDB SQL (contract sections 2-3).

Every function works on whole tables inside one DuckDB connection: no per-user or
per-event Python. Long tables carry the maps: ``(ext_id, dimension, key, weight)``.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from persona_assets.contract.tokens import token_key, token_regex_re2, tokenize
from persona_assets.stores.events import EVENT_KINDS, EventStore

VISIT_WEIGHT = 1
CHECKOUT_WEIGHT = 40
SEARCH_WEIGHT = 5
PRODUCT_DIMENSIONS = ("brand", "generic", "category", "ecomm")
MAP_DIMENSIONS = ("brand", "generic", "category", "city", "ecomm")


def register_events(con: duckdb.DuckDBPyConnection, store: EventStore, only_users: list[str] | None = None) -> None:
    """Views ``visits``, ``checkouts``, ``searches`` over every published day (empty when none).

    With ``only_users``, the views hold just those users' events (a refresh of a few users).
    """
    scope = ""
    if only_users is not None:
        con.register("only_users_arrow", pa.table({"ext_id": pa.array(only_users, pa.string())}))
        con.execute("CREATE OR REPLACE TABLE only_users AS SELECT DISTINCT ext_id FROM only_users_arrow")
        scope = " WHERE ext_id IN (SELECT ext_id FROM only_users)"
    for kind in EVENT_KINDS.values():
        pattern = store.published_glob(kind.name)
        if pattern is None:
            con.register(f"{kind.name}_empty", kind.schema.empty_table())
            source = f"{kind.name}_empty"
        else:
            source = f"read_parquet('{pattern}')"
        con.execute(f"CREATE OR REPLACE VIEW {kind.name} AS SELECT * FROM {source}{scope}")


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


def compute_raw_affinities(con: duckdb.DuckDBPyConnection) -> None:
    """Tables ``users(ext_id)`` and ``raw_affinity(ext_id, dimension, key, weight)`` (contract section 2).

    ``raw_affinity`` also carries the ``gender`` dimension (keys men/women/unisex), which is
    not a persona map but feeds the gender label.

    The sums run over integer surrogates (a number per user, product and (dimension, key)) and the
    names are joined back once at the end: the big aggregation then moves 16-byte rows instead of
    strings, which at a million users is what decides whether it stays in memory or spills gigabytes.
    """
    con.execute(f"CREATE OR REPLACE TABLE users AS {USERS_SQL}")
    compute_search_matches(con)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE user_ids AS
        SELECT ext_id, CAST(row_number() OVER () AS INTEGER) AS uid FROM users;
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

        CREATE OR REPLACE TEMP TABLE key_ids AS
        SELECT dimension, key, CAST(row_number() OVER () AS INTEGER) AS kid FROM (
            SELECT DISTINCT dimension, key FROM product_keys
            UNION SELECT DISTINCT 'city', tier FROM pincode_tiers
            UNION SELECT DISTINCT dimension, name FROM search_matches
        );
        CREATE OR REPLACE TEMP TABLE product_key_ids AS
        SELECT p.prod, k.kid, pk.dimension = 'gender' AS counts_events
        FROM product_keys pk JOIN product_ids p USING (pid) JOIN key_ids k USING (dimension, key);
        CREATE OR REPLACE TEMP TABLE pincode_key_ids AS
        SELECT t.pincode, k.kid FROM pincode_tiers t JOIN key_ids k ON k.dimension = 'city' AND k.key = t.tier;

        -- One row per (user, product, pincode): weight for the product maps, event count for gender/city.
        -- The inner join with product_ids drops events whose pid the catalog does not know.
        CREATE OR REPLACE TEMP TABLE product_events AS
        SELECT u.uid, p.prod, e.pincode, SUM(e.weight) AS weight, COUNT(*) AS events
        FROM (
            SELECT ext_id, pid, pincode, {VISIT_WEIGHT} AS weight FROM visits
            UNION ALL SELECT ext_id, pid, pincode, {CHECKOUT_WEIGHT} FROM checkouts
        ) e
        JOIN product_ids p ON p.pid = e.pid
        JOIN user_ids u ON u.ext_id = e.ext_id
        GROUP BY ALL;

        CREATE OR REPLACE TEMP TABLE raw_affinity_ids AS
        SELECT uid, kid, SUM(weight)::DOUBLE AS weight FROM (
            SELECT e.uid, k.kid, CASE WHEN k.counts_events THEN e.events ELSE e.weight END AS weight
            FROM product_events e JOIN product_key_ids k ON k.prod = e.prod
            UNION ALL
            SELECT e.uid, c.kid, e.events FROM product_events e JOIN pincode_key_ids c ON c.pincode = e.pincode
            UNION ALL
            SELECT u.uid, k.kid, {SEARCH_WEIGHT}
            FROM searches s
            JOIN search_matches m ON m.query = s.query
            JOIN user_ids u ON u.ext_id = s.ext_id
            JOIN key_ids k ON k.dimension = m.dimension AND k.key = m.name
        )
        GROUP BY ALL;

        CREATE OR REPLACE TABLE raw_affinity AS
        SELECT u.ext_id, k.dimension, k.key, r.weight
        FROM raw_affinity_ids r JOIN user_ids u USING (uid) JOIN key_ids k USING (kid);
        DROP TABLE raw_affinity_ids;
        DROP TABLE product_events;
        """
    )


def compute_vocabulary(con: duckdb.DuckDBPyConnection, brand_size: int, generic_size: int) -> pd.DataFrame:
    """Top brands and generic names by raw affinity summed over users; ties by name (code-point order)."""
    return con.execute(
        """
        WITH totals AS (
            SELECT dimension AS kind, key AS name, SUM(weight) AS total
            FROM raw_affinity WHERE dimension IN ('brand', 'generic')
            GROUP BY ALL HAVING SUM(weight) > 0
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
    """Tables ``persona_users(ext_id, gender)`` and ``persona_affinity(ext_id, dimension, key, value)``."""
    con.register("vocabulary_df", vocabulary[["kind", "name"]])
    con.execute(
        """
        CREATE OR REPLACE TABLE persona_affinity AS
        WITH kept AS (
            SELECT r.ext_id, r.dimension, r.key, r.weight FROM raw_affinity r
            WHERE r.weight > 0 AND (
                r.dimension IN ('city', 'ecomm')
                OR (r.dimension IN ('brand', 'generic')
                    AND EXISTS (SELECT 1 FROM vocabulary_df v WHERE v.kind = r.dimension AND v.name = r.key))
                OR (r.dimension = 'category' AND EXISTS (SELECT 1 FROM categories c WHERE c.cat_id = r.key))
            )
        )
        SELECT ext_id, dimension, key, weight / SUM(weight) OVER (PARTITION BY ext_id, dimension) AS value
        FROM kept
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TABLE persona_users AS
        WITH g AS (
            SELECT ext_id,
                   SUM(CASE WHEN key = 'men' THEN weight ELSE 0 END) AS m,
                   SUM(CASE WHEN key = 'women' THEN weight ELSE 0 END) AS w
            FROM raw_affinity WHERE dimension = 'gender' GROUP BY ext_id
        )
        SELECT u.ext_id,
               CASE WHEN COALESCE(g.m, 0) + COALESCE(g.w, 0) = 0 THEN 'unisex'
                    WHEN g.m / (g.m + g.w) >= 0.8 THEN 'men'
                    WHEN g.w / (g.m + g.w) >= 0.8 THEN 'women'
                    ELSE 'unisex' END AS gender
        FROM users u LEFT JOIN g ON g.ext_id = u.ext_id
        """
    )


def _json_maps(table: str, value: str, dimensions: tuple[str, ...]) -> str:
    """SQL giving one row per user with one JSON object column per dimension (NULL when empty).

    One GROUP BY over the long table, the objects spelled with ``string_agg``: about a fifth cheaper
    than ``json_group_object`` per (user, dimension) pivoted afterwards, which matters at ~70M rows.
    """
    columns = ",\n".join(
        f"'{{' || string_agg(to_json(key) || ':' || CAST({value} AS VARCHAR), ',') "
        f"FILTER (WHERE dimension = '{d}') || '}}' AS \"{d}\""
        for d in dimensions
    )
    return f"SELECT ext_id,\n{columns}\nFROM {table} GROUP BY ext_id"


def persona_rows_sql() -> str:
    """Rows of the ``user_personas`` table: the normalised maps as JSON text (rows in no particular order:
    a store keeps them by key, and sorting a million rows of JSON would cost more than the write)."""
    return f"""
        WITH maps AS ({_json_maps("persona_affinity", "value", MAP_DIMENSIONS)})
        SELECT u.ext_id, u.gender,
               CAST(COALESCE(m.city, '{{}}') AS VARCHAR) AS city,
               CAST(COALESCE(m.ecomm, '{{}}') AS VARCHAR) AS ecomm,
               CAST(COALESCE(m.brand, '{{}}') AS VARCHAR) AS brand_affinity,
               CAST(COALESCE(m.generic, '{{}}') AS VARCHAR) AS generic_affinity,
               CAST(COALESCE(m.category, '{{}}') AS VARCHAR) AS category_affinity
        FROM persona_users u LEFT JOIN maps m ON m.ext_id = u.ext_id
        """


def legacy_rows_sql(search_terms_limit: int = 100) -> str:
    """The legacy ``user_persona`` columns: raw maps as JSON and the user's latest search texts."""
    dims = (*MAP_DIMENSIONS, "gender")
    return f"""
        WITH maps AS ({_json_maps("raw_affinity", "weight", dims)}),
        terms AS (
            SELECT ext_id, to_json(list(query ORDER BY last_at DESC, query)[1:{int(search_terms_limit)}]) AS terms
            FROM (SELECT ext_id, query, MAX(ts) AS last_at FROM searches GROUP BY ALL)
            GROUP BY ext_id
        )
        SELECT u.ext_id AS "extId",
               CAST(COALESCE(t.terms, '[]') AS VARCHAR) AS "searchTerms",
               CAST(COALESCE(m.gender, '{{}}') AS VARCHAR) AS gender,
               CAST(COALESCE(m.city, '{{}}') AS VARCHAR) AS city,
               CAST(COALESCE(m.ecomm, '{{}}') AS VARCHAR) AS ecomm,
               CAST(COALESCE(m.brand, '{{}}') AS VARCHAR) AS "brandAffinity",
               CAST(COALESCE(m.category, '{{}}') AS VARCHAR) AS "categoryAffinity",
               CAST(COALESCE(m.generic, '{{}}') AS VARCHAR) AS "genericAffinity"
        FROM users u LEFT JOIN maps m ON m.ext_id = u.ext_id LEFT JOIN terms t ON t.ext_id = u.ext_id
        """


USER_ACTIVITY_SQL = """
    WITH products AS (
        SELECT ext_id, pid,
               epoch_us(MAX(ts) FILTER (WHERE kind = 'visit')) AS visited_us,
               epoch_us(MAX(ts) FILTER (WHERE kind = 'checkout')) AS purchased_us
        FROM (
            SELECT ext_id, pid, ts, 'visit' AS kind FROM visits
            UNION ALL SELECT ext_id, pid, ts, 'checkout' FROM checkouts
        ) GROUP BY ext_id, pid
    ),
    per_user_products AS (
        SELECT ext_id, CAST(to_json(list({'pid': pid, 'visited_us': visited_us, 'purchased_us': purchased_us})) AS VARCHAR)
               AS products
        FROM products GROUP BY ext_id
    ),
    per_user_searches AS (
        SELECT ext_id, CAST(to_json(list({'query': query, 'searched_us': searched_us})) AS VARCHAR) AS searches
        FROM (SELECT ext_id, query, epoch_us(MAX(ts)) AS searched_us FROM searches GROUP BY ext_id, query)
        GROUP BY ext_id
    )
    SELECT u.ext_id, COALESCE(p.products, '[]') AS products, COALESCE(s.searches, '[]') AS searches
    FROM users u
    LEFT JOIN per_user_products p ON p.ext_id = u.ext_id
    LEFT JOIN per_user_searches s ON s.ext_id = u.ext_id
"""
"""One row per user: every product touched (latest visit and purchase) and every distinct search text."""

USERS_SQL = """
    SELECT DISTINCT ext_id FROM (
        SELECT ext_id FROM visits UNION ALL SELECT ext_id FROM checkouts UNION ALL SELECT ext_id FROM searches
    )
"""


def write_parquet(con: duckdb.DuckDBPyConnection, table: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.parquet")
    con.execute(f"COPY {table} TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)")
    tmp.replace(path)
