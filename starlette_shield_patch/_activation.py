"""Activation from the environment: what an import, apply() and the startup hook do."""

from __future__ import annotations

import _starlette_shield_patch_startup as startup
from _starlette_shield_patch_startup import VARIABLE, Switch, read_switch, warn_if_invalid

__all__ = ["VARIABLE", "Switch", "decide", "read_switch"]


def decide(force: bool, via: str) -> tuple[bool, bool, str]:
    """Read the variable for an activation: (go ahead, force, how it was activated)."""
    switch = read_switch()
    warn_if_invalid(switch)
    if switch.kind == "off":
        return False, force, f"{VARIABLE}={switch.raw}"
    if switch.kind in ("on", "force"):
        when = " at interpreter startup" if startup.running else ""
        via = f"{VARIABLE}={switch.raw.strip()}{when}" if via.startswith("import") else via
    return True, force or switch.kind == "force", via
