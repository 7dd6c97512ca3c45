"""The app of the servers' pass-through tests: a layer whose dispatch reads the JSON body of a POST
(as logging and auth middleware do), GZip above it, and endpoints that echo the body or answer
with an empty body, and a file.

Run as `uvicorn demo.through_app:app`; DEMO_SHIM=1 imports the shim first.
"""

from __future__ import annotations

import logging
import os

if os.environ.get("DEMO_SHIM") == "1":
    import starlette_shield_patch  # noqa: F401

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger("demo.through_app")


async def logs_the_json_body(request: Request, call_next: RequestResponseEndpoint) -> Response:
    if request.method == "POST":
        try:
            body = await request.json()
        except ClientDisconnect:  # left before the body was complete: answer anyway, as apps do
            return PlainTextResponse("incomplete body", status_code=400)
        log.debug("request body: %r", body)
    return await call_next(request)


async def echo_json(request: Request) -> Response:
    return JSONResponse({"echo": await request.json()})


async def empty(request: Request) -> Response:
    return Response(status_code=int(request.query_params["status"]))


async def file(request: Request) -> Response:
    """The file DEMO_FILE names: with a server that offers pathsend (granian), 0.36.0 - 0.38.0's
    FileResponse sends its path instead of its body."""
    return FileResponse(os.environ["DEMO_FILE"])


app = Starlette(
    routes=[Route("/json", echo_json, methods=["POST"]), Route("/empty", empty), Route("/file", file)],
    middleware=[Middleware(GZipMiddleware), Middleware(BaseHTTPMiddleware, dispatch=logs_the_json_body)],
)
