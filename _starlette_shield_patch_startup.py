"""STARLETTE_SHIELD_PATCH, read in one place; run by starlette_shield_patch.pth at startup.

A top-level module so that the startup hook can read the variable without importing the
package (which arms the patch on import). It imports nothing beyond os and sys until it must.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "STARLETTE_SHIELD_PATCH"
ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off")
FORCE = ("force",)
ACCEPTED = "unset or empty, " + ", ".join(ON) + " (on), " + ", ".join(OFF) + " (off), force"

running = False  # True while the startup hook imports the package
_warned = False


class Switch:
    """What the variable says: "unset", "on", "off", "force" or "invalid", and its raw value."""

    __slots__ = ("kind", "raw")

    def __init__(self, kind: str, raw: str) -> None:
        self.kind = kind
        self.raw = raw


def read_switch() -> Switch:
    """Read STARLETTE_SHIELD_PATCH (case-insensitive, surrounding whitespace ignored)."""
    raw = os.environ.get(VARIABLE, "")
    value = raw.strip().lower()
    if not value:
        return Switch("unset", raw)
    for kind, values in (("on", ON), ("off", OFF), ("force", FORCE)):
        if value in values:
            return Switch(kind, raw)
    return Switch("invalid", raw)


def warn_if_invalid(switch: Switch) -> None:
    """Say once per process, on stderr, that the variable has a value we do not know."""
    global _warned
    if switch.kind != "invalid" or _warned:
        return
    _warned = True
    import logging

    logging.getLogger("starlette_shield_patch").warning(
        "%s=%r is not a value the shim knows; it is ignored (accepted: %s)", VARIABLE, switch.raw, ACCEPTED
    )


def startup() -> None:
    """Arm the patch for this process when the variable asks for it; never raise."""
    global running
    try:
        switch = read_switch()
        warn_if_invalid(switch)
        if switch.kind in ("on", "force"):
            running = True
            try:
                import starlette_shield_patch  # noqa: F401  # arms the patch on import
            finally:
                running = False
    except Exception as exc:  # a startup hook must never stop the interpreter
        import contextlib

        with contextlib.suppress(Exception):
            sys.stderr.write(f"starlette_shield_patch: startup hook failed, nothing patched: {exc!r}\n")
