"""The HF callback refuses what would lose work: checkpoints outside the job's volume, resuming from elsewhere.

In process, one rank, a tiny BERT built from its config; nothing trains past the refusal.
"""

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")  # the integrations extra (make install brings it)

# the callback's module first: it imports torchao (which transformers imports) without its known notices
from etj_workload.integrations.hf import EtjTrainerCallback

# isort: split
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from etj_workload.config import HarnessEnv
from etj_workload.gpu import SimulatedGpu
from etj_workload.integrations.store import FORMAT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1,
                                                    num_attention_heads=1, intermediate_size=8,
                                                    max_position_embeddings=8, num_labels=2))


def callback(checkpoints: Path) -> EtjTrainerCallback:
    return EtjTrainerCallback(evaluate=lambda m: 0.5, env=HarnessEnv(checkpoint_dir=str(checkpoints)),
                              gpu=SimulatedGpu(fixed_step_seconds=0.01))


def args(output: Path) -> TrainingArguments:
    return TrainingArguments(output_dir=str(output), use_cpu=True, report_to=[], save_strategy="no",
                             disable_tqdm=True, num_train_epochs=1, per_device_train_batch_size=2)


class Pairs(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.tensor([0, i % 16, 3, 4]), "labels": torch.tensor(i % 2)}


def test_an_output_dir_outside_the_checkpoint_volume_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not under ETJ_CHECKPOINT_DIR"):
        Trainer(model=model(), args=args(tmp_path / "elsewhere"), callbacks=[callback(tmp_path / "ckpt")])


def test_training_that_does_not_resume_from_the_prepared_checkpoint_is_refused(tmp_path: Path) -> None:
    checkpoints = tmp_path / "ckpt"
    saved = checkpoints / "checkpoint-4"
    saved.mkdir(parents=True)
    (saved / "etj-harness.json").write_text(json.dumps({"format": FORMAT, "step": 4, "epoch": 1, "harness": {}}))
    (checkpoints / "checkpoint-6").mkdir()  # newer, but without the harness's file: cut short, never resumed from
    etj = callback(checkpoints)
    trainer = Trainer(model=model(), args=args(checkpoints), train_dataset=Pairs(), callbacks=[etj])
    assert etj.resume_from_checkpoint == str(saved)
    with pytest.raises(RuntimeError, match=r"pass resume_from_checkpoint=callback\.resume_from_checkpoint"):
        trainer.train()  # starts afresh at step 0: the harness's state of step 4 would be wrong
    assert etj.harness is not None
    etj.harness.close()
