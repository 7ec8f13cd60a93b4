"""Throwaway local services for ``persona services up|down|status``: a real MariaDB and a real OpenSearch.

Both run on loopback only, on free ports picked at their first start (and kept while free), with
their data and logs under ``HOME/services/<name>/``. ``up`` is idempotent: services already
running are reused and the same URLs come back.

    >>> from persona_assets import services
    >>> env = services.up(home)  # {"PERSONA_DB_URL": "mysql+pymysql://...", "PERSONA_OPENSEARCH_URL": "http://127.0.0.1:..."}
    >>> services.status(home)    # {"mariadb": ServiceStatus(...), "opensearch": ServiceStatus(...)}
    >>> services.down(home)      # {"mariadb": True, "opensearch": True}: True where something was stopped

Progress goes to stderr; nothing is printed to stdout.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from persona_assets.services import mariadb, opensearch
from persona_assets.services._process import ServiceStatus

__all__ = ["ServiceStatus", "down", "env", "mariadb", "opensearch", "status", "up"]

DB_URL_VARIABLE = "PERSONA_DB_URL"
OPENSEARCH_URL_VARIABLE = "PERSONA_OPENSEARCH_URL"


def up(home: str | os.PathLike[str], *, opensearch_nodes: int = 1) -> dict[str, str]:
    """Start both services (in parallel) or find them running; return the variables that point the product at them.

    ``opensearch_nodes`` > 1 runs OpenSearch as a cluster of that many nodes on loopback; its URL then lists
    every node."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="persona-services") as pool:
        db = pool.submit(mariadb.start, home)
        search = pool.submit(opensearch.start, home, nodes=opensearch_nodes)
        # Wait for both before raising, so that a failure of one doesn't leave the other half-started.
        errors = [future.exception() for future in (db, search)]
    for error in errors:
        if error is not None:
            raise error
    return {DB_URL_VARIABLE: db.result(), OPENSEARCH_URL_VARIABLE: search.result()}


def down(home: str | os.PathLike[str]) -> dict[str, bool]:
    """Stop both services; each value says whether that service was running."""
    stopped: dict[str, bool] = {}
    errors: list[BaseException] = []
    for name, module in (("opensearch", opensearch), ("mariadb", mariadb)):
        try:
            stopped[name] = module.stop(home)
        except Exception as error:  # stop the other one all the same
            errors.append(error)
    if errors:
        raise errors[0]
    return stopped


def status(home: str | os.PathLike[str]) -> dict[str, ServiceStatus]:
    return {"mariadb": mariadb.status(home), "opensearch": opensearch.status(home)}


def env(home: str | os.PathLike[str]) -> dict[str, str]:
    """The variables for the services that are running now (starts nothing)."""
    found: dict[str, str] = {}
    db_url = mariadb.url(home)
    if db_url:
        found[DB_URL_VARIABLE] = db_url
    search_url = opensearch.url(home)
    if search_url:
        found[OPENSEARCH_URL_VARIABLE] = search_url
    return found
