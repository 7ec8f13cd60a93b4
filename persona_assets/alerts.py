"""Telling someone: a failed run is posted to a chat webhook (``PERSONA_ALERT_WEBHOOK``).

Blocking checks stop their run, so a refused import, a map that does not sum to one, a day that would
be published empty and a crashed step all end as a failed run: one sensor on run failures covers
them. The post is ``{"text": "..."}``, what Slack, Mattermost, Google Chat and Teams' incoming
webhooks take; anything else can sit behind a small relay.
"""

from __future__ import annotations

import json
import urllib.request
import warnings

from dagster import BetaWarning, RunFailureSensorContext, run_failure_sensor

from persona_assets.run_errors import step_error
from persona_assets.sensors import AUTOMATION_SETTINGS, SENSOR_STATUS

# Read once, with the rest of the configuration; a URL that carries its own token is never logged.
WEBHOOK = AUTOMATION_SETTINGS.alert_webhook
POST_TIMEOUT_SECONDS = 10


def failure_message(context: RunFailureSensorContext) -> str:
    """One short paragraph: which run of which job, and each failed step with its error's first line."""
    run = context.dagster_run
    lines = [f"persona: run {run.run_id[:8]} of {run.job_name} failed"]
    for event in context.get_step_failure_events():
        first = step_error(event.step_failure_data.error).splitlines()[0]
        lines.append(f"• {event.step_key}: {first[:300]}")
    if len(lines) == 1:
        lines.append(f"• {context.failure_event.message or 'the run failed before any step'}")
    return "\n".join(lines)


def post_alert(url: str, text: str) -> None:
    """POST ``{"text": text}``; an answer other than 2xx raises (the sensor tick then shows the error)."""
    request = urllib.request.Request(
        url, data=json.dumps({"text": text}).encode("utf-8"), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=POST_TIMEOUT_SECONDS) as response:
        response.read()


def _alert_on_run_failure(context: RunFailureSensorContext) -> None:
    if not WEBHOOK:
        context.log.info("PERSONA_ALERT_WEBHOOK is not set: nobody to tell")
        return
    post_alert(WEBHOOK, failure_message(context))


# Dagster's own run-status sensors pass a beta parameter (owners) to SensorDefinition whenever they are
# built or copied (also when the definitions are resolved): not ours to act on.
warnings.filterwarnings("ignore", message="Parameter `owners` of initializer `SensorDefinition", category=BetaWarning)

alert_on_run_failure = run_failure_sensor(
    name="alert_on_run_failure",
    default_status=SENSOR_STATUS,
    description="A failed run (a crashed step, or a blocking check that refused its data) → PERSONA_ALERT_WEBHOOK.",
)(_alert_on_run_failure)
