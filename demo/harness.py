"""Real servers on 127.0.0.1 and raw-socket clients that leave at chosen points.

Used by the demo, the soak command and the integration tests. Every server is started and
stopped here, within bounded time; clients time out on their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

# Installed versions, for the tests and the demos (re-exported: `as version`).
if sys.version_info >= (3, 8):
    from importlib.metadata import version as version  # novermin (3.8 and later only)
else:  # the backport, which the package needs on Python 3.7 too
    from importlib_metadata import version as version

ROOT = Path(__file__).resolve().parent.parent
CLIENT_TIMEOUT = float(os.environ.get("HARNESS_CLIENT_TIMEOUT", "10"))
# "    | anyio.EndOfStream", "RuntimeError: No response returned.", "h11._util.LocalProtocolError: ..."
EXCEPTION_LINE = re.compile(
    r"[\s|]*((?:[a-z_][\w]*\.)*[A-Z]\w*(?:Error|Exception|Group|Disconnect|Stream))(?::|$)"
)


def clean_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without PYTHON* or STARLETTE_SHIELD_PATCH, updated by `extra`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "STARLETTE_SHIELD"))}
    environment.update(extra)
    return environment


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    port: int
    process: subprocess.Popen[str]
    log: str = ""
    stopped_in: float = 0.0
    exit_code: int | None = None
    served_log: int = 0  # the length of the log when the server was told to stop
    state: Path | None = None  # the app's DEMO_STATE_DIR, where each worker reports (serving says when)
    # With a state folder: the workers that started and those that stopped cleanly (lifespan
    # shutdown complete), by pid, each with whether the shim patched BaseHTTPMiddleware in it and why.
    started_workers: dict[int, dict[str, Any]] = field(default_factory=dict)
    stopped_workers: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def exceptions(self, *, while_serving: bool = False) -> Counter[str]:
        """The exceptions the server logged, by type: the last line of each traceback; with
        `while_serving`, only those logged before it was told to stop."""
        found: Counter[str] = Counter()
        for line in (self.log[: self.served_log] if while_serving else self.log).splitlines():
            match = EXCEPTION_LINE.match(line)
            if match:
                found[match.group(1).rsplit(".", 1)[-1]] += 1
        return found

    @property
    def no_response_returned(self) -> int:
        return self.log.count("RuntimeError: No response returned.")

    @property
    def asgi_errors(self) -> int:
        return len(re.findall(r"Exception in ASGI application|Error in ASGI Framework", self.log))

    def workers(self, event: str) -> dict[int, dict[str, Any]]:
        """The worker processes that have reported `event` ("started", "stopped") by now
        (demo.servers_app.record_worker)."""
        assert self.state, "only a server with several workers or --reload keeps a state folder"
        reports = (json.loads(path.read_text()) for path in self.state.glob(f"{event}-*.json"))
        return {report["pid"]: report for report in reports}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def server_command(
    app: str,
    server: str,
    port: int,
    loop: str,
    *,
    workers: int = 1,
    preload: bool = False,
    reload: bool = False,
) -> list[str]:
    """The command line (after `python`) that serves `app` as a deployment would: uvicorn, hypercorn,
    granian, or gunicorn with uvicorn's worker class; several workers where `workers` > 1, gunicorn's
    --preload, uvicorn's --reload."""
    if server == "uvicorn":
        command = ["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--loop", loop]
        command += ["--log-level", "warning", "--no-access-log"]
        command += ["--reload", "--reload-dir", str(ROOT / "demo")] if reload else []
        return command + (["--workers", str(workers)] if workers > 1 else [])
    if server == "hypercorn":
        command = ["-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}", "--worker-class", loop]
        return command + (["--workers", str(workers)] if workers > 1 else [])
    if server == "granian":  # it offers the http.response.pathsend extension
        command = ["-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port)]
        return [*command, "--workers", str(workers), app]
    assert server == "gunicorn", server
    command = ["-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    command += ["--worker-class", "uvicorn.workers.UvicornWorker", "--log-level", "warning"]
    return command + (["--preload"] if preload else [])


# Seconds a server may take to stop before it is killed (and its test fails on the exit code).
STOP_WITHIN = {"granian": 30}


@contextmanager
def serving(
    app: str,
    *,
    server: str = "uvicorn",
    shim: bool,
    loop: str = "asyncio",
    env: dict[str, str] | None = None,
    workers: int = 1,
    preload: bool = False,
    reload: bool = False,
    by_variable: bool = False,
    arguments: Sequence[str] = (),
) -> Iterator[Server]:
    """Serve `app` ("module:attribute") on a free port; stop it and keep its log.

    The shim is turned on by the app's own import (DEMO_SHIM=1) or, `by_variable`, by
    STARLETTE_SHIELD_PATCH=1 alone. gunicorn is stopped with SIGTERM (what process managers send;
    its SIGINT is a quick stop), the others with SIGINT. With several workers or --reload the app
    keeps its counts in a state folder, and serving waits until every worker has started.
    `arguments` go at the end of the command line.
    """
    port = free_port()
    command = server_command(app, server, port, loop, workers=workers, preload=preload, reload=reload)
    command += arguments
    activation = {"STARLETTE_SHIELD_PATCH": "1"} if by_variable and shim else {}
    demo_shim = "1" if shim and not by_variable else "0"
    with tempfile.TemporaryDirectory() as state, tempfile.TemporaryDirectory() as apps, (
        tempfile.TemporaryFile("w+")
    ) as log:
        several = {"DEMO_STATE_DIR": state} if workers > 1 or reload else {}
        # The server finds the apps (demo/) in a folder of their own, not in the checkout, whose
        # starlette_shield_patch would shadow the one installed in the venv (the wheel).
        os.symlink(ROOT / "demo", Path(apps) / "demo")
        environment = clean_environment(
            {"PYTHONPATH": apps, "DEMO_SHIM": demo_shim, **activation, **several, **(env or {})}
        )
        # The log goes to a file: a pipe nobody reads while the server runs fills up after a few
        # dozen tracebacks, and the server then blocks in its logging call.
        process = subprocess.Popen(
            [sys.executable, *command],
            cwd=apps,
            env=environment,
            stdout=log if server == "granian" else subprocess.DEVNULL,  # granian logs to stdout
            stderr=log,
            text=True,
        )
        running = Server(port, process, state=Path(state) if several else None)
        try:
            try:
                wait_until_listening(running)
            except ServerExited as exited:
                log.seek(0)
                raise ServerExited(f"{exited}; its log:\n{log.read()}") from None
            if running.state:
                wait_until(lambda: len(running.workers("started")) >= workers, running, "workers started")
                running.started_workers = running.workers("started")
            yield running
        finally:
            running.served_log = log.seek(0, os.SEEK_END)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM if server == "gunicorn" else signal.SIGINT)
            # granian's stop once took over 15 s on a loaded machine (a full CI run, Python 3.11,
            # starlette 0.15.0, an answer that was whole; 0 in 60 runs of the same test after it).
            stop_within = STOP_WITHIN.get(server, 15)
            try:
                process.wait(timeout=stop_within)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                log.write(f"\n(did not stop within {stop_within} s: killed)\n")
            running.stopped_in = time.monotonic() - started
            running.exit_code = process.returncode
            if running.state:
                running.stopped_workers = running.workers("stopped")
            log.seek(0)
            running.log = log.read()


class ServerExited(RuntimeError):
    pass


def wait_until_listening(server: Server, timeout: float = 30) -> None:
    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_until(listening, server, f"something listening on 127.0.0.1:{server.port}", timeout)


def wait_until(ready: Callable[[], bool], server: Server, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerExited(f"the server exited at startup with {server.process.returncode}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"no {what} after {timeout}s")


def request_bytes(
    method: str, path: str, body: bytes, declared: int | None = None, *, keep_alive: bool = False
) -> bytes:
    length = len(body) if declared is None else declared
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
    head += "\r\n" if keep_alive else "Connection: close\r\n\r\n"
    return head.encode() + body


def exchange(port: int, payload: bytes) -> bytes:
    """Send a request and read the whole answer (by Content-Length or chunks); a client that stays.

    Returns the status line and headers as sent, then the body, de-chunked.
    """
    return timed_exchange(port, payload)[0]


def timed_exchange(port: int, payload: bytes, *, hold: float = 0.0) -> tuple[bytes, float]:
    """exchange(), and the seconds until the whole answer had arrived; with `hold` the client keeps
    the connection open that long after the answer (keep-alive) before it closes."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as connection:
        connection.sendall(payload)
        buffer = b""

        def fill(predicate: Callable[[bytes], bool]) -> None:
            nonlocal buffer
            while not predicate(buffer):
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk

        fill(lambda data: b"\r\n\r\n" in data)
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        headers = head.lower()
        if b"transfer-encoding: chunked" in headers:
            body = b""
            while True:
                fill(lambda data: b"\r\n" in data)
                size_line, _, buffer = buffer.partition(b"\r\n")
                size = int(size_line.split(b";")[0] or b"0", 16)
                fill(lambda data, size=size: len(data) >= size + 2)  # type: ignore[misc]
                body, buffer = body + buffer[:size], buffer[size + 2 :]
                if size == 0:
                    break
        else:
            match = re.search(rb"content-length: *(\d+)", headers)
            length = int(match.group(1)) if match else 0
            fill(lambda data: len(data) >= length)
            body = buffer[:length]
        answered_in = time.monotonic() - started
        time.sleep(hold)
    return head + b"\r\n\r\n" + body, answered_in


def leave_after(port: int, payload: bytes, seconds: float, read: int = 0) -> None:
    """Send `payload`, read `read` bytes of the answer if asked, wait, and close: a client that leaves.

    Whatever the server does meanwhile (even a reset) is no concern of a client that leaves.
    """
    with suppress(OSError), socket.create_connection(
        ("127.0.0.1", port), timeout=CLIENT_TIMEOUT
    ) as connection:
        connection.sendall(payload)
        received = 0
        while received < read:
            chunk = connection.recv(read - received)
            if not chunk:
                break
            received += len(chunk)
        time.sleep(seconds)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def in_flight(port: int) -> int:
    """Requests the app (demo.servers_app) has begun and not finished, this one not counted."""
    return count(port, "/stats")


def finished_work(port: int) -> int:
    """Background tasks of the app (demo.servers_app) that ran to their end."""
    return count(port, "/finished")


def count(port: int, path: str) -> int:
    answer = exchange(port, request_bytes("GET", path, b""))
    return int(answer.split(b"\r\n\r\n", 1)[1])


def drain(port: int, timeout: float = 10.0) -> int:
    """Wait until no request is in flight, or `timeout`; return how many still are."""
    deadline = time.monotonic() + timeout
    left = in_flight(port)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = in_flight(port)
    return left


@dataclass
class AfterResponse:
    """Clients of /background (demo.servers_app): what they got, and the work that finished."""

    clients: int
    answered: int  # whole, correct answers
    slowest_answer: float  # seconds until the slowest client had its whole answer
    finished: int  # background tasks that ran to their end, once nothing was in flight
    left_in_flight: int


def work_after_response(
    port: int, *, clients: int = 10, keep_alive: bool = False, work: float = 0.3, stream: bool = False
) -> AfterResponse:
    """`clients` at once ask for a response that carries `work` seconds of background work; each
    reads the whole answer and closes (or, `keep_alive`, holds the connection open past the work)."""
    import threading

    before = finished_work(port)
    path = f"/background?work={work}" + ("&stream=1" if stream else "")
    payload = request_bytes("GET", path, b"", keep_alive=keep_alive)
    answers: list[tuple[bytes, float]] = []

    def client() -> None:
        with suppress(OSError):
            answers.append(timed_exchange(port, payload, hold=work + 0.2 if keep_alive else 0.0))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=CLIENT_TIMEOUT + work + 1)
    left = drain(port)
    expected = b"chunk 002\n" if stream else b"done"
    whole = [answer.startswith(b"HTTP/1.1 200") and answer.endswith(expected) for answer, _ in answers]
    return AfterResponse(
        clients=clients,
        answered=sum(whole),
        slowest_answer=max((seconds for _, seconds in answers), default=float("inf")),
        finished=finished_work(port) - before,
        left_in_flight=left,
    )
