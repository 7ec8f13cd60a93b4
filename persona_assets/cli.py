"""``persona``: the command line door into the assets (import, materialise, export, query, segment, serve, generate, demo)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path

from persona_assets.settings import PersonaSettings


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fail(message: str, code: int = 2) -> int:
    print(f"persona: error: {message}", file=sys.stderr)
    return code


def cmd_import(args: argparse.Namespace, settings: PersonaSettings) -> int:
    from persona_assets.ingest.importer import import_directory
    from persona_assets.ingest.validation import ImportFileError
    from persona_assets.pipeline import dagster_instance, materialize_event_days, materialize_reference
    from persona_assets.stores import relational
    from persona_assets.stores.events import EventStore

    engine = relational.store_engine(settings.db_url)
    store = EventStore(settings.layout.landing_dir, settings.layout.events_dir)
    started = time.perf_counter()
    try:
        report = import_directory(
            Path(args.directory), engine, store, first_day=settings.events_start, limits=settings.duckdb_limits
        )
    except ImportFileError as error:
        return _fail(f"import stopped, nothing written: {error}")
    phases = ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in report.seconds.items())
    _progress(
        f"validated and landed {args.directory} in {time.perf_counter() - started:.1f}s ({phases}; {report.import_id})"
    )
    if args.land_only:
        days = sorted({d for days in report.landed_days.values() for d in days})
        span = f"{days[0]} … {days[-1]}" if days else "none"
        _progress(f"landed only (days {span}): publish them with `persona backfill FIRST LAST` or from the UI")
    else:
        instance = dagster_instance(settings)
        materialize_reference(settings, instance, _progress)
        landed = {kind: days for kind, days in report.landed_days.items() if days}
        if landed:
            materialize_event_days(settings, instance, landed, _progress)
    print(_import_summary(report))
    return 0


def cmd_backfill(args: argparse.Namespace, settings: PersonaSettings) -> int:
    """Re-publish a range of days from the landing area (after a data fix), then rebuild."""
    from datetime import date

    from persona_assets.pipeline import backfill_days

    try:
        first, last = date.fromisoformat(args.first), date.fromisoformat(args.last)
    except ValueError as error:
        return _fail(f"backfill: {error}; expected FIRST and LAST as YYYY-MM-DD")
    if last < first:
        return _fail(f"backfill: LAST ({last}) is before FIRST ({first})")
    if reason := _nothing_imported(settings):
        return _fail(reason)
    backfill_days(settings, first, last, _progress, publish_missing_as_empty=args.publish_missing_as_empty)
    return 0


def _import_summary(report) -> str:
    lines = [f"import {report.import_id} from {report.source}"]
    lines.append(f"  {'file':<16}{'read':>12}{'imported':>12}{'rejected':>12}")
    for name, file in report.files.items():
        rejected = sum(file.rejected_by_reason.values())
        lines.append(f"  {name:<16}{file.rows_read:>12,}{file.imported:>12,}{rejected:>12,}")
        for reason, count in sorted(file.rejected_by_reason.items(), key=lambda item: -item[1]):
            lines.append(f"      {count:>8,}  {reason}")
    if report.rejected:
        lines.append(
            f"  rejected rows are kept with their reasons in table import_rejects (import_id = '{report.import_id}'); "
            f"see `persona rejects {report.import_id}`"
        )
    return "\n".join(lines)


def cmd_rejects(args: argparse.Namespace, settings: PersonaSettings) -> int:
    import sqlalchemy as sa

    from persona_assets.stores import relational

    engine = relational.store_engine(settings.db_url)
    table = relational.import_rejects
    select = sa.select(table).order_by(table.c.id).limit(args.limit)
    if args.import_id:
        select = select.where(table.c.import_id == args.import_id)
    rows = relational.read_frame(engine, select)
    if rows.empty:  # said on stderr: stdout stays JSON Lines (here: none)
        scope = f"import {args.import_id}" if args.import_id else "any import"
        _progress(f"no rejected rows in {scope}")
    for row in rows.itertuples(index=False):
        print(
            json.dumps(
                {
                    "import_id": row.import_id,
                    "file": row.file,
                    "row": int(row.row_number),
                    "reason": row.details,
                    "raw": row.raw,
                },
                ensure_ascii=False,
            )
        )
    return 0


def _nothing_imported(settings: PersonaSettings) -> str | None:
    """Why a command that reads imported data cannot run yet (one line), or None."""
    from persona_assets.ingest.importer import catalog_landing_path

    if catalog_landing_path(settings.layout.landing_dir, "products").exists():
        return None
    return f"nothing has been imported into {settings.home} yet: run `persona import DIRECTORY` first"


def cmd_materialize(args: argparse.Namespace, settings: PersonaSettings) -> int:
    from persona_assets.pipeline import materialize_everything

    if reason := _nothing_imported(settings):
        return _fail(reason)
    started = time.perf_counter()
    materialize_everything(settings, _progress)
    _progress(f"materialised every asset in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_export(args: argparse.Namespace, settings: PersonaSettings) -> int:
    import sqlalchemy as sa

    from persona_assets.export import export_personas
    from persona_assets.stores import relational

    engine = relational.store_engine(settings.db_url)
    with engine.connect() as conn:
        empty = conn.execute(sa.select(sa.literal(1)).select_from(relational.user_personas).limit(1)).first() is None
    if empty:
        return _fail("the persona store is empty: `persona materialize` builds it (after `persona import DIRECTORY`)")
    out = Path(args.file)
    written = export_personas(engine, out, _progress)
    _progress(f"wrote {written:,} personas to {out}")
    return 0


def cmd_dead_letter(args: argparse.Namespace, settings: PersonaSettings) -> int:
    """Users the index refused on every try (no longer retried by the sensor); ``--retry`` hands them back."""
    from datetime import UTC, datetime

    from persona_assets.stores import relational
    from persona_assets.stores.refusals import dead_letter, retry_dead_letter

    engine = relational.store_engine(settings.db_url)
    if args.retry:
        _progress(f"{retry_dead_letter(engine):,} user(s) handed back to the refresh sensor")
        return 0
    count, shown = dead_letter(engine, limit=args.limit)
    for refusal in shown:
        when = datetime.fromtimestamp(refusal.last_failed_us / 1e6, UTC).isoformat(timespec="seconds")
        print(f"{refusal.ext_id}\t{refusal.failures} refusals\tlast {when}\t{refusal.reason}")
    more = f" (first {len(shown):,} shown; --limit N)" if count > len(shown) else ""
    _progress(f"{count:,} user(s) in the dead letter{more}")
    return 0


def cmd_query(args: argparse.Namespace, settings: PersonaSettings) -> int:
    from persona_assets.query.request import InvalidRequest
    from persona_assets.query.service import fetch_personas, unavailable_reason
    from persona_assets.stores import relational
    from persona_assets.stores.backends import search_backend_for

    try:
        payload = json.loads(args.request)
    except json.JSONDecodeError as error:
        return _fail(f"request: not valid JSON ({error})")
    try:
        response = fetch_personas(
            payload, relational.create_engine(settings.db_url), search_backend_for(settings), settings.weights
        )
    except InvalidRequest as error:
        return _fail(f"invalid request: {error}")
    except Exception as error:
        reason = unavailable_reason(error)
        if reason is None:
            raise
        return _fail(reason)
    print(json.dumps(response, indent=2 if args.pretty else None, ensure_ascii=False))
    return 0


def cmd_generate(args: argparse.Namespace, settings: PersonaSettings) -> int:
    """Write a synthetic import directory and print its ``shape.json`` (what a benchmark ran on)."""
    import dataclasses

    from persona_assets.synthetic.generator import DEFAULT_SHAPE, SHAPE_FILE, WIDE, generate_dataset

    # `persona demo` passes only directory, users and seed: the other flags are then absent.
    overrides = {
        "days": getattr(args, "days", None),
        "interests": getattr(args, "interests", None),
        "searches_per_user": getattr(args, "searches", None),
        "adversarial_share": getattr(args, "adversarial", None),
        "block_users": getattr(args, "block_users", None),
        "planted_groups": getattr(args, "planted_groups", None),
        "planted_share": getattr(args, "planted_share", None),
        "planted_focus": getattr(args, "planted_focus", None),
        "planted_draw": getattr(args, "planted_draw", None),
    }
    base = WIDE if getattr(args, "wide", False) else DEFAULT_SHAPE
    shape = dataclasses.replace(base, **{name: value for name, value in overrides.items() if value is not None})
    directory = Path(args.directory)
    started = time.perf_counter()
    try:
        generate_dataset(directory, users=args.users, seed=args.seed, shape=shape, progress=_progress)
    except ValueError as error:
        return _fail(f"generate: {error}")
    _progress(f"generated {directory} in {time.perf_counter() - started:.1f}s")
    print((directory / SHAPE_FILE).read_text(encoding="utf-8"), end="")
    return 0


def _interest_range(text: str) -> tuple[int, int]:
    """``LO-HI`` (or ``N`` for exactly N) interests per shopper."""
    fewest, _, most = text.partition("-")
    try:
        return int(fewest), int(most or fewest)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO-HI (e.g. 2-4), got {text!r}") from None


def _at_least_one(text: str) -> int:
    """A whole number of 1 or more."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return number


def cmd_demo(args: argparse.Namespace, settings: PersonaSettings) -> int:
    directory = settings.home / "demo-data"
    for step in (
        lambda: cmd_generate(argparse.Namespace(directory=directory, users=args.users, seed=args.seed), settings),
        lambda: cmd_import(argparse.Namespace(directory=directory, land_only=False), settings),
        lambda: cmd_materialize(argparse.Namespace(), settings),
    ):
        code = step()
        if code:
            return code
    from persona_assets.demo import demo_segment, next_steps
    from persona_assets.stores import relational
    from persona_assets.stores.backends import search_backend_for

    request = demo_segment(relational.store_engine(settings.db_url), search_backend_for(settings), settings.weights)
    _progress(f"sample segment: {json.dumps(request)}")
    code = cmd_query(argparse.Namespace(request=json.dumps(request), pretty=True), settings)
    _progress(next_steps(request))
    return code


def cmd_ui(args: argparse.Namespace, settings: PersonaSettings) -> int:
    import importlib.util

    from persona_assets.pipeline import dagster_instance

    if importlib.util.find_spec("dagster_webserver") is None:
        return _fail("the Dagster UI is in the `ui` extra: pip install -c constraints.txt -e '.[ui]'")
    dagster_instance(settings)  # sets DAGSTER_HOME to the CLI's instance
    # The dagster of this interpreter's environment, whether or not its bin/ is on PATH.
    command = [sys.executable, "-m", "dagster", "dev", "-m", "persona_assets.definitions", "-p", str(args.port)]
    command += ["-h", args.host]
    _progress(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(command)}")
    os.execv(sys.executable, command)
    return 0


def cmd_serve(args: argparse.Namespace, settings: PersonaSettings) -> int:
    """``POST /fetchPersonas``, ``GET /health`` and the OpenAPI document (``/docs``) over HTTP."""
    import uvicorn

    from persona_assets.api import create_app
    from persona_assets.worker_load import create_load_file

    try:
        app = create_app(settings)
    except ValueError as error:  # e.g. PERSONA_SCORE_WEIGHTS
        return _fail(str(error))
    if args.workers < 1:
        return _fail(f"--workers: {args.workers} is not a number of worker processes >= 1")
    _progress(
        f"serving the segment query on http://{args.host}:{args.port} with {args.workers} worker(s) "
        f"(OpenAPI: /docs, /openapi.json; {'a bearer token' if settings.api_token else 'no token'} required)"
    )
    if args.workers == 1:
        uvicorn.run(app, host=args.host, port=args.port)
        return 0
    # Each worker process builds its own app from the same environment (the one settings object), and
    # they spread the clients' connections evenly through a file they share (persona_assets.worker_load).
    load_file = create_load_file(settings.home / "tmp" / f"serve-{os.getpid()}.load")
    os.environ["PERSONA_SERVE_LOAD_FILE"] = str(load_file)
    try:
        uvicorn.run("persona_assets.api:create_app", factory=True, host=args.host, port=args.port, workers=args.workers)
    finally:
        load_file.unlink(missing_ok=True)
    return 0


def cmd_services(args: argparse.Namespace, settings: PersonaSettings) -> int:
    """Throwaway MariaDB + OpenSearch under PERSONA_HOME/services; ``up`` prints the two export lines."""
    import shlex

    from persona_assets import services

    if args.action == "up":
        try:
            started = services.up(settings.home, opensearch_nodes=args.opensearch_nodes)
        except (RuntimeError, TimeoutError) as error:  # a refusal, or a service that would not start: its reason
            return _fail(str(error))
        for name, value in started.items():
            print(f"export {name}={shlex.quote(value)}")
    elif args.action == "down":
        for name, was_running in services.down(settings.home).items():
            _progress(f"{name}: {'stopped' if was_running else 'was not running'}")
    else:
        states = services.status(settings.home)
        for state in states.values():
            print(json.dumps(state.as_dict()))
        return 0 if all(state.running for state in states.values()) else 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persona", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import", help="validate and load an import directory, then materialise what it touched")
    p.add_argument("directory")
    p.add_argument(
        "--land-only",
        action="store_true",
        help="validate and land, but publish nothing (e.g. a data fix to publish with `persona backfill`)",
    )
    p.set_defaults(func=cmd_import)
    p = sub.add_parser("rejects", help="print rejected rows with their reasons (JSON lines)")
    p.add_argument("import_id", nargs="?")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_rejects)
    p = sub.add_parser("backfill", help="re-publish the days FIRST..LAST of every event kind, then rebuild")
    p.add_argument("first", help="YYYY-MM-DD")
    p.add_argument("last", help="YYYY-MM-DD")
    p.add_argument(
        "--publish-missing-as-empty",
        action="store_true",
        help="a day of the range with no landed file is published empty (its published events go); without "
        "this, such a day stops the backfill before anything is published",
    )
    p.set_defaults(func=cmd_backfill)
    p = sub.add_parser("materialize", help="materialise every asset in-process through Dagster")
    p.set_defaults(func=cmd_materialize)
    p = sub.add_parser("export", help="write the normalised personas as JSON lines")
    p.add_argument("file")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("dead-letter", help="list the users whose document the index refused on every try")
    p.add_argument("--limit", type=int, default=100, help="users listed (default 100)")
    p.add_argument("--retry", action="store_true", help="hand every dead-lettered user back to the refresh sensor")
    p.set_defaults(func=cmd_dead_letter)
    from persona_assets.cli_segments import add_lookalike_parser, add_segment_parser  # imports this module's helpers

    add_segment_parser(sub)
    add_lookalike_parser(sub)
    p = sub.add_parser("query", help="answer a segment query given as JSON (legacy field names)")
    p.add_argument("request")
    p.add_argument("--pretty", action="store_true")
    p.set_defaults(func=cmd_query)
    p = sub.add_parser(
        "generate",
        help="write a synthetic dataset in the import format, and shape.json saying what was drawn",
        description="Synthetic shoppers over the real catalog. Without shape flags the output is the original "
        "30-day shape, byte for byte. --wide is the acceptance benchmark's shape (two years of days, about 73 "
        "raw affinity rows, 4.4 searches and 29-30 events per shopper, 1% adversarial shoppers, users drawn "
        "100,000 at a time); the other shape flags override --wide or the default.",
    )
    p.add_argument("directory")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--wide", action="store_true", help="the acceptance benchmark's shape (see above)")
    p.add_argument("--days", type=int, metavar="D", help="calendar days of the window ending 2026-10-31 (default 30)")
    p.add_argument("--interests", type=_interest_range, metavar="LO-HI", help="interests per shopper (default 2-4)")
    p.add_argument("--searches", type=float, metavar="MEAN", help="mean searches per shopper (default about 2.7)")
    p.add_argument(
        "--adversarial",
        type=float,
        metavar="SHARE",
        help="share of shoppers with adversarial ext_ids (quotes, commas, SQL, emoji, case twins, 191 "
        "characters...) and search texts (default 0)",
    )
    p.add_argument(
        "--block-users",
        type=int,
        metavar="N",
        help="draw N users at a time so memory stays bounded; the data depends on N (default: all at once)",
    )
    p.add_argument(
        "--planted-groups",
        type=int,
        metavar="N",
        help="plant N interest groups (shoppers sharing a taste) and write who joined which to "
        "planted_groups.csv: the ground truth of the lookalike benchmark (default 0)",
    )
    p.add_argument(
        "--planted-share", type=float, metavar="SHARE", help="share of shoppers joining a planted group (default 0.05)"
    )
    p.add_argument(
        "--planted-focus",
        type=float,
        metavar="SHARE",
        help="share of a member's products drawn from the group's interests (default 0.5)",
    )
    p.add_argument(
        "--planted-draw",
        choices=("uniform", "popular"),
        help="a planted group's interests: all interest groups equally likely (uniform, the default: mostly "
        "niche tastes) or by popularity (popular: tastes that overlap with what everyone buys)",
    )
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("demo", help="generate, import, materialise and print a sample segment")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("serve", help="serve POST /fetchPersonas and GET /health over HTTP (OpenAPI at /docs)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes (default 1; one per core serves the most requests)"
    )
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("services", help="start, stop or inspect a throwaway MariaDB + OpenSearch on loopback")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--opensearch-nodes",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="up: run OpenSearch as a cluster of N nodes on loopback (default 1); its URL lists every node",
    )
    p.set_defaults(func=cmd_services)
    p = sub.add_parser("ui", help="start the Dagster UI on the same instance the CLI uses")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    from persona_assets.pipeline import InstanceUnavailable, MaterializationFailed

    args = build_parser().parse_args(argv)
    try:
        settings = PersonaSettings.from_env()
    except ValueError as error:
        return _fail(str(error))
    try:
        return int(args.func(args, settings) or 0)
    except MaterializationFailed as error:
        return _fail(str(error), code=1)
    except InstanceUnavailable as error:
        return _fail(str(error))
    except Exception as error:
        if not _storage_failed(error):
            raise
        free = shutil.disk_usage(settings.home).free if settings.home.exists() else 0
        return _fail(
            f"the disk under {settings.home} failed a write ({_first_line(error)}; {free / 2**20:,.1f} MiB free): "
            "nothing incomplete was published (the live index and the stores are as the last successful run "
            "left them); free space and run the command again",
            code=1,
        )


# What a full disk looks like on the way up: the OS's ENOSPC, SQLite's two ways of saying it (a write of its
# journal or WAL that fails is reported as an I/O error).
_STORAGE_MESSAGES = ("No space left on device", "database or disk is full", "disk I/O error")


def _storage_failed(error: BaseException | None) -> bool:
    """True when ``error`` or one of its causes is a failed write to disk (a full disk, mostly)."""
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if any(message in str(error) for message in _STORAGE_MESSAGES):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


if __name__ == "__main__":
    sys.exit(main())
