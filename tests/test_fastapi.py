"""FastAPI apps as people write them, on the FastAPI releases that pinned an affected starlette."""

from __future__ import annotations

import time
from typing import AsyncIterator

import anyio
import pytest

pytest.importorskip("fastapi", reason="FastAPI is installed by the nox `fastapi` sessions only")

from fastapi import BackgroundTasks, Depends, FastAPI, Request
from starlette.responses import Response

from conftest import shim_state
from tests.asgi import (
    STARLETTE_AFFECTED,
    CallNext,
    client_gone_after_body,
    client_reads_then_closes,
    client_stays,
    http_scope,
    run,
)

pytestmark = pytest.mark.fastapi


ended: dict[str, float] = {}  # perf_counter() when each piece of work after the response ended


async def database_session() -> AsyncIterator[str]:
    """A `yield` dependency whose teardown awaits, as `await session.close()` does."""
    yield "session"
    await anyio.sleep(0.05)
    ended["teardown"] = time.perf_counter()


async def send_email() -> None:
    await anyio.sleep(0.05)
    ended["background"] = time.perf_counter()


def build() -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def add_timing_header(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        response.headers["x-layer"] = "timing"
        return response

    @app.middleware("http")
    async def log_requests(request: Request, call_next: CallNext) -> Response:
        return await call_next(request)

    @app.post("/items")
    async def create(request: Request) -> dict[str, str]:
        body = await request.body()
        await anyio.sleep(0.01)
        return {"received": body.decode()}

    @app.post("/orders")
    async def order(tasks: BackgroundTasks, session: str = Depends(database_session)) -> dict[str, str]:
        tasks.add_task(send_email)
        return {"session": session}

    return app


def test_fastapi_pins_an_affected_starlette() -> None:
    import fastapi
    import starlette

    assert STARLETTE_AFFECTED, (fastapi.__version__, starlette.__version__)


def test_a_client_gone_while_the_endpoint_works_breaks_only_unpatched(shim: str, backend: str) -> None:
    outcome = run(build(), client_gone_after_body(), backend=backend, scope=http_scope(path="/items"))

    if shim == "unpatched":
        assert outcome.no_response_returned, outcome
    else:
        assert outcome.clean, outcome


def test_normal_request_is_unchanged(backend: str) -> None:
    answers = []
    for applied in (False, True):
        with shim_state(applied):
            outcome = run(build(), client_stays(), backend=backend, scope=http_scope(path="/items"))
        assert outcome.clean, outcome
        answers.append(outcome.messages)

    assert answers[0] == answers[1]
    start, body = answers[1][0], answers[1][1:]
    assert start["status"] == 200 and (b"x-layer", b"timing") in start["headers"]
    assert b"".join(message.get("body", b"") for message in body) == b'{"received":"hello"}'


@pytest.mark.parametrize("client", ["stays", "closes-after-response"])
def test_background_tasks_and_dependency_teardown_finish(shim: str, backend: str, client: str) -> None:
    ended.clear()
    receive = client_stays() if client == "stays" else client_reads_then_closes()

    outcome = run(build(), receive, backend=backend, scope=http_scope(path="/orders"))

    assert outcome.messages and outcome.messages[0]["status"] == 200
    over = outcome.response_over_at
    finished = set(ended) == {"teardown", "background"} and over is not None and over < min(ended.values())
    assert finished is (shim == "patched"), (ended, over)
