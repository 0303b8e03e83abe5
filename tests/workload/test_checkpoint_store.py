"""A CheckpointStore: the harness hands saving and resuming to a framework, in process (no ranks, no API)."""

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from etj_workload.compression import StageResult
from etj_workload.config import HarnessEnv, parse_compression_plan
from etj_workload.gpu import SimulatedGpu
from etj_workload.harness import Harness, Position, Resumed
from etj_workload.models import DigitsMlp


class Store:
    """Records each save; resumes from what it is given."""

    def __init__(self, resumed: Resumed | None = None) -> None:
        self.saves: list[tuple[int, dict[str, Any]]] = []
        self.resumed = resumed

    def save(self, harness: Harness) -> None:
        self.saves.append((harness.step, json.loads(json.dumps(harness.harness_state()))))  # plain data: JSON
        harness.checkpoint_saved(f"/framework/ckpt-{harness.step}")

    def resume(self, harness: Harness) -> Resumed | None:
        return self.resumed


PLAN = {"stages": [{"name": "p", "trigger": {"epoch": 1}, "prune": {"amount": 0.5}}], "accuracyGuard": {"maxDrop": 1}}


def harness(store: Store, checkpoint_dir: str | None = "/unused") -> Harness:
    torch.manual_seed(0)
    env = HarnessEnv(checkpoint_dir=checkpoint_dir, compression=parse_compression_plan(json.dumps(PLAN)))

    def evaluate(m: nn.Module) -> float:
        return 0.75

    return Harness(DigitsMlp(), None, evaluate=evaluate, steps_per_epoch=0, samples_per_step=8, env=env,
                   gpu=SimulatedGpu(fixed_step_seconds=0.01), install_signal_handlers=False, checkpoint_store=store)


def test_the_framework_saves_when_the_harness_would_and_gets_its_state_as_plain_data() -> None:
    store = Store()
    with harness(store) as h:
        h.train_begin()
        h.epoch_begin(0)
        for _ in range(3):
            h.step_begin()
            h.step_end(torch.tensor(1.0))
        h.epoch_end(0)  # fires the epoch-1 stage, then the epoch-end checkpoint
        h.save_checkpoint(acknowledge=7)  # an operator's request
    assert [step for step, _ in store.saves] == [3, 3]
    state = store.saves[-1][1]
    assert state["compression"]["kept"] == ["p"] and state["acknowledged_checkpoint"] == 7
    assert state["accuracy"] == 0.75
    assert h.status()["checkpoint"]["path"] == "/framework/ckpt-3" and h.status()["checkpoint"]["acknowledged"] == 7
    assert not Path("/unused").exists()  # the harness wrote no file of its own


def test_without_a_checkpoint_dir_a_request_is_acknowledged_and_nothing_saved() -> None:
    store = Store()
    with harness(store, checkpoint_dir=None) as h:
        h.train_begin()
        h.save_checkpoint(acknowledge=2)
    assert store.saves == [] and h.status()["checkpoint"]["acknowledged"] == 2


def test_resuming_restores_the_harness_state_and_the_frameworks_position() -> None:
    result = StageResult(name="p", applied=True, rolled_back=False, step=30, epoch=1, params_total=10,
                         params_nonzero=5, size_bytes_before=2, size_bytes_after=1, raw_size_bytes_before=2,
                         raw_size_bytes_after=2, accuracy_before=0.9, accuracy_after=0.9)
    kept = {"kept": ["p"], "results": [dataclasses.asdict(result)], "stopped": True}
    resumed = Resumed(path="/framework/ckpt-40", position=Position(epoch=2, batch_in_epoch=0, step=40),
                      harness={"compression": kept, "power": {"chosen_watts": 450},
                               "acknowledged_checkpoint": 3, "accuracy": 0.9})
    with harness(Store(resumed)) as h:
        h.compression.reapply_structure(h.module, kept)  # what the framework's store does before loading
        h.train_begin()
    assert (h.step, h.epoch, h.acknowledged_checkpoint, h.accuracy) == (40, 2, 3, 0.9)
    assert h.power.chosen_watts == 450  # Auto does not profile again
    assert h.should_stop and h.stop_reason == "AccuracyGuard"  # a guard that stopped the job stops it again
    assert h.status()["checkpoint"] == {"acknowledged": 3, "step": 40, "epoch": 2, "path": "/framework/ckpt-40"}


def test_the_harnesss_own_checkpoints_load_with_weights_only_and_so_do_older_ones(tmp_path: Path) -> None:
    import random

    import numpy as np

    from etj_workload import checkpoint as ckpt

    with harness(Store(), checkpoint_dir=None) as h:  # no store: the harness's own files
        h.checkpoint_store = None
        h.env = dataclasses.replace(h.env, checkpoint_dir=str(tmp_path))
        h.train_begin()
        h.save_checkpoint()
    [path] = tmp_path.glob("ckpt-*.pt")
    data = torch.load(path, weights_only=True)  # tensors and plain data only: no allowlist needed
    assert set(data) == {"model", "optimizer", "epoch", "batch_in_epoch", "step", "rng", "harness"}
    state = np.random.get_state()
    ckpt.restore_rng(data["rng"][0])  # numpy's state round-trips through its tensor form
    assert np.array_equal(np.random.get_state()[1], data["rng"][0]["numpy"]["key"].numpy().astype(np.uint32))
    np.random.set_state(state)
    # a checkpoint of an earlier harness: numpy's state as numpy's own tuple (an array inside)
    data["rng"] = [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]
    torch.save(data, tmp_path / "ckpt-0000000009.pt")
    older = ckpt.load_checkpoint(str(tmp_path / "ckpt-0000000009.pt"))
    assert older.step == data["step"] and isinstance(older.rng[0]["numpy"], tuple)
