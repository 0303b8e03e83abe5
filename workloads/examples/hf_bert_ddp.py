"""A Hugging Face Transformers ``Trainer`` job with the harness as a callback: a tiny BERT, built from its config.

Nothing is downloaded: the model is ``BertForSequenceClassification(BertConfig(...))`` with random weights
and the data is synthetic (sequences of 16 tokens; the label is whether the second token is in the lower half
of the vocabulary), so it runs anywhere, on CPUs too. Under torchrun, one process per rank:

    torchrun --nproc-per-node 2 workloads/examples/hf_bert_ddp.py --epochs 4

workloads/examples/hf-bert-ddp.yaml runs it as an EfficientTrainingJob (the script in a ConfigMap): the
harness then follows the operator (power policy, cap, compression stages, checkpoint requests, stop) and
reports the progress in the job's status. docs/bring-your-own-training.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# The harness's callback first: it imports torchao without its known notices before transformers imports it.
from etj_workload.integrations.hf import EtjTrainerCallback, output_dir

# isort: split
import torch
import torch.distributed as dist
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

VOCAB, LENGTH = 32, 16


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token sequences; label 1 when the second token is below VOCAB / 2."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
        self.ids[:, 0] = 0  # [CLS]
        self.labels = (self.ids[:, 1] < VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def make_evaluate(test: Tokens):
    """The job-wide accuracy on ``test``: each rank scores its shard, the counts are summed over ranks."""

    def evaluate(model: nn.Module) -> float:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        ids, labels = test.ids[rank::world], test.labels[rank::world]
        device = next(model.parameters()).device
        logits = model(input_ids=ids.to(device)).logits
        counts = torch.tensor([(logits.argmax(-1).cpu() == labels).sum().item(), len(labels)], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(counts)
        return float(counts[0] / counts[1])

    return evaluate


def main() -> int:
    """Train under the harness; return the exit code (0, or 143 after SIGTERM)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=1024, help="training sequences")
    parser.add_argument("--batch-size", type=int, default=16, help="per rank")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-after-steps", type=int, help="checkpoint and stop after this many steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()

    torch.manual_seed(args.seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=2)
    model = BertForSequenceClassification(config)
    etj = EtjTrainerCallback(evaluate=make_evaluate(Tokens(256, seed=args.seed + 1)),
                             stop_after_steps=args.stop_after_steps)
    training = TrainingArguments(
        output_dir=output_dir("hf-output"),  # ETJ_CHECKPOINT_DIR when the job has a checkpoint volume
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",  # the harness asks for checkpoints (epoch ends, the operator's requests, stops)
        save_total_limit=2,
        logging_steps=5,
        report_to=[],
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=training, train_dataset=Tokens(args.samples, seed=args.seed),
                      callbacks=[etj])
    trainer.train(resume_from_checkpoint=etj.resume_from_checkpoint)
    if etj.harness is not None and etj.harness.rank == 0:
        print(f"finished: step {etj.harness.step}, accuracy {etj.harness.accuracy}, exit {etj.exit_code},"
              f" pid {os.getpid()}", flush=True)
    return etj.exit_code


if __name__ == "__main__":
    sys.exit(main())
