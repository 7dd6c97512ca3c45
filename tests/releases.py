"""The starlette releases that the matrix runs and the tests expect to be affected, written once.

Independent of the package's own guard (starlette_shield_patch._guard), which the tests check
against it. Read by noxfile.py, tests/asgi.py and docs/tables.py; imports nothing.
"""

# 0.15.0 moved BaseHTTPMiddleware onto anyio (starlette#1157); 0.21.0 has the fix (#1715). These
# also cancel the inner app once the response is sent (starlette#1438). 0.20.2 was never published.
CANCELLING = (
    "0.15.0", "0.16.0", "0.17.0", "0.17.1", "0.18.0", "0.19.0",
    "0.19.1", "0.20.0", "0.20.1", "0.20.3", "0.20.4",
)  # fmt: skip
# 0.28.0 (#1692) brought "No response returned." back for four or more layers (starlette#2516);
# 0.38.3 has the fix (#2620). The matrix runs the first and the last; the tests know them all.
FOUR_LAYERS = (
    "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.31.1", "0.32.0", "0.32.0.post1", "0.33.0",
    "0.34.0", "0.35.0", "0.35.1", "0.36.0", "0.36.1", "0.36.2", "0.36.3", "0.37.0", "0.37.1",
    "0.37.2", "0.38.0", "0.38.1", "0.38.2",
)  # fmt: skip
AFFECTED = CANCELLING + FOUR_LAYERS
# Between them, the releases that have #1715 (FastAPI 0.87.0 - 0.106.0): the shim patches them only
# with the opt-in (STARLETTE_SHIELD_PATCH=extended, apply(extended=True)). 0.21.0 - 0.23.0 share one
# BaseHTTPMiddleware.__call__, 0.23.1 stops ending call_next's body at the last message, 0.24.0 -
# 0.27.0 add the debug info (_StreamingResponse).
BETWEEN = (
    "0.21.0", "0.22.0", "0.23.0", "0.23.1", "0.24.0", "0.25.0", "0.26.0", "0.26.0.post1", "0.26.1",
    "0.27.0",
)  # fmt: skip
# The test suite's own switch: the tests opt in (as users do) and expect BETWEEN patched.
EXTENDED_VARIABLE = "SHIELD_TESTS_EXTENDED"
# The neighbours of the ranges: the last release before anyio, the first with each fix, the
# last before the second range.
UNAFFECTED = ("0.14.2", "0.21.0", "0.27.0", "0.38.3")
# FastAPI releases as pinned in the wild, and the starlette each one pins; from 0.108.0 on FastAPI
# asks for a range, and the resolver picks its newest (0.32.0.post1, 0.36.3, 0.37.2, 0.37.2).
FASTAPI = {
    "0.69.0": "0.15.0", "0.75.2": "0.17.1", "0.79.1": "0.19.1", "0.85.2": "0.20.4",
    "0.88.0": "0.22.0", "0.100.0": "0.27.0",  # BETWEEN: with the opt-in (0.88.0 on anyio 3)
    "0.108.0": "", "0.109.2": "", "0.110.3": "", "0.112.0": "",
}  # fmt: skip
# FastAPI's releases in runs that ask for the same kind of starlette, from the Requires-Dist of
# each run's ends on PyPI: (first FastAPI, last FastAPI, the first starlette the run allows, the
# first it does not). 0.86.0 pins ==0.20.4, 0.87.0 ==0.21.0, 0.106.0 asks >=0.27.0,<0.28.0, 0.107.0
# >=0.28.0,<0.29.0, 0.108.0 >=0.29.0,<0.33.0, 0.112.0 >=0.37.2,<0.38.0.
FASTAPI_RUNS = (
    ("0.69.0", "0.86.0", "0.15.0", "0.21.0"),
    ("0.87.0", "0.106.0", "0.21.0", "0.28.0"),
    ("0.107.0", "0.107.0", "0.28.0", "0.29.0"),
    ("0.108.0", "0.112.0", "0.29.0", "0.38.0"),
)
# The first FastAPI after them: >=0.37.2,<0.39.0, where a fresh install gets 0.38.3 or later.
FASTAPI_NEWER = "0.112.1"
