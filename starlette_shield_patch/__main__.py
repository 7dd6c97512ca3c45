"""python -m starlette_shield_patch [--self-test] [--json]: am I affected, and is the fix active?"""

from __future__ import annotations

import argparse
import json
import os
import platform
import site
import sys
from typing import Any

from _starlette_shield_patch_startup import ARMS_AT_STARTUP, EXTENDED, MEANINGS, VARIABLE, Switch, read_switch

from . import _patch, apply, remove
from ._guard import AFFECTED_RANGE_TEXT, BETWEEN, affected, parse_release
from ._selftest import (
    CLEAN,
    FINISHED,
    HANDED_ON,
    ITSELF,
    after_response_outcome,
    disconnect_outcome,
    errors_outcome,
    pass_through_outcome,
)

if sys.version_info >= (3, 8):
    from importlib.metadata import PackageNotFoundError, version  # novermin (3.8 and later only)
else:  # the backport, a dependency on Python 3.7 alone (setup.cfg)
    from importlib_metadata import PackageNotFoundError, version


def installed(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def startup_hook() -> str | None:
    for folder in [*site.getsitepackages(), site.getusersitepackages()]:
        path = os.path.join(folder, "starlette_shield_patch.pth")
        if os.path.exists(path):
            return path
    return None


NO_ERRORS = ("start-only", "without-errors")  # the values of the variable without the errors fix
NO_PASS_THROUGH = ("start-only", "without-pass-through")  # and those without the pass-through fix

# How the servers of 2021-2022 start their workers: what decides whether the shim reaches them.
SERVERS = {
    "gunicorn": "workers forked from the master (--preload: after it imported the app)",
    "uvicorn": "each worker of --workers or --reload a new interpreter",
    "hypercorn": "each worker of --workers a new interpreter",
}


def workers(would: str, switch: str) -> dict[str, str]:
    """For each server installed here, by "name version": what its workers will do."""
    said = {}
    for server, how in SERVERS.items():
        release = installed(server)
        if release is None:
            continue
        if not would.startswith("patch"):
            what = "nothing, as above"
        elif switch in ARMS_AT_STARTUP:
            what = f"each patches when it imports starlette, by the {VARIABLE} it inherits"
            if server == "gunicorn":
                what += "; set it where gunicorn starts (--env and raw_env come after startup: too late)"
        else:
            what = "each patches once the app imports starlette_shield_patch"
        said[f"{server} {release}"] = f"{how}: {what}"
    return said


def diagnose() -> dict[str, Any]:
    starlette = installed("starlette")
    anyio = installed("anyio")
    switch = read_switch()
    anyio_major = int(anyio.split(".")[0]) if anyio else 4
    verdict = affected(starlette, anyio_major, switch.extended) if starlette else None
    hook = startup_hook()
    if starlette is None:
        would = "nothing: starlette is not installed"
    elif switch.kind == "off":
        would = f"nothing: disabled by {VARIABLE}"
    elif verdict is not None and not verdict.affected and switch.kind != "force":
        would = f"nothing: {verdict.reason}"
        release = parse_release(starlette)
        if release is not None and BETWEEN.first <= release < BETWEEN.fixed:
            # What the opt-in would run here, by piece and upstream issue.
            whys: dict[str, list[str]] = {}
            for piece in affected(starlette, anyio_major, extended=True).pieces:
                whys.setdefault(piece.name, []).append(piece.why)
            named = ", ".join(f"{name} ({', '.join(why)})" for name, why in whys.items())
            would += f"; it has other defects that the shim leaves without the opt-in: {named}"
            would += "; --self-test shows them"
    elif switch.kind in ARMS_AT_STARTUP and hook:
        would = "patch BaseHTTPMiddleware.__call__ in every process, when the app imports starlette"
    elif switch.kind in ARMS_AT_STARTUP:
        would = "nothing at startup (no startup hook installed): import starlette_shield_patch in the app"
    else:
        would = "patch BaseHTTPMiddleware.__call__ once the app imports starlette_shield_patch"
    if would.startswith("patch"):
        # The fixes this release needs (with this anyio), less those the variable turns off.
        kind = switch.kind
        wanted = _patch.wanted_fixes(
            after_response=kind != "start-only",
            errors=kind not in NO_ERRORS,
            pass_through=kind not in NO_PASS_THROUGH,
        )
        needed = verdict.fixes if verdict is not None and verdict.affected else (_patch.RESPONSE_START,)
        fixes = [fix for fix in needed if fix in wanted]
        if fixes:
            would += f", with the fixes: {', '.join(fixes)}"
        else:  # 0.21.0 - 0.27.x opted in with start-only: they do not lose the start
            would = f"nothing: every fix this release needs is turned off by {VARIABLE}={switch.raw.strip()}"
    return {
        "python": f"{platform.python_version()} ({sys.executable})",
        "starlette": starlette,
        "anyio": anyio,
        "wrapt": installed("wrapt"),
        "affected": verdict.affected if verdict else None,
        "affected_range": AFFECTED_RANGE_TEXT,
        "verdict": verdict.reason if verdict else "starlette is not installed",
        "variable": {"name": VARIABLE, "value": os.environ.get(VARIABLE), "meaning": meaning(switch)},
        "startup_hook": hook,
        "would_do": would,
        "workers": workers(would, switch.kind),
    }


def meaning(switch: Switch) -> str:
    """What the variable's value means, the opt-in included."""
    if not switch.extended:
        return MEANINGS[switch.kind]
    also = "" if switch.kind == "on" else f"; {MEANINGS[switch.kind]}"
    return MEANINGS[EXTENDED] + also


# What a user of a release that the shim leaves alone with defects (0.21.0 - 0.27.x) can do.
LEFT_ALONE = (
    f"the shim leaves this release alone (it has starlette#1715) unless told: {VARIABLE}=extended "
    "(or apply(extended=True)) fixes these"
)


def self_test() -> dict[str, Any]:
    """Run each bug's scenario without, then with the shim; say whether all is well."""
    scenarios = {
        _patch.RESPONSE_START: disconnect_outcome,
        _patch.AFTER_RESPONSE: after_response_outcome,
        _patch.ERRORS: errors_outcome,
        _patch.PASS_THROUGH: pass_through_outcome,
    }
    remove()
    without = {fix: scenario() for fix, scenario in scenarios.items()}
    apply()
    status = _patch.status()
    with_shim = {fix: scenario() if status.patched else without[fix] for fix, scenario in scenarios.items()}
    good = {
        _patch.RESPONSE_START: CLEAN,
        _patch.AFTER_RESPONSE: FINISHED,
        _patch.ERRORS: ITSELF,
        _patch.PASS_THROUGH: HANDED_ON,
    }
    # A fix that was not asked for (STARLETTE_SHIELD_PATCH=start-only) is not held against it;
    # on a release the shim leaves alone, only the two bugs that make a release affected count.
    wanted = status.fixes if status.patched else (_patch.RESPONSE_START, _patch.AFTER_RESPONSE)
    # But what a release between the two ranges (0.21.0 - 0.27.x) still gets wrong where no fix of
    # the shim is in force (without the opt-in, or with a fix turned off) is said, and is not "ok".
    release = parse_release(status.starlette_version or "")
    between = release is not None and BETWEEN.first <= release < BETWEEN.fixed
    left = {
        fix: got for fix, got in with_shim.items() if between and got != good[fix] and fix not in status.fixes
    }
    return {
        "without_shim": without,
        "with_shim": with_shim,
        "fixes": list(status.fixes),
        "shim_status": status.reason,
        "defects_left": left,
        "ok": not left and all(without[fix] == good[fix] or with_shim[fix] == good[fix] for fix in wanted),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m starlette_shield_patch", description=__doc__)
    parser.add_argument("--self-test", action="store_true", help="run the disconnect scenario")
    parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    arguments = parser.parse_args(argv)

    report = diagnose()
    if arguments.self_test:
        report["self_test"] = self_test()
    if arguments.json:
        print(json.dumps(report, indent=2))
    else:
        variable = report["variable"]
        value = "unset" if variable["value"] is None else repr(variable["value"])
        lines = [
            ("Python", report["python"]),
            ("starlette", report["verdict"]),
            ("anyio", report["anyio"] or "not installed"),
            ("wrapt", report["wrapt"] or "not installed"),
            (VARIABLE, f"{value}: {variable['meaning']}"),
            ("startup hook", report["startup_hook"] or "not installed"),
            ("the shim would", report["would_do"]),
            *report["workers"].items(),
        ]
        if "self_test" in report:
            test = report["self_test"]
            lines += [
                (
                    "without the shim",
                    ", ".join(f"{fix}: {outcome}" for fix, outcome in test["without_shim"].items()),
                ),
                (
                    "with the shim",
                    ", ".join(f"{fix}: {outcome}" for fix, outcome in test["with_shim"].items()),
                ),
                ("shim status", test["shim_status"]),
                ("fixes in force", ", ".join(test["fixes"]) or "none"),
            ]
            left = test["defects_left"]
            if left:
                seen = ", ".join(f"{fix}: {outcome}" for fix, outcome in left.items())
                lines.append(("defects left", f"{seen}; {LEFT_ALONE}"))
            verdict = "FAILED: the bug is there and the shim does not fix it"
            lines.append(("self-test", "ok" if test["ok"] else "defects left" if left else verdict))
        width = max(len(name) for name, _ in lines)
        print("\n".join(f"{name.ljust(width)}  {value}" for name, value in lines))
    return 0 if "self_test" not in report or report["self_test"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
