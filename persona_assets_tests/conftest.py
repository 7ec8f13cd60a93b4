"""Shared fixtures for the contract tests (docs: /work/shared/docs/persona-contract.md).

The suite runs against one backend pair per session, chosen by ``PERSONA_TEST_BACKEND``:

* ``embedded`` (default): SQLite under each test's PERSONA_HOME + the embedded index;
* ``production``: a fresh MariaDB database and a fresh OpenSearch alias per PERSONA_HOME, on the real
  servers named by ``PERSONA_TEST_DB_URL`` / ``PERSONA_TEST_OPENSEARCH_URL`` (``scripts/test`` starts
  them with ``persona services up``), or started here for the session when those are unset;
* ``mysql``: MariaDB as above with the embedded index (a mixed pair, handy when working on SQL).

* ``persona_home``: a fresh ``PERSONA_HOME`` (and ``DAGSTER_HOME``) for one test.
* ``write_import_dir``: writes the contract's CSV files from small hand-built rows.
* ``Pipeline`` / ``run_pipeline``: runs ``persona import`` + ``persona materialize`` through the CLI's
  ``main`` in an isolated home, then exposes the exported JSONL (keyed by ext_id), the relational
  tables and a way to run segment queries (``fetch_personas`` directly, or ``persona query``).
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from persona_assets.stores.relational import create_mysql_database

CONTRACT_COLUMNS: dict[str, tuple[str, ...]] = {
    "products.csv": ("pid", "pos", "title", "brand", "generic_name", "gender", "cat_l1", "cat_l2", "cat_l3", "price"),
    "categories.csv": ("cat_id", "name", "parent_id"),
    "visits.csv": ("ext_id", "pid", "pincode", "visited_at"),
    "checkouts.csv": ("order_id", "ext_id", "pid", "pincode", "ordered_at"),
    "searches.csv": ("ext_id", "query", "searched_at"),
}

# Environment variables the product reads; every test runs with a controlled set of them.
PERSONA_ENV_VARS = (
    "PERSONA_HOME",
    "PERSONA_DB_URL",
    "PERSONA_OPENSEARCH_URL",
    "PERSONA_SCORE_WEIGHTS",
    "PERSONA_EVENTS_START",
    "PERSONA_OPENSEARCH_ALIAS",
    "PERSONA_OPENSEARCH_SHARDS",
    "PERSONA_OPENSEARCH_REPLICAS",
    "PERSONA_MEMORY_LIMIT",
    "PERSONA_THREADS",
    "PERSONA_API_TOKEN",
    "PERSONA_AUTOMATION",
    "PERSONA_ALERT_WEBHOOK",
    "PERSONA_ASSET_OWNERS",
    "DAGSTER_HOME",
)

BACKEND = os.environ.get("PERSONA_TEST_BACKEND", "embedded")
if BACKEND not in ("embedded", "mysql", "production"):
    raise ValueError(f"PERSONA_TEST_BACKEND={BACKEND!r}: expected 'embedded', 'mysql' or 'production'")


@functools.cache
def production_services() -> dict[str, str]:
    """URLs of the real MariaDB and OpenSearch: from the environment, else started once for this session."""
    db_url, search_url = os.environ.get("PERSONA_TEST_DB_URL"), os.environ.get("PERSONA_TEST_OPENSEARCH_URL")
    if db_url and search_url:
        return {"db": db_url, "opensearch": search_url}
    from persona_assets import services

    home = Path(tempfile.mkdtemp(prefix="persona-test-services-"))
    started = services.up(home)
    atexit.register(services.down, home)
    return {"db": started["PERSONA_DB_URL"], "opensearch": started["PERSONA_OPENSEARCH_URL"]}


def production_search_client():
    """A client of the session's OpenSearch: one node, or every node of a cluster (comma-separated URL)."""
    from opensearchpy import OpenSearch

    return OpenSearch(production_services()["opensearch"].split(","))


_CREATED: dict[str, dict[str, str]] = {}


def backend_env(home: Path, backend: str = BACKEND) -> dict[str, str]:
    """The store URLs for one PERSONA_HOME: nothing extra for ``embedded``; for ``production`` a database and
    an alias of its own (created once per home, dropped at the end of the session)."""
    if backend == "embedded":
        return {}
    key = str(Path(home).resolve())
    if key not in _CREATED:
        tag = "t" + hashlib.sha1(key.encode()).hexdigest()[:12]
        urls = production_services()
        _CREATED[key] = {"PERSONA_DB_URL": create_mysql_database(urls["db"], f"persona_{tag}")}
        if backend == "production":
            _CREATED[key] |= {
                "PERSONA_OPENSEARCH_URL": urls["opensearch"],
                "PERSONA_OPENSEARCH_ALIAS": f"{tag}_personas",
            }
            # On a cluster (scripts/test's production pass), builds spread shards and replicas over it.
            for setting in ("SHARDS", "REPLICAS"):
                if value := os.environ.get(f"PERSONA_TEST_OPENSEARCH_{setting}"):
                    _CREATED[key][f"PERSONA_OPENSEARCH_{setting}"] = value
    return _CREATED[key]


def fresh_engine(path: Path):
    """An engine on an empty relational store of the session's backend (a SQLite file, or a new database)."""
    from persona_assets.stores import relational

    url = backend_env(path).get("PERSONA_DB_URL") or f"sqlite:///{Path(path) / 'db.sqlite'}"
    return relational.create_engine(url)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Drop the databases and OpenSearch indices this session created."""
    if not _CREATED:
        return
    urls = production_services()
    engine = sa.create_engine(urls["db"])
    with engine.begin() as conn:
        for env in _CREATED.values():
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{sa.engine.make_url(env['PERSONA_DB_URL']).database}`")
    engine.dispose()
    client = production_search_client()
    for env in _CREATED.values():
        if "PERSONA_OPENSEARCH_ALIAS" in env:
            client.indices.delete(index=f"{env['PERSONA_OPENSEARCH_ALIAS']}*", ignore_unavailable=True)


Row = Mapping[str, Any] | Sequence[Any]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Row]) -> Path:
    """Write ``rows`` (dicts keyed by column, missing keys = empty; or sequences in header order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            if isinstance(row, Mapping):
                writer.writerow(["" if row.get(c) is None else row.get(c) for c in header])
            else:
                writer.writerow(["" if v is None else v for v in row])
    return path


def write_import_dir(
    path: Path,
    products: Sequence[Row] | None = None,
    categories: Sequence[Row] | None = None,
    visits: Sequence[Row] | None = None,
    checkouts: Sequence[Row] | None = None,
    searches: Sequence[Row] | None = None,
    headers: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write an import directory; a file whose rows are ``None`` is not written at all.

    ``headers`` overrides the header row of a file (to drop, add, pad or reorder columns); dict rows
    are then written in the order of that header (looked up by the trimmed column name).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    given = {
        "products.csv": products,
        "categories.csv": categories,
        "visits.csv": visits,
        "checkouts.csv": checkouts,
        "searches.csv": searches,
    }
    for name, rows in given.items():
        if rows is None:
            continue
        header = list((headers or {}).get(name, CONTRACT_COLUMNS[name]))
        normalised = [{h: row.get(h.strip()) for h in header} if isinstance(row, Mapping) else row for row in rows]
        write_csv(path / name, header, normalised)
    return path


@contextlib.contextmanager
def persona_env(
    home: Path, dagster_home: Path, backend: str = BACKEND, extra: Mapping[str, str] | None = None
) -> Iterator[None]:
    """PERSONA_HOME/DAGSTER_HOME pointing at ``home``/``dagster_home``; other PERSONA_* unset but ``extra``."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        # No compute-log capture: it runs `tail -F` helpers per step, and two in-process runs in threads
        # of one test process (test_overlap) left them hanging until a 30 s time-out each in CI.
        config.write_text(
            "telemetry:\n  enabled: false\n"
            "compute_logs:\n  module: dagster._core.storage.noop_compute_log_manager\n"
            "  class: NoOpComputeLogManager\n",
            encoding="utf-8",
        )
    with pytest.MonkeyPatch.context() as mp:
        for name in PERSONA_ENV_VARS:
            mp.delenv(name, raising=False)
        mp.setenv("PERSONA_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(dagster_home))
        for name, value in {**backend_env(home, backend), **(extra or {})}.items():
            mp.setenv(name, value)
        yield


@pytest.fixture
def persona_home(tmp_path: Path) -> Iterator[Path]:
    """A fresh, empty PERSONA_HOME for one test (DAGSTER_HOME is a separate tmp dir)."""
    home = tmp_path / "persona-home"
    with persona_env(home, tmp_path / "dagster-home"):
        yield home


@pytest.fixture(name="write_import_dir")
def write_import_dir_fixture():
    """The ``write_import_dir`` helper as a fixture (it is also importable from ``conftest``)."""
    return write_import_dir


class Pipeline:
    """One isolated persona home driven through the CLI (``persona_assets.cli.main``)."""

    def __init__(self, root: Path, backend: str = BACKEND, extra_env: Mapping[str, str] | None = None) -> None:
        self.root = Path(root)
        self.backend = backend
        self.extra_env = dict(extra_env or {})
        self.home = self.root / "persona-home"
        self.dagster_home = self.root / "dagster-home"
        self.personas: dict[str, dict] = {}
        self.export_lines: list[str] = []

    def env(self):
        return persona_env(self.home, self.dagster_home, self.backend, self.extra_env)

    @property
    def settings(self):
        from persona_assets.settings import PersonaSettings

        return PersonaSettings.from_env(
            {"PERSONA_HOME": str(self.home), **backend_env(self.home, self.backend), **self.extra_env}
        )

    @functools.cached_property
    def engine(self):
        from persona_assets.stores import relational

        return relational.create_engine(self.settings.db_url)

    def cli(self, *argv: str) -> tuple[int, str, str]:
        """Run ``persona ARGV`` in this home; returns (exit code, stdout, stderr)."""
        from persona_assets.cli import main

        out, err = io.StringIO(), io.StringIO()
        with self.env(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in argv])
            except SystemExit as exit_:  # argparse errors
                code = exit_.code if isinstance(exit_.code, int) else 1
        return code, out.getvalue(), err.getvalue()

    def check(self, *argv: str) -> str:
        code, out, err = self.cli(*argv)
        assert code == 0, f"persona {' '.join(map(str, argv))} exited {code}:\n{out}\n{err}"
        return out

    def import_dir(self, directory: Path) -> str:
        return self.check("import", directory)

    def materialize(self) -> str:
        return self.check("materialize")

    def materialize_assets(self, selection) -> None:
        """Materialise an ``AssetSelection`` in-process on this home and its Dagster instance (one run),
        e.g. part of the rebuild, to put another write between its steps."""
        import warnings

        from dagster import materialize

        from persona_assets.assets import all_assets
        from persona_assets.pipeline import QUIET_LOGGERS, dagster_instance
        from persona_assets.resources import resources_from_settings

        with self.env(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = materialize(
                all_assets,
                selection=selection,
                resources=resources_from_settings(self.settings),
                instance=dagster_instance(self.settings),
                run_config=QUIET_LOGGERS,
            )
        assert result.success

    def build_dir(self, asset: str = "user_personas") -> Path:
        """The directory of the build ``asset`` last materialised (its hand-off files)."""
        from persona_assets.builds import latest_build
        from persona_assets.pipeline import dagster_instance

        with self.env():
            build = latest_build(dagster_instance(self.settings), asset)
        assert build is not None, f"{asset} has not been materialised in {self.home}"
        return self.settings.layout.build_dir(build)

    def sensor_tick(self):
        """One evaluation of the hasChanged sensor on this home: its run requests, or its SkipReason."""
        import warnings

        from dagster import build_sensor_context

        from persona_assets.pipeline import dagster_instance
        from persona_assets.resources import resources_from_settings
        from persona_assets.sensors import changed_users_sensor

        with self.env(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resources = resources_from_settings(self.settings)
            context = build_sensor_context(instance=dagster_instance(self.settings), resources=resources)
            return changed_users_sensor(context)

    def export(self) -> dict[str, dict]:
        """``persona export FILE``, parsed: ext_id -> the JSON object of its line."""
        target = self.root / "export.jsonl"
        self.check("export", target)
        # JSON Lines end lines with "\n" only; str.splitlines would also split inside an id holding U+2028.
        self.export_lines = target.read_text(encoding="utf-8").split("\n")[:-1]
        personas: dict[str, dict] = {}
        for line in self.export_lines:
            record = json.loads(line)
            assert record["ext_id"] not in personas, f"two lines for {record['ext_id']!r}"
            personas[record["ext_id"]] = record
        self.personas = personas
        return personas

    def query(self, payload: object) -> dict:
        """The contract response of ``fetch_personas`` on this home's stores (default weights)."""
        from persona_assets.query.service import fetch_personas
        from persona_assets.stores.backends import search_backend_for

        with self.env():
            return fetch_personas(payload, self.engine, search_backend_for(self.settings), self.settings.weights)

    def cli_query(self, payload: object | str) -> tuple[int, dict | None, str]:
        """``persona query JSON``: (exit code, parsed stdout or None, stderr)."""
        text = payload if isinstance(payload, str) else json.dumps(payload)
        code, out, err = self.cli("query", text)
        return code, (json.loads(out) if code == 0 else None), err

    def table(self, name: str) -> pd.DataFrame:
        from persona_assets.stores import relational

        return relational.read_frame(self.engine, getattr(relational, name))

    def flags(self) -> dict[str, int]:
        """ext_id -> hasChanged of the legacy ``user_persona`` table."""
        from persona_assets.stores import relational

        frame = relational.read_frame(
            self.engine, sa.select(relational.user_persona.c.extId, relational.user_persona.c.hasChanged)
        )
        return {str(k): int(v) for k, v in zip(frame["extId"], frame["hasChanged"], strict=True)}


def run_pipeline(root: Path, **files: Sequence[Row] | None) -> Pipeline:
    """Write the import directory, then ``persona import DIR``, ``persona materialize`` and ``persona export``."""
    pipeline = Pipeline(root)
    source = write_import_dir(pipeline.root / "import", **files)
    pipeline.import_dir(source)
    pipeline.materialize()
    pipeline.export()
    return pipeline


@pytest.fixture(scope="session")
def pipeline_factory(tmp_path_factory: pytest.TempPathFactory):
    """``make(name, products=..., categories=..., visits=..., ...)`` -> a materialised :class:`Pipeline`."""

    def make(name: str, **files: Sequence[Row] | None) -> Pipeline:
        return run_pipeline(tmp_path_factory.mktemp(name), **files)

    return make


def shop_with_change(tmp_path: Path, changed_users: int = 60) -> tuple[Path, Path]:
    """A 1,500-shopper shop, and a second import: new visits of ``changed_users`` of them to products of its top brand."""
    base = tmp_path / "base"
    subprocess.run(
        [sys.executable, "-m", "persona_assets.cli", "generate", "--users", "1500", "--seed", "3", str(base)],
        check=True,
        capture_output=True,
    )
    with (base / "products.csv").open(encoding="utf-8", newline="") as handle:
        products = list(csv.DictReader(handle))
    brands: dict[str, list[str]] = {}
    for product in products:
        brands.setdefault(product["brand"].strip().lower(), []).append(product["pid"])
    with (base / "visits.csv").open(encoding="utf-8", newline="") as handle:
        visits = list(csv.DictReader(handle))
    users = sorted({visit["ext_id"] for visit in visits})[:changed_users]
    pids = brands["puma"] if "puma" in brands else max(brands.values(), key=len)
    change = tmp_path / "change"
    change.mkdir()
    for name in ("products.csv", "categories.csv"):
        shutil.copy(base / name, change / name)
    with (change / "visits.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ext_id", "pid", "pincode", "visited_at"])
        for index, user in enumerate(users):
            for repeat in range(5):
                writer.writerow([user, pids[(index + repeat) % len(pids)], "560001", "2026-10-31T12:00:00+00:00"])
    return base, change


def refresh_everything(pipeline: Pipeline, rounds: int = 5, settle: bool = True) -> list[bool]:
    """Run the hasChanged sensor's refresh runs until it has nothing to launch (at most ``rounds`` ticks;
    ``settle``: it must be done by then); each run's success."""
    from dagster import SkipReason

    from persona_assets.pipeline import QUIET_LOGGERS, dagster_instance
    from persona_assets.resources import resources_from_settings
    from persona_assets.sensors import refresh_changed_users

    outcomes = []
    for _ in range(rounds):
        requests = pipeline.sensor_tick()
        if isinstance(requests, SkipReason) or not requests:
            return outcomes
        for request in requests:
            with pipeline.env(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = refresh_changed_users.execute_in_process(
                    run_config={**request.run_config, **QUIET_LOGGERS},
                    resources=resources_from_settings(pipeline.settings),
                    instance=dagster_instance(pipeline.settings),
                    raise_on_error=False,
                )
            outcomes.append(result.success)
    if not settle:
        return outcomes
    raise AssertionError(f"the refresh did not settle in {rounds} rounds: {pipeline.flags()}")


# --------------------------------------------------------------------------- hand-off files


def write_hand_off(users: pd.DataFrame, affinities: pd.DataFrame, directory: Path, limits=None):
    """The rebuild's hand-off files (``PersonaHandOff``: integers) of personas given as long named tables
    (``users``: ext_id, gender; ``affinities``: ext_id, dimension, key, value), faults kept: an affinity
    row whose ext_id is not a user gets a uid no user has, a key repeated in a map stays repeated."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from persona_assets.stores.search_backend import PersonaHandOff

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hand_off = PersonaHandOff.in_directory(directory, limits)
    users = users.reset_index(drop=True).assign(uid=lambda frame: range(len(frame)))
    uids = dict(zip(users["ext_id"], users["uid"], strict=False)) if "ext_id" in users else {}
    keys = affinities[["dimension", "key"]].drop_duplicates().reset_index(drop=True)
    keys["kid"] = range(len(keys))
    kids = {(d, k): kid for d, k, kid in zip(keys["dimension"], keys["key"], keys["kid"], strict=True)}
    orphans: dict[str, int] = {}

    def uid_of(ext_id: str) -> int:
        if ext_id in uids:
            return uids[ext_id]
        return orphans.setdefault(ext_id, len(users) + len(orphans))

    ids = pd.DataFrame(
        {
            "uid": [uid_of(e) for e in affinities["ext_id"]],
            "kid": [kids[(d, k)] for d, k in zip(affinities["dimension"], affinities["key"], strict=True)],
            "value": affinities["value"].astype(float),
        },
        columns=["uid", "kid", "value"],
    )
    for frame, path in (
        (users, hand_off.users),
        (ids.astype({"uid": "int64", "kid": "int64"}), hand_off.affinities),
        (keys[["kid", "dimension", "key"]], hand_off.keys),
    ):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return hand_off


def read_hand_off(hand_off) -> pd.DataFrame:
    """A hand-off's affinities as the long named table (ext_id, dimension, key, value)."""
    import duckdb

    from persona_assets.compute.duck import parquet_relation

    users, affinities, keys = (parquet_relation(path) for path in hand_off.files)
    return duckdb.sql(
        f"SELECT u.ext_id, k.dimension, k.key, a.value FROM {affinities} a JOIN {users} u USING (uid) "
        f"JOIN {keys} k USING (kid) ORDER BY ALL"
    ).df()
