"""call_next's response does not listen for the disconnect, as on 0.38.3 and later (starlette#2620).

On 0.15.0 - 0.38.2 the response that call_next returns is a StreamingResponse whose __call__ runs a
task that listens for http.disconnect beside the one that streams, in every layer. 0.38.3 dropped
that listener (its fix of #2516); the newest starlette still has none. The shim does the same:
no-listen, part of the response-start fix on 0.28.0 - 0.38.2 and of the after-response fix on
0.15.0 - 0.20.4 (where the listener stopped the layer, and the inner app's work, at a disconnect).
"""

from __future__ import annotations

import sys
from typing import AsyncIterator

import anyio
import pytest
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.asgi import (
    STARLETTE_AFFECTED,
    STARLETTE_BETWEEN,
    STARLETTE_CANCELS,
    STARLETTE_HAS_ANYIO,
    STARLETTE_RELEASE,
    CallNext,
    Message,
    Send,
    Work,
    answers_after,
    is_last,
    pass_through,
    run,
    stack,
)

pytestmark = pytest.mark.skipif(not STARLETTE_HAS_ANYIO, reason="needs an anyio BaseHTTPMiddleware")


def listens(shim: str) -> bool:
    """Whether call_next's response listens for the disconnect in this run."""
    if not STARLETTE_AFFECTED:
        return STARLETTE_RELEASE < (0, 38, 3)  # 0.21 - 0.38.2: left alone, and they listen
    if shim == "unpatched":
        return True
    # start-only keeps the response-start fix alone: no-listen is part of it on 0.28.0 - 0.38.2,
    # of the after-response fix on 0.15 - 0.20.4 and of the pass-through fix on 0.21.0 - 0.27.x.
    return shim == "start-only" and (STARLETTE_CANCELS or STARLETTE_BETWEEN)


class CountingClient:
    """A client that sent an empty body and waits for the answer; counts the receive() calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def receive(self) -> Message:
        self.calls += 1
        if self.calls == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover


@pytest.mark.parametrize("layers", [1, 3], ids=["one-layer", "three-layers"])
def test_call_next_s_response_does_not_listen_for_the_disconnect(
    backend: str, shim: str, layers: int
) -> None:
    # The endpoint never reads: every receive() call is a layer's response listening.
    client = CountingClient()

    outcome = run(stack(answers_after(0.0), *[pass_through] * layers), client.receive, backend=backend)

    bodies = [m.get("body", b"") for m in outcome.messages if m["type"] == "http.response.body"]
    assert outcome.clean, outcome
    assert b"".join(bodies) == b"done"
    assert is_last(outcome.messages[-1])
    assert (client.calls > 0) is listens(shim), client.calls


def test_a_background_task_set_on_call_next_s_response_still_runs(backend: str, shim: str) -> None:
    """A dispatch that adds a task to call_next's response: the shim's response without a listener
    still runs it, as 0.15.0 - 0.38.2 and 0.38.5 and later do (0.38.3 and 0.38.4 dropped it)."""
    work = Work(seconds=0.0)

    async def adds_a_task(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        response.background = BackgroundTask(work.run)
        return response

    outcome = run(stack(answers_after(0.0), adds_a_task), CountingClient().receive, backend=backend)

    assert outcome.clean, outcome
    assert is_last(outcome.messages[-1])
    assert (work.ended is not None) is not ((0, 38, 3) <= STARLETTE_RELEASE < (0, 38, 5))


# 0.38.3 and later send call_next's body from their own _StreamingResponse.__call__: not through
# StreamingResponse.stream_response, and the chunks as the dispatch set them.
sent_by_stream_response = pytest.mark.skipif(
    STARLETTE_RELEASE >= (0, 38, 3), reason="0.38.3 and later send call_next's body without stream_response"
)


@sent_by_stream_response
def test_a_text_body_set_on_call_next_s_response_is_sent_encoded(backend: str, shim: str) -> None:
    """A dispatch that hands call_next's response a body of str chunks: sent as UTF-8 bytes, as
    StreamingResponse sends it (the shim sends call_next's body itself where it finishes runs)."""

    async def text_chunks() -> AsyncIterator[str]:
        for text in ("d", "ö", "ne"):
            yield text

    async def sets_a_text_body(request: Request, call_next: CallNext) -> Response:
        response = await call_next(request)
        response.body_iterator = text_chunks()  # type: ignore[attr-defined]
        return response

    outcome = run(stack(answers_after(0.0), sets_a_text_body), CountingClient().receive, backend=backend)

    bodies = [m.get("body", b"") for m in outcome.messages if m["type"] == "http.response.body"]
    assert outcome.clean, outcome
    assert bodies == [b"d", "ö".encode(), b"ne", b""]


@sent_by_stream_response
def test_a_stream_response_that_others_patched_sends_call_next_s_body(
    backend: str, shim: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instrumentation that wraps StreamingResponse.stream_response still sees call_next's
    response sent through its wrapper."""
    sent_by_wrapper: list[int] = []
    original = StreamingResponse.stream_response

    async def counted(self: StreamingResponse, send: Send) -> None:
        sent_by_wrapper.append(1)
        await original(self, send)

    monkeypatch.setattr(StreamingResponse, "stream_response", counted)
    made_by = "starlette_shield_patch._shield.after_response"
    if made_by in sys.modules:  # the classes made before the wrapper came
        shield = sys.modules[made_by]
        monkeypatch.setattr(shield, "_NOT_LISTENING", {})
        monkeypatch.setattr(shield, "_AS_NEWEST", {})
        monkeypatch.setattr(shield, "_STREAMED_HERE", set())

    outcome = run(stack(answers_after(0.0), pass_through), CountingClient().receive, backend=backend)

    assert outcome.clean, outcome
    bodies = [m.get("body", b"") for m in outcome.messages if m["type"] == "http.response.body"]
    assert b"".join(bodies) == b"done"
    assert sent_by_wrapper, "call_next's response did not go through the patched stream_response"
