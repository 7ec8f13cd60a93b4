"""Reference assets: the product catalog, the category hierarchy and the pincode tiers."""

import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import MaterializeResult, MetadataValue, asset

from persona_assets.contract.pincodes import directory_version, pincode_tier_table
from persona_assets.ingest.importer import catalog_landing_path, latest_import_rejects
from persona_assets.resources import EventStoreResource, RelationalStore
from persona_assets.stores import relational

PINCODE_TIERS_FILE = "pincode_tiers.parquet"


def _landed_catalog(event_store: EventStoreResource, name: str) -> pd.DataFrame:
    path = catalog_landing_path(event_store.layout.landing_dir, name)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {name} have been imported yet; run `persona import DIR` first")
    return pd.read_parquet(path)


@asset(group_name="reference", kinds={"sql"})
def product_catalog(event_store: EventStoreResource, relational_store: RelationalStore) -> MaterializeResult:
    """The latest imported catalog, published to the relational ``products`` table (the legacy ``productCategorization``)."""
    started = time.perf_counter()
    products = _landed_catalog(event_store, "products")
    relational.replace_table(relational_store.engine, relational.products, products)
    rejected = latest_import_rejects(relational_store.engine, "products.csv")
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(products),
            "products": len(products),
            "rejected_in_last_import": sum(rejected.values()),
            "rejected_by_reason": MetadataValue.json(rejected),
            "brands": int(products.loc[products["brand"] != "", "brand"].nunique()),
            "generic_names": int(products.loc[products["generic_name"] != "", "generic_name"].nunique()),
            "sites": MetadataValue.json(products["pos"].value_counts().to_dict()),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


def category_levels(categories: pd.DataFrame, max_depth: int = 16) -> pd.Series:
    """Level of each category by walking ``parent_id`` (1 = no parent); NA for broken or cyclic chains.

    Vectorised: one merge per level of depth, not one walk per category.
    """
    parent = categories.set_index("cat_id")["parent_id"]
    level = pd.Series(pd.NA, index=parent.index, dtype="Int64")
    level[parent.isna()] = 1
    for depth in range(2, max_depth + 1):
        parents_level = parent.map(level)
        newly = level.isna() & (parents_level == depth - 1).fillna(False)
        if not newly.any():
            break
        level[newly] = depth
    return level.reindex(categories["cat_id"]).reset_index(drop=True)


@asset(group_name="reference", kinds={"sql"})
def category_hierarchy(event_store: EventStoreResource, relational_store: RelationalStore) -> MaterializeResult:
    """Categories with their level (L1/L2/L3...), the legacy ``newFlipBreadCrumbs`` / ``getL2Cats``."""
    started = time.perf_counter()
    categories = _landed_catalog(event_store, "categories")
    categories = categories.assign(level=category_levels(categories))
    relational.replace_table(relational_store.engine, relational.categories, categories)
    by_level = categories["level"].value_counts(dropna=False)
    rejected = latest_import_rejects(relational_store.engine, "categories.csv")
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(categories),
            "categories": len(categories),
            "rejected_in_last_import": sum(rejected.values()),
            "rejected_by_reason": MetadataValue.json(rejected),
            "seconds": round(time.perf_counter() - started, 3),
            "by_level": MetadataValue.json(
                {("broken chain" if pd.isna(k) else f"L{k}"): int(v) for k, v in by_level.items()}
            ),
        }
    )


@asset(group_name="reference", kinds={"parquet"})
def pincode_tiers(event_store: EventStoreResource) -> MaterializeResult:
    """Every India Post pincode with its city tier (HRA X → Tier1, Y → Tier2, otherwise Tier3)."""
    started = time.perf_counter()
    table = pincode_tier_table()
    path = event_store.layout.reference_dir / PINCODE_TIERS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), path)
    return MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "pincodes": len(table),
            "by_tier": MetadataValue.json(table["tier"].value_counts().to_dict()),
            "directory_version": directory_version(),
            "path": str(path),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )


def load_pincode_tiers(event_store: EventStoreResource) -> pd.DataFrame:
    path = event_store.layout.reference_dir / PINCODE_TIERS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: materialise the pincode_tiers asset first")
    return pd.read_parquet(path)
