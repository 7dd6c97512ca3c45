"""The test matrix: every affected starlette release, oldest and newest anyio, three Pythons."""

from __future__ import annotations

import glob
import os
import sys
import tempfile
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).parent))
from tests import releases  # the release list, written once for nox and the tests

nox.options.default_venv_backend = "uv"
nox.options.error_on_external_run = True

CANCELLING = list(releases.CANCELLING)  # 0.15 - 0.20: every release
FOUR_LAYERS = [releases.FOUR_LAYERS[0], releases.FOUR_LAYERS[-1]]  # 0.28 - 0.38.2: the first and the last
PATHSEND = "0.37.2"  # FastAPI 0.110 - 0.112 resolve to it
UNAFFECTED = [*releases.UNAFFECTED, "newest"]
MAIN_PYTHON = "3.11"
ROOT = Path(__file__).parent
# Every session's coverage data, combined by the last session, `coverage`.
COVERAGE_DATA = ROOT / ".coverage-data"
EDGE_PYTHONS = ["3.8", "3.13"]
# Debian 10 and the python:3.7 images of 2021-2022: the first range on its oldest and newest
# release, and the last release of the second range that still installs on 3.7.
OLDEST_PYTHON = "3.7"
ON_OLDEST_PYTHON = [CANCELLING[0], CANCELLING[-1], "0.29.0"]
# The other Pythons that the package says it runs on (setup.cfg): one session each. On 3.9 and
# 3.10 with anyio 3.7.1, which requires the exceptiongroup backport there without importing it
# (tests/test_host.py: the shim must not import it either).
BETWEEN_PYTHONS = {"3.9": "3.7.1", "3.10": "3.7.1", "3.12": "newest"}
# anyio 4 before 4.4.0, which does not warn about unclosed memory streams (close-streams).
ANYIO_4_BEFORE_4_4 = "4.3.0"
# Conformance (conformance/run.py): starlette 1.10.0's tests/middleware/test_base.py, and the
# release's own, without and with the shim, on Python 3.11 (the 1.10.0 file needs >= 3.10). One
# release per version of BaseHTTPMiddleware.__call__ (and the ends of each range): 0.15.0 (0.15 -
# 0.16), 0.17.0 (0.17 - 0.18: the inner app's error kept), 0.19.0 (0.19.0 - 0.20.0: it is raised
# after the response), 0.20.4 (0.20.x: body_stream stops at more_body=False), 0.28.0, 0.29.0 (0.29 -
# 0.30), 0.31.0 (0.31 - 0.38.2: exception groups collapsed), 0.37.2 (its FileResponse sends
# http.response.pathsend), 0.38.2. Run on both anyio ends where they differ in major version
# (0.19 - 0.38.2: anyio 3 and 4); 0.15 - 0.18 run on anyio 3 only, on its newest.
CONFORMANCE = {
    "0.15.0": ("newest",),
    "0.17.0": ("newest",),
    "0.19.0": ("oldest", "newest"),
    "0.20.4": ("oldest", "newest"),
    "0.28.0": ("oldest", "newest"),
    "0.29.0": ("newest",),
    "0.31.0": ("newest",),
    "0.37.2": ("newest",),
    "0.38.2": ("oldest", "newest"),
}
# What conformance/run.py and the old releases' TestClient need beyond a `tests` session's venv:
# pip (pip download of the sdists), pytest-timeout (old releases hang on some tests), requests (the
# TestClient before 0.21), httpx (from 0.21; the own tests' tests/types.py) as the release can use it.
CONFORMANCE_REQUIREMENTS = ["pip", "pytest-timeout", "requests"]


def conformance_requirements(starlette: str) -> list[str]:
    # The TestClient of 0.21 - 0.36.x passes `app=` to httpx.Client, which httpx 0.27 deprecates
    # (an error under the test's filterwarnings) and 0.28 removed.
    before_0_37 = tuple(map(int, starlette.split(".")[:2])) < (0, 37)
    return [*CONFORMANCE_REQUIREMENTS, "httpx<0.27" if before_0_37 else "httpx"]


def _pyenv_interpreters_on_path() -> None:
    """Let nox find pyenv's interpreters when they are not on PATH (pyenv's shims refuse)."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for version in [MAIN_PYTHON, *EDGE_PYTHONS, OLDEST_PYTHON, *BETWEEN_PYTHONS]:
        for bindir in sorted(glob.glob(str(root / "versions" / f"{version}.*" / "bin")))[-1:]:
            os.environ["PATH"] = bindir + os.pathsep + os.environ["PATH"]


_pyenv_interpreters_on_path()


def pytest(session: nox.Session, *arguments: str, env: dict[str, str] | None = None) -> None:
    """pytest under coverage, in this process and in every Python process it starts from this venv
    (fresh interpreters, servers): a .pth in the venv starts coverage where COVERAGE_PROCESS_START
    says so."""
    session.install("coverage[toml]")
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = str(session.run("python", "-c", purelib, silent=True)).strip()
    Path(site_packages, "coverage_subprocess.pth").write_text("import coverage; coverage.process_startup()\n")
    COVERAGE_DATA.mkdir(exist_ok=True)
    env = {
        "COVERAGE_PROCESS_START": str(ROOT / "pyproject.toml"),
        "COVERAGE_FILE": str(COVERAGE_DATA / ".coverage"),
        **(env or {}),
    }
    session.run("python", "-m", "coverage", "run", "-m", "pytest", *arguments, *session.posargs, env=env)


def anyio_requirements(starlette: str, which: str, python: str = MAIN_PYTHON) -> list[str]:
    """anyio (with trio) as the starlette release allows it: its oldest, its newest, or a release."""
    if starlette in UNAFFECTED:
        return ["anyio[trio]"]
    if which[0].isdigit():  # anyio 4.0 - 4.3 run with the trio of their time (4.0.0 breaks on 0.23)
        return [f"anyio[trio]=={which}", "trio<0.22" if which < "4" else "trio<0.25"]
    before_0_19 = tuple(map(int, starlette.split("."))) < (0, 19, 0)
    oldest, below = ("3.0.0", "4") if before_0_19 else ("3.4.0", "5")
    anyio = f"anyio[trio]=={oldest}" if which == "oldest" else f"anyio[trio]<{below}"
    # anyio 3 works with trio < 0.22 only (and anyio 4 does not install on Python 3.7); the
    # resolver picks the rest per Python.
    anyio_3 = which == "oldest" or below == "4" or python == OLDEST_PYTHON
    return [anyio, *(["trio<0.22"] if anyio_3 else [])]


def matrix() -> list[tuple[str, str, str]]:
    both = ("oldest", "newest")
    rows = [(MAIN_PYTHON, release, which) for release in CANCELLING for which in both]
    edges = [CANCELLING[0], CANCELLING[-1], *FOUR_LAYERS]
    rows += [(python, release, which) for python in EDGE_PYTHONS for release in edges for which in both]
    rows += [(MAIN_PYTHON, release, which) for release in FOUR_LAYERS for which in both]
    # 0.36.0 - 0.38.0 send http.response.pathsend where the server offers it (file-body).
    rows += [(MAIN_PYTHON, PATHSEND, "newest")]
    rows += [(MAIN_PYTHON, release, "newest") for release in UNAFFECTED]
    rows += [(EDGE_PYTHONS[-1], "newest", "newest")]
    rows += [(OLDEST_PYTHON, release, which) for release in ON_OLDEST_PYTHON[:2] for which in both]
    rows += [(OLDEST_PYTHON, ON_OLDEST_PYTHON[-1], "newest")]
    rows += [(python, CANCELLING[-1], which) for python, which in BETWEEN_PYTHONS.items()]
    rows += [(MAIN_PYTHON, CANCELLING[-1], ANYIO_4_BEFORE_4_4)]
    return rows


@nox.session
@nox.parametrize(
    ("python", "starlette", "anyio"),
    matrix(),
    ids=[f"py{python}-starlette-{release}-anyio-{which}" for python, release, which in matrix()],
)
def tests(session: nox.Session, starlette: str, anyio: str) -> None:
    """The test suite on one Python, one starlette release, one end of its anyio range."""
    pin = "starlette" if starlette == "newest" else f"starlette=={starlette}"
    python = str(session.python)
    # uv does not install on Python 3.7: the tests there take scripts/test's own from PATH.
    uv = [] if python == OLDEST_PYTHON else ["uv"]
    session.install(".", pin, *anyio_requirements(starlette, anyio, python), "pytest", "jinja2", *uv)
    # Activation from the wheel does not change from one release to the next: its venvs are
    # built on the first and last affected release and on the unaffected ones, and on 3.7.
    full = (CANCELLING[0], CANCELLING[-1], FOUR_LAYERS[-1], *UNAFFECTED)
    venvs = (python == MAIN_PYTHON and starlette in full) or python == OLDEST_PYTHON
    others = "servers or deployments or packaging or fastapi or neighbours or docs" + (
        "" if venvs else " or venvs"
    )
    pytest(session, "-m", f"not ({others})")
    if python == MAIN_PYTHON and anyio in CONFORMANCE.get(starlette, ()):
        # After the suite, in the same venv: what conformance needs does not change what it tests.
        conformance_run(session, starlette)


def conformance_run(session: nox.Session, starlette: str) -> None:
    session.install(*conformance_requirements(starlette))
    session.run("python", "conformance/run.py", "--cache", str(ROOT / ".conformance-cache"))


# The conformance releases that no `tests` session on MAIN_PYTHON runs.
CONFORMANCE_ALONE = [
    (release, which)
    for release, ends in CONFORMANCE.items()
    for which in ends
    if (MAIN_PYTHON, release, which) not in matrix()
]


@nox.session(python=MAIN_PYTHON)
@nox.parametrize(
    ("starlette", "anyio"),
    CONFORMANCE_ALONE,
    ids=[f"starlette-{release}-anyio-{which}" for release, which in CONFORMANCE_ALONE],
)
def conformance(session: nox.Session, starlette: str, anyio: str) -> None:
    """starlette's own BaseHTTPMiddleware tests without and with the shim, on a release that no
    `tests` session runs on this Python (conformance/run.py)."""
    session.install(".", f"starlette=={starlette}", *anyio_requirements(starlette, anyio), "pytest")
    conformance_run(session, starlette)


# starlette 0.21.0 - 0.27.x with the opt-in (STARLETTE_SHIELD_PATCH=extended, apply(extended=True)):
# the in-process suite (which then opts in and expects them patched) and the conformance runs on the
# first and last release, and the conformance runs on the one other version of
# BaseHTTPMiddleware.__call__ between them (0.23.1: call_next's body ends when the inner app
# returns; 0.24.0 - 0.27.0 share one). (starlette, anyio, the suite too). Without the opt-in, the
# `tests` sessions of 0.21.0 and 0.27.0 (UNAFFECTED) show them left alone.
EXTENDED = [
    ("0.21.0", "newest", True),
    ("0.27.0", "oldest", True),
    ("0.27.0", "newest", False),
    ("0.21.0", "oldest", False),
    ("0.23.1", "newest", False),
]


@nox.session(python=MAIN_PYTHON)
@nox.parametrize(
    ("starlette", "anyio", "suite"),
    EXTENDED,
    ids=[f"starlette-{release}-anyio-{which}" for release, which, _ in EXTENDED],
)
def extended(session: nox.Session, starlette: str, anyio: str, suite: bool) -> None:
    """starlette 0.21.0 - 0.27.x with the opt-in: the suite and the conformance runs."""
    anyio_pins = ["anyio[trio]==3.4.0", "trio<0.22"] if anyio == "oldest" else ["anyio[trio]<5"]
    session.install(".", f"starlette=={starlette}", *anyio_pins, "pytest", "jinja2")
    if suite:
        others = "servers or deployments or packaging or fastapi or neighbours or docs or venvs"
        pytest(session, "-m", f"not ({others})", env={releases.EXTENDED_VARIABLE: "1"})
    conformance_run(session, starlette)


@nox.session(python=MAIN_PYTHON)
@nox.parametrize("starlette", [CANCELLING[0], CANCELLING[1], CANCELLING[-1], "0.37.2"])
def servers(session: nox.Session, starlette: str) -> None:
    """Real servers and clients: uvicorn (asyncio, uvloop), hypercorn (trio), with and without."""
    anyio = anyio_requirements(starlette, "newest")
    # hypercorn >= 0.15 needs trio >= 0.22, which anyio 3 does not run on.
    hypercorn = "hypercorn[trio]<0.15" if "trio<0.22" in anyio else "hypercorn[trio]"
    servers = ["uvicorn", "uvloop", hypercorn, "granian"]  # granian offers http.response.pathsend
    session.install(".", f"starlette=={starlette}", *anyio, *servers, "pytest")
    pytest(session, "-m", "servers")


# The deployments of 2021-2022 on Python 3.7 (the uvicorn of the time: 0.15.0 came out with
# starlette 0.16, 0.19.0 with 0.21), and the same with the newest uvicorn and hypercorn.
DEPLOYMENTS = [
    (OLDEST_PYTHON, CANCELLING[0], "0.15.0"),
    (OLDEST_PYTHON, CANCELLING[-1], "0.19.0"),
    (MAIN_PYTHON, CANCELLING[0], "newest"),
    (MAIN_PYTHON, CANCELLING[-1], "newest"),
]


@nox.session
@nox.parametrize(
    ("python", "starlette", "uvicorn"),
    DEPLOYMENTS,
    ids=[f"py{python}-starlette-{release}-uvicorn-{uvicorn}" for python, release, uvicorn in DEPLOYMENTS],
)
def deployments(session: nox.Session, starlette: str, uvicorn: str) -> None:
    """gunicorn 20.1.0 with uvicorn's worker class, uvicorn --workers and --reload, hypercorn's
    asyncio worker, turned on by STARLETTE_SHIELD_PATCH alone."""
    anyio = anyio_requirements(starlette, "newest", str(session.python))
    # hypercorn 0.15.0 says it runs on 3.7 but imports typing.Literal (3.8): 0.14.4 is 3.7's last.
    hypercorn = "hypercorn<0.15" if session.python == OLDEST_PYTHON else "hypercorn"
    servers = ["uvicorn" if uvicorn == "newest" else f"uvicorn=={uvicorn}", hypercorn]
    # gunicorn 20.1.0 imports pkg_resources, which the newest setuptools no longer ship.
    gunicorn = ["gunicorn==20.1.0", "setuptools<70"]
    session.install(".", f"starlette=={starlette}", *anyio, *servers, *gunicorn, "pytest")
    pytest(session, "-m", "deployments")


@nox.session(python=MAIN_PYTHON)
@nox.parametrize("fastapi", list(releases.FASTAPI))
def fastapi(session: nox.Session, fastapi: str) -> None:
    """FastAPI apps with @app.middleware("http") functions, on the starlette that FastAPI pins."""
    starlette = releases.FASTAPI[fastapi]
    between = starlette in releases.BETWEEN  # with the opt-in; FastAPI 0.88.0 on anyio 3
    if starlette:
        anyio = anyio_requirements(starlette, "newest")
        if fastapi == "0.88.0":
            anyio = ["anyio[trio]<4", "trio<0.22"]
        pins = [f"fastapi=={fastapi}", f"starlette=={starlette}", *anyio]
    else:
        pins = [f"fastapi=={fastapi}", "anyio[trio]"]
    # 0.21.0 - 0.27.x also under uvicorn and gunicorn (tests/test_fastapi_servers.py); gunicorn
    # 20.1.0 imports pkg_resources, which the newest setuptools no longer ship.
    servers = ["uvicorn", "gunicorn==20.1.0", "setuptools<70"] if between else []
    session.install(".", *pins, "pytest", "jinja2", "requests", *servers)
    pytest(session, "-m", "fastapi", env={releases.EXTENDED_VARIABLE: "1"} if between else None)


@nox.session(python=MAIN_PYTHON)
@nox.parametrize("starlette", [CANCELLING[-1], "0.37.2"])
def neighbours(session: nox.Session, starlette: str) -> None:
    """sentry-sdk's Starlette integration and OpenTelemetry's ASGI middleware next to the shim."""
    neighbours = ["sentry-sdk", "opentelemetry-sdk", "opentelemetry-instrumentation-asgi"]
    session.install(".", f"starlette=={starlette}", "anyio[trio]<5", *neighbours, "pytest")
    pytest(session, "-m", "neighbours")


# Everything that runs on Python 3.7 (bench/ runs on the newest only).
PYTHON_3_7_CODE = [
    "starlette_shield_patch",
    "_starlette_shield_patch_startup.py",
    "setup.py",
    "tests",
    "conftest.py",
    "demo",
]


@nox.session(python=MAIN_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict on the package, the tests, the demo and this file; vermin for 3.7."""
    session.install(
        ".",
        "starlette==0.20.4",
        "anyio[trio]<5",
        "uvicorn",
        "pytest",
        "nox",
        "mypy",
        "ruff",
        "types-setuptools",
        "fastapi==0.85.2",
        "vermin",
    )
    # mypy and ruff run here on 3.11; vermin checks that what they check is what 3.7 can run.
    session.run("vermin", "--no-tips", "--violations", "-t=3.7-", *PYTHON_3_7_CODE)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=MAIN_PYTHON)
def packaging(session: nox.Session) -> None:
    """The sdist and the wheel as `python -m build` makes them for an upload: twine check --strict,
    their file lists, the metadata, a wheel from the sdist that works as the one from the tree."""
    session.install(".", f"starlette=={CANCELLING[-1]}", *anyio_requirements(CANCELLING[-1], "newest"))
    session.install("build", "twine", "pytest", "uv")
    pytest(session, "-m", "packaging")


@nox.session(python=MAIN_PYTHON)
def docs(session: nox.Session) -> None:
    """The docs site: its tables as the code makes them (cog --check), its upstream references and
    links (tests/test_docs.py), mkdocs build --strict. `scripts/docs` makes the tables again."""
    session.install("-r", "docs/requirements.txt", ".", "pytest")
    pages = ["README.md", *sorted(str(page.relative_to(ROOT)) for page in (ROOT / "docs").glob("*.md"))]
    session.run(
        "cog", "--check", "--check-fail-msg", "run scripts/docs to make them again", "-I", "docs", *pages
    )
    # Not under coverage: nothing of the package runs here but the doctor's samples.
    session.run("pytest", "-m", "docs", "tests/test_docs.py")
    with tempfile.TemporaryDirectory() as site:
        session.run("mkdocs", "build", "--strict", "--site-dir", site, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python=MAIN_PYTHON)
def coverage(session: nox.Session) -> None:
    """Branch coverage of the package over every session before this one, combined: 100% or fail."""
    session.install("coverage[toml]")
    session.run("python", "-m", "coverage", "combine", "--keep", str(COVERAGE_DATA))
    session.run("python", "-m", "coverage", "report")
