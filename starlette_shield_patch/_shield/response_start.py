"""The response-start fix (starlette#1634, #2516): start-first, the send that delivers the
response start despite a pending cancellation, and the receive that repeats a disconnect."""

from __future__ import annotations

from contextlib import suppress
from typing import Any, Awaitable

from anyio import BrokenResourceError, ClosedResourceError, Event, WouldBlock, get_cancelled_exc_class
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


def _hand_over(stream: MemoryObjectSendStream[Message], message: Message) -> bool:
    """Whether `message` went at once to a receive that waits on `stream` (call_next's body,
    reading); otherwise (nobody waits, or it cannot be taken) nothing happened."""
    try:
        stream.send_nowait(message)
    except (WouldBlock, BrokenResourceError, ClosedResourceError):
        return False
    return True


async def _send_now(
    stream: MemoryObjectSendStream[Message], state: Any, message: Message, drops: bool
) -> None:
    """call_next's send: anyio's MemoryObjectSendStream.send (0.15.0 - 0.20.4), or send_no_error
    over it (0.21.0 - 0.38.2), which drops a message that nobody will read (`drops`); but without
    the checkpoint that anyio's send takes before it tries."""
    # That checkpoint cost the inner app a turn of the event loop per message and layer, on top
    # of the one it takes when it has to wait (measured on anyio 4: ~17k instructions each; two
    # of the ten turns of a plain response through one layer). A message that a receive waits
    # for goes at once, as anyio's send_nowait() hands it over; one that must wait gives the
    # loop its turn then. A pending cancellation is raised at that wait, or at the inner app's
    # next one.
    if stream._closed or not state.open_receive_channels:
        # Nothing will take it: anyio's send raises after its checkpoint (send_no_error drops
        # that), and that turn stays: an inner app that sends in a loop until it hears
        # http.disconnect must not keep the event loop from telling it (1.10.0's
        # test_app_receives_http_disconnect_while_sending_if_discarded froze without it).
        await checkpoint()
        if stream._closed:
            raise ClosedResourceError
        if drops:
            return
        raise BrokenResourceError
    if state.waiting_receivers:
        try:
            stream.send_nowait(message)  # handed over at once
            return
        except WouldBlock:
            pass  # each waiting receive is being cancelled (anyio >= 4.4.0): wait, as anyio's send does
    # What anyio's send does when send_nowait() would block, the same from anyio 3.0 to 4.x: the
    # message waits in `waiting_senders` until a receive takes it (receive_nowait pops it and
    # sets the event) or the receiving end closes (sets the event, leaves it there).
    event = Event()
    waiting = state.waiting_senders
    waiting[event] = message
    try:
        await event.wait()
    except BaseException:
        waiting.pop(event, None)
        raise
    if event in waiting:
        del waiting[event]
        if not drops:
            raise BrokenResourceError from None


def _state_of(stream: MemoryObjectSendStream[Message]) -> Any:
    """anyio's state of call_next's stream, where _send_now knows it (anyio 3.0 - 4.x: an unbuffered
    stream, as call_next makes it), or None."""
    state = getattr(stream, "_state", None)
    if type(state) not in _KNOWN_STATES:
        if not all(hasattr(state, name) for name in _STATE) or not hasattr(stream, "_closed"):
            return None  # pragma: no cover  # an anyio that changed its internals: anyio's send
        _KNOWN_STATES.add(type(state))
    return state if state.max_buffer_size == 0 else None  # type: ignore[union-attr]


_STATE = ("waiting_senders", "waiting_receivers", "open_receive_channels", "max_buffer_size")
_KNOWN_STATES: set[type] = set()


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
