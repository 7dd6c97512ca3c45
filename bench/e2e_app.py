"""The app of the end-to-end benchmark: two pass-through BaseHTTPMiddleware layers, a plain answer."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


async def pass_through(request: Request, call_next: RequestResponseEndpoint) -> Response:
    return await call_next(request)


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello, world")


app = Starlette(
    routes=[Route("/", hello)],
    middleware=[Middleware(BaseHTTPMiddleware, dispatch=pass_through)] * 2,
)
