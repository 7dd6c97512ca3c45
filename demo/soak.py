"""Soak: thousands of requests at high concurrency against uvicorn, a third of the clients
leaving at random points, without and then with the shim (`scripts/soak`)."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from demo.harness import Server, drain, rss_kib, serving

WARM_UP = 300  # requests before the first memory reading
HEAD = "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"


@dataclass
class Run:
    sent: int = 0
    answered: int = 0
    disconnected: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    in_flight_at_end: int = -1
    rss_start_kib: int = 0
    rss_end_kib: int = 0
    seconds: float = 0.0
    server: Server | None = None


@dataclass
class Plan:
    """What one client does: which endpoint, whether and where it leaves, and after how long."""

    streaming: bool
    leave: str | None  # None, "before-body", "while-working" or "mid-stream"
    delay: float

    @classmethod
    def draw(cls, rng: random.Random) -> Plan:
        streaming = rng.random() < 0.5
        points = ["before-body", "while-working", "mid-stream" if streaming else "while-working"]
        leave = rng.choice(points) if rng.random() < 1 / 3 else None
        return cls(streaming, leave, rng.uniform(0, 0.03))


async def one_client(port: int, plan: Plan, run: Run) -> None:
    streaming, leave, point = plan.streaming, plan.leave is not None, plan.leave
    path = "/stream?chunks=10&pause=0.005" if streaming else "/slow?work=0.02"
    body = b"x" * 16
    run.sent += 1
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        try:
            writer.write(HEAD.format(path=path, length=len(body)).encode())
            if leave and point == "before-body":
                writer.write(body[:5])
                await writer.drain()
                await asyncio.sleep(plan.delay)
                run.disconnected += 1
                return
            writer.write(body)
            await writer.drain()
            if leave and point == "while-working":
                await asyncio.sleep(plan.delay)
                run.disconnected += 1
                return
            if leave:  # mid-stream
                await asyncio.wait_for(reader.read(150), 10)
                run.disconnected += 1
                return
            answer = await asyncio.wait_for(reader.read(), 10)
            expected = b"chunk 009" if streaming else b"done " + body
            if answer.startswith(b"HTTP/1.1 200") and expected in answer:
                run.answered += 1
            else:
                run.failed["wrong answer"] += 1
        finally:
            writer.transport.abort()  # leave at once, as a client whose process died would
    except (OSError, asyncio.TimeoutError) as exc:
        run.failed[type(exc).__name__] += 1


async def load(port: int, plans: list[Plan], concurrency: int, run: Run) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def gated(plan: Plan) -> None:
        async with gate:
            await one_client(port, plan, run)

    await asyncio.gather(*(gated(plan) for plan in plans))
    run.in_flight_at_end = await asyncio.get_running_loop().run_in_executor(None, drain, port)


def soak(shim: bool, requests: int, concurrency: int, seed: int, layers: int = 2) -> Run:
    rng = random.Random(seed)
    warm_up = [Plan.draw(rng) for _ in range(WARM_UP)]
    plans = [Plan.draw(rng) for _ in range(requests)]  # the same plans with and without the shim
    run = Run()
    with serving("demo.servers_app:app", shim=shim, env={"DEMO_LAYERS": str(layers)}) as server:
        asyncio.run(load(server.port, warm_up, concurrency, Run()))  # allocations that stay
        run.rss_start_kib = rss_kib(server.pid)
        started = time.monotonic()
        asyncio.run(load(server.port, plans, concurrency, run))
        run.seconds = time.monotonic() - started
        run.rss_end_kib = rss_kib(server.pid)
    run.server = server
    return run


def table(runs: dict[str, Run]) -> str:
    rows = [
        "| | sent | answered | disconnected | client errors | server exceptions (by type) "
        "| No response returned. | in flight at end | server RSS after warm-up → end (MiB) | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        assert run.server is not None
        exceptions = (
            ", ".join(f"{kind} {count}" for kind, count in run.server.exceptions().most_common()) or "0"
        )
        rss = f"{run.rss_start_kib / 1024:.1f} → {run.rss_end_kib / 1024:.1f}"
        cells = [name, run.sent, run.answered, run.disconnected, sum(run.failed.values()), exceptions]
        cells += [run.server.no_response_returned, run.in_flight_at_end, rss, f"{run.seconds:.1f}"]
        rows.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1715)
    parser.add_argument(
        "--layers", type=int, default=2, help="layers of BaseHTTPMiddleware (4 for 0.28 - 0.38.2)"
    )
    arguments = parser.parse_args()
    import starlette
    import uvicorn

    print(
        f"uvicorn {uvicorn.__version__}, starlette {starlette.__version__}: {arguments.requests} requests, "
        f"{arguments.concurrency} at a time, seed {arguments.seed}, {arguments.layers} layers"
    )
    settings = (arguments.requests, arguments.concurrency, arguments.seed, arguments.layers)
    runs = {"without the shim": soak(False, *settings), "with the shim": soak(True, *settings)}
    print(table(runs))
    shimmed = runs["with the shim"]
    assert shimmed.server is not None
    return 1 if shimmed.server.exceptions() or shimmed.in_flight_at_end else 0


if __name__ == "__main__":
    sys.exit(main())
