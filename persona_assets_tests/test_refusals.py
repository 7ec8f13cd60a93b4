"""Issue 8 item 5: users whose document the index keeps refusing back off, then wait in the dead letter.

Store logic on the session's relational store (SQLite, or MariaDB in CI's production pass); the refusals
themselves come from a real OpenSearch in ``test_index_failures.py``.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from conftest import fresh_engine

from persona_assets.stores import relational
from persona_assets.stores.changes import claim_users, flag_users_changed, release_claim
from persona_assets.stores.refusals import (
    RetryPolicy,
    clear_refusals,
    dead_letter,
    now_us,
    record_refusals,
    retry_dead_letter,
)

pytestmark = pytest.mark.contract

SECOND = 1_000_000


@pytest.fixture
def engine(persona_home):
    engine = fresh_engine(persona_home)
    relational.create_schema(engine)
    flag_users_changed(engine, ["a", "b", "c"])
    return engine


def claimable(engine) -> list[str]:
    ids = claim_users(engine, "probe", 100, ttl_seconds=900)
    release_claim(engine, "probe")
    return ids


def refusal_rows(engine) -> dict[str, tuple[int, str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(relational.user_refusals)).all()
    return {r.extId: (r.failures, r.reason, r.retry_after_us) for r in rows}


def test_each_refusal_doubles_the_wait_and_the_last_one_dead_letters(engine):
    policy = RetryPolicy(max_failures=3, backoff_seconds=60)
    t0 = 1_800_000_000 * SECOND
    assert record_refusals(engine, {"a": "mapper_parsing_exception"}, policy, at_us=t0) == 0
    assert refusal_rows(engine) == {"a": (1, "mapper_parsing_exception", t0 + 60 * SECOND)}
    assert record_refusals(engine, {"a": "still refused"}, policy, at_us=t0 + 61 * SECOND) == 0
    assert refusal_rows(engine)["a"] == (2, "still refused", t0 + 181 * SECOND)  # waits 120 s now
    assert record_refusals(engine, {"a": "refused again"}, policy, at_us=t0 + 200 * SECOND) == 1
    assert refusal_rows(engine)["a"][2] == relational.INT64_MAX
    count, listed = dead_letter(engine)
    assert count == 1 and [(r.ext_id, r.failures, r.reason) for r in listed] == [("a", 3, "refused again")]


def test_the_sensor_does_not_claim_a_user_backing_off_or_dead_lettered(engine):
    policy = RetryPolicy(max_failures=2, backoff_seconds=60)
    now = now_us()
    record_refusals(engine, {"a": "refused"}, policy, at_us=now)  # waits until now + 60 s
    record_refusals(engine, {"b": "refused"}, policy, at_us=now - 61 * SECOND)  # its wait is over
    assert claimable(engine) == ["b", "c"]
    record_refusals(engine, {"b": "refused"}, policy)  # the second refusal: dead-lettered
    assert claimable(engine) == ["c"]
    assert retry_dead_letter(engine) == 1
    assert claimable(engine) == ["b", "c"]  # handed back; a is still backing off


def test_a_rebuild_forgets_the_refusals_of_everyone_it_indexed(engine):
    policy = RetryPolicy(max_failures=5, backoff_seconds=60)
    record_refusals(engine, {"a": "x", "b": "y", "c": "z"}, policy)
    assert clear_refusals(engine, keep=["b"]) == 2
    assert set(refusal_rows(engine)) == {"b"}
    assert claimable(engine) == ["a", "c"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PERSONA_REFRESH_MAX_FAILURES", "0"),
        ("PERSONA_REFRESH_MAX_FAILURES", "three"),
        ("PERSONA_REFRESH_BACKOFF_SECONDS", "-1"),
        ("PERSONA_REFRESH_BACKOFF_SECONDS", "nan"),
    ],
)
def test_the_retry_settings_are_validated(name, value):
    with pytest.raises(ValueError, match=name):
        RetryPolicy.from_env({name: value})


def test_the_retry_settings_come_from_the_environment():
    assert RetryPolicy.from_env({}) == RetryPolicy(max_failures=5, backoff_seconds=60.0)
    assert RetryPolicy.from_env(
        {"PERSONA_REFRESH_MAX_FAILURES": "2", "PERSONA_REFRESH_BACKOFF_SECONDS": "0.5"}
    ) == RetryPolicy(2, 0.5)
