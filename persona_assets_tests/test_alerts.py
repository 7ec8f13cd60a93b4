"""A failed run reaches the operators' chat: the run-failure sensor posts to PERSONA_ALERT_WEBHOOK (a real
HTTP server here) one message naming the run, the job and each failed step with its error."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from dagster import DagsterEventType, DagsterInstance, asset, build_run_status_sensor_context, materialize

from persona_assets import alerts
from persona_assets.settings import PersonaSettings


@pytest.fixture
def webhook() -> Iterator[tuple[str, list, list]]:
    """A local webhook: its URL, the JSON bodies it received, and the status to answer (default 200)."""
    received: list = []
    status: list = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/persona", received, status
    finally:
        server.shutdown()


def failed_run_context():
    @asset
    def user_raw_affinities() -> None:
        raise ValueError("duckdb ran out of memory under PERSONA_MEMORY_LIMIT=1GiB\n(the rest of the story)")

    instance = DagsterInstance.ephemeral()
    result = materialize([user_raw_affinities], instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(event for event in result.all_events if event.event_type == DagsterEventType.RUN_FAILURE)
    return build_run_status_sensor_context(
        sensor_name="alert_on_run_failure",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=failure,
    ).for_run_failure(), result.run_id


def test_a_failed_run_is_posted_once_naming_its_step_and_error(webhook, monkeypatch):
    url, received, _status = webhook
    monkeypatch.setattr(alerts, "WEBHOOK", url)
    context, run_id = failed_run_context()
    alerts.alert_on_run_failure(context)
    assert len(received) == 1
    text = received[0]["text"]
    assert text.startswith(f"persona: run {run_id[:8]} of __ephemeral_asset_job__ failed")
    assert "user_raw_affinities: ValueError: duckdb ran out of memory under PERSONA_MEMORY_LIMIT=1GiB" in text
    assert "the rest of the story" not in text  # one line per step


def test_a_webhook_that_refuses_makes_the_tick_fail_and_no_webhook_posts_nothing(webhook, monkeypatch):
    url, received, status = webhook
    context, _run_id = failed_run_context()
    monkeypatch.setattr(alerts, "WEBHOOK", None)
    alerts.alert_on_run_failure(context)
    assert received == []
    monkeypatch.setattr(alerts, "WEBHOOK", url)
    status[0] = 500
    with pytest.raises(Exception, match="500"):
        alerts.alert_on_run_failure(context)


def test_the_webhook_setting_is_validated_and_not_shown(tmp_path):
    secret = "https://hooks.example.com/services/T000/B000/XXXXsecret"
    settings = PersonaSettings.from_env({"PERSONA_HOME": str(tmp_path), "PERSONA_ALERT_WEBHOOK": secret})
    assert settings.alert_webhook == secret and "XXXXsecret" not in repr(settings)
    with pytest.raises(ValueError, match="PERSONA_ALERT_WEBHOOK"):
        PersonaSettings.from_env({"PERSONA_HOME": str(tmp_path), "PERSONA_ALERT_WEBHOOK": "hooks.example.com"})
