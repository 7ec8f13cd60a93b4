"""Which process runs a command's in-process run, and what becomes of the run when that process is gone.

The command line runs Dagster in its own process; killed (SIGKILL, an OOM kill, a closed terminal),
it leaves its run *Started* for ever, holding its pool slots and its build. Whoever looks next on the
same host (the next command, the refresh sensor) marks such runs failed.
"""

from __future__ import annotations

import os
import socket

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from persona_assets.jobs import CLI_TAG
from persona_assets.services._process import process_alive

# The process running a command's in-process run, as host:pid: a run whose process is gone was killed.
PROCESS_TAG = "persona/process"


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_abandoned_runs(instance: DagsterInstance) -> list[str]:
    """Mark failed the runs of commands on this host whose process is gone (killed mid-run), and free the
    pool slots they held: Dagster would show them as running forever, keep their builds (``builds``) and
    hold their slots so no later rebuild could start. Returns their run ids."""
    host = socket.gethostname()
    running = instance.get_runs(
        RunsFilter(
            # NOT_STARTED too: a command killed between creating its run and starting it
            statuses=[
                DagsterRunStatus.NOT_STARTED,
                DagsterRunStatus.STARTING,
                DagsterRunStatus.STARTED,
                DagsterRunStatus.CANCELING,
            ],
            tags={**CLI_TAG},
        )
    )
    abandoned = []
    for run in running:
        owner_host, _, pid = run.tags.get(PROCESS_TAG, "").rpartition(":")
        if owner_host == host and pid.isdigit() and not process_alive(int(pid)):
            instance.report_run_failed(run, f"its process ({run.tags[PROCESS_TAG]}) ended without finishing the run")
            if instance.event_log_storage.supports_global_concurrency_limits:
                instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            abandoned.append(run.run_id)
    return abandoned
