"""PyTorch Lightning: :class:`EtjLightningCallback` runs the harness inside ``Trainer.fit()``.

::

    from etj_workload.integrations.lightning import EtjLightningCallback, trainer_options

    etj = EtjLightningCallback(evaluate=accuracy)            # reads the operator's environment (ETJ_*)
    trainer = pl.Trainer(max_epochs=4, callbacks=[etj], **trainer_options())
    trainer.fit(module, train_loader, ckpt_path=etj.ckpt_path, weights_only=True)
    sys.exit(etj.exit_code)

``evaluate(module) -> float`` returns the job-wide accuracy (0..1, the same on every rank: all-reduce inside);
the harness calls it at each epoch end and before and after each compression stage (the accuracy guard).
:func:`trainer_options` gives the Trainer the world torchrun made (``num_nodes``, ``devices``, ``strategy``,
``accelerator``) so that Lightning joins it instead of launching processes of its own.

How Lightning's hooks map onto the harness (every rank runs every hook, at the same step):

* ``setup`` (fit): the harness is built around the LightningModule. :attr:`~EtjLightningCallback.ckpt_path`
  is the newest complete checkpoint in ``ETJ_CHECKPOINT_DIR`` (``etj-<step>.ckpt`` with the harness's
  ``etj-<step>.json``); the pruning of the stages it kept is re-created here, before Lightning loads the
  weights into the module.
* ``on_train_start``: ``Harness.train_begin`` (the harness's state from the checkpoint, the power policy, Auto
  profiling, the metrics endpoint); the step plan (``stepsTotal``) is ``max_steps`` when set, else
  ``trainer.estimated_stepping_batches`` when finite. It takes over SIGTERM from Lightning's handler while
  training runs: the harness checkpoints at the next poll and stops (exit code 143), as in its own loop.
* ``on_train_batch_start``/``on_train_batch_end``: one harness step per optimizer step (``trainer.global_step``
  advancing; with ``accumulate_grad_batches`` a step spans several batches), with the training step's loss.
* ``on_train_epoch_start``/``on_train_epoch_end``: ``Harness.epoch_begin``/``epoch_end`` (evaluation,
  epoch-triggered stages, a checkpoint).
* ``on_train_end``: ``Harness.train_end`` (final stages, ``model-final.pt``); ``teardown`` closes the harness.

When the harness saves (epoch ends, the operator's requests, stops, SIGTERM), :meth:`pytorch_lightning.Trainer
.save_checkpoint` writes Lightning's own checkpoint (model, optimizers, loops, callbacks) on every rank's call;
rank 0 renames it into place and writes the harness's file beside it; the two newest are kept. A stop is
``trainer.should_stop``.

Lightning's checkpoints hold plain data, so ``fit(..., weights_only=True)`` loads them without unpickling
anything else.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from etj_workload.callbacks import Callback
from etj_workload.config import HarnessEnv
from etj_workload.control import JobApi
from etj_workload.gpu import Gpu
from etj_workload.harness import Harness, Position, Resumed
from etj_workload.integrations.store import read_sidecar, write_sidecar

__all__ = ["EtjLightningCallback", "latest_checkpoint", "trainer_options"]

log = logging.getLogger(__name__)

# Lightning 2.6 builds torch's deprecated LeafSpec (torch 2.13 warns at each construction); nothing to act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                        category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree")

_CHECKPOINT = re.compile(r"^etj-(\d+)\.ckpt$")


def _sidecar_path(checkpoint: str | os.PathLike[str]) -> Path:
    path = Path(checkpoint)
    return path.with_name(path.name.removesuffix(".ckpt") + ".json")


def _checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """The harness's complete checkpoints in ``directory`` (a ckpt with its harness file), oldest first."""
    base = Path(directory)
    if not base.is_dir():
        return []
    found = sorted(
        (int(m.group(1)), entry)
        for entry in base.iterdir()
        if (m := _CHECKPOINT.match(entry.name)) and _sidecar_path(entry).is_file()
    )
    return [entry for _, entry in found]


def latest_checkpoint(directory: str | os.PathLike[str] | None) -> str | None:
    """The newest complete ``etj-<step>.ckpt`` of ``directory``, or None."""
    found = _checkpoints(directory) if directory else []
    return str(found[-1]) if found else None


def trainer_options(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``pl.Trainer`` arguments for the world torchrun made: one device per local rank, DDP across pods."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    local = int(env.get("LOCAL_WORLD_SIZE", "1") or 1)
    cuda = torch.cuda.is_available()
    return {
        "accelerator": "gpu" if cuda else "cpu",
        "devices": local,
        "num_nodes": max(world // local, 1),
        "strategy": "ddp" if world > 1 else "auto",
    }


def _planned_steps(trainer: pl.Trainer) -> int | None:
    """The optimizer steps ``fit`` plans: ``max_steps`` when set, else Lightning's estimate; None when unknown."""
    if trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        estimate = float(trainer.estimated_stepping_batches)
    except Exception as e:  # a loader without a length, no max_epochs: Lightning cannot say
        log.debug("no step plan: estimated_stepping_batches failed (%r)", e)
        return None
    return int(estimate) if math.isfinite(estimate) and estimate > 0 else None


class _LightningCheckpoints:
    """The harness's :class:`~etj_workload.harness.CheckpointStore` for a Lightning Trainer."""

    def __init__(self, directory: str | None, keep: int) -> None:
        self.directory = directory
        self.keep = keep
        self.trainer: pl.Trainer | None = None
        self.resuming: tuple[str, int] | None = None
        self.sidecar: dict[str, Any] = {}

    def save(self, harness: Harness) -> None:
        trainer = self.trainer
        assert trainer is not None and self.directory is not None
        target = os.path.join(self.directory, f"etj-{harness.step:010d}.ckpt")
        tmp = target + ".tmp"
        # weights_only=False: the whole checkpoint (optimizers, loops), not the weights alone. Every rank calls it,
        # rank 0 writes, then a barrier.
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, target)
            write_sidecar(_sidecar_path(target), step=harness.step, epoch=harness.epoch,
                          harness=harness.harness_state())
            for old in _checkpoints(self.directory)[: -self.keep] if self.keep > 0 else []:
                old.unlink(missing_ok=True)
                _sidecar_path(old).unlink(missing_ok=True)
        harness.checkpoint_saved(target)

    def resume(self, harness: Harness) -> Resumed | None:
        trainer = self.trainer
        assert trainer is not None
        position = Position(epoch=trainer.current_epoch, batch_in_epoch=0, step=trainer.global_step)
        if self.resuming is None:
            if trainer.global_step:
                log.warning("Lightning resumed at step %d from a checkpoint without the harness's file: stages"
                            " and the Auto choice start afresh", trainer.global_step)
                harness.step, harness.epoch = position.step, position.epoch
            return None
        path, step = self.resuming
        if trainer.global_step != step or (trainer.ckpt_path and Path(trainer.ckpt_path) != Path(path)):
            raise RuntimeError(
                f"{path} (step {step}) was prepared for resuming, but the Trainer resumed from"
                f" {trainer.ckpt_path} at step {trainer.global_step}: pass ckpt_path=callback.ckpt_path to fit()"
            )
        return Resumed(path=path, harness=self.sidecar, position=position)


class EtjLightningCallback(pl.Callback):
    """The harness in a ``pytorch_lightning.Trainer`` (see the module docstring for the mapping of hooks)."""

    def __init__(
        self,
        evaluate: Callable[[nn.Module], float],
        *,
        env: HarnessEnv | None = None,
        gpu: Gpu | None = None,
        job_api: JobApi | None = None,
        callbacks: Sequence[Callback] = (),
        stop_after_steps: int | None = None,
        samples_per_step: int | None = None,
        keep: int = 2,
    ) -> None:
        self.env = env or HarnessEnv.from_env()
        self._evaluate = evaluate
        self._gpu, self._job_api, self._callbacks = gpu, job_api, callbacks
        self._stop_after_steps = stop_after_steps
        self._samples_per_step = samples_per_step
        self._store = _LightningCheckpoints(self.env.checkpoint_dir, keep)
        self._in_step = False
        #: The checkpoint to pass to ``fit(ckpt_path=...)``: the newest complete one, or None (start afresh).
        self.ckpt_path = latest_checkpoint(self.env.checkpoint_dir)
        #: The harness, built at ``setup``.
        self.harness: Harness | None = None

    @property
    def exit_code(self) -> int:
        """The process's exit code (0, or 143 after SIGTERM), as the harness's own loop exits."""
        return self.harness.exit_code if self.harness is not None else 0

    # --- Lightning's hooks --------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Build the harness around the module; re-create the pruning of the checkpoint to resume from."""
        if stage != "fit" or self.harness is not None:
            return
        if self.env.dist.distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("WORLD_SIZE > 1 but Lightning has not initialized torch.distributed"
                               " (Trainer(**trainer_options()))")
        self._store.trainer = trainer
        self.harness = Harness(
            pl_module,
            None,
            evaluate=self._evaluate,
            steps_per_epoch=0,
            samples_per_step=self._samples_per_step or 0,
            env=self.env,
            gpu=self._gpu,
            job_api=self._job_api,
            callbacks=self._callbacks,
            stop_after_steps=self._stop_after_steps,
            checkpoint_store=self._store,
        )
        atexit.register(self.harness.close)  # the limit is restored even when fit() raises
        sidecar = read_sidecar(_sidecar_path(self.ckpt_path)) if self.ckpt_path else None
        if self.ckpt_path and sidecar:
            self.harness.compression.reapply_structure(pl_module, sidecar.harness.get("compression", {}))
            self._store.resuming, self._store.sidecar = (self.ckpt_path, sidecar.step), sidecar.harness
            log.info("resuming from %s (step %d)", self.ckpt_path, sidecar.step)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Harness.train_begin: the harness's state from the checkpoint, the power policy, metrics."""
        harness = self._require()
        if not harness.samples_per_step:
            batch = getattr(trainer.train_dataloader, "batch_size", None) or 0
            harness.samples_per_step = batch * trainer.accumulate_grad_batches * trainer.world_size
        harness.steps_total = _planned_steps(trainer)
        harness.train_begin()
        self._control(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Harness.epoch_begin with Lightning's epoch."""
        self._require().epoch_begin(trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """The first batch of an optimizer step starts the harness's step."""
        if not self._in_step:
            self._require().step_begin()
            self._in_step = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """When the optimizer stepped: Auto's step signal, stages by step, the control poll."""
        harness = self._require()
        if trainer.global_step <= harness.step:
            return  # an accumulation batch: the step goes on
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        harness.step_end(loss if isinstance(loss, torch.Tensor | float) else None)
        self._in_step = False
        self._control(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Harness.epoch_end (evaluation, stages, a checkpoint), unless training is stopping."""
        harness = self._require()
        if harness.should_stop:
            return  # Lightning ends the epoch on a stop; the harness's own loop would not reach epoch_end
        harness.epoch_end(harness.epoch)
        self._control(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Harness.train_end: final stages, the final checkpoint and model-final.pt, the limit restored."""
        self._require().train_end()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Close the harness (limit restored, report flushed, threads stopped)."""
        if stage == "fit" and self.harness is not None:
            self.harness.close()

    # --- internals ----------------------------------------------------------------------------------------
    def _require(self) -> Harness:
        if self.harness is None:
            raise RuntimeError("EtjLightningCallback: Lightning did not call setup (pass it as callbacks=)")
        return self.harness

    def _control(self, trainer: pl.Trainer) -> None:
        if self._require().should_stop:
            trainer.should_stop = True
