"""The inner app's run that call_next starts: what the layer knows of it, and where its send and
receive call out to the pieces (the finish-runs ones are after_response's)."""

from __future__ import annotations

from typing import Any, Awaitable, cast

from anyio import BrokenResourceError, CancelScope, Event
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectSendStream

from .after_response import _close, _response_sent, _run_finish, _run_receive, _run_send
from .errors import _origin, _unwrap
from .pass_through import _LastChunk
from .pieces import _DONE, App, InForce, Message, Receive, Send, _BaseExceptionGroup
from .response_start import _deliver_start, _hand_over, _send_now, _state_of


class _Run:
    """One run of the inner app that call_next started, and what the layer knows of it.

    finish-runs (starlette#1438): once the layer has sent its response, starlette 0.15 - 0.20
    cancels the inner app, and with it the background tasks, dependency teardown and exit stacks
    it runs after its response. The layer instead lets a run that has started its response
    finish, as 0.21.0 (#1715) does: its receive says http.disconnect, its sends are dropped and
    the layer returns when it ends. A run that has not started its response when the layer is
    done (the dispatch gave up on call_next) is still cancelled, as unpatched: nothing waits.

    The error pieces read how it failed: before its response start (`failed`, raised by
    call_next: own-error), during its body (`failed`, raised where the body ends: body-error),
    or after its last body message (`late`, raised by the layer once its own response is sent:
    finish-runs, late-error); one that starlette raises itself is raised to it `from` its own
    cause or context (own-context).
    """

    __slots__ = (
        "_drops",
        "_on_end",
        "_out",
        "_pieces",
        "_receive",
        "_receiving",
        "_send",
        "_sent",
        "_state",
        "_stream",
        "detached",
        "ended",
        "failed",
        "holding",
        "late",
        "noted",
        "over",
        "started",
    )

    def __init__(
        self,
        pieces: InForce,
        stream: MemoryObjectSendStream[Message],
        send: Send,
        receive: Receive,
        out: Send,
    ) -> None:
        self._pieces = pieces
        self._stream = stream
        self._state = _state_of(stream)  # anyio's bookkeeping of the stream, for _send_now (or None)
        self._drops = send != stream.send  # send_no_error (0.21.0 - 0.38.2)
        self._send = send  # call_next's own
        self._receive = receive
        self._out = out  # the layer's own send (template-info)
        self.started = False  # it sent http.response.start
        self.over = False  # its last body message was delivered, or the layer stopped listening
        self.detached = False  # the layer's response is done and the layer waits for it
        self.ended = False
        self.failed: Exception | None = None  # raised during its response, not raised yet
        self.late: Exception | None = None  # raised after its response was over
        self.holding = False  # finish-runs: its last body message is on its way, or waits for wait-sent
        self._on_end: Event | None = None
        self._sent: Event | None = None  # wait-sent, with finish-runs: set once the layer's response is sent
        self._receiving: dict[CancelScope, _Run | None] | None = None  # receive() calls in progress
        self.noted: Any = None  # read-body: the dispatch's Request, told what the inner app received

    async def run(self, app: App, scope: Any) -> None:
        """Run the inner app in call_next's task, as starlette would."""
        pieces = self._pieces
        try:
            if pieces.finish_runs:
                await app(scope, self.receive, self.send)
            else:
                await app(scope, self._receive, self.watch)
        except Exception as exc:
            error: Exception = exc
            if pieces.collapse_groups and isinstance(exc, _BaseExceptionGroup):
                # starlette#2830: the group a StreamingResponse's task group added (anyio 4) is
                # starlette's, not the app's; the app's own error is in it.
                error = cast(Exception, _unwrap(exc))  # an ExceptionGroup holds Exceptions
            if (
                pieces.drop_broken_send
                and isinstance(exc, BrokenResourceError)
                and not self._stream.statistics().open_receive_streams
            ):
                # drop-broken-send: a send after the layer stopped reading its body. 0.17.0 and
                # later capture it and drop it; 0.15.0 and 0.16.0 would end the request with it.
                return
            if self.over:
                if not pieces.keeps_late:
                    raise
                # Work after the response failed. starlette would drop it (or never get that
                # far); the layer raises it once its own response is done, for the server to log.
                self.late = error
            elif pieces.body_error if self.started else pieces.own_error:
                self.failed = error  # raised by call_next, or where the body ends
            elif pieces.own_context:
                # starlette#2976 (0.49.0): call_next raises it again in the handling of
                # anyio.EndOfStream, 0.31 - 0.38.2 collapse its group in the handling of that group:
                # each time Python puts that in its __context__, and the error's own is lost. Raised
                # `from` its own (as 1.10.0's call_next does), later contexts are not shown.
                raise error from _origin(error)
            else:
                raise  # starlette's own handling, as unpatched
        finally:
            self.ended = True
            if self._on_end is not None:
                self._on_end.set()

    def watch(self, message: Message) -> Awaitable[None]:
        """The inner app's send where the run is not let finish: call_next's, start first, noting
        how far the response got. A plain function: no coroutine of ours per body chunk."""
        kind = message["type"]
        if kind == "http.response.body":
            pieces = self._pieces
            if not message.get("more_body", False):
                self.over = True  # what it raises from now on comes after its response
                if pieces.end_at_last or pieces.waits_sent:
                    return self._send_last(message)
            if pieces.skip_empty and not message.get("body"):
                # Not passed on; the layer's body ends when this stream closes, as it would.
                return checkpoint()
            state = self._state
            if state is not None and state.waiting_receivers and _hand_over(self._stream, message):
                # call_next's body waits for it: no coroutine, no turn of the event loop (_send_now)
                return _DONE
            return self.to_call_next(message)
        if kind == "http.response.start":
            self.started = True
            return _deliver_start(self._stream, message, self.to_call_next)
        return self._other(message)

    def _other(self, message: Message) -> Awaitable[None]:
        """A message that is neither the start nor a body chunk."""
        pieces = self._pieces
        if pieces.file_body and message["type"] == "http.response.pathsend":
            # starlette#2649 (0.38.1 took the extension out of FileResponse again); 1.10.0 hands
            # the message on as the last of call_next's body, and the layer's response sends it
            # as it is, for the server to send the file (after_response._stream_as_newest). call_next's
            # body asserts body messages: it goes inside one, which body_stream yields as a
            # chunk, as 1.10.0's body_stream yields the message.
            self.over = True
            return self._send_last({"type": "http.response.body", "body": message, "more_body": False})
        if pieces.template_info and not self.started:
            # starlette#1991 (0.24.0): call_next asserts that the start comes first, so the debug
            # extension's `http.response.template` (a TemplateResponse under the TestClient)
            # breaks the layer. It goes to the layer's own send, ahead of the layer's start, as
            # 0.24.0 sends it ahead of its response.
            return self._out(message)
        return self._send(message)

    async def _send_last(self, message: Message) -> None:
        """The last body message; then the end of call_next's body (end-at-last), and the wait
        for the layer's response to be sent (wait-sent). One coroutine per response, none per chunk."""
        pieces = self._pieces
        if pieces.end_at_last:
            message = {**message, "body": _LastChunk(message.get("body", b""))}
        await self.to_call_next(message)
        if pieces.end_at_last:
            # starlette#919, #2194 (0.29.0): on 0.28.0 the layer's body ends only when the inner
            # app returns, after its background tasks, so a chunked answer is not complete until then.
            await _close(self._stream)
        if pieces.waits_sent:
            # starlette#3476 (1.7.0): the inner app's work after its response (background tasks)
            # starts only once the layer has sent its own response, as 1.10.0's send_no_error
            # waits for `response_sent` after the last body message or pathsend. starlette's own
            # event: no event of ours. Mostly it is set by now (the layer sent its response while
            # this send waited for its turn): then no wait, whose checkpoint would cost the inner
            # app one more turn of the event loop.
            sent = _response_sent(self._receive)
            if sent is not None and not sent.is_set():
                await sent.wait()

    def to_call_next(self, message: Message) -> Awaitable[None]:
        """call_next's send, without the checkpoint that anyio's takes first (_send_now)."""
        state = self._state
        if state is None:  # pragma: no cover  # an anyio whose streams the shim does not know
            return self._send(message)
        return _send_now(self._stream, state, message, self._drops)

    # finish-runs (after_response): the inner app's send and receive where the run is let finish,
    # and what the layer awaits once its response is sent.
    send = _run_send
    receive = _run_receive
    finish = _run_finish
