"""Refresh of flagged users: recompute just them against the current vocabulary and upsert them into the
live index (the legacy ``calculateUserPersona`` + ``pushPersonaData`` loop, done right).

Flags move 1 → 2 (personas stored) → 0 (searchable) only where ``change_seq`` is still the one read
before any event: a user who gets new events meanwhile ends at 1. A failure leaves 1 or 2 behind,
which the sensor picks up again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from persona_assets.assets.reference import load_pincode_tiers
from persona_assets.compute import affinities, persona_store
from persona_assets.compute.duck import DuckDBLimits, connect
from persona_assets.resources import EventStoreResource
from persona_assets.stores import relational
from persona_assets.stores.changes import CALCULATED, NEEDS_CALCULATION, SEARCHABLE, advance_flags, snapshot_flags
from persona_assets.stores.persona_stream import persona_batches
from persona_assets.stores.search_backend import SearchBackend


@dataclass
class RefreshReport:
    users: int
    calculated: int = 0
    searchable: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def as_metadata(self) -> dict[str, int | float]:
        return {
            "users": self.users,
            "flags_1_to_2": self.calculated,
            "flags_2_to_0": self.searchable,
            "failed_documents": len(self.failed),
            "seconds": round(self.seconds, 3),
        }


def refresh_users(
    ext_ids: list[str],
    engine: Engine,
    event_store: EventStoreResource,
    backend: SearchBackend,
    limits: DuckDBLimits | None = None,
) -> RefreshReport:
    """Recompute ``ext_ids`` from their events and publish them into the live index."""
    started = time.perf_counter()
    report = RefreshReport(users=len(ext_ids))
    if not ext_ids:
        return report
    vocabulary = persona_store.current_vocabulary(engine)
    if vocabulary.empty and backend.document_count() == 0:
        raise RuntimeError("no vocabulary yet: materialise the full rebuild once before refreshing users")
    snapshot = snapshot_flags(engine, ext_ids)

    con = connect(limits)
    affinities.register_events(con, event_store.store, only_users=ext_ids)
    affinities.register_reference(
        con,
        relational.read_frame(engine, relational.products),
        relational.read_frame(engine, relational.categories),
        load_pincode_tiers(event_store),
    )
    affinities.compute_raw_affinities(con)
    affinities.compute_personas(con, vocabulary)
    present = [row[0] for row in con.execute("SELECT ext_id FROM users").fetchall()]
    persona_store.write_personas(engine, con, only_users=ext_ids)
    persona_store.write_activity(engine, con, only_users=ext_ids)
    report.calculated = advance_flags(engine, snapshot, [NEEDS_CALCULATION], CALCULATED)

    # Users with no events left (a re-imported day removed them) have no persona any more.
    removed = sorted(set(ext_ids) - set(present))
    report.failed = backend.upsert(persona_batches(con, "persona_users", "persona_affinity"), removed=removed).failed
    indexed = snapshot[~snapshot["ext_id"].isin(list(report.failed))]
    report.searchable = advance_flags(engine, indexed, [CALCULATED], SEARCHABLE)
    report.seconds = time.perf_counter() - started
    return report


__all__ = ["RefreshReport", "refresh_users"]
