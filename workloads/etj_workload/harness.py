"""The harness a training loop calls: power control, control channel, compression, checkpoints, metrics.

Use it around your own loop::

    with Harness(ddp_model, optimizer, evaluate=evaluate, steps_per_epoch=n, samples_per_step=b) as h:
        position = h.train_begin()                 # resumes from the newest checkpoint, if any
        for epoch in range(position.epoch, epochs):
            h.epoch_begin(epoch)
            for x, y in my_batches(epoch, skip=h.skip_batches(epoch)):
                h.step_begin()
                loss = ...; loss.backward(); optimizer.step()
                h.step_end(loss)
                if h.should_stop:
                    break
            if h.should_stop:
                break
            h.epoch_end(epoch)                     # evaluates, fires epoch-triggered stages
        h.train_end()                              # final stages, final checkpoint, limits restored
    sys.exit(h.exit_code)

Every rank calls every hook at the same step; the collectives inside (a small all-gather at each control poll,
all-reduces while Auto profiles, evaluation) rely on it. The control poll comes about every
``ETJ_CONTROL_POLL_SECONDS`` (rank 0 picks the step of the next one and sends it in the poll, so the ranks stay
in step), or every ``ETJ_CONTROL_POLL_STEPS`` steps when that is 0.
Exit codes: 0 finished, or stopped on request (stopRequested, the accuracy guard's Stop, a kept
quantize stage); 143 after SIGTERM (the checkpoint is saved first when all ranks get to it in time).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import FrameType, TracebackType
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import etj_contract as contract
from etj_workload import checkpoint as ckpt
from etj_workload import commtiming
from etj_workload.callbacks import Callback, subsystem_callbacks
from etj_workload.compression import CompressionManager
from etj_workload.config import (
    ENV_SIMULATED_COMPUTE_FRACTION,
    ENV_SIMULATED_SLEEP,
    ENV_SIMULATED_STATE_FILE,
    ENV_SIMULATED_STEP_SECONDS,
    HarnessEnv,
)
from etj_workload.control import Actions, ControlChannel, ControlState, JobApi, KubernetesJobApi, decide, utc_now_iso
from etj_workload.distributed import DistOps, LocalOps, TorchDistOps
from etj_workload.gpu import Gpu, GpuReading, GpuSource, open_gpu
from etj_workload.metrics import MetricsServer, MetricsSnapshot
from etj_workload.power import PowerController
from etj_workload.power_model import H100_SXM, SimulatedPowerModel

__all__ = ["EXIT_OK", "EXIT_SIGTERM", "Callback", "CheckpointStore", "Harness", "Position", "Resumed"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_SIGTERM = 143
#: After SIGTERM, the harness exits by itself after this long even if a collective hangs.
SIGTERM_GRACE_SECONDS = 20.0


@dataclass(frozen=True)
class Position:
    """Where training (re)starts."""

    epoch: int
    batch_in_epoch: int
    step: int


@dataclass(frozen=True)
class Resumed:
    """What a :class:`CheckpointStore` resumed from: the harness's part of the checkpoint and the position."""

    path: str
    harness: dict[str, Any]
    """:meth:`Harness.harness_state` as it was saved."""
    position: Position


class CheckpointStore(Protocol):
    """Checkpoints that a training framework writes and loads itself (``etj_workload.integrations``).

    Without a store the harness writes its own ``ckpt-<step>.pt`` files (model, optimizer, RNG states and
    its own state) and loads them at :meth:`Harness.train_begin`. With one, the framework owns the model's,
    the optimizer's and the loop's state, and the harness only hands it the moments to save (epoch ends,
    the operator's requests, stops, SIGTERM) and its own state (:meth:`Harness.harness_state`) to keep.
    """

    def save(self, harness: Harness) -> None:
        """Save now or at the framework's next save point (a collective: every rank calls it at the same step).

        Once the checkpoint is written, call :meth:`Harness.checkpoint_saved` with its path (rank 0).
        """

    def resume(self, harness: Harness) -> Resumed | None:
        """Return what the framework resumed from (called at :meth:`Harness.train_begin`), or None."""


# --- the control poll's wire format: one row of floats per rank --------------------------------------------------
#: What each rank sends at a control poll (:meth:`Harness.poll_control`), in this order, as float64; NaN is "none".
#: ``next_poll_steps`` is rank 0's choice of the steps to the next poll (time-based polling; NaN otherwise).
#: ``control`` is 1 when the row carries a control state (rank 0 with a control channel), 0 otherwise, and the
#: fields after it are then rank 0's :class:`ControlState`; ``stage_requested`` is the stage's index in the
#: job's compression plan (every rank has the same), -1 for none and for a name not in the plan.
POLL_FIELDS: tuple[str, ...] = (
    "sigterm",
    "power_mw",
    "energy_mj",
    "power_limit_mw",
    "next_poll_steps",
    "control",
    "power_limit_watts_per_gpu",
    "checkpoint_requested",
    "stop_requested",
    "stage_requested",
    "energy_fraction",
    "auto_limit_watts_per_gpu",
    "auto_request_seq",
)
#: The :class:`ControlState` fields the row carries (``problems``, the parse's notes, stays on rank 0).
POLL_CONTROL_FIELDS = POLL_FIELDS[6:]


@dataclass(frozen=True)
class PollRow:
    """One rank's part of a control poll."""

    sigterm: bool
    gpu: tuple[int, int, int] | None
    """(power_mw, energy_mj, power_limit_mw) of the rank's GPU, or None when the rank sends no reading."""
    control: ControlState | None
    """Rank 0's control state (None: not rank 0, or no control channel)."""
    next_poll_steps: int | None = None
    """Rank 0's choice: the next poll comes this many steps after this one (None: polls every N steps)."""


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _integer(value: float) -> int | None:
    return None if math.isnan(value) else int(value)


def encode_poll(row: PollRow, stages: Sequence[str]) -> list[float]:
    """``row`` as the floats of :data:`POLL_FIELDS`; ``stages``: the plan's stage names, in plan order.

    Integers travel exactly up to 2**53 (float64); larger ones are rounded, the same on every rank.
    """
    gpu = [math.nan] * 3 if row.gpu is None else [float(v) for v in row.gpu]
    c = row.control
    if c is None:
        control = [0.0, *([math.nan] * len(POLL_CONTROL_FIELDS))]
    else:
        stage = stages.index(c.stage_requested) if c.stage_requested in stages else -1
        control = [
            1.0,
            _number(c.power_limit_watts_per_gpu),
            float(c.checkpoint_requested),
            1.0 if c.stop_requested else 0.0,
            float(stage),
            _number(c.energy_fraction),
            _number(c.auto_limit_watts_per_gpu),
            float(c.auto_request_seq),
        ]
    return [1.0 if row.sigterm else 0.0, *gpu, _number(row.next_poll_steps), *control]


def decode_poll(values: Sequence[float], stages: Sequence[str]) -> PollRow:
    """The :class:`PollRow` that :func:`encode_poll` made ``values`` from (a stage not in the plan reads as None)."""
    if len(values) != len(POLL_FIELDS):
        raise ValueError(f"a poll row has {len(POLL_FIELDS)} values, not {len(values)}")
    power, energy, limit = values[1:4]
    gpu = None if math.isnan(power) else (int(power), int(energy), int(limit))
    control: ControlState | None = None
    if values[5] == 1.0:
        cap, checkpoint, stop, stage, fraction, auto, seq = values[6:]
        index = int(stage)
        control = ControlState(
            power_limit_watts_per_gpu=_integer(cap),
            checkpoint_requested=int(checkpoint),
            stop_requested=stop == 1.0,
            stage_requested=stages[index] if 0 <= index < len(stages) else None,
            energy_fraction=None if math.isnan(fraction) else fraction,
            auto_limit_watts_per_gpu=_integer(auto),
            auto_request_seq=int(seq),
        )
    return PollRow(sigterm=values[0] == 1.0, gpu=gpu, control=control, next_poll_steps=_integer(values[4]))


#: How many losses the harness keeps before it sums them (the memory of the steps between two polls).
LOSS_FOLD = 256


def next_poll_interval(poll_seconds: float, steps: int, elapsed_seconds: float) -> int:
    """Return the steps to the next control poll: about ``poll_seconds`` at the last interval's step time.

    The last interval is ``steps`` steps in ``elapsed_seconds`` of wall time, the poll included.

    At most twice the last interval, so a few fast steps (after a warm-up, a resume, an evaluation) do not put the
    next poll far away; at least one step.
    """
    if steps <= 0 or elapsed_seconds <= 0:
        return 1
    wanted = math.ceil(poll_seconds * steps / elapsed_seconds)
    return max(1, min(wanted, 2 * steps))


def _simulated_gpu_options() -> dict[str, Any]:
    step_seconds = os.environ.get(ENV_SIMULATED_STEP_SECONDS)
    fraction = os.environ.get(ENV_SIMULATED_COMPUTE_FRACTION)
    model: SimulatedPowerModel = H100_SXM
    if fraction:
        model = SimulatedPowerModel(compute_fraction=float(fraction))
    return {
        "sleep_slowdown": os.environ.get(ENV_SIMULATED_SLEEP, "1") != "0",
        "fixed_step_seconds": float(step_seconds) if step_seconds else None,
        "state_file": os.environ.get(ENV_SIMULATED_STATE_FILE) or None,
        "model": model,
    }


class Harness:
    """Energy-aware training around a user's loop (see the module docstring for the call pattern)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        evaluate: Callable[[nn.Module], float],
        steps_per_epoch: int,
        samples_per_step: int,
        env: HarnessEnv | None = None,
        gpu: Gpu | None = None,
        job_api: JobApi | None = None,
        dist_ops: DistOps | None = None,
        callbacks: Sequence[Callback] = (),
        stop_after_steps: int | None = None,
        install_signal_handlers: bool = True,
        checkpoint_store: CheckpointStore | None = None,
        steps_total: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        #: The clock of step times, the report's speed and the control poll's interval (seconds; tests and
        #: benchmarks may pass their own).
        self._clock = clock
        self.env = env or HarnessEnv.from_env()
        self.model = model
        self.module: nn.Module = getattr(model, "module", model)
        self.optimizer = optimizer
        self.steps_per_epoch = steps_per_epoch
        self.samples_per_step = samples_per_step
        # The global steps the whole job plans (``stepsTotal``; the :attr:`steps_total` property).
        self._steps_total = steps_total
        #: Every hook runs these in order: the subsystems' (:func:`~etj_workload.callbacks.subsystem_callbacks`)
        #: then the user's ``callbacks``.
        self.callbacks: list[Callback] = [*subsystem_callbacks(), *callbacks]
        self.stop_after_steps = stop_after_steps
        self._install_signal_handlers = install_signal_handlers
        #: Where checkpoints go when a framework owns them (None: the harness's own files).
        self.checkpoint_store = checkpoint_store
        if dist_ops is None:
            dist_ops = (
                TorchDistOps()
                if torch.distributed.is_available() and torch.distributed.is_initialized()
                else LocalOps()
            )
        self.dist = dist_ops
        self.rank = dist_ops.rank
        #: Reads DDP's communication statistics for ``status.workload.communication`` (rank 0 only), or None.
        self.comm_reader = self._start_comm_reading(model, dist_ops.world_size)
        #: Rank 0's timed steps (step-begin to step-end) and their wall time, for the communication section.
        self.timed_steps = 0
        self.timed_step_seconds = 0.0
        self.gpu = gpu or open_gpu(self.env.gpu_backend, self.env.dist.local_rank, **_simulated_gpu_options())
        sync = torch.cuda.synchronize if torch.cuda.is_available() else None
        self.power = PowerController(
            self.gpu,
            self.env.power,
            world_size=dist_ops.world_size,
            reducer=dist_ops.reduce_window,
            sync=sync,
            horizon_steps=steps_total if steps_total is None or steps_total >= 0 else None,
        )
        if self.rank == 0:  # a new request to the node agent goes out at once (publish checks for a channel)
            self.power.on_request = self._publish_request
        self._evaluate_fn = evaluate
        self.compression = CompressionManager(self.env.compression, self._evaluate_module)
        self.channel: ControlChannel | None = None
        if self.rank == 0:
            api = job_api
            if api is None and self.env.job_name and self.env.job_namespace:
                try:
                    api = KubernetesJobApi(self.env.job_name, self.env.job_namespace)
                except Exception as e:  # no credentials: train anyway, without the operator's control
                    log.warning("no Kubernetes API for the control channel (%s); training without it", e)
            if api is not None:
                self.channel = ControlChannel(api)
        self.metrics: MetricsServer | None = None
        # progress
        self.epoch = 0
        self.step = 0
        self.batch_in_epoch = 0
        self.accuracy: float | None = None
        self.should_stop = False
        self.stop_reason: str | None = None
        self.exit_code = EXIT_OK
        self.acknowledged_checkpoint = 0
        self.last_checkpoint: dict[str, Any] | None = None
        self.control = ControlState()
        self._resume_skip: tuple[int, int] | None = None
        self._sigterm = False
        self._previous_sigterm: Any = None
        #: The steps' losses since the last poll, detached (summed at the poll: no tensor op per step but the
        #: detach; folded into one every LOSS_FOLD values), and the plain floats' sum and count.
        self._losses: list[torch.Tensor] = []
        self._loss_folded = 0
        self._float_loss_sum = 0.0
        self._float_loss_count = 0
        self._interval_start = self._clock()
        self._interval_step = 0
        #: With time-based polling: the step at whose end every rank polls next (0: the first step's end).
        self._next_poll_step = 0
        self._samples_per_second = 0.0
        self._last_loss: float | None = None
        self._step_started = 0.0
        #: The device time of the step that just ended (the simulated GPU's modelled time), for the profiler.
        self.step_device_seconds = 0.0
        #: Set at train_end: training ran to its end (no stop), so the final stages fire and the model is saved.
        self.completed = False
        self._peer_readings: list[GpuReading] = []
        self.has_step_triggers = any(s.trigger.step is not None for s in self.env.compression.stages)
        self._published_stages = 0
        self._closed = False
        self._host = socket.gethostname()  # sent at the first poll: looked up once
        #: Per rank: (host, GPU index, uuid, model name, source), gathered at the first control poll.
        self._poll_identities: list[tuple[str, int, str, str, GpuSource]] | None = None
        self._stage_names = tuple(s.name for s in self.env.compression.stages)
        self._known_stages = frozenset(self._stage_names)

    @property
    def steps_total(self) -> int | None:
        """The global steps the whole job plans (``stepsTotal``; None: the program does not say).

        Setting it (the framework callbacks do, before :meth:`train_begin`) also sets the power controller's
        horizon, which :meth:`train_begin` shortens by the steps a resumed run has done.
        """
        return self._steps_total

    @steps_total.setter
    def steps_total(self, value: int | None) -> None:
        self._steps_total = value
        self.power.horizon_steps = self._remaining_steps()

    def _remaining_steps(self) -> int | None:
        """The planned steps left from the current step (at least 1; None: the plan is unknown)."""
        if self._steps_total is None or self._steps_total < 0:
            return None
        return max(1, self._steps_total - self.step)

    # --- context manager: whatever happens, limits are restored and threads stopped ------------------
    def __enter__(self) -> Harness:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            log.error("training failed: %r; restoring the power limit", exc)
        self.close()

    def close(self) -> None:
        """Restore the power limit, flush the status, stop the threads (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.power.restore()
        if self.channel is not None:
            self.channel.publish(self._status(), urgent=True)
            self.channel.close(timeout_seconds=5.0)
        if self.metrics is not None:
            self.metrics.close()
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        self.gpu.close()

    # --- signals ---------------------------------------------------------------------------------
    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.power.restore()  # first: never leave a GPU capped, whatever happens next
        if self._sigterm:
            return
        self._sigterm = True
        log.warning("SIGTERM: power limit restored; stopping at the next step boundary")

        def give_up() -> None:
            log.error("SIGTERM grace of %.0f s elapsed; exiting now", SIGTERM_GRACE_SECONDS)
            self.power.restore()
            os._exit(EXIT_SIGTERM)

        timer = threading.Timer(SIGTERM_GRACE_SECONDS, give_up)
        timer.daemon = True
        timer.start()

    # --- hooks -----------------------------------------------------------------------------------
    def train_begin(self) -> Position:
        """Resume from the newest checkpoint (if any), apply the power policy, start metrics."""
        if self._install_signal_handlers and threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._resume()
        # the controller counts its steps from here: its horizon is what is left of the plan
        self.power.horizon_steps = self._remaining_steps()
        for cb in self.callbacks:
            cb.on_train_begin(self)
        self._publish(urgent=True)
        self._interval_start = self._clock()
        self._interval_step = self.step
        return Position(self.epoch, self.batch_in_epoch, self.step)

    def skip_batches(self, epoch: int) -> int:
        """Return how many batches of ``epoch`` a resumed run has already done (0 otherwise)."""
        if self._resume_skip is not None and self._resume_skip[0] == epoch:
            return self._resume_skip[1]
        return 0

    def epoch_begin(self, epoch: int) -> None:
        """An epoch starts."""
        self.epoch = epoch
        self.batch_in_epoch = self.skip_batches(epoch)
        for cb in self.callbacks:
            cb.on_epoch_begin(self, epoch)

    def step_begin(self) -> None:
        """A step starts (marks its start time)."""
        for cb in self.callbacks:
            cb.on_step_begin(self, self.step)
        self._step_started = self._clock()

    def step_end(self, loss: torch.Tensor | float | None = None) -> None:
        """A step ended: account energy, advance profiling, poll control when due (:meth:`poll_due`)."""
        measured = self._clock() - self._step_started
        self.timed_steps += 1
        self.timed_step_seconds += measured
        self.step_device_seconds = self.gpu.account_step(measured)
        self.step += 1
        self.batch_in_epoch += 1
        if isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach())
            if len(self._losses) >= LOSS_FOLD:
                self._fold_losses()
        elif loss is not None:
            self._float_loss_sum += float(loss)
            self._float_loss_count += 1
        step = self.step
        for cb in self.callbacks:
            cb.on_step_end(self, step)

    def epoch_end(self, epoch: int) -> None:
        """An epoch ended: evaluate, fire stages triggered by the next epoch, save a checkpoint."""
        self.evaluate()
        self.epoch = epoch + 1
        self.batch_in_epoch = 0
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch)
        self._publish()

    def evaluate(self) -> float:
        """Evaluate the current model (the quantized one once a quantize stage is kept)."""
        self.accuracy = self._evaluate_module(self.compression.quantized or self.module)
        for cb in self.callbacks:
            cb.on_evaluate(self, self.accuracy)
        return self.accuracy

    def train_end(self) -> None:
        """Training is over: fire the remaining epoch/step stages, save, publish, restore the limit."""
        self.completed = not self.should_stop  # decided once: a final stage that stops still gets saved
        if self._sigterm:
            self.exit_code = EXIT_SIGTERM
        for cb in self.callbacks:
            cb.on_train_end(self)
        self.power.restore()  # the harness's, not a callback's: after every callback, whatever they did
        self._publish(urgent=True)

    # --- what the callbacks do (collectives: every rank calls them at the same step) -----------------
    def stop(self, reason: str) -> None:
        """Stop at the next step boundary; the first reason given is the one reported."""
        self.should_stop = True
        self.stop_reason = self.stop_reason or reason
        log.info("stopping: %s", reason)

    def apply_stage(self, name: str) -> None:
        """Apply the plan's stage ``name`` unless done; stop when the accuracy guard or a quantize says so."""
        stage = self.env.compression.stage(name)
        if stage is None or name in self.compression.done:
            return
        result = self.compression.apply(stage, self.module, epoch=self.epoch, step=self.step)
        log.info("stage %s: %s", name, result.to_status())
        if self.compression.guard_stopped:
            self.save_checkpoint()
            self.stop("AccuracyGuard")
        elif stage.quantize is not None and result.applied:
            # torchao int8 weights are inference-only: the quantized model is the final one.
            self.accuracy = result.accuracy_after
            self.stop("Quantized")
        self._publish(urgent=True)

    def poll_due(self, step: int) -> bool:
        """Whether the control poll is due at the end of ``step`` (every rank answers the same)."""
        if self.env.control_poll_seconds > 0:
            return step >= self._next_poll_step
        return step % self.env.control_poll_steps == 0

    def _choose_poll_interval(self) -> int:
        """Rank 0: the steps to the next poll, from the wall time of the steps since the last one."""
        return next_poll_interval(
            self.env.control_poll_seconds, self.step - self._interval_step, self._clock() - self._interval_start
        )

    def poll_control(self) -> None:
        """Exchange control and GPU readings across ranks, act on the operator's control, publish.

        One tensor all-gather of a few floats per rank (:func:`encode_poll`); the first poll also gathers, once,
        each rank's host and GPU identity (strings that never change), for the metrics' peer readings.
        """
        if self._poll_identities is None:
            self._poll_identities = self.dist.all_gather_object(
                (self._host, self.gpu.index, self.gpu.uuid(), self.gpu.name(), self.gpu.source)
            )
        sent = self.metrics is not None or self.rank != 0
        local = self.channel.poll() if self.rank == 0 and self.channel is not None else None
        timed = self.env.control_poll_seconds > 0
        row = PollRow(
            sigterm=self._sigterm,
            gpu=(self.gpu.power_mw(), self.gpu.energy_mj(), self.gpu.power_limit_mw()) if sent else None,
            control=local,
            next_poll_steps=self._choose_poll_interval() if timed and self.rank == 0 else None,
        )
        gathered = self.dist.all_gather_floats(encode_poll(row, self._stage_names))
        rows = [decode_poll(values, self._stage_names) for values in gathered]
        if timed:  # every rank takes rank 0's choice: the next poll is at the same step everywhere
            self._next_poll_step = self.step + max(1, rows[0].next_poll_steps or 1)
        host = self._poll_identities[self.rank][0]
        peers: list[GpuReading] = []  # assigned whole: the metrics thread reads the list
        for i, (r, (peer_host, index, uuid, name, source)) in enumerate(zip(rows, self._poll_identities, strict=True)):
            if i != self.rank and r.gpu is not None and peer_host == host:
                power_mw, energy_mj, limit_mw = r.gpu
                peers.append(GpuReading(index, uuid, name, source, power_mw, energy_mj, limit_mw))
        self._peer_readings = peers
        control = rows[0].control
        if control is not None:
            if local is not None:  # rank 0 keeps what the wire drops: a name not in the plan, the parse problems
                control = replace(control, stage_requested=local.stage_requested, problems=local.problems)
            self.control = control
        actions = decide(
            self.control,
            acknowledged_checkpoint=self.acknowledged_checkpoint,
            done_stages=self.compression.done,
            known_stages=self._known_stages,
        )
        self._perform(actions)
        if any(r.sigterm for r in rows) and not self.should_stop:
            self.save_checkpoint()
            self.stop("SIGTERM")
        self._update_interval()
        self._publish()

    # --- internals -------------------------------------------------------------------------------
    def _start_comm_reading(self, model: nn.Module, world_size: int) -> commtiming.DdpCommReader | None:
        """Rank 0 of a DDP ``model`` of more than one rank reads DDP's statistics (``ETJ_COMM_TIMING``, default on)."""
        if (
            not self.env.comm_timing
            or self.rank != 0
            or world_size <= 1
            or not isinstance(model, DistributedDataParallel)
        ):
            return None
        return commtiming.DdpCommReader(model, since=utc_now_iso())

    def _publish_request(self) -> None:
        """The power controller asked the node agent for a new limit: publish the report now (rank 0)."""
        self._publish(urgent=True)

    def _evaluate_module(self, module: nn.Module) -> float:
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                return float(self._evaluate_fn(module))
        finally:
            module.train(was_training)

    def _perform(self, actions: Actions) -> None:
        self.power.set_cap(actions.power_cap_watts)
        for name in actions.stages:
            self.apply_stage(name)
        if actions.checkpoint_request is not None or actions.stop:
            self.save_checkpoint(acknowledge=actions.checkpoint_request)
        if actions.stop and not self.should_stop:
            self.stop("StopRequested")

    def _update_interval(self) -> None:
        now = self._clock()
        steps = self.step - self._interval_step
        if steps > 0 and now > self._interval_start:
            self._samples_per_second = steps * self.samples_per_step / (now - self._interval_start)
        self._interval_start, self._interval_step = now, self.step
        total, count = self._float_loss_sum, self._float_loss_count
        if self._losses:
            self._fold_losses()
            total += float(self._losses[0].item())  # the one device-to-host copy of the interval
            count += self._loss_folded
        if count:
            self._last_loss = total / count
        self._losses, self._loss_folded = [], 0
        self._float_loss_sum, self._float_loss_count = 0.0, 0

    def _fold_losses(self) -> None:
        """Sum the kept losses into one tensor (on their device: no synchronization)."""
        losses = self._losses
        count = len(losses) - 1 if self._loss_folded else len(losses)  # a folded sum is its own count already
        try:
            folded = torch.stack(losses).sum()
        except RuntimeError:  # of different shapes, dtypes or devices: on the host, one at a time
            folded = torch.tensor(sum(float(t.sum()) for t in losses))
        self._losses, self._loss_folded = [folded], self._loss_folded + count

    def harness_state(self) -> dict[str, Any]:
        """The harness's own part of a checkpoint: stages kept, the Auto choice, the last request acknowledged.

        Plain data (lists, dicts, numbers, strings): a :class:`CheckpointStore` may keep it as JSON.
        """
        return {
            "compression": self.compression.state_dict(),
            "power": self.power.state_dict(),
            "acknowledged_checkpoint": self.acknowledged_checkpoint,
            "accuracy": self.accuracy,
        }

    def checkpoint_saved(self, path: str) -> None:
        """A checkpoint of the current step was written to ``path``: report it (``status.workload.checkpoint``)."""
        self.last_checkpoint = {
            "acknowledged": self.acknowledged_checkpoint,
            "step": self.step,
            "epoch": self.epoch,
            "path": path,
            "time": utc_now_iso(),
        }
        self._publish(urgent=True)

    def save_checkpoint(self, acknowledge: int | None = None) -> None:
        """Save on rank 0 with every rank's RNG state (collective: all ranks call it at the same step).

        With a :attr:`checkpoint_store`, the framework saves instead (see :class:`CheckpointStore`).
        """
        if acknowledge is not None:
            self.acknowledged_checkpoint = max(self.acknowledged_checkpoint, acknowledge)
        if not self.env.checkpoint_dir:  # the same on every rank (one pod template)
            if acknowledge is not None:
                log.warning("checkpoint %d requested but ETJ_CHECKPOINT_DIR is unset; acknowledging", acknowledge)
                self.last_checkpoint = {"acknowledged": self.acknowledged_checkpoint, "time": utc_now_iso()}
                self._publish(urgent=True)
            return
        if self.checkpoint_store is not None:
            self.checkpoint_store.save(self)
            return
        rngs = self.dist.all_gather_object(ckpt.capture_rng())
        if self.rank == 0:
            checkpoint = ckpt.Checkpoint(
                model=self.module.state_dict(),
                optimizer=self.optimizer.state_dict() if self.optimizer is not None else None,
                epoch=self.epoch,
                batch_in_epoch=self.batch_in_epoch,
                step=self.step,
                rng=rngs,
                harness=self.harness_state(),
            )
            self.checkpoint_saved(ckpt.save_checkpoint(self.env.checkpoint_dir, checkpoint))
        self.dist.barrier()

    def _resume(self) -> None:
        if self.checkpoint_store is not None:
            resumed = self.checkpoint_store.resume(self)
            if resumed is not None:
                # the framework loaded the model (its store re-created the pruning structure before that)
                self._restore(resumed.path, resumed.harness, resumed.position)
            return
        path = ckpt.latest_checkpoint(self.env.checkpoint_dir)
        if path is None:
            return
        state = ckpt.load_checkpoint(path)
        self.compression.reapply_structure(self.module, state.harness.get("compression", {}))
        self.module.load_state_dict(state.model)
        if self.optimizer is not None and state.optimizer is not None:
            self.optimizer.load_state_dict(state.optimizer)
        if len(state.rng) == self.dist.world_size:
            ckpt.restore_rng(state.rng[self.rank])
        else:
            log.warning(
                "checkpoint from a world of %d ranks, now %d: RNG states not restored",
                len(state.rng),
                self.dist.world_size,
            )
        self._restore(path, state.harness, Position(state.epoch, state.batch_in_epoch, state.step))

    def _restore(self, path: str, harness_state: dict[str, Any], position: Position) -> None:
        """After the model's state is loaded: the harness's own state and the position."""
        self.compression.requantize(self.module)
        self.power.load_state_dict(harness_state.get("power", {}))
        self.acknowledged_checkpoint = int(harness_state.get("acknowledged_checkpoint", 0))
        self.accuracy = harness_state.get("accuracy")
        self.step = position.step
        epoch, batch = position.epoch, position.batch_in_epoch
        if self.steps_per_epoch > 0 and batch >= self.steps_per_epoch:
            epoch, batch = epoch + 1, 0
        self.epoch, self.batch_in_epoch = epoch, batch
        self._resume_skip = (epoch, batch)
        self.last_checkpoint = {
            "acknowledged": self.acknowledged_checkpoint,
            "step": position.step,
            "epoch": position.epoch,
            "path": path,
        }
        if self.compression.guard_stopped or self.compression.quantized is not None:
            self.stop("AccuracyGuard" if self.compression.guard_stopped else "Quantized")
        log.info("resumed from %s at epoch %d, batch %d, step %d", path, epoch, batch, position.step)

    def metrics_snapshot(self) -> MetricsSnapshot:
        """What the metrics endpoint serves now: this node's GPUs and the job's progress."""
        gpus = sorted([self.gpu.reading(), *self._peer_readings], key=lambda g: g.index)
        progress = {
            "training_step": float(self.step),
            "training_epoch": float(self.epoch),
            "training_samples_per_second": self._samples_per_second,
            "power_limit_watts": self.gpu.power_limit_mw() / 1000.0,
            "compression_stages_applied": float(len(self.compression.kept)),
        }
        if self._last_loss is not None:
            progress["training_loss"] = self._last_loss
        if self.accuracy is not None:
            progress["training_accuracy"] = self.accuracy
        return MetricsSnapshot(
            gpus=gpus,
            progress=progress,
            job=self.env.job_name or "",
            namespace=self.env.job_namespace or "",
            pod=os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or socket.gethostname(),
        )

    def _status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            contract.WORKLOAD_EPOCH: self.epoch,
            contract.WORKLOAD_STEP: self.step,
            contract.WORKLOAD_SAMPLES_PER_SECOND: round(self._samples_per_second, 3),
            contract.WORKLOAD_GPU_SOURCE: self.gpu.source,
            contract.WORKLOAD_POWER_LIMIT_WATTS: round(self.gpu.power_limit_mw() / 1000.0, 3),
            contract.WORKLOAD_STAGES: [r.to_status() for r in self.compression.results],
            contract.WORKLOAD_UPDATED: utc_now_iso(),
        }
        if self._last_loss is not None:
            status[contract.WORKLOAD_LOSS] = round(self._last_loss, 6)
        if self.accuracy is not None:
            status[contract.WORKLOAD_ACCURACY] = round(self.accuracy, 6)
        profile = self.power.profile_report()
        if profile is not None:
            status[contract.WORKLOAD_POWER_PROFILE] = profile
        if self.last_checkpoint is not None:
            status[contract.WORKLOAD_CHECKPOINT] = self.last_checkpoint
        if self.stop_reason is not None:
            status[contract.WORKLOAD_STOP_REASON] = self.stop_reason
        if self.steps_total is not None and self.steps_total >= 0:
            status[contract.WORKLOAD_STEPS_TOTAL] = int(self.steps_total)
        if self.samples_per_step > 0:
            status[contract.WORKLOAD_SAMPLES_PER_STEP] = int(self.samples_per_step)
        if self.comm_reader is not None:
            comm = self.comm_reader.stats(self.timed_steps, self.timed_step_seconds)
            if comm is not None:
                status[contract.WORKLOAD_COMMUNICATION] = comm.to_status()
        return status

    def _publish(self, urgent: bool = False) -> None:
        if self.channel is not None:
            self.channel.publish(self._status(), urgent=urgent)

    def status(self) -> dict[str, Any]:
        """Return the status.workload this rank would publish now."""
        return self._status()
