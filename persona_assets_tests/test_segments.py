"""Saved segments (issue 10, item 1): the definition's rules, its storage, ``persona segment`` and ``/segments``.

The definition tests are pure. The store, command-line and HTTP tests are contract tests: they run on the
session's backend pair (SQLite, or MariaDB in the production pass), on real stores, over real HTTP.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from conftest import Pipeline, fresh_engine
from test_api import Http, assert_names_field, serving

from persona_assets.api import MAX_BODY_BYTES, create_app
from persona_assets.audiences import (
    MAX_TOP,
    SavedSegment,
    parse_named_definition,
    parse_segment_definition,
    query_to_json,
)
from persona_assets.query.request import InvalidRequest, SegmentQuery, parse_segment_request
from persona_assets.stores import audience_tables, relational
from persona_assets.stores.segments import (
    SegmentExists,
    SegmentNotFound,
    SegmentUnreadable,
    create_segment,
    create_tables,
    delete_segment,
    get_segment,
    list_segments,
    replace_segment,
)

contract = pytest.mark.contract


def definition(name: str = "men-tier1-boat", membership: dict | None = None, **query: object) -> dict:
    return {"name": name, "query": query, "membership": {"top": 5000} if membership is None else membership}


def refused(payload: object) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        parse_segment_definition(payload)
    return raised.value


# --------------------------------------------------------------------------- the definition (pure)


def test_a_definition_is_kept_in_its_canonical_form():
    segment = parse_segment_definition(
        {
            "name": "men-tier1-boat",
            "query": {"gender": " Male ", "cityTier": "tier 1", "brand": " boAt ", "level1Cat": 1, "level3Cat": "100"},
            "membership": {"top": " 5000 "},
        }
    )
    assert segment.to_json() == {
        "name": "men-tier1-boat",
        "query": {"gender": "men", "cityTier": "Tier1", "brand": "boat", "level3Cat": 100},
        "membership": {"top": 5000},
    }
    assert (segment.top, segment.min_score, segment.query.size, segment.query.offset) == (5000, None, 0, 0)


def test_an_empty_query_and_nulls_are_allowed():
    segment = parse_segment_definition(
        {"name": "everyone", "query": {"gender": None, "level2Cat": -1}, "membership": {"minScore": 0.35, "top": None}}
    )
    assert segment.query == SegmentQuery(size=0)
    assert segment.to_json() == {"name": "everyone", "query": {}, "membership": {"minScore": 0.35}}


@pytest.mark.parametrize(
    "payload",
    [
        definition(),
        definition("a", {"minScore": 0}),
        definition("0_-z", {"minScore": 1.5}, genericName="T-Shirt", level2Cat="10"),
        definition("x" * 63, {"top": 1}, gender="women", cityTier=3, brand="नाइके 🙂", level1Cat=10**30),
        definition("deep", {"top": MAX_TOP}, level1Cat=1, level2Cat=-1, level3Cat="-7"),
    ],
)
def test_the_canonical_form_reads_back_as_the_same_segment(payload):
    segment = parse_segment_definition(payload)
    canonical = segment.to_json()
    assert parse_segment_definition(canonical) == segment
    assert parse_segment_definition(json.loads(json.dumps(canonical))).to_json() == canonical


@pytest.mark.parametrize(
    "request_",
    [
        {},
        {"gender": "F", "cityTier": "_2"},
        {"brand": " Puma ", "genericName": "SHOES", "level1Cat": 1, "level2Cat": "10"},
        {"level3Cat": -5},
        {"level1Cat": "-" + "9" * 40},
    ],
)
def test_a_segment_query_round_trips_through_its_json(request_):
    query = parse_segment_request(request_)
    assert parse_segment_request(query_to_json(query)) == query


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        # the definition as a whole
        (None, "request"),
        ([definition()], "request"),
        ("men-tier1-boat", "request"),
        ({**definition(), "colour": "red"}, "colour"),
        ({**definition(), "createdAt": "2026-01-01T00:00:00+00:00"}, "createdAt"),
        ({"query": {}, "membership": {"top": 1}}, "name"),
        ({"name": "a", "membership": {"top": 1}}, "query"),
        ({"name": "a", "query": {}, "membership": None}, "membership"),
        # name: exactly [a-z0-9][a-z0-9_-]{0,62}, nothing trimmed
        (definition("Men-Tier1"), "name"),
        (definition(" a"), "name"),
        (definition("a "), "name"),
        (definition("a\n"), "name"),
        (definition(""), "name"),
        (definition("-a"), "name"),
        (definition("_a"), "name"),
        (definition("a.b"), "name"),
        (definition("a/b"), "name"),
        (definition("é"), "name"),
        (definition("x" * 64), "name"),
        ({**definition(), "name": 5}, "name"),
        # query
        ({**definition(), "query": []}, "query"),
        ({**definition(), "query": "gender=men"}, "query"),
        (definition(size=5), "query.size"),
        (definition(size=None), "query.size"),
        (definition(**{"from": 0}), "query.from"),
        (definition(colour="red"), "query.colour"),
        (definition(Gender="men"), "query.Gender"),
        (definition(gender="robot"), "query.gender"),
        (definition(cityTier="Tier4"), "query.cityTier"),
        (definition(brand=""), "query.brand"),
        (definition(genericName=5), "query.genericName"),
        (definition(level2Cat=1.5), "query.level2Cat"),
        (definition(level1Cat=True), "query.level1Cat"),
        # membership
        (definition(membership=[{"top": 5}]), "membership"),
        (definition(membership={"top": 5, "minScore": 0.5}), "membership"),
        (definition(membership={"top": None, "minScore": None}), "membership"),
        (definition(membership={"count": 5}), "membership.count"),
        (definition(membership={"top": 5, "size": 5}), "membership.size"),
    ],
)
def test_an_invalid_definition_names_its_field(payload, field):
    error = refused(payload)
    assert error.field == field
    assert str(error).startswith(f"{field}: ")


def test_an_empty_membership_says_which_rules_there_are():
    error = refused(definition(membership={}))
    assert error.field == "membership" and "top" in error.message and "minScore" in error.message


def test_size_and_from_are_refused_saying_membership_sets_how_many():
    assert "membership sets how many" in refused(definition(size=20)).message


@pytest.mark.parametrize("top", [1, 2, MAX_TOP, "1", f" {MAX_TOP} "])
def test_top_takes_1_to_a_million(top):
    assert parse_segment_definition(definition(membership={"top": top})).top == int(top)


@pytest.mark.parametrize("top", [0, -1, MAX_TOP + 1, "0", "1000001", 5.0, 1e3, True, False, "5.0", "five", [5], {}])
def test_top_outside_1_to_a_million_or_not_an_integer_is_refused(top):
    error = refused(definition(membership={"top": top}))
    assert error.field == "membership.top"


def test_top_out_of_range_says_the_range():
    assert "between 1 and 1,000,000, got 1000001" in refused(definition(membership={"top": MAX_TOP + 1})).message


@pytest.mark.parametrize(("score", "stored"), [(0, 0.0), (0.0, 0.0), (-0.0, 0.0), (0.35, 0.35), (1, 1.0), (7.5, 7.5)])
def test_min_score_takes_a_finite_number_of_0_or_more(score, stored):
    segment = parse_segment_definition(definition(membership={"minScore": score}))
    assert segment.min_score == stored and str(segment.min_score) == str(stored)  # -0.0 is kept as 0.0


@pytest.mark.parametrize(
    "score", [float("nan"), float("inf"), float("-inf"), -0.1, -1, True, False, "0.35", "1", [0.3], {}, 10**400]
)
def test_min_score_that_is_not_a_finite_number_of_0_or_more_is_refused(score):
    assert refused(definition(membership={"minScore": score})).field == "membership.minScore"


def test_a_value_nested_too_deeply_to_show_is_still_refused_naming_its_field():
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    assert refused(definition(gender=nested)).field == "query"
    assert refused(definition(membership={"top": nested})).field == "membership.top"


def test_a_definition_saved_under_a_name_may_leave_it_out_or_repeat_it():
    body = {"query": {"brand": "boat"}, "membership": {"top": 5}}
    assert parse_named_definition(body, "boat").name == "boat"
    assert parse_named_definition({**body, "name": "boat"}, "boat").name == "boat"
    assert parse_named_definition({**body, "name": None}, "boat").name == "boat"
    for payload, name in [({**body, "name": "other"}, "boat"), ({**body, "name": "Boat"}, "boat"), (body, "Boat")]:
        with pytest.raises(InvalidRequest) as raised:
            parse_named_definition(payload, name)
        assert raised.value.field == "name"


def test_a_saved_segment_has_exactly_one_membership_rule():
    for top, min_score in [(None, None), (5, 0.5)]:
        with pytest.raises(ValueError, match="exactly one"):
            SavedSegment("a", SegmentQuery(size=0), top=top, min_score=min_score)


# --------------------------------------------------------------------------- the store (both pairs)

T0 = datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=UTC)
T1 = T0 + timedelta(hours=5, microseconds=1)


@pytest.fixture
def engine(persona_home):
    engine = fresh_engine(persona_home)
    relational.create_schema(engine)
    return engine


def segment(name: str = "men-tier1-boat", membership: dict | None = None, **query: object) -> SavedSegment:
    return parse_segment_definition(definition(name, membership, **query))


def insert_row(engine, name: str, stored_definition: str) -> None:
    """A row written past the validator (by hand, or under other rules)."""
    stamp = T0.isoformat(timespec="microseconds")
    with engine.begin() as conn:
        conn.execute(
            sa.insert(audience_tables.saved_segments).values(
                name=name, definition=stored_definition, created_at=stamp, updated_at=stamp
            )
        )


@contract
def test_a_created_segment_reads_back_exactly(engine):
    saved = segment(brand="नाइके 🙂 \u0000 'x'\"", level1Cat=10**30)
    created = create_segment(engine, saved, at=T0)
    stored = get_segment(engine, saved.name)
    assert stored == created
    assert (stored.segment, stored.created_at, stored.updated_at) == (saved, T0, T0)
    assert stored.to_json() == {
        **saved.to_json(),
        "createdAt": "2026-12-01T09:30:00.123456+00:00",
        "updatedAt": "2026-12-01T09:30:00.123456+00:00",
    }


@contract
def test_a_taken_name_is_refused_and_the_saved_segment_kept(engine):
    create_segment(engine, segment(membership={"top": 5}), at=T0)
    with pytest.raises(SegmentExists, match="men-tier1-boat"):
        create_segment(engine, segment(membership={"top": 6}), at=T1)
    assert get_segment(engine, "men-tier1-boat").segment.top == 5


@contract
def test_creating_one_name_at_once_lets_exactly_one_through(engine):
    outcomes: list[str] = []
    start = threading.Barrier(6)

    def create(top: int) -> None:
        start.wait()
        try:
            create_segment(engine, segment("race", {"top": top}))
            outcomes.append("created")
        except SegmentExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=create, args=(top,)) for top in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["created"] + ["exists"] * 5


@contract
def test_replace_keeps_created_at_and_creates_when_missing(engine):
    stored, created = replace_segment(engine, segment(membership={"top": 5}), at=T0)
    assert created and (stored.created_at, stored.updated_at) == (T0, T0)
    stored, created = replace_segment(engine, segment(membership={"minScore": 0.25}, gender="women"), at=T1)
    assert not created and (stored.created_at, stored.updated_at) == (T0, T1)
    read = get_segment(engine, "men-tier1-boat")
    assert read == stored
    assert read.segment.to_json()["query"] == {"gender": "women"} and read.segment.min_score == 0.25


@contract
def test_list_by_name_and_delete(engine):
    for name in ("b", "a_1", "a0", "a-1"):
        create_segment(engine, segment(name))
    assert [stored.segment.name for stored in list_segments(engine)] == ["a-1", "a0", "a_1", "b"]  # code points
    delete_segment(engine, "a0")
    assert [stored.segment.name for stored in list_segments(engine)] == ["a-1", "a_1", "b"]
    with pytest.raises(SegmentNotFound, match="a0"):
        get_segment(engine, "a0")
    with pytest.raises(SegmentNotFound, match="a0"):
        delete_segment(engine, "a0")


@contract
@pytest.mark.parametrize(
    ("stored_definition", "reason"),
    [
        ("{not json", "Expecting property name"),
        ('{"query": {"cityTier": "Tier9"}, "membership": {"top": 5}}', "query.cityTier"),
        ('{"query": {}, "membership": {"top": 5}, "name": "other"}', "name"),
        ('["query"]', "request"),
    ],
)
def test_a_row_that_no_longer_reads_is_named_and_can_be_replaced_or_deleted(engine, stored_definition, reason):
    insert_row(engine, "broken", stored_definition)
    create_segment(engine, segment("fine"))
    for read in (lambda: get_segment(engine, "broken"), lambda: list_segments(engine)):
        with pytest.raises(SegmentUnreadable) as raised:
            read()
        assert raised.value.name == "broken" and reason in str(raised.value)
    replace_segment(engine, segment("broken"))
    assert [stored.segment.name for stored in list_segments(engine)] == ["broken", "fine"]
    delete_segment(engine, "broken")


@contract
def test_create_table_makes_the_table_on_an_empty_store_and_is_idempotent(persona_home):
    engine = fresh_engine(persona_home)
    create_tables(engine)
    create_tables(engine)
    create_segment(engine, segment())
    relational.create_schema(engine)  # and create_schema leaves it as it is
    assert [stored.segment.name for stored in list_segments(engine)] == ["men-tier1-boat"]


def test_a_time_without_its_zone_is_refused(tmp_path):
    engine = relational.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    relational.create_schema(engine)
    with pytest.raises(ValueError, match="time zone"):
        create_segment(engine, segment(), at=datetime(2026, 1, 1))


# --------------------------------------------------------------------------- persona segment (both pairs)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, no traceback
    return lines[0]


@contract
def test_cli_save_show_list_replace_delete(tmp_path):
    home = Pipeline(tmp_path)
    body = json.dumps({"query": {"gender": "Male", "brand": " boAt "}, "membership": {"top": "5000"}})
    code, out, err = home.cli("segment", "save", "men-boat", "--definition", body)
    assert code == 0, err
    saved = json.loads(out)
    assert {key: saved[key] for key in ("name", "query", "membership")} == {
        "name": "men-boat",
        "query": {"gender": "men", "brand": "boat"},
        "membership": {"top": 5000},
    }
    assert saved["createdAt"] == saved["updatedAt"] and saved["createdAt"].endswith("+00:00")
    assert json.loads(home.check("segment", "show", "men-boat")) == saved
    code, out, err = home.cli("segment", "save", "men-boat", "--definition", body)
    assert code == 1 and out == ""
    assert "already exists" in one_line(err) and "--replace" in err
    (tmp_path / "definition.json").write_text('{"name": "men-boat", "query": {}, "membership": {"minScore": 0.3}}')
    replaced = json.loads(
        home.check("segment", "save", "men-boat", "--replace", "--definition", f"@{tmp_path / 'definition.json'}")
    )
    assert replaced["createdAt"] == saved["createdAt"] and replaced["membership"] == {"minScore": 0.3}
    home.check("segment", "save", "a-first", "--definition", '{"query": {}, "membership": {"top": 1}}')
    listed = [json.loads(line) for line in home.check("segment", "list").splitlines()]
    assert [item["name"] for item in listed] == ["a-first", "men-boat"] and listed[1] == replaced
    code, _, err = home.cli("segment", "delete", "men-boat")
    assert code == 0 and "deleted" in err
    for action in ("show", "delete"):
        code, out, err = home.cli("segment", action, "men-boat")
        assert code == 1 and out == "" and "no saved segment named 'men-boat'" in one_line(err)


@pytest.fixture
def cli_home(tmp_path, monkeypatch) -> Pipeline:
    monkeypatch.chdir(tmp_path)  # for @FILE
    return Pipeline(tmp_path)


@contract
@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["save", "Men", "--definition", '{"query": {}, "membership": {"top": 1}}'], "name"),
        (["save", "men", "--definition", '{"name": "women", "query": {}, "membership": {"top": 1}}'], "name"),
        (
            ["save", "men", "--definition", '{"query": {"cityTier": "gold"}, "membership": {"top": 1}}'],
            "query.cityTier",
        ),
        (["save", "men", "--definition", '{"query": {"size": 10}, "membership": {"top": 1}}'], "query.size"),
        (["save", "men", "--definition", '{"query": {}, "membership": {"top": 0}}'], "membership.top"),
        (["save", "men", "--definition", '{"query": {}, "membership": {"minScore": NaN}}'], "membership.minScore"),
        (["save", "men", "--definition", '{"query": {}}'], "membership"),
        (["save", "men", "--definition", "{query: {}}"], "definition"),
        (["save", "men", "--definition", "@no-such-file.json"], "definition"),
        (["show", "MEN"], "name"),
        (["delete", "men/women"], "name"),
    ],
)
def test_cli_invalid_input_exits_2_naming_the_field(cli_home, argv, field):
    code, out, err = cli_home.cli("segment", *argv)
    assert code == 2 and out == ""
    assert one_line(err).startswith(f"persona: error: segment {argv[0]}: {field}: ")


@contract
def test_cli_list_of_nothing_and_a_row_that_no_longer_reads(cli_home):
    code, out, err = cli_home.cli("segment", "list")
    assert (code, out, err.strip()) == (0, "", "no saved segments")
    insert_row(cli_home.engine, "broken", '{"query": {"cityTier": 9}, "membership": {"top": 5}}')
    for argv in (["show", "broken"], ["list"]):
        code, out, err = cli_home.cli("segment", *argv)
        assert code == 1 and out == ""
        assert "saved segment 'broken' is stored but does not read" in one_line(err) and "query.cityTier" in err
    cli_home.check("segment", "delete", "broken")


def closed_port() -> int:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contract
def test_cli_with_the_store_unreachable_is_one_error_line(tmp_path):
    down = Pipeline(tmp_path, extra_env={"PERSONA_DB_URL": f"mysql+pymysql://p:s3cret@127.0.0.1:{closed_port()}/p"})
    code, out, err = down.cli("segment", "list")
    assert code == 1 and out == ""
    assert "the relational store cannot be reached" in one_line(err) and "s3cret" not in err


# --------------------------------------------------------------------------- /segments over HTTP (both pairs)


@pytest.fixture
def fresh_api(tmp_path) -> Iterator[tuple[Pipeline, Http]]:
    home = Pipeline(tmp_path)
    with home.env():
        app = create_app(home.settings)
    with serving(app) as http_:
        yield home, http_


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[Http]:
    """A service for refusals: nothing it is sent is saved."""
    home = Pipeline(tmp_path_factory.mktemp("segments-api"))
    with home.env():
        app = create_app(home.settings)
    with serving(app) as http_:
        yield http_


def send(http_: Http, method: str, path: str, body: object = None):
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return http_.request(method, path, raw, "application/json" if raw is not None else None)


@contract
def test_http_create_read_replace_delete(fresh_api):
    home, http_ = fresh_api
    assert send(http_, "GET", "/segments").json == {"segments": []}
    created = send(http_, "POST", "/segments", definition(gender="Male", cityTier="tier 1", brand=" boAt "))
    assert created.status == 201, created.text
    assert created.headers["location"] == "/segments/men-tier1-boat"
    body = created.json
    assert body["query"] == {"gender": "men", "cityTier": "Tier1", "brand": "boat"}
    assert body["membership"] == {"top": 5000} and body["createdAt"] == body["updatedAt"]
    assert send(http_, "GET", "/segments/men-tier1-boat").json == body
    assert json.loads(home.check("segment", "show", "men-tier1-boat")) == body  # one store, two doors
    taken = send(http_, "POST", "/segments", definition(membership={"top": 1}))
    assert taken.status == 409 and "men-tier1-boat" in taken.json["detail"]
    replaced = send(http_, "PUT", "/segments/men-tier1-boat", {"query": {}, "membership": {"minScore": 0.5}})
    assert replaced.status == 200, replaced.text
    assert replaced.json["createdAt"] == body["createdAt"] and replaced.json["updatedAt"] > body["updatedAt"]
    assert replaced.json["membership"] == {"minScore": 0.5} and replaced.json["query"] == {}
    put_new = send(http_, "PUT", "/segments/all", {"name": "all", "query": {}, "membership": {"top": 10}})
    assert put_new.status == 201 and put_new.headers["location"] == "/segments/all"
    listed = send(http_, "GET", "/segments").json["segments"]
    assert listed == [put_new.json, replaced.json]
    deleted = send(http_, "DELETE", "/segments/men-tier1-boat")
    assert (deleted.status, deleted.text) == (204, "")
    for method in ("GET", "DELETE"):
        missing = send(http_, method, "/segments/men-tier1-boat")
        assert missing.status == 404 and "men-tier1-boat" in missing.json["detail"]


@contract
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "request"),
        (b"{", "request"),
        (b"[]", "request"),
        ({"query": {}, "membership": {"top": 1}}, "name"),
        (definition("Men"), "name"),
        ({**definition(), "createdAt": "now"}, "createdAt"),
        ({**definition(), "colour": "red"}, "colour"),
        (definition(cityTier="Tier4"), "query.cityTier"),
        (definition(size=10), "query.size"),
        (definition(**{"from": 10}), "query.from"),
        (definition(membership={"top": 0}), "membership.top"),
        (definition(membership={"top": 1000001}), "membership.top"),
        (definition(membership={"minScore": "0.3"}), "membership.minScore"),
        (b'{"name": "a", "query": {}, "membership": {"minScore": Infinity}}', "membership.minScore"),
        (definition(membership={"top": 1, "minScore": 0.3}), "membership"),
        (definition(membership={"tops": 1}), "membership.tops"),
    ],
)
def test_http_post_of_an_invalid_definition_is_422_naming_the_field(api, body, field):
    assert_names_field(send(api, "POST", "/segments", body), field)


@contract
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/segments/Men", None),
        ("GET", "/segments/a%20b", None),
        ("GET", "/segments/" + "x" * 64, None),
        ("DELETE", "/segments/-a", None),
        ("PUT", "/segments/UPPER", b"not even JSON"),  # the path is judged first
        ("PUT", "/segments/men", {"name": "women", "query": {}, "membership": {"top": 1}}),
    ],
)
def test_http_an_invalid_name_is_422_naming_name(api, method, path, body):
    assert_names_field(send(api, method, path, body), "name")


@contract
def test_http_an_oversized_definition_is_413(api):
    answer = send(api, "POST", "/segments", b'{"name": "' + b"x" * MAX_BODY_BYTES + b'"}')
    assert answer.status == 413 and answer.json["field"] == "request"


@contract
def test_http_a_row_that_no_longer_reads_is_a_500_naming_it(fresh_api):
    home, http_ = fresh_api
    assert send(http_, "GET", "/segments").status == 200  # the service creates the table on first use
    insert_row(home.engine, "broken", "{not json")
    for path in ("/segments/broken", "/segments"):
        answer = send(http_, "GET", path)
        assert answer.status == 500 and "saved segment 'broken' is stored but does not read" in answer.json["detail"]
    assert send(http_, "DELETE", "/segments/broken").status == 204


@contract
def test_http_with_the_store_unreachable_is_503_and_refusals_still_422(tmp_path):
    home = Pipeline(tmp_path)
    with home.env():
        db_url = f"mysql+pymysql://p:s3cret@127.0.0.1:{closed_port()}/p"
        app = create_app(dataclasses.replace(home.settings, db_url=db_url, opensearch_url=None))
    with serving(app) as http_:
        for method, path, body in [
            ("GET", "/segments", None),
            ("POST", "/segments", definition()),
            ("GET", "/segments/a", None),
            ("PUT", "/segments/a", {"query": {}, "membership": {"top": 1}}),
            ("DELETE", "/segments/a", None),
        ]:
            answer = send(http_, method, path, body)
            assert answer.status == 503, (method, path, answer.text)
            assert "the relational store cannot be reached" in answer.json["detail"] and "s3cret" not in answer.text
        assert_names_field(send(http_, "POST", "/segments", definition(size=1)), "query.size")


@contract
def test_http_segments_need_the_token_when_one_is_set(tmp_path):
    home = Pipeline(tmp_path)
    token = "s3cret-token-0123456789abcdef"
    with home.env():
        app = create_app(dataclasses.replace(home.settings, api_token=token))
    with serving(app) as http_:
        assert http_.get("/segments").status == 401
        assert http_.request("GET", "/segments", headers={"Authorization": f"Bearer {token}"}).status == 200


@contract
def test_the_openapi_document_describes_the_segment_routes(api):
    from openapi_spec_validator import validate

    document = api.get("/openapi.json").json
    validate(document)
    paths = document["paths"]
    assert set(paths["/segments"]) == {"get", "post"} and set(paths["/segments/{name}"]) == {"get", "put", "delete"}
    post = paths["/segments"]["post"]
    assert {"201", "409", "413", "422", "503"} <= set(post["responses"])
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"name", "query", "membership"}
    assert set(schema["properties"]["query"]["properties"]) == {
        "gender",
        "cityTier",
        "brand",
        "genericName",
        "level1Cat",
        "level2Cat",
        "level3Cat",
    }
    assert {"200", "201", "422"} <= set(paths["/segments/{name}"]["put"]["responses"])
    assert {"200", "404", "422"} <= set(paths["/segments/{name}"]["get"]["responses"])
    assert {"204", "404", "422"} <= set(paths["/segments/{name}"]["delete"]["responses"])
    for operation in (post, *paths["/segments/{name}"].values()):
        assert operation["summary"]
