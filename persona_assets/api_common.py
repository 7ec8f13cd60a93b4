"""What the HTTP API's routes share (``api.py``'s ``/fetchPersonas``, ``api_segments.py``'s ``/segments``).

Bodies are read raw, at most ``MAX_BODY_BYTES``, and decoded here; the contract's own validators judge
them, never pydantic, so every door accepts and refuses alike. One shape for every refusal:

* 422 ``{"detail": [{"loc": ["body", FIELD], "msg": "FIELD: ...", "type": "value_error"}], "field": FIELD}``
  (``request`` when the body is not JSON or not an object);
* 413 in the same shape (field ``request``) for a body over ``MAX_BODY_BYTES``;
* 503 ``{"detail": ...}`` when a store cannot answer now.

The pydantic models and the query's field descriptions only describe all this in the OpenAPI document.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from persona_assets.query.request import InvalidRequest
from persona_assets.query.service import MAX_MESSAGE_CHARS

__all__ = [
    "CRITERIA_PROPERTIES",
    "MAX_BODY_BYTES",
    "BodyTooLarge",
    "ErrorItem",
    "InvalidRequestResponse",
    "UnavailableResponse",
    "int_field",
    "invalid_response",
    "read_json_body",
    "unavailable_response",
]

#: A segment request or definition is a few hundred bytes; anything past this is refused (413) before it is parsed.
MAX_BODY_BYTES = 1 << 20


# --------------------------------------------------------------------------- OpenAPI descriptions


def int_field(description: str, **integer: Any) -> dict[str, Any]:
    """An integer field the validator also takes as a string holding one, or null."""
    return {
        "description": description,
        "anyOf": [
            {"type": "integer", **integer},
            {"type": "string", "pattern": r"^\s*-?[0-9]+\s*$", "description": "a string holding an integer"},
            {"type": "null"},
        ],
    }


def _name_field(description: str) -> dict[str, Any]:
    return {"description": description, "anyOf": [{"type": "string", "pattern": r"\S"}, {"type": "null"}]}


#: The segment query's criteria (every request field but the page: ``size``, ``from``) as the contract reads them.
CRITERIA_PROPERTIES: dict[str, Any] = {
    "gender": {
        "description": "men/male/m or women/female/f (any case, trimmed) filter on the persona's gender; "
        "unisex or any: no filter.",
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "examples": ["men", "Female", "any"],
    },
    "cityTier": {
        "description": "Tier 1-3: optional `tier`, an optional space, `-` or `_`, then 1-3 (any case); "
        "or the integers 1-3.",
        "anyOf": [
            {"type": "string", "pattern": r"^\s*([Tt][Ii][Ee][Rr])?[ _-]?[1-3]\s*$"},
            {"type": "integer", "minimum": 1, "maximum": 3},
            {"type": "null"},
        ],
        "examples": ["Tier1", "tier 2", "TIER-3", 1],
    },
    "brand": _name_field("Brand name, case-insensitive (trimmed, lower-cased); must not be empty."),
    "genericName": _name_field("Generic product name, case-insensitive (trimmed, lower-cased); must not be empty."),
    **{
        f"level{n}Cat": int_field(f"Level-{n} category id; -1 means not given. The most specific level given wins.")
        for n in (1, 2, 3)
    },
}


class ErrorItem(BaseModel):
    loc: list[str] = Field(description='["body", FIELD]')
    msg: str
    type: Literal["value_error"]


class InvalidRequestResponse(BaseModel):
    detail: list[ErrorItem]
    field: str = Field(description="the offending request field; `request` when the body itself is at fault")


class UnavailableResponse(BaseModel):
    detail: str


# --------------------------------------------------------------------------- bodies and refusals


class BodyTooLarge(InvalidRequest):
    """A body past its limit: refused with 413, not 422."""

    def __init__(self, limit: int) -> None:
        super().__init__("request", f"the body is larger than {limit} bytes")


async def read_json_body(request: Request, limit: int = MAX_BODY_BYTES) -> object:
    """The request's body as decoded JSON; :class:`InvalidRequest` on field ``request`` when it is not JSON,
    :class:`BodyTooLarge` as soon as it passes ``limit`` bytes (the rest is never read)."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise BodyTooLarge(limit)
    return _decode(bytes(raw))


def _decode(raw: bytes) -> object:
    if not raw.strip():
        raise InvalidRequest("request", "the request body is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidRequest("request", "the request body is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, integers past Python's digit limit
        raise InvalidRequest("request", f"the request body is not valid JSON ({error})") from None


def invalid_response(error: InvalidRequest) -> JSONResponse:
    """The refusal of ``error``: 413 for a body too large, else 422, naming the field."""
    # An unknown field's name is echoed: escape what UTF-8 cannot carry (unpaired surrogates).
    field, message = (text.encode("utf-8", "backslashreplace").decode("utf-8") for text in (error.field, error.message))
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    item = {"loc": ["body", field], "msg": f"{field}: {message}", "type": "value_error"}
    status_code = 413 if isinstance(error, BodyTooLarge) else 422
    return JSONResponse({"detail": [item], "field": field}, status_code=status_code)


def unavailable_response(message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=503)
