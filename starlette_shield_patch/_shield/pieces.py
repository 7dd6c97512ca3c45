"""InForce: the pieces of _guard.PIECES that a patch runs, and the hooks they need, derived once;
the ASGI types that the other modules share."""

from __future__ import annotations

import builtins
import sys
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, Generator, Iterable

import wrapt

Message = Dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
App = Callable[[Any, Receive, Send], Awaitable[None]]

if TYPE_CHECKING:
    _Proxy = wrapt.ObjectProxy[Any]
else:
    _Proxy = wrapt.ObjectProxy  # not subscriptable at run time on wrapt 1.x


class _Done:
    """An awaitable that is done at once, with no turn of the event loop: what a send returns
    that handed its message over (response_start._hand_over), or a close that had nothing to
    wait for."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]  # an empty iterator: done at once


_DONE = _Done()

# _cell: (id of a code object, a free variable's name) -> (that code object, the index of its cell)
_CELL_INDEX: dict[tuple[int, str], tuple[Any, int]] = {}


def _cell(function: Any, name: str) -> Any:
    """The cell of `function`'s closure that holds its free variable `name`, or None."""
    # starlette's __call__ makes its closures anew for each request, over the same code objects:
    # the index is looked up once per code object. Not keyed by the code object itself: hashing
    # one hashes its constants, its nested code objects too.
    code = getattr(function, "__code__", None)
    key = (id(code), name)
    known = _CELL_INDEX.get(key)
    if known is None or known[0] is not code:
        if code is None or name not in code.co_freevars:  # pragma: no cover  # every such release
            return None
        known = _CELL_INDEX[key] = (code, code.co_freevars.index(name))
    return function.__closure__[known[1]]


def _is_function(function: Any, module: str, qualname: str) -> bool:
    """Whether `function` is starlette's own of that name (not one that others put in its place)."""
    named = getattr(function, "__qualname__", None) == qualname
    return named and getattr(function, "__module__", None) == module


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
        "news",
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

    def __init__(self, names: Iterable[str], news: str | None = None) -> None:
        # The line that says the shim is in force, for the first request through a layer to log
        # (path._tell); None once logged.
        self.news = news
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
