"""How the assets describe themselves to the UI for the backend this deployment runs on.

The asset functions are the same on every backend; what they are stored in is not. So the code
location, once it knows the settings, gives each asset the ``kinds`` of its real store (sqlite or
mysql, the embedded index's parquet or opensearch), Dagster's standard table metadata (the table
name, its columns as the store declares them, or the folder of a Parquet store), the owners named by
``PERSONA_ASSET_OWNERS`` and a ``domain`` tag. Row counts come with each materialisation
(``dagster/row_count``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from dagster import AssetsDefinition, AssetSpec, TableColumn, TableSchema

from persona_assets.settings import PersonaSettings
from persona_assets.stores import relational

# The relational table each asset writes (its legacy readers' view of it).
TABLES: dict[str, sa.Table] = {
    "product_catalog": relational.products,
    "category_hierarchy": relational.categories,
    "attribute_vocabulary": relational.attribute_vocabulary,
    "user_activity": relational.user_activity,
    "user_personas": relational.user_personas,
    "user_raw_affinities": relational.user_persona,  # the legacy columns it hands over
}


def column_schema(table: sa.Table) -> TableSchema:
    return TableSchema(
        columns=[
            TableColumn(name=column.name, type=str(column.type).lower(), description=column.comment)
            for column in table.columns
        ]
    )


def _files(settings: PersonaSettings, key: str) -> Path | None:
    layout = settings.layout
    if key.startswith("raw_"):
        return layout.events_dir / key.removeprefix("raw_")
    if key == "pincode_tiers":
        return layout.reference_dir
    if key == "persona_index" and not settings.opensearch_url:
        return layout.index_dir
    return None


def describe(assets: Sequence[AssetsDefinition], settings: PersonaSettings) -> list[AssetsDefinition]:
    store = sa.engine.make_url(settings.db_url).get_backend_name()  # sqlite, mysql (MariaDB too)
    index = "opensearch" if settings.opensearch_url else "parquet"

    def for_backend(spec: AssetSpec) -> AssetSpec:
        key = spec.key.to_user_string()
        kinds = {store if kind == "sql" else kind for kind in spec.kinds}
        if key == "persona_index":
            kinds = {index}
        metadata = dict(spec.metadata)
        if key in TABLES:
            metadata["dagster/table_name"] = TABLES[key].name
            metadata["dagster/column_schema"] = column_schema(TABLES[key])
        if key == "persona_index" and settings.opensearch_url:
            metadata["dagster/table_name"] = settings.opensearch_alias
        files = _files(settings, key)
        if files is not None:
            metadata["dagster/uri"] = files.as_uri()
        return spec.replace_attributes(
            kinds=kinds,
            owners=list(settings.asset_owners),
            # kinds are tags underneath: the old ones go, or `sql` would stay beside `mysql`
            tags={
                **{name: value for name, value in spec.tags.items() if not name.startswith("dagster/kind/")},
                "domain": spec.group_name or "default",
            },
            metadata=metadata,
        )

    return [asset.map_asset_specs(for_backend) for asset in assets]
