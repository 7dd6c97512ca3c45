"""The one place that decides whether a starlette release needs the shim, and which pieces of it."""

from __future__ import annotations

import re
from typing import NamedTuple

from ._patch import AFTER_RESPONSE, ERRORS, FIXES, PASS_THROUGH, RESPONSE_START


class AffectedRange(NamedTuple):
    """Releases with the bug: first <= release < fixed."""

    first: tuple[int, int, int]
    fixed: tuple[int, int, int]
    issue: str  # the upstream issue
    fix: str  # the upstream pull request that fixed it

    @property
    def text(self) -> str:
        first, fixed = (".".join(map(str, release)) for release in (self.first, self.fixed))
        return f"{first} <= starlette < {fixed}, {self.issue}"


AFFECTED_RANGES = (
    # starlette#1157 (0.15.0) moved BaseHTTPMiddleware onto anyio; #1715 (0.21.0) stopped
    # cancelling the inner app, which fixed "No response returned." on disconnect too.
    AffectedRange((0, 15, 0), (0, 21, 0), "starlette#1634", "starlette#1715"),
    # #1692 (0.28.0, the request body cache) brought the error back for four or more layers;
    # #2620 (0.38.3) stopped call_next's response from listening for the disconnect.
    AffectedRange((0, 28, 0), (0, 38, 3), "starlette#2516", "starlette#2620"),
)
AFFECTED_RANGE_TEXT = " and ".join(affected_range.text for affected_range in AFFECTED_RANGES)
FIRST, SECOND = AFFECTED_RANGES
# Between them, the releases that have #1715 and none of #1692 (the request body cache, 0.28.0):
# a dispatch that reads the body leaves the inner app waiting for it, errors come out as groups,
# and most of what the shim fixes on 0.28.0 - 0.38.2. They do not lose the response start, so the
# guard leaves them alone unless the activation opts in (`extended`).
BETWEEN = AffectedRange(FIRST.fixed, SECOND.first, "starlette#1692", "starlette#1692")
EXTENDED_HOW = "STARLETTE_SHIELD_PATCH=extended or apply(extended=True)"


class Piece(NamedTuple):
    """One piece of the request path: the fix it belongs to and the releases (and anyio) that need it."""

    name: str
    fix: str
    first: tuple[int, int, int]
    fixed: tuple[int, int, int]  # first <= release < fixed
    anyio: int  # only with this anyio major; 0: with any
    why: str


# The one table: which releases, with which anyio, need which piece. Each piece is one piece of
# code in the _shield module of its fix, under the same name; the fixes a user turns off take
# their pieces with them.
PIECES = (
    Piece("start-first", RESPONSE_START, FIRST.first, FIRST.fixed, 0, "starlette#1634"),
    Piece("start-first", RESPONSE_START, SECOND.first, SECOND.fixed, 0, "starlette#2516"),
    # call_next's response does not listen for the disconnect, as 0.38.3 and later: upstream's
    # fix of #2516 (#2620). On 0.15 - 0.20.4 the listener also stopped the layer at a disconnect,
    # and with it the inner app's work, before its body ended: there it is the after-response fix.
    Piece("no-listen", AFTER_RESPONSE, FIRST.first, FIRST.fixed, 0, "starlette#2620"),
    Piece("no-listen", RESPONSE_START, SECOND.first, SECOND.fixed, 0, "starlette#2620"),
    # On 0.21.0 - 0.27.x (with the opt-in) it loses no start: call_next's response listens for
    # the disconnect and takes it from the receive that it shares with the inner app, which then
    # never hears it from a server that says it once; it is what passes through a layer there.
    Piece("no-listen", PASS_THROUGH, BETWEEN.first, BETWEEN.fixed, 0, "starlette#2620"),
    # 0.15.0 and 0.16.0 do not capture the inner app's errors: a send that fails because the layer
    # stopped reading its body (BrokenResourceError) would end the whole request.
    Piece("drop-broken-send", RESPONSE_START, (0, 15, 0), (0, 17, 0), 0, "starlette#1262"),
    Piece("finish-runs", AFTER_RESPONSE, FIRST.first, FIRST.fixed, 0, "starlette#1438"),
    # The inner app's work after its response (background tasks) starts only once the layer has
    # sent its response, not when its last body message reaches call_next (1.7.0). It is about
    # when the work after the response runs, as finish-runs: the after-response fix.
    Piece("wait-sent", AFTER_RESPONSE, FIRST.first, FIRST.fixed, 0, "starlette#3476"),
    Piece("wait-sent", AFTER_RESPONSE, BETWEEN.first, SECOND.fixed, 0, "starlette#3476"),
    # call_next raises the inner app's own error, not "No response returned." beside it (0.17.0).
    Piece("own-error", ERRORS, (0, 15, 0), (0, 17, 0), 0, "starlette#1262"),
    # A streamed body that fails mid-body raises its error (0.19.0).
    Piece("body-error", ERRORS, (0, 15, 0), (0, 19, 0), 0, "starlette#1459"),
    # anyio 4 task groups wrap every error in an ExceptionGroup, one level per layer (0.31.0).
    Piece("collapse-groups", ERRORS, (0, 19, 0), FIRST.fixed, 4, "starlette#2211"),
    Piece("collapse-groups", ERRORS, BETWEEN.first, (0, 31, 0), 4, "starlette#2211"),
    # 0.31 - 0.38.2 collapse a group of one that the app raised itself too, with any anyio (1.3.0
    # keeps it).
    Piece("collapse-groups", ERRORS, (0, 31, 0), SECOND.fixed, 0, "starlette#2830"),
    # An error comes out with anyio.EndOfStream or the layer's group as its context, its own
    # lost (0.49.0); 0.15 and 0.16 do not raise it again.
    Piece("own-context", ERRORS, (0, 17, 0), FIRST.fixed, 0, "starlette#2976"),
    Piece("own-context", ERRORS, BETWEEN.first, SECOND.fixed, 0, "starlette#2976"),
    # An error raised after the response reaches the server (0.46.0); on 0.15 - 0.20 the runs
    # that finish after the response keep theirs already.
    Piece("late-error", ERRORS, BETWEEN.first, SECOND.fixed, 0, "starlette#2812"),
    # anyio 4 warns about the memory streams that call_next leaves open on an error or a
    # cancellation (0.45.1), and on 0.19 - 0.20.4 also when the dispatch answers by itself.
    Piece("close-streams", ERRORS, (0, 19, 0), FIRST.fixed, 4, "starlette#2813"),
    Piece("close-streams", ERRORS, BETWEEN.first, SECOND.fixed, 4, "starlette#2813"),
    Piece("close-discarded-streams", ERRORS, (0, 19, 0), FIRST.fixed, 4, "starlette#2813"),
    # The inner app's receive leaves a request.stream() unfinished per chunk; trio warns when the
    # collector finalizes it ("Exception ignored in: <async_generator ...>"), once per layer (1.8.0).
    Piece("close-request-streams", ERRORS, SECOND.first, SECOND.fixed, 0, "starlette#3628"),
    # A dispatch that read the request body leaves the inner app waiting for it (0.28.0 hands it on).
    Piece("read-body", PASS_THROUGH, FIRST.first, FIRST.fixed, 0, "starlette#1692"),
    Piece("read-body", PASS_THROUGH, BETWEEN.first, BETWEEN.fixed, 0, "starlette#1692"),
    # Empty body chunks go on as chunks of their own, so GZip above a layer compresses an empty answer.
    Piece("skip-empty-chunks", PASS_THROUGH, (0, 15, 0), (0, 20, 1), 0, "starlette#1609"),
    # call_next asserts that the start comes first: the debug extension's template info breaks it.
    Piece("template-info", PASS_THROUGH, FIRST.first, (0, 24, 0), 0, "starlette#1991"),
    # FileResponse sends http.response.pathsend where the server offers it; call_next asserts a
    # body. As 1.10.0, the message passes through the layer to the server.
    Piece("file-body", PASS_THROUGH, (0, 36, 0), (0, 38, 1), 0, "starlette#2649"),
    # request.url_for in a dispatch needs scope["router"], which the router sets only below it.
    Piece("url-for", PASS_THROUGH, FIRST.first, FIRST.fixed, 0, "starlette#2672"),
    Piece("url-for", PASS_THROUGH, BETWEEN.first, SECOND.fixed, 0, "starlette#2672"),
    # The layer's body ends only when the inner app returns, after its background tasks (0.29.0).
    # 0.23.1 dropped the end at more_body=False (0.20.1) again.
    Piece("end-at-last", PASS_THROUGH, (0, 23, 1), (0, 29, 0), 0, "starlette#2194"),
    # The layer's body ends at the inner app's last message, not one receive later when its
    # stream closes (0.20.1): that receive let another request's task send first (1.10.0's
    # test_do_not_block_on_background_tasks, 0.15.0 - 0.20.0).
    Piece("end-at-last", AFTER_RESPONSE, (0, 15, 0), (0, 20, 1), 0, "starlette#1609"),
    # wait-sent holds the inner app's last message until the layer's response is sent, and 0.28.0
    # ends the layer's body only when the inner app returns: they would wait for each other.
    Piece("end-at-last", AFTER_RESPONSE, (0, 23, 1), (0, 29, 0), 0, "starlette#3476"),
)


def forced_pieces() -> tuple[Piece, ...]:
    """What apply(force=True) runs outside the ranges: the response start fix alone."""
    return PIECES[:1]


# The release segment of a PEP 440 version; pre, post, dev and local parts are ignored, so
# "0.20.4.post1" and "0.20.4+corp.1" count as 0.20.4 and "0.21.0rc1" as 0.21.0 (it carries the fix).
_RELEASE = re.compile(
    r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:\.\d+)*(?:[-_.+!]?[a-z0-9][a-z0-9.+_-]*)?\s*$", re.I
)


class Verdict(NamedTuple):
    """Whether a starlette version needs the shim, why, and the pieces it needs with that anyio."""

    affected: bool
    reason: str
    readable: bool = True
    pieces: tuple[Piece, ...] = ()

    @property
    def fixes(self) -> tuple[str, ...]:
        """The fixes this release needs, in the order of FIXES."""
        return tuple(fix for fix in FIXES if any(piece.fix == fix for piece in self.pieces))


def parse_release(version: str) -> tuple[int, int, int] | None:
    """Return (major, minor, micro) of a version string, or None when it cannot be read."""
    match = _RELEASE.match(version)
    if match is None:
        return None
    major, minor, micro = match.groups()
    return int(major), int(minor or 0), int(micro or 0)


def pieces_for(release: tuple[int, int, int], anyio_major: int) -> tuple[Piece, ...]:
    """The pieces of PIECES that a release needs with an anyio major version."""
    return tuple(
        piece for piece in PIECES if piece.first <= release < piece.fixed and piece.anyio in (0, anyio_major)
    )


def affected(version: str | None, anyio_major: int = 4, extended: bool = False) -> Verdict:
    """Say whether starlette `version` has a BaseHTTPMiddleware bug that the shim fixes; with
    `extended`, 0.21.0 - 0.27.x (BETWEEN) count too."""
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
                pieces=pieces_for(release, anyio_major),
            )
    if release < FIRST.first:
        return Verdict(False, f"starlette {version} predates the anyio rewrite (starlette#1157)")
    if release < SECOND.first:
        if extended:
            reason = f"starlette {version} is affected ({BETWEEN.text} and others), with the opt-in"
            return Verdict(True, reason, pieces=pieces_for(release, anyio_major))
        return Verdict(
            False,
            f"starlette {version} already has the upstream fix ({FIRST.fix}); its other defects "
            f"({BETWEEN.issue} and others) are fixed with the opt-in, {EXTENDED_HOW}",
        )
    return Verdict(False, f"starlette {version} already has the upstream fixes ({FIRST.fix}, {SECOND.fix})")
