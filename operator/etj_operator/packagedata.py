"""Files the package uses besides its code: the CRDs, the example jobs and the chart's RBAC helpers.

An installed wheel carries them as package data under ``etj_operator/_data/`` (setup.py copies them there at
build time). A source checkout (the tests, an editable install) has no such folder and reads them where they
live in the repository. :func:`data_path` names whichever exists, the package data first, so the commands
behave the same from a wheel and from the repository, whatever the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["PACKAGE_DATA", "REPOSITORY_FOLDERS", "data_path"]

#: The package data folder of an installed wheel.
PACKAGE_DATA: Final = Path(__file__).resolve().parent / "_data"
#: Each packaged folder and the repository folder it is copied from (setup.py's PACKAGED says the same).
REPOSITORY_FOLDERS: Final = {
    "crds": "crds",
    "examples": "workloads/examples",
    "chart": "charts/efficient-training-operator",
}
_REPOSITORY: Final = Path(__file__).resolve().parents[2]


def data_path(folder: str, *parts: str) -> Path:
    """A packaged file or folder: ``data_path("crds")``, ``data_path("examples", "digits-ddp.yaml")``.

    The wheel's copy when it is there, else the repository's; when neither exists, the wheel's path (so that
    an error names where the file was looked for).
    """
    if folder not in REPOSITORY_FOLDERS:
        raise KeyError(f"no packaged folder {folder!r} (one of {', '.join(REPOSITORY_FOLDERS)})")
    packaged = PACKAGE_DATA / folder
    if packaged.is_dir():
        return packaged.joinpath(*parts)
    source = _REPOSITORY / REPOSITORY_FOLDERS[folder]
    if source.is_dir():
        return source.joinpath(*parts)
    return packaged.joinpath(*parts)
