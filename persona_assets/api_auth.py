"""An optional bearer token in front of the query API (``PERSONA_API_TOKEN``).

Marketers' tools call the API from other hosts; a deployment that cannot put it behind an
authenticating proxy sets a token, and every request but the health probe and the API's own
description must then carry ``Authorization: Bearer <token>``. The comparison takes the same time
whatever the token given, so timing tells nothing about the right one.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

# Open without the token: load balancers probe /health; the OpenAPI document describes, it answers nothing.
OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"})


class BearerToken:
    """Plain ASGI middleware (no per-request task or body copy, unlike Starlette's ``BaseHTTPMiddleware``)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode("utf-8")

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {
                "detail": "this API needs 'Authorization: Bearer <token>' with the token it was given (PERSONA_API_TOKEN)"
            },
            status_code=401,
            headers={"www-authenticate": 'Bearer realm="persona"'},
        )
        await response(scope, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = value
                break
        scheme, _, token = given.partition(b" ")
        # compare_digest on the token even when the scheme is wrong: the time never depends on which failed
        matches = hmac.compare_digest(token.strip(), self.token)
        return matches and scheme.lower() == b"bearer"
