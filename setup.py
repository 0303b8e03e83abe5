"""Build hook: the wheel carries the CRDs, the example jobs and the chart's RBAC helpers as package data.

They live once in the repository (``crds/``, ``workloads/examples/``, the chart); ``build_py`` copies them into
``etj_operator/_data/`` of the build, so that an installed wheel finds them (``etj_operator.packagedata``). An
editable install reads them from the repository instead and copies nothing. Everything else about the build is
in pyproject.toml; MANIFEST.in puts the same files into the sdist, so a wheel built from it has them too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: Folder under etj_operator/_data -> (folder of the source tree, the files of it to copy).
PACKAGED: dict[str, tuple[str, str]] = {
    "crds": ("crds", "*.yaml"),
    "examples": ("workloads/examples", "*"),
    "chart/templates": ("charts/efficient-training-operator/templates", "_helpers.tpl"),
}


class BuildPyWithData(build_py):
    """``build_py`` that also copies :data:`PACKAGED` into the package (not for editable installs)."""

    def run(self) -> None:
        """Build the packages, then copy the package data next to them."""
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        for target, (source, pattern) in PACKAGED.items():
            files = sorted(p for p in (root / source).glob(pattern) if p.is_file())
            if not files:
                raise SystemExit(f"setup.py: no {pattern} in {source}/: the wheel would lack its package data")
            destination = Path(self.build_lib) / "etj_operator" / "_data" / target
            destination.mkdir(parents=True, exist_ok=True)
            for file in files:
                shutil.copyfile(file, destination / file.name)


setup(cmdclass={"build_py": BuildPyWithData})
