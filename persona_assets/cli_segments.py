"""``persona segment save|list|show|delete|compute|history|export|overlap`` and ``persona lookalike``:
audiences on the command line (docs/audiences.md).

The same validator and store functions as ``/segments`` over HTTP. Exit status: 0 done; 2 an invalid name
or definition, the error naming the field as ``persona query`` does; 1 a name that is taken (``save``
without ``--replace``) or not saved (``show``, ``delete``), a stored row that no longer reads, or a store
that cannot be reached.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine

from persona_assets.audiences.definitions import parse_named_definition, parse_segment_name
from persona_assets.cli import _fail, _progress
from persona_assets.query.request import InvalidRequest
from persona_assets.settings import PersonaSettings


def add_segment_parser(sub: argparse._SubParsersAction) -> None:
    """``persona segment ...`` on the command line's subcommands."""
    segment = sub.add_parser("segment", help="save, list, show or delete saved segments (docs/audiences.md)")
    actions = segment.add_subparsers(dest="action", required=True)
    p = actions.add_parser("save", help="save a segment query and its membership rule under NAME")
    p.add_argument(
        "name", metavar="NAME", help="1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or a digit"
    )
    p.add_argument(
        "--definition",
        required=True,
        metavar="JSON|@FILE",
        help='{"query": {...}, "membership": {"top": N} or {"minScore": S}} as JSON, or @FILE holding it',
    )
    p.add_argument("--replace", action="store_true", help="replace the segment if NAME is saved already")
    p.set_defaults(func=cmd_segment_save)
    p = actions.add_parser("list", help="every saved segment, one JSON line each, by name")
    p.set_defaults(func=cmd_segment_list)
    p = actions.add_parser("show", help="the saved segment NAME as JSON")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_segment_show)
    p = actions.add_parser("delete", help="delete the saved segment NAME")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_segment_delete)
    p = actions.add_parser("compute", help="compute the members of saved segments now (all, or the NAMEs given)")
    p.add_argument("names", metavar="NAME", nargs="*")
    p.set_defaults(func=cmd_segment_compute)
    p = actions.add_parser("history", help="the computations of NAME's members (newest first), or who entered and left")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--changes", action="store_true", help="who entered and left, oldest first, one JSON line each")
    p.add_argument(
        "--since", metavar="ISO-TIME", help="with --changes: from this time (e.g. 2026-12-01T00:00:00+00:00)"
    )
    p.add_argument("--limit", type=int, default=100, help="lines at most (default 100)")
    p.set_defaults(func=cmd_segment_history)
    p = actions.add_parser("export", help="every member of NAME into FILE: .csv, .parquet or .jsonl (streamed)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cmd_segment_export)
    p = actions.add_parser("overlap", help="sizes of A and B, how many they share, Jaccard and each side's share")
    p.add_argument("first", metavar="A")
    p.add_argument("second", metavar="B")
    p.set_defaults(func=cmd_segment_overlap)


def add_lookalike_parser(sub: argparse._SubParsersAction) -> None:
    """``persona lookalike ...`` on the command line's subcommands."""
    p = sub.add_parser(
        "lookalike",
        help="the shoppers most like a seed: a saved segment's members or a list of ext_ids (docs/audiences.md)",
    )
    seed = p.add_mutually_exclusive_group(required=True)
    seed.add_argument("--seed-segment", metavar="NAME", help="the members of this saved segment")
    seed.add_argument("--seed", metavar="EXT_ID", action="append", help="an ext_id of the seed (repeat it)")
    seed.add_argument("--seed-file", metavar="FILE", help="the seed's ext_ids, one per line (UTF-8)")
    p.add_argument("--size", type=int, help="lookalikes returned, 1-10,000 (default 100)")
    p.add_argument("--min-similarity", type=float, metavar="S", help="only lookalikes at least this similar (0-1)")
    p.add_argument("--include-seed", action="store_true", help="the seed's own shoppers may be returned")
    p.add_argument("--gender", help="only men or women (as the segment query reads it)")
    p.add_argument("--city-tier", help="only shoppers of this home tier (Tier1-Tier3)")
    p.add_argument("--pretty", action="store_true")
    p.set_defaults(func=cmd_lookalike)


def cmd_lookalike(args: argparse.Namespace, settings: PersonaSettings) -> int:
    """Answer a lookalike request as ``POST /lookalikes`` does; exit 2 naming the field of a bad one."""
    from persona_assets.query.lookalikes import find_lookalikes
    from persona_assets.stores.backends import search_backend_for

    if args.seed_file is not None:
        try:
            ext_ids = Path(args.seed_file).read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as error:
            return _fail(f"lookalike: cannot read the seed file {args.seed_file}: {error}")
        seed: dict[str, object] = {"extIds": [ext_id for ext_id in ext_ids if ext_id]}
    elif args.seed is not None:
        seed = {"extIds": args.seed}
    else:
        seed = {"segment": args.seed_segment}
    options = {
        "size": args.size,
        "minSimilarity": args.min_similarity,
        "includeSeed": args.include_seed,
        "gender": args.gender,
        "cityTier": args.city_tier,
    }
    payload = {"seed": seed, **{name: value for name, value in options.items() if value is not None}}

    def answer(engine: Engine) -> int:
        try:
            response = find_lookalikes(payload, engine, search_backend_for(settings), settings.weights)
        except InvalidRequest as error:
            return _fail(f"lookalike: {error}")
        print(json.dumps(response, indent=2 if args.pretty else None, ensure_ascii=False))
        return 0

    return _in_store("lookalike", settings, answer)


def cmd_segment_save(args: argparse.Namespace, settings: PersonaSettings) -> int:
    from persona_assets.stores.segments import create_segment, replace_segment

    try:
        segment = parse_named_definition(_read_definition(args.definition), args.name)
    except InvalidRequest as error:
        return _fail(f"segment save: {error}")

    def save(engine: Engine) -> int:
        if args.replace:
            stored, created = replace_segment(engine, segment)
        else:
            stored, created = create_segment(engine, segment), True
        print(_line(stored.to_json()))
        _progress(f"{'saved' if created else 'replaced'} segment {segment.name!r}")
        return 0

    return _in_store("segment save", settings, save)


def cmd_segment_list(args: argparse.Namespace, settings: PersonaSettings) -> int:
    from persona_assets.stores.segments import list_segments

    def show_all(engine: Engine) -> int:
        stored = list_segments(engine)
        if not stored:  # said on stderr: stdout stays JSON Lines (here: none)
            _progress("no saved segments")
        for saved in stored:
            print(_line(saved.to_json()))
        return 0

    return _in_store("segment list", settings, show_all)


def cmd_segment_show(args: argparse.Namespace, settings: PersonaSettings) -> int:
    from persona_assets.stores.segments import get_segment

    try:
        name = parse_segment_name(args.name)
    except InvalidRequest as error:
        return _fail(f"segment show: {error}")

    def show(engine: Engine) -> int:
        print(_line(get_segment(engine, name).to_json()))
        return 0

    return _in_store("segment show", settings, show)


def cmd_segment_delete(args: argparse.Namespace, settings: PersonaSettings) -> int:
    from persona_assets.stores.segments import delete_segment

    try:
        name = parse_segment_name(args.name)
    except InvalidRequest as error:
        return _fail(f"segment delete: {error}")

    def delete(engine: Engine) -> int:
        delete_segment(engine, name)
        _progress(f"deleted segment {name!r}")
        return 0

    return _in_store("segment delete", settings, delete)


def cmd_segment_compute(args: argparse.Namespace, settings: PersonaSettings) -> int:
    from persona_assets.pipeline import dagster_instance, materialize_segments
    from persona_assets.stores.segments import get_segment

    try:
        names = [parse_segment_name(name) for name in args.names]
    except InvalidRequest as error:
        return _fail(f"segment compute: {error}")

    def compute(engine: Engine) -> int:
        for name in names:
            get_segment(engine, name)  # SegmentNotFound before any run starts
        done = materialize_segments(settings, dagster_instance(settings), _progress, names or None)
        if not done:
            _progress("no saved segments")
        return 0

    return _in_store("segment compute", settings, compute)


def cmd_segment_history(args: argparse.Namespace, settings: PersonaSettings) -> int:
    from persona_assets.audiences.membership import parse_history_window
    from persona_assets.stores.membership import member_changes, membership_history
    from persona_assets.stores.segments import get_segment

    try:
        name = parse_segment_name(args.name)
        since, limit = parse_history_window(args.since, args.limit)
    except InvalidRequest as error:
        return _fail(f"segment history: {error}")

    def history(engine: Engine) -> int:
        get_segment(engine, name)
        if args.changes:
            lines = [change.to_json() for change in member_changes(engine, name, since=since, limit=limit)]
        else:
            lines = [run.to_json() for run in membership_history(engine, name, limit=limit)]
        if not lines:
            _progress(
                f"no {'changes' if args.changes else 'computations'} of {name!r} yet: `persona segment compute {name}`"
            )
        for line in lines:
            print(_line(line))
        return 0

    return _in_store("segment history", settings, history)


def cmd_segment_export(args: argparse.Namespace, settings: PersonaSettings) -> int:
    import os

    from persona_assets.audiences.export import format_of_path
    from persona_assets.stores.membership import export_members, member_count

    target = Path(args.file)
    try:
        name = parse_segment_name(args.name)
        fmt = format_of_path(target)
    except InvalidRequest as error:
        return _fail(f"segment export: {error}")

    def write(engine: Engine) -> int:
        chunks = export_members(engine, name, fmt, settings.weights)
        # Under a temporary name, renamed when complete: a failed export never leaves half a file.
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with partial.open("wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        _progress(f"wrote {member_count(engine, name):,} members of {name!r} to {target} ({fmt})")
        return 0

    return _in_store("segment export", settings, write)


def cmd_segment_overlap(args: argparse.Namespace, settings: PersonaSettings) -> int:
    from persona_assets.stores.membership import overlap

    try:
        first, second = parse_segment_name(args.first), parse_segment_name(args.second)
    except InvalidRequest as error:
        return _fail(f"segment overlap: {error}")

    def show(engine: Engine) -> int:
        print(_line(overlap(engine, first, second).to_json()))
        return 0

    return _in_store("segment overlap", settings, show)


def _read_definition(text: str) -> object:
    """``--definition``: JSON, or ``@FILE`` holding it (UTF-8)."""
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidRequest("definition", f"cannot read {path}: {error}") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise InvalidRequest("definition", f"not valid JSON ({error})") from None


def _in_store(command: str, settings: PersonaSettings, operation: Callable[[Engine], int]) -> int:
    """Run ``operation`` on the store; what it cannot do is one error line, never a traceback."""
    from persona_assets.query.service import unavailable_reason
    from persona_assets.stores import relational
    from persona_assets.stores.segments import SegmentError, SegmentExists

    try:
        return operation(relational.store_engine(settings.db_url))
    except SegmentExists as error:
        return _fail(f"{command}: {error}; use --replace to replace it", code=1)
    except SegmentError as error:  # not saved, or a stored row that no longer reads
        return _fail(f"{command}: {error}", code=1)
    except Exception as error:
        reason = unavailable_reason(error)
        if reason is None:
            raise
        return _fail(f"{command}: {reason}", code=1)


def _line(definition: dict) -> str:
    return json.dumps(definition, ensure_ascii=False)
