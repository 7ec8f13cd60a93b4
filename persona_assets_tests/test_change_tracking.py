"""Contract section 5: ``hasChanged`` (1 = needs calculation, 2 = calculated, 0 = searchable).

The no-lost-update rule is exercised with a real write between the rebuild's steps: the rebuild is
materialised in two Dagster runs, and between them a user is flagged exactly as an import flags it
(``flag_users_changed``). That user must end at 1; everyone else at 0.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from conftest import Pipeline, fresh_engine, write_import_dir
from dagster import AssetSelection

from persona_assets.jobs import REBUILD
from persona_assets.stores.changes import (
    advance_flags,
    drop_rebuild_snapshots,
    flag_counts,
    flag_users_changed,
    forget_in_rebuild_snapshot,
    reflag_changed_since,
    snapshot_flags,
    snapshot_flags_for_rebuild,
)

pytestmark = pytest.mark.contract

CATEGORIES = [("1", "All", "")]
PRODUCTS = [("P1", "flipkart", "t", "Nike", "Shoes", "men", "1", "", "", "1")]
USERS = ("x", "y", "z")
VISITS = [(user, "P1", "560001", "2024-03-01T10:00:00") for user in USERS]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    pipeline = Pipeline(tmp_path_factory.mktemp("change-tracking"))
    pipeline.import_dir(
        write_import_dir(pipeline.root / "import-1", products=PRODUCTS, categories=CATEGORIES, visits=VISITS)
    )
    return pipeline


def test_import_flags_the_users_it_touches(imported):
    assert imported.flags() == {"x": 1, "y": 1, "z": 1}


def test_user_changed_while_raw_affinities_are_computed_ends_at_1(imported):
    flag_users_changed(imported.engine, USERS)  # every user needs calculation
    imported.materialize_assets(AssetSelection.assets("user_raw_affinities"))
    assert imported.flags() == {"x": 1, "y": 1, "z": 1}  # not advanced yet
    # An import lands new events of y (and of a new user) while the calculation runs.
    flag_users_changed(imported.engine, ["y", "newcomer"])
    imported.materialize_assets(REBUILD - AssetSelection.assets("user_raw_affinities"))
    assert imported.flags() == {"x": 0, "y": 1, "z": 0, "newcomer": 1}


def test_user_changed_after_personas_before_index_ends_at_1(imported):
    flag_users_changed(imported.engine, USERS)
    imported.materialize_assets(AssetSelection.assets("user_raw_affinities", "attribute_vocabulary", "user_personas"))
    flags = imported.flags()
    assert {u: flags[u] for u in USERS} == {"x": 2, "y": 2, "z": 2}
    flag_users_changed(imported.engine, ["z"])  # new events for z while the index is being built
    imported.materialize_assets(AssetSelection.assets("persona_index"))
    flags = imported.flags()
    assert {u: flags[u] for u in USERS} == {"x": 0, "y": 0, "z": 1}


def test_a_later_full_rebuild_clears_every_flag(imported):
    imported.materialize()
    assert set(imported.flags().values()) == {0}


def test_a_new_import_flags_only_the_users_it_touches_then_materialise_clears_them(imported):
    imported.materialize()
    assert set(imported.flags().values()) == {0}
    imported.import_dir(
        write_import_dir(
            imported.root / "import-2",
            products=PRODUCTS,
            categories=CATEGORIES,
            visits=[("x", "P1", "560001", "2024-03-02T10:00:00")],
            searches=[("w", "nike", "2024-03-02")],
        )
    )
    flags = imported.flags()
    assert {u: flags[u] for u in (*USERS, "w")} == {"x": 1, "y": 0, "z": 0, "w": 1}
    imported.materialize()
    assert set(imported.flags().values()) == {0}
    assert set(imported.export()) == {"x", "y", "z", "w"}


# --------------------------------------------------------------------------- the store functions directly


@pytest.mark.parametrize("kind", ["refresh", "rebuild"])
def test_advance_flags_skips_users_whose_change_seq_moved(persona_home, kind):
    from persona_assets.stores import relational

    engine = fresh_engine(persona_home)
    relational.create_schema(engine)
    flag_users_changed(engine, ["a", "b", "c"])

    def take_snapshot(build: str):
        if kind == "refresh":  # a refresh's frame of its users
            snapshot = snapshot_flags(engine, ["a", "b", "c"])
            assert sorted(snapshot["ext_id"]) == ["a", "b", "c"]
            return snapshot
        snapshot = snapshot_flags_for_rebuild(engine, build)  # a full rebuild's, kept in the store
        assert snapshot_rows(engine, build) == 3
        return snapshot

    snapshot = take_snapshot("first")
    flag_users_changed(engine, ["b"])  # changed after the snapshot
    assert advance_flags(engine, snapshot, [1], 2) == 2
    assert flag_counts(engine) == {1: 1, 2: 2}
    assert advance_flags(engine, snapshot, [2], 0) == 2
    assert flag_counts(engine) == {0: 2, 1: 1}
    # A second snapshot sees b's new version and may advance it.
    later = take_snapshot("later")
    assert advance_flags(engine, later, [1], 2) == 1
    assert advance_flags(engine, later, [2], 0) == 1
    assert flag_counts(engine) == {0: 3}


def test_a_rebuild_reflags_users_changed_since_its_snapshot_and_skips_refused_ones(persona_home):
    from persona_assets.stores import relational

    engine = fresh_engine(persona_home)
    relational.create_schema(engine)
    flag_users_changed(engine, ["a", "b", "c"])
    snapshot = snapshot_flags_for_rebuild(engine, "build")
    assert advance_flags(engine, snapshot, [1], 2) == 3
    flag_users_changed(engine, ["b", "d"])  # b changes, d appears while the rebuild runs
    with engine.begin() as conn:  # a refresh indexes them into the build about to be replaced: d is done,
        # b is between its index write and its 2 -> 0
        for ext_id, flag in (("b", 2), ("d", 0)):
            conn.execute(
                sa.update(relational.user_persona)
                .where(relational.user_persona.c.extId == ext_id)
                .values(hasChanged=flag)
            )
    forget_in_rebuild_snapshot(engine, snapshot, ["c"])  # the index refused c
    assert advance_flags(engine, snapshot, [2], 0) == 1  # a only
    assert reflag_changed_since(engine, snapshot) == 2  # b and d back to 1
    with engine.connect() as conn:
        flags = dict(
            conn.execute(sa.select(relational.user_persona.c.extId, relational.user_persona.c.hasChanged)).all()
        )
    assert flags == {"a": 0, "b": 1, "c": 2, "d": 1}


def snapshot_rows(engine, build: str) -> int:
    from persona_assets.stores import relational

    table = relational.rebuild_flag_snapshots
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table).where(table.c.build == build)).scalar_one()


def test_two_rebuilds_keep_their_own_snapshots(persona_home):
    """A second rebuild's snapshot neither replaces the first's nor lets the first advance a user changed
    between the two (the first computed that user's old events)."""
    from persona_assets.stores import relational

    engine = fresh_engine(persona_home)
    relational.create_schema(engine)
    flag_users_changed(engine, ["a", "b"])
    first = snapshot_flags_for_rebuild(engine, "first")
    flag_users_changed(engine, ["b"])  # b's new events land between the two rebuilds' snapshots
    second = snapshot_flags_for_rebuild(engine, "second")
    assert (snapshot_rows(engine, "first"), snapshot_rows(engine, "second")) == (2, 2)
    assert advance_flags(engine, first, [1], 2) == 1  # a; b's events after `first` keep it at 1
    assert advance_flags(engine, first, [2], 0) == 1
    assert reflag_changed_since(engine, first) == 0  # b is at 1 already
    assert advance_flags(engine, second, [1], 2) == 1  # b, calculated by the second rebuild
    assert advance_flags(engine, second, [2], 0) == 1
    assert flag_counts(engine) == {0: 2}
    drop_rebuild_snapshots(engine, ["first"])
    assert (snapshot_rows(engine, "first"), snapshot_rows(engine, "second")) == (0, 2)
