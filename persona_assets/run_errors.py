"""What a failed step says: the error it raised, as one readable line (the CLI's failure lines, alerts)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the type of a step failure's ``error``; only its public attributes are read
    from dagster._utils.error import SerializableErrorInfo


def step_error(error: SerializableErrorInfo | None) -> str:
    """The error a step raised (Dagster's wrapper around it says only that the step failed)."""
    while error is not None and error.cls_name == "DagsterExecutionStepExecutionError" and error.cause is not None:
        error = error.cause
    if error is None:
        return "failed"
    message = error.message.strip()
    named, _, rest = message.partition(": ")
    if rest and named.rpartition(".")[2] == error.cls_name:  # "module.Class: message" as Python prints it
        message = rest
    return f"{error.cls_name}: {message}"
