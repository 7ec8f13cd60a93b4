"""The embedded relational store's file layout (SQLite): no server needed."""

from __future__ import annotations

import sqlite3

from persona_assets.stores import relational


def _page_size(path) -> int:
    with sqlite3.connect(path) as con:
        return int(con.execute("PRAGMA page_size").fetchone()[0])


def test_a_new_store_gets_large_pages_and_wal(tmp_path):
    path = tmp_path / "persona.db"
    engine = relational.create_engine(f"sqlite:///{path}")
    relational.metadata.create_all(engine)
    engine.dispose()
    assert _page_size(path) == relational.SQLITE_PAGE_SIZE
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_existing_store_keeps_its_page_size(tmp_path):
    path = tmp_path / "persona.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE earlier (x INTEGER)")
    before = _page_size(path)
    assert before != relational.SQLITE_PAGE_SIZE
    engine = relational.create_engine(f"sqlite:///{path}")
    relational.metadata.create_all(engine)
    engine.dispose()
    assert _page_size(path) == before
