"""The version guard: the ranges and the table of pieces, written once, read robustly."""

from __future__ import annotations

import pytest

from starlette_shield_patch._guard import PIECES, affected, parse_release
from tests.releases import AFFECTED, BETWEEN, CANCELLING


@pytest.mark.parametrize("version", AFFECTED)
def test_every_affected_release_is_patched_and_the_reason_names_its_range(version: str) -> None:
    verdict = affected(version)
    assert verdict.affected
    assert version in verdict.reason
    # after-response: on 0.28 - 0.38.2 only the wait for the layer's response (wait-sent, #3476).
    assert "after-response" in verdict.fixes
    if version in CANCELLING:
        assert "(0.15.0 <= starlette < 0.21.0, starlette#1634)" in verdict.reason
    else:
        assert "(0.28.0 <= starlette < 0.38.3, starlette#2516)" in verdict.reason


@pytest.mark.parametrize("anyio", [3, 4])
@pytest.mark.parametrize("version", BETWEEN)
def test_a_release_between_the_ranges_is_patched_only_with_the_opt_in(version: str, anyio: int) -> None:
    plain = affected(version, anyio)
    verdict = affected(version, anyio, extended=True)

    assert not plain.affected and "STARLETTE_SHIELD_PATCH=extended" in plain.reason
    assert verdict.affected and "with the opt-in" in verdict.reason
    # They do not lose the response start: no piece of that fix, no-listen under pass-through.
    assert verdict.fixes == ("after-response", "errors", "pass-through")
    names = {piece.name for piece in verdict.pieces}
    release = parse_release(version)
    assert release is not None
    expected = {"no-listen", "wait-sent", "own-context", "late-error", "read-body", "url-for"}
    expected |= {"collapse-groups", "close-streams"} if anyio == 4 else set()
    expected |= {"template-info"} if release < (0, 24, 0) else set()
    expected |= {"end-at-last"} if release >= (0, 23, 1) else set()
    assert names == expected
    # Nothing of what only 0.15 - 0.20.4 or 0.28.0 - 0.38.2 need.
    assert not names & {"start-first", "finish-runs", "close-discarded-streams", "close-request-streams"}


@pytest.mark.parametrize(
    ("version", "why"),
    [
        ("0.14.2", "predates"),
        ("0.12.0.b1", "predates"),
        ("0.21.0", "starlette#1715"),
        ("0.21.0rc1", "starlette#1715"),
        ("0.26.0.post1", "starlette#1715"),
        ("0.27.0", "starlette#1715"),
        ("0.38.3", "starlette#2620"),
        ("0.38.3rc1", "starlette#2620"),
        ("1.10.0", "starlette#2620"),
    ],
)
def test_releases_outside_the_range_are_left_alone(version: str, why: str) -> None:
    verdict = affected(version)
    assert not verdict.affected
    assert verdict.readable
    assert why in verdict.reason and version in verdict.reason


@pytest.mark.parametrize(
    "version", ["0.20.4.post1", "0.20.4+corp.7", "0.20.4.dev3", "v0.17.1", "0.32.0.post1", "0.38.2+corp.1"]
)
def test_suffixes_count_as_their_release(version: str) -> None:
    assert affected(version).affected


@pytest.mark.parametrize("version", [None, "", "banana", "0.20.4 beta", "..."])
def test_unreadable_versions_are_left_alone(version: str | None) -> None:
    verdict = affected(version)
    assert not verdict.affected
    assert not verdict.readable


@pytest.mark.parametrize(
    ("version", "release"),
    [
        ("0.20.4", (0, 20, 4)),
        ("0.26.0.post1", (0, 26, 0)),
        ("0.12.0.b1", (0, 12, 0)),
        ("1.0", (1, 0, 0)),
        ("2", (2, 0, 0)),
        ("0.20.4.1", (0, 20, 4)),
        ("0.20.4+local.1", (0, 20, 4)),
        ("0.15.0rc2", (0, 15, 0)),
    ],
)
def test_the_release_segment_is_read_from_any_pep440_version(
    version: str, release: tuple[int, int, int]
) -> None:
    assert parse_release(version) == release


def expected_pieces(version: str, anyio_major: int) -> set[str]:
    """What each release has, written out from reading its base.py (see the README's table)."""
    release = parse_release(version)
    assert release is not None
    first_range = release < (0, 21, 0)
    # 0.31 - 0.38.2 collapse every group of one themselves, the app's own too, with any anyio
    # (starlette#2830).
    groups = (anyio_major == 4 and release >= (0, 19, 0)) or release >= (0, 31, 0)
    # 0.38.3 (#2620) stopped call_next's response from listening for the disconnect.
    pieces = {"start-first", "no-listen"}
    pieces |= {"finish-runs"} if first_range else set()
    pieces |= {"wait-sent"}  # after its last body message the inner app waits for the layer (1.7.0)
    pieces |= {"drop-broken-send", "own-error"} if release < (0, 17, 0) else set()  # no app_exc yet
    pieces |= {"body-error"} if release < (0, 19, 0) else set()  # body_stream raises from 0.19.0
    pieces |= {"own-context"} if release >= (0, 17, 0) else set()  # call_next raises app_exc again
    pieces |= {"collapse-groups"} if groups else set()
    pieces |= {"close-streams"} if anyio_major == 4 and release >= (0, 19, 0) else set()
    # 0.28.0 on close call_next's receiving stream once the response is sent; 0.19 - 0.20.4 do
    # not when the dispatch answers by itself.
    pieces |= (
        {"close-discarded-streams"} if anyio_major == 4 and (0, 19, 0) <= release < (0, 21, 0) else set()
    )
    pieces |= {"late-error"} if release >= (0, 28, 0) else set()
    # 0.28.0 - 0.38.2's wrapped_receive leaves a request.stream() unfinished per chunk (#3628).
    pieces |= {"close-request-streams"} if release >= (0, 28, 0) else set()
    # pass-through: 0.28.0 hands the body on (#1692); 0.20.1 drops empty chunks (#1609); 0.24.0
    # understands the debug extension (#1991); 0.36.0 - 0.38.0 send pathsend; 0.29.0 ends the
    # body at the last message (#2194); url_for needs the router (#2672, 0.39.2).
    pieces |= {"read-body", "template-info"} if first_range else set()
    pieces |= {"skip-empty-chunks"} if release < (0, 20, 1) else set()
    pieces |= {"file-body"} if (0, 36, 0) <= release < (0, 38, 1) else set()
    # 0.15.0 - 0.20.0 and 0.28.0 end call_next's body only when its stream closes (0.20.1 and
    # 0.29.0 stop at the last message).
    pieces |= {"end-at-last"} if release < (0, 20, 1) or release == (0, 28, 0) else set()
    pieces |= {"url-for"}
    return pieces


@pytest.mark.parametrize("anyio_major", [3, 4], ids=["anyio-3", "anyio-4"])
@pytest.mark.parametrize("version", AFFECTED)
def test_each_release_gets_the_pieces_it_needs_with_its_anyio(version: str, anyio_major: int) -> None:
    verdict = affected(version, anyio_major)

    assert {piece.name for piece in verdict.pieces} == expected_pieces(version, anyio_major)


@pytest.mark.parametrize("version", ["0.14.2", "0.21.0", "0.27.0", "0.38.3", "1.10.0"])
def test_no_piece_outside_the_ranges(version: str) -> None:
    assert affected(version, 3).pieces == affected(version, 4).pieces == ()


def test_every_piece_names_a_fix_and_an_upstream_issue() -> None:
    for piece in PIECES:
        assert piece.fix in ("response-start", "after-response", "errors", "pass-through")
        assert piece.why.startswith("starlette#")
        assert piece.first < piece.fixed
