"""One benchmark worker: a venv's starlette, driven round by round over stdin by bench/run.py.

Each line in is `<shape> <variant> <requests>`; each line out is the seconds those requests
took. Every round builds fresh middleware instances, so nothing one round did carries over.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any, AsyncIterator, Callable

import anyio
import wrapt
from starlette.background import BackgroundTask
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from starlette_shield_patch._selftest import http_scope

CHUNK = b"x" * 64
SCOPE = http_scope("GET")
ORIGINAL = BaseHTTPMiddleware.__dict__["__call__"]


async def plain(scope: Any, receive: Any, send: Any) -> None:
    await PlainTextResponse("hello, world")(scope, receive, send)


async def nothing() -> None:
    pass


async def plain_with_background(scope: Any, receive: Any, send: Any) -> None:
    # A background task that does no work: unpatched and patched run the same code in it.
    await PlainTextResponse("hello, world", background=BackgroundTask(nothing))(scope, receive, send)


async def streaming(scope: Any, receive: Any, send: Any) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield CHUNK

    await StreamingResponse(chunks())(scope, receive, send)


async def pass_through(request: Request, call_next: Any) -> Response:
    return await call_next(request)  # type: ignore[no-any-return]


SHAPES: dict[str, tuple[Callable[..., Any], int]] = {
    "plain-1-layer": (plain, 1),  # (a)
    "stream100-3-layers": (streaming, 3),  # (b)
    "background-1-layer": (plain_with_background, 1),  # (c)
}


def empty_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return wrapped(*args, **kwargs)


def set_variant(variant: str) -> None:
    import starlette_shield_patch

    starlette_shield_patch.remove()
    BaseHTTPMiddleware.__call__ = ORIGINAL  # type: ignore[method-assign]
    if variant in ("patched", "without-errors", "start-only"):
        # start-only: the response-start fix alone; without-errors: every fix but the errors fix.
        after_response = variant != "start-only"
        starlette_shield_patch.apply(after_response=after_response, errors=variant == "patched")
        assert starlette_shield_patch.status().patched, starlette_shield_patch.status()
    elif variant == "empty-wrapt":
        BaseHTTPMiddleware.__call__ = wrapt.FunctionWrapper(ORIGINAL, empty_wrapper)  # type: ignore[method-assign]
    else:
        assert variant == "unpatched", variant


def one_round(shape: str, requests: int) -> float:
    endpoint, layers = SHAPES[shape]
    app: Any = endpoint
    for _ in range(layers):
        app = BaseHTTPMiddleware(app, dispatch=pass_through)

    async def receive() -> Any:
        await anyio.sleep_forever()  # a connected client: only cancellation ends this

    async def send(message: Any) -> None:
        pass

    async def main() -> float:
        started = time.perf_counter()
        for _ in range(requests):
            await app(dict(SCOPE), receive, send)
        return time.perf_counter() - started

    gc.collect()
    gc.disable()
    try:
        return anyio.run(main)
    finally:
        gc.enable()


def serve() -> None:
    for line in sys.stdin:
        shape, variant, requests = line.split()
        set_variant(variant)
        print(one_round(shape, int(requests)), flush=True)


if __name__ == "__main__":
    serve()
