"""Two rebuilds at once, from any entry point: no lost update, no shared file (issue 8, items 1 and 2).

The interleavings are deterministic: two full rebuilds run in-process in two threads (two Dagster runs on
one instance and one home, as two launches would), and each is stopped at a chosen point of its steps
until the test lets it go on. Between the first rebuild's snapshot and the second's, user ``y`` gets a
new event (a visit to a Puma product). Whatever the order, a user at 0 must be searchable as its current
events say, and a rebuild afterwards must agree with everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import pytest
from conftest import Pipeline, refresh_everything, write_import_dir
from dagster import AssetExecutionContext, materialize

from persona_assets.jobs import REBUILD

pytestmark = pytest.mark.contract

CATEGORIES = [("1", "All", "")]
PRODUCTS = [
    ("P1", "flipkart", "t", "Nike", "Shoes", "men", "1", "", "", "1"),
    ("P2", "flipkart", "t", "Puma", "Shoes", "men", "1", "", "", "1"),
]
USERS = ("x", "y", "z")
VISITS = [(user, "P1", "560001", "2024-03-01T10:00:00") for user in USERS]
Y_VISITS_PUMA = [("y", "P2", "560001", "2024-03-02T10:00:00")]

# Where a rebuild can be stopped: (step, the call it is stopped in front of).
STOPS = {
    "raw affinities computed, not saved": ("user_raw_affinities", "save_raw_affinities"),
    "vocabulary starts": ("attribute_vocabulary", "load_raw_affinities"),
    "personas start": ("user_personas", "load_raw_affinities"),
    "index starts": ("persona_index", "backend"),
}


class Interleaving:
    """Stops the run tagged ``side`` at a point of ``STOPS`` until :meth:`release`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.stops: dict[str, tuple[str, str]] = {}
        self.reached: dict[str, threading.Event] = {}
        self.go_on: dict[str, threading.Event] = {}
        from persona_assets.compute import affinities
        from persona_assets.resources import SearchIndexResource

        for owner, name in ((affinities, "save_raw_affinities"), (affinities, "load_raw_affinities")):
            monkeypatch.setattr(owner, name, self._gated(getattr(owner, name), name))
        monkeypatch.setattr(SearchIndexResource, "backend", self._gated(SearchIndexResource.backend, "backend"))

    def stop(self, side: str, point: str) -> None:
        self.stops[side] = STOPS[point]
        self.reached[side], self.go_on[side] = threading.Event(), threading.Event()

    def _gated(self, function: Callable, name: str) -> Callable:
        def gated(*args, **kwargs):
            try:
                context = AssetExecutionContext.get()
            except Exception:  # outside a step (a refresh, the query path)
                context = None
            side = context.run.tags.get("side") if context is not None else None
            if side in self.stops and self.stops[side] == (context.op_execution_context.op.name, name):
                self.reached[side].set()
                assert self.go_on[side].wait(120), f"rebuild {side} was never let go on"
            return function(*args, **kwargs)

        return gated

    def wait_until_stopped(self, side: str, run: threading.Thread) -> None:
        while not self.reached[side].wait(0.05):
            assert run.is_alive(), f"rebuild {side} ended before its stop {self.stops[side]}"

    def release(self, side: str) -> None:
        self.go_on[side].set()


def start_rebuild(pipeline: Pipeline, side: str) -> tuple[threading.Thread, dict]:
    """The full rebuild of ``pipeline`` in a thread of its own (one Dagster run tagged ``side``)."""
    from persona_assets.assets import all_assets
    from persona_assets.checks import asset_checks
    from persona_assets.pipeline import QUIET_LOGGERS, dagster_instance
    from persona_assets.resources import resources_from_settings

    outcome: dict = {}

    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                result = materialize(
                    [*all_assets, *asset_checks],
                    selection=REBUILD,
                    resources=resources_from_settings(pipeline.settings),
                    instance=dagster_instance(pipeline.settings),
                    run_config=QUIET_LOGGERS,
                    tags={"side": side},
                    raise_on_error=False,
                )
                outcome["success"] = result.success
            except BaseException as error:  # reported by the test
                outcome["error"] = error

    thread = threading.Thread(target=run, name=f"rebuild-{side}")
    thread.start()
    return thread, outcome


@pytest.fixture
def shop(tmp_path) -> Iterator[Pipeline]:
    """x, y, z visited a Nike product; built and searchable; the environment set for the whole test."""
    pipeline = Pipeline(tmp_path)
    pipeline.import_dir(
        write_import_dir(tmp_path / "import-1", products=PRODUCTS, categories=CATEGORIES, visits=VISITS)
    )
    pipeline.materialize()
    with pipeline.env():
        yield pipeline


def land_y_visiting_puma(pipeline: Pipeline) -> None:
    pipeline.import_dir(
        write_import_dir(pipeline.root / "import-2", products=PRODUCTS, categories=CATEGORIES, visits=Y_VISITS_PUMA)
    )


def puma_is_searchable_for_y(pipeline: Pipeline) -> bool:
    answer = pipeline.query({"brand": "puma", "size": 10})
    return any(hit["ext_id"] == "y" and hit["components"]["B"] > 0 for hit in answer["results"])


def assert_no_stale_user_at_0(pipeline: Pipeline) -> None:
    flags = pipeline.flags()
    assert set(flags) == set(USERS)
    if flags["y"] == 0:
        assert puma_is_searchable_for_y(pipeline), f"y is at 0 but its Puma visit is not in the index: {flags}"
    assert {flags["x"], flags["z"]} == {0}, flags


@pytest.mark.parametrize("second_stop", ["vocabulary starts", "index starts"])
@pytest.mark.parametrize("first_stop", list(STOPS))
def test_two_rebuilds_interleaved_lose_no_update(shop: Pipeline, monkeypatch, first_stop, second_stop):
    gates = Interleaving(monkeypatch)
    gates.stop("first", first_stop)
    gates.stop("second", second_stop)
    first, first_outcome = start_rebuild(shop, "first")
    gates.wait_until_stopped("first", first)  # its snapshot is taken: y's new event comes after it
    land_y_visiting_puma(shop)
    assert shop.flags()["y"] == 1
    second, second_outcome = start_rebuild(shop, "second")
    gates.wait_until_stopped("second", second)
    gates.release("first")  # the first goes on and ends while the second waits at its stop
    first.join(120)
    gates.release("second")
    second.join(120)
    assert first_outcome == {"success": True} and second_outcome == {"success": True}, (first_outcome, second_outcome)
    assert_no_stale_user_at_0(shop)
    # Whatever is left at 1 is calculated by the next rebuild; then the index and the flags agree.
    shop.materialize()
    assert set(shop.flags().values()) == {0}
    assert puma_is_searchable_for_y(shop)


def test_the_sensor_marks_a_killed_rebuild_failed_instead_of_waiting_for_it_for_ever(shop: Pipeline):
    """Found by the soak (``scripts/soak.py``): with only the daemon left after ``persona materialize`` was
    killed, the sensor saw a rebuild *Started* and skipped every tick; flagged shoppers never became
    searchable. The sensor now marks such a run failed (same host, process gone) and refreshes them."""
    from dagster import DagsterRunStatus

    from persona_assets.pipeline import dagster_instance

    killed_build = kill_a_rebuild_once_its_raw_affinities_are_saved(shop)
    assert refresh_everything(shop) == [True]  # before, the first tick skipped: "a full rebuild is running"
    assert dagster_instance(shop.settings).get_run_by_id(killed_build).status == DagsterRunStatus.FAILURE
    assert set(shop.flags().values()) == {0}
    # y was refreshed: its new visit is in what the query shows (Puma's affinity itself waits for a
    # rebuild: a refresh keeps the vocabulary of the live build, which has no Puma yet)
    answer = shop.query({"size": 10})
    assert "P2" in next(hit for hit in answer["results"] if hit["ext_id"] == "y")["visited"]


def test_two_materialize_processes_at_once_both_finish_and_agree(shop: Pipeline):
    """Two ``persona materialize`` launched together (real processes on one home): both succeed, each in
    a build of its own, and the result is the one a single rebuild gives."""
    land_y_visiting_puma(shop)
    env = dict(os.environ)
    command = [sys.executable, "-m", "persona_assets.cli", "materialize"]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    time.sleep(0.5)
    processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, f"{out}\n{err}"
    assert set(shop.flags().values()) == {0}
    assert puma_is_searchable_for_y(shop)


def kill_a_rebuild_once_its_raw_affinities_are_saved(shop: Pipeline) -> str:
    """SIGKILL ``persona materialize`` mid-run; returns its run id (its build), left *Started*."""
    from dagster import DagsterRunStatus

    from persona_assets.builds import latest_build
    from persona_assets.pipeline import dagster_instance

    land_y_visiting_puma(shop)
    instance = dagster_instance(shop.settings)
    before = latest_build(instance, "user_raw_affinities")
    process = subprocess.Popen(
        [sys.executable, "-m", "persona_assets.cli", "materialize"],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while latest_build(instance, "user_raw_affinities") == before:  # its build's raw affinities are saved
        assert process.poll() is None and time.monotonic() < deadline, "the rebuild ended before it was killed"
        time.sleep(0.02)
    killed_build = latest_build(instance, "user_raw_affinities")
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    killed_run = instance.get_run_by_id(killed_build)
    assert killed_run is not None and killed_run.status == DagsterRunStatus.STARTED
    assert shop.settings.layout.build_dir(killed_build).is_dir()
    assert shop.flags()["y"] in (1, 2)  # not searchable yet
    return killed_build


def test_a_killed_rebuild_is_marked_failed_and_its_files_removed_by_the_next(shop: Pipeline):
    """SIGKILL in the middle of ``persona materialize``: the next command marks the dead run failed (the UI
    would show it running forever), frees its pool slots and removes its build's files."""
    from dagster import DagsterRunStatus

    from persona_assets.builds import latest_build
    from persona_assets.pipeline import dagster_instance

    killed_build = kill_a_rebuild_once_its_raw_affinities_are_saved(shop)
    instance = dagster_instance(shop.settings)
    shop.materialize()
    assert instance.get_run_by_id(killed_build).status == DagsterRunStatus.FAILURE
    assert not shop.settings.layout.build_dir(killed_build).exists()
    builds = sorted(path.name for path in shop.settings.layout.builds_dir.iterdir())
    assert builds == [latest_build(instance, "user_personas")]
    assert set(shop.flags().values()) == {0}
    assert puma_is_searchable_for_y(shop)


@pytest.mark.parametrize("status", ["NOT_STARTED", "STARTING", "STARTED"])
def test_a_command_run_whose_process_is_gone_is_marked_failed_whatever_state_it_died_in(status):
    """Found by the soak: a command killed between creating its run and starting it left the run
    *Not started* for ever (every wait for runs in flight waited on it)."""
    import socket

    from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

    from persona_assets.jobs import CLI_TAG
    from persona_assets.run_owners import PROCESS_TAG, fail_abandoned_runs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    instance = DagsterInstance.ephemeral()
    runs = {}
    for owner, pid in (("gone", gone.pid), ("alive", os.getpid())):
        run = DagsterRun(
            job_name="__ephemeral_asset_job__",
            status=DagsterRunStatus[status],
            tags={**CLI_TAG, PROCESS_TAG: f"{socket.gethostname()}:{pid}"},
        )
        instance.add_run(run)
        runs[owner] = run.run_id
    assert fail_abandoned_runs(instance) == [runs["gone"]]
    assert instance.get_run_by_id(runs["gone"]).status == DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(runs["alive"]).status == DagsterRunStatus[status]
