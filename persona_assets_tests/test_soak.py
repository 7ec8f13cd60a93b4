"""The randomized soak (``scripts/soak.py``) in small: real processes on MariaDB + OpenSearch, no update lost.

A Dagster daemon runs the hasChanged sensor while imports, rebuilds and backfills overlap, and some of
them (and the daemon) are SIGKILLed; after each trial every shopper given a new brand must be
searchable with it once the flags are back at 0. The full run (100 trials) and its report are in
``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import backend_env

# Once per CI run, on the production pair whatever PERSONA_TEST_BACKEND says (the refresh through
# OpenSearch's alias is the path with the most to lose); the 100-trial run covers the embedded pair.
pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent


def test_a_short_soak_with_kills_loses_no_update_and_never_sticks(tmp_path):
    work = tmp_path / "soak"
    env = {name: value for name, value in os.environ.items() if not name.startswith(("PERSONA_", "DAGSTER_"))}
    env |= backend_env(work / "home", "production")
    report_path = tmp_path / "report.json"
    trials = 3
    result = subprocess.run(
        [
            sys.executable,
            "scripts/soak.py",
            *("--trials", str(trials), "--users", "120", "--seed", "5", "--work", str(work)),
            *("--kill-share", "0.5", "--daemon-kill-share", "0.25", "--report", str(report_path)),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert report_path.exists(), result.stderr[-4000:]
    report = json.loads(report_path.read_text(encoding="utf-8"))
    summary = {key: value for key, value in report.items() if key != "trial_log"}
    assert result.returncode == 0, summary
    assert report["trials"] == trials and report["markers"] > 0, summary
    assert (report["lost_updates"], report["stuck_trials"], report["unexpected_failures"]) == (0, 0, 0), summary
    # the daemon's sensor refreshed shoppers (not only the rebuilds), and something was killed
    assert report["runs"].get("refresh_changed_users", {}).get("SUCCESS", 0) >= 1, summary
    assert report["kills"], summary
