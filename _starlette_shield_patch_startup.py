"""STARLETTE_SHIELD_PATCH: its values, what each means, and what an activation does with it.

The one module that reads the variable. starlette_shield_patch.pth runs `startup()` at interpreter
startup when the variable is set; the package asks `decide()` at every activation. A top-level
module, so that the startup hook can read the variable without importing the package (which
arms the patch on import); it imports nothing beyond os and sys until it must.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "STARLETTE_SHIELD_PATCH"


class Value:
    """One kind of value of the variable: the spellings that mean it, and what it does."""

    __slots__ = ("kind", "meaning", "spellings")

    def __init__(self, kind: str, spellings: tuple[str, ...], meaning: str) -> None:
        self.kind = kind
        self.spellings = spellings
        self.meaning = meaning


# Case-insensitive, surrounding whitespace ignored. The README's table and the doctor say these.
VALUES = (
    Value(
        "unset",
        ("",),
        "nothing at startup; `import starlette_shield_patch` applies the patch (version guard)",
    ),
    Value(
        "on",
        ("1", "true", "yes", "on"),
        "armed at interpreter startup in every process of this environment (version guard)",
    ),
    Value(
        "start-only",
        ("start-only",),
        "as on, with the response-start fix alone: work after the response is cancelled and errors "
        "come out as the release makes them, as unpatched",
    ),
    Value(
        "without-errors",
        ("without-errors",),
        "as on, without the errors fix: errors come out of a layer as the release makes them",
    ),
    Value(
        "without-pass-through",
        ("without-pass-through",),
        "as on, without the pass-through fix: what a layer passes on (a body the dispatch read, "
        "empty chunks, template info, files) and url_for in a dispatch are as the release makes them",
    ),
    Value(
        "off",
        ("0", "false", "no", "off"),
        "kill switch: nothing is patched, not at startup, not by an import, not by apply()",
    ),
    Value("force", ("force",), "armed at interpreter startup and applied whatever the starlette version"),
    Value(
        "extended",
        ("extended",),
        "as on, and starlette 0.21.0 - 0.27.x (FastAPI 0.87.0 - 0.106.0) patched too, which the version "
        "guard otherwise leaves alone; combines with the values above but off, after a comma: "
        "`extended,without-errors`",
    ),
    Value("invalid", (), "not a known value: one warning on stderr, then as if unset"),
)
MEANINGS = {value.kind: value.meaning for value in VALUES}
ACCEPTED = (
    ", ".join(spelling for value in VALUES[1:] for spelling in value.spellings)
    + ", extended with any of them but off (extended,without-errors), or unset"
)
ARMS_AT_STARTUP = ("on", "start-only", "without-errors", "without-pass-through", "force")
EXTENDED = "extended"  # the opt-in for 0.21.0 - 0.27.x: a value alone, or beside one after a comma
IMPORT = "import starlette_shield_patch"  # the activation that the variable may take over

running = False  # True while the startup hook imports the package
_started = False  # the hook ran: site.py may process a venv's .pth files twice (seen on 3.11)
_warned = False  # the warning about an unknown value is said once per process


class Switch:
    """What the variable says: a kind of VALUES, the raw value, and whether it opts in to 0.21.0 -
    0.27.x (`extended`, alone: kind "on")."""

    __slots__ = ("extended", "kind", "raw")

    def __init__(self, kind: str, raw: str, extended: bool = False) -> None:
        self.kind = kind
        self.raw = raw
        self.extended = extended


class Activation:
    """What one activation (an import, apply(), the startup hook) does, once the variable is read."""

    # A slotted class, not a NamedTuple: `collections` and `typing` cost milliseconds to import.
    __slots__ = ("after_response", "errors", "extended", "force", "go_ahead", "pass_through", "via")

    def __init__(
        self,
        *,
        go_ahead: bool,
        force: bool,
        after_response: bool,
        errors: bool,
        pass_through: bool,
        via: str,
        extended: bool = False,
    ) -> None:
        self.go_ahead = go_ahead  # False: the kill switch
        self.force = force  # patch whatever the starlette version
        self.extended = extended  # patch 0.21.0 - 0.27.x too (the opt-in)
        self.after_response = after_response  # the after-response fix as well as the start fix
        self.errors = errors  # the errors fix as well
        self.pass_through = pass_through  # the pass-through fix as well
        self.via = via  # how it was activated, for status() and the log


def read_switch() -> Switch:
    """Read STARLETTE_SHIELD_PATCH."""
    raw = os.environ.get(VARIABLE, "")
    value = raw.strip().lower()
    words = [word.strip() for word in value.split(",")]
    extended = EXTENDED in words
    if extended:
        # `extended` alone is "on" for 0.21.0 - 0.27.x too; beside one other value that arms the
        # patch (`extended,without-errors`), that value for them too. Beside off, or twice: unknown.
        words.remove(EXTENDED)
        value = words[0] if len(words) == 1 else "1" if not words else "invalid"
    elif len(words) > 1:
        value = "invalid"
    for known in VALUES:
        if value in known.spellings and known.kind != EXTENDED:
            if extended and known.kind not in ARMS_AT_STARTUP:
                break
            return Switch(known.kind, raw, extended)
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


def decide(
    *, force: bool, after_response: bool, errors: bool, pass_through: bool, via: str, extended: bool = False
) -> Activation:
    """What an activation asked for `via` does, given the variable (which wins over arguments)."""
    switch = read_switch()
    warn_if_invalid(switch)
    if switch.kind == "off":
        return Activation(
            go_ahead=False,
            force=force,
            after_response=after_response,
            errors=errors,
            pass_through=pass_through,
            via=f"{VARIABLE}={switch.raw}",
        )
    if switch.kind in ARMS_AT_STARTUP and via == IMPORT:
        # The import that the startup hook made, or an import in a process the variable arms.
        when = " at interpreter startup" if running else ""
        via = f"{VARIABLE}={switch.raw.strip()}{when}"
    return Activation(
        go_ahead=True,
        force=force or switch.kind == "force",
        after_response=after_response and switch.kind != "start-only",
        errors=errors and switch.kind not in ("start-only", "without-errors"),
        pass_through=pass_through and switch.kind not in ("start-only", "without-pass-through"),
        via=via,
        extended=extended or switch.extended,
    )


def startup() -> None:
    """Arm the patch for this process when the variable asks for it; never raise."""
    global running, _started
    if _started:
        return
    _started = True
    try:
        switch = read_switch()
        warn_if_invalid(switch)
        if switch.kind in ARMS_AT_STARTUP:
            running = True
            try:
                import starlette_shield_patch  # noqa: F401  # arms the patch on import
            finally:
                running = False
    except Exception as exc:  # a startup hook must never stop the interpreter
        import contextlib

        with contextlib.suppress(Exception):
            sys.stderr.write(f"starlette_shield_patch: startup hook failed, nothing patched: {exc!r}\n")
