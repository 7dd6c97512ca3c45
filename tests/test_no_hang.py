"""No new hang: a dispatch that gives up on call_next ends as soon as it does without the shim."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectSendStream
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from conftest import shim_named
from tests.asgi import (
    STARLETTE_CANCELS,
    STARLETTE_HAS_ANYIO,
    ASGIApp,
    CallNext,
    Outcome,
    Receive,
    Scope,
    Send,
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

    for name, module in list(sys.modules.items()):  # each module of the shim that calls it
        if name.startswith("starlette_shield_patch.") and hasattr(module, "_deliver_start"):
            monkeypatch.setattr(module, "_deliver_start", shielded_send)

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
@pytest.mark.parametrize("nested", [False, True], ids=["waits", "waits-in-its-own-scope"])
def test_an_endpoint_that_never_started_its_response_is_not_waited_for(
    shim: str, backend: str, nested: bool
) -> None:
    """The dispatch answers before the endpoint starts its response: the request ends with the
    dispatch's answer, not when the endpoint would have answered (0.21.0 waits for it). The
    layer's task group still has that task, so starlette's cancel is made: also where the task
    waits in a cancel scope of its own (anyio 4.2 and later keep such a task out of the group's
    scope's tasks)."""
    endpoint = reads_body_then_answers(work=1.0)
    if nested:
        endpoint = in_its_own_cancel_scope(endpoint)
    app = stack(endpoint, answers_at_once)

    outcome = run(app, client_stays(), backend=backend)

    assert outcome.clean and outcome.messages[0]["status"] == 504
    assert outcome.elapsed < 0.5, outcome.elapsed


def in_its_own_cancel_scope(app: ASGIApp) -> ASGIApp:
    async def scoped(scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.fail_after(10):
            await app(scope, receive, send)

    return scoped


@pytest.mark.skipif(
    not STARLETTE_CANCELS, reason="only 0.15 - 0.20 cancel their task group after the response"
)
@pytest.mark.parametrize("busy", [False, True], ids=["every-run-ended", "a-run-never-started"])
def test_the_layer_cancels_its_task_group_only_where_a_task_is_left(
    shim: str, backend: str, busy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """finish-runs skips starlette's cancel of the layer's task group where it would stop
    nothing (it is dear on anyio 4), and gives the group its own cancel scope back."""
    groups: list[Any] = []
    create_task_group = anyio.create_task_group

    def kept_if_the_layers() -> Any:
        group = create_task_group()
        if sys._getframe(1).f_globals["__name__"] == "starlette.middleware.base":
            groups.append(group)
        return group

    cancelled: list[Any] = []
    scope_class = importlib.import_module(f"anyio._backends._{backend}").CancelScope
    real_cancel = scope_class.cancel

    def counting_cancel(self: Any, *args: Any) -> Any:
        cancelled.append(self)
        return real_cancel(self, *args)

    monkeypatch.setattr(anyio, "create_task_group", kept_if_the_layers)
    monkeypatch.setattr(scope_class, "cancel", counting_cancel)
    endpoint = in_its_own_cancel_scope(reads_body_then_answers(work=1.0 if busy else 0.0))
    dispatch = answers_at_once if busy else pass_through

    outcome = run(stack(endpoint, dispatch), client_stays(), backend=backend)

    assert outcome.clean and outcome.messages[0]["status"] == (504 if busy else 200), outcome
    assert outcome.elapsed < 0.5, outcome.elapsed
    (group,) = groups
    assert type(group.cancel_scope) is scope_class
    # Unpatched (and with the response-start fix alone) starlette always cancels; with
    # finish-runs, only a group with a task left.
    assert (group.cancel_scope in cancelled) is (busy or shim != "patched")
