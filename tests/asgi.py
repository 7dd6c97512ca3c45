"""In-process ASGI scenarios: apps with stacked BaseHTTPMiddleware, scripted clients, outcomes.

Never imports starlette_shield_patch: the activation tests run it in fresh venvs as the app that
gets patched without a code change. So it keeps its own scope and error flattening, which
starlette_shield_patch._selftest has as well.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Iterator

import anyio
import starlette
from starlette.background import BackgroundTask
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.releases import AFFECTED, BETWEEN, CANCELLING, EXTENDED_VARIABLE

if sys.version_info >= (3, 8):
    from importlib.metadata import version  # novermin (3.8 and later only)
else:  # the backport, which the package depends on under Python 3.7
    from importlib_metadata import version

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send"]

CallNext = Callable[[Request], Awaitable[Response]]

# This run opts in for 0.21.0 - 0.27.x (noxfile's `extended` sessions): the shim patches them.
EXTENDED = os.environ.get(EXTENDED_VARIABLE) == "1"
STARLETTE_BETWEEN = starlette.__version__ in BETWEEN
# Either range, or between them with the opt-in: the shim patches it.
STARLETTE_AFFECTED = starlette.__version__ in AFFECTED or (EXTENDED and STARLETTE_BETWEEN)
# The releases that lose the response start (either range), with or without the opt-in.
LOSES_THE_START = starlette.__version__ in AFFECTED
# 0.15 - 0.20: two or more layers show the disconnect bug, and work after the response is cancelled.
STARLETTE_CANCELS = starlette.__version__ in CANCELLING
STARLETTE_RELEASE = tuple(int(part) for part in starlette.__version__.split(".")[:3])
STARLETTE_HAS_ANYIO = STARLETTE_RELEASE >= (0, 15)
ANYIO_MAJOR = int(version("anyio").split(".")[0])
# 0.15.0 and 0.16.0 do not capture the inner app's errors; 0.17.0 (#1262) does.
CAPTURES_INNER_ERRORS = STARLETTE_RELEASE >= (0, 17, 0)
# anyio 4 wraps every error that leaves a task group in an ExceptionGroup; 0.31.0 (#2211)
# collapses them at the layer. anyio 3 raises a lone error as it is.
GROUPS_ESCAPE = ANYIO_MAJOR >= 4 and (0, 19, 0) <= STARLETTE_RELEASE < (0, 31, 0)
ANYIO_RELEASE = tuple(int(part) for part in version("anyio").split(".")[:3] if part.isdigit())
# 0.19 - 0.20.4 and 0.28 - 0.38.2 leave call_next's receiving stream open when the endpoint or
# the dispatch raises (fixed upstream in 0.45.1, #2813); anyio warns when it is collected from
# 4.4.0 on (MemoryObjectReceiveStream.__del__): 4.0.0 - 4.3.0 leave it open without a word.
LEAVES_STREAMS_OPEN = ANYIO_RELEASE >= (4, 4) and STARLETTE_AFFECTED and STARLETTE_RELEASE >= (0, 19, 0)
# Where the errors fix has a piece to run: every affected release (own-context from 0.17.0 on,
# starlette#2976).
ERRORS_FIX_APPLIES = STARLETTE_AFFECTED
# Where the doctor's errors scenario shows the defect unpatched: every affected release but
# 0.19 - 0.20.4 with anyio 3, whose errors already come out as themselves (their context aside).
ERRORS_COME_OUT_CHANGED = STARLETTE_AFFECTED and (
    STARLETTE_RELEASE < (0, 19, 0) or STARLETTE_RELEASE >= (0, 28, 0) or ANYIO_MAJOR >= 4
)
# starlette#1609 (0.20.1): the layer's body ends at the inner app's last message, not when the
# inner app returns, after its background work (starlette#919). 0.23.1 - 0.28.0 dropped that again.
BODY_ENDS_AT_LAST_MESSAGE = (0, 20, 1) <= STARLETTE_RELEASE < (0, 23, 1) or STARLETTE_RELEASE >= (0, 29, 0)


# How long a run that is expected to hang gets before it counts as hung, where the test checks what
# the app did before the hang: on a loaded machine (CI shares two cores) 0.2 s was once not enough
# for an endpoint to read one chunk (test_the_app_gets_the_chunks_a_partial_stream_left, trio).
HANGS_AFTER = 1.0


def body_ends_at_last_message(pass_through: bool) -> bool:
    """On a release the shim does not make finish its runs: whether the layer's body ends at the
    inner app's last message; on 0.23.1 - 0.28.0 the pass-through fix makes it (end-at-last)."""
    ends_at_last = pass_through and STARLETTE_AFFECTED and (0, 23, 1) <= STARLETTE_RELEASE < (0, 29, 0)
    return BODY_ENDS_AT_LAST_MESSAGE or ends_at_last


@dataclass
class Outcome:
    """What one request through an app ended with."""

    messages: list[Message] = field(default_factory=list)
    error: BaseException | None = None
    timed_out: bool = False
    elapsed: float = 0.0
    response_over_at: float | None = None  # perf_counter() when the response's last message was sent

    def errors(self) -> Iterator[BaseException]:
        """The error and everything an exception group holds, flattened."""
        pending = [self.error] if self.error is not None else []
        while pending:
            error = pending.pop()
            nested = getattr(error, "exceptions", None)
            if nested:
                pending.extend(nested)
            else:
                yield error

    @property
    def no_response_returned(self) -> bool:
        return any(
            isinstance(error, RuntimeError) and str(error) == "No response returned."
            for error in self.errors()
        )

    @property
    def clean(self) -> bool:
        return self.error is None and not self.timed_out


def expect_bug_only_unpatched(outcome: Outcome, shim: str) -> None:
    """For the scenarios of 0.15 - 0.20's bug (two or three layers): unpatched, those releases
    raise "No response returned."; everything else ends cleanly."""
    if shim == "unpatched" and STARLETTE_CANCELS:
        assert outcome.no_response_returned, outcome
    else:
        assert outcome.clean, outcome


def http_scope(method: str = "POST", path: str = "/") -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.1"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-length", b"5")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def client(*after_body: str, body: bytes = b"hello", pause: float = 0.0) -> Receive:
    """A client's receive(): its body, then each of `after_body` in turn, the last one for ever:
    "disconnect" (it is gone: http.disconnect, after `pause` seconds) or "wait" (for the answer)."""
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        if after_body[min(calls - 2, len(after_body) - 1)] == "disconnect":
            if pause:  # else no checkpoint: a server answers at once once the client is gone
                await anyio.sleep(pause)
            return {"type": "http.disconnect"}
        await anyio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover

    return receive


def client_gone_after_body(body: bytes = b"hello") -> Receive:
    """The client sent its body and went away: every later receive() is http.disconnect."""
    return client("disconnect", body=body)


async def client_gone_at_once() -> Message:
    """The client left before the app read anything: a server says http.disconnect at once."""
    return {"type": "http.disconnect"}


def client_stays(body: bytes = b"hello") -> Receive:
    """The client sent its body and waits for the answer."""
    return client("wait", body=body)


class ClosesAfterResponse:
    """The client reads the whole answer and closes, as curl does: the server then says
    http.disconnect (uvicorn says it at once once the response is over, client or not)."""

    def __init__(self, body: bytes = b"hello") -> None:
        self.body = body
        self.calls = 0
        self.response_over = False

    async def receive(self) -> Message:
        self.calls += 1
        if self.calls == 1:
            return {"type": "http.request", "body": self.body, "more_body": False}
        while not self.response_over:
            await anyio.sleep(0.001)
        return {"type": "http.disconnect"}


def chunked_client(*chunks: bytes, then: str = "wait") -> Receive:
    """A client's receive(): the body in `chunks`, then "wait" (for ever), "disconnect" or "fail"
    (1.10.0's tests: a receive() that must not be called)."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": number < len(chunks) - 1}
        for number, chunk in enumerate(chunks)
    ]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        if then == "disconnect":
            return {"type": "http.disconnect"}
        if then == "fail":
            raise AssertionError("receive() called once more")
        await anyio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover

    return receive


def client_reads_then_closes(body: bytes = b"hello") -> Receive:
    return ClosesAfterResponse(body).receive


def is_last(message: Message) -> bool:
    return message["type"] == "http.response.body" and not message.get("more_body", False)


def run(
    app: ASGIApp,
    receive: Receive,
    *,
    backend: str,
    scope: Scope | None = None,
    timeout: float = 5.0,
    cancel_after: float | None = None,
) -> Outcome:
    """Run one request through `app`, bounded by `timeout` seconds; with `cancel_after`, cancel
    the request's task then, as a server does at shutdown."""
    outcome = Outcome()
    client = getattr(receive, "__self__", None)
    started = 0.0

    async def send(message: Message) -> None:
        outcome.messages.append(message)
        if is_last(message):
            outcome.response_over_at = time.perf_counter()
            if isinstance(client, ClosesAfterResponse):
                client.response_over = True

    async def main() -> None:
        nonlocal started
        started = time.perf_counter()
        if cancel_after is not None:
            with anyio.move_on_after(cancel_after):
                try:
                    await app(scope or http_scope(), receive, send)
                except BaseException as exc:  # anyio 3.0 lets a group of cancellations escape
                    outcome.error = exc
            outcome.elapsed = time.perf_counter() - started
            return
        with anyio.move_on_after(timeout) as deadline:
            try:
                await app(scope or http_scope(), receive, send)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # anyio 3's ExceptionGroup is a BaseException
                outcome.error = exc
        outcome.timed_out = deadline.cancel_called
        outcome.elapsed = time.perf_counter() - started

    anyio.run(main, backend=backend)
    return outcome


async def pass_through(request: Request, call_next: CallNext) -> Response:
    return await call_next(request)


def stack(app: ASGIApp, *dispatches: Callable[[Request, CallNext], Awaitable[Response]]) -> ASGIApp:
    """Wrap `app` in one BaseHTTPMiddleware per dispatch, the first one outermost."""
    for dispatch in reversed(dispatches):
        app = BaseHTTPMiddleware(app, dispatch=dispatch)
    return app


def reads_body_then_answers(work: float = 0.01) -> ASGIApp:
    """The endpoint of the bug report: read the body, work briefly, answer."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await Request(scope, receive).body()
        await anyio.sleep(work)
        await PlainTextResponse("done")(scope, receive, send)

    return endpoint


class Work:
    """Work that an app does after its response; `ended` is its perf_counter() when it ended (and
    raised, if it `fails`), None while it has not or when it was cancelled."""

    def __init__(self, seconds: float = 0.05, fails: bool = False) -> None:
        self.seconds = seconds
        self.fails = fails
        self.ended: float | None = None

    async def run(self) -> None:  # a method: starlette 0.15 tells async callables by their function
        await anyio.sleep(self.seconds)
        self.ended = time.perf_counter()
        if self.fails:
            raise ValueError("from the work after the response")


def answers_then_works(work: Work, streamed: bool = False, chunks: int = 3) -> ASGIApp:
    """The endpoint reads the body and answers with a background task (starlette's BackgroundTask),
    in one message or streamed in `chunks` chunks."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await Request(scope, receive).body()
        await anyio.sleep(0.01)
        background = BackgroundTask(work.run)
        if not streamed:
            await PlainTextResponse("done", background=background)(scope, receive, send)
            return

        async def body() -> AsyncIterator[bytes]:
            for number in range(chunks):
                yield b"chunk %d\n" % number

        await StreamingResponse(body(), background=background)(scope, receive, send)

    return endpoint


def answers_after(work: float = 0.003) -> ASGIApp:
    """An endpoint that does not read the body (a GET), works briefly and answers."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(work)
        await PlainTextResponse("done")(scope, receive, send)

    return endpoint


def layers_that_show_the_bug() -> int:
    """How many pass-through layers it takes, with a client gone at once, for this release to raise
    "No response returned." unpatched: 2 on 0.15 - 0.20, 4 on 0.28 - 0.38.2 (starlette#2516)."""
    return 2 if STARLETTE_CANCELS else 4


def reads_body_then_streams(work: float = 0.01, chunks: int = 3) -> ASGIApp:
    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await Request(scope, receive).body()
        await anyio.sleep(work)

        async def body() -> AsyncIterator[bytes]:
            for number in range(chunks):
                yield b"chunk %d\n" % number

        await StreamingResponse(body(), media_type="text/plain")(scope, receive, send)

    return endpoint
