"""Each fix's scenario, run in-process on the installed starlette, and its outcomes.

Outcomes, the same words in the doctor, the tests and the demo: "clean" or "No response
returned." for the disconnect; "finished" or "cancelled" for the work after the response;
"itself", "swallowed", "past call_next" (not raised where the dispatch awaits it) or what came
out instead for an error; "handed on" or "endpoint waits" for a body the dispatch read; the name
of the exception for anything else.
"""

from __future__ import annotations

from typing import Any, Callable

CLEAN = "clean"
NO_RESPONSE_RETURNED = "No response returned."
FINISHED = "finished"
CANCELLED = "cancelled"
ITSELF = "itself"
SWALLOWED = "swallowed"
PAST_CALL_NEXT = "past call_next"  # the error itself, but not raised where the dispatch awaits
HANDED_ON = "handed on"  # the body the dispatch read reached the endpoint
WAITS = "endpoint waits"  # it did not, and the endpoint waited for it (cut after half a second)


def http_scope(method: str = "POST", path: str = "/") -> Any:
    """An HTTP scope as a server makes it, for the scenarios here and the benchmark (tests/asgi.py
    keeps its own: it must not import the package)."""
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
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


def leaf_errors(error: BaseException | None) -> list[BaseException]:
    """The error and everything exception groups (anyio 3's, trio's, the builtin) hold, flattened."""
    pending = [error] if error is not None else []
    leaves = []
    while pending:
        error = pending.pop()
        nested = getattr(error, "exceptions", None)
        if nested:
            pending.extend(nested)
        else:
            leaves.append(error)
    return leaves


def disconnect_outcome() -> str:
    """Four pass-through BaseHTTPMiddleware layers; the client is gone before the app reads
    anything. Enough layers for both ranges: 0.15 - 0.20 fail from two, 0.28 - 0.38.2 from four."""
    import anyio
    from starlette.responses import PlainTextResponse

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        await anyio.sleep(0.003)
        await PlainTextResponse("done")(scope, receive, send)

    def client_gone(calls: int, response_over: bool) -> dict[str, Any] | None:
        return {"type": "http.disconnect"}

    return _request(endpoint, layers=4, client=client_gone) or CLEAN


def after_response_outcome() -> str:
    """One pass-through layer; the response carries a background task; the client reads it all and
    closes (as curl does), then the server says http.disconnect."""
    import anyio
    from starlette.background import BackgroundTask
    from starlette.responses import PlainTextResponse

    finished = False

    async def background() -> None:
        nonlocal finished
        await anyio.sleep(0.02)
        finished = True

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("done", background=BackgroundTask(background))(scope, receive, send)

    def client_reads_then_closes(calls: int, response_over: bool) -> dict[str, Any] | None:
        if calls == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"} if response_over else None  # None: wait

    error = _request(endpoint, layers=1, client=client_reads_then_closes)
    return error or (FINISHED if finished else CANCELLED)


def errors_outcome() -> str:
    """Two layers, the outer one answering 418 for the error it knows: an endpoint that raises it
    before its response; then two pass-through layers over an endpoint whose background task
    fails after its response. Each error should come out as itself: caught, then raised."""
    import anyio
    from starlette.background import BackgroundTask
    from starlette.responses import PlainTextResponse

    class SelfTestError(Exception):
        pass

    async def fails_before(scope: Any, receive: Any, send: Any) -> None:
        raise SelfTestError

    async def catches(request: Any, call_next: Any) -> Any:
        try:
            return await call_next(request)
        except SelfTestError:
            return PlainTextResponse("caught", status_code=418)

    async def fail() -> None:
        await anyio.sleep(0.005)
        raise SelfTestError

    async def fails_after(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("done", background=BackgroundTask(fail))(scope, receive, send)

    def client_waits(calls: int, response_over: bool) -> dict[str, Any] | None:
        return {"type": "http.request", "body": b"", "more_body": False} if calls == 1 else None

    escaped: list[BaseException] = []
    what = _request(fails_before, layers=2, client=client_waits, escaped=escaped, outer=catches)
    caught = what is None
    if caught:  # now the one raised after the response
        what = _request(fails_after, layers=2, client=client_waits, escaped=escaped)
    if what is None:
        return SWALLOWED
    if type(escaped[0]) is SelfTestError:
        # Not caught, the error came out of the layers around the outer dispatch, not through it.
        return ITSELF if caught else PAST_CALL_NEXT
    return what if what == NO_RESPONSE_RETURNED else type(escaped[0]).__name__


def pass_through_outcome() -> str:
    """One layer whose dispatch reads the request body, over an endpoint that reads it and answers
    with it: the body should be handed on."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    answered: list[bytes] = []

    async def echoes(scope: Any, receive: Any, send: Any) -> None:
        answered.append(await Request(scope, receive).body())
        await PlainTextResponse(answered[-1])(scope, receive, send)

    async def reads(request: Any, call_next: Any) -> Any:
        await request.body()
        return await call_next(request)

    def client_sends(calls: int, response_over: bool) -> dict[str, Any] | None:
        return {"type": "http.request", "body": b"ping", "more_body": False} if calls == 1 else None

    what = _request(echoes, layers=1, client=client_sends, outer=reads, timeout=0.5)
    return what or (HANDED_ON if answered == [b"ping"] else WAITS)


def _request(
    endpoint: Any,
    *,
    layers: int,
    client: Callable[[int, bool], dict[str, Any] | None],
    escaped: list[BaseException] | None = None,
    outer: Any = None,
    timeout: float = 5.0,
) -> str | None:
    """One request through `layers` pass-through layers (the outermost with the dispatch `outer`
    instead, if given); None, or what it raised (itself in `escaped`)."""
    import anyio
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import Response

    async def pass_through(request: Request, call_next: Any) -> Response:
        return await call_next(request)  # type: ignore[no-any-return]

    app = endpoint
    for layer in range(layers):
        app = BaseHTTPMiddleware(app, outer if outer and layer == layers - 1 else pass_through)
    calls = 0
    received = 0  # body bytes the client has read
    errors: list[BaseException] = []

    async def receive() -> Any:
        nonlocal calls
        calls += 1
        while True:
            message = client(calls, received >= len(b"done"))
            if message is not None:
                return message
            await anyio.sleep(0.001)

    async def send(message: Any) -> None:
        nonlocal received
        received += len(message.get("body", b""))

    async def main() -> None:
        with anyio.move_on_after(timeout):
            try:
                await app(http_scope("GET"), receive, send)
            except anyio.get_cancelled_exc_class():  # a hang, cut at `timeout`
                raise
            except BaseException as exc:  # anyio 3's ExceptionGroup is a BaseException
                cancelled = anyio.get_cancelled_exc_class()
                if all(isinstance(leaf, cancelled) for leaf in leaf_errors(exc)):
                    return  # a hang cut at `timeout`: anyio 3.0 lets a group of cancellations out
                errors.append(exc)

    anyio.run(main)
    if escaped is not None:
        escaped.extend(errors)
    for error in leaf_errors(errors[0] if errors else None):
        if isinstance(error, RuntimeError) and str(error) == NO_RESPONSE_RETURNED:
            return NO_RESPONSE_RETURNED
        return type(error).__name__
    return None
