"""Startup cost (`scripts/bench`): `import starlette_shield_patch` under -X importtime, and
`python -c pass` in a venv with the package against one without it, runs interleaved."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.run import ROOT, venv

RUNS = 60


def import_time(python: Path) -> tuple[int, int, list[str]]:
    """(cumulative µs of `import starlette_shield_patch`, of that wrapt's, other packages seen)."""
    result = subprocess.run(
        [str(python), "-X", "importtime", "-c", "import starlette_shield_patch"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "STARLETTE_SHIELD_PATCH": ""},
        # Not from the repository's root, where `-c` would import the working tree ahead of the
        # installed package (and compile it at every run where PYTHONDONTWRITEBYTECODE is set).
        cwd=python.parent,
    )
    cumulative: dict[str, int] = {}
    for line in result.stderr.splitlines():
        fields = line.split("|")
        if line.startswith("import time:") and len(fields) == 3 and fields[1].strip().isdigit():
            cumulative[fields[2].strip()] = int(fields[1])
    seen = sorted(name for name in cumulative if name.split(".")[0] in ("starlette", "anyio"))
    return cumulative["starlette_shield_patch"], cumulative.get("wrapt", 0), seen


def start(python: Path, variable: str) -> float:
    environment = {**os.environ, "STARLETTE_SHIELD_PATCH": variable}
    started = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], check=True, env=environment, cwd=python.parent)
    return time.perf_counter() - started


def main() -> int:
    cache = ROOT / ".bench"
    with_shim = venv(cache / "0.20.4-anyio-3.7.1", "starlette==0.20.4", "anyio==3.7.1")
    without_python = venv(cache / "startup-without", "starlette==0.20.4", "anyio==3.7.1", "wrapt", shim=False)

    imports = [import_time(with_shim) for _ in range(15)]
    seen = imports[0][2]
    total = statistics.median(total for total, _, _ in imports)
    wrapt = statistics.median(wrapt for _, wrapt, _ in imports)
    print()
    runs = len(imports)
    print(f"`import starlette_shield_patch` (-X importtime, median of {runs} runs): {total / 1000:.2f} ms,")
    print(f"of which wrapt {wrapt / 1000:.2f} ms (imported only once starlette is);")
    print(f"starlette or anyio modules imported by it: {', '.join(seen) or 'none'}")

    samples: dict[str, list[float]] = {
        "without the package": [],
        "with it, variable unset": [],
        "with it, =1": [],
    }
    for _ in range(RUNS):  # interleaved, so that drift on a shared machine hits all three alike
        samples["without the package"].append(start(without_python, ""))
        samples["with it, variable unset"].append(start(with_shim, ""))
        samples["with it, =1"].append(start(with_shim, "1"))
    print()
    print(f"`python -c pass`, {RUNS} interleaved runs each (ms):")
    print()
    print("| environment | median | quartiles |")
    print("|---|---|---|")
    for name, values in samples.items():
        quartiles = statistics.quantiles(values, n=4)
        median, low, high = (statistics.median(values), quartiles[0], quartiles[2])
        print(f"| {name} | {median * 1000:.1f} | {low * 1000:.1f} - {high * 1000:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
