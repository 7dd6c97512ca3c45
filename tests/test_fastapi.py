"""FastAPI apps as people write them, on the FastAPI releases that pinned an affected starlette."""

from __future__ import annotations

import anyio
import pytest

pytest.importorskip("fastapi", reason="FastAPI is installed by the nox `fastapi` sessions only")

from fastapi import FastAPI, Request
from starlette.responses import Response

from conftest import shim_state
from tests.asgi import (
    STARLETTE_AFFECTED,
    CallNext,
    client_gone_after_body,
    client_stays,
    http_scope,
    run,
)

pytestmark = pytest.mark.fastapi


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

    return app


def test_fastapi_pins_an_affected_starlette() -> None:
    import fastapi
    import starlette

    assert STARLETTE_AFFECTED, (fastapi.__version__, starlette.__version__)


def test_client_gone_while_endpoint_works(shim: str, backend: str) -> None:
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
