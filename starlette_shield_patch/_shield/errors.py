"""The errors fix (starlette#1262, #1459, #2211, #2812, #2813, #2830, #2976, #3628): the inner
app's error comes out as itself, from its own cause, and the streams of a layer that failed are closed."""

from __future__ import annotations

import sys
from types import MethodType
from typing import TYPE_CHECKING, Any, AsyncIterator, cast

from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .pieces import InForce, Message, _BaseExceptionGroup

if TYPE_CHECKING:
    from .run import _Run


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
    own, code, index = _closing
    if getattr(type(request), "wrapped_receive", None) is not own or call_next.__code__ is not code:
        if not _learn_closing(request, call_next):  # pragma: no cover  # every release with the piece
            return
        index = _closing[2]
    cell = call_next.__closure__[index]
    if getattr(cell.cell_contents, "__self__", None) is not request:  # pragma: no cover  # see above
        return
    cell.cell_contents = MethodType(_wrapped_receive_closing, request)


# close-request-streams: starlette's own _CachedRequest.wrapped_receive, the code of the
# call_next that closes over it and the index of that cell, as last learnt: starlette makes
# call_next anew for each request, over the same code, so a request costs two identity checks.
_closing: tuple[Any, Any, int] = (object(), None, 0)


def _learn_closing(request: Any, call_next: Any) -> bool:
    """close-request-streams: whether `request` and `call_next` are starlette's own, noted in
    `_closing` for the requests after it."""
    global _closing
    own = _cached_wrapped_receive()
    if getattr(type(request), "wrapped_receive", None) is not own:  # pragma: no cover  # see above
        return False
    code = getattr(call_next, "__code__", None)
    if code is None or "wrapped_receive" not in code.co_freevars:  # pragma: no cover  # see above
        return False
    _closing = (own, code, code.co_freevars.index("wrapped_receive"))
    return True


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
