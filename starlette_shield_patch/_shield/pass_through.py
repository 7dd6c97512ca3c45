"""The pass-through fix (starlette#1692, #1609, #1991, #2194, #2649, #2672): what an inner app and
a dispatch send and read passes through a layer as through 1.10.0's."""

from __future__ import annotations

from typing import Any

from .pieces import Message, Receive, _cell, _is_function
from .response_start import _Client


class _LastChunk(bytes):
    """end-at-last: the body of the inner app's last message, as call_next's body yields it, so
    that the layer's response stops reading there."""

    # On 0.15.0 - 0.20.0 and 0.28.0 call_next's body ends only when its stream closes, so after
    # the last chunk the layer's response asks for one more, and that receive's checkpoint lets
    # another request's task send before this response's last message (1.10.0's
    # test_do_not_block_on_background_tasks). 0.20.1 and 0.29.0 stop at the last message.

    __slots__ = ()

    def __bool__(self) -> bool:  # 0.28.0's body skips empty chunks, never the last one
        return True


def _with_body_read(request: Any, receive: Receive, runs_note: bool) -> tuple[Receive, Any]:
    """read-body: the receive call_next hands the inner app, as 1.10.0's
    `_CachedRequest.wrapped_receive` would be; and the Request its run tells what the inner app
    receives (None: nobody)."""
    # starlette#1692 (0.28.0): on 0.15 - 0.20.4 the dispatch's Request and the inner app read the
    # server's receive side by side, and a Request keeps only `_body` (body() was read to its
    # end), `_stream_consumed` (stream() was *started*: 0.28.0 and later set it at the end) and
    # `_is_disconnected`. 1.10.0 hands the inner app a receive that reads through the dispatch's
    # Request, so each side sees what the other took. A dispatch that hands call_next a Request
    # with a receive of its own keeps it, as unpatched.
    if receive is not getattr(request, "_receive", None):
        if _is_function(receive, "starlette.middleware.base", _RECEIVE_OR_DISCONNECT):
            _read_through_cell(request, receive)  # 0.21.0 - 0.27.x
        return receive, None
    if getattr(receive, "__func__", None) is _BodyRead.dispatch_receive:
        # call_next again after a dispatch that streamed part of the body: the same shared receive.
        return receive.__self__.receive, None
    body = getattr(request, "_body", None)
    if body is not None:
        return _BodyRead(receive, request, body).receive, None
    if not getattr(request, "_stream_consumed", False):
        # It read nothing: the inner app reads the server's messages itself, and the dispatch's
        # Request is told when the inner app got the last one or the disconnect, so that a
        # stream() after call_next raises "Stream consumed" at once instead of waiting for
        # ever. With finish-runs its run's receive, which the inner app calls anyway, tells it:
        # no coroutine of ours per message.
        if runs_note:
            return receive, request
        return _BodyRead(receive, request, None).receive, None
    if _body_over(receive) is False:
        # It stopped part-way through stream(): as 1.10.0, the inner app gets the chunks that are
        # left, and the dispatch's stream goes on with what the inner app leaves (the two share
        # a receive that knows where the body ends). The shared receive does not hold the
        # Request: no reference cycle between the two.
        shared = _BodyRead(receive, None, None)
        request._receive = shared.dispatch_receive
        return shared.receive, None
    # It streamed to the end (or form()): an empty body, as 0.28.0 hands on.
    return _BodyRead(receive, request, b"").receive, None


# 0.21.0 - 0.27.x hand the inner app this closure of call_next: it reads `request.receive` of the
# Request that call_next got, until the layer's response is sent, then says http.disconnect.
_RECEIVE_OR_DISCONNECT = "BaseHTTPMiddleware.__call__.<locals>.call_next.<locals>.receive_or_disconnect"


def _read_through_cell(request: Any, receive: Receive) -> None:
    """read-body on 0.21.0 - 0.27.x: what receive_or_disconnect reads is what the inner app would
    read on 0.15 - 0.20.4 (`request.receive`); it reads it through the shim's receive instead."""
    # Its `request` cell is call_next's argument, read at every call: it gets the object whose
    # `receive` is the one to read (a _BodyRead), and receive_or_disconnect keeps saying
    # http.disconnect once the response is sent.
    cell = _cell(receive, "request")
    own = cell.cell_contents.receive
    inner, _ = _with_body_read(request, own, False)
    if inner is not own:
        cell.cell_contents = inner.__self__  # type: ignore[attr-defined]


def _note(request: Any, message: Message) -> bool:
    """read-body: tell the dispatch's Request what the inner app received, as reading it through
    the Request's stream() does on 1.10.0; whether the body is over."""
    if message["type"] == "http.disconnect":
        request._is_disconnected = True
        return False
    if message.get("more_body", False):
        return False
    request._stream_consumed = True  # what a stream() run to its end leaves on 0.15 - 0.20.4
    return True


def _body_over(receive: Receive) -> bool | None:
    """read-body: whether the last body message came through `receive` (to the dispatch or an
    inner app); None where that cannot be told."""
    from .run import _Run  # here: run imports this module (only a partial stream() gets here)

    owner = getattr(receive, "__self__", None)
    while type(owner) is _Run:  # passes every message on as it is
        owner = getattr(owner._receive, "__self__", None)
    if type(owner) is _Client or type(owner) is _BodyRead:
        return owner.over
    # Each layer whose receive is not one the shim handed on wraps it in a _Client (another
    # middleware's receive between two layers too), so every chain ends in one of the two.
    return None  # pragma: no cover


_LAST_EMPTY: Message = {"type": "http.request", "body": b"", "more_body": False}


class _BodyRead:
    """read-body: the inner app's receive where the dispatch read some of the body: the body the
    dispatch read (once), or, after a partial stream(), the chunks it left; then the request's."""

    __slots__ = ("_app_at_end", "_body", "_dispatch_at_end", "_receive", "_request", "over")

    def __init__(self, receive: Receive, request: Any, body: bytes | None) -> None:
        self._receive = receive
        self._request = request  # the dispatch's Request, to tell (None: not told)
        self._body = body  # to say first; None: the request's messages as they come
        self.over = False  # the last body message was said, to either side
        self._app_at_end = False  # the inner app was told the body is over
        self._dispatch_at_end = False  # the dispatch's stream() was

    async def receive(self) -> Message:
        body = self._body
        if body is not None:
            self._body = None
            self.over = self._app_at_end = True
            return {"type": "http.request", "body": body, "more_body": False}
        if self.over:
            if not self._app_at_end:  # the dispatch's stream() took the last chunk
                self._app_at_end = True
                return dict(_LAST_EMPTY)
            request = self._request
            if request is not None and request._is_disconnected:
                # 1.10.0: the dispatch heard the disconnect already; do not wait for it again.
                return {"type": "http.disconnect"}
        message = await self._receive()
        request = self._request
        if request is not None:
            over = _note(request, message)
        else:
            over = message["type"] == "http.request" and not message.get("more_body", False)
        if over:
            self.over = self._app_at_end = True
        return message

    async def dispatch_receive(self) -> Message:
        """The receive of the dispatch's Request once the inner app shares it (partial stream())."""
        if self.over and not self._dispatch_at_end:
            # The inner app took the last chunk: the dispatch's stream() ends, as 1.10.0's ends
            # where the inner app's read set `_stream_consumed`.
            self._dispatch_at_end = True
            return dict(_LAST_EMPTY)
        message: Message = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            self.over = self._dispatch_at_end = True
        return message
