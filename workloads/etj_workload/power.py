"""Power control: Unmanaged, Fixed and Auto limits, capped by the operator's throttle.

The :class:`PowerController` drives one GPU (this rank's). Decisions live in :mod:`profiler` (pure);
this module performs them: it opens and closes measurement windows, reduces them across ranks with
an injected function (so all ranks see the same job-wide figures and choose the same limit), and
sets limits. The limit in force is always ``min(target, operator cap)`` clamped to the device's
constraints, where the target is the Fixed limit, the Auto candidate or choice, or the default.

With ``ETJ_POWER_ENFORCER=agent`` the node agent sets the Fixed limit and the throttle on the node's GPUs
(docs/node-agent.md), and the pod has no SYS_ADMIN: outside Auto mode the controller then sets no limit and
only reports the one in force. Auto mode still sets its candidates and its choice itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import etj_contract as contract
from etj_workload import profiler
from etj_workload.config import PowerEnforcer, PowerPolicy, parse_power_enforcer
from etj_workload.gpu import Gpu, GpuError, GpuPermissionError

__all__ = ["PowerController", "WindowReducer"]

log = logging.getLogger(__name__)

#: Reduce one rank's window (joules, seconds) to the job's: (sum of joules, max of seconds).
WindowReducer = Callable[[float, float], tuple[float, float]]


def _local_reducer(joules: float, seconds: float) -> tuple[float, float]:
    return joules, seconds


class PowerController:
    """Applies the power policy to one GPU; every rank holds one and calls it at the same steps."""

    def __init__(
        self,
        gpu: Gpu,
        policy: PowerPolicy,
        *,
        world_size: int = 1,
        reducer: WindowReducer = _local_reducer,
        sync: Callable[[], None] | None = None,
        enforcer: PowerEnforcer | None = None,
    ) -> None:
        self.gpu = gpu
        self.policy = policy
        #: Who sets Fixed limits and the throttle (``ETJ_POWER_ENFORCER``, read from the environment when None).
        self.enforcer: PowerEnforcer = (
            parse_power_enforcer(os.environ.get(contract.ENV_ETJ_POWER_ENFORCER)) if enforcer is None else enforcer
        )
        #: Whether this controller sets limits at all: not where the node agent enforces them (every mode but
        #: Auto), on any backend. A simulated node GPU then gets its cap from the agent's simulated backend.
        self.sets_limits = not (self.enforcer == "agent" and policy.mode != "Auto")
        if not self.sets_limits and (policy.mode == "Fixed" or policy.budget_watts is not None):
            log.info(
                "power limits are the node agent's (%s=agent): the harness sets none and reports the limit in force",
                contract.ENV_ETJ_POWER_ENFORCER,
            )
        elif self.enforcer == "agent" and policy.mode == "Auto":
            log.info(
                "Auto power mode: the harness sets its candidate limits itself (the node agent has no "
                "pod-local channel yet), so this pod needs SYS_ADMIN"
            )
        self.world_size = world_size
        self._reducer = reducer
        self._sync = sync or (lambda: None)
        min_mw, max_mw = gpu.power_limit_constraints_mw()
        self.min_watts = min_mw / 1000.0
        self.max_watts = max_mw / 1000.0
        self.default_watts = gpu.default_power_limit_mw() / 1000.0
        self.cap_watts: int | None = None
        self.target_watts: float | None = None
        self.state: profiler.ProfilerState | None = None
        self.plan: profiler.ProfilePlan | None = None
        self.chosen_watts: int | None = None
        self.limits_unavailable = False
        self._window_energy_start_mj = 0
        self._window_seconds = 0.0
        self._window_steps = 0
        self._applied_mw: int | None = None

    # --- lifecycle --------------------------------------------------------------------------------
    def train_begin(self) -> None:
        """Apply the policy's first limit (Fixed) or start profiling (Auto, unless resumed with a choice)."""
        if self.policy.mode == "Fixed" and self.policy.limit_watts is not None:
            self.target_watts = float(self.policy.limit_watts)
        elif self.policy.mode == "Auto":
            if self.chosen_watts is not None:
                self.target_watts = float(self.chosen_watts)
                self.state = profiler.Decided(self.chosen_watts)
            else:
                self._start_profiling()
        self._apply()

    def _start_profiling(self) -> None:
        auto = self.policy.auto
        high = self.max_watts if self.cap_watts is None else max(self.min_watts, min(self.max_watts, self.cap_watts))
        self.plan = profiler.ProfilePlan(
            candidates_watts=profiler.candidate_limits_watts(self.min_watts, high, auto.step_watts),
            warmup_steps=auto.warmup_steps,
            profile_steps=auto.profile_steps,
            eta=auto.eta,
            max_power_watts=self.max_watts * self.world_size,
            max_slowdown=auto.max_slowdown,
        )
        self._perform(profiler.start(self.plan))

    @property
    def profiling(self) -> bool:
        """Whether the Auto profiler is still measuring candidates."""
        return self.state is not None and not isinstance(self.state, profiler.Decided)

    def step_end(self, device_seconds: float) -> None:
        """Advance the profiler by one finished step of ``device_seconds`` (call on every rank)."""
        if self.plan is None or self.state is None or isinstance(self.state, profiler.Decided):
            return
        if isinstance(self.state, profiler.Measuring):
            self._window_seconds += device_seconds
            self._window_steps += 1
        window = None
        if profiler.needs_window(self.state):
            self._sync()
            joules = (self.gpu.energy_mj() - self._window_energy_start_mj) / 1000.0
            joules_sum, seconds_max = self._reducer(joules, self._window_seconds)
            assert isinstance(self.state, profiler.Measuring)
            window = profiler.Measurement(
                watts=self.plan.candidates_watts[self.state.index],
                joules_per_step=joules_sum / self._window_steps,
                seconds_per_step=seconds_max / self._window_steps,
            )
        self._perform(profiler.step_end(self.plan, self.state, window))

    def _perform(self, transition: profiler.Transition) -> None:
        self.state = transition.state
        if transition.set_limit_watts is not None:
            self.target_watts = float(transition.set_limit_watts)
            self._apply()
        if isinstance(self.state, profiler.Decided):
            self.chosen_watts = self.state.chosen_watts
            log.info("Auto power limit chosen: %d W", self.chosen_watts)
        if transition.open_window:
            self._sync()
            self._window_energy_start_mj = self.gpu.energy_mj()
            self._window_seconds = 0.0
            self._window_steps = 0

    def set_cap(self, cap_watts: int | None) -> None:
        """Obey the operator's job-wide throttle (status.control.powerLimitWattsPerGPU); None lifts it.

        A cap that arrives while Auto is profiling restarts profiling over the candidates under the cap.
        """
        if cap_watts == self.cap_watts:
            return
        self.cap_watts = cap_watts
        if (
            self.profiling
            and cap_watts is not None
            and self.plan is not None
            and cap_watts < self.plan.candidates_watts[0]
        ):
            log.info("power cap %d W arrived while profiling; profiling again under the cap", cap_watts)
            self._start_profiling()
        self._apply()

    def effective_limit_watts(self) -> float | None:
        """Return the limit the controller wants in force, or None when it leaves the GPU alone."""
        target = self.target_watts
        if self.cap_watts is not None:
            target = self.cap_watts if target is None else min(target, self.cap_watts)
        if target is None:
            return None
        return min(max(float(target), self.min_watts), self.max_watts)

    def _apply(self) -> None:
        limit_watts = self.effective_limit_watts()
        if limit_watts is None or self.limits_unavailable or not self.sets_limits:
            return
        limit_mw = round(limit_watts * 1000)
        if limit_mw == self._applied_mw:
            return
        try:
            self.gpu.set_power_limit_mw(limit_mw)
            self._applied_mw = limit_mw
        except GpuPermissionError as e:
            self.limits_unavailable = True
            log.warning("cannot set power limits (needs CAP_SYS_ADMIN); training continues uncapped: %s", e)
        except GpuError as e:
            log.warning("setting the power limit to %d mW failed: %s", limit_mw, e)

    def restore(self) -> None:
        """Put the default limit back (idempotent; safe from signal handlers and finally blocks)."""
        if self._applied_mw is None:
            return
        try:
            self.gpu.restore_power_limit()
            self._applied_mw = None
        except GpuError as e:
            log.error("could not restore the default power limit: %s", e)

    # --- reporting and checkpoints ----------------------------------------------------------------
    def limit_in_force_watts(self) -> float:
        """Return the device's current limit."""
        return self.gpu.power_limit_mw() / 1000.0

    def profile_report(self) -> dict[str, Any] | None:
        """Return the report's powerProfile (the contract's record, camelCase), or None outside Auto mode."""
        if self.plan is None or self.state is None:
            return None
        done = self.state.measurements if isinstance(self.state, profiler.Decided) else self.state.done
        return contract.PowerProfile(
            chosen_watts=self.chosen_watts,  # None while profiling (left out of the status)
            candidates=tuple(
                contract.ProfileCandidate(
                    watts=m.watts,
                    joules_per_step=round(m.joules_per_step, 6),
                    seconds_per_step=round(m.seconds_per_step, 6),
                    cost=round(profiler.limit_cost(m, self.plan.eta, self.plan.max_power_watts), 6),
                )
                for m in done
            ),
        ).to_status()

    def state_dict(self) -> dict[str, Any]:
        """Return what a checkpoint keeps: the Auto choice, so a resumed job does not profile again."""
        return {"chosen_watts": self.chosen_watts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (call before :meth:`train_begin`)."""
        chosen = state.get("chosen_watts")
        self.chosen_watts = int(chosen) if chosen is not None else None
