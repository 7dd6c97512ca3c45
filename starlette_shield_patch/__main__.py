"""python -m starlette_shield_patch [--self-test] [--json]: am I affected, and is the fix active?"""

from __future__ import annotations

import argparse
import json
import os
import platform
import site
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import _patch, apply, remove
from ._activation import VARIABLE, read_switch
from ._guard import AFFECTED_RANGE_TEXT, affected

MEANINGS = {
    "unset": "nothing at startup; `import starlette_shield_patch` applies the patch (version guard)",
    "on": "armed at interpreter startup in every process of this environment (version guard)",
    "off": "kill switch: nothing is patched, not at startup, not by an import, not by apply()",
    "force": "armed at interpreter startup and applied whatever the starlette version",
    "invalid": "not a known value: ignored, as if unset",
}


def installed(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def startup_hook() -> str | None:
    folders = (
        [*site.getsitepackages(), site.getusersitepackages()] if hasattr(site, "getsitepackages") else []
    )
    for folder in folders:
        path = os.path.join(folder, "starlette_shield_patch.pth")
        if os.path.exists(path):
            return path
    return None


def diagnose() -> dict[str, Any]:
    starlette = installed("starlette")
    verdict = affected(starlette) if starlette else None
    switch = read_switch()
    hook = startup_hook()
    if starlette is None:
        would = "nothing: starlette is not installed"
    elif switch.kind == "off":
        would = f"nothing: disabled by {VARIABLE}"
    elif verdict is not None and not verdict.affected and switch.kind != "force":
        would = f"nothing: {verdict.reason}"
    elif switch.kind in ("on", "force") and hook:
        would = "patch BaseHTTPMiddleware.__call__ in every process, when the app imports starlette"
    elif switch.kind in ("on", "force"):
        would = "nothing at startup (no startup hook installed): import starlette_shield_patch in the app"
    else:
        would = "patch BaseHTTPMiddleware.__call__ once the app imports starlette_shield_patch"
    return {
        "python": f"{platform.python_version()} ({sys.executable})",
        "starlette": starlette,
        "anyio": installed("anyio"),
        "wrapt": installed("wrapt"),
        "affected": verdict.affected if verdict else None,
        "affected_range": AFFECTED_RANGE_TEXT,
        "verdict": verdict.reason if verdict else "starlette is not installed",
        "variable": {"name": VARIABLE, "value": os.environ.get(VARIABLE), "meaning": MEANINGS[switch.kind]},
        "startup_hook": hook,
        "would_do": would,
    }


def self_test() -> dict[str, Any]:
    """Run the disconnect scenario without, then with the shim; say whether all is well."""
    from ._selftest import disconnect_outcome

    remove()
    without = disconnect_outcome()
    apply()
    status = _patch.status()
    with_shim = disconnect_outcome() if status.patched else without
    return {
        "without_shim": without,
        "with_shim": with_shim,
        "shim_status": status.reason,
        "ok": without == "clean" or (status.patched and with_shim == "clean"),
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
        ]
        if "self_test" in report:
            test = report["self_test"]
            lines += [
                ("without the shim", test["without_shim"]),
                ("with the shim", f"{test['with_shim']} ({test['shim_status']})"),
                (
                    "self-test",
                    "ok" if test["ok"] else "FAILED: the bug is there and the shim does not fix it",
                ),
            ]
        width = max(len(name) for name, _ in lines)
        print("\n".join(f"{name.ljust(width)}  {value}" for name, value in lines))
    return 0 if "self_test" not in report or report["self_test"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
