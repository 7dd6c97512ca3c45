"""The app that the demo, the soak command and the integration tests serve: BaseHTTPMiddleware
layers (two, or DEMO_LAYERS) over a slow endpoint, a streaming one and one whose response carries
a background task, as in the bug reports."""

from __future__ import annotations

import os

if os.environ.get("DEMO_SHIM") == "1":
    import starlette_shield_patch  # noqa: F401

from typing import AsyncIterator

import anyio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

if os.environ.get("DEMO_DUMP"):
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)

in_flight = 0  # requests that entered the app and have not left it
finished_work = 0  # background tasks that ran to their end
LAYERS = int(os.environ.get("DEMO_LAYERS", "2"))  # BaseHTTPMiddleware layers; 0.28 - 0.38.2 need 4


async def pass_through(request: Request, call_next: RequestResponseEndpoint) -> Response:
    return await call_next(request)


async def slow(request: Request) -> Response:
    try:
        body = await request.body()
    except ClientDisconnect:  # left before the body was complete: answer anyway, as apps do
        return PlainTextResponse("incomplete body", status_code=400)
    await anyio.sleep(float(request.query_params.get("work", "0.2")))
    return PlainTextResponse(b"done " + body)


async def stream(request: Request) -> Response:
    try:
        await request.body()
    except ClientDisconnect:
        return PlainTextResponse("incomplete body", status_code=400)
    chunks = int(request.query_params.get("chunks", "20"))
    pause = float(request.query_params.get("pause", "0.01"))

    async def body() -> AsyncIterator[bytes]:
        for number in range(chunks):
            yield b"chunk %03d\n" % number
            await anyio.sleep(pause)

    return StreamingResponse(body(), media_type="text/plain")


async def work_after_response(seconds: float, fails: bool) -> None:
    global finished_work
    await anyio.sleep(seconds)
    if fails:
        raise ValueError("from the work after the response")
    finished_work += 1


async def background(request: Request) -> Response:
    """Answers at once; the response carries `work` seconds of background work (`fail=1`: then raises)."""
    task = BackgroundTask(
        work_after_response, float(request.query_params.get("work", "0.3")), "fail" in request.query_params
    )
    if "stream" in request.query_params:

        async def body() -> AsyncIterator[bytes]:
            for number in range(3):
                yield b"chunk %03d\n" % number

        return StreamingResponse(body(), media_type="text/plain", background=task)
    return PlainTextResponse("done", background=task)


async def hello(request: Request) -> Response:
    """A GET that reads no body and works briefly (3 ms by default)."""
    await anyio.sleep(float(request.query_params.get("work", "0.003")))
    return PlainTextResponse("hello")


async def stats(request: Request) -> Response:
    return PlainTextResponse(f"{in_flight - 1}")  # this request itself does not count


async def finished(request: Request) -> Response:
    return PlainTextResponse(f"{finished_work}")


starlette_app = Starlette(
    routes=[
        Route("/slow", slow, methods=["POST"]),
        Route("/stream", stream, methods=["POST"]),
        Route("/background", background),
        Route("/hello", hello),
        Route("/stats", stats),
        Route("/finished", finished),
    ],
    middleware=[Middleware(BaseHTTPMiddleware, dispatch=pass_through)] * LAYERS,
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global in_flight
    if scope["type"] != "http":
        await starlette_app(scope, receive, send)
        return
    in_flight += 1
    try:
        await starlette_app(scope, receive, send)
    finally:
        in_flight -= 1
