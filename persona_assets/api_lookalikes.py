"""Lookalike audiences over HTTP: ``POST /lookalikes`` on ``persona serve`` (docs/audiences.md).

The body names a seed (``{"segment": NAME}`` or ``{"extIds": [...]}``) and optionally ``size``,
``minSimilarity``, ``includeSeed``, ``gender`` and ``cityTier``; the answer is the seed as read (its size,
the ext_ids without a persona, the centroid's keys) and the lookalikes best first, each with its similarity
and the attributes it shares most with the seed. 422 names the field (``seed.extIds[3]``, ``size``); 404 for
a seed segment not saved, 409 for one whose members are not computed yet; 503 when a store cannot answer.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from persona_assets.api_common import InvalidRequestResponse, UnavailableResponse, invalid_response, read_json_body
from persona_assets.api_segments import StoreAnswers
from persona_assets.audiences.lookalikes import DEFAULT_LOOKALIKES, MAX_SEED, parse_lookalike_request
from persona_assets.query.lookalikes import find_lookalikes
from persona_assets.query.request import MAX_WINDOW, InvalidRequest
from persona_assets.query.scoring import ScoreWeights
from persona_assets.stores.search_backend import SearchBackend

__all__ = ["LOOKALIKE_BODY_BYTES", "lookalike_routes"]

#: A seed of MAX_SEED ext_ids of up to 255 bytes each fits.
LOOKALIKE_BODY_BYTES = 16 << 20


class SharedAttributeModel(BaseModel):
    dimension: Literal["city", "brand", "generic", "category"]
    key: str
    contribution: float = Field(description="what this attribute adds to the similarity")


class LookalikeModel(BaseModel):
    ext_id: str
    similarity: float = Field(ge=0, le=1)
    gender: Literal["men", "women", "unisex"]
    cityTier: Literal["Tier1", "Tier2", "Tier3"] | None = Field(description="the tier of most of the city map")
    shared: list[SharedAttributeModel] = Field(description="the strongest shared attributes, at most 5")


class SeedModel(BaseModel):
    segment: str | None = Field(default=None, description="the seed's saved segment, when it is one")
    requested: int = Field(description="shoppers named by the seed")
    found: int = Field(description="of them, those with a persona: the centroid is their mean")
    missingCount: int
    missing: list[str] = Field(description="the first 20 shoppers of the seed without a persona")
    centroid: dict[str, dict[str, float]] = Field(description="per dimension, the centroid's keys and weights")


class LookalikesResponse(BaseModel):
    seed: SeedModel
    results: list[LookalikeModel] = Field(description="best first; ties by ext_id")


_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["seed"],
                "properties": {
                    "seed": {
                        "type": "object",
                        "description": "exactly one of segment (a saved segment's members) or extIds",
                        "properties": {
                            "segment": {"type": "string"},
                            "extIds": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_SEED},
                        },
                    },
                    "size": {"type": "integer", "minimum": 1, "maximum": MAX_WINDOW, "default": DEFAULT_LOOKALIKES},
                    "minSimilarity": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
                    "includeSeed": {"type": "boolean", "default": False},
                    "gender": {"type": "string", "description": "men/women (as the segment query reads it)"},
                    "cityTier": {"type": "string", "description": "the shopper's home tier: Tier1-Tier3"},
                },
            }
        }
    },
}


def lookalike_routes(answer: StoreAnswers, backend: SearchBackend, weights: ScoreWeights) -> APIRouter:
    """``POST /lookalikes`` over the store of ``answer`` and the search ``backend``."""
    router = APIRouter()

    @router.post(
        "/lookalikes",
        response_model=LookalikesResponse,
        summary="Shoppers most like a seed audience",
        description="Similarity: the weighted mean of cosines between each map and the seed's centroid "
        "(docs/audiences.md). Ranked exactly over every persona.",
        responses={
            404: {"description": "The seed segment is not saved"},
            409: {"description": "The seed segment's members have not been computed yet"},
            413: {"model": InvalidRequestResponse, "description": f"Body larger than {LOOKALIKE_BODY_BYTES} bytes"},
            422: {"model": InvalidRequestResponse, "description": "Invalid request; `field` names the field"},
            503: {"model": UnavailableResponse, "description": "A store cannot answer now"},
        },
        openapi_extra={"requestBody": _REQUEST_BODY},
    )
    async def post_lookalikes(request: Request) -> Response:
        try:
            payload: Any = await read_json_body(request, LOOKALIKE_BODY_BYTES)
            parse_lookalike_request(payload)  # a bad request is named before any store is read
        except InvalidRequest as error:
            return invalid_response(error)
        return await answer(lambda: JSONResponse(find_lookalikes(payload, answer.engine, backend, weights)))

    return router
