"""The harness's part of a framework's checkpoint: a small JSON file next to the framework's own files.

A framework saves the model, the optimizer, the scheduler and its loop's position in its own format; the
harness adds what only it knows (:meth:`~etj_workload.harness.Harness.harness_state`: the compression stages
kept and their results, the Auto power choice, the last checkpoint request acknowledged, the accuracy) and
the step it was saved at. It is plain JSON, read before the framework loads anything (a kept prune stage's
structure must exist before the weights are loaded into it) and without unpickling.

The file is written after the framework's checkpoint, atomically (temporary file, fsync, rename): a
checkpoint without it is incomplete to the harness and is never resumed from. Helpers here are shared by
:mod:`~etj_workload.integrations.hf` and :mod:`~etj_workload.integrations.lightning`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Sidecar", "read_sidecar", "within", "write_sidecar"]

#: The format of the file (a key of its own, so a later harness can tell).
FORMAT = "etj-harness/v1"


@dataclass(frozen=True)
class Sidecar:
    """The harness's part of one checkpoint."""

    step: int
    epoch: int
    harness: dict[str, Any]


def write_sidecar(path: str | os.PathLike[str], *, step: int, epoch: int, harness: dict[str, Any]) -> None:
    """Write the harness's part of a checkpoint to ``path`` atomically."""
    target = Path(path)
    body = json.dumps({"format": FORMAT, "step": step, "epoch": epoch, "harness": harness}, indent=1)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_sidecar(path: str | os.PathLike[str]) -> Sidecar | None:
    """Read a file :func:`write_sidecar` wrote; None when it is missing or not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("harness"), dict):
        return None
    return Sidecar(step=int(data["step"]), epoch=int(data["epoch"]), harness=data["harness"])


def within(path: str | os.PathLike[str], directory: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``directory`` or below it (both resolved)."""
    resolved, base = Path(path).resolve(), Path(directory).resolve()
    return resolved == base or resolved.is_relative_to(base)
