"""Conformance: starlette's own BaseHTTPMiddleware tests against the installed starlette, without and
with the shim.

Two suites, each run by pytest twice in this venv (a separate process per mode, the shim turned on as
users turn it on: the installed package's .pth hook with STARLETTE_SHIELD_PATCH=1):

- upstream: starlette 1.10.0's tests/middleware/test_base.py (and tests/types.py), from its sdist on the
  package index, with our conftest.py (conformance/conftest.py: the adaptations to old releases and
  the n/a rules). Fails if any applicable test fails with the shim, or if one that passes without
  fails with it.
- own: the installed release's own tests/middleware/test_base.py, from its own sdist, with its own
  tests/conftest.py and its own pytest settings (pyproject.toml). Fails if a test that passes
  without the shim fails with it. starlette 0.15.0 - 0.20.4 ship no tests in their sdist: n/a there.

Nothing of either sdist is copied into this repository: `pip download` fetches it, pinned by version
and sha256 (SDISTS), into a cache folder, and it is extracted into a temporary tree at every run.

    python conformance/run.py [--suite upstream|own|both] [--cache DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
UPSTREAM = "1.10.0"

# The one table of pins: sha256 of each sdist as `pip download --no-deps --no-binary :all:` gets it
# from the package index. 1.10.0 as the issue gives it; the others computed from what pip downloaded.
SDISTS = {
    "1.10.0": "b8399098d4c1e3522734f7235dc79b1fc967f96cf139c81e0fa30479e0685f9b",
    "0.15.0": "5c6e71fe8a11f690f78ab13363b0993eb7e5446986d3549902a81505afdaa08b",
    "0.16.0": "e1904b5d0007aee24bdd3c43994be9b3b729f4f58e740200de1d623f8c3a8870",
    "0.17.0": "31a889e7d7bf487f70d9d197ed7efadb47fa938c58626ed93e381480833c5b84",
    "0.17.1": "57eab3cc975a28af62f6faec94d355a410634940f10b30d68d31cb5ec1b44ae8",
    "0.18.0": "b45c6e9a617ecb5caf7e6446bd8d767b0084d6217e8e1b08187ca5191e10f097",
    "0.19.0": "4a1a92aa89dbacc3a4c694a2c112863e88449730ff99b421a9b71fb2213bcd9c",
    "0.19.1": "c6d21096774ecb9639acad41b86b7706e52ba3bf1dc13ea4ed9ad593d47e24c7",
    "0.20.0": "a500c40aba9b7729e396b0b3e4cd37fdbafbd859983a9b60a64359957024d912",
    "0.20.4": "42fcf3122f998fefce3e2c5ad7e5edbf0f02cf685d646a83a08d404726af5084",
    "0.21.0": "b1b52305ee8f7cfc48cde383496f7c11ab897cd7112b33d998b1317dc8ef9027",
    "0.23.1": "8510e5b3d670326326c5c1d4cb657cc66832193fe5d5b7015a51c7b1e1b1bf42",
    "0.24.0": "7925947f177a19e906c6ace10f07c64c4f9fdf7d509caaac6589f7cc0cfd95f3",
    "0.27.0": "6a6b0d042acb8d469a01eba54e9cda6cbd24ac602c4cd016723117d6a7e73b75",
    "0.28.0": "7bf3da5e997e796cc202cef2bd3f96a7d9b1e1943203c2fe2b42e020bc658482",
    "0.29.0": "9bda894656cfa3806cef16c868e670385eb4e569703e6b92c7a853683360188e",
    "0.30.0": "9cf6bd5f2fbc091c2f22701f9b7f7dfcbd304a567845cffbf89d706543fd2a03",
    "0.31.0": "7df0a3d8fa2c027d641506204ef69239d19bf9406ad2e77b319926e476ac3042",
    "0.35.1": "3e2639dac3520e4f58734ed22553f950d3f3cb1001cd2eaac4d57e8cdc5f66bc",
    "0.36.0": "b1647c659133087906b83b762d5bb0d84ff3090c337de403c6e436354f53fc39",
    "0.37.2": "9af890290133b79fc3db55474ade20f6220a364a0402e0b556e7cd5e1e093823",
    "0.38.2": "c7c0441065252160993a1a37cf2a73bb64d271b17303e0b0c1eb7191cfb12d75",
}

# What the upstream suite takes from 1.10.0's sdist (not its tests/conftest.py: ours replaces it).
UPSTREAM_FILES = ["tests/__init__.py", "tests/types.py", "tests/middleware/__init__.py"]
# 1.10.0's own pytest settings (its pyproject.toml), with our conftest's plugin options.
UPSTREAM_INI = """\
[pytest]
addopts = -rXs --strict-config --strict-markers -p no:cacheprovider
xfail_strict = true
filterwarnings =
    error
    ignore: Use 'content=<...>' to upload raw bytes/text content.:DeprecationWarning
    ignore: Using `httpx` with `starlette.testclient` is deprecated.*
{extra}"""
# Warnings that old releases (or their dependencies) raise and 1.10.0 does not, turned back from
# errors into warnings; each says which release raises it and why it is no test's concern.
UPSTREAM_EXTRA_WARNINGS = [
    # trio < 0.22 (anyio 3) says this whenever pytest has its own excepthook (as 0.28 - 0.38 ignore it).
    "ignore:You seem to already have a custom sys.excepthook:RuntimeWarning",
    # Not ignored: anyio 4's warnings about memory streams left open (0.15 - 0.38.2 leave them open
    # on an error; the shim's close-streams piece is there to close them).
    # The TestClient of starlette 0.15 - 0.24 names anyio.abc.BlockingPortal, an alias that anyio 4
    # deprecated (anyio.from_thread.BlockingPortal).
    "ignore:The anyio.abc.BlockingPortal alias is deprecated:DeprecationWarning",
]
# The own suite runs under the release's own settings, but with today's anyio, trio and pytest:
# warnings that they raise in code of the release that its CI never saw, ignored (-W comes after
# the ini's filterwarnings, so it wins).
OWN_EXTRA_WARNINGS = [
    # starlette 0.28 - 0.38.2's TestClient names anyio.abc.BlockingPortal, which anyio >= 4.?
    # deprecated in favour of anyio.from_thread.BlockingPortal.
    "ignore:The anyio.abc.BlockingPortal alias is deprecated:DeprecationWarning",
]
TEST = "tests/middleware/test_base.py"
NA_PREFIX = "n/a on starlette"
# pytest-timeout's limit per test, in seconds. The tests take milliseconds; an old release hangs
# on some of them unpatched (about 20 per run on 0.15 - 0.20.4), and each waits out its limit.
# A slow test under load that passes the unpatched limit only counts as an unpatched failure
# (which weakens, never fails, the check that nothing passing unpatched fails with the shim); the
# patched run, which must pass, keeps the longer one.
TIMEOUT = {False: 1, True: 3}


@dataclass
class Outcomes:
    """One pytest run: every test's outcome (passed, failed, n/a, skipped)."""

    tests: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)  # a failure's first line
    seconds: float = 0.0

    def count(self, outcome: str) -> int:
        return sum(1 for value in self.tests.values() if value == outcome)


def sdist(release: str, cache: Path) -> Path:
    """starlette's sdist for `release`, from the cache or from `pip download`, checked by sha256."""
    if release not in SDISTS:
        raise SystemExit(f"no sha256 pin for starlette {release} in conformance/run.py SDISTS")
    path = cache / f"starlette-{release}.tar.gz"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        # Into a folder of its own, then renamed: two sessions at once may fetch the same sdist.
        with tempfile.TemporaryDirectory(dir=cache) as download:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            subprocess.run([*command, "--quiet", "-d", download, f"starlette=={release}"], check=True)
            os.replace(Path(download, path.name), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDISTS[release]:
        path.unlink()
        raise SystemExit(f"{path.name}: sha256 {digest}, pinned {SDISTS[release]}")
    return path


def extract(archive: Path, members: list[str], into: Path) -> list[str]:
    """Extract `members` (paths inside the sdist's top folder) into `into`; return those present."""
    found = []
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        names = set(tar.getnames())
        for member in members:
            name = f"{top}/{member}"
            if name not in names:
                continue
            source = tar.extractfile(name)
            assert source is not None
            target = into / member
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read())
            found.append(member)
    return found


def shim_state(env: dict[str, str]) -> str:
    """What the shim does in a fresh interpreter of this venv with `env`: "off" (not imported),
    "patched", or "armed" (the hook imported it; the release is not one it patches)."""
    code = (
        "import sys, starlette.middleware.base; m = sys.modules.get('starlette_shield_patch'); "
        "print('off' if m is None else 'patched' if m.status().patched else 'armed')"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


# starlette 0.21.0 - 0.27.x: the shim patches them only with the opt-in, which their users set.
BETWEEN = ((0, 21, 0), (0, 28, 0))


def switch_value() -> str:
    """The value of STARLETTE_SHIELD_PATCH that turns the shim on for the installed release."""
    parts = version("starlette").split(".")[:3]
    release = tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in parts)
    return "extended" if BETWEEN[0] <= release < BETWEEN[1] else "1"


def environment(patched: bool) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "STARLETTE_SHIELD_PATCH"}
    if patched:
        env["STARLETTE_SHIELD_PATCH"] = switch_value()
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_pytest(tree: Path, patched: bool, xml: Path, extra: list[str]) -> Outcomes:
    """pytest on the tree's test_base.py in a process of its own; outcomes from its junit xml."""
    env = environment(patched)
    state = shim_state(env)
    if (state == "off") is patched:
        raise SystemExit(f"the shim is {state} in the {'patched' if patched else 'unpatched'} run")
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    # Old releases hang on some of these tests (a body read twice waits for a message that never
    # comes): pytest-timeout fails such a test after TIMEOUT seconds (they take milliseconds).
    command += [f"--timeout={TIMEOUT[patched]}", *extra]
    # The run's exit status is the failures it counts, read from the xml.
    result = subprocess.run(command, cwd=tree, env=env, check=False, capture_output=True, text=True)
    if not xml.exists() or result.returncode not in (0, 1):  # 0: all passed; 1: some failed
        sys.stdout.write(result.stdout + result.stderr)
        raise SystemExit(f"pytest did not run the tests in {tree} (exit status {result.returncode})")
    outcomes = Outcomes(seconds=time.monotonic() - started)
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("name", "")
        failure = case.find("failure") if case.find("failure") is not None else case.find("error")
        if failure is not None:
            outcome = "failed"
            outcomes.messages[name] = failure.get("message", "").strip().splitlines()[0][:160]
        elif case.find("skipped") is not None:
            skipped = case.find("skipped")
            assert skipped is not None
            message = skipped.get("message", "")
            if skipped.get("type") == "pytest.xfail":
                outcome = "passed"  # an expected failure of the test file itself (xfail_strict)
            elif NA_PREFIX in message:
                outcome = "n/a"
            else:
                outcome = "skipped"
        else:
            outcome = "passed"
        outcomes.tests[name] = outcome
    return outcomes


def upstream_tree(cache: Path, into: Path) -> None:
    archive = sdist(UPSTREAM, cache)
    extract(archive, [*UPSTREAM_FILES, TEST], into)
    shutil.copyfile(HERE / "conftest.py", into / "tests" / "conftest.py")
    extra = "".join(f"    {line}\n" for line in UPSTREAM_EXTRA_WARNINGS)
    (into / "pytest.ini").write_text(UPSTREAM_INI.format(extra=extra))


def own_tree(release: str, cache: Path, into: Path) -> bool:
    """The release's own test_base.py with its own conftest, types and pytest settings; False when
    its sdist has no tests (0.15.0 - 0.20.4)."""
    archive = sdist(release, cache)
    members = ["tests/__init__.py", "tests/conftest.py", "tests/types.py", "tests/middleware/__init__.py"]
    found = extract(archive, [TEST, *members, "pyproject.toml", "setup.cfg"], into)
    return TEST in found


@dataclass
class Suite:
    name: str
    unpatched: Outcomes
    patched: Outcomes

    def regressions(self) -> list[str]:
        """Tests that pass without the shim and fail with it."""
        return sorted(
            name
            for name, outcome in self.patched.tests.items()
            if outcome == "failed" and self.unpatched.tests.get(name) == "passed"
        )

    def failing_with(self) -> list[str]:
        return sorted(name for name, outcome in self.patched.tests.items() if outcome == "failed")


def row(release: str, anyio: str, suite: Suite) -> str:
    u, p = suite.unpatched, suite.patched
    counts = (
        f"{u.count('passed'):>3} / {u.count('failed'):>2}   {p.count('passed'):>3} / {p.count('failed'):>2}"
    )
    other = p.count("skipped")
    return (
        f"{release:<8} {anyio:<7} {suite.name:<8} {counts}   {p.count('n/a'):>3}"
        + (f" (+{other} skipped)" if other else "")
        + f"   {u.seconds + p.seconds:5.1f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=["upstream", "own", "both"], default="both")
    parser.add_argument("--cache", type=Path, default=ROOT / ".conformance-cache")
    parser.add_argument("--keep", type=Path, help="build the trees here and leave them (for debugging)")
    arguments = parser.parse_args()
    release, anyio = version("starlette"), version("anyio")
    suites: list[Suite] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="conformance-") as temporary:
        work = arguments.keep or Path(temporary)
        names = ["upstream", "own"] if arguments.suite == "both" else [arguments.suite]
        for name in names:
            tree = work / name
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir(parents=True)
            if name == "upstream":
                upstream_tree(arguments.cache, tree)
            elif not own_tree(release, arguments.cache, tree):
                notes.append(f"own: n/a, the sdist of starlette {release} ships no {TEST}")
                continue
            extra = [] if name == "upstream" else [f"-W{warning}" for warning in OWN_EXTRA_WARNINGS]
            runs = [
                run_pytest(tree, patched, work / f"{name}-{patched}.xml", extra) for patched in (False, True)
            ]
            suites.append(Suite(name, *runs))
    print(f"\nconformance on starlette {release}, anyio {anyio}, Python {sys.version.split()[0]}")
    print("release  anyio   suite    unpatched   patched     n/a   time")
    print("                          pass/fail   pass/fail")
    status = 0
    for suite in suites:
        print(row(release, anyio, suite))
    for note in notes:
        print(note)
    for suite in suites:
        # upstream: any applicable failure with the shim; own: a test that passes without and
        # fails with (the release's own expectations are its bugs, which the shim may fix).
        bad = suite.failing_with() if suite.name == "upstream" else suite.regressions()
        for name in suite.regressions():
            print(f"{suite.name}: passes without the shim, FAILS WITH it: {name}")
            print(f"    {suite.patched.messages.get(name, '')}")
        for name in suite.failing_with():
            if name not in suite.regressions():
                before = suite.unpatched.tests.get(name, "not run")
                print(f"{suite.name}: fails with the shim (without it: {before}): {name}")
                print(f"    {suite.patched.messages.get(name, '')}")
        status = status or int(bool(bad))
    return status


if __name__ == "__main__":
    sys.exit(main())
