"""Per-request cost of the shim, as median ratios of alternating rounds (`scripts/bench`).

Two long-lived workers per affected release (0.20.4, 0.37.2) and anyio version: one on that
release (unpatched, patched with both fixes, patched with the response-start fix alone, an empty
wrapt wrapper) and one on the first release with the upstream fix (0.21.0, 0.38.3). Rounds
alternate between the variants, in a rotating order, each on fresh middleware instances; a
ratio is taken per round, and the figure is the median over rounds, so drift on a shared machine
cancels out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {
    "plain-1-layer": "(a) plain response, 1 layer",
    "stream100-3-layers": "(b) 100 chunks, 3 layers",
    "background-1-layer": "(c) plain response + background task, 1 layer",
    "json-body-1-layer": "(d) the dispatch reads a small JSON body, 1 layer",
}
# Each figure is the median ratio to unpatched 0.20.4; the first is what a request costs there.
VARIANTS = {
    "patched": "shim",
    "without-errors": "shim without the errors fix",
    "without-pass-through": "shim without the pass-through fix",
    "start-only": "start fix alone",
    "empty-wrapt": "empty wrapt wrapper",
}
# Counted only (--count): a wrapt wrapper that awaits __call__ in a coroutine that re-raises what
# escapes it, the floor of any piece that must see what leaves a layer.
COUNTED_ONLY = {"wrapt-coroutine": "empty coroutine around the layer"}
ROUND_SECONDS = 0.2


class Worker:
    def __init__(self, python: Path) -> None:
        self.process = subprocess.Popen(
            [str(python), "-m", "bench.worker"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "STARLETTE_SHIELD_PATCH": ""},
        )

    def round(self, shape: str, variant: str, requests: int) -> float:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(f"{shape} {variant} {requests}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def venv(where: Path, *requirements: str, shim: bool = True) -> Path:
    """A venv in `where` with `requirements`, kept, and this package as it is now unless `shim` is
    False. Installed with compiled bytecode, as pip installs by default."""
    python = where / "bin" / "python"
    install = ["uv", "pip", "install", "--quiet", "--compile-bytecode", "--python", str(python)]
    if not python.exists():
        subprocess.run(["uv", "venv", "--quiet", "--python", sys.executable, str(where)], check=True)
        subprocess.run([*install, *requirements], check=True)
    if shim:  # the working tree's code, never a copy left from an earlier run
        subprocess.run([*install, "--reinstall-package", "starlette-shield-patch", str(ROOT)], check=True)
    return python


def installed(python: Path, distribution: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def percent(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%"


def spread(values: list[float]) -> str:
    """The median ratio and its interquartile range, as percentages."""
    quartiles = statistics.quantiles(values, n=4)
    return f"{percent(statistics.median(values))} [{percent(quartiles[0])}, {percent(quartiles[2])}]"


def instructions(python: Path, shape: str, variant: str) -> int | None:
    """Instructions per request under valgrind's callgrind (deterministic, unlike time on a shared
    machine): (220 requests - 20 requests) / 200. None without valgrind."""
    if shutil.which("valgrind") is None:
        return None
    counts = []
    for requests in (20, 220):
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", str(python)]
        command += ["-m", "bench.count", shape, variant, str(requests)]
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "STARLETTE_SHIELD_PATCH": ""}
        environment["PYTHONHASHSEED"] = "0"  # the same dict layouts in every run
        done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, check=True)
        collected = re.search(r"Collected : (\d+)", done.stderr)
        assert collected, done.stderr
        counts.append(int(collected.group(1)))
    return (counts[1] - counts[0]) // 200


def machine() -> str:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    return f"{platform.machine()}, {model or 'unknown CPU'}, {os.cpu_count()} CPUs, {platform.platform()}"


def measure(fixed: Worker, upstream: Worker, shape: str, rounds: int) -> dict[str, Any]:
    probe = fixed.round(shape, "unpatched", 20) / 20
    requests = max(10, int(ROUND_SECONDS / probe))
    variants = [(fixed, "unpatched"), *[(fixed, name) for name in VARIANTS], (upstream, "upgrade")]
    for worker, variant in variants:  # warm up every variant once
        worker.round(shape, worker_variant(variant), requests)
    ratios: dict[str, list[float]] = {variant: [] for _, variant in variants[1:]}
    base_times: list[float] = []
    for number in range(rounds):
        shift = number % len(variants)
        order = variants[shift:] + variants[:shift]
        times = {variant: worker.round(shape, worker_variant(variant), requests) for worker, variant in order}
        base = times["unpatched"]
        base_times.append(base / requests)
        for variant in ratios:
            ratios[variant].append(times[variant] / base)
    figures: dict[str, Any] = {name: spread(values) for name, values in ratios.items()}
    figures["microseconds"] = statistics.median(base_times) * 1e6
    figures["requests"] = requests
    return figures


def worker_variant(variant: str) -> str:
    return "unpatched" if variant == "upgrade" else variant  # the upgraded release runs unpatched


# An affected release, the first with the upstream fix, and the anyio versions to measure on.
PAIRS = {
    "0.20.4": ("0.21.0", ("3.7.1", "4")),
    "0.27.0": ("0.38.3", ("3.7.1", "4")),  # with the opt-in (FastAPI 0.87.0 - 0.106.0)
    "0.37.2": ("0.38.3", ("4",)),
}
ANYIO = {"3.7.1": "anyio==3.7.1", "4": "anyio<5"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--starlette", action="append", choices=list(PAIRS), help="default: both")
    parser.add_argument("--anyio", action="append", choices=list(ANYIO), help="default: all")
    parser.add_argument("--shape", action="append", choices=list(SHAPES), help="default: all")
    parser.add_argument("--no-instructions", action="store_true", help="skip the valgrind counts")
    parser.add_argument(
        "--count",
        action="append",
        default=[],
        choices=[variant for variant in [*VARIANTS, *COUNTED_ONLY] if variant != "patched"],
        help="also count this variant's instructions, against unpatched (repeatable)",
    )
    arguments = parser.parse_args()
    cache = ROOT / ".bench"
    rounds = f"{arguments.rounds} rounds of ~{ROUND_SECONDS}s per variant"
    print(f"Python {platform.python_version()}; {machine()}; {rounds}")
    print("Time: the median ratio to unpatched over the rounds, [its interquartile range].")
    counted = not arguments.no_instructions and shutil.which("valgrind") is not None
    if counted:
        print("Instructions per request under valgrind (callgrind), unpatched / shim / upgrade.")
    print()
    header = ["starlette", "anyio", "shape", "unpatched, µs/request", *VARIANTS.values(), "upgrade"]
    labels = {**VARIANTS, **COUNTED_ONLY}
    header += ["instructions: unpatched / shim / upgrade"] if counted else []
    header += [f"instructions: {labels[variant]}" for variant in arguments.count] if counted else []
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for release in arguments.starlette or PAIRS:
        fixed_release, anyios = PAIRS[release]
        for anyio in [ANYIO[name] for name in anyios if name in (arguments.anyio or anyios)]:
            tag = anyio.replace("==", "-").replace("<", "-lt-")
            fixed_python = venv(cache / f"{release}-{tag}", f"starlette=={release}", anyio)
            upstream_python = venv(cache / f"{fixed_release}-{tag}", f"starlette=={fixed_release}", anyio)
            fixed, upstream = Worker(fixed_python), Worker(upstream_python)
            try:
                for shape in arguments.shape or SHAPES:
                    figures = measure(fixed, upstream, shape, arguments.rounds)
                    cells = [
                        f"{release} (upgrade: {fixed_release})",
                        installed(fixed_python, "anyio"),
                        SHAPES[shape],
                        f"{figures['microseconds']:.0f}",
                        *[figures[variant] for variant in [*VARIANTS, "upgrade"]],
                    ]
                    if counted:
                        base = instructions(fixed_python, shape, "unpatched") or 1
                        shim = instructions(fixed_python, shape, "patched") or 0
                        upgrade = instructions(upstream_python, shape, "unpatched") or 0
                        cells.append(f"{base:,} / {percent(shim / base)} / {percent(upgrade / base)}")
                        for variant in arguments.count:
                            count = instructions(fixed_python, shape, variant) or 0
                            cells.append(f"{count:,} ({percent(count / base)})")
                    print("| " + " | ".join(cells) + " |", flush=True)
            finally:
                fixed.close()
                upstream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
