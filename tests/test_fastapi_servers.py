"""FastAPI 0.87 - 0.106 (starlette 0.21.0 - 0.27.x) under real servers, with and without the opt-in
(STARLETTE_SHIELD_PATCH=extended), turned on by the variable alone: demo/fastapi_app.py."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="FastAPI is installed by the nox `fastapi` sessions only")
pytest.importorskip("uvicorn", reason="uvicorn is installed by the nox `fastapi` sessions of 0.21 - 0.27")

from demo.harness import count, exchange, leave_after, request_bytes, serving
from tests.asgi import ANYIO_MAJOR, STARLETTE_BETWEEN

pytestmark = [
    pytest.mark.fastapi,
    pytest.mark.skipif(not STARLETTE_BETWEEN, reason="the opt-in is for starlette 0.21.0 - 0.27.x"),
]

ITEM = b'{"name": "pen", "price": 1.5}'
WAIT_FOR_AN_ANSWER = 3.0  # seconds a client that stays waits for the answer to its POST


def post_item(port: int) -> bytes | None:
    """POST /items through the middleware that reads the JSON body; None: no answer in time."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_FOR_AN_ANSWER) as connection:
            connection.sendall(request_bytes("POST", "/items", ITEM))
            answer = b""
            while True:
                chunk = connection.recv(65536)
                if not chunk:
                    return answer
                answer += chunk
    except socket.timeout:
        return None


def clients_that_leave(port: int) -> None:
    """Five clients that leave before their body is complete, five in the middle of /slow."""
    threads = [
        threading.Thread(target=leave_after, args=(port, request_bytes("POST", "/items", ITEM[:7], 30), 0.01))
        for _ in range(5)
    ]
    threads += [
        threading.Thread(target=leave_after, args=(port, request_bytes("GET", "/slow", b""), 0.05))
        for _ in range(5)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def finished_tasks(port: int, within: float = 5.0) -> int:
    """The receipts' tasks (0.05 s each) that have run to their end, once one has or `within` s."""
    deadline = time.monotonic() + within
    done = count(port, "/finished")
    while not done and time.monotonic() < deadline:
        time.sleep(0.02)
        done = count(port, "/finished")
    return done


@pytest.mark.parametrize("value", ["1", "extended"])
def test_uvicorn_with_and_without_the_opt_in(value: str) -> None:
    opted_in = value == "extended"
    activation = {"STARLETTE_SHIELD_PATCH": value}
    with serving("demo.fastapi_app:app", shim=True, by_variable=True, env=activation) as server:
        clients_that_leave(server.port)
        answer = post_item(server.port)
        boom = exchange(server.port, request_bytes("GET", "/boom", b""))
        tasks = finished_tasks(server.port) if opted_in else None

    assert boom.startswith(b"HTTP/1.1 500"), boom
    exceptions = server.exceptions()
    if opted_in:
        head, _, body = (answer or b"").partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body) == {"name": "pen", "price": 1.5}, answer
        assert tasks == 1
        # The route's error as itself, and nothing else logged (no group, no false error).
        assert exceptions == {"PaymentError": 1}, server.log
        assert "ExceptionGroup" not in server.log
    else:
        # starlette#1692 (0.28.0): the body the middleware read never reaches the route, which
        # waits for it until the client gives up (then starlette says ClientDisconnect).
        assert answer is None, answer
        assert exceptions["PaymentError"] == 1, server.log
        # anyio 4 wraps the route's error in a group on every release before 0.31.0 (#2211).
        assert ("ExceptionGroup" in server.log) is (ANYIO_MAJOR >= 4), server.log
    assert server.exit_code == 0 and server.stopped_in < 10, server.log


def test_gunicorn_with_uvicorn_workers_and_the_variable_alone() -> None:
    """gunicorn 20.1.0 with uvicorn's worker class, two workers, STARLETTE_SHIELD_PATCH=extended set
    where gunicorn starts: each worker is patched, and every POST through the body-reading
    middleware is answered."""
    activation = {"STARLETTE_SHIELD_PATCH": "extended"}
    with serving(
        "demo.fastapi_app:app", server="gunicorn", workers=2, shim=True, by_variable=True, env=activation
    ) as server:
        answers = [post_item(server.port) for _ in range(6)]

    assert len(server.started_workers) == 2
    assert all(worker["patched"] for worker in server.started_workers.values()), server.started_workers
    assert all(answer is not None and answer.startswith(b"HTTP/1.1 200") for answer in answers), answers
    assert "Traceback" not in server.log, server.log
    assert server.exit_code == 0 and server.stopped_in < 15, server.log
