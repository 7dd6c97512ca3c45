"""The after-response fix (starlette#1438, #3476, #2620 on 0.15 - 0.20.4): the inner app's runs
finish once the layer's response is sent (finish-runs), and start their work after it then (wait-sent);
call_next's response does not listen for the disconnect (no-listen, shared with response_start)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable

from anyio import BrokenResourceError, CancelScope, ClosedResourceError, Event
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectSendStream

from .errors import _raise_kept
from .pass_through import _LastChunk, _note
from .pieces import _DONE, Message, Receive, Send, _cell, _is_function
from .response_start import _deliver_start

if TYPE_CHECKING:
    from .run import _Run


def _response_sent(receive: Any) -> Any:
    """wait-sent: starlette's `response_sent` event (0.28.0 and later) from the receive that
    call_next hands the inner app (receive_or_disconnect, a closure over it), or None."""
    cell = _cell(receive, "response_sent")
    return None if cell is None else cell.cell_contents


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


def _close(stream: MemoryObjectSendStream[Message]) -> Awaitable[None]:
    """Close `stream`: anyio's aclose() does no more than close() (3.1.0 and later), and costs a
    coroutine."""
    if _CLOSE is None:  # anyio 3.0.x: no close()
        return stream.aclose()
    _CLOSE(stream)
    return _DONE


_CLOSE = getattr(MemoryObjectSendStream, "close", None)


async def _run_send(run: _Run, message: Message) -> None:
    """The inner app's send (finish-runs): call_next's, start first; dropped once the response
    is over."""
    if run.over:
        # As 0.21.0: nobody reads what an inner app sends once its response is over. Still a
        # checkpoint, as anyio's send is: an app that sends in a loop until it is told of the
        # disconnect must not keep the event loop from telling it.
        await checkpoint()
        return
    try:
        kind = message["type"]
        if kind == "http.response.body":
            if message.get("more_body", False):
                if run._pieces.skip_empty and not message.get("body"):
                    await checkpoint()  # not passed on (skip-empty-chunks), still a checkpoint
                else:
                    await run.to_call_next(message)
                return
            # Its last body message: from here on what it does comes after its response, and
            # an outer layer's finish() leaves its receives to this run's (_run_finish).
            run.over = run.holding = True
            try:
                if run._pieces.end_at_last:  # every release with skip-empty-chunks too
                    await run.to_call_next({**message, "body": _LastChunk(message.get("body", b""))})
                else:
                    await run.to_call_next(message)
                # starlette#919: before 0.20.1 the layer's body ends only when this stream
                # closes, which starlette does when the inner app returns, after its background
                # work. Close it now.
                await _close(run._stream)
                if not run.detached:
                    # wait-sent (starlette#3476, 1.7.0; with finish-runs on the same releases,
                    # in the same fix): its work after the response starts once the layer's
                    # response is sent: finish() says so. 0.15 - 0.20.4 have no response_sent:
                    # one event per run.
                    run._sent = Event()
                    await run._sent.wait()
            finally:
                run.holding = False
            return
        if kind == "http.response.start":
            run.started = True
            await _deliver_start(run._stream, message, run.to_call_next)
            return
        await run._other(message)
    except (BrokenResourceError, ClosedResourceError):
        # The layer stopped reading (its response was cut short, or is done and finish()
        # closed the stream): dropped, as 0.21.0 drops it.
        run.over = True


async def _run_receive(run: _Run, inner: _Run | None = None) -> Message:
    """The inner app's receive (finish-runs): the request's, or http.disconnect once detached;
    `inner`: the run of a layer further in whose receive this is (the two are nested)."""
    if run.detached:
        return {"type": "http.disconnect"}
    with CancelScope() as waiting:
        if run._receiving is None:
            run._receiving = {}
        run._receiving[waiting] = inner
        try:
            receive = run._receive
            outer = getattr(receive, "__self__", None)
            if type(outer) is type(run) and getattr(receive, "__func__", None) is _run_receive:
                # The receive of a layer further out that lets its run finish too: its finish
                # leaves this one to this run's (see _run_finish).
                message: Message = await _run_receive(outer, run)
            else:
                message = await receive()
        finally:
            del run._receiving[waiting]
        if run.noted is not None:
            _note(run.noted, message)
        return message
    return {"type": "http.disconnect"}  # detached while it waited (cancelled by finish())


async def _run_finish(run: _Run) -> None:
    """Called once the layer's response is sent, while the inner app still runs: wait for it
    instead of letting starlette cancel it."""
    if not run.started or not _release_waiting_sends(run._stream):
        return  # starlette cancels it next, as unpatched
    run.over = run.detached = True
    # Nobody reads call_next's body any more: what the inner app sends from now on is dropped.
    await _close(run._stream)
    if run._sent is not None:
        run._sent.set()  # wait-sent: its last body message waits for this
    # Its last body message, released above or held for this (wait-sent), goes on first: the
    # receives are told only after it (an inner StreamingResponse of 0.15 - 0.20.4 that heard
    # http.disconnect first would cancel its own stream, still in that send).
    while run.holding:
        await checkpoint()
    if run.ended:
        return  # most runs: nothing to do after the response
    # A turn for what it does right after: that StreamingResponse cancels its own disconnect
    # listener, which spares it a second cancellation from its receive's scope here.
    await checkpoint()
    if run.ended:
        return
    # Its receives say http.disconnect now, but those of a layer further in that lets its own run
    # finish too and has had its last body message: that layer's finish tells them, once its
    # response is sent (the same turn or the next), and until then its inner app finishes
    # undisturbed, as with one layer.
    for waiting, inner in list(run._receiving.items()) if run._receiving else ():
        if inner is None or not inner.over:
            waiting.cancel()
    run._on_end = Event()
    await run._on_end.wait()


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
            return _stream_as_newest(response, send, None, self._runs, self._call_next)
        return self._respond_then_finish(scope, receive, send)

    async def _respond_then_finish(self, scope: Any, receive: Receive, send: Send) -> None:
        await self._response(scope, receive, send)
        await _finish(self._runs, self._call_next)


def _respond_as_newest(self: Any, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
    """no-listen with file-body or end-at-last: the __call__ of call_next's response, as
    _stream_as_newest sends it: starlette.middleware.base._StreamingResponse (0.24.0 - 0.38.2:
    _streams_as_in_base) with its debug info, or StreamingResponse (0.15.0 - 0.23.x)."""
    return _stream_as_newest(self, send, getattr(self, "_info", None), None, None)


async def _stream_as_newest(
    response: Any, send: Send, info: Any, runs: list[_Run] | None, call_next: Any
) -> None:
    """no-listen: call_next's response as 1.10.0's _StreamingResponse.__call__ sends it, without
    the disconnect listener; then, with finish-runs, the runs finish."""
    # StreamingResponse.stream_response, the same in every release from 0.15.0 to 0.20.4 (the
    # releases with finish-runs: _not_listening_class checks that the class streams with it),
    # and 0.28.0 - 0.38.2's _StreamingResponse.stream_response over it, with its debug info first;
    # as in 1.10.0, a pathsend message in the body goes to the server as it is and ends it
    # (file-body), and the body ends at the inner app's last message (end-at-last).
    if info:
        await send({"type": "http.response.debug", "info": info})
    start = {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    await send(start)
    closes_body = True
    body = response.body_iterator
    async for chunk in body:
        # One check per chunk where it is plain bytes, as stream_response's isinstance().
        if type(chunk) is not bytes:
            if type(chunk) is _LastChunk:  # end-at-last: no receive after it (see _LastChunk)
                if len(chunk):
                    await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
                await body.aclose()
                break
            if isinstance(chunk, dict):  # file-body: the pathsend message (_Run._other) is the body
                closes_body = False
                await send(chunk)
                continue
            if not isinstance(chunk, bytes):
                chunk = chunk.encode(response.charset)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    if closes_body:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    if response.background is not None:  # set by the dispatch: after the body, as no-listen runs it
        await response.background()
    if runs is not None:
        await _finish(runs, call_next)


async def _finish(runs: list[_Run], call_next: Any) -> None:
    """finish-runs: once the layer's response is sent, wait for the runs that are still going,
    raise what they kept, and let starlette cancel only what is left."""
    for run in runs:
        if not run.ended:  # most have returned already, and cost no coroutine here
            await run.finish()
    _raise_kept(runs)
    if _cancel_only_if_busy(call_next):
        await checkpoint()


def _cancel_only_if_busy(call_next: Any) -> bool:
    """finish-runs: starlette's next step, `task_group.cancel_scope.cancel()`, is made only where
    a task of the layer's task group is still going (a run that never started its response).
    Whether the layer should take a turn of the event loop before it leaves the group
    (_uncollected)."""
    # Once every run has finished, that cancel can stop nothing: the layer's own task is at the
    # end of its `async with` block. It is still dear on anyio 4 (measured: 82k of the 984k
    # instructions of a plain request through one layer; 16k on anyio 3). 0.15 - 0.20.4, the
    # releases with finish-runs, all make it right after the response, with no await between:
    # the group's cancel_scope is swapped for one whose cancel() only puts the real one back.
    cell = _cell(call_next, "task_group")
    if cell is None:  # pragma: no cover  # every such release
        return False
    group = cell.cell_contents
    if not _idle(group):
        return False
    uncollected = _uncollected(group)
    group.cancel_scope = _CancelSkipped(group, group.cancel_scope)
    return uncollected


def _uncollected(group: Any) -> bool:
    """anyio < 4.2 on asyncio: whether a task of the idle task group `group` that has ended is still
    among its cancel scope's tasks. Its done callback takes it out at the next turn of the event
    loop; the group's __aexit__ would wait for it with asyncio.wait() until then (measured on
    anyio 3.7.1: +30k instructions on a plain response through one layer; a checkpoint first,
    +8k). anyio 4.2 and later take a turn in __aexit__ either way; trio's nursery waits on its own."""
    if getattr(group, "_tasks", None) is not None or getattr(group, "_nursery", None) is not None:
        return False
    tasks = getattr(group.cancel_scope, "_tasks", None)
    return tasks is not None and len(tasks) > 1  # its host task is one of them


def _idle(group: Any) -> bool:
    """Whether every task that the task group `group` started has ended. Read from anyio's
    internals where they are known; anything else counts as busy (cancelled, as unpatched)."""
    tasks = getattr(group, "_tasks", None)
    if tasks is not None:  # asyncio, anyio >= 4.2: the group's own tasks
        for task in tasks:  # noqa: SIM110  # all() over a generator: one generator per request
            if not task.done():
                return False
        return True
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


async def _then_finish(response: Awaitable[Any], runs: list[_Run], call_next: Any) -> _ThenFinish:
    return _ThenFinish(await response, runs, call_next)


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
        stream_response = getattr(cls, "stream_response", None)
        own = _is_function(stream_response, "starlette.responses", "StreamingResponse.stream_response")
        if as_newest and (own or _streams_as_in_base(cls)):
            respond = _respond_as_newest
        namespace = {"__call__": respond, "__module__": cls.__module__, "__slots__": ()}
        quiet = made[cls] = type(cls.__name__, (cls,), namespace)
        quiet.__qualname__ = cls.__qualname__
        if own:
            _STREAMED_HERE.add(quiet)
    return quiet


# finish-runs: the not-listening classes whose body _stream_as_newest sends: those that stream
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


async def _stream_then_background(response: Any, send: Send) -> None:
    """no-listen: the body, then the background task that a dispatch set on call_next's response
    (0.38.3 and 0.38.4 drop it; 0.38.5 and later run it)."""
    await response.stream_response(send)
    await response.background()


def _streams_as_in_base(cls: type) -> bool:
    """file-body, end-at-last: whether `cls` streams with starlette.middleware.base's
    _StreamingResponse.stream_response (0.28.0 - 0.38.2) over starlette.responses.StreamingResponse's,
    not with one that others put over either (_respond_as_newest does what the two do)."""
    own = getattr(cls, "stream_response", None)
    inherited = getattr(super(cls, cls), "stream_response", None)
    return _is_function(own, "starlette.middleware.base", "_StreamingResponse.stream_response") and (
        _is_function(inherited, "starlette.responses", "StreamingResponse.stream_response")
    )
