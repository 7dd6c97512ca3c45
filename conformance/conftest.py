"""Our conftest for starlette's own tests/middleware/test_base.py run against old releases.

conformance/run.py copies this file to tests/conftest.py of a temporary tree into which it extracts
starlette 1.10.0's tests/middleware/test_base.py and tests/types.py from the sdist on the package
index (pinned by sha256). It replaces upstream's tests/conftest.py (whose only fixture,
`test_client_factory`, is below; its optional BlockBuster fixture is left out: BlockBuster is a dev
dependency of 1.10.0 that upstream itself runs without).

The test file is never edited. Where an old release lacks an API that the file uses, the adaptation is
here, each with why; where a test cannot apply to a release, it is skipped by a written rule about that
release (NOT_APPLICABLE), never because it fails. Everything here changes the test process only.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
import types
from importlib.metadata import version
from typing import Any, Callable, NamedTuple

import anyio
import anyio.from_thread
import pytest
import starlette.middleware
import starlette.testclient


def _release(text: str) -> tuple[int, int, int]:
    """(0, 32, 0) for "0.32.0.post1"."""
    major, minor, micro = (int("".join(c for c in part if c.isdigit()) or 0) for part in text.split(".")[:3])
    return major, minor, micro


STARLETTE = _release(version("starlette"))
ANYIO_MAJOR = int(version("anyio").split(".")[0])

# --- Adaptations (APIs an old release, or the environment, lacks) -----------------------------------

# 1. tests/types.py of 1.10.0 imports `httpx2` (the client 1.10.0's TestClient is built on) and
#    uses it only under TYPE_CHECKING: an empty module stands in where it is not installed (old
#    releases' TestClient is built on requests or httpx).
if importlib.util.find_spec("httpx2") is None:
    sys.modules["httpx2"] = types.ModuleType("httpx2")

# 2. `from starlette.middleware import _MiddlewareFactory` (later releases; 0.36 - 0.38 call it
#    _MiddlewareClass, older releases have neither). The test file uses it only in an annotation
#    (`from __future__ import annotations`, never evaluated): any object lets the import succeed.
if not hasattr(starlette.middleware, "_MiddlewareFactory"):
    starlette.middleware._MiddlewareFactory = getattr(  # type: ignore[attr-defined]
        starlette.middleware, "_MiddlewareClass", Any
    )

# 3. The TestClient of starlette 0.15 - 0.24 calls `anyio.start_blocking_portal`, which anyio 4
#    removed (it is `anyio.from_thread.start_blocking_portal` since anyio 3.0). Same function.
if not hasattr(anyio, "start_blocking_portal"):
    anyio.start_blocking_portal = anyio.from_thread.start_blocking_portal  # type: ignore[attr-defined]

if importlib.util.find_spec("trio") is not None and _release(version("trio")) < (0, 22, 0):
    # 7. trio < 0.22 (the only trio that anyio 3 runs with) replaces traceback.TracebackException's
    #    __init__ and format at import with functions that do not take the `_ctx` keyword that
    #    Python 3.11 passes when it formats an exception group: pytest then stops with an
    #    INTERNALERROR while it reports a test. trio keeps the originals; put them back (only how
    #    a MultiError's traceback prints changes).
    import traceback

    multierror: Any = importlib.import_module("trio._core._multierror")  # gone from trio >= 0.22
    traceback.TracebackException.__init__ = multierror.traceback_exception_original_init  # type: ignore[method-assign]
    traceback.TracebackException.format = multierror.traceback_exception_original_format  # type: ignore[method-assign]

_TESTCLIENT_HAS_BACKEND = "backend" in inspect.signature(starlette.testclient.TestClient.__init__).parameters

if hasattr(starlette.testclient, "requests"):
    # 4. starlette < 0.21's TestClient is a requests.Session: the raw body that httpx (and the file)
    #    passes as `content=` is requests' `data=`. On the class, as some tests build their own
    #    TestClient.
    _request = starlette.testclient.TestClient.request

    @functools.wraps(_request)
    def _request_with_content(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if "content" in kwargs:
            kwargs["data"] = kwargs.pop("content")
        return _request(self, method, url, *args, **kwargs)

    starlette.testclient.TestClient.request = _request_with_content  # type: ignore[method-assign]


def _client_class(backend: str, options: dict[str, Any]) -> Callable[..., Any]:
    """The release's TestClient on `backend`, as 1.10.0's conftest makes it."""
    if _TESTCLIENT_HAS_BACKEND:
        return functools.partial(starlette.testclient.TestClient, backend=backend, backend_options=options)
    # 5. starlette 0.15 - 0.16's TestClient has no `backend`/`backend_options` arguments: it reads
    #    the class attribute `async_backend` (its documented way to choose the backend).
    attributes = {"async_backend": {"backend": backend, "backend_options": options}}
    return type("TestClient", (starlette.testclient.TestClient,), attributes)


# 6. Upstream runs the file on asyncio only (anyio's default `anyio_backend`); we run every test on
#    asyncio and on trio.
@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def test_client_factory(anyio_backend_name: str, anyio_backend_options: dict[str, Any]) -> Callable[..., Any]:
    """As upstream's tests/conftest.py: a TestClient on the test's anyio backend."""
    return _client_class(anyio_backend_name, anyio_backend_options)


# --- Not applicable: written rules about a release, never "it fails" ------------------------------


class Rule(NamedTuple):
    test: str  # the test function's name
    applies: Callable[[tuple[int, int, int]], bool]  # True where the test is n/a on that release
    reason: str


NOT_APPLICABLE = [
    Rule(
        "test_early_hints_events",
        lambda release: release < (1, 0, 0),
        # Checked in the sdists of every release this runs on (0.15.0 - 0.38.2): none has it.
        "Request.send_early_hints (http.response.early_hint) does not exist in starlette 0.x",
    ),
    *(
        Rule(
            test,
            lambda release: release < (0, 18, 0),
            # Response.init_headers of 0.15.0 - 0.17.1: `if body and populate_content_length`;
            # 0.18.0 sends content-length: 0 for an empty body too. The test's expected events
            # include it; what the layer does is checked by tests/test_read_body.py there.
            "Response(b'') sends no content-length: 0 before starlette 0.18.0",
        )
        for test in (
            "test_multiple_middlewares_stacked_client_disconnected",
            "test_read_request_stream_in_dispatch_wrapping_app_calls_body",
        )
    ),
    Rule(
        "test_asgi_pathsend_events",
        lambda release: release < (0, 36, 0) or (0, 38, 1) <= release < (1, 0, 0),
        # Checked in the sdists: 0.35.1 has no pathsend, 0.36.0 - 0.38.0 have it, 0.38.1 - 0.41.0 not.
        "FileResponse sends http.response.pathsend only in 0.36.0 - 0.38.0 of the 0.x releases "
        "(added by starlette#2435, taken out in 0.38.1)",
    ),
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", item.name)
        for rule in NOT_APPLICABLE:
            if rule.test == name and rule.applies(STARLETTE):
                item.add_marker(
                    pytest.mark.skip(reason=f"n/a on starlette {version('starlette')}: {rule.reason}")
                )
