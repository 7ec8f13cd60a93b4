"""The real Dagster UI, driven in headless Chromium: lineage from the raw assets to ``persona_index``, and a
materialisation launched from the UI that succeeds. Screenshots of both go to a scratch folder, or to
``docs/img/`` with ``PERSONA_UPDATE_DOCS_SCREENSHOTS=1``.

Setup, as a user would do it: ``persona demo --users 300`` in a fresh PERSONA_HOME (DAGSTER_HOME unset, so the
CLI copies the repo's ``dagster.yaml`` into ``$PERSONA_HOME/dagster``), then ``persona ui`` on a free port,
which runs ``dagster dev`` (webserver + daemon) on that same instance.

Needs Debian's ``chromium`` (``apt-get install -y chromium``; installed here when missing and running as root)
and the ``playwright`` Python package (dev extra); Playwright's own browser download is never used.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PERSONA_ENV_VARS, backend_env

pytestmark = pytest.mark.ui

REPO = Path(__file__).resolve().parent.parent
# Screenshots go to a scratch folder; PERSONA_UPDATE_DOCS_SCREENSHOTS=1 writes them into docs/img instead
# (what a developer does on purpose to refresh the README's pictures; a test run never touches tracked files).
DOCS_IMG = (
    REPO / "docs" / "img"
    if os.environ.get("PERSONA_UPDATE_DOCS_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "persona-ui-screenshots"
)
DOCS_IMG.mkdir(parents=True, exist_ok=True)
CHROMIUM = os.environ.get("PERSONA_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
DEMO_USERS = 300

# What each asset reads: the lineage the graph must show, from the raw assets to persona_index.
RAW = {"raw_visits", "raw_checkouts", "raw_searches"}
REFERENCE = {"product_catalog", "category_hierarchy", "pincode_tiers"}
UPSTREAM = {
    "user_raw_affinities": RAW | REFERENCE,
    "user_activity": {"user_raw_affinities"},  # read from its build: one pass over the events
    "attribute_vocabulary": {"user_raw_affinities"},
    "user_personas": {"user_raw_affinities", "attribute_vocabulary", "category_hierarchy"},
    "persona_index": {"user_personas"},
    "segment_members": {"persona_index"},
}
ASSETS = RAW | REFERENCE | set(UPSTREAM)
# Every asset on a path from raw_visits to persona_index.
PATH_SELECTION = 'key:"raw_visits"+ and +key:"persona_index"'
ON_PATH = {"raw_visits", "user_raw_affinities", "attribute_vocabulary", "user_personas", "persona_index"}
REBUILD_GROUP = "personas"

SERVER_START_SECONDS = 120
RUN_SECONDS = 180


# ------------------------------------------------------------------------------ the production instance

PRODUCTION_YAML = REPO / "deploy" / "dagster.production.yaml"
PRODUCTION_ENV = (
    "DAGSTER_MYSQL_HOST",
    "DAGSTER_MYSQL_PORT",
    "DAGSTER_MYSQL_USER",
    "DAGSTER_MYSQL_PASSWORD",
    "DAGSTER_MYSQL_DB",
)


def test_production_instance_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """deploy/dagster.production.yaml against Dagster's own schema, and every class in it built (storage aside:
    MySQL needs dagster-mysql and a server, so that part is swapped for SQLite here)."""
    import yaml
    from dagster import DagsterInstance
    from dagster._core.instance.config import dagster_instance_config, dagster_instance_config_schema

    from persona_assets.jobs import REBUILD_TAG, full_rebuild_job
    from persona_assets.sensors import refresh_changed_users

    config = yaml.safe_load(PRODUCTION_YAML.read_text(encoding="utf-8"))
    assert set(config) <= set(dagster_instance_config_schema()), set(config) - set(dagster_instance_config_schema())
    assert set(config["storage"]) == {"mysql"}
    for name in PRODUCTION_ENV:
        monkeypatch.setenv(name, "3306" if name.endswith("PORT") else f"x-{name.lower()}")
    monkeypatch.setenv("DAGSTER_COMPUTE_LOGS_DIR", str(tmp_path / "compute-logs"))
    monkeypatch.setenv("DAGSTER_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text(PRODUCTION_YAML.read_text(encoding="utf-8"), encoding="utf-8")
    validated, _ = dagster_instance_config(str(home))
    # Credentials and addresses come from the environment, none is written in the file.
    assert all(set(value) == {"env"} for value in validated["storage"]["mysql"]["mysql_db"].values())

    (home / "dagster.yaml").write_text(
        yaml.safe_dump({**config, "storage": {"sqlite": {"base_dir": str(tmp_path / "storage")}}}), encoding="utf-8"
    )
    instance = DagsterInstance.from_config(str(home))
    try:
        concurrency = instance.get_concurrency_config()
        queue = concurrency.run_queue_config
        # The pool of the steps that take the whole memory limit: one at a time, every entry point.
        assert concurrency.pool_config.default_pool_limit == 1
        limits = {(limit["key"], limit.get("value")): limit["limit"] for limit in queue.tag_concurrency_limits}
        assert queue.max_concurrent_runs >= 2
        # The limits name tags that the code really puts on its runs.
        ((rebuild_key, rebuild_value),) = REBUILD_TAG.items()
        assert full_rebuild_job.tags.get(rebuild_key) == rebuild_value
        assert limits.get((rebuild_key, rebuild_value)) == 1, (
            f"no limit of 1 on {rebuild_key}={rebuild_value}: {limits}"
        )
        refresh_tags = refresh_changed_users.tags.items()
        assert any(tag in limits for tag in refresh_tags), (
            f"no limit on the refresh runs' tags {refresh_tags}: {limits}"
        )
        assert instance.run_retries_enabled and not instance.run_retries_retry_on_asset_or_op_failure
        assert instance.run_monitoring_enabled
        assert not instance.telemetry_enabled
        assert type(instance.compute_log_manager).__name__ == "LocalComputeLogManager"
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
    finally:
        instance.dispose()


# ---------------------------------------------------------------------------------------------- chromium


def _chromium() -> str:
    """Debian's chromium, installed with apt when missing (as root); else skip, or fail under CI."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(command, env=env, check=False, capture_output=True, timeout=900)
        if Path(CHROMIUM).exists():
            return CHROMIUM
    message = f"{CHROMIUM} is missing: apt-get install -y chromium (or set PERSONA_TEST_CHROMIUM)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("CI"):
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    executable = _chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


# ----------------------------------------------------------------------------------------- dagster dev


@dataclass
class DagsterUI:
    url: str
    home: Path
    log: Path
    location: str = ""

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.load(response)
        assert not payload.get("errors"), f"GraphQL errors: {payload['errors']}"
        return payload["data"]

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_loaded(ui: DagsterUI, process: subprocess.Popen) -> None:
    """Until the webserver answers and the code location has loaded its assets."""
    deadline = time.monotonic() + SERVER_START_SECONDS
    last_error: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"`persona ui` exited with {process.returncode}:\n{ui.log_tail()}")
        try:
            nodes = ui.graphql("{ assetNodes { assetKey { path } repository { location { name } } } }")["assetNodes"]
            if nodes:
                ui.location = nodes[0]["repository"]["location"]["name"]
                return
            last_error = "no asset nodes yet"
        except (urllib.error.URLError, ConnectionError, TimeoutError, AssertionError) as error:
            last_error = error
        time.sleep(1)
    pytest.fail(f"the Dagster UI did not load in {SERVER_START_SECONDS}s ({last_error}):\n{ui.log_tail()}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to `dagster dev` (it stops its webserver, daemon and code server), then its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterUI]:
    from persona_assets.cli import main

    root = tmp_path_factory.mktemp("ui")
    home = root / "persona-home"
    with pytest.MonkeyPatch.context() as mp:
        for name in PERSONA_ENV_VARS:
            mp.delenv(name, raising=False)
        mp.setenv("PERSONA_HOME", str(home))
        # Empty: the CLI then uses (and sets) $PERSONA_HOME/dagster with the repo's dagster.yaml, as `persona ui`
        # does; the monkeypatch restores it afterwards.
        mp.setenv("DAGSTER_HOME", "")
        for name, value in backend_env(home).items():
            mp.setenv(name, value)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["demo", "--users", str(DEMO_USERS)])
        assert code == 0, f"persona demo exited {code}:\n{err.getvalue()[-3000:]}"
        dagster_home = home / "dagster"
        assert os.environ["DAGSTER_HOME"] == str(dagster_home)
        assert (dagster_home / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()

        port = _free_port()
        env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
        # No venv bin/ on PATH, as for `.venv/bin/persona ui` without an activated venv.
        env["PATH"] = os.pathsep.join(
            p for p in env.get("PATH", "").split(os.pathsep) if p != str(Path(sys.executable).parent)
        )
        log = root / "persona-ui.log"
        ui = DagsterUI(url=f"http://127.0.0.1:{port}", home=home, log=log)
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "persona_assets.cli", "ui", "--port", str(port), "--host", "127.0.0.1"],
                cwd=root,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # SIGTERM stops `dagster dev` through its SIGINT handler: make sure SIGINT isn't inherited ignored.
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        try:
            _wait_until_loaded(ui, process)
            yield ui
        finally:
            _stop(process)


# ------------------------------------------------------------------------------------------- the graph


def _shown_as(name: str, label: str) -> bool:
    """The graph shortens long names in the middle when zoomed out ("user_r…_affinities")."""
    if label == name:
        return True
    head, sep, tail = label.partition("…")
    return bool(sep) and name.startswith(head) and name.endswith(tail) and len(head) + len(tail) < len(name)


def _labels(page) -> list[str]:
    return [text.strip() for text in page.locator("foreignObject [class*='AssetNode_assetName']").all_text_contents()]


def _match(labels: list[str], names: set[str]) -> tuple[set[str], list[str]]:
    """(names with no label, labels that are none of the names), each label used once."""
    unmatched = list(labels)
    missing = set()
    # Exact labels first, so a shortened label can't steal a name that is also shown in full.
    for name in sorted(names, key=lambda n: n not in unmatched):
        label = next((label for label in unmatched if _shown_as(name, label)), None)
        if label is None:
            missing.add(name)
        else:
            unmatched.remove(label)
    return missing, unmatched


def _wait_for_nodes(page, names: set[str], exact: bool, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    labels: list[str] = []
    while time.monotonic() < deadline:
        labels = _labels(page)
        missing, extra = _match(labels, names)
        if not missing and (not exact or not extra):
            return labels
        page.wait_for_timeout(500)
    return labels


def _dismiss_welcome(page) -> None:
    """A fresh instance greets the first visitor with a 'Join the Dagster community' dialog."""
    skip = page.get_by_role("button", name="Skip")
    with contextlib.suppress(Exception):
        skip.wait_for(state="visible", timeout=3000)
        skip.click()


def _open(page, ui: DagsterUI, path: str) -> None:
    page.goto(ui.url + path)
    page.wait_for_load_state("networkidle")
    _dismiss_welcome(page)


def test_graphql_lineage_runs_from_the_raw_assets_to_persona_index(dagster_ui: DagsterUI):
    nodes = dagster_ui.graphql("{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }")["assetNodes"]
    deps = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes}
    assert set(deps) >= ASSETS, f"assets missing from the code location: {sorted(ASSETS - set(deps))}"
    for asset, upstream in UPSTREAM.items():
        assert upstream <= deps[asset], f"{asset}: edges from {sorted(upstream - deps[asset])} are missing"
    groups = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in nodes}
    assert {groups[a] for a in RAW} == {"events"} and groups["persona_index"] == REBUILD_GROUP


def test_asset_graph_shows_the_lineage(dagster_ui: DagsterUI, page):
    _open(page, dagster_ui, "/asset-groups")
    page.get_by_text("Global asset lineage").first.wait_for()
    page.locator(".CodeMirror").first.wait_for()
    # Groups start collapsed; ⌥E ("Expand all groups") shows every asset node with its edges. Reloading with
    # the groups expanded lets the graph zoom to fit all of them.
    page.keyboard.press("Alt+e")
    _wait_for_nodes(page, ASSETS, exact=False)
    page.reload()
    page.wait_for_load_state("networkidle")
    # Room for the graph: hide the asset tree beside it.
    page.locator("button:has([aria-label='panel_show_right'])").last.click()
    labels = _wait_for_nodes(page, ASSETS, exact=False)
    missing, _ = _match(labels, ASSETS)
    assert not missing, f"the lineage graph does not show {sorted(missing)}; it shows {labels}"
    page.mouse.move(5, VIEWPORT["height"] - 5)
    page.wait_for_timeout(1500)  # the zoom-to-fit animation
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_IMG / "asset-graph.png"))

    # The UI's own lineage query: every asset on a path from raw_visits to persona_index, and only those.
    _open(page, dagster_ui, "/asset-groups~" + urllib.parse.quote(PATH_SELECTION) + "/")
    labels = _wait_for_nodes(page, ON_PATH, exact=True)
    missing, extra = _match(labels, ON_PATH)
    assert not missing and not extra, (
        f"the path raw_visits → persona_index in the UI: missing {sorted(missing)}, unexpected {extra}"
    )


def _runs(ui: DagsterUI) -> list[dict]:
    data = ui.graphql(
        """{ runsOrError(limit: 50) { __typename ... on Runs { results {
             runId status jobName assetSelection { path } tags { key value } } } } }"""
    )["runsOrError"]
    assert data["__typename"] == "Runs", data
    return data["results"]


def test_materialize_the_rebuild_from_the_ui(dagster_ui: DagsterUI, page):
    before = {run["runId"] for run in _runs(dagster_ui)}
    _open(page, dagster_ui, f"/locations/{urllib.parse.quote(dagster_ui.location)}/asset-groups/{REBUILD_GROUP}")
    _wait_for_nodes(page, {"persona_index"}, exact=False)
    page.get_by_role("button", name="Materialize all").first.click()

    nodes = dagster_ui.graphql("{ assetNodes { assetKey { path } groupName } }")["assetNodes"]
    wanted = {"/".join(n["assetKey"]["path"]) for n in nodes if n["groupName"] == REBUILD_GROUP}
    deadline = time.monotonic() + RUN_SECONDS
    run = None
    while time.monotonic() < deadline:
        launched = [
            r
            for r in _runs(dagster_ui)
            if r["runId"] not in before and {"/".join(k["path"]) for k in r["assetSelection"] or []} == wanted
        ]
        if launched:
            run = launched[0]
            if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                break
        time.sleep(1)
    assert run is not None, f"no run of the {REBUILD_GROUP} group was launched from the UI:\n{dagster_ui.log_tail()}"
    assert run["status"] == "SUCCESS", f"run {run['runId']} ended {run['status']}:\n{dagster_ui.log_tail()}"

    _open(page, dagster_ui, f"/runs/{run['runId']}")
    page.get_by_text("Success", exact=True).first.wait_for()
    # A readable screenshot: every step by name, the list of succeeded steps, the materialisation events.
    page.get_by_role("button", name="Hide navigation").click()
    page.locator("button:has([aria-label='gantt_flat'])").click()
    divider = page.locator("[class*='verticalHitArea']").first.bounding_box()
    if divider:  # drag the chart/log divider down so the whole chart shows
        x, y = divider["x"] + divider["width"] / 2, divider["y"] + divider["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x, y + 240, steps=10)
        page.mouse.up()
    page.get_by_text("Succeeded (", exact=False).first.click()
    page.get_by_placeholder("Filter…").fill("type:materialization")
    page.keyboard.press("Enter")
    for asset in wanted:
        page.get_by_text(asset, exact=True).first.wait_for()
    page.mouse.move(VIEWPORT["width"] // 2, 40)
    page.wait_for_timeout(1500)
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_IMG / "materialization-run.png"))


# ------------------------------------------------------------------------------------------ audiences


def _persona(*argv: str) -> str:
    """``persona ARGV`` in-process on the demo home (the fixture's environment); its stdout."""
    from persona_assets.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    assert code == 0, f"persona {' '.join(argv)} exited {code}:\n{err.getvalue()[-3000:]}"
    return out.getvalue()


SEGMENT_SIZES = {"tier1-shoppers": [40, 80, 60], "men": [25, 50, 30]}


def test_saved_segments_members_over_time_in_the_ui(dagster_ui: DagsterUI, page):
    # Three computations of two segments, each with another top N: three points per partition to plot.
    for round_ in range(3):
        for name, sizes in SEGMENT_SIZES.items():
            query = {"cityTier": "Tier1"} if name == "tier1-shoppers" else {"gender": "men"}
            definition = json.dumps({"query": query, "membership": {"top": sizes[round_]}})
            _persona("segment", "save", name, "--replace", "--definition", definition)
        _persona("segment", "compute")

    # What the UI plots, read through its own GraphQL: one partition per segment, members per materialisation.
    data = dagster_ui.graphql(
        """query($partitions: [String!]) { assetOrError(assetKey: {path: ["segment_members"]}) { ... on Asset {
             assetMaterializations(partitions: $partitions) { partition metadataEntries { label
               ... on IntMetadataEntry { intValue } } } } } }""",
        {"partitions": sorted(SEGMENT_SIZES)},
    )["assetOrError"]["assetMaterializations"]
    members: dict[str, list[int]] = {}
    for event in reversed(data):  # newest first
        values = {entry["label"]: entry.get("intValue") for entry in event["metadataEntries"]}
        members.setdefault(event["partition"], []).append(values["members"])
    assert members == SEGMENT_SIZES

    # The asset's overview plots its numeric metadata: per materialisation over time ("Events"), or the latest
    # per partition ("Partitions").
    _open(page, dagster_ui, "/assets/segment_members")
    page.locator("button", has_text="Plots").first.click()  # (an icon in the name: not matched by role and name)
    page.locator("button", has_text="Events").first.click()
    plots = page.get_by_text("members", exact=True)
    plots.first.wait_for()
    page.get_by_role("button", name="Hide navigation").click()
    page.get_by_text("Metadata", exact=True).first.scroll_into_view_if_needed()
    page.mouse.wheel(0, 250)
    page.wait_for_timeout(1500)  # the charts' animation
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(DOCS_IMG / "segment-members-plots.png"))
    _open(page, dagster_ui, "/assets/segment_members?view=partitions")
    for name in SEGMENT_SIZES:
        page.get_by_text(name, exact=True).first.wait_for()
