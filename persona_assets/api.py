"""The segment query over HTTP (``persona serve``): ``POST /fetchPersonas``, ``GET /health``, the saved
segments' ``/segments`` (``api_segments.py``) and the OpenAPI document.

``POST /fetchPersonas`` takes the legacy request body and answers the contract's response
(``persona_assets.query.service.fetch_personas``). The body is read raw and validated by the
contract's own validator (``parse_segment_request``), never by pydantic, so the HTTP door accepts
and rejects exactly what ``persona query`` does; the request schema in the OpenAPI document only
describes it. Answers:

* 200 ``{"total": N, "results": [...]}``;
* 422 ``{"detail": [{"loc": ["body", FIELD], "msg": ..., "type": "value_error"}], "field": FIELD}``
  for a contract violation, naming the field (``request`` when the body is not JSON or not an object);
* 413 (same shape, field ``request``) for a body over ``MAX_BODY_BYTES``
  (these refusals, and reading the body, are shared with ``/segments``: ``api_common.py``);
* 503 ``{"detail": ...}`` when no index has been built yet, a store cannot be reached, or the answer
  (its wait for a free answer thread included) took longer than ``PERSONA_QUERY_TIMEOUT`` seconds.

``GET /health`` answers 200 when the relational store and the search index both answer, else 503,
with ``{"status": "ok"|"unavailable", "store": {...}, "index": {...}}``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal, cast

import anyio
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from persona_assets.api_auth import BearerToken
from persona_assets.api_common import (
    CRITERIA_PROPERTIES,
    MAX_BODY_BYTES,
    InvalidRequestResponse,
    UnavailableResponse,
    int_field,
    invalid_response,
    read_json_body,
    unavailable_response,
)
from persona_assets.api_lookalikes import lookalike_routes
from persona_assets.api_segments import StoreAnswers, segment_routes
from persona_assets.query.request import (
    DEFAULT_SIZE,
    MAX_SIZE,
    MAX_WINDOW,
    InvalidRequest,
    SegmentQuery,
    parse_segment_request,
)
from persona_assets.query.scoring import ScoreWeights
from persona_assets.query.service import describe_error, fetch_personas, unavailable_reason
from persona_assets.settings import PersonaSettings
from persona_assets.stores import relational
from persona_assets.stores.backends import search_backend_for
from persona_assets.stores.opensearch_client import redact_url
from persona_assets.stores.search_backend import TIERS, Centroid, LookalikeSearch, SearchBackend
from persona_assets.worker_load import WorkerLoad

__all__ = ["MAX_BODY_BYTES", "create_app"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- OpenAPI description

#: The request body as the contract reads it (sections 4 and 6); descriptive only, see the module docstring.
REQUEST_SCHEMA: dict[str, Any] = {
    "title": "FetchPersonasRequest",
    "description": (
        "A segment query in the legacy field names; every field is optional and a JSON null is the same as "
        "absent. Any other field, or a value outside what is described here, is a 422 naming the field."
    ),
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **CRITERIA_PROPERTIES,
        "size": int_field(
            f"Page size, 0-{MAX_SIZE} (default {DEFAULT_SIZE}).", minimum=0, maximum=MAX_SIZE, default=DEFAULT_SIZE
        ),
        "from": int_field(
            f"Offset of the page, 0 or more (default 0); past the end gives no results. from + size is at most "
            f"{MAX_WINDOW:,} (whole audiences are for exports).",
            minimum=0,
            maximum=MAX_WINDOW,
        ),
    },
}

_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": REQUEST_SCHEMA,
            "examples": {
                "segment": {"value": {"gender": "men", "cityTier": "Tier1", "brand": "nike", "size": 5}},
                "category": {"value": {"level1Cat": 1, "level2Cat": "10", "level3Cat": -1, "from": 20}},
            },
        }
    },
}


class Components(BaseModel):
    """The four score components as used: C (city tier), B (brand), G (generic name), K (category)."""

    C: float
    B: float
    G: float
    K: float


class Persona(BaseModel):
    ext_id: str
    score: float = Field(description="0.15·C + 0.35·B + 0.20·G + 0.30·K (configurable weights)")
    components: Components
    gender: Literal["men", "women", "unisex"]
    visited: list[str] = Field(description="matching pids the user visited, most recent first, at most 50")
    purchased: list[str] = Field(description="matching pids the user bought, most recent first, at most 50")
    search_terms: list[str] = Field(
        description="the user's queries containing the brand or generic name (all when neither is given), "
        "most recent first, at most 20"
    )


class FetchPersonasResponse(BaseModel):
    total: int = Field(description="personas passing the gender filter")
    results: list[Persona] = Field(description="by score descending, then ext_id ascending")


class StoreHealth(BaseModel):
    ok: bool
    backend: str = Field(description="the SQLAlchemy dialect: sqlite or mysql")
    url: str | None = Field(default=None, description="the database URL, password hidden")
    error: str | None = None


class IndexHealth(BaseModel):
    ok: bool
    backend: Literal["embedded", "opensearch"]
    location: str = Field(description="the index directory, or the OpenSearch URL (password hidden) and alias")
    documents: int | None = Field(default=None, description="personas in the live build")
    error: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    store: StoreHealth
    index: IndexHealth


# --------------------------------------------------------------------------- the app


def create_app(settings: PersonaSettings | None = None, *, weights: ScoreWeights | None = None) -> FastAPI:
    """The HTTP service over the stores ``settings`` names (default: from the environment).

    Score weights are read once, here (``PERSONA_SCORE_WEIGHTS``), so a bad value fails at start-up.
    Nothing is connected to until the app starts (its lifespan opens the index; see ``_warm``).
    """
    settings = settings or PersonaSettings.from_env()
    weights = weights or settings.weights
    engine = relational.create_engine(settings.db_url)
    backend = search_backend_for(settings)

    # Under `persona serve --workers N`: this worker's share of the answers in flight (worker_load), taken
    # once the worker is warm, so the load file lists the workers ready to answer.
    load: WorkerLoad | None = None

    @contextlib.asynccontextmanager
    async def warm_then_serve(_app: FastAPI) -> AsyncIterator[None]:
        nonlocal load
        await anyio.to_thread.run_sync(_warm, backend, weights)
        if settings.serve_load_file is not None:
            load = WorkerLoad(settings.serve_load_file)
        try:
            yield
        finally:
            if load is not None:
                load.close()

    app = FastAPI(
        lifespan=warm_then_serve,
        title="persona segment query",
        summary="Shopper personas ranked for a segment (the persona contract, section 4).",
        version="1",
    )
    app.state.settings = settings
    if settings.api_token:
        app.add_middleware(BearerToken, token=settings.api_token)
    answering = anyio.CapacityLimiter(settings.answer_threads)  # the rest queue in arrival order

    @app.post(
        "/fetchPersonas",
        response_model=FetchPersonasResponse,
        summary="Rank personas for a segment",
        description=(
            "Validates the body with the contract's rules, ranks the personas in the search index and enriches "
            "each with its visited and purchased pids and search terms from the relational store."
        ),
        responses={
            413: {"model": InvalidRequestResponse, "description": f"Body larger than {MAX_BODY_BYTES} bytes"},
            422: {"model": InvalidRequestResponse, "description": "Invalid request; `field` names the field"},
            503: {
                "model": UnavailableResponse,
                "description": "No index built yet, a store is unreachable, or no answer within PERSONA_QUERY_TIMEOUT",
            },
        },
        openapi_extra={"requestBody": _REQUEST_BODY},
    )
    async def post_fetch_personas(request: Request) -> JSONResponse:
        try:  # a bad request is a 422 however busy the service is: checked here, before any wait
            payload = await read_json_body(request)
            _validate(payload)
        except InvalidRequest as error:
            return invalid_response(error)
        if load is not None:
            load.started()
        try:
            with anyio.fail_after(settings.query_timeout):
                # abandoned on time-out: the thread finishes its answer, nobody waits for it
                response = await anyio.to_thread.run_sync(
                    _answer, payload, engine, backend, weights, limiter=answering, abandon_on_cancel=True
                )
        except TimeoutError:
            response = unavailable_response(
                f"no answer within {settings.query_timeout:g} s (PERSONA_QUERY_TIMEOUT); the service is busy, "
                "try again later"
            )
        finally:
            if load is not None:
                load.finished()
        if load is not None and load.busier_than_others():
            response.headers["connection"] = "close"  # this client reconnects, to a less busy worker
        return response

    @app.get(
        "/health",
        response_model=HealthResponse,
        summary="Store and index reachability",
        responses={503: {"model": HealthResponse, "description": "The store or the index cannot answer"}},
    )
    def get_health() -> JSONResponse:
        body = {"store": _store_health(settings, engine), "index": _index_health(settings, backend)}
        ok = body["store"]["ok"] and body["index"]["ok"]
        return JSONResponse({"status": "ok" if ok else "unavailable", **body}, status_code=200 if ok else 503)

    store_answers = StoreAnswers(engine)
    app.include_router(segment_routes(store_answers, weights))
    app.include_router(lookalike_routes(store_answers, backend, weights))
    return app


def _warm(backend: SearchBackend, weights: ScoreWeights) -> None:
    """Answer a query per city tier and one lookalike search before the first request: loading a 1M-persona
    embedded build takes seconds (and its lookalike arrays two more, and compiling the lookalike loop one),
    and each tier's first query orders every persona by that tier (~0.1 s at 1M), which the first clients
    of each worker would otherwise wait (or time out) for, with every answer queued behind them. A service
    started before the first build, or with the index unreachable, still starts and answers 503.

    Then everything loaded so far is moved out of the garbage collector's sight (``gc.freeze``): it lives
    as long as the process, and a full collection walking it every so often made one answer in twenty
    take twice as long (a lookalike's p99 at 1M: 124 ms, 77 ms frozen; docs/benchmarks.md)."""
    try:
        for tier_name in (None, *TIERS):  # a category asked for, so the compiled candidates pass is loaded too
            backend.search(SegmentQuery(size=1, city_tier=tier_name, category_id="0"), weights)
        tier = Centroid(keys={"city": ("Tier1",)}, weights={"city": (1.0,)}, coefficients={"city": (1.0,)})
        backend.lookalikes(LookalikeSearch(centroid=tier, size=1))
    except Exception as error:  # reported by /health and by each answer; not fatal here
        logger.warning("persona serve: the index could not be opened at start-up (%s)", describe_error(error))
    gc.freeze()


def _answer(payload: object, engine: Engine, backend: SearchBackend, weights: ScoreWeights) -> JSONResponse:
    """Answer one validated request (in an answer thread: SQLAlchemy and the index block)."""
    try:
        response = fetch_personas(payload, engine, backend, weights)
    except InvalidRequest as error:  # validated above; kept so a contract error can never become a 500
        return invalid_response(error)
    except Exception as error:
        reason = unavailable_reason(error)
        if reason is None:
            raise
        return unavailable_response(reason)
    return JSONResponse(response)


def _validate(payload: object) -> None:
    """``parse_segment_request``, with any other failure of it turned into an ``InvalidRequest`` naming the field.

    The validator names the field for every rule it checks; a value can still break it in another way (a
    string of more than 4300 digits exceeds Python's int conversion limit, a very deep value its recursion
    limit). Then the field is found by validating each field alone, so the answer is a 422, never a 500.
    """
    try:
        parse_segment_request(payload)
    except InvalidRequest:
        raise
    except (ValueError, RecursionError) as error:
        if isinstance(payload, Mapping):
            for name, value in payload.items():
                try:
                    parse_segment_request({name: value})
                except (ValueError, RecursionError):
                    raise InvalidRequest(str(name), f"invalid value ({error})") from error
        raise InvalidRequest("request", f"invalid request ({error})") from error
    # JSON can escape an unpaired surrogate ("\\ud800"); such a string is not Unicode text and no store takes it.
    for name, value in cast(Mapping[str, Any], payload).items():  # a Mapping: the validator accepted it
        if isinstance(value, str) and not _is_unicode(value):
            raise InvalidRequest(str(name), "holds an unpaired surrogate escape (\\ud800-\\udfff); not valid Unicode")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _store_health(settings: PersonaSettings, engine: Engine) -> dict[str, Any]:
    health: dict[str, Any] = {"ok": False, "backend": "unknown", "url": None}
    try:
        url = sa.engine.make_url(settings.db_url)
        health["backend"] = url.get_dialect().name
        health["url"] = url.render_as_string(hide_password=True)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as error:  # reported, not raised: this is what /health is for
        health["error"] = describe_error(error)
        return health
    health["ok"] = True
    return health


def _index_health(settings: PersonaSettings, backend: SearchBackend) -> dict[str, Any]:
    if settings.opensearch_url:
        health: dict[str, Any] = {
            "ok": False,
            "backend": "opensearch",
            "location": f"{redact_url(settings.opensearch_url)} alias {settings.opensearch_alias}",
        }
    else:
        health = {"ok": False, "backend": "embedded", "location": str(settings.layout.index_dir)}
    try:
        health["documents"] = int(backend.document_count())
    except Exception as error:  # reported, not raised
        health["error"] = unavailable_reason(error) or describe_error(error)
        return health
    health["ok"] = True
    return health
