"""apply(), remove(), status(): idempotent, exact, thread-safe, truthful."""

from __future__ import annotations

import functools
import threading
from typing import Any, Iterator

import pytest
import starlette
from starlette.middleware.base import BaseHTTPMiddleware

import starlette_shield_patch
from conftest import shim_state
from tests.asgi import (
    ERRORS_FIX_APPLIES,
    EXTENDED,
    LOSES_THE_START,
    STARLETTE_AFFECTED,
    STARLETTE_BETWEEN,
    answers_after,
    client_gone_at_once,
    client_stays,
    http_scope,
    pass_through,
    reads_body_then_answers,
    run,
    stack,
)


def apply(**switches: Any) -> None:
    """apply(), opted in where this run opts in (0.21.0 - 0.27.x: tests.asgi.EXTENDED)."""
    starlette_shield_patch.apply(extended=EXTENDED, **switches)


only_affected = pytest.mark.skipif(not STARLETTE_AFFECTED, reason="needs an affected starlette")
only_unaffected = pytest.mark.skipif(STARLETTE_AFFECTED, reason="needs an unaffected starlette")


@pytest.fixture
def original() -> Iterator[Any]:
    """The plain __call__ of this starlette; the shim is removed before and after the test."""
    with shim_state(False):
        call = BaseHTTPMiddleware.__dict__["__call__"]
        assert type(call).__name__ == "function"
        yield call
    assert BaseHTTPMiddleware.__dict__["__call__"] is call


def installed() -> Any:
    return BaseHTTPMiddleware.__dict__["__call__"]


@only_affected
def test_apply_twice_leaves_one_wrapper(original: Any) -> None:
    apply()
    first = installed()
    apply()

    assert installed() is first is not original
    assert first.__wrapped__ is original


@only_affected
def test_remove_puts_back_the_exact_original(original: Any) -> None:
    apply()
    starlette_shield_patch.remove()
    starlette_shield_patch.remove()

    assert installed() is original
    assert not starlette_shield_patch.status().patched


@only_affected
def test_status_names_the_version_and_why(original: Any) -> None:
    apply()
    status = starlette_shield_patch.status()

    # after-response: on 0.28 - 0.38.2 the wait for the layer's response (wait-sent) alone.
    # 0.21.0 - 0.27.x (with the opt-in) do not lose the response start: no piece of that fix.
    fixes: tuple[str, ...] = () if STARLETTE_BETWEEN else ("response-start",)
    fixes += ("after-response",)
    fixes += ("errors",) if ERRORS_FIX_APPLIES else ()
    fixes += ("pass-through",)  # url-for has a piece on every affected release
    assert repr(status) == (
        f"ShieldStatus(patched=True, reason={status.reason!r}, starlette_version={starlette.__version__!r}, "
        f"armed=True, fixes={fixes!r})"
    )
    assert status.patched and status.armed
    assert status.starlette_version == starlette.__version__
    assert f"starlette {starlette.__version__} is affected" in status.reason
    starlette_shield_patch.remove()
    assert "removed by remove()" in starlette_shield_patch.status().reason


@pytest.mark.skipif(not STARLETTE_BETWEEN, reason="the opt-in is for starlette 0.21.0 - 0.27.x")
def test_the_opt_in_with_every_fix_it_needs_turned_off_leaves_it_alone(original: Any) -> None:
    """0.21.0 - 0.27.x do not lose the start: opted in with the response-start fix alone
    (start-only), nothing is left to do, and no wrapper is put there to do it."""
    starlette_shield_patch.apply(extended=True, after_response=False, errors=False, pass_through=False)
    status = starlette_shield_patch.status()

    assert installed() is original
    assert not status.patched and status.fixes == ()
    assert "with the opt-in; every fix it needs is turned off" in status.reason


@only_unaffected
def test_unaffected_release_is_left_alone(original: Any) -> None:
    apply()
    status = starlette_shield_patch.status()

    assert installed() is original
    assert not status.patched
    assert starlette.__version__ in status.reason and "left alone" in status.reason


@only_unaffected
@pytest.mark.parametrize("after_response", [True, False], ids=["both-fixes", "start-only"])
def test_force_applies_outside_the_range(
    original: Any, caplog: pytest.LogCaptureFixture, after_response: bool
) -> None:
    apply(force=True, after_response=after_response)
    status = starlette_shield_patch.status()

    assert status.patched and "force=True" in status.reason
    assert installed().__wrapped__ is original
    assert any(record.levelname == "WARNING" for record in caplog.records)
    # Its call_next is not the stream of 0.15 - 0.20: the inner app gets starlette's own send.
    outcome = run(stack(reads_body_then_answers(), pass_through), client_stays(), backend="asyncio")
    assert outcome.clean and outcome.messages[-1].get("body") in (b"done", b"")
    starlette_shield_patch.remove()
    assert installed() is original


@only_affected
def test_the_stand_in_self_lends_every_other_attribute_of_the_middleware(original: Any) -> None:
    """A forced or unknown release may read more of `self` than dispatch_func and app."""
    from starlette_shield_patch._shield import path
    from starlette_shield_patch._shield.pieces import InForce

    middleware = BaseHTTPMiddleware(reads_body_then_answers(), dispatch=pass_through)
    for pieces in ((), ("start-first",), ("start-first", "finish-runs", "own-error")):
        stand_in = path._StandIn(middleware, InForce(pieces), send=None)  # type: ignore[arg-type]
        assert stand_in.dispatch == middleware.dispatch


@only_affected
def test_remove_and_apply_never_raise(original: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure inside the shim is logged and leaves starlette unpatched; the caller never sees it."""
    from starlette_shield_patch import _patch

    def broken(**_: Any) -> None:
        raise RuntimeError("broken inside the shim")

    monkeypatch.setattr(_patch, "decide", broken)
    apply()
    assert "patching failed (RuntimeError: broken inside the shim)" in starlette_shield_patch.status().reason
    monkeypatch.undo()

    apply()
    monkeypatch.setattr(_patch._WhenStarletteIsImported, "drop", broken)
    starlette_shield_patch.remove()
    assert "patching failed (RuntimeError" in starlette_shield_patch.status().reason


@only_affected
def test_concurrent_apply_and_remove_end_whole(original: Any) -> None:
    barrier = threading.Barrier(8)

    def flip(index: int) -> None:
        barrier.wait()
        for turn in range(300):
            (starlette_shield_patch.apply if (index + turn) % 2 else starlette_shield_patch.remove)()

    threads = [threading.Thread(target=flip, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    current = installed()
    assert current is original or current.__wrapped__ is original
    assert starlette_shield_patch.status().patched is (current is not original)
    apply()
    assert installed().__wrapped__ is original


@only_affected
def test_remove_under_someone_elses_wrapper_keeps_theirs(original: Any) -> None:
    """sentry-sdk style: a functools.wraps wrapper put on the class after the shim."""
    calls = []
    apply()
    below = installed()

    @functools.wraps(below)
    async def theirs(self: Any, scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])
        await below(self, scope, receive, send)

    BaseHTTPMiddleware.__call__ = theirs  # type: ignore[method-assign]
    try:
        app = stack(answers_after(), *[pass_through] * 4)
        scope = http_scope("GET")
        assert starlette_shield_patch.status().patched
        assert run(app, client_gone_at_once, backend="asyncio", scope=scope).clean

        starlette_shield_patch.remove()
        status = starlette_shield_patch.status()
        assert installed() is theirs
        assert not status.patched and "another wrapper" in status.reason
        if LOSES_THE_START:  # not 0.21.0 - 0.27.x: the shim passes through as unpatched
            assert run(app, client_gone_at_once, backend="asyncio", scope=scope).no_response_returned

        apply()
        assert starlette_shield_patch.status().patched
        assert run(app, client_gone_at_once, backend="asyncio", scope=scope).clean
        assert calls and set(calls) == {"http"}
    finally:
        BaseHTTPMiddleware.__call__ = original  # type: ignore[method-assign]
        starlette_shield_patch.remove()


@only_affected
def test_status_reads_past_a_wrapper_with_an_empty_closure_cell(original: Any) -> None:
    apply()
    below = installed()

    def wrap() -> Any:
        later: str  # assigned after the wrapper is made: an empty cell in its closure

        async def theirs(self: Any, scope: Any, receive: Any, send: Any) -> None:
            await below(self, scope, receive, send)
            print(later)  # pragma: no cover  # never called

        return theirs
        later = "never"

    BaseHTTPMiddleware.__call__ = wrap()  # type: ignore[method-assign]
    try:
        assert starlette_shield_patch.status().patched
    finally:
        BaseHTTPMiddleware.__call__ = original  # type: ignore[method-assign]
        starlette_shield_patch.remove()
