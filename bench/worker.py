"""One benchmark worker: a venv's starlette, driven round by round over stdin by bench/run.py.

Each line in is `<shape> <variant> <requests>`; each line out is the seconds those requests
took. Every round builds fresh middleware instances, so nothing one round did carries over.
"""

from __future__ import annotations

import gc
import sys
import time
import types
from typing import Any, AsyncIterator, Callable

import anyio
import wrapt
from starlette.background import BackgroundTask
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

# starlette's own __call__, taken before anything imports the shim: importing the package patches
# BaseHTTPMiddleware at once when starlette is there, and "unpatched" must not be our wrapper.
ORIGINAL = BaseHTTPMiddleware.__dict__["__call__"]
assert type(ORIGINAL) is types.FunctionType, f"BaseHTTPMiddleware.__call__ is wrapped already: {ORIGINAL!r}"

from starlette_shield_patch._selftest import http_scope  # noqa: E402  # after ORIGINAL, see above

CHUNK = b"x" * 64
SCOPE = http_scope("GET")


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


async def reads_json(request: Request, call_next: Any) -> Response:
    # The endpoint does not read the body: unpatched 0.15 - 0.20.4 would wait for it for ever.
    await request.json()
    return await call_next(request)  # type: ignore[no-any-return]


JSON_BODY = b'{"user": "ada", "items": [1, 2, 3]}'

# shape: (endpoint, layers, dispatch, request body)
SHAPES: dict[str, tuple[Callable[..., Any], int, Callable[..., Any], bytes]] = {
    "plain-1-layer": (plain, 1, pass_through, b""),  # (a)
    "stream100-3-layers": (streaming, 3, pass_through, b""),  # (b)
    "background-1-layer": (plain_with_background, 1, pass_through, b""),  # (c)
    "json-body-1-layer": (plain, 1, reads_json, JSON_BODY),  # (d)
}


async def around(call: Any) -> None:
    """What a piece that must see what escapes a layer adds at the least: one coroutine."""
    try:
        await call
    except BaseException:
        raise


def coroutine_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return around(wrapped(*args, **kwargs))


def empty_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return wrapped(*args, **kwargs)


def set_variant(variant: str) -> None:
    import starlette_shield_patch

    starlette_shield_patch.remove()
    BaseHTTPMiddleware.__call__ = ORIGINAL  # type: ignore[method-assign]
    if variant in ("patched", "without-errors", "without-pass-through", "start-only"):
        # start-only: the response-start fix alone; without-X: every fix but that one.
        after_response = variant != "start-only"
        errors = variant in ("patched", "without-pass-through")
        pass_through = variant in ("patched", "without-errors")
        # extended: 0.21.0 - 0.27.x are patched with the opt-in alone; elsewhere it changes nothing.
        starlette_shield_patch.apply(
            after_response=after_response, errors=errors, pass_through=pass_through, extended=True
        )
        assert starlette_shield_patch.status().patched, starlette_shield_patch.status()
    elif variant == "wrapt-coroutine":
        BaseHTTPMiddleware.__call__ = wrapt.FunctionWrapper(ORIGINAL, coroutine_wrapper)  # type: ignore[method-assign]
    elif variant == "empty-wrapt":
        BaseHTTPMiddleware.__call__ = wrapt.FunctionWrapper(ORIGINAL, empty_wrapper)  # type: ignore[method-assign]
    else:
        assert variant == "unpatched", variant


def one_round(shape: str, requests: int) -> float:
    endpoint, layers, dispatch, body = SHAPES[shape]
    app: Any = endpoint
    for _ in range(layers):
        app = BaseHTTPMiddleware(app, dispatch=dispatch)

    async def receive() -> Any:
        await anyio.sleep_forever()  # a connected client: only cancellation ends this

    def client() -> Any:
        """A connected client that sent `body`."""
        sent = False

        async def receive_body() -> Any:
            nonlocal sent
            if sent:
                await anyio.sleep_forever()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return receive_body

    async def send(message: Any) -> None:
        pass

    async def main() -> float:
        started = time.perf_counter()
        for _ in range(requests):
            await app(dict(SCOPE), client() if body else receive, send)
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
