"""Acceptance 1 and 2: a client that leaves while the endpoint works, through BaseHTTPMiddleware."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from tests.asgi import (
    STARLETTE_HAS_ANYIO,
    ASGIApp,
    Receive,
    Send,
    client_gone_after_body,
    expect_bug_only_unpatched,
    pass_through,
    reads_body_then_answers,
    reads_body_then_streams,
    run,
    stack,
)

pytestmark = pytest.mark.skipif(
    not STARLETTE_HAS_ANYIO, reason="starlette < 0.15 has no anyio BaseHTTPMiddleware"
)

ENDPOINTS = {"plain": reads_body_then_answers, "streaming": reads_body_then_streams}


@pytest.mark.parametrize("layers", [2, 3], ids=["two-layers", "three-layers"])
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_client_gone_while_endpoint_works(shim: str, backend: str, endpoint: str, layers: int) -> None:
    app = stack(ENDPOINTS[endpoint](), *[pass_through] * layers)

    expect_bug_only_unpatched(run(app, client_gone_after_body(), backend=backend), shim)


def test_one_layer_over_a_plain_response(shim: str, backend: str) -> None:
    app = stack(reads_body_then_answers(), pass_through)

    assert run(app, client_gone_after_body(), backend=backend).clean


def test_one_layer_over_a_streaming_response(shim: str, backend: str) -> None:
    # The endpoint's own StreamingResponse drops its start the same way: one layer is enough.
    app = stack(reads_body_then_streams(), pass_through)

    expect_bug_only_unpatched(run(app, client_gone_after_body(), backend=backend), shim)


def forwarding_middleware(app: ASGIApp) -> ASGIApp:
    """A pure ASGI middleware that edits the start, as CORSMiddleware does."""

    async def middleware(scope: Dict[str, Any], receive: Receive, send: Send) -> None:
        async def send_with_header(message: Dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-forwarded-by", b"asgi")]
            await send(message)

        await app(scope, receive, send_with_header)

    return middleware


def test_pure_asgi_middleware_between_two_layers(shim: str, backend: str) -> None:
    inner = stack(reads_body_then_answers(), pass_through)
    app = stack(forwarding_middleware(inner), pass_through)

    expect_bug_only_unpatched(run(app, client_gone_after_body(), backend=backend), shim)
