"""apply(), remove() and status(): the wrapt wrapper on BaseHTTPMiddleware.__call__ and its hook.

Importing this costs next to nothing: logging, the version guard, wrapt and anyio are imported
only when there is something to log or to patch.
"""

from __future__ import annotations

import _thread
import sys

from ._activation import decide

TYPE_CHECKING = False
if TYPE_CHECKING:
    from logging import Logger
    from types import ModuleType
    from typing import Any, Callable

TARGET_MODULE = "starlette.middleware.base"


class ShieldStatus:
    """What the shim did in this process, and why."""

    __slots__ = ("armed", "patched", "reason", "starlette_version")

    def __init__(self, patched: bool, reason: str, starlette_version: str | None, armed: bool) -> None:
        self.patched = patched
        self.reason = reason
        self.starlette_version = starlette_version
        self.armed = armed

    def __repr__(self) -> str:
        return (
            f"ShieldStatus(patched={self.patched!r}, reason={self.reason!r}, "
            f"starlette_version={self.starlette_version!r}, armed={self.armed!r})"
        )


_lock = _thread.RLock()
_armed = False  # apply() was called and remove() was not: the import hook may patch
_force = False
_via = ""
_hook_registered = False
_patched_class: type | None = None
_original: Callable[..., Any] | None = None  # what __call__ was before we wrapped it, kept once
_wrapper: Callable[..., Any] | None = None
_reason = "not applied"


def logger() -> Logger:
    import logging

    return logging.getLogger("starlette_shield_patch")


def apply(force: bool = False) -> None:
    """Patch BaseHTTPMiddleware now, or as soon as starlette.middleware.base is imported."""
    _apply(force, "apply()")


def remove() -> None:
    """Put back the exact BaseHTTPMiddleware.__call__ that was there before apply()."""
    global _armed, _original, _wrapper, _patched_class, _reason
    with _lock:
        _armed = False
        _drop_finder()
        if _wrapper is None or _patched_class is None:
            _reason = "removed by remove(); nothing was patched"
            return
        from . import _shield

        if _patched_class.__dict__.get("__call__") is _wrapper:
            setattr(_patched_class, "__call__", _original)  # noqa: B010  # a class attribute, by name
            _reason = "removed by remove(); the original BaseHTTPMiddleware.__call__ is back"
        elif _in_chain():
            # Someone wrapped __call__ on top of ours (sentry-sdk does): putting the original
            # back would drop their wrapper, so ours stays in the chain but passes through.
            _shield.enabled = False
            _reason = (
                "removed by remove(); another wrapper sits on top of the shim's, so the shim "
                "stays in the chain and passes every call through unchanged"
            )
            logger().warning("remove(): %s", _reason)
            return
        else:
            _reason = "removed by remove(); BaseHTTPMiddleware.__call__ had been replaced by others"
        _original = _wrapper = _patched_class = None


def status() -> ShieldStatus:
    """Report whether BaseHTTPMiddleware is patched in this process, and why."""
    with _lock:
        version = _starlette_version() if TARGET_MODULE in sys.modules else None
        return ShieldStatus(_is_active(), _reason, version, _armed)


def _apply(force: bool, via: str) -> None:
    global _armed, _force, _via, _reason
    try:
        go_ahead, force, via = decide(force, via)
        if not go_ahead:  # the kill switch: not the hook, not an import, not apply()
            _reason = f"disabled by {via}; {TARGET_MODULE} left alone"
            logger().warning("%s", _reason)
            return
        with _lock:
            _armed, _force, _via = True, force, via
            module = sys.modules.get(TARGET_MODULE)
            if module is not None:
                _patch(module)
                return
            _reason = f"armed by {via}: waiting for {TARGET_MODULE} to be imported"
            if _hook_registered:
                return
            if "starlette" not in sys.modules:
                # wrapt costs tens of milliseconds to import (wrapt 2 pulls in asyncio): leave it
                # until starlette, which costs more, is imported.
                if not any(isinstance(finder, _WhenStarletteIsImported) for finder in sys.meta_path):
                    sys.meta_path.insert(0, _WhenStarletteIsImported())
                return
        _register_hook()
    except Exception as exc:  # never let the shim become the app's failure
        _fail(exc)


class _WhenStarletteIsImported:
    """A meta path finder that finds nothing: it registers the wrapt hook as starlette loads."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "starlette":  # a package is imported before its submodules
            try:
                _drop_finder()
                _register_hook()
            except Exception as exc:
                _fail(exc)


def _drop_finder() -> None:
    sys.meta_path[:] = [
        finder for finder in sys.meta_path if not isinstance(finder, _WhenStarletteIsImported)
    ]


def _register_hook() -> None:
    global _hook_registered
    with _lock:
        if _hook_registered:
            return
        _hook_registered = True
    import wrapt

    # Calls the hook at once if another thread imported the module meanwhile.
    wrapt.register_post_import_hook(_on_import, TARGET_MODULE)


def _on_import(module: ModuleType) -> None:
    # An exception raised here would make `import starlette.middleware.base` fail for the app.
    try:
        with _lock:
            if _armed:
                _patch(module)
    except Exception as exc:
        _fail(exc)


def _fail(exc: Exception) -> None:
    global _reason
    _reason = f"patching failed ({type(exc).__name__}: {exc}); starlette left unpatched"
    logger().warning("%s", _reason, exc_info=True)


def _patch(module: ModuleType) -> None:
    global _original, _wrapper, _patched_class, _reason
    if _in_chain():
        from . import _shield

        _shield.enabled = True  # re-enable a wrapper that remove() could only disable
        return
    from ._guard import affected

    version = _starlette_version()
    verdict = affected(version)
    if not verdict.affected and not _force:
        _reason = f"{verdict.reason}; BaseHTTPMiddleware left alone"
        (logger().debug if verdict.readable else logger().warning)("%s", _reason)
        return
    import wrapt

    from . import _shield

    cls = module.BaseHTTPMiddleware
    original = cls.__dict__["__call__"]
    shield = _shield.wrapper_for(
        original, finish_after_response=True, captures_inner_errors=verdict.captures_inner_errors
    )
    wrapper = wrapt.FunctionWrapper(original, shield)
    setattr(cls, "__call__", wrapper)  # noqa: B010
    _shield.enabled = True
    _original, _wrapper, _patched_class = original, wrapper, cls
    if verdict.affected:
        _reason = f"patched by {_via}: {verdict.reason}"
        logger().info("%s", _reason)
    else:
        _reason = f"patched by {_via} with force=True: {verdict.reason}"
        logger().warning("%s", _reason)


def _is_active() -> bool:
    if not _in_chain():
        return False
    from . import _shield  # loaded already: the wrapper comes from it

    return _shield.enabled


def _in_chain() -> bool:
    """Whether our wrapper is BaseHTTPMiddleware.__call__ or under wrappers others put on top."""
    if _wrapper is None or _patched_class is None:
        return False
    return _reaches(_patched_class.__dict__.get("__call__"), depth=6)


def _reaches(layer: object, depth: int) -> bool:
    # Wrappers find what they wrap through __wrapped__ (functools.wraps), wrapt's _self_parent
    # (a bound FunctionWrapper), or a closure cell (sentry-sdk keeps `old_call` in one).
    if layer is _wrapper or getattr(layer, "_self_parent", None) is _wrapper:
        return True
    if depth == 0 or layer is None:
        return False
    below = [getattr(layer, "__wrapped__", None)]
    below += [cell.cell_contents for cell in getattr(layer, "__closure__", None) or () if _filled(cell)]
    return any(callable(inner) and _reaches(inner, depth - 1) for inner in below)


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:  # an empty cell
        return False
    return True


def _starlette_version() -> str | None:
    version = getattr(sys.modules.get("starlette"), "__version__", None)
    return version if isinstance(version, str) else None
