"""The one place that decides whether a starlette release needs the shim."""

from __future__ import annotations

import re
from typing import NamedTuple


class AffectedRange(NamedTuple):
    """Releases with the bug: first <= release < fixed."""

    first: tuple[int, int, int]
    fixed: tuple[int, int, int]
    issue: str  # the upstream issue
    fix: str  # the upstream pull request that fixed it
    # The layer cancels its inner app once its response is sent (starlette#1438): the
    # after-response fix applies.
    cancels_inner_app: bool

    @property
    def text(self) -> str:
        first, fixed = (".".join(map(str, release)) for release in (self.first, self.fixed))
        return f"{first} <= starlette < {fixed}, {self.issue}"


AFFECTED_RANGES = (
    # starlette#1157 (0.15.0) moved BaseHTTPMiddleware onto anyio; #1715 (0.21.0) stopped
    # cancelling the inner app, which fixed "No response returned." on disconnect too.
    AffectedRange((0, 15, 0), (0, 21, 0), "starlette#1634", "starlette#1715", cancels_inner_app=True),
    # #1692 (0.28.0, the request body cache) brought the error back for four or more layers;
    # #2620 (0.38.3) stopped call_next's response from listening for the disconnect.
    AffectedRange((0, 28, 0), (0, 38, 3), "starlette#2516", "starlette#2620", cancels_inner_app=False),
)
AFFECTED_RANGE_TEXT = " and ".join(affected_range.text for affected_range in AFFECTED_RANGES)

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
    cancels_inner_app: bool = False  # see AffectedRange


def parse_release(version: str) -> tuple[int, int, int] | None:
    """Return (major, minor, micro) of a version string, or None when it cannot be read."""
    match = _RELEASE.match(version)
    if match is None:
        return None
    major, minor, micro = match.groups()
    return int(major), int(minor or 0), int(micro or 0)


def affected(version: str | None) -> Verdict:
    """Say whether starlette `version` has a BaseHTTPMiddleware bug that the shim fixes."""
    if version is None:
        return Verdict(False, "starlette does not declare its version", readable=False)
    release = parse_release(version)
    if release is None:
        return Verdict(False, f"starlette version {version!r} cannot be parsed", readable=False)
    for affected_range in AFFECTED_RANGES:
        if affected_range.first <= release < affected_range.fixed:
            return Verdict(
                True,
                f"starlette {version} is affected ({affected_range.text})",
                captures_inner_errors=release >= (0, 17, 0),
                cancels_inner_app=affected_range.cancels_inner_app,
            )
    first, second = AFFECTED_RANGES
    if release < first.first:
        return Verdict(False, f"starlette {version} predates the anyio rewrite (starlette#1157)")
    if release < second.first:
        return Verdict(False, f"starlette {version} already has the upstream fix ({first.fix})")
    return Verdict(False, f"starlette {version} already has the upstream fixes ({first.fix}, {second.fix})")
