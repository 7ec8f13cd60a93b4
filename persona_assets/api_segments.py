"""Saved segments over HTTP: ``/segments`` on ``persona serve`` (docs/audiences.md).

* ``GET /segments``: 200 ``{"segments": [definition, ...]}``, by name;
* ``POST /segments`` (a definition with its ``name``): 201 the canonical definition; 409 when the name is taken;
* ``GET /segments/{name}``: 200 the definition; 404 when nothing is saved under the name;
* ``PUT /segments/{name}`` (a definition; a ``name`` in it must be the path's): 201 created, 200 replaced;
* ``DELETE /segments/{name}``: 204; 404.
* ``GET /segments/{name}/history``: 200 ``{"segment", "members", "computations": [...]}`` newest first, or
  with ``changes=true`` ``{"segment", "members", "changes": [...]}`` (who entered and left, oldest first,
  from ``since``); ``limit`` lines at most (default 100).
* ``GET /segments/{name}/members?format=csv|parquet|jsonl``: every member, streamed (``persona segment
  export``); 409 when its members have not been computed yet.
* ``GET /segments/{a}/overlap/{b}``: both sizes, the shoppers in both, Jaccard and each side's share.

A definition comes back in its canonical form with ``createdAt`` and ``updatedAt``. Bodies are read and
refused as ``/fetchPersonas`` reads and refuses them (``api_common``): 413 past the size limit, 422 naming the
field by its path in the definition (``query.cityTier``, ``membership.top``; ``name`` for a bad name in the
path). 503 when the store cannot be reached; 500 naming the segment when a stored row no longer reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.engine import Engine

from persona_assets.api_common import (
    CRITERIA_PROPERTIES,
    InvalidRequestResponse,
    UnavailableResponse,
    int_field,
    invalid_response,
    read_json_body,
    unavailable_response,
)
from persona_assets.audiences import export
from persona_assets.audiences.definitions import (
    MAX_TOP,
    NAME_PATTERN,
    parse_named_definition,
    parse_segment_definition,
    parse_segment_name,
)
from persona_assets.audiences.membership import parse_history_window
from persona_assets.query.request import InvalidRequest
from persona_assets.query.scoring import ScoreWeights
from persona_assets.query.service import unavailable_reason
from persona_assets.stores import membership, segments
from persona_assets.stores.membership import MembersNotComputed
from persona_assets.stores.segments import SegmentExists, SegmentNotFound, SegmentUnreadable

__all__ = ["StoreAnswers", "segment_routes"]


# --------------------------------------------------------------------------- OpenAPI description


class SavedQuery(BaseModel):
    """The segment query's criteria, normalised: one category level (the most specific one given)."""

    gender: Literal["men", "women"] | None = None
    cityTier: Literal["Tier1", "Tier2", "Tier3"] | None = None
    brand: str | None = Field(default=None, description="trimmed and lower-cased")
    genericName: str | None = Field(default=None, description="trimmed and lower-cased")
    level1Cat: int | None = None
    level2Cat: int | None = None
    level3Cat: int | None = None


class Membership(BaseModel):
    """Exactly one rule."""

    top: int | None = Field(default=None, ge=1, le=MAX_TOP, description="the N best-scoring personas")
    minScore: float | None = Field(default=None, ge=0, description="every persona scoring at least this")


class SavedSegmentResponse(BaseModel):
    name: str = Field(pattern=f"^{NAME_PATTERN.pattern}$")
    query: SavedQuery
    membership: Membership
    createdAt: str = Field(description="when the segment was first saved (ISO-8601, UTC)")
    updatedAt: str = Field(description="when its definition was last saved (ISO-8601, UTC)")


class SegmentListResponse(BaseModel):
    segments: list[SavedSegmentResponse] = Field(description="every saved segment, by name")


class SegmentProblemResponse(BaseModel):
    detail: str = Field(description="what is wrong, naming the segment")


def _definition_body(*, name_required: bool) -> dict[str, Any]:
    """The request body: descriptive only; the body is validated by ``parse_segment_definition``."""
    schema = {
        "title": "SegmentDefinition",
        "description": "A segment query's criteria and a membership rule. A JSON null is the same as absent; any "
        "other field, or a value outside what is described, is a 422 naming the field (e.g. `query.cityTier`).",
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "query", "membership"] if name_required else ["query", "membership"],
        "properties": {
            "name": {
                "description": "1-63 characters of a-z, 0-9, `_` and `-`, starting with a letter or a digit; "
                "taken as it is (not trimmed, not lower-cased)."
                + ("" if name_required else " Optional here; when given it must be the name in the path."),
                "type": "string",
                "pattern": f"^{NAME_PATTERN.pattern}$",
            },
            "query": {
                "description": "The segment query's fields as POST /fetchPersonas takes them, but size and from "
                "(membership sets how many personas the segment holds). {} ranks every persona.",
                "type": "object",
                "additionalProperties": False,
                "properties": CRITERIA_PROPERTIES,
            },
            "membership": {
                "description": "Exactly one rule: the `top` N personas by score, or every persona with a score of "
                "at least `minScore`.",
                "oneOf": [
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["top"],
                        "properties": {"top": int_field(f"1-{MAX_TOP:,} personas", minimum=1, maximum=MAX_TOP)},
                    },
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["minScore"],
                        "properties": {"minScore": {"type": "number", "minimum": 0, "description": "a JSON number"}},
                    },
                ],
            },
        },
    }
    example = {
        "name": "men-tier1-boat",
        "query": {"gender": "men", "cityTier": "Tier1", "brand": "boat"},
        "membership": {"top": 5000},
    }
    return {
        "required": True,
        "content": {"application/json": {"schema": schema, "examples": {"top": {"value": example}}}},
    }


_INVALID = {
    413: {"model": InvalidRequestResponse, "description": "Body larger than the limit (field `request`)"},
    422: {"model": InvalidRequestResponse, "description": "Invalid name or definition; `field` names the field"},
}
_INVALID_NAME = {422: {"model": InvalidRequestResponse, "description": "Invalid name in the path (field `name`)"}}
_NOT_FOUND = {404: {"model": SegmentProblemResponse, "description": "No segment is saved under this name"}}
_STORE = {
    500: {"model": SegmentProblemResponse, "description": "A stored segment no longer reads as a definition"},
    503: {"model": UnavailableResponse, "description": "The relational store cannot be reached"},
}


# --------------------------------------------------------------------------- the routes


class StoreAnswers:
    """Runs store operations in a thread (SQLAlchemy blocks) and turns what they cannot do into an answer,
    never a 500 with a traceback. `persona serve` does not run create_schema (it starts even when the store is
    down): the first operation creates the audience tables."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tables_ready = False

    def _in_store(self, operation: Callable[[], Response]) -> Response:
        if not self.tables_ready:
            segments.create_tables(self.engine)
            self.tables_ready = True
        return operation()

    async def __call__(self, operation: Callable[[], Response]) -> Response:
        try:
            return await anyio.to_thread.run_sync(self._in_store, operation)
        except SegmentNotFound as error:
            return JSONResponse({"detail": str(error)}, status_code=404)
        except SegmentExists as error:
            return JSONResponse({"detail": f"{error}; PUT /segments/{error.name} replaces it"}, status_code=409)
        except SegmentUnreadable as error:
            return JSONResponse({"detail": str(error)}, status_code=500)
        except MembersNotComputed as error:
            return JSONResponse({"detail": str(error)}, status_code=409)
        except InvalidRequest as error:  # found only by reading the store (a seed too large, or unknown)
            return invalid_response(error)
        except Exception as error:
            reason = unavailable_reason(error)
            if reason is None:
                raise
            return unavailable_response(reason)


def segment_routes(answer: StoreAnswers, weights: ScoreWeights) -> APIRouter:
    """The ``/segments`` routes over the relational store of ``answer`` (``weights`` score exported members)."""
    router = APIRouter()
    engine = answer.engine

    @router.get(
        "/segments",
        response_model=SegmentListResponse,
        summary="List the saved segments",
        responses={**_STORE},
    )
    async def list_saved_segments() -> Response:
        return await answer(
            lambda: JSONResponse({"segments": [stored.to_json() for stored in segments.list_segments(engine)]})
        )

    @router.post(
        "/segments",
        status_code=201,
        response_model=SavedSegmentResponse,
        summary="Save a new segment",
        description="Validates the definition, stores it in its canonical form and answers that form.",
        responses={
            409: {"model": SegmentProblemResponse, "description": "A segment is saved under this name already"},
            **_INVALID,
            **_STORE,
        },
        openapi_extra={"requestBody": _definition_body(name_required=True)},
    )
    async def post_segment(request: Request) -> Response:
        try:
            segment = parse_segment_definition(await read_json_body(request))
        except InvalidRequest as error:
            return invalid_response(error)
        return await answer(lambda: _saved(segments.create_segment(engine, segment), created=True))

    @router.get(
        "/segments/{name}",
        response_model=SavedSegmentResponse,
        summary="Read a saved segment",
        responses={**_NOT_FOUND, **_INVALID_NAME, **_STORE},
    )
    async def get_saved_segment(name: str) -> Response:
        try:
            name = parse_segment_name(name)
        except InvalidRequest as error:
            return invalid_response(error)
        return await answer(lambda: JSONResponse(segments.get_segment(engine, name).to_json()))

    @router.put(
        "/segments/{name}",
        response_model=SavedSegmentResponse,
        summary="Save a segment under this name, replacing any",
        description="200 when a segment was replaced (it keeps its createdAt), 201 when it was created.",
        responses={
            201: {"model": SavedSegmentResponse, "description": "Created"},
            **_INVALID,
            **_STORE,
        },
        openapi_extra={"requestBody": _definition_body(name_required=False)},
    )
    async def put_segment(name: str, request: Request) -> Response:
        try:
            name = parse_segment_name(name)  # before the body: a bad path is named whatever the body holds
            segment = parse_named_definition(await read_json_body(request), name)
        except InvalidRequest as error:
            return invalid_response(error)

        def replace() -> Response:
            stored, created = segments.replace_segment(engine, segment)
            return _saved(stored, created=created)

        return await answer(replace)

    @router.delete(
        "/segments/{name}",
        status_code=204,
        response_class=Response,
        summary="Delete a saved segment",
        responses={**_NOT_FOUND, **_INVALID_NAME, 503: _STORE[503]},
    )
    async def delete_saved_segment(name: str) -> Response:
        try:
            name = parse_segment_name(name)
        except InvalidRequest as error:
            return invalid_response(error)

        def delete() -> Response:
            segments.delete_segment(engine, name)
            return Response(status_code=204)

        return await answer(delete)

    @router.get(
        "/segments/{name}/history",
        summary="A saved segment's membership over time",
        description="Its computations (members, entered, exited; newest first), or with changes=true who "
        "entered and left and when (oldest first, from since).",
        responses={**_NOT_FOUND, **_INVALID_NAME, **_STORE},
    )
    async def segment_history(
        name: str, changes: bool = False, since: str | None = None, limit: str = "100"
    ) -> Response:
        try:
            name = parse_segment_name(name)
            since_time, count = parse_history_window(since, limit)
        except InvalidRequest as error:
            return invalid_response(error)

        def history() -> Response:
            segments.get_segment(engine, name)
            body: dict[str, Any] = {"segment": name, "members": membership.member_count(engine, name)}
            if changes:
                found = membership.member_changes(engine, name, since=since_time, limit=count)
                body["changes"] = [change.to_json() for change in found]
            else:
                body["computations"] = [run.to_json() for run in membership.membership_history(engine, name, count)]
            return JSONResponse(body)

        return await answer(history)

    @router.get(
        "/segments/{name}/members",
        summary="Export a saved segment's members",
        description="Every member (ext_id, score, components, gender, city tier) in ext_id order, streamed: "
        "csv (columns ext_id, score, C, B, G, K, gender, city_tier), parquet (the same columns) or jsonl.",
        responses={
            200: {"content": {media: {} for media in export.FORMATS.values()}, "description": "The members"},
            409: {"model": SegmentProblemResponse, "description": "Its members have not been computed yet"},
            **_NOT_FOUND,
            **_INVALID_NAME,
            **_STORE,
        },
    )
    async def segment_members_export(name: str, format: str = "jsonl") -> Response:
        try:
            name = parse_segment_name(name)
            fmt = export.parse_format(format)
        except InvalidRequest as error:
            return invalid_response(error)

        def stream() -> Response:
            chunks = membership.export_members(engine, name, fmt, weights)
            disposition = f'attachment; filename="{name}.{fmt}"'
            return StreamingResponse(
                chunks, media_type=export.FORMATS[fmt], headers={"content-disposition": disposition}
            )

        return await answer(stream)

    @router.get(
        "/segments/{first}/overlap/{second}",
        summary="The overlap of two saved segments",
        description="|A|, |B|, |A ∩ B|, |A ∪ B|, Jaccard and each side's share in both; exact (the stored members).",
        responses={
            409: {"model": SegmentProblemResponse, "description": "Members not computed yet"},
            **_NOT_FOUND,
            **_INVALID_NAME,
            **_STORE,
        },
    )
    async def segment_overlap(first: str, second: str) -> Response:
        try:
            first, second = parse_segment_name(first), parse_segment_name(second)
        except InvalidRequest as error:
            return invalid_response(error)
        return await answer(lambda: JSONResponse(membership.overlap(engine, first, second).to_json()))

    return router


def _saved(stored: segments.StoredSegment, *, created: bool) -> JSONResponse:
    """201 with the new segment's location, or 200 when it replaced one."""
    if not created:
        return JSONResponse(stored.to_json())
    name = stored.segment.name
    return JSONResponse(stored.to_json(), status_code=201, headers={"location": f"/segments/{name}"})
