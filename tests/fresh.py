"""Run code in a fresh interpreter or a fresh venv: import-time behaviour is never tested by
reloading modules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

from demo.harness import clean_environment, version

__all__ = ["ROOT", "copy_of_the_sources", "make_venv", "only_json_line", "run_fresh", "uv", "version"]

ROOT = Path(__file__).resolve().parent.parent

# Prints, as the script's only line of stdout, what the shim did and how the disconnect went.
REPORT = """
import json as _json, sys as _sys
def report(**extra):
    import starlette_shield_patch as _ssp
    status = _ssp.status()
    out = {"patched": status.patched, "reason": status.reason, "armed": status.armed,
           "starlette_version": status.starlette_version,
           "modules": sorted(m for m in ("starlette", "anyio", "wrapt") if m in _sys.modules)}
    out.update(extra)
    print(_json.dumps(out))

def disconnect_outcome():
    # The words of starlette_shield_patch._selftest: "clean", "No response returned." or the error.
    from tests.asgi import answers_after, client_gone_at_once, http_scope, pass_through, run, stack
    outcome = run(stack(answers_after(), *[pass_through] * 4), client_gone_at_once, backend="asyncio",
                  scope=http_scope("GET"))
    if outcome.clean:
        return "clean"
    return "No response returned." if outcome.no_response_returned else repr(outcome.error)
"""


def run_fresh(
    code: str,
    *,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
    path: Sequence[Path] = (),
    cwd: Path = ROOT,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run `code` (with report() and disconnect_outcome() defined) in a new interpreter."""
    environment = clean_environment(
        {"PYTHONPATH": os.pathsep.join([*map(str, path), str(ROOT)]), **(env or {})}
    )
    script = REPORT + textwrap.dedent(code)
    return subprocess.run(
        [python, "-c", script], cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )


def only_json_line(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON line the script printed; fails when anything else reached stdout."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    report: dict[str, Any] = json.loads(lines[0])
    return report


def uv(*arguments: str) -> None:
    """uv from PATH: scripts/test puts its own there (uv does not install on Python 3.7)."""
    program = shutil.which("uv")
    assert program, "these tests make venvs with uv: put it on PATH (scripts/bootstrap does)"
    subprocess.run([program, *arguments], check=True, capture_output=True, timeout=300)


def make_venv(where: Path, *install: str) -> Path:
    """A venv of this Python with `install` and this venv's starlette and anyio; measured by
    coverage where this session is."""
    uv("venv", "--quiet", "--python", sys.executable, str(where))
    python = where / "bin" / "python"
    pins = [f"starlette=={version('starlette')}", f"anyio=={version('anyio')}"]
    measured = ["coverage[toml]"] if "COVERAGE_PROCESS_START" in os.environ else []
    uv("pip", "install", "--quiet", "--python", str(python), *install, *pins, *measured)
    if measured:  # the session measures coverage: so does every process of this venv (noxfile.py)
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        site_packages = subprocess.run([str(python), "-c", purelib], capture_output=True, text=True).stdout
        Path(site_packages.strip(), "coverage_subprocess.pth").write_text(
            "import coverage; coverage.process_startup()\n"
        )
    return python


def copy_of_the_sources(where: Path) -> Path:
    """A copy of the sources to build from: setuptools' build/ folder in the tree keeps modules that
    the sources no longer have, and would slip them into the wheel."""
    skip = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, where, ignore=skip)
    return where
