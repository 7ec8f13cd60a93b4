"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import re


def redact(argument: str) -> str:
    """Hide a password in a URL argument (recorded commands go into docs/)."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", argument)


def fresh_database(server_url: str, name: str) -> str:
    """Drop and create database ``name`` on a MySQL/MariaDB server; its URL."""
    import sqlalchemy as sa

    url = sa.engine.make_url(server_url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)
