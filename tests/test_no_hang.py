"""No new hang: a dispatch that gives up on call_next ends as soon as it does without the shim."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectSendStream
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from conftest import shim_named
from starlette_shield_patch import _shield
from tests.asgi import (
    STARLETTE_CANCELS,
    STARLETTE_HAS_ANYIO,
    CallNext,
    Outcome,
    client_stays,
    pass_through,
    reads_body_then_answers,
    run,
    stack,
)

pytestmark = pytest.mark.skipif(
    not STARLETTE_HAS_ANYIO, reason="starlette < 0.15 has no anyio BaseHTTPMiddleware"
)

GIVE_UP_AFTER = 0.05  # the dispatch stops waiting for call_next
ENDPOINT_ANSWERS_AFTER = 0.1  # the endpoint's start arrives when nobody receives it any more
DISPATCH_ANSWERS_AFTER = 0.25  # the dispatch answers by itself; unpatched, the request ends here
SLACK = 0.5
SHIELD_GIVES_UP = 1.0


async def gives_up_on_call_next(request: Request, call_next: CallNext) -> Response:
    with anyio.move_on_after(GIVE_UP_AFTER):
        return await call_next(request)
    await anyio.sleep(DISPATCH_ANSWERS_AFTER - GIVE_UP_AFTER)
    return PlainTextResponse("gave up", status_code=504)


def gave_up_request(backend: str, layers: int) -> Outcome:
    dispatches = [gives_up_on_call_next] + [pass_through] * (layers - 1)
    app = stack(reads_body_then_answers(work=ENDPOINT_ANSWERS_AFTER), *dispatches)
    return run(app, client_stays(), backend=backend, timeout=DISPATCH_ANSWERS_AFTER + 2)


@pytest.mark.parametrize("layers", [1, 2], ids=["one-layer", "two-layers"])
def test_a_dispatch_that_gives_up_on_call_next_ends_when_unpatched_does(
    shim: str, backend: str, layers: int
) -> None:
    outcome = gave_up_request(backend, layers)

    assert outcome.clean, outcome
    assert [message.get("status") for message in outcome.messages][:1] == [504]
    assert DISPATCH_ANSWERS_AFTER <= outcome.elapsed < DISPATCH_ANSWERS_AFTER + SLACK


@pytest.mark.skipif(
    not STARLETTE_CANCELS, reason="from 0.21.0 on the layer closes the stream of a send that waits"
)
def test_an_unconditional_shield_would_hang(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the scenario above catches the wait of a shield that always waits (#1710).

    A real unconditional shield waits forever, and no timeout can cancel it; this one gives up
    after SHIELD_GIVES_UP seconds so that the test ends. With the response-start fix alone: the
    after-response fix lets go of a send that nobody will read, which would hide the wait.
    """

    async def shielded_send(stream: MemoryObjectSendStream[Any], message: Any, send: Any) -> None:
        with anyio.CancelScope(shield=True) as shield:
            shield.deadline = anyio.current_time() + SHIELD_GIVES_UP
            await stream.send(message)

    monkeypatch.setattr(_shield, "_deliver_start", shielded_send)

    with shim_named("start-only"):
        outcome = gave_up_request(backend, layers=2)

    assert outcome.elapsed >= ENDPOINT_ANSWERS_AFTER + SHIELD_GIVES_UP > DISPATCH_ANSWERS_AFTER + SLACK


async def answers_at_once(request: Request, call_next: CallNext) -> Response:
    with anyio.move_on_after(GIVE_UP_AFTER):
        return await call_next(request)
    return PlainTextResponse("gave up", status_code=504)


@pytest.mark.skipif(
    not STARLETTE_CANCELS, reason="from 0.21.0 on the layer waits for it; the shim leaves that alone"
)
def test_an_endpoint_that_never_started_its_response_is_not_waited_for(shim: str, backend: str) -> None:
    """The dispatch answers before the endpoint starts its response: the request ends with the
    dispatch's answer, not when the endpoint would have answered (0.21.0 waits for it)."""
    app = stack(reads_body_then_answers(work=1.0), answers_at_once)

    outcome = run(app, client_stays(), backend=backend)

    assert outcome.clean and outcome.messages[0]["status"] == 504
    assert outcome.elapsed < 0.5, outcome.elapsed
