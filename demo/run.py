"""Serve demo.servers_app on 127.0.0.1 with uvicorn, without then with the shim (`scripts/demo`):
clients that disconnect mid-request, then responses that carry background work."""

from __future__ import annotations

import sys
import threading

from demo.harness import Server, drain, exchange, leave_after, request_bytes, serving, work_after_response

LEAVING_CLIENTS = 20  # send the request, then disconnect while the endpoint works
STAYING_CLIENTS = 10  # wait for the answer
LEAVE_AFTER = 0.05
WORK_SECONDS = 0.2
REQUEST = request_bytes("POST", f"/slow?work={WORK_SECONDS}", b"hello")
BACKGROUND_CLIENTS = 10  # each asks for a response that carries BACKGROUND_SECONDS of background work
BACKGROUND_SECONDS = 0.3


def staying_client(port: int, results: list[str]) -> None:
    try:
        answer = exchange(port, REQUEST)
        ok = answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"done hello")
        results.append("answered" if ok else "wrong answer")
    except OSError as exc:
        results.append(f"failed: {exc}")


def leaving_client(port: int, results: list[str]) -> None:
    leave_after(port, REQUEST, LEAVE_AFTER)
    results.append("disconnected")


def serve_and_measure(with_shim: bool) -> tuple[Server, list[str]]:
    results: list[str] = []
    with serving("demo.servers_app:app", shim=with_shim) as server:
        clients = [leaving_client] * LEAVING_CLIENTS + [staying_client] * STAYING_CLIENTS
        threads = [threading.Thread(target=client, args=(server.port, results)) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        drain(server.port)  # let the server finish the requests whose clients left
    return server, results


def main() -> int:
    import starlette
    import uvicorn

    print(
        f"starlette {starlette.__version__}, uvicorn {uvicorn.__version__}, Python {sys.version.split()[0]}: "
        f"{LEAVING_CLIENTS} clients leave {LEAVE_AFTER}s into a {WORK_SECONDS}s request, "
        f"{STAYING_CLIENTS} wait for the answer"
    )
    header = ["", "requests sent", "answered", "disconnected", "ASGI errors logged", "No response returned."]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    failed = False
    for name, with_shim in (("without the shim", False), ("with the shim", True)):
        server, results = serve_and_measure(with_shim)
        answered, disconnected = results.count("answered"), results.count("disconnected")
        cells = [name, len(results), answered, disconnected, server.asgi_errors, server.no_response_returned]
        print("| " + " | ".join(map(str, cells)) + " |", flush=True)
        if with_shim and (server.asgi_errors or answered != STAYING_CLIENTS):
            failed = True
            print(f"\nwith the shim the server still logged:\n{server.log}")
    print(
        f"\n{BACKGROUND_CLIENTS} clients at once, each answer carries a {BACKGROUND_SECONDS}s background "
        "task; they read the whole answer and close (as curl does), or keep the connection open:\n"
    )
    header = ["", "clients", "answered", "background tasks finished", "slowest answer (s)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, with_shim in (("without the shim", False), ("with the shim", True)):
        with serving("demo.servers_app:app", shim=with_shim) as server:
            rows = [
                ("read and close, plain", work_after_response(server.port, work=BACKGROUND_SECONDS)),
                (
                    "keep-alive, chunked",
                    work_after_response(server.port, work=BACKGROUND_SECONDS, keep_alive=True, stream=True),
                ),
            ]
        for clients, result in rows:
            cells = [f"{name}: {clients}", result.clients, result.answered, result.finished]
            print("| " + " | ".join(map(str, cells)) + f" | {result.slowest_answer:.3f} |", flush=True)
            late = result.slowest_answer >= BACKGROUND_SECONDS
            if with_shim and (result.finished != result.clients or late):
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
