"""The docs' tables, made from the code: cog blocks in README.md and docs/*.md call these.

`scripts/docs` writes what they return into the pages (`cog -r`); the nox `docs` session fails
where a page differs from it (`cog --check`). Not part of the installed package.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the package, its startup module and tests/releases.py, as in the tree

from _starlette_shield_patch_startup import MEANINGS, VALUES, VARIABLE  # noqa: E402
from starlette_shield_patch._guard import PIECES, pieces_for  # noqa: E402
from starlette_shield_patch._patch import FIXES  # noqa: E402
from tests import releases  # noqa: E402

Release = tuple[int, int, int]

UPSTREAM = {
    "starlette": "https://github.com/encode/starlette/issues/",
    "anyio": "https://github.com/agronholm/anyio/issues/",
    "fastapi": "https://github.com/fastapi/fastapi/issues/",
}
# Where docs/bugs.md says what each fix fixes.
FIX_SECTIONS = {
    "response-start": "bugs.md#the-response-start",
    "after-response": "bugs.md#the-work-after-the-response",
    "errors": "bugs.md#errors",
    "pass-through": "bugs.md#what-passes-through-a-layer",
}
# The docs pages as the README links them: absolute, for PyPI, which shows the README alone.
DOCS = "https://github.com/starlette-shield-patch/starlette-shield-patch/blob/main/docs/"
# The first release with every upstream fix that makes a release affected (0.38.3).
LAST_FIXED = ".".join(map(str, max(piece.fixed for piece in PIECES)))
# What the doctor's sample output runs on (docs/requirements.txt installs it).
DOCTOR_STARLETTE = "0.20.4"


def parse(text: str) -> Release:
    """(major, minor, micro) of a release; a post release counts as its release."""
    major, minor, micro = (int(part) for part in text.split(".")[:3])
    return major, minor, micro


def dotted(release: Release) -> str:
    return ".".join(map(str, release))


def link(reference: str) -> str:
    """`starlette#1634` as a Markdown link to the issue (GitHub redirects a PR's number there)."""
    project, number = reference.split("#")
    return f"[{reference}]({UPSTREAM[project.lower()]}{number})"


# CANCELLING, BETWEEN and FOUR_LAYERS list every published release of their range: between the
# first of one and the release after its last, every release is known.
KNOWN = sorted({parse(release) for release in (*releases.AFFECTED, *releases.BETWEEN, *releases.UNAFFECTED)})
COMPLETE = [
    (parse(listed[0]), min(release for release in KNOWN if release > parse(listed[-1])))
    for listed in (releases.CANCELLING, releases.BETWEEN, releases.FOUR_LAYERS)
]


def releases_in(first: Release, below: Release) -> list[Release] | None:
    """The releases with first <= release < below, or None where the lists do not know them all."""
    if any(start <= first and below <= after for start, after in COMPLETE):
        return [release for release in KNOWN if first <= release < below]
    return None


def span(first: Release, below: Release) -> str:
    """first <= release < below, as people write it: `0.15.0 - 0.20.4`, `0.21.0 - 0.27.x`."""
    known = releases_in(first, below)
    if known == [first]:
        return dotted(first)
    if known and len(known) == 2:
        return f"{dotted(known[0])}, {dotted(known[1])}"
    if known:
        return f"{dotted(known[0])} - {dotted(known[-1])}"
    if below[2] == 0 and below[1] > 0:
        return f"{dotted(first)} - {below[0]}.{below[1] - 1}.x"
    return f"≥ {dotted(first)}, < {dotted(below)}"


def row(*cells: str) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [row(*header), row(*("---" for _ in header)), *(row(*cells) for cells in rows)]
    return "\n".join(lines) + "\n"


def pieces(fix: str | None = None) -> str:
    """`_guard.PIECES`, one row per entry (of one fix, if given): which releases need which piece."""
    fix_column = fix is None  # one fix's table needs no column for it
    rows = []
    for piece in PIECES:
        if fix_column or piece.fix == fix:
            releases_of = span(piece.first, piece.fixed)
            which = [piece.fix] if fix_column else []
            rows.append([piece.name, *which, releases_of, str(piece.anyio or "any"), link(piece.why)])
    return table(["piece", *(["fix"] if fix_column else []), "releases", "anyio", "upstream"], rows)


def values() -> str:
    """The values of STARLETTE_SHIELD_PATCH and what each means (`VALUES` of the startup module)."""
    rows = []
    for value in VALUES:
        if value.kind == "unset":
            said = "unset or empty"
        elif value.kind == "invalid":
            said = "anything else"
        else:
            said = ", ".join(f"`{spelling}`" for spelling in value.spellings)
        rows.append((said, MEANINGS[value.kind]))
    return table((f"`{VARIABLE}` (case-insensitive, whitespace ignored)", "effect"), rows)


def fixes_on(first: Release, below: Release, pages: str | None) -> list[str]:
    """The fixes whose pieces PIECES lists for any of these releases, with any anyio; each a link
    to its section of docs/bugs.md, but where `pages` is None."""
    known = releases_in(first, below) or [release for release in KNOWN if first <= release < below]
    needed = {piece.fix for release in known for anyio in (3, 4) for piece in pieces_for(release, anyio)}
    if pages is None:
        return [fix for fix in FIXES if fix in needed]
    return [f"[{fix}]({pages}{FIX_SECTIONS[fix]})" for fix in FIXES if fix in needed]


def tested(first: str, last: str) -> str:
    """The FastAPI releases of a run that the `fastapi` sessions test, with the starlette they pin."""
    said = [
        f"{fastapi} ({starlette})" if starlette else fastapi
        for fastapi, starlette in releases.FASTAPI.items()
        if parse(first) <= parse(fastapi) <= parse(last)
    ]
    return f"; tested: {', '.join(said)}" if said else ""


def said(first: str, pages: str) -> tuple[str, str]:
    """What the users of a FastAPI run see, and what to do there, by the first starlette the run
    allows; the facts are those of docs/bugs.md and docs/limitations.md."""
    turning_on = f"[Turning it on]({pages}turning-on.md)"
    first_fix = f"FastAPI {releases.FASTAPI_RUNS[1][0]} (starlette {releases.FASTAPI_RUNS[1][2]})"
    last_fix = f"starlette {LAST_FIXED} (FastAPI {releases.FASTAPI_NEWER} and later allow it)"
    four_layers = (
        "`No response returned.` with four or more layers (two when the client leaves before its body "
        "is complete); errors as exception groups (anyio 4"
    )
    return {
        "0.15.0": (
            "`No response returned.` when a client leaves; background tasks, `BackgroundTasks` and the "
            "teardown of `yield` dependencies cancelled (from 0.20.1 on every request); errors as "
            "exception groups (anyio 4), beside a false `No response returned.` (0.15.0, 0.16.0) or not "
            "at all (0.17.0 - 0.18.0); a dispatch that reads the body makes the endpoint wait for ever",
            f"install the shim ({turning_on}); {first_fix} fixes `No response returned.` and the "
            f"cancelled work upstream ({link('starlette#1715')})",
        ),
        "0.21.0": (
            "no `No response returned.`, and the work after the response finishes (fixed upstream, "
            f"{link('starlette#1715')}); errors as exception groups on anyio 4, an error after the "
            "response dropped (before 0.23.1); a chunked answer ends only after its background task "
            "(from 0.23.1); a dispatch that reads the body makes the endpoint wait "
            f"({link('starlette#1692')})",
            f"opt in: `{VARIABLE}=extended` or `apply(extended=True)` ({turning_on}); without it the "
            "shim leaves them alone, and `python -m starlette_shield_patch --self-test` names the defects "
            "it sees",
        ),
        "0.28.0": (
            f"{four_layers}); `url_for()` in a dispatch fails; a chunked answer ends only after its "
            "background task",
            f"install the shim ({turning_on}); {last_fix} fixes `No response returned.` upstream",
        ),
        "0.29.0": (
            f"{four_layers}, before 0.31.0), or not at all after the response; `url_for()` in a dispatch "
            "fails; a `FileResponse` arrives empty from a server that offers `pathsend` (0.36.0 - 0.38.0)",
            f"install the shim ({turning_on}); {last_fix} fixes `No response returned.` upstream",
        ),
    }[first]


def affected(pages: str = "", fix_links: bool = True) -> str:
    """Am I affected? By FastAPI release and the starlette it allows: symptoms, the shim, what to do.

    `pages` is where the docs are from the page that shows the table: "" in docs/, DOCS in
    README.md; without `fix_links` the fixes are named, not linked (the README's is shorter)."""
    rows = []
    for first_fastapi, last_fastapi, first, below in releases.FASTAPI_RUNS:
        symptoms, to_do = said(first, pages)
        fixes = fixes_on(parse(first), parse(below), pages if fix_links else None)
        fastapi = first_fastapi if first_fastapi == last_fastapi else f"{first_fastapi} - {last_fastapi}"
        does = ", ".join(fixes)
        if releases.BETWEEN[0] == first:  # the guard leaves them alone unless the activation opts in
            does = f"nothing, unless told: with `{VARIABLE}=extended`, {does}"
        rows.append(
            (
                fastapi + tested(first_fastapi, last_fastapi),
                span(parse(first), parse(below)),
                symptoms,
                does,
                to_do,
            )
        )
    last_affected = dotted(max(release for release in KNOWN if release < parse(LAST_FIXED)))
    rows.append(
        (
            f"{releases.FASTAPI_NEWER} and later",
            f"{LAST_FIXED} and later, as a fresh install resolves it",
            "none of the above but one: before 0.46.0 an error raised after the response (a failing "
            f"background task) never reaches the server ({link('starlette#2812')}; the self-test's "
            "errors scenario says `swallowed` on 0.38.3)",
            "nothing: it leaves them alone",
            f"nothing; delete the shim ([When to delete it]({pages}turning-on.md#when-to-delete-it)). "
            f"Where starlette is held at {last_affected} or older, `python -m starlette_shield_patch` says "
            "which row applies",
        )
    )
    header = ("FastAPI", "starlette", "symptoms", "what the shim does there", "what to do")
    return table(header, rows)


def doctor(*arguments: str, variable: str | None = None) -> str:
    """`python -m starlette_shield_patch` run in this venv, as a console block that is the same on
    every machine: the venv's paths and the Python's micro release replaced."""
    if version("starlette") != DOCTOR_STARLETTE:
        raise RuntimeError(
            f"the doctor's sample runs on starlette {DOCTOR_STARLETTE} (docs/requirements.txt)"
        )
    environment = {name: value for name, value in os.environ.items() if name not in (VARIABLE, "PYTHONPATH")}
    if variable is not None:
        environment[VARIABLE] = variable
    with tempfile.TemporaryDirectory() as elsewhere:  # not the tree: the installed package runs
        result = subprocess.run(
            [sys.executable, "-m", "starlette_shield_patch", *arguments],
            cwd=elsewhere,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
    if result.stderr:
        raise RuntimeError(f"the doctor wrote to stderr: {result.stderr}")
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    output = result.stdout.replace(
        f"{platform.python_version()} ({sys.executable})", f"{python}.x (/venv/bin/python)"
    ).replace(sysconfig.get_paths()["purelib"], f"/venv/lib/python{python}/site-packages")
    command = " ".join(["python -m starlette_shield_patch", *arguments])
    prompt = f"$ {VARIABLE}={variable} {command}" if variable is not None else f"$ {command}"
    return f"```console\n{prompt}\n{output}```\n"
