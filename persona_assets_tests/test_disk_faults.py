"""A full disk in the middle of a rebuild, with a real filesystem: ``PERSONA_HOME`` (and the Dagster instance)
on a small tmpfs, filled until a write fails. The command ends with a one-line error naming the disk, the
previous build keeps answering, and once space is back a rerun converges to the export of before.

Mounting a tmpfs needs root (CI runs as root; elsewhere the test is skipped, under CI it fails).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Pipeline

QUERY = {"size": 5}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("mounting a tmpfs needs root")
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A file taking all of ``disk``'s free space but ``leave`` bytes."""
    filler = disk / "filler"
    size = shutil.disk_usage(disk).free - leave
    with filler.open("wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, size)
    return filler


def test_a_full_disk_mid_rebuild_is_a_clear_error_and_the_previous_build_keeps_answering(small_disk: Path):
    pipeline = Pipeline(small_disk, backend="embedded")
    pipeline.check("demo", "--users", "300")
    before = pipeline.export()
    code, answer, _ = pipeline.cli_query(QUERY)
    assert code == 0 and answer and answer["results"]

    # Little room fails early (the Dagster instance's own writes), more room later (the stores, the index).
    for leave in (300_000, 1_000_000):
        filler = _fill(small_disk, leave)
        code, _out, err = pipeline.cli("materialize")
        last = err.strip().splitlines()[-1]
        assert code == 1, err[-2000:]
        assert "Traceback" not in err and last.startswith("persona: error: the disk under"), err[-2000:]
        assert str(pipeline.home) in last
        code, still, err = pipeline.cli_query(QUERY)
        assert code == 0, err
        assert still == answer  # the previous build, whole
        filler.unlink()

    pipeline.materialize()
    assert pipeline.export() == before
