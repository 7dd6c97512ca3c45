"""The host is left as it was: nothing global changes but the patched method. Each case runs in a
fresh interpreter (pytest itself imports the exceptiongroup backport below Python 3.11)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from conftest import TRIO_RUNS
from demo.harness import clean_environment
from tests.asgi import STARLETTE_HAS_ANYIO
from tests.fresh import ROOT

# Imports starlette (the shim armed or not), serves one request through a layer, imports trio as
# an app would, and prints what the process looks like: the exception hook, the traceback module's
# functions (the exceptiongroup backport replaces them, trio < 0.22 patches TracebackException),
# the warnings filters, and the modules loaded. Then, unarmed, what importing wrapt adds.
SCRIPT = """
import json, sys, traceback, warnings
filters = list(warnings.filters)
if sys.argv[1] == "armed":
    import starlette_shield_patch
import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def dispatch(request, call_next):
    return await call_next(request)

app = Starlette(
    routes=[Route("/", lambda request: PlainTextResponse("ok"))],
    middleware=[Middleware(BaseHTTPMiddleware, dispatch=dispatch)],
)

async def serve():
    sent, said = [], []
    async def receive():
        if said:
            await anyio.Event().wait()  # no more messages (anyio 3.0 has no sleep_forever)
        said.append(True)
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        sent.append(message)
    scope = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/", "root_path": "",
             "scheme": "http", "query_string": b"", "headers": [], "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1), "http_version": "1.1", "asgi": {"version": "3.0"}}
    await app(scope, receive, send)
    return sent[0]["status"]

status = anyio.run(serve, backend=sys.argv[2])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if sys.argv[3] == "trio-runs":  # trio < 0.22 warns here when the hook was replaced before it
        import trio

def name(thing):
    return f"{getattr(thing, '__module__', None)}.{getattr(thing, '__qualname__', repr(thing))}"

exception = traceback.TracebackException
state = {
    "status": status,
    "excepthook": name(sys.excepthook),
    "traceback": {key: name(value) for key, value in vars(traceback).items() if callable(value)},
    "TracebackException": {key: name(value) for key, value in vars(exception).items() if callable(value)},
    "filters": filters == warnings.filters,
    "warnings": [f"{type(w.message).__name__}: {w.message}" for w in caught],
    "modules": sorted(sys.modules),
}
if sys.argv[1] == "unarmed":
    import wrapt
    state["wrapt"] = sorted(set(sys.modules) - set(state["modules"]))
print(json.dumps(state))
"""


def host(armed: str, backend: str) -> dict[str, Any]:
    trio = "trio-runs" if TRIO_RUNS else "no-trio"  # trio < 0.22 does not import on Python >= 3.12
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, armed, backend, trio],
        cwd=ROOT,
        env=clean_environment({"PYTHONPATH": str(ROOT)}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    state: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return state


@pytest.mark.skipif(not STARLETTE_HAS_ANYIO, reason="needs an anyio BaseHTTPMiddleware")
def test_the_host_is_as_without_the_shim(backend: str) -> None:
    """sys.excepthook, the traceback module and the warnings filters are as without the shim after
    starlette is imported with the shim armed and a request passed through a layer; the modules
    loaded are those without it, the shim's own and wrapt's."""
    without, armed = host("unarmed", backend), host("armed", backend)

    # starlette 0.31 - 0.38.2 import the exceptiongroup backport themselves below Python 3.11:
    # then trio < 0.22 warns without the shim too.
    for key in ("status", "excepthook", "traceback", "TracebackException", "filters", "warnings"):
        assert armed[key] == without[key], key
    assert armed["filters"] is True
    ours = {module for module in armed["modules"] if "starlette_shield_patch" in module.split(".")[0]}
    # Below Python 3.11 this was the exceptiongroup backport (anyio 3.7 requires it, never imports it).
    assert set(armed["modules"]) - set(without["modules"]) - ours <= set(without["wrapt"])
