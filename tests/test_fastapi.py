"""FastAPI apps as people write them, on the FastAPI releases that pinned an affected starlette."""

from __future__ import annotations

import time
from pathlib import Path
from typing import AsyncIterator

import anyio
import pytest

pytest.importorskip("fastapi", reason="FastAPI is installed by the nox `fastapi` sessions only")

from fastapi import BackgroundTasks, Depends, FastAPI, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from conftest import shim_named, shim_state
from tests.asgi import (
    ANYIO_MAJOR,
    CAPTURES_INNER_ERRORS,
    GROUPS_ESCAPE,
    HANGS_AFTER,
    LOSES_THE_START,
    STARLETTE_AFFECTED,
    STARLETTE_CANCELS,
    STARLETTE_RELEASE,
    CallNext,
    Outcome,
    body_ends_at_last_message,
    client_gone_at_once,
    client_reads_then_closes,
    client_stays,
    http_scope,
    layers_that_show_the_bug,
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


def build(layers: int = 2) -> FastAPI:
    """`layers` @app.middleware("http") functions: timing, then request logging, auth, request id..."""
    app = FastAPI()

    @app.middleware("http")
    async def add_timing_header(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        response.headers["x-layer"] = "timing"
        return response

    for _ in range(layers - 1):

        @app.middleware("http")
        async def log_requests(request: Request, call_next: CallNext) -> Response:
            return await call_next(request)

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        await anyio.sleep(0.003)
        return {"hello": "world"}

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


def test_a_client_gone_breaks_only_unpatched(shim: str, backend: str) -> None:
    """As many middleware functions as this starlette needs to show it: two on 0.15 - 0.20
    (pinned by FastAPI 0.69 - 0.86), four on 0.28 - 0.38.2 (FastAPI 0.108 - 0.112)."""
    app = build(layers=layers_that_show_the_bug())

    outcome = run(app, client_gone_at_once, backend=backend, scope=http_scope("GET", "/hello"))

    if shim == "unpatched" and LOSES_THE_START:  # not 0.21.0 - 0.27.x (FastAPI 0.87 - 0.106)
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

    if STARLETTE_RELEASE < (0, 20, 1):  # skip-empty-chunks: 0.15 - 0.20.0 pass on an empty chunk
        answers[0] = [m for m in answers[0] if m.get("body", b"") or not m.get("more_body")]
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
    if not STARLETTE_CANCELS:
        # FastAPI 0.106 and later end `yield` dependencies before the response; nothing is cancelled.
        assert set(ended) == {"teardown", "background"} and over is not None
        # 0.23.1 - 0.28.0 end the response only after the background task (starlette#2194) but
        # with the pass-through fix (end-at-last; 0.23.1 - 0.27.x with the opt-in).
        assert (over < ended["background"]) is body_ends_at_last_message(shim == "patched"), (ended, over)
        return
    finished = set(ended) == {"teardown", "background"} and over is not None and over < min(ended.values())
    assert finished is (shim == "patched"), (ended, over)


class PaymentDeclined(Exception):
    pass


def build_with_handlers(handled: list[str]) -> FastAPI:
    """An exception handler for Exception (a custom 500), and two @app.middleware("http")
    functions, the outer one answering 402 for the error it knows."""
    app = FastAPI()

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        handled.append(type(exc).__name__)
        return JSONResponse({"error": type(exc).__name__}, status_code=500)

    @app.middleware("http")
    async def log_requests(request: Request, call_next: CallNext) -> Response:
        return await call_next(request)

    @app.middleware("http")  # the last one added is the outermost
    async def payments(request: Request, call_next: CallNext) -> Response:
        try:
            return await call_next(request)
        except PaymentDeclined:
            return JSONResponse({"declined": True}, status_code=402)

    @app.get("/fails")
    async def fails() -> None:
        raise KeyError("from the endpoint")

    @app.get("/declined")
    async def declined() -> None:
        raise PaymentDeclined

    return app


def status_sent(outcome: Outcome) -> int | None:
    return next(
        (message["status"] for message in outcome.messages if message["type"] == "http.response.start"), None
    )


@pytest.mark.parametrize("shim_name", ["unpatched", "patched"], ids=["unpatched", "patched"])
def test_the_exception_handler_and_an_outer_middleware_get_the_error_itself(
    backend: str, shim_name: str
) -> None:
    """0.15.0 and 0.16.0 raise a BaseException group (the app sends nothing), anyio 4 on 0.19 -
    0.20.4 an ExceptionGroup (the handler gets the group, the outer middleware misses the error)."""
    handled: list[str] = []
    with shim_named(shim_name):
        app = build_with_handlers(handled)
        failed = run(app, client_stays(), backend=backend, scope=http_scope("GET", "/fails"))
        declined = run(app, client_stays(), backend=backend, scope=http_scope("GET", "/declined"))

    as_upstream = (
        handled == ["KeyError"]
        and status_sent(failed) == 500
        and type(failed.error) is KeyError  # ServerErrorMiddleware raises it again, for the server
        and status_sent(declined) == 402
        and declined.clean
    )
    if shim_name == "unpatched" and (not CAPTURES_INNER_ERRORS or GROUPS_ESCAPE):
        assert not as_upstream, (handled, failed, declined)
    else:
        assert as_upstream, (handled, failed, declined)


class Item(BaseModel):  # at module level: the annotations are strings, resolved in this module
    name: str
    price: float


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("shim", ["unpatched", "patched"])
def test_a_middleware_that_reads_the_json_body(backend: str, shim: str, layers: int) -> None:
    """starlette#1692: an @app.middleware("http") that reads `await request.json()` in front of a
    route with a pydantic body model; unpatched on 0.15 - 0.27.x the route waits for ever."""
    app = FastAPI()
    logged: list[object] = []
    for _ in range(layers):

        @app.middleware("http")
        async def log_the_body(request: Request, call_next: CallNext) -> Response:
            logged.append(await request.json())
            return await call_next(request)

    @app.post("/items")
    async def create(item: Item) -> dict[str, object]:
        return {"name": item.name, "price": item.price}

    body = b'{"name": "pen", "price": 1.5}'
    scope = http_scope(path="/items")
    scope["headers"] = [(b"host", b"testserver"), (b"content-type", b"application/json")]
    scope["headers"].append((b"content-length", str(len(body)).encode()))
    hangs = shim == "unpatched" and STARLETTE_RELEASE < (0, 28, 0)
    with shim_named(shim):
        timeout = HANGS_AFTER if hangs else 5.0
        outcome = run(app, client_stays(body), backend=backend, scope=scope, timeout=timeout)

    assert logged == [{"name": "pen", "price": 1.5}] * (1 if hangs else layers)  # unpatched, the next waits
    if hangs:
        assert outcome.timed_out, outcome
        return
    assert outcome.clean and outcome.messages[0]["status"] == 200, outcome
    assert b"".join(m.get("body", b"") for m in outcome.messages[1:]) == b'{"name":"pen","price":1.5}'


@pytest.mark.skipif(
    not (ANYIO_MAJOR == 3 and STARLETTE_CANCELS),
    reason="starlette 0.15 - 0.20's TestClient runs with anyio 3 only (0.21 and later: fixed upstream)",
)
@pytest.mark.parametrize("shim", ["unpatched", "patched"])
def test_a_template_page_behind_a_middleware_under_the_test_client(shim: str, tmp_path: Path) -> None:
    """starlette#1991: a Jinja2 TemplateResponse behind a layer, tested as users test it."""
    from fastapi.templating import Jinja2Templates
    from starlette.testclient import TestClient

    (tmp_path / "page.html").write_text("<p>{{ name }}</p>")
    templates = Jinja2Templates(directory=str(tmp_path))
    app = build(layers=1)

    @app.get("/page")
    async def page(request: Request) -> Response:
        return templates.TemplateResponse("page.html", {"request": request, "name": "x"})

    with shim_named(shim):
        client = TestClient(app)
        if shim == "unpatched":
            with pytest.raises(BaseException) as raised:
                client.get("/page")
            assert any(isinstance(error, AssertionError) for error in Outcome(error=raised.value).errors())
            return
        response = client.get("/page")

    assert response.status_code == 200 and response.text == "<p>x</p>"
    assert response.template.name == "page.html" and response.context["name"] == "x"
