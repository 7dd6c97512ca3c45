"""Import-time behaviour, each case in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import starlette

from demo.harness import clean_environment
from tests.asgi import LOSES_THE_START, STARLETTE_HAS_ANYIO
from tests.fresh import ROOT, only_json_line, run_fresh

needs_anyio = pytest.mark.skipif(not STARLETTE_HAS_ANYIO, reason="needs an anyio BaseHTTPMiddleware")


def test_importing_the_shim_imports_neither_starlette_nor_anyio() -> None:
    report = only_json_line(run_fresh("import starlette_shield_patch\nreport()"))

    assert report["modules"] == []  # wrapt too waits for starlette
    assert report["armed"] and not report["patched"]
    assert "waiting for starlette.middleware.base" in report["reason"]


def test_importing_the_shim_loads_nothing_beyond_itself() -> None:
    """No module outside the package that the interpreter had not loaded already: the import is
    what a sitecustomize or the startup hook pays, so no typing, threading, logging, dataclasses.
    With -S, so that no .pth file (coverage's, in the test sessions) has loaded them before; os
    is what site.py loads at every start."""
    code = (
        "import os, sys; before = set(sys.modules); import starlette_shield_patch; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=ROOT,
        env=clean_environment({"PYTHONPATH": str(ROOT)}),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "__future__",  # `from __future__ import annotations`: a few dozen lines, no imports
        "_starlette_shield_patch_startup",
        "starlette_shield_patch",
        "starlette_shield_patch._patch",
    ]


@needs_anyio
@pytest.mark.parametrize(
    "order",
    [
        "import starlette_shield_patch\nimport starlette.middleware.base",
        "import starlette.middleware.base\nimport starlette_shield_patch",
        "import starlette_shield_patch\nimport starlette.middleware.base\nimport starlette_shield_patch",
        "import starlette_shield_patch\nimport starlette.middleware.base\nstarlette_shield_patch.apply()",
        "import starlette\nimport starlette_shield_patch\nimport starlette.middleware.base",
        "import starlette_shield_patch\nimport starlette\nstarlette_shield_patch.remove()\n"
        "starlette_shield_patch.apply()\nimport starlette.middleware.base",
    ],
    ids=[
        "shim-first",
        "shim-after",
        "imported-twice",
        "applied-twice",
        "between-starlette-and-base",
        "removed-and-applied-before-base",
    ],
)
def test_the_patch_lands_in_either_import_order(order: str) -> None:
    code = (
        order
        + """
from starlette.middleware.base import BaseHTTPMiddleware
call = BaseHTTPMiddleware.__dict__["__call__"]
depth = 0
while hasattr(call, "__wrapped__"):
    call, depth = call.__wrapped__, depth + 1
report(outcome=disconnect_outcome(), wrappers=depth)
"""
    )
    report = only_json_line(run_fresh(code))

    # Without the opt-in (none of these opts in), 0.21.0 - 0.27.x are left alone.
    assert report["patched"] is LOSES_THE_START
    assert report["starlette_version"] == starlette.__version__
    assert report["wrappers"] == (1 if LOSES_THE_START else 0)
    assert report["outcome"] == "clean"


@needs_anyio
def test_remove_before_starlette_loads_its_middleware_leaves_it_alone() -> None:
    """The wrapt hook registered as starlette began to load finds the shim removed."""
    code = """
import starlette_shield_patch
import starlette
starlette_shield_patch.remove()
import starlette.middleware.base
report(wrapped=type(starlette.middleware.base.BaseHTTPMiddleware.__dict__["__call__"]).__name__ != "function")
"""
    report = only_json_line(run_fresh(code))

    assert not report["patched"] and not report["wrapped"] and not report["armed"]


@needs_anyio
def test_without_the_shim_the_bug_shows() -> None:
    """The fresh-interpreter check above can fail: the same script, the shim never imported."""
    code = "import starlette.middleware.base\nprint(disconnect_outcome())"
    result = run_fresh(code)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("No response returned." if LOSES_THE_START else "clean")


@pytest.mark.skipif(LOSES_THE_START, reason="needs a starlette outside the affected ranges")
def test_unaffected_release_keeps_its_plain_function() -> None:
    code = """
import starlette_shield_patch
from starlette.middleware.base import BaseHTTPMiddleware
call = BaseHTTPMiddleware.__call__
report(plain=type(call).__name__ == "function" and call.__qualname__ == "BaseHTTPMiddleware.__call__"
       and call.__module__ == "starlette.middleware.base")
"""
    report = only_json_line(run_fresh(code))

    assert report["plain"] is True
    assert not report["patched"]
    assert f"starlette {starlette.__version__}" in report["reason"]
    assert "left alone" in report["reason"]


def fake_starlette(root: Path, version: str, base_source: str) -> Path:
    package = root / "starlette"
    (package / "middleware").mkdir(parents=True)
    (package / "__init__.py").write_text(f"__version__ = {version!r}\n")
    (package / "middleware" / "__init__.py").write_text("")
    (package / "middleware" / "base.py").write_text(base_source)
    return root


FAKE_BASE = """
class BaseHTTPMiddleware:
    async def __call__(self, scope, receive, send):
        pass
"""


@pytest.mark.parametrize(
    ("version", "base_source", "reason"),
    [
        ("0.20.4", "BaseHTTPMiddleware = None\n", "patching failed (AttributeError"),
        ("0.20.4", "class BaseHTTPMiddleware:\n    pass\n", "patching failed (KeyError"),
        ("banana", FAKE_BASE, "'banana' cannot be parsed"),
    ],
    ids=["no-class", "no-call", "unparseable-version"],
)
def test_a_broken_starlette_never_breaks_the_import(
    tmp_path: Path, version: str, base_source: str, reason: str
) -> None:
    code = """
import logging
logging.basicConfig(level=logging.WARNING)
import starlette_shield_patch
import starlette.middleware.base
report()
"""
    result = run_fresh(code, path=[fake_starlette(tmp_path, version, base_source)])
    report = only_json_line(result)

    assert not report["patched"]
    assert reason in report["reason"]
    assert "WARNING:starlette_shield_patch:" in result.stderr
