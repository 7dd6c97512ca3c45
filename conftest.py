from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import pytest

import starlette_shield_patch
from tests.fresh import version

ANYIO_MAJOR = int(version("anyio").split(".")[0])
# anyio 3 needs trio < 0.22, which does not run on Python >= 3.12 (and whose traceback patches
# break logging there, so it is not even imported).
TRIO_RUNS = ANYIO_MAJOR >= 4 or sys.version_info < (3, 12)

if TRIO_RUNS:
    # pytest rewrites anyio's modules (anyio is a pytest plugin), and on CPython 3.11.7 the
    # rewriter's ast.parse of the trio backend can fail when it is first imported inside a test
    # ("AST constructor recursion depth mismatch"): import it here, once.
    import anyio._backends._trio  # noqa: F401


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "trio" and not TRIO_RUNS:
        pytest.skip("trio < 0.22 (needed by anyio 3) does not run on Python >= 3.12")
    if request.param == "trio":
        import trio  # noqa: F401  # an environment that should have trio must have it

    return str(request.param)


@contextmanager
def shim_state(
    applied: bool, *, after_response: bool = True, errors: bool = True, pass_through: bool = True
) -> Iterator[None]:
    """The shim applied (guard as usual) or not for the block; always removed afterwards."""
    # tests.asgi imports starlette, so that apply() patches at once
    from tests.asgi import EXTENDED, STARLETTE_AFFECTED, STARLETTE_BETWEEN

    starlette_shield_patch.remove()
    try:
        if applied:
            starlette_shield_patch.apply(
                after_response=after_response, errors=errors, pass_through=pass_through, extended=EXTENDED
            )
            # 0.21.0 - 0.27.x need no fix of start-only's (they do not lose the start): left alone.
            start_only = not (after_response or errors or pass_through)
            patched = STARLETTE_AFFECTED and not (STARLETTE_BETWEEN and start_only)
            assert starlette_shield_patch.status().patched is patched
        yield
    finally:
        starlette_shield_patch.remove()


@contextmanager
def shim_named(name: str) -> Iterator[str]:
    """The shim as named: unpatched, patched (every fix), start-only (the response-start fix),
    without-errors, without-pass-through (every fix but that one)."""
    after_response = name != "start-only"
    errors = name not in ("start-only", "without-errors")
    pass_through = name not in ("start-only", "without-pass-through")
    applied = name != "unpatched"
    with shim_state(applied, after_response=after_response, errors=errors, pass_through=pass_through):
        yield name


@pytest.fixture(params=["unpatched", "patched", "start-only"])
def shim(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test without the shim, with both fixes, and with the response-start fix alone."""
    with shim_named(request.param) as name:
        yield name
