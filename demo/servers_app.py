"""The app that the demo, the soak command and the integration tests serve: BaseHTTPMiddleware
layers (two, or DEMO_LAYERS) over a slow endpoint, a streaming one and one whose response carries
a background task, as in the bug reports.

Served by several worker processes, it keeps its counts in files under DEMO_STATE_DIR, so that
/stats and /finished count every worker; each worker also writes there, at lifespan startup,
whether BaseHTTPMiddleware is patched in it, and at lifespan shutdown that it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if os.environ.get("DEMO_LOGGING") == "1":
    # As apps do: logging set up at startup, once starlette (and so the shim) is imported.
    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(levelname)s %(message)s")

if os.environ.get("DEMO_DUMP"):
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)

in_flight = 0  # requests that entered the app and have not left it
finished_work = 0  # background tasks that ran to their end
STATE = Path(os.environ["DEMO_STATE_DIR"]) if os.environ.get("DEMO_STATE_DIR") else None
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


async def echo(request: Request) -> Response:
    """Answers with the body; a client that leaves before it is complete makes request.body()
    raise ClientDisconnect, which this endpoint, as many do, lets out."""
    return PlainTextResponse(b"echo " + await request.body())


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
    if STATE:
        with open(STATE / "finished", "a") as record:  # one short append: whole, whatever the worker
            record.write("1\n")


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
    if STATE:
        every_worker = sum(int(path.read_text()) for path in STATE.glob("in-flight-*"))
        return PlainTextResponse(f"{every_worker - 1}")
    return PlainTextResponse(f"{in_flight - 1}")  # this request itself does not count


async def finished(request: Request) -> Response:
    if STATE:
        record = STATE / "finished"
        return PlainTextResponse(f"{len(record.read_text().splitlines()) if record.exists() else 0}")
    return PlainTextResponse(f"{finished_work}")


starlette_app = Starlette(
    routes=[
        Route("/slow", slow, methods=["POST"]),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream, methods=["POST"]),
        Route("/background", background),
        Route("/hello", hello),
        Route("/stats", stats),
        Route("/finished", finished),
    ],
    middleware=[Middleware(BaseHTTPMiddleware, dispatch=pass_through)] * LAYERS,
)


def write_whole(path: Path, text: str) -> None:
    """Write `path` so that a reader in another process finds the old text or the new, never an
    empty or half-written file (write_text truncates first: /stats read such a file as 0 requests
    in flight, and the tests counted background work before it had finished)."""
    part = path.with_name(f".{path.name}.part")  # a name that no reader's glob matches
    part.write_text(text)
    part.replace(path)


def count_in_flight(change: int) -> None:
    global in_flight
    in_flight += change
    if STATE:
        write_whole(STATE / f"in-flight-{os.getpid()}", str(in_flight))


def record_worker(event: str) -> None:
    """What this worker process is: its pid, and whether the shim has patched BaseHTTPMiddleware in
    it (the app never imports the shim: only STARLETTE_SHIELD_PATCH can have done it)."""
    assert STATE
    call = BaseHTTPMiddleware.__dict__["__call__"]
    shim = sys.modules.get("starlette_shield_patch")
    worker = {
        "pid": os.getpid(),
        "patched": type(call).__name__ != "function",
        "reason": shim.status().reason if shim else "starlette_shield_patch not imported",
        "shim_file": shim.__file__ if shim else None,  # the venv's (the wheel), not the checkout's
    }
    write_whole(STATE / f"{event}-{os.getpid()}.json", json.dumps(worker))


async def lifespan(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """`app`'s lifespan, with each worker's start and clean stop on record (DEMO_STATE_DIR); the
    FastAPI app (demo.fastapi_app) uses it too."""

    async def recording_send(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete":
            record_worker("started")
        await send(message)
        if message["type"] == "lifespan.shutdown.complete":
            record_worker("stopped")

    await app(scope, receive, recording_send)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan" and STATE:
        await lifespan(starlette_app, scope, receive, send)
        return
    if scope["type"] != "http":
        await starlette_app(scope, receive, send)
        return
    count_in_flight(+1)
    try:
        await starlette_app(scope, receive, send)
    finally:
        count_in_flight(-1)
