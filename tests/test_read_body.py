"""The request body shared by a dispatch and the inner app, as starlette 1.10.0's
`_CachedRequest.wrapped_receive` shares it (starlette#1692): a stream() after call_next, a stream()
that the dispatch stops part-way before call_next, and the related cases of 1.10.0's
tests/middleware/test_base.py (`test_read_request_*`), as plain ASGI calls.
"""

from __future__ import annotations

import gc
import warnings
from typing import Iterator

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from conftest import shim_named, shim_state
from tests.asgi import (
    HANGS_AFTER,
    STARLETTE_AFFECTED,
    STARLETTE_RELEASE,
    CallNext,
    Message,
    Receive,
    Scope,
    Send,
    chunked_client,
    pass_through,
    run,
    stack,
)

# Where the shim does not patch, upstream's own reading of the body is not this module's subject:
# 0.21.0 - 0.27.x have #1692, 0.38.3 - 1.7.x #3628, and 1.10.0 differs where the shim goes further.
pytestmark = pytest.mark.skipif(not STARLETTE_AFFECTED, reason="the shim patches the affected releases only")

# 0.28.0 (#1692) reads the inner app's receive through the dispatch's Request.
SHARED_FROM = (0, 28, 0)


@pytest.fixture(params=["unpatched", "patched"])
def shim(request: pytest.FixtureRequest) -> Iterator[str]:
    with shim_named(request.param) as name:
        yield name


def as_newest(shim: str) -> bool:
    """Whether this run shares the body as 1.10.0 does."""
    return STARLETTE_RELEASE >= SHARED_FROM or (shim == "patched" and STARLETTE_AFFECTED)


async def reads_body(scope: Scope, receive: Receive, send: Send) -> None:
    body = await Request(scope, receive).body()
    await PlainTextResponse(b"got " + body)(scope, receive, send)


async def reads_stream(scope: Scope, receive: Receive, send: Send) -> None:
    body = b"".join([chunk async for chunk in Request(scope, receive).stream()])
    await PlainTextResponse(b"got " + body)(scope, receive, send)


def body_of(messages: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


@pytest.mark.parametrize("app_reads", ["body", "stream"])
@pytest.mark.parametrize("layers", [1, 2], ids=["1-layer", "2-layers"])
def test_a_stream_after_call_next_says_stream_consumed(
    shim: str, backend: str, app_reads: str, layers: int
) -> None:
    """1.10.0's test_read_request_stream_in_dispatch_after_app_calls_{body,stream}."""
    said: list[str] = []

    async def streams_after(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        try:
            async for _ in request.stream():
                said.append("a chunk")
        except RuntimeError as exc:
            said.append(str(exc))
        return response

    app = stack(reads_body if app_reads == "body" else reads_stream, *[streams_after] * layers)
    outcome = run(app, chunked_client(b"a"), backend=backend, timeout=5.0 if as_newest(shim) else 0.2)
    if not as_newest(shim):
        assert outcome.timed_out, outcome  # the dispatch's stream() waits for a body the app took
        return
    assert outcome.clean, outcome
    assert said == ["Stream consumed"] * layers and body_of(outcome.messages) == b"got a"


@pytest.mark.parametrize("layers", [1, 2], ids=["1-layer", "2-layers"])
def test_the_app_gets_the_chunks_a_partial_stream_left(shim: str, backend: str, layers: int) -> None:
    """1.10.0's test_read_request_stream_in_dispatch_wrapping_app_calls_body: the dispatch reads
    the first chunk and calls call_next, the app reads one chunk, the dispatch the next."""
    seen: list[bytes] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        stream = Request(scope, receive).stream()
        seen.append(await stream.__anext__())
        await stream.aclose()
        await Response()(scope, receive, send)

    async def wraps(request: Request, call_next: CallNext) -> Response:
        stream = request.stream()
        seen.append(await stream.__anext__())
        response = await call_next(request)
        seen.append(await stream.__anext__())
        await stream.aclose()
        return response

    app = stack(endpoint, wraps, *[pass_through] * (layers - 1))
    # "wait": unpatched, call_next's response listens for the disconnect (1.10.0 does not).
    steals = layers > 1 and shim == "unpatched" and STARLETTE_AFFECTED
    timeout = HANGS_AFTER if steals else 5.0
    outcome = run(app, chunked_client(b"1", b"2", b"3"), backend=backend, timeout=timeout)
    if steals:
        # Unpatched, the inner layer's response listens for the disconnect (starlette#2620) and
        # takes the last chunk: the dispatch's stream() waits for it (0.15 - 0.20.4) or ends
        # empty (0.28.0 - 0.38.2, where the listener reads through the dispatch's Request).
        assert seen in ([b"1", b"2"], [b"1", b"2", b""]), outcome
        return
    # Unpatched 0.15 - 0.20.4 share the server's receive, which is right with one layer; before
    # this fix the shim handed the app an empty body instead of the chunk that was left.
    assert outcome.clean, outcome
    assert seen == [b"1", b"2", b"3"]


def test_the_app_may_read_the_rest_after_a_partial_stream(shim: str, backend: str) -> None:
    """The app takes the last chunk of a stream() the dispatch stopped part-way: the dispatch's
    stream then ends, as 1.10.0's does (its loop ends at `_stream_consumed`)."""
    seen: list[bytes] = []

    async def wraps(request: Request, call_next: CallNext) -> Response:
        stream = request.stream()
        seen.append(await stream.__anext__())
        response = await call_next(request)
        seen.extend([chunk async for chunk in stream])
        return response

    outcome = run(
        stack(reads_body, wraps),
        chunked_client(b"1", b"2"),
        backend=backend,
        timeout=5.0 if as_newest(shim) else 0.2,
    )
    if not as_newest(shim):
        assert outcome.timed_out, outcome  # the dispatch's stream waits for what the app took
        return
    assert outcome.clean, outcome
    assert seen == [b"1", b""] and body_of(outcome.messages) == b"got 2"


@pytest.mark.parametrize(
    "dispatch_reads, app_reads, app_gets",
    [
        ("stream", "stream", b""),
        ("body", "stream", b"a"),
        ("stream", "body", b""),
        ("body", "body", b"a"),
    ],
    ids=["stream-then-stream", "body-then-stream", "stream-then-body", "body-then-body"],
)
def test_what_the_app_reads_after_the_dispatch_read(
    shim: str, backend: str, dispatch_reads: str, app_reads: str, app_gets: bytes
) -> None:
    """1.10.0's test_read_request_{stream,body}_in_app_after_middleware_calls_{stream,body}."""

    async def reads(request: Request, call_next: CallNext) -> Response:
        if dispatch_reads == "body":
            assert await request.body() == b"a"
        else:
            assert [chunk async for chunk in request.stream()] == [b"a", b""]
        return await call_next(request)

    app = stack(reads_body if app_reads == "body" else reads_stream, reads)
    outcome = run(app, chunked_client(b"a"), backend=backend, timeout=5.0 if as_newest(shim) else 0.2)
    if not as_newest(shim):
        assert outcome.timed_out, outcome
        return
    assert outcome.clean, outcome
    assert body_of(outcome.messages) == b"got " + app_gets


@pytest.mark.parametrize("after", ["stream", "body"])
def test_the_dispatch_reads_its_body_again_after_call_next(shim: str, backend: str, after: str) -> None:
    """1.10.0's test_read_request_{stream,body}_in_dispatch_after_app_calls_body_with_middleware_
    calling_body_before_call_next."""
    again: list[bytes] = []

    async def reads_twice(request: Request, call_next: CallNext) -> Response:
        assert await request.body() == b"a"
        response = await call_next(request)
        if after == "body":
            again.append(await request.body())
        else:
            again.append(b"".join([chunk async for chunk in request.stream()]))
        return response

    outcome = run(
        stack(reads_body, reads_twice),
        chunked_client(b"a"),
        backend=backend,
        timeout=5.0 if as_newest(shim) else 0.2,
    )
    if not as_newest(shim):
        assert outcome.timed_out, outcome  # the app waits for the body the dispatch read
        return
    assert outcome.clean, outcome
    assert again == [b"a"] and body_of(outcome.messages) == b"got a"


def test_the_dispatch_hears_the_disconnect_the_app_got(shim: str, backend: str) -> None:
    """1.10.0's test_read_request_disconnected_client: is_disconnected() after call_next is True
    without another receive()."""
    heard: list[object] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        heard.append((await receive())["type"])
        await Response()(scope, receive, send)

    async def asks(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        heard.append(await request.is_disconnected())
        return response

    gone = chunked_client(then="fail")

    async def receive() -> Message:  # says http.disconnect once, then fails
        nonlocal gone
        if gone is None:
            raise AssertionError("receive() called once more")
        gone = None  # type: ignore[assignment]
        return {"type": "http.disconnect"}

    outcome = run(stack(endpoint, asks), receive, backend=backend)
    if not as_newest(shim):
        # Unpatched, is_disconnected() asks the server again (where it would wait, it fails).
        assert outcome.error is not None and heard == ["http.disconnect"], outcome
        return
    assert outcome.clean, outcome
    assert heard == ["http.disconnect", True]


def test_the_app_hears_the_disconnect_the_dispatch_got(shim: str, backend: str) -> None:
    """1.10.0's test_read_request_disconnected_after_consuming_steam."""
    heard: list[Message] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        heard.extend([await receive(), await receive()])
        await Response()(scope, receive, send)

    async def reads(request: Request, call_next: CallNext) -> Response:
        await request.body()
        assert await request.is_disconnected()
        return await call_next(request)

    outcome = run(
        stack(endpoint, reads),
        chunked_client(b"hi", then="disconnect"),
        backend=backend,
        timeout=5.0 if as_newest(shim) else 0.2,
    )
    if not as_newest(shim):
        assert heard[:1] == [{"type": "http.disconnect"}], outcome  # the body went to the dispatch
        return
    assert outcome.clean, outcome
    assert [message["type"] for message in heard] == ["http.request", "http.disconnect"]
    assert heard[0]["body"] == b"hi" and not heard[0].get("more_body", False)


@pytest.mark.parametrize("dispatch_reads", [True, False], ids=["dispatch-reads", "dispatch-reads-nothing"])
def test_a_receive_below_the_layer_sees_the_body(shim: str, backend: str, dispatch_reads: bool) -> None:
    """1.10.0's test_downstream_middleware_modifies_receive and
    test_pr_1519_comment_1236166180_example: a pure ASGI middleware below the layer that rewrites
    the body."""
    read: list[bytes] = []

    def doubles(app: object) -> object:
        async def wrapped_app(scope: Scope, receive: Receive, send: Send) -> None:
            async def wrapped_receive() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    message = dict(message, body=message["body"] * 2)
                return message

            await app(scope, wrapped_receive, send)  # type: ignore[operator]

        return wrapped_app

    async def reads(request: Request, call_next: CallNext) -> Response:
        if dispatch_reads:
            read.append(await request.body())
        return await call_next(request)

    app = stack(doubles(reads_body), reads)  # type: ignore[arg-type]
    timeout = 5.0 if as_newest(shim) or not dispatch_reads else 0.2
    outcome = run(app, chunked_client(b"foo "), backend=backend, timeout=timeout)
    if dispatch_reads and not as_newest(shim):
        assert outcome.timed_out, outcome
        return
    assert outcome.clean, outcome
    assert read == ([b"foo "] if dispatch_reads else []) and body_of(outcome.messages) == b"got foo foo "


@pytest.mark.parametrize("app_reads", ["body", "first-chunk"])
def test_without_the_after_response_fix_the_inner_receive_tells_the_dispatch(
    backend: str, app_reads: str
) -> None:
    """With the after-response fix off there is no run whose receive can tell the dispatch's
    Request what the app read: the pass-through fix hands the app a receive of its own then."""
    said: list[str] = []

    async def first_chunk(scope: Scope, receive: Receive, send: Send) -> None:
        stream = Request(scope, receive).stream()
        await stream.__anext__()
        await stream.aclose()
        await PlainTextResponse("got")(scope, receive, send)

    async def streams_after(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        try:
            said.append(b"".join([chunk async for chunk in request.stream()]).decode())
        except RuntimeError as exc:
            said.append(str(exc))
        return response

    with shim_state(True, after_response=False):
        app = stack(reads_body if app_reads == "body" else first_chunk, streams_after)
        outcome = run(app, chunked_client(b"a", b"b"), backend=backend)
    assert outcome.clean, outcome
    # The app read it all: the dispatch is told; it read one chunk: the dispatch reads the rest.
    assert said == (["Stream consumed"] if app_reads == "body" else ["b"])


# --- starlette#3628 (1.8.0): the request.stream() that wrapped_receive leaves unfinished ---------

# 0.28.0 - 0.38.2 read each chunk for the inner app from a new request.stream() and drop it
# suspended at its yield; trio's finalizer hook warns about each (asyncio's closes it quietly).
LEAVES_REQUEST_STREAMS = (0, 28, 0) <= STARLETTE_RELEASE < (0, 38, 3)


@pytest.mark.parametrize("layers", [1, 2], ids=["1-layer", "2-layers"])
@pytest.mark.parametrize("dispatch_reads", [False, True], ids=["dispatch-reads-nothing", "dispatch-reads"])
def test_no_request_stream_is_left_for_the_collector(
    shim: str, backend: str, layers: int, dispatch_reads: bool
) -> None:
    """Unpatched on 0.28.0 - 0.38.2 under trio: one ResourceWarning per layer from the collector
    ("Exception ignored in: <async_generator object Request.stream>" under -W error)."""

    async def reads(request: Request, call_next: CallNext) -> Response:
        await request.body()
        return await call_next(request)

    app = stack(reads_body, *[reads if dispatch_reads else pass_through] * layers)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hangs = dispatch_reads and not as_newest(shim)  # starlette#1692, above
        outcome = run(app, chunked_client(b"a"), backend=backend, timeout=0.2 if hangs else 5.0)
        gc.collect()
    assert outcome.timed_out if hangs else outcome.clean, outcome
    left = [w for w in caught if "Request.stream" in str(w.message)]
    if LEAVES_REQUEST_STREAMS and shim == "unpatched" and backend == "trio" and not dispatch_reads:
        assert len(left) == layers, [str(w.message) for w in caught]
    else:
        assert left == [], [str(w.message) for w in caught]


def test_call_next_again_after_the_dispatch_read_the_rest(shim: str, backend: str) -> None:
    """The dispatch reads one chunk, calls call_next (its app reads nothing), reads the rest and
    calls call_next again: the second app gets an empty body, as from 1.10.0's consumed stream."""
    seen: list[bytes] = []

    async def answers(scope: Scope, receive: Receive, send: Send) -> None:
        await Response()(scope, receive, send)

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await (reads_body if len(seen) > 1 else answers)(scope, receive, send)

    async def twice(request: Request, call_next: CallNext) -> Response:
        stream = request.stream()
        seen.append(await stream.__anext__())
        await call_next(request)
        seen.extend([chunk async for chunk in stream])
        return await call_next(request)

    timeout = 5.0 if as_newest(shim) else 0.2
    outcome = run(stack(endpoint, twice), chunked_client(b"1", b"2", b"3"), backend=backend, timeout=timeout)
    if not as_newest(shim):
        assert outcome.timed_out, outcome  # the second app waits for a body the dispatch took
        return
    assert outcome.clean, outcome
    assert seen == [b"1", b"2", b"3", b""] and body_of(outcome.messages) == b"got "


def test_a_full_stream_below_another_middlewares_receive(shim: str, backend: str) -> None:
    """A pure ASGI middleware's receive between two layers: the inner layer still knows that its
    dispatch streamed to the end (it wraps that receive as the outermost layer does), and the
    inner app gets an empty body."""

    def relays(app: object) -> object:
        async def wrapped_app(scope: Scope, receive: Receive, send: Send) -> None:
            async def relayed() -> Message:
                return await receive()

            await app(scope, relayed, send)  # type: ignore[operator]

        return wrapped_app

    async def streams(request: Request, call_next: CallNext) -> Response:
        assert b"".join([chunk async for chunk in request.stream()]) == b"ab"
        return await call_next(request)

    inner = stack(reads_body, streams)
    app = stack(relays(inner), pass_through)  # type: ignore[arg-type]
    outcome = run(app, chunked_client(b"a", b"b"), backend=backend, timeout=5.0 if as_newest(shim) else 0.2)
    if not as_newest(shim):
        assert outcome.timed_out, outcome
        return
    assert outcome.clean, outcome
    assert body_of(outcome.messages) == b"got "


def test_the_app_hears_a_disconnect_mid_body_again(shim: str, backend: str) -> None:
    """The client leaves mid-body: the inner app reads the disconnect, and again, with nothing
    left unclosed for trio to warn about."""
    heard: list[str] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        heard.extend([(await receive())["type"] for _ in range(3)])
        await Response()(scope, receive, send)

    client = chunked_client(b"a", b"never sent", then="disconnect")

    async def leaves_after_the_first_chunk() -> Message:
        message = await client()
        return {"type": "http.disconnect"} if message.get("body") == b"never sent" else message

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = run(stack(endpoint, pass_through), leaves_after_the_first_chunk, backend=backend)
        gc.collect()
    assert heard == ["http.request", "http.disconnect", "http.disconnect"], outcome
    left = [w for w in caught if "Request.stream" in str(w.message)]
    assert bool(left) is (shim == "unpatched" and LEAVES_REQUEST_STREAMS and backend == "trio"), left
