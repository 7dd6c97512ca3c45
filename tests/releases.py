"""The starlette releases that the matrix runs and the tests expect to be affected, written once.

Independent of the package's own guard (starlette_shield_patch._guard), which the tests check
against it. Read by noxfile.py and tests/asgi.py; imports nothing.
"""

# 0.15.0 moved BaseHTTPMiddleware onto anyio (starlette#1157); 0.21.0 has the fix (#1715).
# 0.20.2 was never published.
AFFECTED = (
    "0.15.0", "0.16.0", "0.17.0", "0.17.1", "0.18.0", "0.19.0",
    "0.19.1", "0.20.0", "0.20.1", "0.20.3", "0.20.4",
)  # fmt: skip
# The neighbours outside the range: the last release before anyio, the first with the fix.
UNAFFECTED = ("0.14.2", "0.21.0")
