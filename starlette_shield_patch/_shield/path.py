"""How a request flows: the wrapt wrapper on BaseHTTPMiddleware.__call__, the stand-in `self` that
starlette's own __call__ gets, and the three places where the pieces in force hook in."""

# The wrapper (`wrapper_for`) runs starlette's own __call__ with a stand-in `self`. starlette
# reads two attributes of it, `dispatch_func` and `app`, and the pieces hook in at three places:
#
# - `app`, which call_next runs: the inner app's `send` delivers `http.response.start`
#   despite a pending cancellation (start-first, response_start); where a piece needs to know how
#   the inner app did, it runs in a `_Run` (run), whose send and receive call out to the pieces;
# - `dispatch_func`: the call_next that the dispatch gets (own-error, body-error:
#   errors; its response does not listen for the disconnect: no-listen; its body, or its frame
#   where it raised, is kept: close-streams), and the response the dispatch returns, which lets
#   the runs finish once it is sent (finish-runs, after_response);
# - the layer as a whole (`_layer`): what escapes it (collapse-groups, close-streams), and the
#   errors that the runs kept for after the response (late-error; with finish-runs,
#   after_response's _ThenFinish raises them itself).
#
# Which pieces a release needs is said once, in _guard.PIECES; `InForce` (pieces) is that set of
# names as the request path reads it, with the hooks they need.

from __future__ import annotations

from typing import Any, Awaitable, Callable

from .. import _patch
from .after_response import _not_listening_class, _then_finish
from .errors import (
    _calls_next_raising,
    _close_streams,
    _frames_of_call_next,
    _raise_kept,
    _raise_uncollapsed,
    _receive_closing_streams,
)
from .pass_through import _BodyRead, _with_body_read
from .pieces import InForce, Receive, Send, _Proxy
from .response_start import _call_next_stream, _Client, _start_first
from .run import _Run

# What the request path does; written only by _patch._request_path. None: every call passes
# through (remove() had to leave the wrapper in place under someone else's).
in_force: InForce | None = None


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
            if pieces.news is not None:
                _tell(pieces)
            scope, receive, send = args
            if getattr(receive, "__code__", None) not in _handed_on:  # the outermost layer
                client = _Client(receive)
                receive = client.receive_noting if pieces.read_body else client.receive
            if pieces.url_for and "router" not in scope:
                # url-for (starlette#2672, 0.39.2): url_for in a dispatch failed with
                # KeyError('router'); 0.39.2 falls back to scope["app"]. The app's router sets
                # scope["router"] to itself next, where it is not there yet: setting it a layer
                # earlier changes nothing below. Inline: no call of ours per request.
                router = getattr(scope.get("app"), "router", None)
                if router is not None:
                    scope["router"] = router
            layer = _StandIn(instance, pieces, send)
            stand_in = layer if starlettes_own else _ProxyStandIn(instance, layer)
            call = original(stand_in, scope, receive, send, **kwargs)
            return _layer(call, pieces, layer) if pieces.wraps_layer else call
        return original(instance, *args, **kwargs)

    return patched_call


def _tell(pieces: InForce) -> None:
    """Log, once per process, that the shim is in force, and with which fixes."""
    # At the first request, not when starlette is imported: apps import starlette (and so patch)
    # before they set up logging, and a line logged then reaches no handler of theirs. Not a
    # line per request, and no handler of ours.
    global told
    news, pieces.news, told = pieces.news, None, True
    _patch.logger().info("%s", news)


told = False  # _tell logged its line in this process: a later patch (apply() again) does not

# The stand-ins: what starlette's __call__ gets as `self`. starlette's own __call__ reads only
# `dispatch_func` and `app`, so a slotted object will do (`_StandIn`); a __call__ that others
# wrapped before the shim (sentry-sdk) may look at `self` in any way, so it gets a transparent
# proxy (`_ProxyStandIn`). Both hand the work to _StandIn's dispatch_func and app.


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

    # dispatch_func and app are methods, which starlette only calls: a bound method kept in a
    # slot would make each stand-in a reference cycle, freed only by the cyclic garbage collector,
    # and a property that picked one would cost a call of ours per request.

    def dispatch_func(self, request: Any, call_next: Any) -> Awaitable[Any]:
        dispatch = self._middleware.dispatch_func
        pieces = self.pieces
        if not pieces.wraps_dispatch:
            return dispatch(request, call_next)  # type: ignore[no-any-return]
        self.request = request  # read-body: what the dispatch read of it
        if pieces.close_request_streams:
            _receive_closing_streams(request, call_next)
        starlettes = call_next
        if pieces.wraps_call_next:
            call_next = _calls_next_raising(call_next, pieces, self.runs)
        if pieces.sees_responses:
            call_next = _seeing_responses(call_next, self)
        if pieces.finish_runs:
            return _then_finish(dispatch(request, call_next), self.runs, starlettes)
        return dispatch(request, call_next)  # type: ignore[no-any-return]

    def app(self, scope: Any, receive: Receive, send: Send) -> Awaitable[None]:
        app = self._middleware.app
        pieces = self.pieces
        noted = None
        if pieces.read_body:
            receive, noted = _with_body_read(self.request, receive, pieces.finish_runs)
        if not pieces.runs:
            return app(scope, receive, _start_first(send))  # type: ignore[no-any-return]
        stream = _call_next_stream(send)
        if stream is None:  # pragma: no cover  # see _call_next_stream
            return app(scope, receive, send)  # type: ignore[no-any-return]
        run = _Run(pieces, stream, send, receive, self.send)
        run.noted = noted
        self.runs.append(run)
        return run.run(app, scope)

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
