"""Randomized soak with real processes: no update is ever lost (issue 8, item 1).

One home, a Dagster daemon running the hasChanged sensor, and trial after trial of what operators and
feeds do at once: each trial lands new events for some shoppers (``persona import``, a day of its own),
and at random also launches a full rebuild (``persona materialize``) or a backfill of an earlier day
(``persona backfill``) at a random moment, SIGKILLs one of those processes at a random moment, or
kills the daemon and starts it again. Each new event is a *marker*: visits of a shopper to a brand that
shopper had no affinity to. When the trial's processes have ended (a killed import is run again, as an
operator would) the soak waits until every flag is 0 and no run is in flight, then asks the live index:
a marker whose shopper is at 0 but has no affinity to its brand is a **lost update**; a trial that does
not settle within the timeout is **stuck**. Both must stay 0.

    .venv/bin/python scripts/soak.py --trials 100 --users 400 --work /tmp/soak --report soak.json

The backend is whatever the environment says (``PERSONA_DB_URL``/``PERSONA_OPENSEARCH_URL`` for the
production pair, pointing at an empty database and an unused alias); by default the embedded pair
under ``--work``. One line per trial on stderr; a JSON report at the end (stdout or ``--report``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Trial t lands its markers on BASE_FIRST_DAY - (t + 1) days: each trial a day of its own, because an
# import replaces the days it lands (a second trial on the same day would delete the first's markers).
MARKER_VISITS = 3


@dataclass
class Marker:
    ext_id: str
    brand: str
    trial: int


@dataclass
class Trial:
    number: int
    day: str
    markers: int
    operations: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    unexpected_failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    settle_seconds: float = 0.0
    settled: bool = False
    lost: list[str] = field(default_factory=list)


class Home:
    """The soak's persona home and the commands run in it (each a real process)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.home = work / "home"
        self.env = {
            **os.environ,
            "PERSONA_HOME": str(self.home),
            "PERSONA_AUTOMATION": "on",  # the daemon runs the hasChanged sensor
            # The sensor looks every second; a claim of a killed refresh expires after 20 s.
            "PERSONA_SENSOR_INTERVAL": os.environ.get("PERSONA_SENSOR_INTERVAL", "1"),
            "PERSONA_CLAIM_TTL_SECONDS": os.environ.get("PERSONA_CLAIM_TTL_SECONDS", "20"),
        }
        self.env.pop("DAGSTER_HOME", None)  # the commands' instance: $PERSONA_HOME/dagster, made by the first
        self.daemon: subprocess.Popen | None = None

    def persona(self, *argv: str, log: str) -> subprocess.Popen:
        handle = (self.work / "logs" / f"{log}.log").open("w")
        return subprocess.Popen(
            [sys.executable, "-m", "persona_assets.cli", *argv],
            cwd=REPO,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check(self, *argv: str, log: str) -> None:
        process = self.persona(*argv, log=log)
        if process.wait() != 0:
            raise SystemExit(f"soak: persona {' '.join(argv)} failed; see {self.work / 'logs' / (log + '.log')}")

    def start_daemon(self) -> None:
        handle = (self.work / "logs" / "daemon.log").open("a")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "dagster._daemon", "run", "-m", "persona_assets.definitions"],
            cwd=REPO,
            env={**self.env, "DAGSTER_HOME": str(self.home / "dagster")},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            os.killpg(self.daemon.pid, signal.SIGKILL)  # the daemon and its threads' children
            self.daemon.wait()
        self.daemon = None

    def stop_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            os.killpg(self.daemon.pid, signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill_daemon()
        self.daemon = None

    def settings(self):
        from persona_assets.settings import PersonaSettings

        return PersonaSettings.from_env({key: value for key, value in self.env.items() if key.startswith("PERSONA_")})


def read_catalog(directory: Path) -> dict[str, list[str]]:
    """brand -> its pids, from the import's products.csv."""
    brands: dict[str, list[str]] = {}
    with (directory / "products.csv").open(encoding="utf-8", newline="") as handle:
        for product in csv.DictReader(handle):
            brands.setdefault(product["brand"].strip().lower(), []).append(product["pid"])
    return brands


def read_export(path: Path) -> dict[str, dict]:
    with path.open(encoding="utf-8") as handle:
        return {row["ext_id"]: row for row in map(json.loads, handle)}


class LiveIndex:
    """Reads flags, runs and the live index of the soak's home from this process (as a monitor would)."""

    def __init__(self, home: Home) -> None:
        from dagster import DagsterInstance

        from persona_assets.stores import relational
        from persona_assets.stores.backends import search_backend_for

        self.settings = home.settings()
        self.engine = relational.create_engine(self.settings.db_url)
        self.backend = search_backend_for(self.settings)
        os.environ["DAGSTER_HOME"] = str(home.home / "dagster")
        self.instance = DagsterInstance.get()

    def flags(self) -> Counter:
        import sqlalchemy as sa

        from persona_assets.stores import relational

        users = relational.user_persona
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(users.c.hasChanged, sa.func.count()).group_by(users.c.hasChanged)).all()
        return Counter({int(flag): count for flag, count in rows})

    def runs_in_flight(self) -> int:
        from dagster import DagsterRunStatus, RunsFilter

        active = [
            DagsterRunStatus.QUEUED,
            DagsterRunStatus.NOT_STARTED,
            DagsterRunStatus.STARTING,
            DagsterRunStatus.STARTED,
            DagsterRunStatus.CANCELING,
        ]
        return len(self.instance.get_run_records(RunsFilter(statuses=active), limit=50))

    def brand_members(self, brand: str) -> set[str]:
        """The shoppers whose live persona has an affinity to ``brand`` (every persona is ranked)."""
        from persona_assets.query.service import fetch_personas

        members: set[str] = set()
        offset = 0
        while True:
            answer = fetch_personas(
                {"brand": brand, "size": 1000, "from": offset}, self.engine, self.backend, self.settings.weights
            )
            members |= {hit["ext_id"] for hit in answer["results"] if hit["components"]["B"] > 0}
            offset += 1000
            if offset >= min(answer["total"], 10_000):
                return members

    def runs_by_job(self) -> dict[str, dict[str, int]]:
        """Every run of the soak by job and final status (the daemon's refresh runs among them)."""
        counts: dict[str, Counter] = {}
        for record in self.instance.get_run_records(limit=100_000):
            run = record.dagster_run
            counts.setdefault(run.job_name, Counter())[run.status.value] += 1
        return {job: dict(statuses) for job, statuses in sorted(counts.items())}

    def lost(self, markers: list[Marker]) -> list[Marker]:
        by_brand: dict[str, list[Marker]] = {}
        for marker in markers:
            by_brand.setdefault(marker.brand, []).append(marker)
        lost = []
        for brand, pending in by_brand.items():
            members = self.brand_members(brand)
            lost += [marker for marker in pending if marker.ext_id not in members]
        return lost


def write_change(directory: Path, base: Path, day: date, markers: list[Marker], brands: dict[str, list[str]], rng):
    directory.mkdir(parents=True)
    for name in ("products.csv", "categories.csv"):
        shutil.copy(base / name, directory / name)
    with (directory / "visits.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ext_id", "pid", "pincode", "visited_at"])
        for marker in markers:
            for visit in range(MARKER_VISITS):
                moment = f"{day.isoformat()}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{visit:02d}+00:00"
                writer.writerow([marker.ext_id, rng.choice(brands[marker.brand]), "560001", moment])


def soak(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    work = Path(args.work).resolve()
    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    home = Home(work)
    base = work / "base"
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731

    say(f"soak: a {args.users}-shopper shop under {work}")
    home.check("generate", str(base), "--users", str(args.users), "--seed", str(args.seed), log="generate")
    home.check("import", str(base), log="import-base")
    home.check("materialize", log="materialize-base")
    home.check("export", str(work / "base-export.jsonl"), log="export-base")
    export = read_export(work / "base-export.jsonl")
    brands = read_catalog(base)
    totals = Counter()
    for persona in export.values():
        totals.update(persona["brand_affinity"])
    candidates = [brand for brand, _ in totals.most_common(args.brands) if brand in brands]
    has = {user: set(persona["brand_affinity"]) for user, persona in export.items()}
    users = sorted(export)
    with (base / "visits.csv").open(encoding="utf-8", newline="") as handle:
        first_day = min(date.fromisoformat(row["visited_at"][:10]) for row in csv.DictReader(handle))

    live = LiveIndex(home)
    home.start_daemon()
    markers: list[Marker] = []
    trials: list[Trial] = []
    started = time.monotonic()
    try:
        for number in range(args.trials):
            trial = run_trial(number, home, live, base, first_day, brands, candidates, users, has, markers, rng, args)
            trials.append(trial)
            say(
                f"trial {number + 1}/{args.trials}: {'+'.join(trial.operations)}"
                f"{' killed ' + ','.join(trial.killed) if trial.killed else ''}; {trial.markers} markers; "
                f"settled in {trial.settle_seconds:.1f}s; lost {len(trial.lost)}"
                f"{'; NOT SETTLED' if not trial.settled else ''}"
                f"{'; unexpected: ' + ' | '.join(trial.unexpected_failures) if trial.unexpected_failures else ''}"
            )
    finally:
        home.stop_daemon()
    operations = Counter(op for trial in trials for op in trial.operations)
    kills = Counter(kill for trial in trials for kill in trial.killed)
    return {
        "trials": len(trials),
        "users": args.users,
        "seed": args.seed,
        "backend": "production" if os.environ.get("PERSONA_DB_URL") else "embedded",
        "markers": len(markers),
        "lost_updates": sum(len(trial.lost) for trial in trials),
        "stuck_trials": sum(not trial.settled for trial in trials),
        "unexpected_failures": sum(len(trial.unexpected_failures) for trial in trials),
        "operations": dict(operations),
        "runs": live.runs_by_job(),
        "kills": dict(kills),
        "settle_seconds_p50": _percentile([trial.settle_seconds for trial in trials], 50),
        "settle_seconds_max": max((trial.settle_seconds for trial in trials), default=0.0),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "trial_log": [asdict(trial) for trial in trials],
    }


def _percentile(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 2)


def run_trial(number, home, live, base, first_day, brands, candidates, users, has, markers, rng, args) -> Trial:
    day = first_day - timedelta(days=number + 1)
    chosen: list[Marker] = []
    for ext_id in rng.sample(users, min(len(users), rng.randint(1, args.max_markers))):
        fresh = [brand for brand in candidates if brand not in has[ext_id]]
        if fresh:
            brand = rng.choice(fresh)
            has[ext_id].add(brand)
            chosen.append(Marker(ext_id, brand, number))
    change = home.work / "changes" / f"trial-{number:03d}"
    write_change(change, base, day, chosen, brands, rng)
    trial = Trial(number + 1, day.isoformat(), len(chosen))
    clock = time.monotonic()

    launched: dict[str, subprocess.Popen] = {}
    plan: list[tuple[float, str, tuple[str, ...]]] = [(0.0, "import", ("import", str(change)))]
    roll = rng.random()
    if roll < args.rebuild_share:
        plan.append((rng.uniform(0, 4), "materialize", ("materialize",)))
    elif roll < args.rebuild_share + args.backfill_share and number > 0:
        earlier = (first_day - timedelta(days=rng.randint(1, number))).isoformat()
        plan.append((rng.uniform(0, 4), "backfill", ("backfill", earlier, earlier)))
    kill_at = rng.uniform(0.5, 12) if rng.random() < args.kill_share else None
    kill_target = rng.choice([name for _, name, _ in plan]) if kill_at is not None else None
    if rng.random() < args.daemon_kill_share:
        home.kill_daemon()
        trial.killed.append("daemon")
        home.start_daemon()
    trial.operations = [name for _, name, _ in plan]
    for delay, name, argv in sorted(plan):
        while time.monotonic() - clock < delay:
            time.sleep(0.05)
        launched[name] = home.persona(*argv, log=f"trial-{number:03d}-{name}")
    while any(process.poll() is None for process in launched.values()):
        if kill_at is not None and time.monotonic() - clock >= kill_at:
            process = launched[kill_target]
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                trial.killed.append(kill_target)
            kill_at = None
        time.sleep(0.05)
    for name, process in launched.items():
        if process.returncode != 0 and name not in trial.killed:
            log = home.work / "logs" / f"trial-{number:03d}-{name}.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            trial.unexpected_failures.append(f"{name} exited {process.returncode}: {' '.join(tail)}")
    if launched["import"].returncode != 0:  # killed (or failed): the operator runs it again
        process = home.persona("import", str(change), log=f"trial-{number:03d}-import-again")
        if process.wait() != 0:
            trial.unexpected_failures.append("import run again failed")
    markers += chosen
    trial.seconds = round(time.monotonic() - clock, 2)

    settle_started = time.monotonic()
    while time.monotonic() - settle_started < args.settle_timeout:
        if set(live.flags()) <= {0} and live.runs_in_flight() == 0:
            trial.settled = True
            break
        time.sleep(0.5)
    trial.settle_seconds = round(time.monotonic() - settle_started, 2)
    if trial.settled:
        trial.lost = [f"{m.ext_id}:{m.brand} (trial {m.trial + 1})" for m in live.lost(markers)]
    return trial


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default="soak-work", help="the soak's folder (emptied first)")
    parser.add_argument("--report", help="write the JSON report here (default: stdout)")
    parser.add_argument("--brands", type=int, default=20, help="marker brands: the shop's top N")
    parser.add_argument("--max-markers", type=int, default=12, help="shoppers given a marker per trial, at most")
    parser.add_argument("--rebuild-share", type=float, default=0.45)
    parser.add_argument("--backfill-share", type=float, default=0.15)
    parser.add_argument("--kill-share", type=float, default=0.35)
    parser.add_argument("--daemon-kill-share", type=float, default=0.08)
    parser.add_argument("--settle-timeout", type=float, default=240)
    args = parser.parse_args(argv)
    report = soak(args)
    text = json.dumps(report, indent=2)
    if args.report:
        Path(args.report).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    summary = {key: value for key, value in report.items() if key != "trial_log"}
    print(f"soak: {json.dumps(summary)}", file=sys.stderr)
    return 0 if report["lost_updates"] == 0 and report["stuck_trials"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
