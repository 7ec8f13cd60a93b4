"""``persona serve --workers N`` spreads answers evenly: the shared record of answers in flight."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest

from persona_assets.worker_load import MARGIN, SLOTS, WorkerLoad, create_load_file


def test_a_worker_is_busier_only_past_the_margin_over_the_least_busy_other(tmp_path):
    path = create_load_file(tmp_path / "serve.load")
    busy, idle, other = WorkerLoad(path), WorkerLoad(path), WorkerLoad(path)
    for _ in range(MARGIN + 1):
        busy.started()
    other.started()
    assert sorted(busy.others()) == [0, 1]
    assert busy.busier_than_others()  # 3 in flight against 0
    assert not idle.busier_than_others() and not other.busier_than_others()
    busy.finished()
    assert not busy.busier_than_others()  # 2 against 0: within the margin
    idle.close()
    assert sorted(busy.others()) == [1]  # a closed worker counts no more
    assert not busy.busier_than_others()
    busy.close()
    other.close()


def test_a_record_of_a_process_that_is_gone_is_ignored_and_reused(tmp_path):
    path = create_load_file(tmp_path / "serve.load")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    with path.open("r+b") as handle:  # a worker that died with 0 answers in flight
        handle.write(struct.pack("<qq", dead_pid, 0))
    first = WorkerLoad(path)
    second = WorkerLoad(path)
    for _ in range(MARGIN + 1):
        second.started()
    assert first.others() == [MARGIN + 1]  # the dead record was taken over, not compared with
    assert second.others() == [0]
    first.close()
    second.close()


def test_a_file_that_is_not_a_load_file_is_refused(tmp_path):
    path = tmp_path / "other"
    path.write_bytes(b"x" * 10)
    with pytest.raises(ValueError, match="not a load file"):
        WorkerLoad(path)


def test_more_workers_than_records_is_an_error(tmp_path):
    path = create_load_file(tmp_path / "serve.load")
    loads = [WorkerLoad(path) for _ in range(SLOTS)]
    with pytest.raises(RuntimeError, match="workers share one load file"):
        WorkerLoad(path)
    for load in loads:
        load.close()
