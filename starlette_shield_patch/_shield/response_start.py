"""The response-start fix (starlette#1634, #2516): start-first, the send that delivers the
response start despite a pending cancellation, and the receive that repeats a disconnect."""

from __future__ import annotations

from contextlib import suppress
from typing import Awaitable

from anyio import BrokenResourceError, ClosedResourceError, WouldBlock, get_cancelled_exc_class
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectSendStream

from .pieces import Message, Receive, Send


async def _deliver_start(stream: MemoryObjectSendStream[Message], message: Message, send: Send) -> None:
    """call_next's `send`, but a pending cancellation still lets the start through."""
    if "headers" not in message:
        # starlette#3721: ASGI lets a start leave out its headers; call_next reads
        # message["headers"] and raises KeyError (1.10.0 reads .get("headers", [])). A copy: the
        # app's dict may be a constant, and the list becomes the response's raw_headers, which a
        # dispatch adds to. One dict lookup per response start.
        message = {**message, "headers": []}
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
    """start-first: the send to hand the inner app: call_next's stream's, start first; any other as it is."""
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


class _Client:
    """start-first: the request's receive, but once it has said http.disconnect it says so at every
    call; read-body: it also knows whether the body is over."""

    # Stacked layers share one receive: whichever StreamingResponse listens first takes the
    # disconnect. uvicorn repeats it; hypercorn says it once, so the outer layers would go on
    # sending a response that the shim let start, and h11 fails on the missing body.

    __slots__ = ("_receive", "disconnected", "over")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.disconnected = False
        self.over = False  # read-body: the request's last http.request message was received

    async def receive(self) -> Message:
        if self.disconnected:
            return {"type": "http.disconnect"}
        message: Message = await self._receive()
        self.disconnected = message["type"] == "http.disconnect"
        return message

    async def receive_noting(self) -> Message:
        """receive, and read-body: notes the end of the body (one dict lookup per message)."""
        if self.disconnected:
            return {"type": "http.disconnect"}
        message: Message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        elif not message.get("more_body", False):
            self.over = True
        return message
