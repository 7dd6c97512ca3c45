"""The per-request code: deliver `http.response.start` to `call_next` despite a pending cancellation.

Imported only once starlette.middleware.base is, so anyio is already loaded by then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict

import wrapt
from anyio import BrokenResourceError, ClosedResourceError, WouldBlock
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectSendStream

Message = Dict[str, Any]
Send = Callable[[Message], Awaitable[None]]

if TYPE_CHECKING:
    _Proxy = wrapt.ObjectProxy[Any]
else:
    _Proxy = wrapt.ObjectProxy  # not subscriptable at run time on wrapt 1.x

_memory_send = MemoryObjectSendStream.send

# False once remove() had to leave the wrapper in place under someone else's.
enabled = True


async def _deliver_start(stream: MemoryObjectSendStream[Message], message: Message) -> None:
    """Hand the response start to a waiting receiver first, then honour any cancellation."""
    # starlette#1634: on disconnect the inner StreamingResponse cancels its task group before it
    # sends the start; MemoryObjectSendStream.send checks for cancellation *before* it delivers,
    # so the start is dropped and the outer call_next raises "No response returned.".
    # Unlike the unconditional shield of starlette#1710, this never waits under a shield: with
    # nobody receiving (the outer dispatch gave up on call_next) it behaves exactly as unpatched.
    try:
        stream.send_nowait(message)
    except (WouldBlock, BrokenResourceError, ClosedResourceError):
        await stream.send(message)
    else:
        # The checkpoint that send() takes before delivering, taken after it. Cancelling here
        # stops the layer before it iterates its body, as unpatched: on 0.15.0 and 0.16.0, which
        # do not capture the inner app's errors, that keeps a BrokenResourceError from the
        # endpoint's next send out of the app.
        await checkpoint()


def _start_first(stream: MemoryObjectSendStream[Message]) -> Send:
    send = stream.send

    def send_start_first(message: Message) -> Awaitable[None]:
        # A plain function that returns the awaitable: no extra coroutine per body chunk.
        if message["type"] == "http.response.start":
            return _deliver_start(stream, message)
        return send(message)

    return send_start_first


class _Layer(_Proxy):
    """The middleware itself, as `self` inside the original __call__, but for `self.app`."""

    def app(self, scope: dict[str, Any], receive: Any, send: Send) -> Awaitable[None]:
        # call_next runs `self.app(scope, request.receive, send_stream.send)`: hand the inner
        # app a send that delivers the response start to call_next first. It covers an inner
        # StreamingResponse, a nested BaseHTTPMiddleware and any pure ASGI middleware between.
        stream = getattr(send, "__self__", None)
        if type(stream) is MemoryObjectSendStream and getattr(send, "__func__", None) is _memory_send:
            send = _start_first(stream)
        return self.__wrapped__.app(scope, receive, send)  # type: ignore[no-any-return]


def wrapper_for(original: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Build the wrapt wrapper for BaseHTTPMiddleware.__call__ around `original`."""

    def shield_response_start(
        wrapped: Callable[..., Awaitable[None]],
        instance: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Awaitable[None]:
        if instance is None and args:  # called through the raw class attribute, self first
            instance, args = args[0], args[1:]
        # websocket and lifespan scopes pass through untouched.
        if enabled and args and args[0].get("type") == "http":
            return original(_Layer(instance), *args, **kwargs)
        return original(instance, *args, **kwargs)

    return shield_response_start
