"""A FastAPI app as the users of FastAPI 0.87 - 0.106 (starlette 0.21.0 - 0.27.x) write it: an
@app.middleware("http") that reads the JSON body in front of a route with a pydantic model, one that
times the request, a background task, a route that raises, one that takes its time.

Run as `uvicorn demo.fastapi_app:app` (tests/test_fastapi_servers.py). It never imports the shim:
only STARLETTE_SHIELD_PATCH turns it on. Served by several workers (DEMO_STATE_DIR), each worker
records its start and clean stop as demo.servers_app does, and the finished tasks in a file.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Awaitable, Callable

import anyio
from fastapi import BackgroundTasks, FastAPI, Request
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from demo.servers_app import STATE, lifespan, write_whole

log = logging.getLogger("demo.fastapi_app")
CallNext = Callable[[Request], Awaitable[Response]]

fastapi_app = FastAPI()
finished = 0  # background tasks that ran to their end, in this worker


class Item(BaseModel):
    name: str
    price: float


class PaymentError(Exception):
    """The route's own error: the server must log it as itself."""


@fastapi_app.middleware("http")
async def log_the_json_body(request: Request, call_next: CallNext) -> Response:
    if request.method == "POST":
        try:
            log.debug("request body: %r", await request.json())
        except ClientDisconnect:  # left before the body was complete: answer anyway, as apps do
            return PlainTextResponse("incomplete body", status_code=400)
    return await call_next(request)


@fastapi_app.middleware("http")
async def add_process_time(request: Request, call_next: CallNext) -> Response:
    started = time.perf_counter()
    response = await call_next(request)
    response.headers["x-process-time"] = f"{time.perf_counter() - started:.6f}"
    return response


async def send_receipt() -> None:
    global finished
    await anyio.sleep(0.05)
    finished += 1
    if STATE:
        write_whole(STATE / f"finished-{os.getpid()}", str(finished))


@fastapi_app.post("/items")
async def create_item(item: Item, tasks: BackgroundTasks) -> dict[str, object]:
    tasks.add_task(send_receipt)
    return {"name": item.name, "price": item.price}


@fastapi_app.get("/boom")
async def boom() -> None:
    raise PaymentError("card declined")


@fastapi_app.get("/slow")
async def slow() -> dict[str, bool]:
    await anyio.sleep(0.3)
    return {"slow": True}


@fastapi_app.get("/finished")
async def finished_tasks() -> Response:
    return PlainTextResponse(str(finished))


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The FastAPI app, with each worker's start and clean stop on record (DEMO_STATE_DIR)."""
    if scope["type"] == "lifespan" and STATE:
        await lifespan(fastapi_app, scope, receive, send)
        return
    await fastapi_app(scope, receive, send)
