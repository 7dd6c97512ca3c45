"""Two BaseHTTPMiddleware layers over a slow endpoint, as in the bug reports (starlette#1634)."""

from __future__ import annotations

import os

if os.environ.get("DEMO_SHIM") == "1":
    import starlette_shield_patch  # noqa: F401  # the one line a service adds

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

WORK_SECONDS = 0.2


async def pass_through(request: Request, call_next: RequestResponseEndpoint) -> Response:
    return await call_next(request)


async def slow(request: Request) -> Response:
    body = await request.body()
    await anyio.sleep(WORK_SECONDS)
    return PlainTextResponse(b"done " + body)


app = Starlette(
    routes=[Route("/slow", slow, methods=["POST"])],
    middleware=[Middleware(BaseHTTPMiddleware, dispatch=pass_through)] * 2,
)
