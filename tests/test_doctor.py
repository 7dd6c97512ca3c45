"""What `python -m starlette_shield_patch` says in the cases the fresh venvs do not make."""

from __future__ import annotations

import json
import site
from pathlib import Path
from typing import Any

import pytest
import starlette

from starlette_shield_patch import __main__ as doctor
from starlette_shield_patch import _selftest
from tests.asgi import STARLETTE_HAS_ANYIO


def test_a_distribution_that_is_not_installed_has_no_version() -> None:
    assert doctor.installed("no-such-distribution-anywhere") is None


def test_no_startup_hook_where_none_is_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(tmp_path / "a")])
    monkeypatch.setattr(site, "getusersitepackages", lambda: str(tmp_path / "b"))

    assert doctor.startup_hook() is None


@pytest.mark.parametrize(
    ("starlette", "variable", "hook", "would"),
    [
        (None, "1", True, "nothing: starlette is not installed"),
        ("0.20.4", "1", False, "nothing at startup (no startup hook installed)"),
        (
            "0.20.4",
            "start-only",
            True,
            "in every process, when the app imports starlette, with the fixes: response-start",
        ),
        ("0.21.0", "", True, "nothing: starlette 0.21.0 already has the upstream fix"),
        (
            "0.27.0",
            "",
            True,
            "are fixed with the opt-in, STARLETTE_SHIELD_PATCH=extended or apply(extended=True); it has "
            "other defects that the shim leaves without the opt-in: no-listen (starlette#2620), wait-sent "
            "(starlette#3476), own-context (starlette#2976), late-error (starlette#2812), read-body "
            "(starlette#1692), url-for (starlette#2672), end-at-last (starlette#2194, starlette#3476); "
            "--self-test shows them",
        ),
        (
            "0.24.0",
            "extended,without-errors",
            True,
            "in every process, when the app imports starlette, with the fixes: after-response, pass-through",
        ),
        (
            "0.24.0",
            "extended,start-only",
            True,
            "nothing: every fix this release needs is turned off by "
            "STARLETTE_SHIELD_PATCH=extended,start-only",
        ),
        ("0.38.3", "", True, "already has the upstream fixes (starlette#1715, starlette#2620)"),
        ("0.21.0", "force", True, "starlette, with the fixes: response-start"),
    ],
    ids=[
        "no-starlette",
        "no-hook",
        "start-only",
        "unaffected",
        "between",
        "opted-in",
        "opted-in-start-only",
        "newer",
        "forced",
    ],
)
def test_the_doctor_says_what_the_shim_would_do(
    monkeypatch: pytest.MonkeyPatch, starlette: str | None, variable: str, hook: bool, would: str
) -> None:
    monkeypatch.setattr(doctor, "installed", lambda name: starlette if name == "starlette" else "1.0")
    monkeypatch.setattr(
        doctor, "startup_hook", lambda: "/site-packages/starlette_shield_patch.pth" if hook else None
    )
    monkeypatch.setenv("STARLETTE_SHIELD_PATCH", variable)

    said = doctor.diagnose()["would_do"]

    assert would in said
    # only 0.15 - 0.20 cancel; 0.21.0 - 0.27.x opted in wait for the response (wait-sent)
    assert "after-response" not in said or starlette in ("0.20.4", "0.24.0")
    # 0.21.0 - 0.27.x, left alone, have other defects (tests/test_activation.py runs them).
    left_alone = variable not in ("force", "extended,without-errors")
    assert ("other defects" in said) is (starlette in ("0.21.0", "0.27.0") and left_alone)


def test_without_a_self_test_it_reports_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert doctor.main([]) == 0
    text = capsys.readouterr().out
    assert doctor.main(["--json"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)

    assert any(line.startswith("the shim would") for line in text.splitlines())
    assert "self_test" not in report and report["starlette"] == starlette.__version__


def test_defects_left_are_named_and_not_ok(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a release the shim leaves alone with defects (0.21.0 - 0.27.x; tests/test_activation.py
    runs the real one in a venv), the text says which, and the self-test is not ok."""
    seen = {"response-start": "clean", "after-response": "finished", "errors": "ExceptionGroup"}
    report = {
        "without_shim": seen,
        "with_shim": seen,
        "fixes": [],
        "shim_status": "starlette 0.27.0 already has the upstream fix (starlette#1715)",
        "defects_left": {"errors": "ExceptionGroup"},
        "ok": False,
    }
    monkeypatch.setattr(doctor, "self_test", lambda: report)

    assert doctor.main(["--self-test"]) == 1
    lines = capsys.readouterr().out.splitlines()

    assert lines[-2].startswith("defects left") and "errors: ExceptionGroup; the shim leaves" in lines[-2]
    assert lines[-1].split() == ["self-test", "defects", "left"]


@pytest.mark.skipif(not STARLETTE_HAS_ANYIO, reason="needs an anyio BaseHTTPMiddleware")
def test_the_self_test_names_an_unexpected_error() -> None:
    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        raise KeyError("not the bug")

    def client(calls: int, response_over: bool) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    assert _selftest._request(endpoint, layers=1, client=client) == "KeyError"


@pytest.mark.parametrize(
    ("would", "switch", "said"),
    [
        ("nothing: starlette is not installed", "on", "nothing, as above"),
        (
            "patch BaseHTTPMiddleware.__call__ in every process",
            "on",
            "by the STARLETTE_SHIELD_PATCH it inherits",
        ),
        ("patch BaseHTTPMiddleware.__call__ once", "unset", "once the app imports starlette_shield_patch"),
    ],
    ids=["nothing", "variable", "import"],
)
def test_the_doctor_says_what_the_workers_of_each_installed_server_do(
    monkeypatch: pytest.MonkeyPatch, would: str, switch: str, said: str
) -> None:
    monkeypatch.setattr(doctor, "installed", lambda name: "20.1.0" if name == "gunicorn" else None)

    workers = doctor.workers(would, switch)

    assert list(workers) == ["gunicorn 20.1.0"]
    assert workers["gunicorn 20.1.0"].startswith("workers forked from the master")
    assert said in workers["gunicorn 20.1.0"]
