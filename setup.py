"""Metadata lives in setup.cfg. This file only ships starlette_shield_patch.pth at the root of
the wheel (regular and editable), where site.py runs it at interpreter startup."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "starlette_shield_patch.pth"


class build_py_with_pth(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file(PTH, str(Path(self.build_lib, PTH)))

    def get_outputs(self, include_bytecode: Any = 1) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH))]


cmdclass: dict[str, Any] = {"build_py": build_py_with_pth}

try:
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # setuptools < 64 has no PEP 660 editable wheels
    pass
else:

    class editable_wheel_with_pth(editable_wheel):
        def _run_build_commands(self, dist_name: str, unpacked_wheel: str, *args: Any) -> Any:
            result = super()._run_build_commands(dist_name, unpacked_wheel, *args)  # type: ignore[misc]
            shutil.copy(PTH, Path(unpacked_wheel, PTH))
            return result

    cmdclass["editable_wheel"] = editable_wheel_with_pth

setup(cmdclass=cmdclass)
