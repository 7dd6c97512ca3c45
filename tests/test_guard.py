"""The version guard: one range, written once, read robustly."""

from __future__ import annotations

import pytest

from starlette_shield_patch._guard import affected, parse_release
from tests.releases import AFFECTED, CANCELLING


@pytest.mark.parametrize("version", AFFECTED)
def test_every_affected_release_is_patched_and_the_reason_names_its_range(version: str) -> None:
    verdict = affected(version)
    assert verdict.affected
    assert version in verdict.reason
    if version in CANCELLING:
        assert (
            "(0.15.0 <= starlette < 0.21.0, starlette#1634)" in verdict.reason and verdict.cancels_inner_app
        )
    else:
        assert (
            "(0.28.0 <= starlette < 0.38.3, starlette#2516)" in verdict.reason
            and not verdict.cancels_inner_app
        )


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


@pytest.mark.parametrize("version", AFFECTED)
def test_which_releases_capture_the_inner_apps_errors(version: str) -> None:
    assert affected(version).captures_inner_errors is (version not in ("0.15.0", "0.16.0"))
