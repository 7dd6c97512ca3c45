"""Requests per second through a real uvicorn with two BaseHTTPMiddleware layers (`scripts/bench`).

Three servers on 127.0.0.1 at once: starlette 0.20.4 unpatched, 0.20.4 with the shim (turned on
by STARLETTE_SHIELD_PATCH=1, as in production), and 0.21.0. One client process keeps
`--connections` keep-alive connections busy against one server per round, the servers taking
turns in a rotating order; a figure is the median over rounds of the per-round ratio to
unpatched 0.20.4, so that the drift of a shared machine cancels out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.run import ROOT, installed, percent, venv

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
LENGTH = re.compile(rb"content-length: *(\d+)", re.I)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(python: Path, shim: bool) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [str(python), "-m", "uvicorn", "bench.e2e_app:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "STARLETTE_SHIELD_PATCH": "1" if shim else ""}
    process = subprocess.Popen(command, cwd=ROOT, env=environment)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("a benchmark server did not start")


async def load(port: int, connections: int, seconds: float) -> int:
    """Requests answered in `seconds` over `connections` keep-alive connections."""
    answered = 0
    deadline = time.monotonic() + seconds

    async def connection() -> None:
        nonlocal answered
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                writer.write(REQUEST)
                head = await reader.readuntil(b"\r\n\r\n")
                match = LENGTH.search(head)
                await reader.readexactly(int(match.group(1)) if match else 0)
                answered += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return answered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=1.0, help="per server per round")
    parser.add_argument("--connections", type=int, default=8)
    arguments = parser.parse_args()
    cache = ROOT / ".bench"
    fixed = venv(cache / "e2e-0.20.4", "starlette==0.20.4", "anyio<5", "uvicorn")
    upstream = venv(cache / "e2e-0.21.0", "starlette==0.21.0", "anyio<5", "uvicorn", shim=False)
    servers = {
        "unpatched": start(fixed, shim=False),
        "shim": start(fixed, shim=True),
        "0.21.0": start(upstream, shim=False),
    }
    try:
        names = list(servers)
        for name in names:  # warm up
            asyncio.run(load(servers[name][1], arguments.connections, 0.3))
        rates: dict[str, list[float]] = {name: [] for name in names}
        for number in range(arguments.rounds):
            for name in names[number % 3 :] + names[: number % 3]:
                answered = asyncio.run(load(servers[name][1], arguments.connections, arguments.seconds))
                rates[name].append(answered / arguments.seconds)
    finally:
        for process, _ in servers.values():
            process.send_signal(signal.SIGINT)
        for process, _ in servers.values():
            process.wait(timeout=15)
    ratios = {
        name: statistics.median(rate / base for rate, base in zip(rates[name], rates["unpatched"]))
        for name in ("shim", "0.21.0")
    }
    print(
        f"\nEnd to end: uvicorn {installed(fixed, 'uvicorn')}, anyio {installed(fixed, 'anyio')}, "
        f"Python {platform.python_version()}, {arguments.connections} keep-alive connections, "
        f"{arguments.rounds} rounds of {arguments.seconds:g} s per server\n"
    )
    print("| | unpatched 0.20.4 | shim | starlette 0.21.0 |")
    print("|---|---|---|---|")
    unpatched = statistics.median(rates["unpatched"])
    print(f"| requests/s | {unpatched:.0f} | {percent(ratios['shim'])} | {percent(ratios['0.21.0'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
