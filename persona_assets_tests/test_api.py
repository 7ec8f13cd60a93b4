"""The HTTP query API (``persona serve``): ``POST /fetchPersonas``, ``GET /health`` and the OpenAPI document.

Everything goes over real HTTP: uvicorn serves ``create_app`` (with the materialised pipeline's settings)
on a free loopback port in a background thread, and one test starts ``persona serve`` as a process.
Valid answers are compared with ``fetch_personas`` on the same stores; every invalid body must be a 422
naming the field the contract's validator names; a Hypothesis fuzz of the body checks both, and that
nothing answers 5xx.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn
from conftest import Pipeline
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from persona_assets.api import MAX_BODY_BYTES, create_app
from persona_assets.query.request import FIELDS, InvalidRequest, parse_segment_request
from persona_assets.worker_load import ready_workers

pytestmark = pytest.mark.contract

CATEGORIES = [("1", "Fashion", ""), ("10", "Footwear", "1"), ("100", "Sneakers", "10"), ("2", "Home", "")]
# pid, pos, title, brand, generic_name, gender, cat_l1, cat_l2, cat_l3, price
PRODUCTS = [
    ("A1", "flipkart", "t", "Nike", "Shoes", "men", "1", "10", "100", "1"),
    ("A2", "flipkart", "t", "Puma", "Shoes", "men", "1", "10", "", "1"),
    ("A3", "amazon", "t", "Nike", "T-Shirt", "women", "1", "", "", "1"),
    ("A4", "amazon", "t", "Ikea", "Sofa", "", "2", "", "", "1"),
]
VISITS = [
    ("u1", "A1", "560001", "2024-03-01T00:00:00"),
    ("u1", "A1", "560001", "2024-03-01T01:00:00"),
    ("u1", "A2", "400601", "2024-03-01T02:00:00"),
    ("u2", "A3", "400601", "2024-03-02T00:00:00"),
    ("u3", "A4", "560001", "2024-03-03T00:00:00"),
    ("u3", "A1", "560001", "2024-03-03T01:00:00"),
    ("u4", "A3", "110001", "2024-03-04T00:00:00"),
    ("u5", "AZ", "560001", "2024-03-05T00:00:00"),  # unknown pid only
]
CHECKOUTS = [("o1", "u1", "A1", "560001", "2024-02-01T00:00:00"), ("o2", "u3", "A4", "560001", "2024-02-02T00:00:00")]
SEARCHES = [
    ("u1", "nike shoes", "2024-02-01T00:00:00"),
    ("u1", "cheap sofa", "2024-02-02T00:00:00"),
    ("u2", "Nike t-shirt", "2024-02-03T00:00:00"),
]


# --------------------------------------------------------------------------- serving over real HTTP


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    text: str
    raw: bytes = b""  # the body as sent (a Parquet export is not text)

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@dataclass(frozen=True)
class Http:
    host: str
    port: int

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            headers = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            text = raw.decode("utf-8", errors="replace")
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, text, raw)
        finally:
            conn.close()

    def post(self, body: object) -> Answer:
        """POST ``body`` to /fetchPersonas: bytes as they are, anything else JSON-encoded."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        return self.request("POST", "/fetchPersonas", raw, "application/json")

    def get(self, path: str) -> Answer:
        return self.request("GET", path)


@contextlib.contextmanager
def serving(app) -> Iterator[Http]:
    """Run ``app`` under uvicorn on a free loopback port in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped before it started"
            assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
            time.sleep(0.01)
        yield Http("127.0.0.1", port)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def run(pipeline_factory) -> Pipeline:
    return pipeline_factory(
        "api", products=PRODUCTS, categories=CATEGORIES, visits=VISITS, checkouts=CHECKOUTS, searches=SEARCHES
    )


@pytest.fixture(scope="module")
def api(run: Pipeline) -> Iterator[Http]:
    with run.env():  # the pipeline's environment (default score weights), read once by create_app
        app = create_app(run.settings)
    with serving(app) as http_:
        yield http_


def expected_response(run: Pipeline, body: object) -> Any:
    """What ``fetch_personas`` answers for ``body``, as JSON would carry it."""
    return json.loads(json.dumps(run.query(body)))


def assert_names_field(answer: Answer, field: str) -> None:
    assert answer.status == 422, f"expected 422 naming {field!r}, got {answer.status}: {answer.text[:500]}"
    body = answer.json
    assert body["field"] == field, body
    [item] = body["detail"]
    assert item["loc"] == ["body", field]
    assert item["type"] == "value_error"
    assert field in item["msg"]


# --------------------------------------------------------------------------- POST /fetchPersonas


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"gender": "men", "cityTier": "Tier1"},
        {"gender": " Female ", "cityTier": 2, "size": "3"},
        {"brand": "NIKE", "genericName": None},
        {"genericName": "shoes", "level1Cat": "1", "level2Cat": 10, "level3Cat": -1},
        {"level3Cat": 100, "size": 2, "from": "1"},
        {"brand": "no such brand"},
        {"size": 0},
        {"from": 1000},
        {"from": 9000, "size": 1000},  # the deepest window: from + size = 10,000
        # Edges the stores must take: huge ids, long and odd names.
        {"level1Cat": 10**30, "level2Cat": "-" + "9" * 4000},
        {"brand": "x" * 100_000},
        {"genericName": "sho\u0000es", "brand": "ni'ke\"; --"},
        {"brand": "नाइके", "genericName": "🙂"},
    ],
)
def test_valid_query_equals_fetch_personas(run, api, body):
    answer = api.post(body)
    assert answer.status == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json == expected_response(run, body)


def test_valid_query_has_the_contract_shape(run, api):
    answer = api.post({"brand": "nike", "size": 1000})
    assert answer.status == 200
    body = answer.json
    assert set(body) == {"total", "results"}
    assert body["total"] == len(run.personas) >= 5
    order = [(-r["score"], r["ext_id"]) for r in body["results"]]
    assert order == sorted(order)
    for result in body["results"]:
        assert set(result) == {"ext_id", "score", "components", "gender", "visited", "purchased", "search_terms"}
        assert set(result["components"]) == {"C", "B", "G", "K"}
    u1 = next(r for r in body["results"] if r["ext_id"] == "u1")
    assert u1["visited"] == ["A1"] and u1["purchased"] == ["A1"] and u1["search_terms"] == ["nike shoes"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"colour": "red"}', "colour"),
        (b'{"gender": "men", "Size": 5}', "Size"),
        (b'{"cityTier": "Tier4"}', "cityTier"),
        (b'{"cityTier": "metro"}', "cityTier"),
        (b'{"cityTier": 0}', "cityTier"),
        (b'{"size": 5.0}', "size"),
        (b'{"level2Cat": 3.5}', "level2Cat"),
        (b'{"from": 1e2}', "from"),
        (b'{"size": NaN}', "size"),
        (b'{"level1Cat": true}', "level1Cat"),
        (b'{"size": false}', "size"),
        (b'{"cityTier": true}', "cityTier"),
        (b'{"size": 1001}', "size"),
        (b'{"size": "1001"}', "size"),
        (b'{"size": -1}', "size"),
        (b'{"from": -1}', "from"),
        (b'{"from": 9001, "size": 1000}', "from"),
        (b'{"from": 9981}', "from"),
        (b'{"from": 1000000000000000000000000000000}', "from"),
        (b'{"level3Cat": "abc"}', "level3Cat"),
        (b'{"brand": ""}', "brand"),
        (b'{"genericName": "   "}', "genericName"),
        (b'{"brand": ["nike"]}', "brand"),
        (b'{"gender": ""}', "gender"),
        (b'{"gender": "robot"}', "gender"),
        (b'{"gender": {"men": true}}', "gender"),
        # Past what the validator checks itself: Python's 4300-digit int limit, an unpaired surrogate.
        (('{"size": "' + "1" * 5000 + '"}').encode(), "size"),
        (('{"level1Cat": "' + "9" * 5000 + '"}').encode(), "level1Cat"),
        (b'{"brand": "\\ud800nike"}', "brand"),
        # The body itself: not an object, not JSON, not UTF-8, empty, nested past the recursion limit.
        (b"[1, 2]", "request"),
        (b'"men"', "request"),
        (b"null", "request"),
        (b"42", "request"),
        (b'{"size": 5', "request"),
        (b"{'size': 5}", "request"),
        (b"size=5", "request"),
        (b"", "request"),
        (b"   ", "request"),
        (b"\xff\xfe\x00garbage", "request"),
        (b"[" * 100_000 + b"]" * 100_000, "request"),
        (b'{"size": ' + b"1" * 5000 + b"}", "request"),  # a JSON number past Python's int limit
    ],
)
def test_invalid_request_is_422_naming_the_field(api, raw, field):
    assert_names_field(api.post(raw), field)


def test_422_field_matches_the_contract_validator(api):
    body = {"gender": "men", "cityTier": "Tier9", "size": 2000}
    with pytest.raises(InvalidRequest) as raised:
        parse_segment_request(body)
    answer = api.post(body)
    assert_names_field(answer, raised.value.field)
    assert answer.json["detail"][0]["msg"] == str(raised.value)


def test_unknown_field_with_an_unpaired_surrogate_is_422(api):
    answer = api.post(b'{"\\udc00x": 1}')
    assert answer.status == 422
    assert answer.json["field"] == "\\udc00x"  # escaped: UTF-8 cannot carry it


def test_no_content_type_is_still_read_as_json(run, api):
    answer = api.request("POST", "/fetchPersonas", b'{"gender": "women"}')
    assert answer.status == 200
    assert answer.json == expected_response(run, {"gender": "women"})


def test_oversized_body_is_413(api):
    answer = api.post(b'{"brand": "' + b"x" * MAX_BODY_BYTES + b'"}')
    assert answer.status == 413
    assert answer.json["field"] == "request"


def test_wrong_method_and_path(api):
    assert api.get("/fetchPersonas").status == 405
    assert api.request("POST", "/nope", b"{}").status == 404


# --------------------------------------------------------------------------- fuzz

_JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
JSON_VALUES = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_INTS = st.integers(min_value=-3, max_value=1003) | st.integers()
_INT_LIKE = _INTS | _INTS.map(str) | _INTS.map(lambda n: f" {n} ") | st.text(alphabet="0123456789+-. e", max_size=6)
# Values near each field's rules (valid and just-invalid), besides arbitrary JSON.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "gender": st.sampled_from(["men", "MALE", " m ", "women", "Female", "f", "unisex", "any", "", "x", "man"]),
    "cityTier": st.sampled_from(["Tier1", "tier 2", "TIER-3", "_2", "3", "Tier4", "tier  1", "T1", "", 1, 3, 0, 4]),
    "brand": st.sampled_from(["nike", " Puma ", "IKEA", "adidas", "", " "]) | st.text(max_size=10),
    "genericName": st.sampled_from(["shoes", "T-Shirt", "sofa", "t shirt", ""]) | st.text(max_size=10),
    "level1Cat": st.sampled_from([1, 2, "1", -1, 99]) | _INT_LIKE,
    "level2Cat": st.sampled_from([10, "10", -1]) | _INT_LIKE,
    "level3Cat": st.sampled_from([100, "100", -1]) | _INT_LIKE,
    "size": st.sampled_from([0, 1, 5, 1000, 1001, "20"]) | _INT_LIKE,
    "from": st.sampled_from([0, 1, 3, 10, "2"]) | _INT_LIKE,
}
# Valid values only, so that a good share of the bodies is answered (and compared with fetch_personas).
_CATEGORY = st.sampled_from([1, 2, 10, 100, 99, -1, "1", " 10 ", "-1", None])
VALID: dict[str, st.SearchStrategy[Any]] = {
    "gender": st.sampled_from(["men", "MALE", " m ", "women", "Female", "f", "unisex", "Any", None]),
    "cityTier": st.sampled_from(["Tier1", "tier 2", "TIER-3", "_2", "3", "tier1", 1, 2, 3, None]),
    "brand": st.sampled_from(["nike", " Puma ", "IKEA", "adidas", None]) | st.text(min_size=1, max_size=8),
    "genericName": st.sampled_from(["shoes", "T-Shirt", "sofa", "t shirt", None]),
    "level1Cat": _CATEGORY,
    "level2Cat": _CATEGORY,
    "level3Cat": _CATEGORY,
    "size": st.integers(min_value=0, max_value=1000) | st.sampled_from(["0", " 7 ", "1000", None]),
    "from": st.integers(min_value=0, max_value=8) | st.sampled_from(["0", "3", 8_999, None]),
}
VALID_BODIES = st.fixed_dictionaries({}, optional=VALID)
LEGACY_BODIES = st.fixed_dictionaries({}, optional={name: PLAUSIBLE[name] | JSON_VALUES for name in FIELDS})
BODIES = st.one_of(
    VALID_BODIES,
    LEGACY_BODIES,
    LEGACY_BODIES.flatmap(lambda body: st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2).map(body.__or__)),
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=4),
    JSON_VALUES,
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES)
def test_fuzz_json_bodies_answer_as_the_contract_says(run, api, body):
    """Never 5xx; a 422 exactly when the validator refuses, naming its field; else ``fetch_personas``'s answer."""
    answer = api.post(body)
    event(f"HTTP {answer.status}")  # --hypothesis-show-statistics: how many bodies were answered vs refused
    assert answer.status < 500, answer.text[:500]
    try:
        parse_segment_request(body)
    except InvalidRequest as error:
        assert_names_field(answer, error.field)
    else:
        assert answer.status == 200, answer.text[:500]
        assert answer.json == expected_response(run, body)


@settings(max_examples=60, deadline=None, database=None)
@given(raw=st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_fuzz_raw_bodies_never_5xx(api, raw):
    answer = api.post(raw)
    assert answer.status in (200, 422), answer.text[:500]
    if answer.status == 422:
        field = answer.json["field"]
        assert answer.json["detail"][0]["loc"] == ["body", field]


# --------------------------------------------------------------------------- GET /health


def test_health_ok(run, api):
    answer = api.get("/health")
    assert answer.status == 200, answer.text
    body = answer.json
    assert body["status"] == "ok"
    store, index = body["store"], body["index"]
    assert store["ok"] is True
    assert store["backend"] == ("sqlite" if run.settings.db_url.startswith("sqlite") else "mysql")
    assert index["ok"] is True
    assert index["backend"] == ("opensearch" if run.settings.opensearch_url else "embedded")
    assert index["documents"] == len(run.personas)
    assert "error" not in store and "error" not in index


def test_without_an_index_health_and_queries_are_503(tmp_path):
    fresh = Pipeline(tmp_path)  # a fresh, empty home: nothing imported, nothing materialised
    with fresh.env():
        app = create_app(fresh.settings)
    with serving(app) as api:
        health = api.get("/health")
        assert health.status == 503, health.text
        assert health.json["status"] == "unavailable"
        assert health.json["store"]["ok"] is True
        assert health.json["index"]["ok"] is False
        assert "no search index has been built" in health.json["index"]["error"]
        answer = api.post({"gender": "men"})
        assert answer.status == 503, answer.text
        assert "no search index has been built" in answer.json["detail"]
        assert_names_field(api.post({"size": 5.0}), "size")  # validation still comes first


def test_an_answer_past_the_time_limit_is_503_and_the_service_goes_on(run):
    """PERSONA_QUERY_TIMEOUT bounds an answer, its wait for an answer thread included."""
    with run.env():
        hurried = create_app(dataclasses.replace(run.settings, query_timeout=1e-6, serve_threads=1))
        patient = create_app(run.settings)
    with serving(hurried) as api:
        for _ in range(3):  # the abandoned answers finish in the background and free their thread
            late = api.post({"gender": "men"})
            assert late.status == 503, late.text
            assert "PERSONA_QUERY_TIMEOUT" in late.json["detail"]
        assert api.get("/health").status == 200
        assert_names_field(api.post({"size": 5.0}), "size")  # validation needs no answer thread
    with serving(patient) as api:
        assert api.post({"gender": "men"}).status == 200


def test_the_service_opens_the_index_before_its_first_request(run, monkeypatch):
    """A worker loads the published build as it starts (seconds at 1M), not on a client's first request."""
    import persona_assets.api as api_module
    from persona_assets.stores import embedded_backend

    monkeypatch.setattr(embedded_backend, "_VIEWS", {})  # nothing opened in this process yet
    warmed: list[str] = []
    warm = api_module._warm
    monkeypatch.setattr(
        api_module, "_warm", lambda backend, weights: (warmed.append(backend.name), warm(backend, weights))[1]
    )
    with run.env():
        app = create_app(run.settings)
    with serving(app):
        assert len(warmed) == 1  # at start-up, with no request sent
        if warmed == ["embedded"]:
            assert [path.name for path in embedded_backend._VIEWS] == ["index"]


def test_a_worker_busier_than_the_others_closes_the_connection_of_the_answer_it_sends(run, tmp_path, monkeypatch):
    """Under `persona serve --workers N` a worker with more answers in flight than the least busy one (past
    the margin) answers with `Connection: close`, so that client reconnects to another worker."""
    import persona_assets.api as api_module
    from persona_assets.worker_load import MARGIN, WorkerLoad, create_load_file

    path = create_load_file(tmp_path / "serve.load")
    idle_worker = WorkerLoad(path)
    release = threading.Event()
    answer = api_module._answer

    def held_answer(*args):
        release.wait(30)
        return answer(*args)

    monkeypatch.setattr(api_module, "_answer", held_answer)
    with run.env():
        app = create_app(dataclasses.replace(run.settings, serve_load_file=path, serve_threads=8))
    answers: list[Answer] = []
    with serving(app) as api:
        clients = [threading.Thread(target=lambda: answers.append(api.post({"gender": "men"}))) for _ in range(4)]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 30
        while idle_worker.others() != [4]:  # all four in flight at this worker
            assert time.monotonic() < deadline, idle_worker.others()
            time.sleep(0.01)
        release.set()
        for client in clients:
            client.join(30)
        assert idle_worker.others() == [0]  # every answer sent
    assert idle_worker.others() == []  # the worker's record is given back when it stops
    assert [a.status for a in answers] == [200] * 4
    closing = [a for a in answers if a.headers.get("connection") == "close"]
    # Sent with 3, 2, 1, 0 still in flight against the idle worker's 0: only those past the margin close.
    assert len(closing) == sum(1 for in_flight in (3, 2, 1, 0) if in_flight > MARGIN) == 1
    idle_worker.close()


def test_unreachable_store_is_503_with_the_password_hidden(tmp_path):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fresh = Pipeline(tmp_path)
    with fresh.env():
        down = fresh.settings.__class__(
            home=fresh.settings.home,
            db_url=f"mysql+pymysql://persona:s3cret@127.0.0.1:{port}/persona",
            opensearch_url=None,
        )
        app = create_app(down)
    with serving(app) as api:
        health = api.get("/health")
        assert health.status == 503
        store = health.json["store"]
        assert store["ok"] is False and store["backend"] == "mysql" and store["error"]
        assert "s3cret" not in health.text and "***" in store["url"]


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_document_is_valid_and_describes_the_endpoints(api):
    from openapi_spec_validator import validate

    answer = api.get("/openapi.json")
    assert answer.status == 200
    document = answer.json
    validate(document)
    post = document["paths"]["/fetchPersonas"]["post"]
    request_schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert set(request_schema["properties"]) == set(FIELDS)
    assert request_schema["additionalProperties"] is False
    assert {"200", "422", "503"} <= set(post["responses"])
    response_ref = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    response_schema = document["components"]["schemas"][response_ref.rsplit("/", 1)[1]]
    assert set(response_schema["properties"]) == {"total", "results"}
    assert "/health" in document["paths"]
    docs = api.get("/docs")
    assert docs.status == 200 and "text/html" in docs.headers["content-type"]


# --------------------------------------------------------------------------- persona serve


@pytest.mark.parametrize("workers", ["1", "2"])
def test_persona_serve_command(run, workers):
    """One process, or several workers each building the app from the same environment, answer alike."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with run.env():
        env = dict(os.environ)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "persona_assets.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            workers,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        api = Http("127.0.0.1", port)
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                health = api.get("/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "persona serve did not answer within 60 s"
                time.sleep(0.1)
        assert health.status == 200, health.text
        answer = api.post({"gender": "men", "size": 2})
        assert answer.status == 200
        assert answer.json == expected_response(run, {"gender": "men", "size": 2})
        if workers != "1":  # the workers share one load file under PERSONA_HOME/tmp, each once warm
            (load_file,) = (run.home / "tmp").glob(f"serve-{process.pid}.load")
            while ready_workers(load_file) < int(workers):
                assert time.monotonic() < deadline, f"{ready_workers(load_file)} of {workers} workers ready"
                time.sleep(0.1)
            assert ready_workers(load_file) == int(workers)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if workers != "1":
        assert not load_file.exists()  # removed when the service stops


def test_persona_serve_refuses_zero_workers(run):
    with run.env():
        env = dict(os.environ)
    done = subprocess.run(
        [sys.executable, "-m", "persona_assets.cli", "serve", "--workers", "0"], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "--workers" in done.stderr


def test_the_query_path_loads_no_dagster(tmp_path):
    """``persona serve`` and ``fetch_personas`` take a plain engine and SearchBackend: Dagster stays unloaded."""
    code = (
        "import sys\n"
        "import persona_assets.api, persona_assets.query.service, persona_assets.stores.backends\n"
        "from persona_assets.settings import PersonaSettings\n"
        "persona_assets.api.create_app(PersonaSettings.from_env({'PERSONA_HOME': sys.argv[1]}))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'dagster_webserver'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- PERSONA_API_TOKEN

TOKEN = "s3cret-token-0123456789abcdef"


def test_with_a_token_every_answer_needs_it_and_health_stays_open(run: Pipeline):
    with run.env():
        app = create_app(dataclasses.replace(run.settings, api_token=TOKEN))
    body = json.dumps({"size": 2}).encode()
    with serving(app) as server:

        def post(authorization: str | None) -> Answer:
            headers = {"Authorization": authorization} if authorization is not None else {}
            return server.request("POST", "/fetchPersonas", body, "application/json", headers)

        for refused in (None, "", "Bearer", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
            answer = post(refused)
            assert answer.status == 401, (refused, answer.status)
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in answer.text
        for accepted in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "):
            answer = post(accepted)
            assert answer.status == 200, (accepted, answer.text)
            assert answer.json == expected_response(run, {"size": 2})
        assert server.get("/health").status == 200
        assert server.get("/openapi.json").status == 200


def test_the_token_is_read_once_validated_and_never_shown(tmp_path):
    from persona_assets.settings import PersonaSettings

    settings = PersonaSettings.from_env({"PERSONA_HOME": str(tmp_path), "PERSONA_API_TOKEN": TOKEN})
    assert settings.api_token == TOKEN and TOKEN not in repr(settings)
    assert PersonaSettings.from_env({"PERSONA_HOME": str(tmp_path)}).api_token is None
    for bad in ("short", f" {TOKEN}"):
        with pytest.raises(ValueError, match="PERSONA_API_TOKEN") as raised:
            PersonaSettings.from_env({"PERSONA_HOME": str(tmp_path), "PERSONA_API_TOKEN": bad})
        assert bad.strip() not in str(raised.value)
