"""apply(), remove() and status(): the wrapt wrapper on BaseHTTPMiddleware.__call__ and its hook.

Importing this costs next to nothing: logging, the version guard, wrapt and anyio are imported
only when there is something to log or to patch.
"""

from __future__ import annotations

import _thread  # not threading, which costs milliseconds to import at interpreter startup
import sys

from _starlette_shield_patch_startup import IMPORT, decide

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: typing costs milliseconds to import
if TYPE_CHECKING:
    from logging import Logger
    from types import ModuleType
    from typing import Any, Callable

TARGET_MODULE = "starlette.middleware.base"
# The fixes a user can turn off, one name each (status().fixes, the doctor, apply(), the
# variable); _guard.PIECES says which pieces of code make each one on which releases.
RESPONSE_START = "response-start"  # starlette#1634, #2516: "No response returned." on disconnect
AFTER_RESPONSE = "after-response"  # starlette#1438: work after the response is cancelled
ERRORS = "errors"  # #1262, #1459, #2211, #2812, #2813: errors come out of a layer as themselves
# #1692, #1609, #1991, pathsend, #2672, #2194: what passes through a layer arrives
PASS_THROUGH = "pass-through"
FIXES = (RESPONSE_START, AFTER_RESPONSE, ERRORS, PASS_THROUGH)


class ShieldStatus:
    """What the shim did in this process, and why."""

    # Hand-written rather than a dataclass: dataclasses costs milliseconds to import.
    __slots__ = ("armed", "fixes", "patched", "reason", "starlette_version")

    def __init__(
        self, patched: bool, reason: str, starlette_version: str | None, armed: bool, fixes: tuple[str, ...]
    ) -> None:
        self.patched = patched
        self.reason = reason
        self.starlette_version = starlette_version
        self.armed = armed
        self.fixes = fixes  # the fixes in force, of FIXES; () when not patched

    def __repr__(self) -> str:
        return (
            f"ShieldStatus(patched={self.patched!r}, reason={self.reason!r}, "
            f"starlette_version={self.starlette_version!r}, armed={self.armed!r}, fixes={self.fixes!r})"
        )


class _Installed:
    """Our wrapper in place: the class, the exact __call__ that was there, and the wrapper."""

    __slots__ = ("cls", "original", "pieces", "why", "wrapper")

    def __init__(
        self,
        cls: type,
        original: Callable[..., Any],
        wrapper: Callable[..., Any],
        why: str,
        pieces: tuple[tuple[str, str], ...],
    ) -> None:
        self.cls = cls
        self.original = original  # put back by remove()
        self.wrapper = wrapper
        self.why = why  # the guard's verdict, for status()
        self.pieces = pieces  # (piece, fix) for each piece this release needs (_guard.PIECES)


class _Lifecycle:
    """The patch's life in this process. Every transition runs under `lock`.

    Its states (`state`), with what holds in each:
    - "not applied": nothing armed, nothing installed.
    - "waiting for starlette": armed; a finder (or the wrapt hook) waits for the module.
    - "left alone": armed, but the guard found starlette unaffected (or patching failed).
    - "patched": installed, the request path on.
    - "passing through": installed under someone else's wrapper after remove(): the request path
      off, because putting the original back would drop their wrapper.
    - "removed": remove() put the original back; nothing installed.
    - "disabled": STARLETTE_SHIELD_PATCH=0 refused an activation.
    """

    def __init__(self) -> None:
        self.lock = _thread.RLock()
        self.state = "not applied"
        self.armed = False  # an activation was made and remove() was not called since
        self.force = False
        self.extended = False  # the opt-in: 0.21.0 - 0.27.x patched too
        self.wanted: tuple[str, ...] = FIXES  # the fixes the activation asked for
        self.via = ""
        self.hook_registered = False  # wrapt's post-import hook is registered (once per process)
        self.installed: _Installed | None = None
        self.reason = "not applied"

    def arm(self, *, force: bool, wanted: tuple[str, ...], via: str, extended: bool = False) -> None:
        with self.lock:
            self.armed, self.force, self.wanted, self.via = True, force, wanted, via
            self.extended = extended
            module = sys.modules.get(TARGET_MODULE)
            if module is not None:
                self.patch(module)
                return
            self._enter(
                "waiting for starlette", f"armed by {via}: waiting for {TARGET_MODULE} to be imported"
            )
            if "starlette" not in sys.modules:
                # wrapt costs tens of milliseconds to import (wrapt 2 pulls in asyncio): leave it
                # until starlette, which costs more, is imported.
                _WhenStarletteIsImported.insert()
                return
        _register_hook()

    def patch(self, module: ModuleType) -> None:
        with self.lock:
            if not self.armed:
                return
            if self._in_chain():
                # Ours already (a second apply(), or after remove() left it passing through).
                self._serve(f"patched by {self.via}{self.installed.why}")  # type: ignore[union-attr]
                return
            from ._guard import affected, forced_pieces

            verdict = affected(_starlette_version(), _anyio_major(), self.extended)
            if not verdict.affected and not self.force:
                self._enter("left alone", f"{verdict.reason}; BaseHTTPMiddleware left alone")
                (logger().debug if verdict.readable else logger().warning)("%s", self.reason)
                return
            if verdict.affected and not any(piece.fix in self.wanted for piece in verdict.pieces):
                # 0.21.0 - 0.27.x opted in with start-only: none of the fixes they need is wanted
                # (they do not lose the start), so a wrapper would do nothing but cost.
                self._enter("left alone", f"{verdict.reason}; every fix it needs is turned off")
                logger().debug("%s", self.reason)
                return
            import wrapt

            from ._shield import path

            cls = module.BaseHTTPMiddleware
            original = cls.__dict__["__call__"]
            wrapper = wrapt.FunctionWrapper(original, path.wrapper_for(original))
            setattr(cls, "__call__", wrapper)  # noqa: B010  # a class attribute, by name
            why = f": {verdict.reason}" if verdict.affected else f" with force=True: {verdict.reason}"
            pieces = verdict.pieces if verdict.affected else forced_pieces()
            self.installed = _Installed(cls, original, wrapper, why, tuple((p.name, p.fix) for p in pieces))
            self._serve(f"patched by {self.via}{why}")
            # INFO once per process comes with the first request (_shield.path._tell): here,
            # before the app has set up its logging, it would mostly reach no handler.
            (logger().debug if verdict.affected else logger().warning)("%s", self.reason)

    def remove(self) -> None:
        with self.lock:
            self.armed = False
            _WhenStarletteIsImported.drop()
            installed = self.installed
            if installed is None:
                self._enter("removed", "removed by remove(); nothing was patched")
            elif installed.cls.__dict__.get("__call__") is installed.wrapper:
                setattr(installed.cls, "__call__", installed.original)  # noqa: B010
                self.installed = None
                self._enter(
                    "removed", "removed by remove(); the original BaseHTTPMiddleware.__call__ is back"
                )
            elif self._in_chain():
                # Someone wrapped __call__ on top of ours (sentry-sdk does): putting the original
                # back would drop their wrapper, so ours stays in the chain but passes through.
                self._enter(
                    "passing through",
                    "removed by remove(); another wrapper sits on top of the shim's, so the shim "
                    "stays in the chain and passes every call through unchanged",
                )
                logger().warning("remove(): %s", self.reason)
            else:
                self.installed = None
                self._enter(
                    "removed", "removed by remove(); BaseHTTPMiddleware.__call__ had been replaced by others"
                )

    def disable(self, via: str) -> None:
        with self.lock:
            self._enter("disabled", f"disabled by {via}; {TARGET_MODULE} left alone")
        logger().warning("%s", self.reason)

    def fail(self, exc: Exception) -> None:
        with self.lock:
            self._enter(
                "left alone", f"patching failed ({type(exc).__name__}: {exc}); starlette left unpatched"
            )
        logger().warning("%s", self.reason, exc_info=True)

    def status(self) -> ShieldStatus:
        with self.lock:
            version = _starlette_version() if TARGET_MODULE in sys.modules else None
            patched = self.state == "patched" and self._in_chain()
            return ShieldStatus(patched, self.reason, version, self.armed, self._fixes() if patched else ())

    def _enter(self, state: str, reason: str) -> None:
        self.state, self.reason = state, reason
        if state != "patched" and self.installed is not None:
            _request_path(None)

    def _serve(self, reason: str) -> None:
        self._enter("patched", reason)
        installed = self.installed
        pieces = tuple(name for name, fix in installed.pieces if fix in self.wanted)  # type: ignore[union-attr]
        _request_path(pieces, f"in force, {reason}; fixes: {', '.join(self._fixes())}")

    def _fixes(self) -> tuple[str, ...]:
        # The fixes asked for that this release needs (on 0.28 - 0.38.2, after-response is wait-sent alone).
        installed = self.installed
        needed = {fix for _, fix in installed.pieces} if installed is not None else set()
        return tuple(fix for fix in FIXES if fix in needed and fix in self.wanted)

    def _in_chain(self) -> bool:
        """Whether our wrapper is BaseHTTPMiddleware.__call__ or under wrappers others put on top."""
        installed = self.installed
        return installed is not None and _reaches(
            installed.cls.__dict__.get("__call__"), installed.wrapper, 6
        )


def wanted_fixes(*, after_response: bool, errors: bool, pass_through: bool) -> tuple[str, ...]:
    """The fixes an activation asks for: the response-start fix, and those not turned off."""
    switches = (
        (RESPONSE_START, True),
        (AFTER_RESPONSE, after_response),
        (ERRORS, errors),
        (PASS_THROUGH, pass_through),
    )
    return tuple(fix for fix, on in switches if on)


def _request_path(pieces: tuple[str, ...] | None, news: str | None = None) -> None:
    """The one writer of what the request path reads: the pieces it runs, or none at all, and the
    line its first request logs (once per process)."""
    from ._shield import path  # loaded already: the installed wrapper comes from it
    from ._shield.pieces import InForce

    path.in_force = None if pieces is None else InForce(pieces, None if path.told else news)


def _anyio_major() -> int:
    # anyio 3 has its own ExceptionGroup (a BaseException); anyio 4 uses the standard one. anyio
    # is imported by now: starlette.middleware.base imports it.
    anyio = sys.modules.get("anyio")
    return 3 if hasattr(anyio, "ExceptionGroup") else 4


LIFECYCLE = _Lifecycle()


def logger() -> Logger:
    import logging

    return logging.getLogger("starlette_shield_patch")


def apply(
    force: bool = False,
    *,
    after_response: bool = True,
    errors: bool = True,
    pass_through: bool = True,
    extended: bool = False,
) -> None:
    """Patch BaseHTTPMiddleware now, or as soon as starlette.middleware.base is imported.

    `extended=True` patches starlette 0.21.0 - 0.27.x too, which carry the upstream fix of the
    disconnect bug (starlette#1715) and which the version guard otherwise leaves alone.
    """
    activate(
        force=force,
        after_response=after_response,
        errors=errors,
        pass_through=pass_through,
        extended=extended,
        via="apply(extended=True)" if extended else "apply()",
    )


def remove() -> None:
    """Put back the exact `BaseHTTPMiddleware.__call__` that was there before `apply()`."""
    try:
        LIFECYCLE.remove()
    except Exception as exc:  # never let the shim become the app's failure
        LIFECYCLE.fail(exc)


def status() -> ShieldStatus:
    """Report whether BaseHTTPMiddleware is patched in this process, which fixes, and why."""
    return LIFECYCLE.status()


def activate(
    *,
    force: bool = False,
    after_response: bool = True,
    errors: bool = True,
    pass_through: bool = True,
    extended: bool = False,
    via: str = IMPORT,
) -> None:
    """Arm the patch as `via` asks, unless STARLETTE_SHIELD_PATCH says off; never raises."""
    try:
        activation = decide(
            force=force,
            after_response=after_response,
            errors=errors,
            pass_through=pass_through,
            extended=extended,
            via=via,
        )
        if activation.go_ahead:
            wanted = wanted_fixes(
                after_response=activation.after_response,
                errors=activation.errors,
                pass_through=activation.pass_through,
            )
            LIFECYCLE.arm(
                force=activation.force, wanted=wanted, via=activation.via, extended=activation.extended
            )
        else:  # the kill switch: not the hook, not an import, not apply()
            LIFECYCLE.disable(activation.via)
    except Exception as exc:
        LIFECYCLE.fail(exc)


class _WhenStarletteIsImported:
    """A meta path finder that finds nothing: it registers the wrapt hook as starlette loads."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "starlette":  # a package is imported before its submodules
            try:
                _WhenStarletteIsImported.drop()
                _register_hook()
            except Exception as exc:
                LIFECYCLE.fail(exc)

    @classmethod
    def insert(cls) -> None:
        if not any(isinstance(finder, cls) for finder in sys.meta_path):
            sys.meta_path.insert(0, cls())

    @classmethod
    def drop(cls) -> None:
        sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, cls)]


def _register_hook() -> None:
    with LIFECYCLE.lock:
        if LIFECYCLE.hook_registered:
            return
        LIFECYCLE.hook_registered = True
    import wrapt

    # Calls the hook at once if another thread imported the module meanwhile; outside the lock,
    # because wrapt takes its own lock around the hooks.
    wrapt.register_post_import_hook(_on_import, TARGET_MODULE)


def _on_import(module: ModuleType) -> None:
    # An exception raised here would make `import starlette.middleware.base` fail for the app.
    try:
        LIFECYCLE.patch(module)
    except Exception as exc:
        LIFECYCLE.fail(exc)


def _reaches(layer: object, wrapper: object, depth: int) -> bool:
    # Wrappers find what they wrap through __wrapped__ (functools.wraps), wrapt's _self_parent
    # (a bound FunctionWrapper), or a closure cell (sentry-sdk keeps `old_call` in one).
    if layer is wrapper or getattr(layer, "_self_parent", None) is wrapper:
        return True
    below = [getattr(layer, "__wrapped__", None)]
    below += [cell.cell_contents for cell in getattr(layer, "__closure__", None) or () if _filled(cell)]
    return depth > 0 and any(callable(inner) and _reaches(inner, wrapper, depth - 1) for inner in below)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # an empty cell
        return False
    return True


def _starlette_version() -> str | None:
    version = getattr(sys.modules.get("starlette"), "__version__", None)
    return version if isinstance(version, str) else None
