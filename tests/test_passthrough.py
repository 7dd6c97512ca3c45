"""Ordinary requests and other scopes go through exactly as without the shim."""

from __future__ import annotations

from typing import AsyncIterator

import anyio
import pytest
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from conftest import shim_state
from tests.asgi import (
    STARLETTE_HAS_ANYIO,
    STARLETTE_RELEASE,
    ASGIApp,
    CallNext,
    Message,
    Receive,
    Scope,
    Send,
    client_stays,
    pass_through,
    run,
    stack,
)

pytestmark = pytest.mark.skipif(
    not STARLETTE_HAS_ANYIO, reason="starlette < 0.15 has no anyio BaseHTTPMiddleware"
)


async def adds_header(request: Request, call_next: CallNext) -> Response:
    response = await call_next(request)
    response.headers["x-layer"] = "outer"
    return response


def endpoint_for(kind: str, background_ran: list[str]) -> ASGIApp:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        body = await Request(scope, receive).body()
        response: Response
        if kind == "plain":
            response = PlainTextResponse(b"echo " + body, headers={"x-kind": "plain"})
        elif kind == "json":
            response = JSONResponse({"echo": body.decode()}, status_code=201)
        elif kind == "streaming":

            async def chunks() -> AsyncIterator[bytes]:
                for number in range(5):
                    yield b"chunk %d " % number

            response = StreamingResponse(chunks(), media_type="text/plain")
        elif kind == "background":
            task = BackgroundTask(background_ran.append, "ran")
            response = PlainTextResponse("later", background=task)
        else:
            response = Response(status_code=204)
        await response(scope, receive, send)

    return endpoint


def one_request(kind: str, backend: str, applied: bool) -> tuple[list[Message], list[str]]:
    background_ran: list[str] = []
    app = stack(endpoint_for(kind, background_ran), adds_header, pass_through)
    with shim_state(applied):
        outcome = run(app, client_stays(), backend=backend)
    assert outcome.clean, outcome
    return outcome.messages, background_ran


@pytest.mark.parametrize("kind", ["plain", "json", "streaming", "background", "no-content"])
def test_ordinary_request_is_unchanged(backend: str, kind: str) -> None:
    unpatched = one_request(kind, backend, applied=False)
    patched = one_request(kind, backend, applied=True)

    if STARLETTE_RELEASE < (0, 20, 1):
        # skip-empty-chunks: the empty chunks that 0.15 - 0.20.0 pass on as chunks of their own
        # are not passed on; the rest is the same.
        unpatched = ([m for m in unpatched[0] if m.get("body", b"") or not m.get("more_body")], unpatched[1])
    assert patched == unpatched
    messages, background_ran = patched
    assert not any(m.get("more_body") and not m.get("body") for m in messages[1:])
    assert messages[0]["type"] == "http.response.start"
    assert (b"x-layer", b"outer") in messages[0]["headers"]
    assert messages[-1]["type"] == "http.response.body"
    assert not messages[-1].get("more_body", False)
    assert background_ran == (["ran"] if kind == "background" else [])


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
def test_other_scopes_get_the_servers_own_callables(shim: str, backend: str, scope_type: str) -> None:
    seen: list[tuple[Scope, Receive, Send]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Message:
        raise AssertionError("not called")  # pragma: no cover

    async def send(message: Message) -> None:
        raise AssertionError("not called")  # pragma: no cover

    scope: Scope = {"type": scope_type, "asgi": {"version": "3.0"}}
    app = stack(inner, pass_through, pass_through)

    anyio.run(app, scope, receive, send, backend=backend)

    assert len(seen) == 1
    assert seen[0][0] is scope
    assert seen[0][1] is receive
    assert seen[0][2] is send
