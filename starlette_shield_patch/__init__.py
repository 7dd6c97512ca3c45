"""Deliver `http.response.start` through stacked BaseHTTPMiddleware on starlette 0.15.0 - 0.20.4."""

from ._activation import activate_on_import
from ._patch import ShieldStatus, apply, remove, status

__all__ = ["ShieldStatus", "__version__", "apply", "remove", "status"]
__version__ = "0.1.0"

activate_on_import()
