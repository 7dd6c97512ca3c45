"""Serve demo.app with uvicorn on 127.0.0.1, without then with the shim, and compare."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEAVING_CLIENTS = 20  # send the request, then disconnect while the endpoint works
STAYING_CLIENTS = 10  # wait for the answer
LEAVE_AFTER = 0.05
REQUEST = (
    b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nhello"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_listening(port: int, server: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the server exited at startup")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def client(port: int, leave: bool, results: list[str]) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(REQUEST)
            if leave:
                time.sleep(LEAVE_AFTER)
                results.append("disconnected")
                return
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        ok = answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"done hello")
        results.append("answered" if ok else "wrong answer")
    except OSError as exc:
        results.append(f"failed: {exc}")


def serve_and_measure(with_shim: bool) -> dict[str, object]:
    port = free_port()
    environment = {**os.environ, "DEMO_SHIM": "1" if with_shim else "0", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "uvicorn", "demo.app:app", "--host", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = ""
    try:
        wait_until_listening(port, server)
        results: list[str] = []
        threads = [
            threading.Thread(target=client, args=(port, number < LEAVING_CLIENTS, results))
            for number in range(LEAVING_CLIENTS + STAYING_CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        time.sleep(1.0)  # let the server finish the requests whose clients left
    finally:
        server.send_signal(signal.SIGINT)
        try:
            log = server.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            server.kill()
            log = server.communicate()[1] + "\n(the server did not stop within 10 s and was killed)"
    return {
        "sent": len(results),
        "answered": results.count("answered"),
        "disconnected": results.count("disconnected"),
        "other": len(results) - results.count("answered") - results.count("disconnected"),
        "errors": log.count("Exception in ASGI application"),
        "no_response": log.count("RuntimeError: No response returned."),
        "exit": server.returncode,
        "log": log,
    }


def main(argv: list[str] | None = None) -> int:
    import starlette
    import uvicorn

    print(
        f"starlette {starlette.__version__}, uvicorn {uvicorn.__version__}, Python {sys.version.split()[0]}: "
        f"{LEAVING_CLIENTS} clients leave {LEAVE_AFTER}s into a {0.2}s request, "
        f"{STAYING_CLIENTS} wait for the answer"
    )
    rows = {"without the shim": serve_and_measure(False), "with the shim": serve_and_measure(True)}
    header = ["", "requests sent", "answered", "disconnected", "ASGI errors logged", "No response returned."]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, row in rows.items():
        cells = [name, row["sent"], row["answered"], row["disconnected"], row["errors"], row["no_response"]]
        print("| " + " | ".join(map(str, cells)) + " |")
    shimmed = rows["with the shim"]
    if shimmed["errors"] or shimmed["answered"] != STAYING_CLIENTS or shimmed["other"]:
        print("\nwith the shim the server still logged:\n" + str(shimmed["log"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
