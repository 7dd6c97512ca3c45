"""A send that the shim drops is still a checkpoint: an inner app that sends in a loop until it is
told of the disconnect cannot freeze the event loop through it."""

from __future__ import annotations

import subprocess

import pytest

from tests.asgi import STARLETTE_CANCELS
from tests.fresh import only_json_line, run_fresh

pytestmark = pytest.mark.skipif(not STARLETTE_CANCELS, reason="the shim drops sends on 0.15 - 0.20 only")

# The dispatch awaits call_next and answers by itself; the inner app has sent its start and sends
# body chunks until a task beside it hears http.disconnect. With the after-response fix, once the
# layer's response is sent those sends are dropped and the receive says http.disconnect: unless
# a dropped send yields, the listening task never runs and the loop spins for ever.
SCENARIO = """
import json, sys, anyio
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import PlainTextResponse
from tests.asgi import client_stays, http_scope

async def sends_until_told(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    told = False

    async def listen():
        nonlocal told
        while (await receive())["type"] != "http.disconnect":
            pass
        told = True

    async with anyio.create_task_group() as group:
        group.start_soon(listen)
        while not told:
            await send({"type": "http.response.body", "body": b"x", "more_body": True})

async def answers_by_itself(request, call_next):
    await call_next(request)
    return PlainTextResponse("mine")

async def main():
    app = BaseHTTPMiddleware(sends_until_told, answers_by_itself)
    async def send(message):
        pass
    ended = 0
    for _ in range(ROUNDS):
        with anyio.fail_after(5):
            await app(http_scope(), client_stays(), send)
        ended += 1
    print(json.dumps({"ended": ended}))

if sys.argv[-1] == "patched":
    import starlette_shield_patch
anyio.run(main, backend=BACKEND)
"""
ROUNDS = 200


@pytest.mark.parametrize("shim", ["unpatched", "patched"])
def test_dropped_sends_never_freeze_the_loop(backend: str, shim: str) -> None:
    code = SCENARIO.replace("ROUNDS", str(ROUNDS)).replace("BACKEND", repr(backend))
    variable = {"STARLETTE_SHIELD_PATCH": "" if shim == "patched" else "0"}
    try:
        # The watchdog: a frozen loop cannot time itself out, so the interpreter is killed.
        result = run_fresh(
            code.replace('sys.argv[-1] == "patched"', repr(shim == "patched")), env=variable, timeout=30
        )
    except subprocess.TimeoutExpired:  # pragma: no cover  # the failure this test is for
        pytest.fail(f"the event loop froze ({shim}, {backend})")

    assert only_json_line(result) == {"ended": ROUNDS}
