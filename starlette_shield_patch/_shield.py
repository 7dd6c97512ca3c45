"""The per-request code. Imported only once starlette.middleware.base is, so anyio is loaded by then.

How a request flows: the wrapt wrapper on BaseHTTPMiddleware.__call__ (`wrapper_for`) runs
starlette's own __call__ with a stand-in `self`. starlette reads two attributes of it:
`dispatch_func` and `app`. The stand-in's `app` hands the inner app a `send` that delivers
`http.response.start` despite a pending cancellation (the response-start fix), and, with the
after-response fix, tracks the inner app in an `_InnerRun`; its `dispatch_func` returns the
layer's response wrapped so that, once that response is sent, the layer lets the inner app finish
instead of letting starlette cancel it.
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict

import wrapt
from anyio import (
    BrokenResourceError,
    CancelScope,
    ClosedResourceError,
    Event,
    WouldBlock,
    get_cancelled_exc_class,
)
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectSendStream

Message = Dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

if TYPE_CHECKING:
    _Proxy = wrapt.ObjectProxy[Any]
else:
    _Proxy = wrapt.ObjectProxy  # not subscriptable at run time on wrapt 1.x

# What the request path does; written only by _patch._request_path. `enabled` is False once
# remove() had to leave the wrapper in place under someone else's: every call passes through.
# `after_response` is False when only the response-start fix is wanted.
enabled = True
after_response = True


async def _deliver_start(stream: MemoryObjectSendStream[Message], message: Message, send: Send) -> None:
    """call_next's `send`, but a pending cancellation still lets the start through."""
    # starlette#1634, #2516: on disconnect an inner StreamingResponse cancels its task group
    # before it sends the start; MemoryObjectSendStream.send checks for cancellation *before* it
    # delivers, so the start is dropped and the outer call_next raises "No response returned.".
    try:
        await checkpoint()
    except get_cancelled_exc_class():
        # Hand the start to a call_next that is waiting for it, then let the cancellation stop
        # the layer where it stopped unpatched: before it reads its body (on 0.15.0 and 0.16.0,
        # which do not capture the inner app's errors, reading on would end in a
        # BrokenResourceError). Nobody waiting (the outer dispatch gave up on call_next): no
        # delivery and no wait. Unlike the shield of starlette#1710 this never blocks.
        with suppress(WouldBlock, BrokenResourceError, ClosedResourceError):
            stream.send_nowait(message)
        raise
    try:
        stream.send_nowait(message)
    except (WouldBlock, BrokenResourceError, ClosedResourceError):
        await send(message)  # nobody waiting yet, or reading any more: what call_next's send does


def _call_next_stream(send: Send) -> MemoryObjectSendStream[Message] | None:
    """The stream behind call_next's `send`, or None (a forced, unknown release)."""
    # 0.15 - 0.20 hand the inner app `send_stream.send`; 0.21 and later `send_no_error`, a
    # closure over `send_stream` that drops a send once the response is sent.
    stream = getattr(send, "__self__", None)
    if type(stream) is MemoryObjectSendStream:
        return stream
    for cell in getattr(send, "__closure__", None) or ():
        if type(cell.cell_contents) is MemoryObjectSendStream:
            return cell.cell_contents
    return None  # pragma: no cover  # every release from 0.15 on hands call_next one of the two


def _start_first(send: Send) -> Send:
    """The send to hand the inner app: call_next's stream's, start first; any other as it is."""
    # This covers an inner StreamingResponse, a nested BaseHTTPMiddleware and any pure ASGI
    # middleware between.
    stream = _call_next_stream(send)
    if stream is None:  # pragma: no cover  # see _call_next_stream
        return send

    def send_start_first(message: Message) -> Awaitable[None]:
        # A plain function that returns the awaitable: no extra coroutine per body chunk.
        if message["type"] == "http.response.start":
            return _deliver_start(stream, message, send)
        return send(message)

    return send_start_first


def _disconnect_sticks(receive: Any) -> Any:
    """The request's receive, but once it has said http.disconnect it says so at every call."""
    # Stacked layers share one receive: whichever StreamingResponse listens first takes the
    # disconnect. uvicorn repeats it; hypercorn says it once, so the outer layers would go on
    # sending a response that the shim let start, and h11 fails on the missing body.
    disconnected = False

    async def receive_until_disconnect() -> Message:
        nonlocal disconnected
        if disconnected:
            return {"type": "http.disconnect"}
        message: Message = await receive()
        disconnected = message["type"] == "http.disconnect"
        return message

    return receive_until_disconnect


def _release_waiting_sends(stream: MemoryObjectSendStream[Message]) -> bool:
    """Let every send waiting on `stream` return as if received, its message dropped."""
    # 0.21.0 closes the receiving end once the response is sent, so a send that nobody will read
    # fails and is dropped. We cannot reach call_next's receiving end, so we do what its
    # receive_nowait() does with a waiting sender, minus keeping the item: MemoryObjectStreamState
    # has had `waiting_senders` (Event -> item) from anyio 3.0 to 4.x; both of starlette 0.15 -
    # 0.20's anyio majors are in the test matrix.
    waiting = getattr(getattr(stream, "_state", None), "waiting_senders", None)
    if waiting is None:  # pragma: no cover  # an anyio that changed its internals: as unpatched
        return False
    while waiting:
        event, _ = waiting.popitem(last=False)
        event.set()
    return True


class _InnerRun:
    """One run of the inner app that call_next started, and what the layer knows of it.

    starlette#1438: once the layer has sent its response, starlette 0.15 - 0.20 cancels the
    inner app, and with it the background tasks, dependency teardown and exit stacks it runs
    after its response. The layer instead lets a run that has started its response finish, as
    0.21.0 (#1715) does: its receive says http.disconnect, its sends are dropped and the layer
    returns when it ends. A run that has not started its response when the layer is done (the
    dispatch gave up on call_next) is still cancelled, as unpatched: nothing waits for it.
    """

    __slots__ = (
        "_on_end",
        "_receive",
        "_receiving",
        "_stream",
        "detached",
        "ended",
        "error",
        "over",
        "started",
    )

    def __init__(self, stream: MemoryObjectSendStream[Message], receive: Receive) -> None:
        self._stream = stream
        self._receive = receive
        self.started = False  # it sent http.response.start
        self.over = False  # its last body message was delivered, or the layer stopped listening
        self.detached = False  # the layer's response is done and the layer waits for it
        self.ended = False
        self.error: Exception | None = None  # raised after its response was over
        self._on_end: Event | None = None
        self._receiving: set[CancelScope] | None = None  # receive() calls in progress

    async def run(self, app: Callable[[Any, Receive, Send], Awaitable[None]], scope: Any) -> None:
        """Run the inner app in call_next's task, as starlette would."""
        try:
            await app(scope, self.receive, self.send)
        except Exception as exc:
            if not self.over:
                raise  # during its response: starlette's own handling, as unpatched
            # Work after the response failed. starlette would drop it (or never get that far);
            # the layer raises it once its own response is done, so that the server logs it.
            self.error = exc
        finally:
            self.ended = True
            if self._on_end is not None:
                self._on_end.set()

    async def send(self, message: Message) -> None:
        """The inner app's send: call_next's stream's, start first, until the response is over."""
        if self.over:
            return  # as 0.21.0: nobody reads what an inner app sends once its response is over
        try:
            if message["type"] == "http.response.start":
                self.started = True
                await _deliver_start(self._stream, message, self._stream.send)
                return
            await self._stream.send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.over = True
                # starlette#919: before 0.20.1 the layer's body ends only when this stream
                # closes, which starlette does when the inner app returns, after its background
                # work. Close it now.
                await self._stream.aclose()
        except (BrokenResourceError, ClosedResourceError):
            # The layer stopped reading (its response was cut short, or is done and finish()
            # closed the stream): dropped, as 0.21.0 drops it. Unpatched, 0.17.0 and later
            # capture this error and drop it; 0.15.0 and 0.16.0 let it end the request.
            self.over = True

    async def receive(self) -> Message:
        """The inner app's receive: the request's, or http.disconnect once detached."""
        if self.detached:
            return {"type": "http.disconnect"}
        with CancelScope() as waiting:
            if self._receiving is None:
                self._receiving = set()
            self._receiving.add(waiting)
            try:
                return await self._receive()
            finally:
                self._receiving.discard(waiting)
        return {"type": "http.disconnect"}  # detached while it waited (cancelled by finish())

    async def finish(self) -> None:
        """Called once the layer's response is sent, while the inner app still runs: wait for it
        instead of letting starlette cancel it."""
        if not self.started or not _release_waiting_sends(self._stream):
            return  # starlette cancels it next, as unpatched
        self.over = self.detached = True
        # A send that was past its checkpoint meets a closed stream and is dropped.
        await self._stream.aclose()
        for waiting in self._receiving or ():
            waiting.cancel()
        self._on_end = Event()
        await self._on_end.wait()


class _ThenFinish:
    """The layer's response; once it is sent, the inner app's runs finish before starlette cancels."""

    __slots__ = ("_response", "_runs")

    def __init__(self, response: Any, runs: list[_InnerRun]) -> None:
        self._response = response
        self._runs = runs

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        await self._response(scope, receive, send)
        for run in self._runs:
            if not run.ended:  # most have returned already, and cost no coroutine here
                await run.finish()
            if run.error is not None:
                raise run.error


def _run_inner_app(
    runs: list[_InnerRun], app: Any, scope: Any, receive: Receive, send: Send
) -> Awaitable[None]:
    stream = _call_next_stream(send)
    if stream is None:  # pragma: no cover  # see _call_next_stream
        return app(scope, receive, send)  # type: ignore[no-any-return]
    run = _InnerRun(stream, receive)
    runs.append(run)
    return run.run(app, scope)


async def _drop_late_send_error(inner_call: Awaitable[None], send: Send) -> None:
    """Await the inner app, dropping a BrokenResourceError from a send after the layer stopped
    reading its body, as starlette 0.17.0 and later effectively do (they capture the inner
    app's errors and raise them only when the body was read to its end)."""
    try:
        await inner_call
    except BrokenResourceError:
        stream = _call_next_stream(send)
        if stream is None or stream.statistics().open_receive_streams:
            raise


# The stand-ins: what starlette's __call__ gets as `self`, chosen once at patch time on two axes.
# Whose __call__ the shim wraps: starlette's own reads only `dispatch_func` and `app`, so a
# slotted object will do (`_StarletteSelf*`); a __call__ that others wrapped before the shim
# (sentry-sdk) may look at `self` in any way, so it gets a transparent proxy (`_ProxySelf*`).
# Which fixes: the response start only, on 0.17.0 and later (`*StartFirst`); the same on 0.15.0
# and 0.16.0, which do not capture the inner app's errors (`*StartFirstDropping`); or both fixes
# (`*Finishing`), whose own handling of a late send makes the 0.15/0.16 variant unnecessary.


class _StarletteSelfStartFirst:
    __slots__ = ("_middleware", "dispatch_func")

    def __init__(self, middleware: Any) -> None:
        self._middleware = middleware
        self.dispatch_func = middleware.dispatch_func

    def app(self, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
        return self._middleware.app(scope, receive, _start_first(send))  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:  # anything else a forced release might read
        return getattr(self._middleware, name)


class _StarletteSelfStartFirstDropping(_StarletteSelfStartFirst):
    __slots__ = ()

    def app(self, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
        return _drop_late_send_error(self._middleware.app(scope, receive, _start_first(send)), send)


class _StarletteSelfFinishing:
    __slots__ = ("_middleware", "_runs")

    def __init__(self, middleware: Any) -> None:
        self._middleware = middleware
        self._runs: list[_InnerRun] = []

    async def dispatch_func(self, request: Any, call_next: Any) -> _ThenFinish:
        return _ThenFinish(await self._middleware.dispatch_func(request, call_next), self._runs)

    def app(self, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
        return _run_inner_app(self._runs, self._middleware.app, scope, receive, send)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._middleware, name)


class _ProxySelfStartFirst(_Proxy):
    def app(self, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
        return self.__wrapped__.app(scope, receive, _start_first(send))  # type: ignore[no-any-return]


class _ProxySelfStartFirstDropping(_Proxy):
    def app(self, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
        return _drop_late_send_error(self.__wrapped__.app(scope, receive, _start_first(send)), send)


class _ProxySelfFinishing(_Proxy):
    def __init__(self, middleware: Any) -> None:
        super().__init__(middleware)
        self._self_runs: list[_InnerRun] = []

    async def dispatch_func(self, request: Any, call_next: Any) -> _ThenFinish:
        return _ThenFinish(await self.__wrapped__.dispatch_func(request, call_next), self._self_runs)

    def app(self, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
        return _run_inner_app(self._self_runs, self.__wrapped__.app, scope, receive, send)


def stand_in_for(starlettes_own: bool, finish_after_response: bool, captures_inner_errors: bool) -> type:
    """The class of the stand-in `self` for one patch, on the axes described above."""
    if finish_after_response:
        return _StarletteSelfFinishing if starlettes_own else _ProxySelfFinishing
    if captures_inner_errors:
        return _StarletteSelfStartFirst if starlettes_own else _ProxySelfStartFirst
    return _StarletteSelfStartFirstDropping if starlettes_own else _ProxySelfStartFirstDropping


_sticky = _disconnect_sticks(None).__code__
_inner_receive = _InnerRun.receive.__code__


def wrapper_for(
    original: Callable[..., Awaitable[None]], *, captures_inner_errors: bool, cancels_inner_app: bool
) -> Callable[..., Awaitable[None]]:
    """Build the wrapt wrapper for BaseHTTPMiddleware.__call__ around `original`; the
    after-response fix only where the release cancels its inner app (0.15 - 0.20)."""
    # functools.wraps copies __module__, but not the absence of __wrapped__.
    wrapped_by_others = hasattr(original, "__wrapped__")
    starlettes_own = (
        getattr(original, "__module__", None) == "starlette.middleware.base" and not wrapped_by_others
    )
    start_only = stand_in_for(starlettes_own, False, captures_inner_errors)
    both_fixes = (
        stand_in_for(starlettes_own, True, captures_inner_errors) if cancels_inner_app else start_only
    )

    def patched_call(
        wrapped: Callable[..., Awaitable[None]],
        instance: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Awaitable[None]:
        if instance is None and args:  # called through the raw class attribute, self first
            instance, args = args[0], args[1:]
        if enabled and len(args) == 3 and args[0]["type"] == "http":
            scope, receive, send = args
            code = getattr(receive, "__code__", None)
            if code is not _sticky and code is not _inner_receive:  # the outermost layer
                receive = _disconnect_sticks(receive)
            stand_in = both_fixes if after_response else start_only
            return original(stand_in(instance), scope, receive, send, **kwargs)
        return original(instance, *args, **kwargs)

    return patched_call
