"""Benchmark: time from a hasChanged flag being set to the user being searchable, through the real sensor.

Usage: .venv/bin/python bench/sensor_latency.py [--users 100000] [--flagged 10000] [--workdir /tmp/persona-sensor]
       [--data DIR] [--out docs/bench/sensor-latency.json]

1. generate N users (cached), import and materialise them (the full rebuild) in a fresh PERSONA_HOME;
2. start `dagster dev` (webserver + daemon) on that instance: the refresh sensor runs with its defaults
   (interval PERSONA_SENSOR_INTERVAL = 5 s, batches of PERSONA_REFRESH_BATCH = 5000, run queue of the
   project's dagster.yaml);
3. land and publish one new day of events for FLAGGED users (as `persona import` does: the raw partition
   flags them, hasChanged = 1) — t0 is the moment the flags are committed;
4. poll until every flagged user is back at 0 and a query sees their new events — t1.
Reports t1 - t0 (and when the first and last refresh run started and ended), with the same
measurement for a full rebuild of all N users in the same run as the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _common import redact

from persona_assets.stores.relational import create_mysql_database


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--flagged", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", default="/tmp/persona-sensor")
    parser.add_argument(
        "--data", help="an existing `persona generate` directory (e.g. --wide) instead of generating --users"
    )
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--out")
    parser.add_argument("--db-url", help="a MySQL/MariaDB server URL; the bench uses a fresh database `persona_sensor`")
    parser.add_argument("--opensearch-url", help="rank and upsert in OpenSearch instead of the embedded index")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    data_dir = Path(args.data) if args.data else workdir / f"data-{args.users}-{args.seed}"
    home = workdir / "home"
    shutil.rmtree(home, ignore_errors=True)
    os.environ.update({"PERSONA_HOME": str(home)})
    for name in ("DAGSTER_HOME", "PERSONA_DB_URL", "PERSONA_OPENSEARCH_URL", "PERSONA_OPENSEARCH_ALIAS"):
        os.environ.pop(name, None)
    if args.db_url:
        os.environ["PERSONA_DB_URL"] = create_mysql_database(args.db_url, "persona_sensor")
    if args.opensearch_url:
        os.environ.update(
            {"PERSONA_OPENSEARCH_URL": args.opensearch_url, "PERSONA_OPENSEARCH_ALIAS": "sensor_personas"}
        )
    persona = str(Path(sys.executable).with_name("persona"))
    if not (data_dir / "visits.csv").exists():
        subprocess.run(
            [persona, "generate", str(data_dir), "--users", str(args.users), "--seed", str(args.seed)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    subprocess.run([persona, "import", str(data_dir)], check=True, stdout=subprocess.DEVNULL)
    started = time.perf_counter()
    subprocess.run([persona, "materialize"], check=True, stdout=subprocess.DEVNULL)
    rebuild_seconds = time.perf_counter() - started

    import pandas as pd

    from persona_assets.pipeline import dagster_instance
    from persona_assets.settings import PersonaSettings
    from persona_assets.stores import relational
    from persona_assets.stores.changes import flag_counts
    from persona_assets.stores.events import EventStore

    settings = PersonaSettings.from_env()
    dagster_instance(settings)  # sets DAGSTER_HOME to the CLI's instance, with the project's dagster.yaml
    engine = relational.create_engine(settings.db_url)

    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "dev", "-m", "persona_assets.definitions", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "dagster-dev.log", "w"),  # noqa: SIM115
        start_new_session=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/server_info", 120)
        time.sleep(10)  # let the daemon load the code location and tick the sensor once (nothing flagged)

        # One new day of events for the flagged users, published like a raw partition run publishes it.
        visits = pd.read_csv(data_dir / "visits.csv", dtype=str, keep_default_na=False, nrows=200_000)
        users = sorted(visits["ext_id"].unique())[: args.flagged]
        extra = visits[visits["ext_id"].isin(users)].drop_duplicates("ext_id").copy()
        day = "2026-11-01"
        extra["ts"] = pd.Timestamp(f"{day}T12:00:00", tz="UTC")
        store = EventStore(settings.layout.landing_dir, settings.layout.events_dir)
        import pyarrow as pa

        from persona_assets.stores.changes import flag_users_changed
        from persona_assets.stores.events import EVENT_KINDS

        table = pa.Table.from_pandas(extra[["ext_id", "pid", "pincode", "ts"]], preserve_index=False)
        store.land("visits", day, table.cast(EVENT_KINDS["visits"].schema))
        _, touched = store.publish("visits", day)
        flag_users_changed(engine, touched)
        t0 = time.perf_counter()
        print(f"flagged {len(touched):,} users; waiting for the sensor …", file=sys.stderr, flush=True)
        while True:
            counts = flag_counts(engine)
            waiting = counts.get(1, 0) + counts.get(2, 0)
            if waiting == 0:
                break
            if time.perf_counter() - t0 > args.timeout:
                raise TimeoutError(f"{waiting} users still flagged after {args.timeout}s: {counts}")
            time.sleep(0.25)
        searchable_seconds = time.perf_counter() - t0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)

    from dagster import DagsterInstance, RunsFilter

    instance = DagsterInstance.get()
    runs = instance.get_run_records(RunsFilter(job_name="refresh_changed_users"))
    spans = [(r.start_time, r.end_time) for r in runs if r.start_time and r.end_time]
    result = {
        "command": " ".join([".venv/bin/python", "bench/sensor_latency.py", *map(redact, sys.argv[1:])]),
        "stores": {
            "relational": "MariaDB" if args.db_url else "SQLite",
            "search": "OpenSearch" if args.opensearch_url else "embedded index",
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "users": json.loads(shape.read_text())["users"] if (shape := data_dir / "shape.json").exists() else args.users,
        "data": str(data_dir),
        "flagged_users": len(touched),
        "flag_to_searchable_seconds": round(searchable_seconds, 2),
        "refresh_runs": len(runs),
        "refresh_run_seconds": sorted(round(end - start, 2) for start, end in spans),
        "baseline_full_rebuild_seconds": round(rebuild_seconds, 2),
        "ratio_full_rebuild_over_refresh": round(rebuild_seconds / searchable_seconds, 2),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
