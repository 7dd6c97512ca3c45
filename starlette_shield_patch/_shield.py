"""The per-request code. Imported only once starlette.middleware.base is, so anyio is loaded by then.

How a request flows: the wrapt wrapper on BaseHTTPMiddleware.__call__ (`wrapper_for`) runs
starlette's own __call__ with a stand-in `self`. starlette reads two attributes of it,
`dispatch_func` and `app`, and the pieces of the fixes hook in at three places:

- `app`, which call_next runs: the inner app's `send` delivers `http.response.start` despite a
  pending cancellation (start-first); where a piece needs to know how the inner app did, it runs
  in a `_Run` (finish-runs, own-error, body-error, late-error, drop-broken-send), which hands
  starlette the inner app's error raised from its own cause or context (own-context);
- `dispatch_func`: the call_next that the dispatch gets (own-error, body-error; its response
  does not listen for the disconnect: no-listen; its body, or its frame where it raised, is
  kept: close-streams), and the response the dispatch returns, which lets the runs finish once
  it is sent (finish-runs);
- the layer as a whole (`_layer`): what escapes it (collapse-groups, close-streams), and the
  errors that the runs kept for after the response (late-error; with finish-runs, _ThenFinish
  raises them itself).

Which pieces a release needs is said once, in _guard.PIECES; `InForce` is that set of names as
the request path reads it.
"""

from __future__ import annotations

import builtins
import sys
from contextlib import suppress
from types import MethodType
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Dict, Iterable, cast

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
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

Message = Dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
App = Callable[[Any, Receive, Send], Awaitable[None]]

if TYPE_CHECKING:
    _Proxy = wrapt.ObjectProxy[Any]
else:
    _Proxy = wrapt.ObjectProxy  # not subscriptable at run time on wrapt 1.x

# The standard library's from 3.11 on; below it the exceptiongroup backport, which anyio 4 (the
# only anyio whose groups collapse-groups collapses) imports itself. Taken from sys.modules, never
# imported: importing the backport replaces sys.excepthook and patches traceback, and anyio 3.7
# requires it without importing it (trio < 0.22 then warns at its own import).
_BaseExceptionGroup: Any = getattr(
    builtins, "BaseExceptionGroup", getattr(sys.modules.get("exceptiongroup"), "BaseExceptionGroup", None)
)


class InForce:
    """The pieces that the request path runs (named as in _guard.PIECES), and where they hook in."""

    __slots__ = (
        "body_error",
        "close_discarded",
        "close_request_streams",
        "close_streams",
        "collapse_groups",
        "drop_broken_send",
        "end_at_last",
        "file_body",
        "finish_runs",
        "keeps_late",
        "late_error",
        "no_listen",
        "own_context",
        "own_error",
        "raises_kept",
        "read_body",
        "runs",
        "sees_responses",
        "skip_empty",
        "template_info",
        "url_for",
        "waits_sent",
        "wraps_call_next",
        "wraps_dispatch",
        "wraps_layer",
    )

    def __init__(self, names: Iterable[str]) -> None:
        # start-first is in force wherever the shim patches (the response-start fix is never off).
        names = set(names)
        self.drop_broken_send = "drop-broken-send" in names
        self.no_listen = "no-listen" in names
        self.finish_runs = "finish-runs" in names
        self.own_error = "own-error" in names
        self.body_error = "body-error" in names
        # Without a BaseExceptionGroup (Python < 3.11 without the backport) there is none to collapse.
        self.collapse_groups = "collapse-groups" in names and _BaseExceptionGroup is not None
        self.own_context = "own-context" in names
        self.late_error = "late-error" in names
        self.close_streams = "close-streams" in names
        self.close_discarded = "close-discarded-streams" in names  # on releases with close-streams
        self.close_request_streams = "close-request-streams" in names
        self.read_body = "read-body" in names
        self.skip_empty = "skip-empty-chunks" in names
        self.template_info = "template-info" in names
        self.file_body = "file-body" in names
        self.url_for = "url-for" in names
        self.end_at_last = "end-at-last" in names
        self.waits_sent = "wait-sent" in names
        # Where they hook in, so that a request pays only for the hooks its pieces need.
        self.keeps_late = self.finish_runs or self.late_error  # a run keeps an error after its response
        self.wraps_call_next = self.body_error  # every release with own-error has body-error too
        sends = self.skip_empty or self.template_info or self.file_body or self.end_at_last
        self.runs = self.keeps_late or self.wraps_call_next or self.drop_broken_send or sends
        self.runs = self.runs or self.waits_sent
        self.sees_responses = self.no_listen or self.close_streams  # what call_next returns
        self.wraps_dispatch = (
            self.finish_runs
            or self.wraps_call_next
            or self.read_body
            or self.sees_responses
            or self.close_request_streams
        )
        # finish-runs raises what its runs kept itself (_ThenFinish); a layer coroutine is paid
        # only where a piece needs one.
        self.raises_kept = self.late_error or (self.body_error and not self.finish_runs)
        self.wraps_layer = self.raises_kept or self.collapse_groups or self.close_streams


# What the request path does; written only by _patch._request_path. None: every call passes
# through (remove() had to leave the wrapper in place under someone else's).
in_force: InForce | None = None


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


# _cell: (id of a code object, a free variable's name) -> (that code object, the index of its cell)
_CELL_INDEX: dict[tuple[int, str], tuple[Any, int]] = {}


def _cell(function: Any, name: str) -> Any:
    """The cell of `function`'s closure that holds its free variable `name`, or None."""
    # starlette's __call__ makes its closures anew for each request, over the same code objects:
    # the index is looked up once per code object. Not keyed by the code object itself: hashing
    # one hashes its constants, nested code objects too (measured: 10k instructions per request
    # for call_next's).
    code = getattr(function, "__code__", None)
    key = (id(code), name)
    known = _CELL_INDEX.get(key)
    if known is None or known[0] is not code:
        if code is None or name not in code.co_freevars:  # pragma: no cover  # every such release
            return None
        known = _CELL_INDEX[key] = (code, code.co_freevars.index(name))
    return function.__closure__[known[1]]


def _response_sent(receive: Any) -> Any:
    """wait-sent: starlette's `response_sent` event (0.28.0 and later) from the receive that
    call_next hands the inner app (receive_or_disconnect, a closure over it), or None."""
    cell = _cell(receive, "response_sent")
    return None if cell is None else cell.cell_contents


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
        "_on_end",
        "_out",
        "_pieces",
        "_receive",
        "_receiving",
        "_send",
        "_sent",
        "_stream",
        "detached",
        "ended",
        "failed",
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
        self._send = send  # call_next's own
        self._receive = receive
        self._out = out  # the layer's own send (template-info)
        self.started = False  # it sent http.response.start
        self.over = False  # its last body message was delivered, or the layer stopped listening
        self.detached = False  # the layer's response is done and the layer waits for it
        self.ended = False
        self.failed: Exception | None = None  # raised during its response, not raised yet
        self.late: Exception | None = None  # raised after its response was over
        self._on_end: Event | None = None
        self._sent: Event | None = None  # wait-sent, with finish-runs: set once the layer's response is sent
        self._receiving: set[CancelScope] | None = None  # receive() calls in progress
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
            return self._send(message)
        if kind == "http.response.start":
            self.started = True
            return _deliver_start(self._stream, message, self._send)
        return self._other(message)

    def _other(self, message: Message) -> Awaitable[None]:
        """A message that is neither the start nor a body chunk."""
        pieces = self._pieces
        if pieces.file_body and message["type"] == "http.response.pathsend":
            # starlette#2649 (0.38.1 took the extension out of FileResponse again); 1.10.0 hands
            # the message on as the last of call_next's body, and the layer's response sends it
            # as it is, for the server to send the file (_respond_as_newest). call_next's
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
        await self._send(message)
        if pieces.end_at_last:
            # starlette#919, #2194 (0.29.0): on 0.28.0 the layer's body ends only when the inner
            # app returns, after its background tasks, so a chunked answer is not complete until then.
            await self._stream.aclose()
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

    async def send(self, message: Message) -> None:
        """The inner app's send (finish-runs): call_next's, start first; dropped once the response
        is over."""
        if self.over:
            # As 0.21.0: nobody reads what an inner app sends once its response is over. Still a
            # checkpoint, as anyio's send is: an app that sends in a loop until it is told of the
            # disconnect must not keep the event loop from telling it.
            await checkpoint()
            return
        try:
            kind = message["type"]
            if kind == "http.response.body":
                last = not message.get("more_body", False)
                if last and self._pieces.end_at_last:
                    await self._send({**message, "body": _LastChunk(message.get("body", b""))})
                elif self._pieces.skip_empty and not message.get("body"):
                    await checkpoint()  # not passed on (skip-empty-chunks), still a checkpoint
                else:
                    await self._send(message)
                if last:
                    self.over = True
                    # starlette#919: before 0.20.1 the layer's body ends only when this stream
                    # closes, which starlette does when the inner app returns, after its
                    # background work. Close it now.
                    await self._stream.aclose()
                    if not self.detached:
                        # wait-sent (starlette#3476, 1.7.0; with finish-runs on the same
                        # releases, in the same fix): its work after the response starts once
                        # the layer's response is sent: finish() says so. 0.15 - 0.20.4 have no
                        # response_sent: one event per run.
                        self._sent = Event()
                        await self._sent.wait()
                return
            if kind == "http.response.start":
                self.started = True
                await _deliver_start(self._stream, message, self._send)
                return
            await self._other(message)
        except (BrokenResourceError, ClosedResourceError):
            # The layer stopped reading (its response was cut short, or is done and finish()
            # closed the stream): dropped, as 0.21.0 drops it.
            self.over = True

    async def receive(self) -> Message:
        """The inner app's receive (finish-runs): the request's, or http.disconnect once detached."""
        if self.detached:
            return {"type": "http.disconnect"}
        with CancelScope() as waiting:
            if self._receiving is None:
                self._receiving = set()
            self._receiving.add(waiting)
            try:
                message = await self._receive()
            finally:
                self._receiving.discard(waiting)
            if self.noted is not None:
                _note(self.noted, message)
            return message
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
        if self._sent is not None:
            # wait-sent: it waits for this after its last body message. Most runs then return at
            # once (nothing to do after the response): one checkpoint lets them, and spares the
            # event below.
            self._sent.set()
            await checkpoint()
            if self.ended:
                return
        self._on_end = Event()
        await self._on_end.wait()


class _ThenFinish:
    """finish-runs: the layer's response; once it is sent, the inner app's runs finish before
    starlette cancels them."""

    __slots__ = ("_call_next", "_response", "_runs")

    def __init__(self, response: Any, runs: list[_Run], call_next: Any) -> None:
        self._response = response
        self._runs = runs
        self._call_next = call_next  # starlette's own

    def __call__(self, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function: call_next's own response streams in the coroutine that then finishes
        # the runs, so each resume of the layer's task passes through one frame fewer.
        response = self._response
        if type(response) in _STREAMED_HERE:
            return _stream_then_finish(response, send, self._runs, self._call_next)
        return self._respond_then_finish(scope, receive, send)

    async def _respond_then_finish(self, scope: Any, receive: Receive, send: Send) -> None:
        await self._response(scope, receive, send)
        await _finish(self._runs, self._call_next)


async def _stream_then_finish(response: Any, send: Send, runs: list[_Run], call_next: Any) -> None:
    """finish-runs: call_next's response as its no-listen __call__ sends it, then the runs finish."""
    # StreamingResponse.stream_response, the same in every release from 0.15.0 to 0.20.4 (the
    # releases with finish-runs); _not_listening_class checks that the class streams with it.
    start = {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    await send(start)
    body = response.body_iterator
    async for chunk in body:
        if type(chunk) is _LastChunk:  # end-at-last (0.15.0 - 0.20.0): no receive after it
            if len(chunk):
                await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
            await body.aclose()
            break
        if not isinstance(chunk, bytes):
            chunk = chunk.encode(response.charset)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    if response.background is not None:  # set by the dispatch: after the body, as no-listen runs it
        await response.background()
    await _finish(runs, call_next)


async def _finish(runs: list[_Run], call_next: Any) -> None:
    """finish-runs: once the layer's response is sent, wait for the runs that are still going,
    raise what they kept, and let starlette cancel only what is left."""
    for run in runs:
        if not run.ended:  # most have returned already, and cost no coroutine here
            await run.finish()
    _raise_kept(runs)
    _cancel_only_if_busy(call_next)


def _cancel_only_if_busy(call_next: Any) -> None:
    """finish-runs: starlette's next step, `task_group.cancel_scope.cancel()`, is made only where
    a task of the layer's task group is still going (a run that never started its response)."""
    # Once every run has finished, that cancel can stop nothing: the layer's own task is at the
    # end of its `async with` block. It is still dear on anyio 4 (measured: 82k of the 984k
    # instructions of a plain request through one layer; 16k on anyio 3). 0.15 - 0.20.4, the
    # releases with finish-runs, all make it right after the response, with no await between:
    # the group's cancel_scope is swapped for one whose cancel() only puts the real one back.
    cell = _cell(call_next, "task_group")
    if cell is None:  # pragma: no cover  # every such release
        return
    group = cell.cell_contents
    if _idle(group):
        group.cancel_scope = _CancelSkipped(group, group.cancel_scope)


def _idle(group: Any) -> bool:
    """Whether every task that the task group `group` started has ended. Read from anyio's
    internals where they are known; anything else counts as busy (cancelled, as unpatched)."""
    tasks = getattr(group, "_tasks", None)
    if tasks is not None:  # asyncio, anyio >= 4.2: the group's own tasks
        return all(task.done() for task in tasks)
    nursery = getattr(group, "_nursery", None)
    if nursery is not None:  # trio: its child tasks leave the nursery as they end
        return not nursery.child_tasks
    scope = group.cancel_scope
    tasks = getattr(scope, "_tasks", None)
    # asyncio, anyio < 4.2: the scope's tasks are its host and every task the group started,
    # wherever they are; from 4.2 on (where the group has _tasks) a task in a nested scope leaves
    # them, which `_child_scopes` tells.
    if tasks is None or hasattr(scope, "_child_scopes"):  # pragma: no cover  # an anyio we do not know
        return False
    host = scope._host_task
    return all(task is host or task.done() for task in tasks)


class _CancelSkipped:
    """finish-runs: the cancel scope of an idle task group, until starlette cancels it."""

    __slots__ = ("_group", "_scope")

    def __init__(self, group: Any, scope: Any) -> None:
        self._group = group
        self._scope = scope

    def cancel(self, *args: Any) -> None:
        # The group gets its own scope back before anything else can read it; nothing to cancel.
        self._group.cancel_scope = self._scope

    def __getattr__(self, name: str) -> Any:  # pragma: no cover  # starlette calls cancel() at once
        return getattr(self._scope, name)


def _raise_kept(runs: list[_Run]) -> None:
    """late-error (starlette#2812), finish-runs: the error a run raised after its response, once
    the layer's response is complete; and, as the newest starlette does, an error that neither
    call_next nor its body raised (the dispatch answered by itself)."""
    for run in runs:
        error = run.late or run.failed
        if error is not None:
            run.late = run.failed = None
            raise error


def _origin(error: BaseException) -> BaseException | None:
    """What `error` came from: raised again `from` it, it keeps that and not the exception we
    raise it in the handling of (as starlette's own create_collapsing_task_group does)."""
    return error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def _calls_next_raising(call_next: Any, pieces: InForce, runs: list[_Run]) -> Any:
    """body-error, own-error: call_next's body raises the inner app's error, and so does call_next."""

    async def call_next_raising(request: Any) -> Any:
        try:
            response = await call_next(request)
        except RuntimeError as exc:
            # starlette#1262 (0.17.0): 0.15.0 and 0.16.0 say "No response returned." where the
            # inner app failed before its response (own-error); the run kept that error instead.
            failed = runs[-1].failed if pieces.own_error and runs else None
            if failed is None or str(exc) != "No response returned.":
                raise
            runs[-1].failed = None
            raise failed from _origin(failed)
        # call_next returns once a run has sent its start: the last run is the response's.
        response.body_iterator = _body_then_error(response.body_iterator, runs[-1])
        return response

    return call_next_raising


async def _body_then_error(body: AsyncIterator[bytes], run: _Run) -> AsyncIterator[bytes]:
    """body-error: call_next's body, then the error its inner app failed with, as 0.19.0 raises it."""
    # starlette#1459: 0.17.0 and 0.18.0 end the body quietly, so the client gets a truncated
    # answer that looks whole and nothing is logged. Raising here stops the layer's response
    # before its last message, as 0.19.0 does.
    try:
        async for chunk in body:
            yield chunk
    except GeneratorExit:
        # Closed before its end (a dispatch that reads a chunk, then closes the body): close
        # call_next's own body too, as closing it unwrapped does. Left suspended, it would be
        # finalized by the collector, which trio reports ("Exception ignored in: <async_generator
        # object ... body_stream>"). Nothing on the usual path.
        await body.aclose()  # type: ignore[attr-defined]
        raise
    failed = run.failed
    if failed is not None:
        run.failed = None
        raise failed


def _seeing_responses(call_next: Any, layer: _StandIn) -> Any:
    """no-listen, close-streams: call_next, and what it returns before the dispatch gets it."""
    pieces = layer.pieces

    async def call_next_seen(request: Any) -> Any:
        try:
            response = await call_next(request)
        except BaseException as exc:
            if pieces.close_streams:  # its streams, from the frame it raised through
                layer.kept += _frames_of_call_next(exc.__traceback__)
            raise
        if pieces.no_listen:
            response.__class__ = _not_listening_class(type(response), pieces.file_body or pieces.end_at_last)
        if pieces.close_streams:
            layer.kept.append(response.body_iterator)
        return response

    return call_next_seen


# no-listen: the class of call_next's response (starlette.responses.StreamingResponse on 0.15.0 -
# 0.20.4, starlette.middleware.base._StreamingResponse on 0.28.0 - 0.38.2) -> its subclass of
# the same name that does not listen, made once.
_NOT_LISTENING: dict[type, type] = {}
# file-body, end-at-last: the same, for the classes whose __call__ streams as 1.10.0's does.
_AS_NEWEST: dict[type, type] = {}


def _not_listening_class(cls: type, as_newest: bool = False) -> type:
    made = _AS_NEWEST if as_newest else _NOT_LISTENING
    quiet = made.get(cls)
    if quiet is None:
        respond = _respond_without_listening
        if as_newest and _streams_as_in_base(cls):
            respond = _respond_as_newest
        namespace = {"__call__": respond, "__module__": cls.__module__, "__slots__": ()}
        quiet = made[cls] = type(cls.__name__, (cls,), namespace)
        quiet.__qualname__ = cls.__qualname__
        stream_response = getattr(cls, "stream_response", None)
        if getattr(stream_response, "__qualname__", None) == "StreamingResponse.stream_response" and (
            getattr(stream_response, "__module__", None) == "starlette.responses"
        ):
            _STREAMED_HERE.add(quiet)
    return quiet


# finish-runs: the not-listening classes whose body _stream_then_finish sends: those that stream
# with starlette.responses.StreamingResponse's own stream_response, not with one that others put
# over it before the first request (one put there later is not seen).
_STREAMED_HERE: set[type] = set()


def _respond_without_listening(self: Any, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
    """no-listen: StreamingResponse.__call__ of 0.15.0 - 0.38.2 without its disconnect listener."""
    # starlette#2516, #2620 (0.38.3): call_next's response ran a task that listens for the
    # disconnect beside the one that streams, in every layer: on disconnect each layer cancelled
    # its own streaming, and with four or more layers one cancelled before the start it had to
    # pass on ("No response returned."); on 0.15 - 0.20.4 starlette then cancelled the inner
    # app's work. 0.38.3 and later only stream it: the inner app hears the disconnect itself (its
    # receive), and its end ends this body. The task group and its listener were most of what a
    # layer cost (0.38.3 is 35% cheaper than 0.37.2 per request).
    if self.background is None:
        # A plain function that returns stream_response's coroutine: while the body streams,
        # every resume of the layer's task passes through one frame fewer.
        return self.stream_response(send)  # type: ignore[no-any-return]
    return _stream_then_background(self, send)


def _streams_as_in_base(cls: type) -> bool:
    """file-body, end-at-last: whether `cls` streams with starlette.middleware.base's
    _StreamingResponse.stream_response (0.28.0 - 0.38.2) over starlette.responses.StreamingResponse's,
    not with one that others put over either (_respond_as_newest does what the two do)."""
    own = getattr(cls, "stream_response", None)
    inherited = getattr(super(cls, cls), "stream_response", None)
    return _is_function(own, "starlette.middleware.base", "_StreamingResponse.stream_response") and (
        _is_function(inherited, "starlette.responses", "StreamingResponse.stream_response")
    )


def _is_function(function: Any, module: str, qualname: str) -> bool:
    named = getattr(function, "__qualname__", None) == qualname
    return named and getattr(function, "__module__", None) == module


async def _respond_as_newest(self: Any, scope: Any, receive: Receive, send: Send) -> None:
    """no-listen with file-body or end-at-last: call_next's response as 0.28.0 - 0.38.0 stream it
    without the disconnect listener, but as in 1.10.0's _StreamingResponse.__call__ a pathsend
    message in its body goes to the server as it is and ends it (file-body), and the body ends at
    the inner app's last message (end-at-last, 0.28.0)."""
    if self._info:
        await send({"type": "http.response.debug", "info": self._info})
    await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
    closes_body = True
    body = self.body_iterator
    async for chunk in body:
        if isinstance(chunk, dict):  # the pathsend message (_Run._other): the file is the body
            closes_body = False
            await send(chunk)
            continue
        if type(chunk) is _LastChunk:  # no receive after it (see _LastChunk)
            if len(chunk):
                await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
            await body.aclose()
            break
        if not isinstance(chunk, bytes):
            chunk = chunk.encode(self.charset)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    if closes_body:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    if self.background is not None:  # set by the dispatch
        await self.background()


async def _stream_then_background(response: Any, send: Send) -> None:
    """no-listen: the body, then the background task that a dispatch set on call_next's response
    (0.38.3 and 0.38.4 drop it; 0.38.5 and later run it)."""
    await response.stream_response(send)
    await response.background()


def _dispatch(dispatch: Any, layer: _StandIn, request: Any, call_next: Any) -> Awaitable[Any]:
    pieces = layer.pieces
    layer.request = request  # read-body: what the dispatch read of it
    if pieces.close_request_streams:
        _receive_closing_streams(request, call_next)
    starlettes = call_next
    if pieces.wraps_call_next:
        call_next = _calls_next_raising(call_next, pieces, layer.runs)
    if pieces.sees_responses:
        call_next = _seeing_responses(call_next, layer)
    if pieces.finish_runs:
        return _then_finish(dispatch(request, call_next), layer.runs, starlettes)
    return dispatch(request, call_next)  # type: ignore[no-any-return]


async def _then_finish(response: Awaitable[Any], runs: list[_Run], call_next: Any) -> _ThenFinish:
    return _ThenFinish(await response, runs, call_next)


def _app(app: App, layer: _StandIn, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
    pieces = layer.pieces
    noted = None
    if pieces.read_body:
        receive, noted = _with_body_read(layer.request, receive, pieces.finish_runs)
    if not pieces.runs:
        return app(scope, receive, _start_first(send))
    stream = _call_next_stream(send)
    if stream is None:  # pragma: no cover  # see _call_next_stream
        return app(scope, receive, send)
    run = _Run(pieces, stream, send, receive, layer.send)
    run.noted = noted
    layer.runs.append(run)
    return run.run(app, scope)


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


def _receive_closing_streams(request: Any, call_next: Any) -> None:
    """close-request-streams: the layer's `wrapped_receive` becomes one that closes the stream()
    it reads a chunk from."""
    # starlette#3628 (1.8.0): 0.28.0 - 0.38.2's _CachedRequest.wrapped_receive takes each chunk
    # for the inner app from a new request.stream() and leaves it suspended at its `yield`.
    # Refcounting frees it at once; under trio the finalizer hook then warns (ResourceWarning
    # "Async generator 'starlette.requests.Request.stream' was garbage collected before it had
    # been exhausted"), in a GC context: "Exception ignored in: <async_generator ...>", once per
    # layer and request (a PytestUnraisableExceptionWarning under pytest). __call__ reads
    # `wrapped_receive` from a cell that call_next closes over; it is swapped for the same code
    # with the stream closed, as 1.8.0 closes it (aclosing).
    if getattr(type(request), "wrapped_receive", None) is not _cached_wrapped_receive():
        return  # pragma: no cover  # every release with the piece
    cell = _cell(call_next, "wrapped_receive")
    if cell is None or getattr(cell.cell_contents, "__self__", None) is not request:  # pragma: no cover
        return  # see above
    cell.cell_contents = MethodType(_wrapped_receive_closing, request)


def _cached_wrapped_receive() -> Any:
    """starlette's own _CachedRequest.wrapped_receive (0.28.0 - 0.38.2)."""
    base = sys.modules.get("starlette.middleware.base")
    return getattr(getattr(base, "_CachedRequest", None), "wrapped_receive", None)


def _client_disconnect() -> Any:
    """close-request-streams: starlette.requests.ClientDisconnect, as base.py imports it."""
    return sys.modules["starlette.middleware.base"].ClientDisconnect


async def _wrapped_receive_closing(request: Any) -> Message:
    """close-request-streams: 0.28.0 - 0.38.2's _CachedRequest.wrapped_receive (the same in each),
    with the stream() it reads from closed once it has its chunk, as 1.8.0 reads it."""
    if request._wrapped_rcv_disconnected:
        return {"type": "http.disconnect"}
    if request._wrapped_rcv_consumed:
        if request._is_disconnected:
            request._wrapped_rcv_disconnected = True
            return {"type": "http.disconnect"}
        message: Message = await request.receive()
        if message["type"] != "http.disconnect":  # pragma: no cover  # as upstream
            raise RuntimeError(f"Unexpected message received: {message['type']}")
        return message
    if getattr(request, "_body", None) is not None:
        request._wrapped_rcv_consumed = True
        return {"type": "http.request", "body": request._body, "more_body": False}
    if request._stream_consumed:
        request._wrapped_rcv_consumed = True
        return {"type": "http.request", "body": b"", "more_body": False}
    stream = request.stream()
    try:
        chunk = await stream.__anext__()
    except _client_disconnect():  # evaluated only when something was raised
        request._wrapped_rcv_disconnected = True
        return {"type": "http.disconnect"}
    finally:
        await stream.aclose()
    request._wrapped_rcv_consumed = request._stream_consumed
    return {"type": "http.request", "body": chunk, "more_body": not request._stream_consumed}


# collapse-groups: the modules whose __call__ opens a task group that 1.10.0 collapses
# (create_collapsing_task_group): the layer's own and StreamingResponse's.
_STARLETTES_GROUPS = ("starlette.middleware.base", "starlette.responses")


def _from_starlettes_task_group(group: BaseException) -> bool:
    """collapse-groups: whether anyio raised `group` as the task group of a starlette __call__
    (the layer's, a StreamingResponse's) exits: that frame, then the task group's __aexit__."""
    tb = group.__traceback__
    while tb is not None and tb.tb_next is not None:
        code = tb.tb_frame.f_code
        if (
            code.co_name == "__call__"
            and tb.tb_next.tb_frame.f_code.co_name == "__aexit__"
            and tb.tb_frame.f_globals.get("__name__") in _STARLETTES_GROUPS
        ):
            return True
        tb = tb.tb_next
    return False


def _unwrap(group: BaseException) -> BaseException:
    """collapse-groups: the error in the groups of one that starlette's own task groups added; a
    group that the app made (or its own task group), or a group of several, stays."""
    # starlette#2211 (0.31.0): anyio 4 wraps every error that leaves a task group in an
    # ExceptionGroup, one level per layer (and one more per StreamingResponse), so an outer
    # `except MyError` misses it and servers and error trackers see "unhandled errors in a
    # TaskGroup". starlette#2830 (1.3.0): 0.31 - 0.38.2 collapse every group of one, the app's
    # own too; 1.10.0 collapses only what its task groups added. A cancellation stays one.
    error = group
    while (
        isinstance(error, _BaseExceptionGroup)
        and len(error.exceptions) == 1
        and _from_starlettes_task_group(error)
    ):
        error = error.exceptions[0]
    return error


# collapse-groups on 0.31 - 0.38.2: the context manager around the layer's task group that
# collapses every group of one (0.31.0's own, starlette._utils' from 0.32.0 on).
_COLLAPSES_EVERY_GROUP = ("_convert_excgroups", "collapse_excgroups")


def _collapsed_by_starlette(exc: BaseException) -> BaseException | None:
    """collapse-groups on 0.31 - 0.38.2: the group that starlette's collapse_excgroups caught and
    raised `exc`, the error that group holds however deep, in the handling of, or None."""
    group = exc.__context__
    tb = getattr(group, "__traceback__", None)
    # It caught the group last: its frame heads the group's traceback.
    if tb is None or tb.tb_frame.f_code.co_name not in _COLLAPSES_EVERY_GROUP:
        return None
    error = group
    while isinstance(error, _BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]  # as collapse_excgroups does
    return cast(BaseException, group) if error is exc and error is not group else None


def _raise_uncollapsed(exc: BaseException) -> None:
    """collapse-groups: raise the error that escaped the layer without the groups that starlette's
    task groups added, or return to let `exc` go as it is."""
    # An error that 0.31 - 0.38.2 collapsed: the group it came from is the layer's task group's
    # (anyio 4), which may hold the app's own group, or the app's own group (anyio 3).
    group = _collapsed_by_starlette(exc)
    if group is not None:
        error = _unwrap(group)
        origin = _origin(error)
        # starlette#2976: collapse_excgroups raises it in the handling of the group, so the
        # context of an error that was not raised `from` its own (the dispatch's) is lost: none
        # is shown rather than the layer's plumbing.
        raise error from (None if origin is group else origin)
    if isinstance(exc, _BaseExceptionGroup):  # the layer's task group's (0.19 - 0.20.4, 0.28 - 0.30)
        error = _unwrap(exc)
        # pragma below: on these releases call_next's task keeps the inner app's error, so what
        # leaves the layer's task group is its group of one around the host's; a group it does
        # not know (several, or not starlette's) goes on as it is.
        if error is not exc:  # pragma: no branch
            raise error from _origin(error)


async def _layer(call: Awaitable[None], pieces: InForce, stand_in: _StandIn) -> None:
    """The layer as a whole: what escapes it, the streams it leaves, and the errors its runs kept
    for after the response."""
    try:
        await call
    except BaseException as exc:
        if pieces.close_streams:
            _close_streams(stand_in.kept)
        if pieces.collapse_groups:
            _raise_uncollapsed(exc)
        raise
    if pieces.close_discarded:
        _close_streams(stand_in.kept)
    elif pieces.close_streams:
        stand_in.kept.clear()  # a call_next frame holds the stand-in: no cycle for the collector
    if pieces.raises_kept:
        _raise_kept(stand_in.runs)


def _frames_of_call_next(tb: Any) -> list[Any]:
    """close-streams: the call_next frames of a traceback."""
    frames = []
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "call_next":
            frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _close_streams(kept: list[Any]) -> None:
    """close-streams: now that the layer is done, close the memory streams of the call_next calls
    it kept: of each body that was not read to its end, and of each call that raised."""
    # starlette#2813 (0.45.1): call_next creates its streams and closes the receiving one only
    # once the body is read to its end (0.19 - 0.20.4) or the response is sent (0.28 - 0.38.2).
    # When the endpoint or the dispatch raises, the dispatch answers by itself, or the request is
    # cancelled, that never happens, and anyio 4 warns when the stream is collected
    # (ResourceWarning: a test suite run with -W error fails). A body read to its end has no
    # frame left (it closed its stream itself): the usual case looks into no frame. The sending
    # end is closed by call_next's task once the inner app has started, however it ends; it is
    # in the frame of a call_next that raised. Closing twice does nothing.
    for body_or_frame in kept:
        frame = getattr(body_or_frame, "ag_frame", body_or_frame)  # a body's, or a call_next's
        if frame is None:
            continue
        names = frame.f_locals
        for name in ("send_stream", "recv_stream"):
            stream = names.get(name)
            if isinstance(stream, (MemoryObjectSendStream, MemoryObjectReceiveStream)):
                stream.close()
    kept.clear()  # a call_next frame holds the stand-in: no cycle for the collector


# The stand-ins: what starlette's __call__ gets as `self`. starlette's own __call__ reads only
# `dispatch_func` and `app`, so a slotted object will do (`_StandIn`); a __call__ that others
# wrapped before the shim (sentry-sdk) may look at `self` in any way, so it gets a transparent
# proxy (`_ProxyStandIn`). Both hand the work to _dispatch and _app.


class _StandIn:
    """What starlette's own __call__ gets as `self`, and what the layer keeps for one request."""

    __slots__ = ("_middleware", "kept", "pieces", "request", "runs", "send")

    def __init__(self, middleware: Any, pieces: InForce, send: Send) -> None:
        self._middleware = middleware
        self.pieces = pieces
        self.send = send  # the layer's own (template-info)
        self.request: Any = None  # the Request the dispatch got (read-body)
        self.runs: list[_Run] = []
        # close-streams: the body of each response that call_next returned, and the frame of each
        # call_next that raised
        self.kept: list[Any] = []

    @property
    def dispatch_func(self) -> Any:
        # A property, not a bound method kept in a slot: that would make each stand-in a
        # reference cycle, freed only by the cyclic garbage collector.
        return self._dispatch if self.pieces.wraps_dispatch else self._middleware.dispatch_func

    def _dispatch(self, request: Any, call_next: Any) -> Awaitable[Any]:
        return _dispatch(self._middleware.dispatch_func, self, request, call_next)

    def app(self, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
        return _app(self._middleware.app, self, scope, receive, send)

    def __getattr__(self, name: str) -> Any:  # anything else a forced release might read
        return getattr(self._middleware, name)


class _ProxyStandIn(_Proxy):
    """The stand-in for a __call__ that others wrapped: the middleware itself to them, but for
    dispatch_func and app, which are those of the layer's _StandIn."""

    def __init__(self, middleware: Any, layer: _StandIn) -> None:
        super().__init__(middleware)
        self._self_layer = layer

    @property
    def dispatch_func(self) -> Any:
        return self._self_layer.dispatch_func

    def app(self, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
        return self._self_layer.app(scope, receive, send)


# The receives that the shim hands on: a layer that gets one of them is not the outermost.
_handed_on = (
    _Client.receive.__code__,
    _Client.receive_noting.__code__,
    _Run.receive.__code__,
    _BodyRead.receive.__code__,
    _BodyRead.dispatch_receive.__code__,
)


def _route_for_url_for(scope: Any) -> None:
    """url-for: the router that request.url_for needs, which the app's router puts in the scope
    only below the layers."""
    # starlette#2672 (0.39.2): url_for in a dispatch failed with KeyError('router'); 0.39.2 falls
    # back to scope["app"]. The app's router sets scope["router"] to itself next, where it is
    # not there yet: setting it a layer earlier changes nothing below.
    router = getattr(scope.get("app"), "router", None)
    if router is not None:
        scope["router"] = router


def wrapper_for(original: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Build the wrapt wrapper for BaseHTTPMiddleware.__call__ around `original`."""
    # functools.wraps copies __module__, but not the absence of __wrapped__.
    wrapped_by_others = hasattr(original, "__wrapped__")
    starlettes_own = (
        getattr(original, "__module__", None) == "starlette.middleware.base" and not wrapped_by_others
    )

    def patched_call(
        wrapped: Callable[..., Awaitable[None]],
        instance: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Awaitable[None]:
        if instance is None and args:  # called through the raw class attribute, self first
            instance, args = args[0], args[1:]
        pieces = in_force
        if pieces is not None and len(args) == 3 and args[0]["type"] == "http":
            scope, receive, send = args
            if getattr(receive, "__code__", None) not in _handed_on:  # the outermost layer
                client = _Client(receive)
                receive = client.receive_noting if pieces.read_body else client.receive
            if pieces.url_for and "router" not in scope:
                _route_for_url_for(scope)
            layer = _StandIn(instance, pieces, send)
            stand_in = layer if starlettes_own else _ProxyStandIn(instance, layer)
            call = original(stand_in, scope, receive, send, **kwargs)
            return _layer(call, pieces, layer) if pieces.wraps_layer else call
        return original(instance, *args, **kwargs)

    return patched_call
