"""A corpus of malformed inputs through ``persona import`` and the other commands (issue 8, item 9).

Every case is one small import directory that is good but for one file, spoiled the way real exports
are (encodings, byte-order marks, delimiters, quoting, huge fields, truncation, empty files, duplicate
headers, binary junk, odd timestamps), or a command run in a state it cannot serve yet. Each must end
in one of two ways, never a traceback:

- ``rows``: the import succeeds, the spoiled rows are rejected rows with their reason, and every good
  row of the file is imported (the count is checked against the file's good rows);
- ``error``: exit code ≠ 0 and one line on stderr naming the file (and line) or the step missing;
  nothing is written.

The CLI runs in this process (``persona_assets.cli.main``, what the ``persona`` script calls): an
exception escaping it fails the case as a traceback would.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import CONTRACT_COLUMNS, Pipeline

from persona_assets.ingest.importer import MAX_REJECT_TEXT

pytestmark = pytest.mark.contract

DAY = "2026-11-02"
GOOD: dict[str, list[list[str]]] = {
    "categories.csv": [["1", "Electronics", ""], ["10", "Audio", "1"], ["100", "Earbuds", "10"]],
    "products.csv": [
        ["P1", "flipkart", "Airdopes 141", "boAt", "Earbuds", "unisex", "1", "10", "100", "1299"],
        ["P2", "amazon", "Rockerz 450", "boAt", "Headphones", "men", "1", "10", "", "1499"],
        ["P3", "myntra", "Buds Z2", "OnePlus", "Earbuds", "women", "1", "10", "100", "2999"],
    ],
    "visits.csv": [
        ["u1", "P1", "560001", f"{DAY}T10:00:00"],
        ["u2", "P2", "400601", f"{DAY}T11:00:00+05:30"],
        ["u3", "P3", "110001", f"{DAY} 12:00:00Z"],
        ["u4", "P1", "600001", f"{DAY}T13:00:00.250"],
    ],
    "checkouts.csv": [
        ["o1", "u1", "P1", "560001", f"{DAY}T10:05:00"],
        ["o2", "u2", "P2", "400601", DAY],
        ["o3", "u3", "P3", "110001", f"{DAY}T12:05:00"],
    ],
    "searches.csv": [
        ["u1", "boat earbuds", f"{DAY}T09:00:00"],
        ["u2", "headphones, wireless", f"{DAY}T10:30:00"],
        ["u3", 'the "best" buds', f"{DAY}T11:45:00"],
    ],
}


def csv_text(name: str, rows: list[list[str]] | None = None, header: list[str] | None = None, **options) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=options.pop("lineterminator", "\n"), **options)
    writer.writerow(header if header is not None else CONTRACT_COLUMNS[name])
    writer.writerows(GOOD[name] if rows is None else rows)
    return out.getvalue()


def good_bytes(name: str) -> bytes:
    return csv_text(name).encode()


@dataclass
class Case:
    """One spoiled input: ``spoil`` changes the good directory; the rest says how the import must end."""

    id: str
    file: str
    spoil: Callable[[Path], None]
    # rows: how many of the file's rows must be imported, and a reason each rejected row may give
    kept: int | None = None
    reasons: tuple[str, ...] = ()
    # error: the words the one error line must hold
    error: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)


def write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def spoil(directory: Path) -> None:
        (directory / name).write_bytes(data.encode() if isinstance(data, str) else data)

    return spoil


def with_rows(name: str, lines: list[bytes], at: int | None = None) -> Callable[[Path], None]:
    """The good file with raw ``lines`` inserted after data row ``at`` (default: at the end)."""
    good = good_bytes(name).splitlines(keepends=True)
    position = len(good) if at is None else at + 1
    return write(
        name,
        b"".join(
            good[:position] + [line if line.endswith(b"\n") else line + b"\n" for line in lines] + good[position:]
        ),
    )


def timestamp_case(id: str, value: str, reason: str) -> Case:
    return Case(
        id, "visits.csv", with_rows("visits.csv", [f"u9,P1,560001,{value}".encode()]), kept=4, reasons=(reason,)
    )


BIG = "x" * (6 << 20)  # 6 MiB: more than one read block
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + bytes(range(256)) * 4

CASES = [
    # encodings and byte-order marks
    Case(
        "utf8-bom-catalog", "products.csv", write("products.csv", b"\xef\xbb\xbf" + good_bytes("products.csv")), kept=3
    ),
    Case("utf8-bom-events", "visits.csv", write("visits.csv", b"\xef\xbb\xbf" + good_bytes("visits.csv")), kept=4),
    Case(
        "utf16-file",
        "searches.csv",
        write("searches.csv", csv_text("searches.csv").encode("utf-16")),
        error=("searches.csv", "line 1", "UTF-8"),
    ),
    Case(
        "latin1-cell",
        "searches.csv",
        with_rows("searches.csv", [b"u4,caf\xe9 shoes," + DAY.encode() + b"T10:00:00"]),
        kept=3,
        reasons=("not valid UTF-8",),
    ),
    Case(
        "cp1252-quotes-title",
        "products.csv",
        with_rows("products.csv", [b"P4,amazon,\x93Bass\x94 Pro,JBL,Earbuds,men,1,10,100,999"]),
        kept=3,
        reasons=("not valid UTF-8",),
    ),
    Case(
        "bad-continuation-id",
        "checkouts.csv",
        with_rows("checkouts.csv", [b"o4,u\xc3\x28,P1,560001," + DAY.encode()]),
        kept=3,
        reasons=("not valid UTF-8",),
    ),
    Case(
        "nul-in-id",
        "visits.csv",
        with_rows("visits.csv", [b"u\x005,P1,560001," + DAY.encode()]),
        kept=4,
        reasons=("NUL character in ext_id",),
    ),
    Case(
        "latin1-header",
        "categories.csv",
        write("categories.csv", b"cat_id,n\xe4me,parent_id\n1,x,\n"),
        error=("categories.csv", "line 1", "UTF-8"),
    ),
    # line endings and delimiters
    Case("crlf", "visits.csv", write("visits.csv", csv_text("visits.csv", lineterminator="\r\n")), kept=4),
    Case("cr-only", "checkouts.csv", write("checkouts.csv", csv_text("checkouts.csv", lineterminator="\r")), kept=3),
    Case(
        "semicolons",
        "visits.csv",
        write("visits.csv", csv_text("visits.csv", delimiter=";")),
        error=("visits.csv", "';'", "comma"),
    ),
    Case(
        "tabs",
        "products.csv",
        write("products.csv", csv_text("products.csv", delimiter="\t")),
        error=("products.csv", "tab", "comma"),
    ),
    Case(
        "trailing-delimiter",
        "searches.csv",
        write("searches.csv", "".join(line + ",\n" for line in csv_text("searches.csv").splitlines())),
        kept=3,
    ),
    Case(
        "too-many-fields",
        "visits.csv",
        with_rows("visits.csv", [b"u5,P1,560001," + DAY.encode() + b",surplus"]),
        kept=4,
        reasons=("wrong number of fields",),
    ),
    Case(
        "too-few-fields",
        "visits.csv",
        with_rows("visits.csv", [b"u5,P1"], at=1),
        kept=4,
        reasons=("wrong number of fields",),
    ),
    # quoting
    Case("quoted-newline", "searches.csv", with_rows("searches.csv", [b'u4,"red\nshoes",' + DAY.encode()]), kept=4),
    Case(
        "unterminated-quote-at-end",
        "searches.csv",
        write("searches.csv", good_bytes("searches.csv") + b'u4,"never closed,' + DAY.encode() + b"\n"),
        kept=3,
        reasons=("unterminated quote",),
    ),
    Case(
        "unterminated-quote-mid-file",
        "visits.csv",
        with_rows("visits.csv", [b'u5,"P1,560001,' + DAY.encode()], at=1),
        kept=1,  # the quote runs to the end of the file: the rows after it are in the rejected row's text
        reasons=("unterminated quote",),
    ),
    Case(
        "stray-quote-inside-field",
        "searches.csv",
        with_rows("searches.csv", [b'u4,12" speaker,' + DAY.encode()]),
        kept=4,
    ),
    # huge fields
    Case(
        "huge-id",
        "visits.csv",
        with_rows("visits.csv", [f"{BIG},P1,560001,{DAY}".encode()], at=1),
        kept=4,
        reasons=("ext_id longer than",),
    ),
    Case(
        "huge-query",
        "searches.csv",
        with_rows("searches.csv", [f'u4,"{BIG}",{DAY}'.encode()], at=0),
        kept=3,
        reasons=("query longer than",),
    ),
    Case(
        "huge-title",
        "products.csv",
        with_rows("products.csv", [f"P4,amazon,{BIG},JBL,Earbuds,men,1,10,100,999".encode()]),
        kept=3,
        reasons=("title longer than",),
    ),
    # truncated and empty files
    Case(
        "truncated-mid-row",
        "checkouts.csv",
        write("checkouts.csv", good_bytes("checkouts.csv") + b"o4,u4,P"),
        kept=3,
        reasons=("wrong number of fields",),
    ),
    Case(
        "truncated-mid-character",
        "searches.csv",
        write("searches.csv", good_bytes("searches.csv") + "u4,café".encode()[:-1]),
        kept=3,
        reasons=("wrong number of fields",),  # and not UTF-8: pyarrow cannot hand such a row over (read again)
    ),
    Case("truncated-header", "visits.csv", write("visits.csv", b"ext_id,pi"), error=("visits.csv", "'pid'", "missing")),
    Case("empty-event-file", "visits.csv", write("visits.csv", b""), error=("visits.csv", "empty")),
    Case("empty-catalog", "products.csv", write("products.csv", b""), error=("products.csv", "empty")),
    Case("header-only", "checkouts.csv", write("checkouts.csv", csv_text("checkouts.csv", rows=[])), kept=0),
    Case(
        "blank-lines",
        "visits.csv",
        with_rows("visits.csv", [b"", b"   ", b""], at=1),
        kept=4,
        reasons=("wrong number of fields",),  # the line of spaces; empty lines are no rows
    ),
    # headers
    Case(
        "duplicate-header",
        "visits.csv",
        write("visits.csv", csv_text("visits.csv", header=["ext_id", "pid", "pid", "visited_at"], rows=[])),
        error=("visits.csv", "'pid'", "twice"),
    ),
    Case(
        "reordered-header",
        "checkouts.csv",
        write(
            "checkouts.csv",
            csv_text(
                "checkouts.csv",
                header=["ordered_at", "pincode", "pid", "ext_id", "order_id"],
                rows=[row[::-1] for row in GOOD["checkouts.csv"]],
            ),
        ),
        kept=3,
    ),
    Case(
        "upper-case-header",
        "searches.csv",
        write("searches.csv", csv_text("searches.csv", header=["EXT_ID", "QUERY", "SEARCHED_AT"])),
        error=("searches.csv", "'ext_id'", "missing"),
    ),
    # binary junk
    Case(
        "malformed-and-not-utf8-mid-file",
        "checkouts.csv",
        with_rows("checkouts.csv", [b"o9,caf\xe9", b"o8,u\xff,P1,560001," + DAY.encode()], at=1),
        kept=3,
        reasons=("wrong number of fields", "not valid UTF-8"),
    ),
    Case("png-as-csv", "visits.csv", write("visits.csv", PNG), error=("visits.csv", "line 1")),
    Case(
        "gzip-as-csv",
        "searches.csv",
        write("searches.csv", b"\x1f\x8b\x08\x00" + bytes(200)),
        error=("searches.csv", "line 1"),
    ),
    Case(
        "junk-after-good-rows",
        "visits.csv",
        write("visits.csv", good_bytes("visits.csv") + PNG),
        kept=4,
        reasons=("wrong number of fields", "not valid UTF-8", "unterminated quote"),
    ),
    Case(
        "directory-as-csv",
        "visits.csv",
        lambda d: ((d / "visits.csv").unlink(), (d / "visits.csv").mkdir()),
        error=("visits.csv", "not a file"),
    ),
    # odd timestamps (each one a rejected row, the four good visits kept)
    timestamp_case("epoch-seconds", "1762077600", "unparsable visited_at"),
    timestamp_case("day-first", "02/11/2026 10:00", "unparsable visited_at"),
    timestamp_case("february-30", "2026-02-30T10:00:00", "unparsable visited_at"),
    timestamp_case("hour-24", f"{DAY}T24:00:00", "unparsable visited_at"),
    timestamp_case("leap-second", f"{DAY}T23:59:60", "unparsable visited_at"),
    timestamp_case("year-9999", "9999-12-31T23:59:59", "outside the event partitions"),
    timestamp_case("before-2015", "1999-01-01T00:00:00", "outside the event partitions"),
]

assert len(CASES) >= 30


def summary(stdout: str) -> dict[str, tuple[int, int, int]]:
    """The import summary's table: file -> (read, imported, rejected)."""
    table = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"\s+(\S+\.csv)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)", line)
        if match:
            table[match[1]] = tuple(int(match[i].replace(",", "")) for i in (2, 3, 4))
    return table


def run(pipeline: Pipeline, *argv: str) -> tuple[int, str, str]:
    try:
        return pipeline.cli(*argv)
    except Exception as error:  # what the installed script would print as a traceback
        pytest.fail(f"persona {' '.join(map(str, argv))} raised {type(error).__name__}: {error}")


def one_error_line(code: int, err: str, words: tuple[str, ...]) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, err
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("persona: error:")]
    assert len(errors) == 1, err
    for word in words:
        assert word.lower() in errors[0].lower(), f"{word!r} not in {errors[0]!r}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_malformed_import_is_rejected_rows_or_one_error_line(tmp_path, case):
    source = tmp_path / "import"
    source.mkdir()
    for name in GOOD:
        (source / name).write_bytes(good_bytes(name))
    case.spoil(source)
    pipeline = Pipeline(tmp_path / "home")
    code, out, err = run(pipeline, "import", "--land-only", source)
    assert "Traceback" not in out + err, err
    if case.error:
        one_error_line(code, err, case.error)
        assert not (pipeline.home / "landing").exists() or not any((pipeline.home / "landing").rglob("*.parquet"))
        return
    assert code == 0, err
    counts = summary(out)
    _read, imported, rejected = counts[case.file]
    assert imported == case.kept, out
    for name in set(GOOD) - {case.file}:
        assert counts[name][1] == len(GOOD[name]), out  # the other files are untouched
    if case.reasons:
        assert rejected >= 1, out
        _code, listed, _err = run(pipeline, "rejects")
        reasons = [line for line in listed.splitlines() if f'"{case.file}"' in line]
        assert reasons and all(any(reason in line for reason in case.reasons) for line in reasons), listed
        # a rejected row is kept in part when huge: every store's column holds it
        assert all(len(json.loads(line)["raw"]) < MAX_REJECT_TEXT + 100 for line in reasons)
    else:
        assert rejected == 0, out


COMMAND_CASES = [
    ("dagster-home-missing", ("materialize",), ("DAGSTER_HOME=", "not a directory")),
    ("query-before-any-import", ("query", '{"size": 5}'), ("persona materialize",)),
    ("export-before-any-build", ("export", "out.jsonl"), ("persona materialize",)),
    ("materialize-before-any-import", ("materialize",), ("persona import",)),
    ("backfill-before-any-import", ("backfill", "2026-11-01", "2026-11-02"), ("persona import",)),
    ("backfill-bad-date", ("backfill", "2026-13-01", "2026-11-02"), ("YYYY-MM-DD",)),
    ("import-missing-directory", ("import", "no/such/dir"), ("no/such/dir", "not a directory")),
    ("query-not-json", ("query", "{size: 5"), ("JSON",)),
    ("import-a-file", ("import", "/etc/hostname"), ("/etc/hostname", "not a directory")),
]


@pytest.mark.parametrize("argv, words", [case[1:] for case in COMMAND_CASES], ids=[case[0] for case in COMMAND_CASES])
def test_a_command_in_a_state_it_cannot_serve_is_one_error_line(tmp_path, argv, words):
    pipeline = Pipeline(tmp_path / "home")
    if "DAGSTER_HOME=" in words:  # imported, then DAGSTER_HOME names a folder that is not there
        source = tmp_path / "import"
        source.mkdir()
        for name in GOOD:
            (source / name).write_bytes(good_bytes(name))
        pipeline.check("import", "--land-only", source)
        pipeline.extra_env["DAGSTER_HOME"] = str(tmp_path / "no-such-folder")
    code, out, err = run(pipeline, *argv)
    one_error_line(code, err, words)
    assert out == ""
