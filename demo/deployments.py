"""The deployments of 2021-2022, turned on by STARLETTE_SHIELD_PATCH alone (`scripts/demo
--deployments`): each serves demo.servers_app on 127.0.0.1 without, then with the variable, to
clients that leave mid-request, clients that stay, and clients whose streamed answers carry
background work; then it is stopped as a process manager stops it.

tests/test_deployments.py asserts on the same runs.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any

from demo.harness import (
    AfterResponse,
    Server,
    drain,
    exchange,
    leave_after,
    request_bytes,
    serving,
    version,
    work_after_response,
)

# How each deployment is started (the keyword arguments of demo.harness.serving), and the one
# setting that turns the shim on there, as a user writes it.
DEPLOYMENTS: dict[str, dict[str, Any]] = {
    "gunicorn-uvicorn-worker": {"server": "gunicorn", "workers": 2},
    "gunicorn-uvicorn-worker-preload": {"server": "gunicorn", "workers": 2, "preload": True},
    "uvicorn-workers": {"server": "uvicorn", "workers": 2},
    "uvicorn-reload": {"server": "uvicorn", "reload": True},
    "hypercorn-asyncio-workers": {"server": "hypercorn", "loop": "asyncio", "workers": 2},
}
WORK = 0.3  # seconds of background work per streamed answer
LEAVING = [
    request_bytes("POST", "/slow", b"hello", declared=10),  # leaves before its body is complete
    request_bytes("GET", "/hello?work=0.5", b""),  # leaves while the endpoint works
]
# A client that leaves sooner can be gone (its close resets the connection) before a busy worker
# has read its request: then the app never sees it. At 0.2 s the endpoint still has 0.3 s to go.
LEAVE_AFTER = 0.2
LEAVING_EACH, STAYING = 10, 6


@dataclass
class Run:
    server: Server
    staying: list[bytes]  # the answers of the clients that stayed
    left_in_flight: int  # requests still in the app once the leaving clients were gone
    after: AfterResponse

    @property
    def staying_answered(self) -> int:
        return sum(
            answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"done stay") for answer in self.staying
        )

    @property
    def work_follows_the_response(self) -> bool:
        """Every background task finished, and no answer waited for one."""
        return self.after.finished == self.after.clients and self.after.slowest_answer < WORK


def run(deployment: str, variable: bool) -> Run:
    """20 clients leave mid-request (0.2 s after sending) while 6 stay, then 10 ask for a streamed
    answer that carries 0.3 s of background work."""
    settings = DEPLOYMENTS[deployment]
    with serving("demo.servers_app:app", shim=variable, by_variable=True, **settings) as server:
        leaving = [
            threading.Thread(target=leave_after, args=(server.port, payload, LEAVE_AFTER))
            for payload in LEAVING
            for _ in range(LEAVING_EACH)
        ]
        for thread in leaving:
            thread.start()
        staying = [
            exchange(server.port, request_bytes("POST", "/slow?work=0.1", b"stay")) for _ in range(STAYING)
        ]
        for thread in leaving:
            thread.join(timeout=15)
        left = drain(server.port)
        after = work_after_response(server.port, work=WORK, stream=True)
    return Run(server, staying, left, after)


def main() -> int:
    servers = ", ".join(
        f"{name} {version(name)}" for name in ("starlette", "gunicorn", "uvicorn", "hypercorn")
    )
    print(
        f"{servers}, Python {sys.version.split()[0]}: {LEAVING_EACH * len(LEAVING)} clients leave "
        f"mid-request, {STAYING} stay, then 10 streamed answers carry {WORK}s of background work each\n"
    )
    header = [
        "deployment",
        "STARLETTE_SHIELD_PATCH",
        "workers patched",
        "No response returned.",
        "ASGI errors",
        "staying clients answered",
        "background tasks finished",
        "slowest answer (s)",
        "workers stopped after lifespan shutdown",
        "exit code",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    failed = False
    for deployment in DEPLOYMENTS:
        for variable in (False, True):
            outcome = run(deployment, variable)
            server, workers = outcome.server, outcome.server.started_workers
            patched = sum(bool(worker["patched"]) for worker in workers.values())
            cells = [
                deployment,
                "1" if variable else "unset",
                f"{patched}/{len(workers)}",
                server.no_response_returned,
                server.asgi_errors,
                f"{outcome.staying_answered}/{STAYING}",
                f"{outcome.after.finished}/{outcome.after.clients}",
                f"{outcome.after.slowest_answer:.3f}",
                f"{len(server.stopped_workers)}/{len(workers)}",
                server.exit_code,
            ]
            print("| " + " | ".join(map(str, cells)) + " |", flush=True)
            clean = not server.asgi_errors and outcome.work_follows_the_response
            if variable and not (clean and patched == len(workers) and outcome.staying_answered == STAYING):
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
