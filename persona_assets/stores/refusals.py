"""Users whose document the search index keeps refusing: retried with back-off, then dead-lettered.

A refused user stays at ``hasChanged = 2`` (never searchable with a stale or missing document), so the
refresh sensor would claim them on every tick. Instead each refusal is recorded in ``user_refusals``:
the user is not claimed again before ``backoff · 2^(failures-1)`` (capped at an hour), and after
``max_failures`` refusals not at all (the dead letter) until an operator retries them
(``persona dead-letter --retry``) or a rebuild indexes them. The reason of the last refusal is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from persona_assets.stores.relational import INT64_MAX, executemany, upsert_statement, user_refusals

_IN_CHUNK = 500
MAX_REASON_CHARS = 1000
MAX_BACKOFF_SECONDS = 3600


@dataclass(frozen=True)
class RetryPolicy:
    """How refused users are retried (``PERSONA_REFRESH_MAX_FAILURES``, ``PERSONA_REFRESH_BACKOFF_SECONDS``)."""

    max_failures: int = 5
    backoff_seconds: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RetryPolicy:
        """From the variables of ``env`` (``settings.PersonaSettings.from_env`` is the one caller)."""
        failures_text = (env.get("PERSONA_REFRESH_MAX_FAILURES") or str(cls.max_failures)).strip()
        backoff_text = (env.get("PERSONA_REFRESH_BACKOFF_SECONDS") or str(cls.backoff_seconds)).strip()
        if not failures_text.isdigit() or int(failures_text) < 1:
            raise ValueError(f"PERSONA_REFRESH_MAX_FAILURES={failures_text!r}: expected a whole number >= 1")
        try:
            backoff = float(backoff_text)
        except ValueError:
            backoff = -1.0
        if not 0 <= backoff < math.inf:
            raise ValueError(f"PERSONA_REFRESH_BACKOFF_SECONDS={backoff_text!r}: expected a number of seconds >= 0")
        return cls(max_failures=int(failures_text), backoff_seconds=backoff)

    def retry_after_us(self, failures: int, now_us: int) -> int:
        """When a user refused ``failures`` times may be claimed again (INT64_MAX: never, dead-lettered)."""
        if failures >= self.max_failures:
            return INT64_MAX
        wait = min(MAX_BACKOFF_SECONDS, self.backoff_seconds * 2 ** (failures - 1))
        return now_us + int(wait * 1_000_000)


def now_us() -> int:
    return int(time.time() * 1_000_000)


def record_refusals(engine: Engine, refused: Mapping[str, str], policy: RetryPolicy, at_us: int | None = None) -> int:
    """Count one more refusal for each of ``refused`` (ext_id → reason) and set when it may be retried.
    Returns how many of them are now dead-lettered."""
    if not refused:
        return 0
    at = now_us() if at_us is None else at_us
    ids = sorted(refused)
    with engine.begin() as conn:
        before = _stored(conn)
        rows = []
        for ext_id in ids:
            failures = before.get(ext_id, 0) + 1
            reason = refused[ext_id][:MAX_REASON_CHARS]
            rows.append((ext_id, failures, reason, at, policy.retry_after_us(failures, at)))
        columns = ["extId", "failures", "reason", "last_failed_us", "retry_after_us"]
        stmt = upsert_statement(
            conn,
            user_refusals,
            {c: sa.bindparam(c) for c in columns},
            {},
            update_from_insert=columns[1:],
        )
        executemany(conn, stmt, columns, rows)
    return sum(1 for row in rows if row[4] == INT64_MAX)


def _stored(conn: sa.Connection) -> dict[str, int]:
    """Every refused user and their refusal count: the table holds only refused users, so it is read whole
    (a refresh of 10,000 users then costs no statement per 500 of them when nobody was refused)."""
    return {ext_id: int(n) for ext_id, n in conn.execute(sa.select(user_refusals.c.extId, user_refusals.c.failures))}


def clear_refusals(engine: Engine, ext_ids: Iterable[str] | None = None, *, keep: Iterable[str] = ()) -> int:
    """Forget the refusals of ``ext_ids`` (indexed at last), or of every user but ``keep`` (after a rebuild
    indexed everyone else)."""
    with engine.begin() as conn:
        stored = set(_stored(conn))
        gone = sorted((stored if ext_ids is None else stored & set(ext_ids)) - set(keep))
        for start in range(0, len(gone), _IN_CHUNK):
            chunk = gone[start : start + _IN_CHUNK]
            conn.execute(sa.delete(user_refusals).where(user_refusals.c.extId.in_(chunk)))
    return len(gone)


def waiting_condition(ext_id: sa.ColumnElement, at_us: int) -> sa.ColumnElement[bool]:
    """True for users that must not be claimed now (backing off, or dead-lettered)."""
    return (
        sa.select(user_refusals.c.extId)
        .where(user_refusals.c.extId == ext_id)
        .where(user_refusals.c.retry_after_us > sa.literal_column(str(int(at_us))))
        .exists()
    )


@dataclass(frozen=True)
class Refusal:
    ext_id: str
    failures: int
    reason: str
    last_failed_us: int


def dead_letter(engine: Engine, limit: int | None = None) -> tuple[int, list[Refusal]]:
    """(how many users are dead-lettered, the first ``limit`` of them by ext_id)."""
    dead = user_refusals.c.retry_after_us == INT64_MAX
    with engine.connect() as conn:
        count = int(conn.execute(sa.select(sa.func.count()).select_from(user_refusals).where(dead)).scalar_one())
        select = sa.select(user_refusals).where(dead).order_by(user_refusals.c.extId)
        if limit is not None:
            select = select.limit(limit)
        rows = conn.execute(select).all()
    return count, [Refusal(r.extId, int(r.failures), r.reason, int(r.last_failed_us)) for r in rows]


def retry_dead_letter(engine: Engine) -> int:
    """Give every dead-lettered user back to the refresh sensor (their refusal count starts again)."""
    with engine.begin() as conn:
        return int(
            conn.execute(sa.delete(user_refusals).where(user_refusals.c.retry_after_us == INT64_MAX)).rowcount or 0
        )
