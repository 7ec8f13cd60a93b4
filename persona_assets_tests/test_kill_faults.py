"""``persona materialize`` SIGKILLed at 22 points spread over every step of the rebuild (issue 8, item 3).

A home is built, then new events land for some shoppers and the rebuild that would take them in is
killed again and again, each time at another point: at the start of each rebuild step and at a quarter,
half and three quarters of the time that step took in a clean run, in a check step and in the
reference run before the rebuild. After every kill the live index answers a segment query with the
ranking of the previous build or, once a kill came after the swap, of the new one, never anything in
between. One more ``persona materialize`` then converges to exactly what a home that was never
killed holds: the same export, every flag 0, no run left *Started*, one build's files on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import Pipeline, shop_with_change

pytestmark = pytest.mark.contract

REBUILD_STEPS = ("user_raw_affinities", "user_activity", "attribute_vocabulary", "user_personas", "persona_index")
FRACTIONS = (0.0, 0.25, 0.5, 0.75)
KILL_POINTS = [
    ("reference", "product_catalog", 0.0),
    *[("rebuild", step, fraction) for step in REBUILD_STEPS for fraction in FRACTIONS],
    ("rebuild", "user_personas_maps_sum_to_one", 0.5),
]


def step_windows(pipeline: Pipeline, run_id: str) -> dict[str, tuple[float, float]]:
    """Step key -> (start, end) timestamps of a finished run."""
    from dagster import DagsterEventType

    from persona_assets.pipeline import dagster_instance

    instance = dagster_instance(pipeline.settings)
    starts, ends = {}, {}
    records = instance.get_records_for_run(
        run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}
    ).records
    for record in records:
        event = record.event_log_entry
        target = starts if event.dagster_event_type == DagsterEventType.STEP_START else ends
        target[event.step_key] = event.timestamp
    return {step: (starts[step], ends[step]) for step in starts if step in ends}


def runs_since(instance, after: float, rebuild: bool) -> list:
    """The runs created since ``after`` (the rebuild's only, when ``rebuild``), newest first."""
    from dagster import RunsFilter

    from persona_assets.jobs import REBUILD_TAG

    filters = RunsFilter(tags=REBUILD_TAG) if rebuild else RunsFilter()
    return [
        record.dagster_run
        for record in instance.get_run_records(filters=filters, limit=5)
        if record.create_timestamp.timestamp() >= after
    ]


def ranking(pipeline: Pipeline, query: dict) -> list[tuple[str, float]]:
    answer = pipeline.query(query)
    return [(hit["ext_id"], round(hit["score"], 9)) for hit in answer["results"]]


def kill_at(pipeline: Pipeline, kind: str, step: str, delay: float, env: dict) -> str:
    """Start ``persona materialize``, SIGKILL it ``delay`` seconds after ``step`` of its ``kind`` run
    started; returns what was running when it died."""
    from dagster import DagsterEventType

    from persona_assets.pipeline import dagster_instance

    instance = dagster_instance(pipeline.settings)
    launched = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "persona_assets.cli", "materialize"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    try:
        while True:
            assert process.poll() is None, f"persona materialize ended before {step} started"
            assert time.monotonic() < deadline, f"{step} never started"
            # Every run since the launch, not the newest only: the reference run may be over, and the
            # rebuild's created, between two looks on a busy machine.
            started = [
                record.event_log_entry
                for run in runs_since(instance, launched, rebuild=kind == "rebuild")
                for record in instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_START).records
                if record.event_log_entry.step_key == step
            ]
            if started:
                break
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    return step


@pytest.fixture(scope="module")
def shops(tmp_path_factory):
    """A home that never saw a kill (the reference) and the home the kills happen in; both with the first
    import built and the second import landed."""
    root = tmp_path_factory.mktemp("kill-faults")
    base, change = shop_with_change(root)
    reference, killed = Pipeline(root / "reference"), Pipeline(root / "killed")
    for pipeline in (reference, killed):
        pipeline.import_dir(base)
        pipeline.materialize()
    brand = reference.table("attribute_vocabulary").query("kind == 'brand'")["name"].iloc[0]
    query = {"brand": brand, "cityTier": "Tier1", "size": 30}
    before = ranking(killed, query)
    for pipeline in (reference, killed):
        pipeline.import_dir(change)
    started = time.time()
    reference.materialize()
    with reference.env():
        from persona_assets.pipeline import dagster_instance

        (rebuild, *_) = runs_since(dagster_instance(reference.settings), started, rebuild=True)
        windows = step_windows(reference, rebuild.run_id)
    return reference, killed, query, before, windows


def test_sigkill_at_22_points_never_leaves_a_half_built_index_and_a_rerun_converges(shops):
    reference, killed, query, before, windows = shops
    after = ranking(reference, query)
    assert after != before, "the second import must change the answer, or the test could not tell builds apart"
    with killed.env():
        env = dict(os.environ)
    assert len(KILL_POINTS) >= 20
    seen = []
    for kind, step, fraction in KILL_POINTS:
        start, end = windows.get(step, (0.0, 0.0))
        with killed.env():
            seen.append(kill_at(killed, kind, step, fraction * (end - start), env))
        answer = ranking(killed, query)
        assert answer in (before, after), f"killed in {step} at {fraction:.0%}: the index answered {answer}"
        flags = killed.flags()
        assert set(flags.values()) <= {0, 1, 2}
    assert set(REBUILD_STEPS) <= set(seen)

    killed.materialize()
    assert killed.export() == reference.export()
    assert set(killed.flags().values()) == {0}
    assert ranking(killed, query) == after
    from dagster import DagsterRunStatus, RunsFilter

    from persona_assets.builds import latest_build
    from persona_assets.pipeline import dagster_instance

    with killed.env():
        instance = dagster_instance(killed.settings)
        left_running = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
        assert left_running == [], [run.run_id for run in left_running]
        builds = sorted(path.name for path in killed.settings.layout.builds_dir.iterdir())
        assert builds == [latest_build(instance, "user_personas")]
