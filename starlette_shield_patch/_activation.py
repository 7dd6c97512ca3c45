"""What `import starlette_shield_patch` does: arm the patch, never raise."""

from __future__ import annotations

from ._patch import _apply


def activate_on_import() -> None:
    """Arm the patch for this process, with the version guard."""
    _apply(False, "import starlette_shield_patch")
