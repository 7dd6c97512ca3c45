"""Conformance: starlette's own BaseHTTPMiddleware tests, without and with the shim (run.py)."""
