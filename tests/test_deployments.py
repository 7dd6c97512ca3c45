"""The deployments of 2021-2022, with STARLETTE_SHIELD_PATCH as the only activation: gunicorn with
uvicorn's worker class (forked workers, with and without --preload), uvicorn --workers and
--reload (each worker a new interpreter), hypercorn's asyncio worker with --workers.

The app (demo.servers_app) never imports the shim. Each worker reports at lifespan startup whether
BaseHTTPMiddleware is patched in it, and at lifespan shutdown that it stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from demo.deployments import DEPLOYMENTS, STAYING, run
from demo.harness import Server, exchange, request_bytes, serving
from tests.asgi import STARLETTE_CANCELS
from tests.fresh import ROOT

pytestmark = [
    pytest.mark.deployments,
    pytest.mark.skipif(not STARLETTE_CANCELS, reason="the deployments sessions run 0.15.0 and 0.20.4"),
]


def gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether process `pid` has ended (a worker whose master has exited is reaped by init)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def assert_every_worker_stopped_cleanly(server: Server, kind: str) -> None:
    assert server.exit_code == 0 and server.stopped_in < 10, server.log
    assert all(gone(pid) for pid in server.started_workers)
    if kind == "hypercorn":
        # hypercorn's master (0.18.0 run.py) terminates the other workers once the first has
        # exited, often before their lifespan shutdown completes: seen here in 0 to 14 of 20
        # stops, batch by batch, with and without the shim alike. The first worker always completes it.
        # And 0.14.4's worker cancels its lifespan task, then awaits it: when the task had not
        # ended yet, the worker's process ends with a CancelledError traceback (Python 3.7, where
        # that is an Exception; seen once in a full run, under load).
        assert server.stopped_workers and set(server.stopped_workers) <= set(server.started_workers)
    else:
        assert set(server.stopped_workers) == set(server.started_workers), server.log


@pytest.mark.parametrize("variable", ["unset", "set"], ids=["without-variable", "with-variable"])
@pytest.mark.parametrize("deployment", list(DEPLOYMENTS))
def test_clients_leave_mid_request_and_work_follows_the_response(deployment: str, variable: str) -> None:
    """20 clients leave mid-request while 6 stay, then 10 ask for a streamed response that carries
    0.3 s of background work; then the server is stopped as a process manager stops it."""
    outcome = run(deployment, variable == "set")

    server, workers = outcome.server, outcome.server.started_workers
    assert len(workers) == DEPLOYMENTS[deployment].get("workers", 1), server.log
    assert all(worker["patched"] is (variable == "set") for worker in workers.values()), workers
    # Without the shim the work is cancelled once the response is over (starlette#1438) or, before
    # 0.20.1, it holds the end of the streamed response back until it is done (starlette#919).
    assert outcome.work_follows_the_response is (variable == "set"), outcome.after
    if variable == "unset":
        assert server.no_response_returned >= 1, server.log
    else:
        # hypercorn's own stop may log one (see assert_every_worker_stopped_cleanly): there the
        # exceptions logged while it served are what counts.
        kind = DEPLOYMENTS[deployment]["server"]
        assert not server.exceptions(while_serving=kind == "hypercorn"), server.log
        assert server.asgi_errors == 0, server.log
    assert outcome.staying_answered == STAYING
    assert outcome.after.answered == outcome.after.clients, outcome.after
    assert outcome.left_in_flight == 0 and outcome.after.left_in_flight == 0
    assert_every_worker_stopped_cleanly(server, DEPLOYMENTS[deployment]["server"])


@pytest.mark.parametrize(
    ("setting", "patched"),
    [
        ({"arguments": ["--env", "STARLETTE_SHIELD_PATCH=1"]}, False),
        ({"arguments": ["--config", str(ROOT / "tests" / "gunicorn_conf.py")]}, True),
    ],
    ids=["gunicorn-env-option-too-late", "gunicorn-config-file-import"],
)
def test_gunicorn_settings_that_reach_the_workers_or_not(setting: dict[str, Any], patched: bool) -> None:
    """gunicorn's --env (and raw_env) sets the variable after interpreter startup, where the startup
    hook has already looked: too late, as the README says. A config file that imports the package
    arms the master, and every forked worker patches."""
    with serving("demo.servers_app:app", shim=False, server="gunicorn", workers=2, **setting) as server:
        pass

    assert len(server.started_workers) == 2, server.log
    assert all(worker["patched"] is patched for worker in server.started_workers.values())
    assert_every_worker_stopped_cleanly(server, "gunicorn")


@pytest.mark.parametrize("variable", ["unset", "1"])
def test_the_doctor_says_what_each_server_s_workers_will_do(variable: str) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "STARLETTE_SHIELD_PATCH"}
    if variable != "unset":
        environment["STARLETTE_SHIELD_PATCH"] = variable
    result = subprocess.run(
        [sys.executable, "-m", "starlette_shield_patch", "--json"],
        capture_output=True,
        text=True,
        env=environment,
        cwd=str(ROOT.parent),  # not the source tree: the installed package, as a user runs it
        timeout=60,
    )
    said: dict[str, str] = json.loads(result.stdout)["workers"]

    assert sorted(name.split()[0] for name in said) == ["gunicorn", "hypercorn", "uvicorn"], said
    expected = "each patches when it imports starlette" if variable == "1" else "each patches once the app"
    assert all(expected in what for what in said.values()), said
    gunicorn = next(what for name, what in said.items() if name.startswith("gunicorn"))
    assert ("too late" in gunicorn) is (variable == "1")


@pytest.mark.parametrize(
    "deployment", ["gunicorn-uvicorn-worker", "gunicorn-uvicorn-worker-preload", "uvicorn-workers"]
)
def test_each_worker_logs_once_that_the_shim_is_in_force(deployment: str) -> None:
    """The app sets up logging once starlette is imported (demo.servers_app, DEMO_LOGGING): each
    worker that serves says once that the shim is in force (with --preload, the master imported
    the app and patched, and serves nothing: it says nothing)."""
    settings = DEPLOYMENTS[deployment]
    with serving(
        "demo.servers_app:app", shim=True, by_variable=True, env={"DEMO_LOGGING": "1"}, **settings
    ) as server:
        answers = [exchange(server.port, request_bytes("GET", "/hello?work=0", b"")) for _ in range(12)]

    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers
    said = [line.split(" ", 1) for line in server.log.splitlines() if " starlette_shield_patch " in line]
    pids = [int(pid) for pid, _ in said]
    assert said and len(pids) == len(set(pids)), server.log  # one line per process at the most
    assert set(pids) <= set(server.started_workers), (pids, server.started_workers)
    assert all(line.startswith("starlette_shield_patch INFO in force, patched by ") for _, line in said), said
    # The workers ran the package installed in the venv, not the checkout's (demo.harness.serving).
    files = [Path(worker["shim_file"]) for worker in server.started_workers.values()]
    assert files and all("site-packages" in file.parts for file in files), files
