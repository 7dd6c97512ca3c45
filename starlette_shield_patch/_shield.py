"""The per-request code: deliver `http.response.start` to `call_next` despite a pending cancellation.

Imported only once starlette.middleware.base is, so anyio is already loaded by then.
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict

import wrapt
from anyio import BrokenResourceError, ClosedResourceError, WouldBlock, get_cancelled_exc_class
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectSendStream

Message = Dict[str, Any]
Send = Callable[[Message], Awaitable[None]]

if TYPE_CHECKING:
    _Proxy = wrapt.ObjectProxy[Any]
else:
    _Proxy = wrapt.ObjectProxy  # not subscriptable at run time on wrapt 1.x

# False once remove() had to leave the wrapper in place under someone else's.
enabled = True


async def _deliver_start(stream: MemoryObjectSendStream[Message], message: Message) -> None:
    """MemoryObjectSendStream.send, but a pending cancellation still lets the start through."""
    # starlette#1634: on disconnect the inner StreamingResponse cancels its task group before it
    # sends the start; send() checks for cancellation *before* it delivers, so the start is
    # dropped and the outer call_next raises "No response returned.".
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
    except WouldBlock:
        await stream.send(message)  # nobody waiting yet: the ordinary, cancellable send


def _inner_app_send(send: Send) -> Send:
    """The send to hand the inner app: call_next's stream's, start first; any other as it is."""
    # call_next runs `self.app(scope, request.receive, send_stream.send)`. This covers an inner
    # StreamingResponse, a nested BaseHTTPMiddleware and any pure ASGI middleware between.
    stream = getattr(send, "__self__", None)
    if type(stream) is not MemoryObjectSendStream:
        return send

    def send_start_first(message: Message) -> Awaitable[None]:
        # A plain function that returns the awaitable: no extra coroutine per body chunk.
        if message["type"] == "http.response.start":
            return _deliver_start(stream, message)
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


_sticky = _disconnect_sticks(None).__code__


class _StandIn:
    """The middleware as `self` in starlette's own __call__, which reads only `dispatch_func`
    and `app`: slots, so that the per-request path pays no attribute fallback."""

    __slots__ = ("_middleware", "dispatch_func")

    def __init__(self, middleware: Any) -> None:
        self._middleware = middleware
        self.dispatch_func = middleware.dispatch_func

    def app(self, scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        return self._middleware.app(scope, receive, _inner_app_send(send))  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:  # anything else a forced release might read
        return getattr(self._middleware, name)


async def _drop_late_send_error(inner_call: Awaitable[None], send: Send) -> None:
    """Await the inner app, dropping a BrokenResourceError from a send after the layer stopped
    reading its body, as starlette 0.17.0 and later effectively do (they capture the inner
    app's errors and raise them only when the body was read to its end)."""
    try:
        await inner_call
    except BrokenResourceError:
        stream = getattr(send, "__self__", None)
        if type(stream) is not MemoryObjectSendStream or stream.statistics().open_receive_streams:
            raise


class _StandInDropping(_StandIn):
    """_StandIn for 0.15.0 and 0.16.0."""

    __slots__ = ()

    def app(self, scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        return _drop_late_send_error(self._middleware.app(scope, receive, _inner_app_send(send)), send)


class _Layer(_Proxy):
    """The middleware itself, transparently, but for `self.app`: for a __call__ that others
    wrapped before the shim, whose wrapper may look at `self` in any way."""

    def app(self, scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        return self.__wrapped__.app(scope, receive, _inner_app_send(send))  # type: ignore[no-any-return]


class _LayerDropping(_Layer):
    """_Layer for 0.15.0 and 0.16.0."""

    def app(self, scope: Any, receive: Any, send: Any) -> Awaitable[None]:
        return _drop_late_send_error(self.__wrapped__.app(scope, receive, _inner_app_send(send)), send)


def wrapper_for(
    original: Callable[..., Awaitable[None]], captures_inner_errors: bool = True
) -> Callable[..., Awaitable[None]]:
    """Build the wrapt wrapper for BaseHTTPMiddleware.__call__ around `original`."""
    own = getattr(original, "__module__", None) == "starlette.middleware.base"
    stand_ins: dict[tuple[bool, bool], Callable[[Any], Any]] = {
        (True, True): _StandIn,
        (True, False): _StandInDropping,
        (False, True): _Layer,
        (False, False): _LayerDropping,
    }
    stand_in = stand_ins[own, captures_inner_errors]

    def shield_response_start(
        wrapped: Callable[..., Awaitable[None]],
        instance: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Awaitable[None]:
        if instance is None and args:  # called through the raw class attribute, self first
            instance, args = args[0], args[1:]
        if enabled and len(args) == 3 and args[0]["type"] == "http":
            scope, receive, send = args
            if getattr(receive, "__code__", None) is not _sticky:  # the outermost layer
                receive = _disconnect_sticks(receive)
            return original(stand_in(instance), scope, receive, send, **kwargs)
        return original(instance, *args, **kwargs)

    return shield_response_start
