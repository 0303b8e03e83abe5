import os
import random
from pathlib import Path

import torch

from etj_workload import checkpoint as ck


def make(step: int) -> ck.Checkpoint:
    return ck.Checkpoint({"w": torch.tensor([float(step)])}, None, 0, step, step, [ck.capture_rng()], {"k": step})


def test_save_is_atomic_and_latest_wins(tmp_path: Path) -> None:
    (tmp_path / ".ckpt-junk.tmp").write_bytes(b"half a file")  # a crash mid-write leaves only this
    assert ck.latest_checkpoint(str(tmp_path)) is None
    for step in (5, 10, 20):
        ck.save_checkpoint(str(tmp_path), make(step), keep=2)
    latest = ck.latest_checkpoint(str(tmp_path))
    assert latest is not None and latest.endswith("ckpt-0000000020.pt")
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("ckpt-")) == [
        "ckpt-0000000010.pt",
        "ckpt-0000000020.pt",
    ]
    loaded = ck.load_checkpoint(latest)
    assert loaded.step == 20 and loaded.harness == {"k": 20} and torch.equal(loaded.model["w"], torch.tensor([20.0]))


def test_rng_round_trip() -> None:
    state = ck.capture_rng()
    first = (random.random(), torch.rand(3))
    ck.restore_rng(state)
    second = (random.random(), torch.rand(3))
    assert first[0] == second[0] and torch.equal(first[1], second[1])


def test_no_directory_means_no_checkpoint() -> None:
    assert ck.latest_checkpoint(None) is None
    assert ck.latest_checkpoint("/nonexistent/dir") is None
