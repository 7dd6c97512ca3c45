"""Activation without code changes, in fresh virtual environments built from the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from demo.harness import clean_environment
from tests.asgi import (
    ERRORS_COME_OUT_CHANGED,
    ERRORS_FIX_APPLIES,
    STARLETTE_AFFECTED,
    STARLETTE_BETWEEN,
    STARLETTE_CANCELS,
    STARLETTE_HAS_ANYIO,
    body_ends_at_last_message,
)
from tests.fresh import ROOT, copy_of_the_sources, make_venv, only_json_line, uv, version

pytestmark = [
    pytest.mark.venvs,
    pytest.mark.skipif(not STARLETTE_HAS_ANYIO, reason="needs an anyio BaseHTTPMiddleware"),
]

# Never imports starlette_shield_patch: whatever patches, patches without a code change.
SCRIPT = """
import json, sys
before = sorted(m for m in ("starlette", "anyio", "wrapt", "starlette_shield_patch") if m in sys.modules)
import starlette.middleware.base
from scenario import (Work, answers_after, answers_then_works, client_gone_at_once, client_reads_then_closes,
                      http_scope, pass_through, run, stack)
outcome = run(stack(answers_after(), *[pass_through] * 4), client_gone_at_once, backend="asyncio",
              scope=http_scope("GET"))
work = Work()
after = run(stack(answers_then_works(work), pass_through), client_reads_then_closes(), backend="asyncio")
call = starlette.middleware.base.BaseHTTPMiddleware.__dict__["__call__"]
shim = sys.modules.get("starlette_shield_patch")  # loaded by the startup hook, if at all
print(json.dumps({"at_startup": before, "clean": outcome.clean,
                  "fixes": list(shim.status().fixes) if shim else [],
                  "no_response_returned": outcome.no_response_returned,
                  "work_done_after_response": work.ended is not None and after.response_over_at < work.ended,
                  "wrapped": type(call).__name__ != "function"}))
"""


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (tests.fresh.copy_of_the_sources says why)."""
    source = copy_of_the_sources(tmp_path_factory.mktemp("source") / "tree")
    out = tmp_path_factory.mktemp("wheel")
    uv("build", "--quiet", "--wheel", "--out-dir", str(out), str(source))
    return next(out.glob("starlette_shield_patch-*.whl"))


@pytest.fixture(scope="session")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with tests/asgi.py as scenario.py, and the release list it reads."""
    folder = tmp_path_factory.mktemp("scenario")
    shutil.copy(ROOT / "tests" / "asgi.py", folder / "scenario.py")
    (folder / "tests").mkdir()
    (folder / "tests" / "__init__.py").touch()
    shutil.copy(ROOT / "tests" / "releases.py", folder / "tests" / "releases.py")
    return folder


@pytest.fixture(scope="session")
def wheel_python(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    return make_venv(tmp_path_factory.mktemp("venv") / "venv", str(wheel))


def run_in(
    python: Path,
    scenario: Path,
    code: str = SCRIPT,
    *,
    doctor: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `code`, or with `doctor` `python -m starlette_shield_patch *doctor`, in a fresh interpreter."""
    environment = clean_environment({"PYTHONPATH": str(scenario), **(env or {})})
    # cwd is the scenario folder: the source tree must not shadow the installed wheel.
    command = ["-m", "starlette_shield_patch", *doctor] if doctor else ["-c", code]
    return subprocess.run(
        [str(python), *command], cwd=scenario, env=environment, capture_output=True, text=True, timeout=60
    )


def expect_patched(
    report: dict[str, Any],
    patched: bool,
    *,
    forced: bool = False,
    after_response: bool = True,
    pass_through: bool | None = None,
) -> None:
    assert report["wrapped"] is (patched and (STARLETTE_AFFECTED or forced))
    if STARLETTE_AFFECTED:
        assert report["clean"] is patched
        assert report["no_response_returned"] is not patched
    else:
        assert report["clean"]
    if STARLETTE_CANCELS:
        assert report["work_done_after_response"] is (patched and after_response)
    else:  # the releases of the second range do not cancel it
        # end-at-last (0.28.0) is a piece of both fixes: wait-sent needs it (starlette#3476).
        ends = patched and (after_response or pass_through is True)
        assert report["work_done_after_response"] is body_ends_at_last_message(ends)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "unset"),
        ("", "unset"),
        ("1", "on"),
        (" TRUE ", "on"),
        ("yes", "on"),
        ("On", "on"),
        ("start-only", "start-only"),
        (" Start-Only ", "start-only"),
        ("without-errors", "without-errors"),
        ("Without-Errors ", "without-errors"),
        ("without-pass-through", "without-pass-through"),
        ("0", "off"),
        ("false", "off"),
        (" NO ", "off"),
        ("off", "off"),
        ("force", "force"),
        ("FORCE", "force"),
        ("bogus", "invalid"),
        # The opt-in for 0.21.0 - 0.27.x, alone or beside one value that arms: elsewhere that value.
        ("extended", "on"),
        (" Extended , Without-Errors", "without-errors"),
        ("extended,off", "invalid"),
        ("extended,extended", "invalid"),
        ("on,start-only", "invalid"),
    ],
)
def test_each_value_of_the_variable_does_what_the_table_says(
    wheel_python: Path, scenario: Path, value: str | None, kind: str
) -> None:
    if STARLETTE_BETWEEN and "extended" in (value or "").lower() and kind != "invalid":
        pytest.skip("0.21.0 - 0.27.x opted in: test_the_opt_in_patches_a_release_between_the_ranges")
    env = {} if value is None else {"STARLETTE_SHIELD_PATCH": value}
    result = run_in(wheel_python, scenario, env=env)
    report = only_json_line(result)

    arms = kind in ("on", "start-only", "without-errors", "without-pass-through", "force")
    pass_through = kind not in ("start-only", "without-pass-through")
    after_response = kind != "start-only"
    forced = kind == "force"
    expect_patched(report, arms, forced=forced, after_response=after_response, pass_through=pass_through)
    if arms and STARLETTE_AFFECTED:
        errors = ERRORS_FIX_APPLIES and kind in ("on", "without-pass-through", "force")
        assert ("errors" in report["fixes"]) is errors, report
        assert ("pass-through" in report["fixes"]) is pass_through, report
    assert "starlette" not in report["at_startup"] and "anyio" not in report["at_startup"]
    if arms:
        assert report["at_startup"] == ["starlette_shield_patch"]  # wrapt waits for starlette
    else:
        assert report["at_startup"] == []  # unset, off or invalid: the hook imports nothing
    if kind == "invalid":
        assert result.stderr.count(f"STARLETTE_SHIELD_PATCH={value!r}") == 1, result.stderr
        assert "accepted:" in result.stderr and "force" in result.stderr
    elif kind == "force" and not STARLETTE_AFFECTED:  # forced outside the range: it says so
        assert result.stderr.count("with force=True") == 1, result.stderr
    else:
        assert result.stderr == ""


def test_the_kill_switch_beats_import_and_apply(wheel_python: Path, scenario: Path) -> None:
    code = "import starlette_shield_patch\nstarlette_shield_patch.apply(force=True)\n" + SCRIPT
    result = run_in(wheel_python, scenario, code, env={"STARLETTE_SHIELD_PATCH": "off"})

    expect_patched(only_json_line(result), False)
    assert "disabled by STARLETTE_SHIELD_PATCH=off" in result.stderr


@pytest.mark.parametrize("order", ["shim-first", "shim-after", "twice"])
def test_an_explicit_import_with_the_variable_on_patches_once(
    wheel_python: Path, scenario: Path, order: str
) -> None:
    imports = {
        "shim-first": "import starlette_shield_patch\nimport starlette.middleware.base\n",
        "shim-after": "import starlette.middleware.base\nimport starlette_shield_patch\n",
        "twice": "import starlette_shield_patch as a\nimport starlette_shield_patch as b\nb.apply()\n",
    }[order]
    on = {"STARLETTE_SHIELD_PATCH": "on"}

    expect_patched(only_json_line(run_in(wheel_python, scenario, imports + SCRIPT, env=on)), True)


# An app that sets up logging at startup, once starlette (and so the shim) is imported.
LOGGING_AFTER_STARLETTE = """
import logging, sys
import starlette.middleware.base
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s", stream=sys.stdout)
{activation}
from scenario import answers_after, client_reads_then_closes, pass_through, run, stack
for _ in range(3):
    assert run(stack(answers_after(), pass_through, pass_through), client_reads_then_closes(),
               backend="asyncio").clean
"""


@pytest.mark.parametrize("activation", ["variable", "variable-and-apply", "none"])
def test_the_first_request_logs_once_that_the_shim_is_in_force(
    wheel_python: Path, scenario: Path, activation: str
) -> None:
    """Logged when starlette is imported, the line would reach no handler of the app's: it is
    logged at the first request through a layer, once per process, never per request."""
    code = LOGGING_AFTER_STARLETTE.format(
        activation="import starlette_shield_patch\nstarlette_shield_patch.apply()"
        if activation == "variable-and-apply"
        else ""
    )
    env = {} if activation == "none" else {"STARLETTE_SHIELD_PATCH": "1"}
    result = run_in(wheel_python, scenario, code, env=env)

    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("starlette_shield_patch ")]
    if activation == "none" or not STARLETTE_AFFECTED:
        assert lines == [], result.stdout
    else:
        assert len(lines) == 1, result.stdout
        assert lines[0].startswith("starlette_shield_patch INFO in force, patched by "), lines
        assert "; fixes: response-start, " in lines[0], lines


def test_remove_undoes_startup_activation(wheel_python: Path, scenario: Path) -> None:
    code = (
        "import starlette.middleware.base\nimport starlette_shield_patch\nstarlette_shield_patch.remove()\n"
    )
    result = run_in(wheel_python, scenario, code + SCRIPT, env={"STARLETTE_SHIELD_PATCH": "1"})

    expect_patched(only_json_line(result), False)


def test_the_sitecustomize_recipe_patches(wheel_python: Path, scenario: Path, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import starlette_shield_patch\n")
    result = run_in(wheel_python, scenario, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{scenario}"})
    report = only_json_line(result)

    expect_patched(report, True)
    assert report["at_startup"] == ["starlette_shield_patch"]


def test_a_broken_wrapt_never_stops_startup_nor_starlette(
    wheel_python: Path, scenario: Path, tmp_path: Path
) -> None:
    (tmp_path / "wrapt.py").write_text("raise ImportError('wrapt is broken here')\n")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{scenario}", "STARLETTE_SHIELD_PATCH": "1"}
    result = run_in(wheel_python, scenario, env=env)

    expect_patched(only_json_line(result), False)
    assert "patching failed (ImportError: wrapt is broken here)" in result.stderr


def test_uninstall_removes_the_startup_hook(wheel: Path, scenario: Path, tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv", str(wheel))
    hooks = list((tmp_path / "venv").glob("lib/python*/site-packages/starlette_shield_patch.pth"))
    assert len(hooks) == 1
    uv("pip", "uninstall", "--quiet", "--python", str(python), "starlette-shield-patch")

    result = run_in(python, scenario, env={"STARLETTE_SHIELD_PATCH": "1"})

    assert not hooks[0].exists()
    expect_patched(only_json_line(result), False)
    assert result.stderr == ""


def test_editable_install_has_the_startup_hook(scenario: Path, tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv", "--editable", str(ROOT))

    expect_patched(only_json_line(run_in(python, scenario, env={"STARLETTE_SHIELD_PATCH": "1"})), True)
    expect_patched(only_json_line(run_in(python, scenario)), False)


@pytest.mark.parametrize(
    ("value", "fixes"),
    [(None, 2), ("1", 2), ("start-only", 1), ("0", 0)],
    ids=["unset", "on", "start-only", "off"],
)
def test_doctor_self_test_says_what_each_fix_does(
    wheel_python: Path, scenario: Path, value: str | None, fixes: int
) -> None:
    env = {} if value is None else {"STARLETTE_SHIELD_PATCH": value}
    result = run_in(wheel_python, scenario, doctor=("--self-test", "--json"), env=env)
    report = json.loads(result.stdout)
    test = report["self_test"]

    assert report["starlette"] == version("starlette")
    assert report["affected"] is STARLETTE_AFFECTED
    assert report["startup_hook"] and report["startup_hook"].endswith("starlette_shield_patch.pth")
    after_response_unpatched = "cancelled" if STARLETTE_CANCELS else "finished"
    if not STARLETTE_AFFECTED:
        assert test["without_shim"] == test["with_shim"]
        assert test["without_shim"]["response-start"] == "clean"
        assert test["without_shim"]["after-response"] == "finished"
        # 0.21.0 - 0.27.x, left alone, still wait for a body the dispatch read (starlette#1692,
        # 0.28.0), and with anyio 4 their errors come out as groups (starlette#2211, 0.31.0): said,
        # and not "ok".
        # Releases after the second range are judged as before: 0.38.3 - 0.45.x drop an error
        # raised after the response (starlette#2812, 0.46.0), which is not the shim's brief there.
        release = tuple(int(part) for part in version("starlette").split(".")[:3])
        between = (0, 21, 0) <= release < (0, 28, 0)
        left = test["defects_left"]
        assert left == {fix: test["without_shim"][fix] for fix in left}
        assert (left.get("pass-through") == "endpoint waits") is between, test
        assert set(left) <= ({"errors", "pass-through"} if between else set()), test
        assert test["ok"] is not between and result.returncode == (1 if between else 0)
        return
    assert test["without_shim"]["response-start"] == "No response returned."
    assert test["without_shim"]["after-response"] == after_response_unpatched
    if ERRORS_COME_OUT_CHANGED:
        assert test["without_shim"]["errors"] != "itself"
    # starlette#1692: 0.28.0 and later hand the body a dispatch read on by themselves.
    assert test["without_shim"]["pass-through"] == ("endpoint waits" if STARLETTE_CANCELS else "handed on")
    # after-response: finish-runs on 0.15 - 0.20.4, wait-sent (starlette#3476) on both ranges.
    every_fix = ["response-start", "after-response"]
    every_fix += ["errors"] if ERRORS_FIX_APPLIES else []
    every_fix += ["pass-through"]  # url-for has a piece on every affected release
    if fixes == 2:
        assert test["with_shim"] == {
            "response-start": "clean",
            "after-response": "finished",
            "errors": "itself",
            "pass-through": "handed on",
        }
        assert test["fixes"] == every_fix
    else:  # start-only leaves the work after the response and the errors as they were
        assert test["with_shim"]["response-start"] == ("clean" if fixes else "No response returned.")
        assert test["with_shim"]["after-response"] == after_response_unpatched
        assert test["with_shim"]["errors"] == test["without_shim"]["errors"]
        assert test["with_shim"]["pass-through"] == test["without_shim"]["pass-through"]
        assert test["fixes"] == every_fix[:fixes]
    assert test["ok"] is bool(fixes) and result.returncode == (0 if fixes else 1), result.stderr


@pytest.mark.skipif(not STARLETTE_BETWEEN, reason="the opt-in is for starlette 0.21.0 - 0.27.x")
@pytest.mark.parametrize(
    ("value", "fixes"),
    [
        ("extended", ["after-response", "errors", "pass-through"]),
        (" Extended , without-errors", ["after-response", "pass-through"]),
        ("1", []),
        ("extended,start-only", []),  # opted in, but every fix it needs turned off: left alone
        ("extended,off", []),  # not a value: a warning, then as if unset
    ],
    ids=["extended", "extended-without-errors", "on", "extended-start-only", "extended-and-off"],
)
def test_the_opt_in_patches_a_release_between_the_ranges(
    wheel_python: Path, scenario: Path, value: str, fixes: list[str]
) -> None:
    """0.21.0 - 0.27.x: patched by the variable's opt-in alone, in a fresh interpreter from the
    wheel; the doctor's scenarios show each defect without the shim and gone with it, and name
    what is left where a fix is not in force."""
    result = run_in(
        wheel_python, scenario, doctor=("--self-test", "--json"), env={"STARLETTE_SHIELD_PATCH": value}
    )
    report = json.loads(result.stdout)
    test = report["self_test"]

    assert report["affected"] is (bool(fixes) or value == "extended,start-only")
    assert test["fixes"] == fixes
    # Unpatched: the body a dispatch read never reaches the endpoint (starlette#1692).
    assert test["without_shim"]["pass-through"] == "endpoint waits"
    good = {"after-response": "finished", "errors": "itself", "pass-through": "handed on"}
    for fix, outcome in good.items():
        assert (test["with_shim"][fix] == outcome) is (
            fix in fixes or test["without_shim"][fix] == outcome
        ), test
    left = {fix for fix in good if fix not in fixes and test["without_shim"][fix] != good[fix]}
    assert set(test["defects_left"]) == left, test
    assert test["ok"] is not left and result.returncode == (1 if left else 0), result.stdout
    if fixes:
        assert "is affected" in test["shim_status"] and "with the opt-in" in test["shim_status"]
    elif value == "extended,start-only":
        assert "every fix it needs is turned off" in test["shim_status"]
    else:
        assert "left alone" in test["shim_status"] and "extended" in test["shim_status"]
    assert ("is not a value the shim knows" in result.stderr) is (value == "extended,off"), result.stderr


def test_doctor_text_names_each_line(wheel_python: Path, scenario: Path) -> None:
    result = run_in(wheel_python, scenario, doctor=("--self-test",))
    release = tuple(int(part) for part in version("starlette").split(".")[:3])
    left_alone = (0, 21, 0) <= release < (0, 28, 0)  # with the defects that the line names

    assert result.returncode == (1 if left_alone else 0), result.stderr
    names = [line.split("  ")[0] for line in result.stdout.splitlines()]
    assert names == [
        "Python", "starlette", "anyio", "wrapt", "STARLETTE_SHIELD_PATCH", "startup hook",
        "the shim would", "without the shim", "with the shim", "shim status", "fixes in force",
        *(["defects left"] if left_alone else []), "self-test",
    ]  # fmt: skip
    assert version("starlette") in result.stdout
    assert result.stdout.splitlines()[-1].endswith("defects left" if left_alone else "ok")


def test_the_docs_table_says_what_each_value_does() -> None:
    """The docs' table of the variable is the one the code has (Value.meaning), row by row."""
    import _starlette_shield_patch_startup as variable

    readme = (ROOT / "docs" / "turning-on.md").read_text()
    for value in variable.VALUES:
        spellings = ", ".join(f"`{spelling}`" for spelling in value.spellings)
        shown = {"unset": "unset or empty", "invalid": "anything else"}.get(value.kind, spellings)
        assert f"\n| {shown} | {value.meaning} |\n" in readme, value.kind


def test_a_broken_install_never_stops_startup(wheel_python: Path, scenario: Path, tmp_path: Path) -> None:
    """The startup hook imports the package; if that import fails, one line on stderr, no patch."""
    broken = tmp_path / "starlette_shield_patch"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('a half-installed package')\n")
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{scenario}", "STARLETTE_SHIELD_PATCH": "1"}

    result = run_in(wheel_python, scenario, env=env)

    expect_patched(only_json_line(result), False)
    assert result.stderr.count("startup hook failed, nothing patched") == 1, result.stderr
