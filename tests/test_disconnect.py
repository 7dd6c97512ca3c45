"""A client that leaves: "No response returned." unpatched, clean with the shim."""

from __future__ import annotations

import pytest
import starlette

from tests.asgi import (
    LOSES_THE_START,
    STARLETTE_HAS_ANYIO,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    answers_after,
    client_gone_after_body,
    client_gone_at_once,
    expect_bug_only_unpatched,
    http_scope,
    layers_that_show_the_bug,
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
def test_a_client_gone_while_the_endpoint_works_breaks_only_unpatched(
    shim: str, backend: str, endpoint: str, layers: int
) -> None:
    app = stack(ENDPOINTS[endpoint](), *[pass_through] * layers)

    expect_bug_only_unpatched(run(app, client_gone_after_body(), backend=backend), shim)


def test_one_layer_over_a_plain_response_never_raises_with_the_shim(shim: str, backend: str) -> None:
    """Not the stacked bug, but its cousin on 0.15.0 and 0.16.0, which do not capture the inner
    app's errors: the endpoint's body send after the layer stopped reading raises
    BrokenResourceError out of the request (with early anyio 3). With the shim: never."""
    app = stack(reads_body_then_answers(), pass_through)

    outcome = run(app, client_gone_after_body(), backend=backend)

    if shim == "unpatched" and starlette.__version__ in ("0.15.0", "0.16.0"):
        assert outcome.clean or [type(error).__name__ for error in outcome.errors()] == [
            "BrokenResourceError"
        ]
    else:
        assert outcome.clean, outcome


def test_one_layer_over_a_streaming_response_breaks_only_unpatched(shim: str, backend: str) -> None:
    # The endpoint's own StreamingResponse drops its start the same way: one layer is enough.
    app = stack(reads_body_then_streams(), pass_through)

    expect_bug_only_unpatched(run(app, client_gone_after_body(), backend=backend), shim)


def forwarding_middleware(app: ASGIApp) -> ASGIApp:
    """A pure ASGI middleware that edits the start, as CORSMiddleware does."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-forwarded-by", b"asgi")]
            await send(message)

        await app(scope, receive, send_with_header)

    return middleware


def test_pure_asgi_middleware_between_two_layers_breaks_only_unpatched(shim: str, backend: str) -> None:
    inner = stack(reads_body_then_answers(), pass_through)
    app = stack(forwarding_middleware(inner), pass_through)

    expect_bug_only_unpatched(run(app, client_gone_after_body(), backend=backend), shim)


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5, 6], ids=lambda layers: f"{layers}-layers")
def test_a_client_gone_at_once_breaks_enough_layers_only_unpatched(
    shim: str, backend: str, layers: int
) -> None:
    """starlette#2516: from 0.28.0 to 0.38.2 four or more layers raise the error again; 0.15 - 0.20
    raise it from two layers on."""
    app = stack(answers_after(), *[pass_through] * layers)

    outcome = run(app, client_gone_at_once, backend=backend, scope=http_scope("GET"))

    if shim == "unpatched" and LOSES_THE_START and layers >= layers_that_show_the_bug():
        assert outcome.no_response_returned, outcome
    elif shim == "unpatched" and LOSES_THE_START:
        # Fewer layers: clean, or the error when trio's scheduling makes three layers enough on
        # 0.28 - 0.38.2, or on 0.15.0 and 0.16.0 with one layer its cousin (see the test above).
        errors = {type(error).__name__ for error in outcome.errors()}
        assert outcome.clean or outcome.no_response_returned or errors == {"BrokenResourceError"}, outcome
    else:
        assert outcome.clean, outcome
