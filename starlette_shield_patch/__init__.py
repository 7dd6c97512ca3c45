"""Fix BaseHTTPMiddleware of starlette 0.15.0 - 0.20.4 and 0.28.0 - 0.38.2: the lost response start,
the cancelled work, the errors that do not come out as themselves."""

from . import _patch
from ._patch import ShieldStatus, apply, remove, status

__all__ = ["ShieldStatus", "__version__", "apply", "remove", "status"]
__version__ = "0.1.0"

# Arm the patch (version guard as usual) unless STARLETTE_SHIELD_PATCH says off; never raises.
_patch.activate()
