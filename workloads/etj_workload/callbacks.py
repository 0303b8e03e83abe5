"""The harness's callback set: one ordered list of :class:`Callback` objects, the subsystems' and the user's.

:class:`Callback` is a no-op base (as Zeus' ``zeus.callback.Callback``); each subsystem overrides only the
hooks it needs. The harness keeps its own bookkeeping (step counter, timing, loss, resume, the status it
publishes after a hook, restoring the power limit) and, at every hook, calls that hook on every callback of
:attr:`~etj_workload.harness.Harness.callbacks` in order: :func:`subsystem_callbacks` first, in the order
below, then the user's. The order is part of the behaviour:

1. :class:`PowerCallback` applies the power policy at train begin (after a resume restored the profiler's
   state) and advances the Auto profiler at each step end, before anything else runs in the step.
2. :class:`MetricsCallback` starts the Prometheus endpoint once the first limit is in force.
3. :class:`CompressionCallback` fires the stages that are due (resumed ones at train begin, step-, epoch- and
   final triggers), and evaluates the final model when nothing did. An energyFraction stage is never due
   here: the operator requests it (``status.control.stageRequested``) and :class:`ControlCallback` applies it.
4. :class:`CheckpointCallback` saves after the epoch's stages (and the final model at train end).
5. :class:`ControlCallback` polls the operator's control (about every ``ETJ_CONTROL_POLL_SECONDS``, or every
   ``ETJ_CONTROL_POLL_STEPS`` steps).
6. :class:`StepLimitCallback` saves and stops once ``stop_after_steps`` steps are done.
7. The user's callbacks: they see a step, an epoch or the training after all of the above.

Each hook is a collective point: every rank runs the same callbacks at the same step.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch

from etj_workload.metrics import MetricsServer

if TYPE_CHECKING:
    from etj_workload.harness import Harness

__all__ = [
    "Callback",
    "CheckpointCallback",
    "CompressionCallback",
    "ControlCallback",
    "MetricsCallback",
    "PowerCallback",
    "StepLimitCallback",
    "subsystem_callbacks",
]

log = logging.getLogger(__name__)


class Callback:
    """No-op hooks; subclass and override what you need, pass instances to the harness as ``callbacks=``."""

    def on_train_begin(self, harness: Harness) -> None:
        """Training starts (after any resume)."""

    def on_train_end(self, harness: Harness) -> None:
        """Training ended (normally or by a stop)."""

    def on_epoch_begin(self, harness: Harness, epoch: int) -> None:
        """An epoch starts."""

    def on_epoch_end(self, harness: Harness, epoch: int) -> None:
        """An epoch ended (after its evaluation)."""

    def on_step_begin(self, harness: Harness, step: int) -> None:
        """A step starts; ``step`` is the global step about to run (0-based)."""

    def on_step_end(self, harness: Harness, step: int) -> None:
        """A step ended; ``step`` is the number of steps done."""

    def on_evaluate(self, harness: Harness, accuracy: float) -> None:
        """An evaluation finished with ``accuracy`` (0..1)."""


class PowerCallback(Callback):
    """The power policy and the Auto profiler (:class:`~etj_workload.power.PowerController`).

    Restoring the limit is not a hook: the harness does it itself (first on SIGTERM and on close, after every
    callback at train end), so no callback can leave a GPU capped.
    """

    def __init__(self) -> None:
        self._stages_kept = 0

    def on_train_begin(self, harness: Harness) -> None:
        """Apply the first limit (Fixed) or start profiling (Auto)."""
        self._stages_kept = len(harness.compression.kept)
        harness.power.train_begin()

    def on_epoch_begin(self, harness: Harness, epoch: int) -> None:
        """An epoch boundary: the open measurement window is cancelled (data workers restart)."""
        harness.power.interrupt()

    def on_evaluate(self, harness: Harness, accuracy: float) -> None:
        """An evaluation ran between steps: the open window is cancelled and the limit settles again."""
        harness.power.interrupt()

    def on_step_begin(self, harness: Harness, step: int) -> None:
        """Note the energy counter: a measurement window counts the steps' energy only."""
        harness.power.step_begin()

    def on_step_end(self, harness: Harness, step: int) -> None:
        """Advance the profiler by the step's device time (a collective at each window's end while Auto runs).

        A compression stage kept since the last step (by any callback) changed the workload: Auto profiles again.
        """
        kept = len(harness.compression.kept)
        if kept != self._stages_kept:
            self._stages_kept = kept
            harness.power.workload_changed()
        harness.power.step_end(harness.step_device_seconds)


class MetricsCallback(Callback):
    """The Prometheus endpoint (``ETJ_METRICS_PORT``), served by the first rank of each node."""

    def on_train_begin(self, harness: Harness) -> None:
        """Start the endpoint; training goes on without it when the port is taken."""
        port = harness.env.metrics_port
        if port is None or harness.env.dist.local_rank != 0:
            return
        try:
            harness.metrics = MetricsServer(harness.metrics_snapshot, port)
        except OSError as e:
            log.warning("metrics endpoint on port %d unavailable: %s", port, e)


class CompressionCallback(Callback):
    """Fires the compression plan's stages when their epoch, step or the end of training is reached."""

    def on_train_begin(self, harness: Harness) -> None:
        """Stages already due (a resumed run's, or triggers at epoch 0 / step 0)."""
        for stage in harness.compression.due(epoch=harness.epoch, step=harness.step):
            harness.apply_stage(stage.name)

    def on_step_end(self, harness: Harness, step: int) -> None:
        """Step-triggered stages (only looked up when the plan has any)."""
        if harness.has_step_triggers:
            for stage in harness.compression.due(epoch=harness.epoch, step=harness.step):
                harness.apply_stage(stage.name)

    def on_epoch_end(self, harness: Harness, epoch: int) -> None:
        """Stages triggered by the epoch that starts next."""
        for stage in harness.compression.due(epoch=harness.epoch, step=harness.step):
            harness.apply_stage(stage.name)

    def on_train_end(self, harness: Harness) -> None:
        """When training ran to its end: the remaining stages, then an accuracy for the final model."""
        if not harness.completed:
            return
        for stage in harness.compression.due(epoch=harness.epoch, step=harness.step, final=True):
            harness.apply_stage(stage.name)
        if harness.accuracy is None:
            harness.evaluate()


class CheckpointCallback(Callback):
    """Saves a checkpoint after each epoch and, at the end, the final model (``ETJ_CHECKPOINT_DIR``)."""

    def on_epoch_end(self, harness: Harness, epoch: int) -> None:
        """Save (a collective: every rank takes part, rank 0 writes)."""
        if harness.env.checkpoint_dir:
            harness.save_checkpoint()

    def on_train_end(self, harness: Harness) -> None:
        """When training ran to its end (or a kept quantize stage ended it): save, export the final model."""
        if not harness.env.checkpoint_dir:
            return
        if harness.completed:
            harness.save_checkpoint()
            self.export(harness)
        elif harness.stop_reason == "Quantized":
            self.export(harness)  # the quantized model is the final one; its checkpoint was saved with the stage

    @staticmethod
    def export(harness: Harness) -> None:
        """Save the final (possibly pruned and quantized) model as ``model-final.pt`` (rank 0)."""
        if harness.rank != 0 or not harness.env.checkpoint_dir:
            return
        from etj_workload.compression import export_state_dict

        final = harness.compression.quantized or harness.module
        target = os.path.join(harness.env.checkpoint_dir, "model-final.pt")
        tmp = target + ".tmp"
        torch.save(export_state_dict(final), tmp)
        os.replace(tmp, target)


class ControlCallback(Callback):
    """The operator's control channel: polled (a small all-gather) when :meth:`Harness.poll_due` says so."""

    def on_step_end(self, harness: Harness, step: int) -> None:
        """Poll when due: cap, stages, checkpoint requests, stop."""
        if harness.poll_due(step):
            harness.poll_control()


class StepLimitCallback(Callback):
    """Stops after ``stop_after_steps`` steps (tests and benches), with a checkpoint first."""

    def on_step_end(self, harness: Harness, step: int) -> None:
        """Save and stop once the limit is reached (once)."""
        limit = harness.stop_after_steps
        if limit is not None and step >= limit and not harness.should_stop:
            harness.save_checkpoint()
            harness.stop("StepLimit")


def subsystem_callbacks() -> list[Callback]:
    """The harness's own callbacks, in the order they run (see the module docstring for why)."""
    return [
        PowerCallback(),
        MetricsCallback(),
        CompressionCallback(),
        CheckpointCallback(),
        ControlCallback(),
        StepLimitCallback(),
    ]
