"""What `pip install starlette-shield-patch` gets: the sdist and the wheel that this repository
builds, checked as the packaging ecosystem checks them (build, twine check --strict)."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest

from demo.harness import clean_environment
from tests.asgi import STARLETTE_AFFECTED
from tests.fresh import ROOT, copy_of_the_sources, make_venv, only_json_line

pytestmark = pytest.mark.packaging

# What the wheel installs, and nothing else: the package, the startup module, the startup hook.
PACKAGE = {
    f"starlette_shield_patch/{name}"
    for name in (
        "__init__.py",
        "__main__.py",
        "_guard.py",
        "_patch.py",
        "_selftest.py",
        "_shield/__init__.py",
        "_shield/after_response.py",
        "_shield/errors.py",
        "_shield/pass_through.py",
        "_shield/path.py",
        "_shield/pieces.py",
        "_shield/response_start.py",
        "_shield/run.py",
        "py.typed",
    )
}
INSTALLED = {*PACKAGE, "_starlette_shield_patch_startup.py", "starlette_shield_patch.pth"}
DIST_INFO = {"METADATA", "WHEEL", "RECORD", "top_level.txt", "licenses/LICENSE"}
# What the sdist needs to build that wheel, and the documents a user reads.
SDIST = {
    *INSTALLED,
    "setup.py",
    "setup.cfg",
    "pyproject.toml",
    "MANIFEST.in",
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
}
PYTHONS = ["3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]


def build(source: Path, out: Path, *only: str) -> None:
    """`python -m build`: with no option, the sdist, then the wheel from that sdist."""
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), *only, str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sdist and the wheel built from it, as `python -m build` makes them for an upload."""
    source = copy_of_the_sources(tmp_path_factory.mktemp("source") / "tree")
    out = tmp_path_factory.mktemp("dist")
    build(source, out)
    return next(out.glob("*.tar.gz")), next(out.glob("*.whl"))


def wheel_files(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def metadata(wheel: Path) -> Message:
    files = wheel_files(wheel)
    name = next(name for name in files if name.endswith(".dist-info/METADATA"))
    return Parser().parsestr(files[name].decode())


def test_twine_check_strict_passes(dists: tuple[Path, Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dists)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_wheel_installs_the_package_the_startup_module_and_the_hook_only(
    dists: tuple[Path, Path],
) -> None:
    files = wheel_files(dists[1])
    dist_info = {name.split("/", 1)[1] for name in files if ".dist-info/" in name}
    record = next(content for name, content in files.items() if name.endswith(".dist-info/RECORD"))

    assert {name for name in files if ".dist-info/" not in name} == INSTALLED
    assert dist_info == DIST_INFO
    assert b"starlette_shield_patch.pth," in record  # installed, and removed by an uninstall
    assert files["starlette_shield_patch.pth"] == (ROOT / "starlette_shield_patch.pth").read_bytes()


def test_the_sdist_holds_what_builds_the_wheel_and_no_tests(dists: tuple[Path, Path]) -> None:
    with tarfile.open(dists[0]) as archive:
        files = {member.name.split("/", 1)[1] for member in archive.getmembers() if member.isfile()}
    egg_info = {name for name in files if name.startswith("starlette_shield_patch.egg-info/")}

    assert files - egg_info == SDIST | {"PKG-INFO"}


def test_a_wheel_from_the_sdist_is_the_wheel_from_the_sources(
    dists: tuple[Path, Path], tmp_path: Path
) -> None:
    build(copy_of_the_sources(tmp_path / "tree"), tmp_path / "direct", "--wheel")
    direct = wheel_files(next((tmp_path / "direct").glob("*.whl")))
    from_sdist = wheel_files(dists[1])

    assert direct.keys() == from_sdist.keys()
    differing = [name for name in direct if direct[name] != from_sdist[name] and not name.endswith("RECORD")]
    assert differing == []


def test_the_wheel_from_the_sdist_turns_on_by_the_variable_alone(
    dists: tuple[Path, Path], tmp_path: Path
) -> None:
    python = make_venv(tmp_path / "venv", str(dists[1]))
    code = (
        "import json, sys, starlette.middleware.base\n"
        "call = starlette.middleware.base.BaseHTTPMiddleware.__dict__['__call__']\n"
        "print(json.dumps({'wrapped': type(call).__name__ != 'function',"
        " 'imported': 'starlette_shield_patch' in sys.modules}))\n"
    )

    def run(**variable: str) -> dict[str, Any]:
        # Outside the source tree, with nothing on PYTHONPATH: the venv's own package runs.
        environment = clean_environment(variable)
        result = subprocess.run(
            [str(python), "-c", code],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return only_json_line(result)

    assert run(STARLETTE_SHIELD_PATCH="1") == {"wrapped": STARLETTE_AFFECTED, "imported": True}
    assert run() == {"wrapped": False, "imported": False}


def test_the_metadata_a_pypi_page_shows(dists: tuple[Path, Path]) -> None:
    meta = metadata(dists[1])
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL", []))
    classifiers = meta.get_all("Classifier", [])
    requires = meta.get_all("Requires-Dist", [])

    # One line that a search result shows whole.
    assert "No response returned." in meta["Summary"] and "background tasks" in meta["Summary"]
    assert "\n" not in meta["Summary"] and len(meta["Summary"]) <= 130
    # What users filter by (there is no "Framework :: Starlette" classifier).
    filters = {"Development Status :: 4 - Beta", "Framework :: FastAPI", "Framework :: AnyIO"}
    assert filters <= set(classifiers)
    assert meta["Requires-Python"] == ">=3.7"
    pythons = [
        c.rsplit(" ", 1)[-1] for c in classifiers if c.startswith("Programming Language :: Python :: 3.")
    ]
    assert pythons == PYTHONS
    assert set(urls) == {"Documentation", "Source", "Issues", "Changelog"}
    assert all(url.startswith("https://") for url in urls.values())
    assert meta["License"] == "BSD-3-Clause" and meta["License-File"] == "LICENSE"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert str(meta.get_payload()).strip() == (ROOT / "README.md").read_text().strip()
    # Never starlette: installing the shim must not change the user's starlette.
    assert not [r for r in requires if r.lower().startswith("starlette")]
    assert [r for r in requires if "importlib" in r] == ['importlib_metadata>=1.4; python_version < "3.8"']


def test_the_changelog_keeps_a_changelog() -> None:
    """Keep a Changelog: each release's section has each kind of change once, of the six kinds."""
    kinds = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    releases = (ROOT / "CHANGELOG.md").read_text().split("\n## ")[1:]
    assert releases and releases[0].startswith("[Unreleased]")
    for release in releases:
        headings = [line[4:] for line in release.splitlines() if line.startswith("### ")]
        assert len(headings) == len(set(headings)) and set(headings) <= kinds, (release[:40], headings)
