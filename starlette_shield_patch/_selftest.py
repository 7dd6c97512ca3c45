"""The disconnect scenario of the bug reports, run in-process on the installed starlette."""

from __future__ import annotations

from typing import Any


def disconnect_outcome() -> str:
    """Two pass-through BaseHTTPMiddleware layers; the client leaves while the endpoint works.

    Returns "clean", "No response returned." or the name of whatever else was raised.
    """
    import anyio
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        await Request(scope, receive).body()
        await anyio.sleep(0.01)
        await PlainTextResponse("done")(scope, receive, send)

    async def pass_through(request: Request, call_next: Any) -> Response:
        return await call_next(request)  # type: ignore[no-any-return]

    app = BaseHTTPMiddleware(BaseHTTPMiddleware(endpoint, pass_through), pass_through)
    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/",
        "raw_path": b"/", "root_path": "", "query_string": b"", "headers": [],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    received = 0

    async def receive() -> Any:
        nonlocal received
        received += 1
        if received == 1:
            return {"type": "http.request", "body": b"hello", "more_body": False}
        return {"type": "http.disconnect"}  # the client is gone

    async def send(message: Any) -> None:
        pass

    errors: list[BaseException] = []

    async def main() -> None:
        with anyio.move_on_after(5):
            try:
                await app(scope, receive, send)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # anyio 3's ExceptionGroup is a BaseException
                errors.append(exc)

    anyio.run(main)
    while errors:
        error = errors.pop()
        nested = getattr(error, "exceptions", None)
        if nested:
            errors.extend(nested)
        elif isinstance(error, RuntimeError) and str(error) == "No response returned.":
            return "No response returned."
        else:
            return type(error).__name__
    return "clean"
