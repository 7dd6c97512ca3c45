"""An error comes out of the layers as the app raised it, as on the newest starlette: a group the
app made stays that group (starlette#2830), its own cause and context are what its traceback
shows (starlette#2976); and a response start without headers, which ASGI allows, gets through
(starlette#3721).

Each scenario's outcome on the newest starlette is the reference; on the releases that have the
defect, the unpatched run shows it.
"""

from __future__ import annotations

import builtins
from contextlib import suppress
from typing import Any, AsyncIterator, Iterator

import anyio
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from conftest import shim_named
from tests.asgi import (
    ANYIO_MAJOR,
    CAPTURES_INNER_ERRORS,
    GROUPS_ESCAPE,
    STARLETTE_AFFECTED,
    STARLETTE_BETWEEN,
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

pytestmark = [
    pytest.mark.skipif(not STARLETTE_HAS_ANYIO, reason="needs an anyio BaseHTTPMiddleware"),
    pytest.mark.skipif(
        not STARLETTE_AFFECTED and STARLETTE_RELEASE < (0, 46, 0),
        reason="left alone by the shim (it has the disconnect fix) but without every errors fix",
    ),
]

ExceptionGroup: Any = getattr(builtins, "ExceptionGroup", None)
if ExceptionGroup is None:  # pragma: no cover  # Python < 3.11: the backport, where installed
    with suppress(ImportError):
        ExceptionGroup = __import__("exceptiongroup").ExceptionGroup

# 0.31 - 0.38.2 collapse every group of one that leaves the layer's task group, the app's own too.
COLLAPSES_GROUPS = (0, 31, 0) <= STARLETTE_RELEASE < (0, 38, 3)
# anyio 4 wraps the error that leaves a task group in a group of one: 0.19 - 0.20.4 and 0.28 -
# 0.30 let the layer's out, 0.31 - 0.38.2 collapse it in the handling of it.
COLLAPSES_OR_WRAPS_GROUPS = ANYIO_MAJOR >= 4 and (GROUPS_ESCAPE or COLLAPSES_GROUPS)


async def answers(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("done")(scope, receive, send)


# --- starlette#2830: the app's own group ------------------------------------------------------


def raising_a_group(scenario: str, raised: list[BaseException], layers: int) -> ASGIApp:
    """The scenario's app through `layers` layers; `raised` gets the error as the app raised it."""

    async def fail() -> None:
        raise ValueError("TEST")

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await Request(scope, receive).body()
        try:
            if scenario == "endpoint-group":
                raise ExceptionGroup("my exception group", [ValueError("TEST")])
            if scenario == "endpoint-nested-groups":  # collapse_excgroups stops at the inner one
                two = ExceptionGroup("two", [ValueError("one"), ValueError("two")])
                raise ExceptionGroup("my exception group", [two])
            async with anyio.create_task_group() as group:  # its own task group, with one error
                group.start_soon(fail)
        except BaseException as error:
            raised.append(error)
            raise

    async def dispatch_raises_a_group(request: Request, call_next: CallNext) -> Response:
        await call_next(request)
        error = ExceptionGroup("my exception group", [ValueError("TEST")])
        raised.append(error)
        raise error

    if scenario == "dispatch-group":
        return stack(answers, *[pass_through] * (layers - 1), dispatch_raises_a_group)
    return stack(endpoint, *[pass_through] * layers)


def same_group(error: BaseException | None, raised: BaseException) -> bool:
    """The group raised, or the copy that trio makes of it (and of the groups in it) as it takes
    the cancellations out: the same errors, in groups of the same type and message."""
    if error is raised:
        return True
    members = getattr(raised, "exceptions", None)
    if members is None or type(error) is not type(raised) or str(error) != str(raised):
        return False
    copies = getattr(error, "exceptions", ())
    return len(copies) == len(members) and all(map(same_group, copies, members))


@pytest.mark.skipif(ExceptionGroup is None, reason="no ExceptionGroup on this Python")
@pytest.mark.parametrize("layers", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "scenario", ["endpoint-group", "endpoint-nested-groups", "dispatch-group", "endpoint-task-group"]
)
@pytest.mark.parametrize("shim", ["unpatched", "patched"])
def test_a_group_the_app_raised_comes_out_as_that_group(
    backend: str, shim: str, scenario: str, layers: int
) -> None:
    """starlette#2830 (1.3.0, test_custom_middleware): the newest collapses only the groups its own
    task groups add, so the app's group (or its own task group's) is what comes out."""
    raised: list[BaseException] = []
    with shim_named(shim):
        outcome = run(raising_a_group(scenario, raised, layers), client_stays(), backend=backend)

    as_raised = len(raised) == 1 and same_group(outcome.error, raised[0]) and not outcome.messages
    if shim == "unpatched" and not CAPTURES_INNER_ERRORS:
        return  # 0.15, 0.16: the inner app's error leaves call_next's task (test_errors.py)
    # anyio 3's task group raises a lone error as it is: no group in endpoint-task-group.
    if shim == "unpatched" and (
        COLLAPSES_OR_WRAPS_GROUPS or (COLLAPSES_GROUPS and scenario != "endpoint-task-group")
    ):
        assert not as_raised, outcome
    else:
        assert as_raised, (outcome, raised)


# --- starlette#2976: the error's own cause and context ----------------------------------------


def outer_error(kind: str) -> Exception:
    """Raise and return the error of upstream's test_error_context_propagation."""
    try:
        if kind == "without-context":
            raise Exception("Exception")
        try:
            raise Exception("Inner exception")
        except Exception as inner:
            if kind == "with-cause":
                raise Exception("Outer exception") from inner
            raise Exception("Outer exception")  # noqa: B904  # its context is what this is about
    except Exception as error:
        return error


def shown_chain(error: BaseException) -> Iterator[BaseException]:
    """What a traceback of `error` shows above it: its cause, or its context where not suppressed."""
    seen = error
    while True:
        above = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
        if above is None:
            return
        yield above
        seen = above


def raising_with(kind: str, where: str, layers: int) -> ASGIApp:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await Request(scope, receive).body()
        error = outer_error(kind)
        if where == "endpoint":
            raise error
        if where == "body":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first chunk", "more_body": True})
            raise error

        async def body() -> AsyncIterator[bytes]:
            yield b"first chunk"
            raise error

        await StreamingResponse(body())(scope, receive, send)

    return stack(endpoint, *[pass_through] * layers)


def loses_the_context(kind: str, where: str, backend: str) -> bool | None:
    """Whether the release, unpatched, shows something else above the error than its own; None
    where that is not for sure."""
    if not CAPTURES_INNER_ERRORS:
        return None  # 0.15, 0.16: the layer's response races the error (test_errors.py)
    if where != "endpoint" and STARLETTE_RELEASE < (0, 19, 0):
        return True  # 0.17, 0.18 drop the body's error (starlette#1459)
    if kind == "with-cause":  # shown as long as the error comes out as itself
        return GROUPS_ESCAPE
    if where == "endpoint":  # call_next raises it again in the handling of anyio.EndOfStream
        return True
    # The body's error: anyio 4 groups it, or 0.31 - 0.38.2 collapse its group in the handling of
    # that group; anyio 3's task group under asyncio clears the context of an error that one of its
    # tasks raised: of call_next's response, which streams in one (no-listen takes it away).
    return COLLAPSES_OR_WRAPS_GROUPS or (kind == "with-context" and ANYIO_MAJOR < 4 and backend == "asyncio")


# 1.10.0 itself, with two layers or more, shows the inner layer's group above the error (asyncio:
# "unhandled errors in a TaskGroup", trio: "Exceptions from Trio nursery"; seen in CI on Python
# 3.13): own-context keeps the error's own at every depth on the releases the shim patches.
@pytest.mark.skipif(not STARLETTE_AFFECTED, reason="the shim patches the affected releases only")
@pytest.mark.parametrize("layers", [1, 2, 3, 4])
@pytest.mark.parametrize("where", ["endpoint", "body", "streamed-body"])
@pytest.mark.parametrize("kind", ["without-context", "with-context", "with-cause"])
@pytest.mark.parametrize("shim", ["unpatched", "patched"])
def test_the_error_shows_its_own_cause_and_context(
    backend: str, shim: str, kind: str, where: str, layers: int
) -> None:
    """starlette#2976 (0.49.0, test_error_context_propagation): the traceback shows above the error
    what it was raised from or in the handling of, and nothing of the layer's own."""
    if where == "streamed-body" and ANYIO_MAJOR < 4 and backend == "asyncio":
        return  # as above: the endpoint's StreamingResponse's own task group clears it, layer or not
    with shim_named(shim):
        outcome = run(raising_with(kind, where, layers), client_stays(), backend=backend)

    error = outcome.error
    own = (
        error is not None
        and type(error) is Exception
        and str(error) == ("Exception" if kind == "without-context" else "Outer exception")
        and [str(above) for above in shown_chain(error)]
        == ([] if kind == "without-context" else ["Inner exception"])
    )
    defect = loses_the_context(kind, where, backend)
    if shim == "unpatched" and defect is None:
        return
    if shim == "unpatched" and defect:
        assert not own, (error, list(shown_chain(error)) if error else None)
    else:
        assert own, (error, list(shown_chain(error)) if error else None)


# --- starlette#3721: a response start without headers -----------------------------------------


def answers_without_headers(start: Message) -> ASGIApp:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await Request(scope, receive).body()
        await send(start)
        await send({"type": "http.response.body", "body": b"done"})

    return endpoint


@pytest.mark.parametrize("layers", [1, 2])
def test_a_response_start_without_headers_gets_through(backend: str, shim: str, layers: int) -> None:
    """starlette#3721: ASGI lets `headers` out of http.response.start; call_next read
    message["headers"] (KeyError) where 1.10.0 reads it with a default."""
    start = {"type": "http.response.start", "status": 200}
    app = stack(answers_without_headers(start), *[pass_through] * layers)
    outcome = run(app, client_stays(), backend=backend)

    # 0.21.0 - 0.27.x opted in with start-only are left alone (they need none of its fixes).
    left_alone = shim == "unpatched" or (shim == "start-only" and STARLETTE_BETWEEN)
    if left_alone and STARLETTE_AFFECTED:
        assert any(
            isinstance(error, KeyError) and error.args == ("headers",) for error in outcome.errors()
        ), outcome
    else:
        assert outcome.clean, outcome
        body = b"".join(message.get("body", b"") for message in outcome.messages[1:])
        assert outcome.messages[0]["status"] == 200 and body == b"done", outcome
        assert start == {"type": "http.response.start", "status": 200}  # the app's message as it was
