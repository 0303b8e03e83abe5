"""Atomic checkpoints: write to a temporary file in the same directory, fsync, then rename.

A checkpoint holds the (unwrapped) model, the optimizer, the position (epoch, batch within the epoch,
global step), every rank's RNG states, and the harness's own state (compression stages kept, the Auto
power choice, the last acknowledged checkpoint request). Files are ``ckpt-<step>.pt``; the newest
complete one wins, the older ones beyond ``keep`` are deleted. A crash mid-write leaves at most a
``.tmp`` file, which loading ignores.

Everything in a checkpoint is a tensor or plain Python data (numpy's RNG state is kept as a tensor and
numbers), so it loads with ``torch.load(weights_only=True)``, which unpickles nothing else. Checkpoints of
harness versions before that hold numpy's state as an array: loading allows numpy's array types too.
"""

from __future__ import annotations

import importlib
import os
import random
import re
import tempfile
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

__all__ = ["Checkpoint", "capture_rng", "latest_checkpoint", "load_checkpoint", "restore_rng", "save_checkpoint"]

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


@dataclass
class Checkpoint:
    """The contents of one checkpoint file."""

    model: dict[str, Any]
    optimizer: dict[str, Any] | None
    epoch: int
    batch_in_epoch: int
    step: int
    rng: list[dict[str, Any]]
    """One entry per rank (index = rank)."""
    harness: dict[str, Any]


def capture_rng() -> dict[str, Any]:
    """Return this process's RNG states (python, numpy, torch CPU and CUDA)."""
    name, key, pos, has_gauss, gauss = cast(tuple[str, Any, int, int, float], np.random.get_state(legacy=True))
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy's MT19937 state as a tensor and numbers: a checkpoint holds no numpy object (weights_only loads)
        "numpy": {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore :func:`capture_rng`'s states."""
    random.setstate(state["python"])
    saved = state["numpy"]
    if isinstance(saved, dict):
        key = saved["key"].numpy().astype(np.uint32)
        np.random.set_state((saved["bit_generator"], key, saved["pos"], saved["has_gauss"], saved["gauss"]))
    else:  # an older checkpoint: numpy's own tuple
        np.random.set_state(saved)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str, checkpoint: Checkpoint, keep: int = 2) -> str:
    """Write ``checkpoint`` atomically into ``directory``; return its path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"ckpt-{checkpoint.step:010d}.pt")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint.__dict__, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    for old in _checkpoints(directory)[:-keep] if keep > 0 else []:
        os.unlink(os.path.join(directory, old))
    return path


def _checkpoints(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    names = [n for n in os.listdir(directory) if _NAME.match(n)]
    return sorted(names, key=lambda n: int(_NAME.match(n).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(directory: str | None) -> str | None:
    """Return the path of the newest complete checkpoint in ``directory``, or None."""
    if not directory:
        return None
    names = _checkpoints(directory)
    return os.path.join(directory, names[-1]) if names else None


#: What an older checkpoint's numpy RNG state (an array) needs beyond weights_only's defaults.
_NUMPY_ARRAY_GLOBALS: list[Any] = [
    importlib.import_module("numpy._core.multiarray")._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
]


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``."""
    with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
        data = torch.load(path, map_location="cpu", weights_only=True)
    return Checkpoint(**data)
