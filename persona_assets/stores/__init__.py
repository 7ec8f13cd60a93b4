"""The product's stores: relational (SQLAlchemy), the Parquet event store, the search index."""
