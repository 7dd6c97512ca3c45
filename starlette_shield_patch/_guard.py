"""The one place that decides whether a starlette release needs the shim."""

from __future__ import annotations

import re
from typing import NamedTuple

# starlette#1157 (0.15.0) moved BaseHTTPMiddleware onto anyio; starlette#1715 (0.21.0) fixed
# "No response returned." on disconnect. Only the releases in between need the shim.
AFFECTED_RANGE: tuple[tuple[int, int, int], tuple[int, int, int]] = ((0, 15, 0), (0, 21, 0))
AFFECTED_RANGE_TEXT = "0.15.0 <= starlette < 0.21.0"

# The release segment of a PEP 440 version; pre, post, dev and local parts are ignored, so
# "0.20.4.post1" and "0.20.4+corp.1" count as 0.20.4 and "0.21.0rc1" as 0.21.0 (it carries the fix).
_RELEASE = re.compile(
    r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:\.\d+)*(?:[-_.+!]?[a-z0-9][a-z0-9.+_-]*)?\s*$", re.I
)


class Verdict(NamedTuple):
    """Whether a starlette version needs the shim, and why."""

    affected: bool
    reason: str
    readable: bool = True
    # 0.17.0 began to capture the inner app's errors in call_next; 0.15.0 and 0.16.0 let a send
    # after the layer stopped reading its body (BrokenResourceError) end the whole request.
    captures_inner_errors: bool = True


def parse_release(version: str) -> tuple[int, int, int] | None:
    """Return (major, minor, micro) of a version string, or None when it cannot be read."""
    match = _RELEASE.match(version)
    if match is None:
        return None
    major, minor, micro = match.groups()
    return int(major), int(minor or 0), int(micro or 0)


def affected(version: str | None) -> Verdict:
    """Say whether starlette `version` has the BaseHTTPMiddleware disconnect bug."""
    if version is None:
        return Verdict(False, "starlette does not declare its version", readable=False)
    release = parse_release(version)
    if release is None:
        return Verdict(False, f"starlette version {version!r} cannot be parsed", readable=False)
    first_affected, first_fixed = AFFECTED_RANGE
    if release < first_affected:
        return Verdict(False, f"starlette {version} predates the anyio rewrite (starlette#1157)")
    if release >= first_fixed:
        return Verdict(False, f"starlette {version} already has the upstream fix (starlette#1715)")
    reason = f"starlette {version} is affected ({AFFECTED_RANGE_TEXT})"
    return Verdict(True, reason, captures_inner_errors=release >= (0, 17, 0))
