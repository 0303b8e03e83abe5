"""Hugging Face Transformers: :class:`EtjTrainerCallback` runs the harness inside ``Trainer.train()``.

::

    from etj_workload.integrations.hf import EtjTrainerCallback, output_dir   # before transformers: see below

    etj = EtjTrainerCallback(evaluate=accuracy)               # reads the operator's environment (ETJ_*)
    args = TrainingArguments(output_dir=output_dir("out"), ...)   # ETJ_CHECKPOINT_DIR when the job has one
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[etj])
    trainer.train(resume_from_checkpoint=etj.resume_from_checkpoint)
    sys.exit(etj.exit_code)

``evaluate(model) -> float`` returns the job-wide accuracy (0..1, the same on every rank: all-reduce inside);
the harness calls it at each epoch end and before and after each compression stage (the accuracy guard).

How the Trainer's events map onto the harness (every rank gets every event, at the same step):

* ``on_init_end``: the harness is built around the Trainer's model. When ``ETJ_CHECKPOINT_DIR`` holds a
  complete checkpoint (``checkpoint-<step>/`` with the harness's ``etj-harness.json``), it is
  :attr:`~EtjTrainerCallback.resume_from_checkpoint`, and the pruning of the stages it kept is re-created now,
  so that the Trainer loads the pruned weights into a pruned model.
* ``on_train_begin``: ``Harness.train_begin`` (the power policy starts, Auto profiles; the harness's state
  from the checkpoint; the metrics endpoint). The Trainer's ``state.max_steps`` is the job's step plan
  (``stepsTotal``).
* ``on_step_begin``/``on_step_end``: one harness step per optimizer step (after gradient accumulation), so
  Auto measures whole steps, and the control poll's interval is counted in them.
  The loss in the report is the Trainer's logged mean (``logging_steps``): the callback sees no per-step loss.
* ``on_epoch_begin``/``on_epoch_end``: ``Harness.epoch_begin``/``epoch_end`` (evaluation, epoch-triggered
  stages, a checkpoint).
* ``on_save``: after each save of the Trainer (its own, or one the harness asked for) rank 0 writes
  ``etj-harness.json`` into the checkpoint; a checkpoint the harness asked for is then reported
  (``status.workload.checkpoint``, acknowledging the operator's request).
* ``on_train_end``: ``Harness.train_end`` (final stages, ``model-final.pt``, the limit restored).

What the harness decides becomes the Trainer's control: a save (``control.should_save``, honoured by the Trainer
at the end of that step or epoch) and a stop (``control.should_training_stop``). The Trainer cannot save once its
loop has ended, so the final checkpoint of a finished run is ``model-final.pt`` alone.

Import this module before ``transformers``: transformers imports torchao, and importing it here first leaves
out torchao's known import-time notices (:mod:`etj_workload.thirdparty`).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from etj_workload.thirdparty import import_torchao

import_torchao()  # before transformers does, without its notices

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments  # noqa: E402

from etj_workload.callbacks import Callback  # noqa: E402
from etj_workload.config import HarnessEnv  # noqa: E402
from etj_workload.control import JobApi  # noqa: E402
from etj_workload.gpu import Gpu  # noqa: E402
from etj_workload.harness import Harness, Position, Resumed  # noqa: E402
from etj_workload.integrations.store import read_sidecar, within, write_sidecar  # noqa: E402

__all__ = ["HARNESS_FILE", "EtjTrainerCallback", "latest_checkpoint", "output_dir"]

log = logging.getLogger(__name__)

#: The harness's part of a Trainer checkpoint, inside ``checkpoint-<step>/``.
HARNESS_FILE = "etj-harness.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def output_dir(default: str) -> str:
    """``ETJ_CHECKPOINT_DIR`` when the job has a checkpoint volume, else ``default``: the Trainer's output_dir."""
    return os.environ.get("ETJ_CHECKPOINT_DIR") or default


def latest_checkpoint(directory: str | os.PathLike[str]) -> str | None:
    """The newest ``checkpoint-<step>`` of ``directory`` that holds the harness's file (complete), or None."""
    base = Path(directory)
    if not base.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), entry)
        for entry in base.iterdir()
        if (m := _CHECKPOINT.match(entry.name)) and (entry / HARNESS_FILE).is_file()
    )
    return str(found[-1][1]) if found else None


def _output_dir(args: TrainingArguments) -> str:
    if args.output_dir is None:  # TrainingArguments fills in its default: not seen here
        raise ValueError("TrainingArguments.output_dir is unset")
    return str(args.output_dir)


class _TrainerCheckpoints:
    """The harness's :class:`~etj_workload.harness.CheckpointStore` for a Trainer: the Trainer saves."""

    def __init__(self) -> None:
        self.requested = False  # the harness asked; the Trainer saves at its next save point
        self.loop_over = False
        self.resuming: tuple[str, int] | None = None  # (path, step) prepared at on_init_end
        self.sidecar: dict[str, Any] = {}
        self.trainer_state: TrainerState | None = None
        self.saved_step: int | None = None  # of the Trainer's last save

    def save(self, harness: Harness) -> None:
        if self.loop_over:
            saved = self.saved_step
            if saved != harness.step:
                log.info("no checkpoint at step %d (the last is at step %s): the Trainer's loop has ended;"
                         " model-final.pt is the final model", harness.step, saved)
            return
        self.requested = True

    def resume(self, harness: Harness) -> Resumed | None:
        state = self.trainer_state
        assert state is not None
        position = Position(epoch=int(state.epoch or 0), batch_in_epoch=0, step=state.global_step)
        if self.resuming is None:
            if state.global_step:  # resumed from a checkpoint the harness did not prepare: its state is lost
                log.warning("the Trainer resumed at step %d from a checkpoint without %s: stages and the Auto"
                            " choice start afresh", state.global_step, HARNESS_FILE)
                harness.step, harness.epoch = position.step, position.epoch
            return None
        path, step = self.resuming
        if state.global_step != step:
            raise RuntimeError(
                f"{path} (step {step}) was prepared for resuming, but the Trainer is at step {state.global_step}:"
                " pass resume_from_checkpoint=callback.resume_from_checkpoint to Trainer.train()"
            )
        return Resumed(path=path, harness=self.sidecar, position=position)


class EtjTrainerCallback(TrainerCallback):
    """The harness in a ``transformers.Trainer`` (see the module docstring for the mapping of events)."""

    def __init__(
        self,
        evaluate: Callable[[nn.Module], float],
        *,
        env: HarnessEnv | None = None,
        gpu: Gpu | None = None,
        job_api: JobApi | None = None,
        callbacks: Sequence[Callback] = (),
        stop_after_steps: int | None = None,
    ) -> None:
        self.env = env or HarnessEnv.from_env()
        self._evaluate = evaluate
        self._gpu, self._job_api, self._callbacks = gpu, job_api, callbacks
        self._stop_after_steps = stop_after_steps
        self._store = _TrainerCheckpoints()
        self._loss: float | None = None
        self._prepared = False
        #: The harness, built at ``on_init_end``.
        self.harness: Harness | None = None

    # --- what the script reads ----------------------------------------------------------------------------
    @property
    def resume_from_checkpoint(self) -> str | None:
        """The checkpoint to pass to ``Trainer.train(resume_from_checkpoint=...)``, or None (start afresh)."""
        if not self._prepared:
            raise RuntimeError("resume_from_checkpoint is known once the Trainer is created (on_init_end)")
        return self._store.resuming[0] if self._store.resuming else None

    @property
    def exit_code(self) -> int:
        """The process's exit code (0, or 143 after SIGTERM), as the harness's own loop exits."""
        return self.harness.exit_code if self.harness is not None else 0

    # --- the Trainer's events -----------------------------------------------------------------------------
    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Build the harness around the model; re-create the pruning of the checkpoint to resume from."""
        model = kwargs.get("model")
        if model is None:
            raise ValueError("EtjTrainerCallback needs the Trainer's model (Trainer(model=...))")
        directory = self.env.checkpoint_dir
        if directory and not within(_output_dir(args), directory):
            raise ValueError(
                f"output_dir {args.output_dir!r} is not under ETJ_CHECKPOINT_DIR {directory!r}: checkpoints"
                " would not survive a restart (use etj_workload.integrations.hf.output_dir)"
            )
        if self.env.dist.distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("WORLD_SIZE > 1 but the Trainer has not initialized torch.distributed")
        self.harness = Harness(
            model,
            None,
            evaluate=self._evaluate,
            steps_per_epoch=0,
            samples_per_step=args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            env=self.env,
            gpu=self._gpu,
            job_api=self._job_api,
            callbacks=self._callbacks,
            stop_after_steps=self._stop_after_steps,
            checkpoint_store=self._store,
        )
        atexit.register(self.harness.close)  # the limit is restored even when train() raises
        self._prepared = True
        path = latest_checkpoint(_output_dir(args)) if directory else None
        sidecar = read_sidecar(Path(path) / HARNESS_FILE) if path else None
        if path and sidecar:
            self.harness.compression.reapply_structure(self.harness.module, sidecar.harness.get("compression", {}))
            self._store.resuming, self._store.sidecar = (path, sidecar.step), sidecar.harness
            log.info("resuming from %s (step %d)", path, sidecar.step)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Harness.train_begin: the harness's state from the checkpoint, the power policy, metrics."""
        harness = self._require()
        harness.optimizer = kwargs.get("optimizer")
        harness.steps_total = state.max_steps if state.max_steps and state.max_steps > 0 else None
        self._store.trainer_state = state
        harness.train_begin()
        self._control(control)

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Harness.epoch_begin with the epoch the Trainer is in."""
        self._require().epoch_begin(int(state.epoch or 0))

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """An optimizer step starts (its first micro-batch)."""
        self._require().step_begin()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """An optimizer step ended: Auto's step signal, stages by step, the control poll."""
        harness = self._require()
        loss, self._loss = self._loss, None
        harness.step_end(loss)
        self._control(control)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Keep the Trainer's logged training loss for the next step's report."""
        if logs and "loss" in logs:
            self._loss = float(logs["loss"])

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Harness.epoch_end (evaluation, stages, a checkpoint), unless training is stopping."""
        harness = self._require()
        if harness.should_stop:
            return  # the Trainer ends its epoch on a stop; the harness's loop would not reach epoch_end
        harness.epoch_end(harness.epoch)
        self._control(control)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """The Trainer saved ``checkpoint-<step>``: add the harness's part; report it when the harness asked."""
        harness = self._require()
        path = os.path.join(_output_dir(args), f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(path):
            write_sidecar(Path(path) / HARNESS_FILE, step=state.global_step, epoch=harness.epoch,
                          harness=harness.harness_state())
        self._store.saved_step = state.global_step
        if self._store.requested:
            self._store.requested = False
            harness.checkpoint_saved(path)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Harness.train_end (final stages, model-final.pt, the limit restored), then close the harness."""
        harness = self._require()
        self._store.loop_over = True
        harness.train_end()
        harness.close()

    # --- internals ----------------------------------------------------------------------------------------
    def _require(self) -> Harness:
        if self.harness is None:
            raise RuntimeError("EtjTrainerCallback: the Trainer did not call on_init_end (pass it as callbacks=)")
        return self.harness

    def _control(self, control: TrainerControl) -> None:
        """What the harness decided, as the Trainer's control for the rest of this step or epoch."""
        harness = self._require()
        if self._store.requested:
            control.should_save = True
        if harness.should_stop:
            control.should_training_stop = True
