"""Power control: Unmanaged, Fixed and Auto limits, capped by the operator's throttle.

The :class:`PowerController` drives one GPU (this rank's). Decisions live in :mod:`profiler` (pure);
this module performs them: it opens and closes measurement windows, reduces them across ranks with
an injected function (so all ranks see the same job-wide figures and choose the same limit), and
sets limits. The limit in force is always ``min(target, operator cap)`` clamped to the device's
constraints, where the target is the Fixed limit, the Auto candidate or choice, or the default.

A window measures training only: its energy is the counter's increase from each step's begin to its end
(evaluation, checkpoints and stages between steps are left out), its time the steps' device time; an
epoch boundary or an evaluation cancels the open window and the limit settles again.

Auto and the throttle. Auto's choice is the limit it would pick without the cap (``maxSlowdown`` is relative
to the uncapped speed); the cap only bounds it: ``min(choice, cap)``, so a cap that comes and goes leaves
the choice as it was. A cap that arrives while profiling, or is lifted when the choice was limited by it (or
the uncapped speed was never measured), profiles again, keeping what was measured. A compression stage that
changes the model, or a monitored step time that drifts, profiles again from scratch.

With ``ETJ_POWER_ENFORCER=agent`` the node agent sets every limit on the node's GPUs (docs/node-agent.md) and
the pod has no SYS_ADMIN: the controller sets no limit. Outside Auto mode it only reports the one in force. In
Auto mode it *asks* for each limit (a candidate, the choice, a re-check) in its report: ``powerProfile
.requestedWatts`` with a new ``requestSeq``, published at once through :attr:`PowerController.on_request`. The
operator clamps the request into ``status.control.autoLimitWattsPerGPU`` and the agent applies it. Meanwhile
training goes on but no window counts: the profiler is not advanced, and a window due opens only once every
rank's GPU reads back the limit asked (within :data:`CONFIRM_TOLERANCE_MW`; reading a limit needs no privilege,
and a simulated node GPU reads the node's). The ranks agree on that through the window reducer (one small
all-reduce per step while they wait). If the GPUs do not show it within ``request_timeout_seconds``, Auto gives
up: it stops profiling, asks for the last limit the GPUs confirmed (or for nothing: the agent's default) and
reports ``reason: fallback``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import etj_contract as contract
from etj_workload import profiler
from etj_workload.config import PowerEnforcer, PowerPolicy, parse_power_enforcer
from etj_workload.gpu import Gpu, GpuError, GpuPermissionError

__all__ = ["CONFIRM_TOLERANCE_MW", "REQUEST_TIMEOUT_SECONDS", "PowerController", "WindowReducer", "auto_plan"]

log = logging.getLogger(__name__)

#: Reduce one rank's window (joules, seconds) to the job's: (sum of joules, max of seconds).
WindowReducer = Callable[[float, float], tuple[float, float]]

#: Mode Auto with the node agent: how long a requested limit may take to show on the GPUs before Auto gives up
#: (one report round trip, the operator's pass and one agent cycle take seconds; this leaves room for a
#: backed-off patch and an agent that retries). Units: s.
REQUEST_TIMEOUT_SECONDS = 120.0
#: A limit read back within this of the one asked counts as applied (the agent works in mW). Units: mW.
CONFIRM_TOLERANCE_MW = 1000
#: powerProfile.reason when Auto gave up waiting for the agent.
FALLBACK_REASON = "fallback"


def _local_reducer(joules: float, seconds: float) -> tuple[float, float]:
    return joules, seconds


def auto_plan(
    policy: PowerPolicy,
    *,
    min_watts: float,
    max_watts: float,
    world_size: int = 1,
    cap_watts: int | None = None,
    known: tuple[profiler.LimitStats, ...] = (),
    horizon_steps: int | None = None,
) -> profiler.ProfilePlan:
    """The profiler's plan for this device from the spec's ``auto`` settings (docs/harness.md lists the mapping).

    ``warmupSteps``: unmeasured steps before the first window and after every limit change (at most 2 of
    them after a change: a power limit takes effect within milliseconds, and a limit that settles slower is
    caught by the trend test); ``profileSteps``: the least measured steps per limit (windows of half of it),
    the most being 4x (6x at the top limit) when the noise asks for more; ``stepWatts``: the search grid, with
    a final fine step at 1 W.
    """
    auto = policy.auto
    low = int(min_watts + 0.999999)
    device_top = int(max_watts)
    top = device_top if cap_watts is None else max(low, min(device_top, int(cap_watts)))
    window = max(1, auto.profile_steps // 2)
    return profiler.ProfilePlan(
        min_watts=low,
        max_watts=top,
        eta=auto.eta,
        max_power_watts=max_watts * world_size,
        max_slowdown=auto.max_slowdown,
        uncapped_watts=device_top,
        resolution_watts=auto.step_watts,
        fine_watts=1,
        wait_steps=auto.warmup_steps,
        settle_steps=min(auto.warmup_steps, 2),
        window_steps=window,
        min_steps=auto.profile_steps,
        max_steps=4 * auto.profile_steps,
        baseline_max_steps=6 * auto.profile_steps,
        bound_max_steps=2 * auto.profile_steps,
        recheck_steps=3 * auto.profile_steps,
        known=known,
        horizon_steps=horizon_steps,
    )


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
        horizon_steps: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        request_timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.gpu = gpu
        #: The job's expected length in steps, if known (the slowdown bound then covers profiling too).
        self.horizon_steps = horizon_steps
        self.policy = policy
        #: Who sets Fixed limits and the throttle (``ETJ_POWER_ENFORCER``, read from the environment when None).
        self.enforcer: PowerEnforcer = (
            parse_power_enforcer(os.environ.get(contract.ENV_ETJ_POWER_ENFORCER)) if enforcer is None else enforcer
        )
        #: Whether this controller sets limits at all: not where the node agent enforces them, in any mode, on
        #: any backend. A simulated node GPU then gets its cap from the agent's simulated backend.
        self.sets_limits = self.enforcer != "agent"
        #: Mode Auto with the agent: the limits are asked for in the report and confirmed on the GPU.
        self.asks_agent = self.enforcer == "agent" and policy.mode == "Auto"
        if self.asks_agent:
            log.info(
                "Auto power mode through the node agent (%s=agent): each limit is asked for in the report and "
                "counted once the GPU reports it (giving up after %g s)",
                contract.ENV_ETJ_POWER_ENFORCER, request_timeout_seconds,
            )
        elif not self.sets_limits and (policy.mode == "Fixed" or policy.budget_watts is not None):
            log.info(
                "power limits are the node agent's (%s=agent): the harness sets none and reports the limit in force",
                contract.ENV_ETJ_POWER_ENFORCER,
            )
        self._clock = clock
        self.request_timeout_seconds = request_timeout_seconds
        #: Called when a new request is made (the harness publishes its report at once); None: the next publish.
        self.on_request: Callable[[], None] | None = None
        #: The limit asked for (W per GPU; None: none), its number, and when it was asked (the clock's seconds).
        self.requested_watts: int | None = None
        self.request_seq = 0
        self._requested_at = 0.0
        #: Whether a request waits for the GPUs to show it (no window counts meanwhile).
        self.awaiting_limit = False
        self._open_on_confirm = False
        #: The last limit every rank's GPU reported as asked. Units: W.
        self.confirmed_watts: int | None = None
        #: Auto gave up on the agent (a request not shown in time): no more profiling, no more requests.
        self.fallback = False
        self._fallback_stats: tuple[profiler.LimitStats, ...] = ()
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
        #: The limit Auto would pick without the cap (None: not known, e.g. capped since profiling started).
        self.uncapped_watts: int | None = None
        self.decision: profiler.Decision | None = None
        #: The top limit the choice was made under (a cap's, or the device's maximum).
        self.decided_under_watts: int | None = None
        #: Profiling steps spent over the job (every profile, re-profiles included).
        self.profile_steps_total = 0
        self.profiles = 0
        self._steps_done = 0
        self.limits_unavailable = False
        self._window_open = False
        self._window_joules = 0.0
        self._window_seconds = 0.0
        self._window_steps = 0
        self._step_energy_start_mj: int | None = None
        self._last_mark_mj = 0
        self._applied_mw: int | None = None

    # --- lifecycle --------------------------------------------------------------------------------
    def train_begin(self) -> None:
        """Apply the policy's first limit (Fixed) or start profiling (Auto, unless resumed with a choice)."""
        if self.policy.mode == "Fixed" and self.policy.limit_watts is not None:
            self.target_watts = float(self.policy.limit_watts)
        elif self.policy.mode == "Auto":
            if self.chosen_watts is not None:
                self.plan = self._plan()
                if self.decided_under_watts is None:
                    known = self.uncapped_watts is not None
                    self.decided_under_watts = self.plan.max_watts if known else self.chosen_watts
                self.target_watts = float(self.chosen_watts)
                self.state = profiler.Decided(
                    self.chosen_watts, decision=self.decision, steps_left=self.plan.monitor_steps
                )
                self._open_window()
            else:
                self._start_profiling()
        self._apply()

    def _plan(self, known: tuple[profiler.LimitStats, ...] = ()) -> profiler.ProfilePlan:
        return auto_plan(
            self.policy,
            min_watts=self.min_watts,
            max_watts=self.max_watts,
            world_size=self.world_size,
            cap_watts=self.cap_watts,
            known=known,
            horizon_steps=None if self.horizon_steps is None else max(1, self.horizon_steps - self._steps_done),
        )

    def _kept_measurements(self) -> tuple[profiler.LimitStats, ...]:
        """What was measured so far (this profile's and the ones it kept), for a profile that goes on."""
        if self.state is None or self.plan is None:
            return ()
        mine = self.state.k.stats
        return (*mine, *(s for s in self.plan.known if all(m.watts != s.watts for m in mine)))

    def _start_profiling(self, known: tuple[profiler.LimitStats, ...] = ()) -> None:
        self.plan = self._plan(known)
        self.chosen_watts = None
        self.profiles += 1
        self._perform(profiler.start(self.plan))

    @property
    def profiling(self) -> bool:
        """Whether the Auto profiler is still measuring candidates."""
        return self.state is not None and not isinstance(self.state, profiler.Decided)

    def step_begin(self) -> None:
        """A step starts: note the energy counter when a window is open (the window counts steps only)."""
        if self._window_open:
            self._step_energy_start_mj = self.gpu.energy_mj()

    def _capped_below_choice(self) -> bool:
        """Whether the operator's cap holds the GPU under the chosen limit (monitoring the choice pauses)."""
        return (
            isinstance(self.state, profiler.Decided)
            and self.cap_watts is not None
            and self.cap_watts < self.state.chosen_watts
        )

    def step_end(self, device_seconds: float) -> None:
        """Advance the profiler by one finished step of ``device_seconds`` (call on every rank)."""
        if self.plan is None or self.state is None:
            return
        if self.awaiting_limit:  # the step ran under a limit not confirmed: it advances nothing
            self._steps_done += 1
            if not isinstance(self.state, profiler.Decided) or self.state.rechecking:
                self.profile_steps_total += 1
            self._await_limit()
            return
        if self._capped_below_choice():
            self._window_open = False  # the cap's steps say nothing about the choice: no drift, no tuning
            self._steps_done += 1
            return
        if isinstance(self.state, profiler.Measuring | profiler.Decided) and self._window_open:
            now_mj = self.gpu.energy_mj()
            # The counter at the step's begin; without a step_begin (a caller that has none), at the last step's end.
            start_mj = self._step_energy_start_mj if self._step_energy_start_mj is not None else self._last_mark_mj
            self._last_mark_mj = now_mj
            self._window_joules += (now_mj - start_mj) / 1000.0
            self._window_seconds += device_seconds
            self._window_steps += 1
            self._step_energy_start_mj = None
        if profiler.needs_window(self.state):
            self._sync()
            joules_sum, seconds_max = self._reducer(self._window_joules, self._window_seconds)
            steps = max(1, self._window_steps)
            if isinstance(self.state, profiler.Measuring):
                watts = self.state.watts
            elif isinstance(self.state, profiler.Decided):
                watts = self.plan.top if self.state.rechecking else self.state.chosen_watts
            else:  # pragma: no cover - needs_window is true for these two only
                watts = self.plan.top
            window = profiler.Measurement(watts, joules_sum / steps, seconds_max / steps, steps)
            self._window_open = False
            transition = profiler.step_end(self.plan, self.state, window, device_seconds)
        else:
            transition = profiler.step_end(self.plan, self.state, seconds=device_seconds)
        self._steps_done += 1
        if not isinstance(self.state, profiler.Decided) or self.state.rechecking:
            self.profile_steps_total += 1
        self._perform(transition)

    def interrupt(self) -> None:
        """Evaluation or an epoch boundary: cancel the open window (every rank calls it at the same point)."""
        if self.plan is None or self.state is None:
            return
        self._window_open = False
        self._open_on_confirm = False
        self._perform(profiler.interrupt(self.plan, self.state))

    def workload_changed(self) -> None:
        """The model changed (a compression stage): profile again from scratch (Auto only)."""
        if self.policy.mode != "Auto" or self.state is None:
            return
        log.info("the workload changed; Auto profiles again")
        self.uncapped_watts = None
        self._start_profiling()
        self._apply()

    def _open_window(self) -> None:
        self._sync()
        self._last_mark_mj = self.gpu.energy_mj()
        self._window_open = True
        self._window_joules = 0.0
        self._window_seconds = 0.0
        self._window_steps = 0
        self._step_energy_start_mj = None

    def _perform(self, transition: profiler.Transition) -> None:
        self.state = transition.state
        if transition.reprofile:
            log.info("the step time at %s W drifted; Auto profiles again", self.chosen_watts)
            self.uncapped_watts = None
            self._start_profiling()
            return
        if transition.set_limit_watts is not None:
            self.target_watts = float(transition.set_limit_watts)
            self._apply()
        if isinstance(self.state, profiler.Decided) and self.chosen_watts != self.state.chosen_watts:
            first = self.chosen_watts is None
            self.chosen_watts = self.state.chosen_watts
            self.decision = self.state.decision
            self.uncapped_watts = self.decision.uncapped_watts if self.decision is not None else self.chosen_watts
            if first:
                self.decided_under_watts = self.plan.max_watts if self.plan is not None else None
                log.info(
                    "Auto power limit chosen: %d W (%s; without the cap: %s)",
                    self.chosen_watts,
                    self.decision.reason if self.decision else "resumed",
                    "unknown" if self.uncapped_watts is None else f"{self.uncapped_watts} W",
                )
            else:
                log.info("Auto power limit tuned to %d W (the monitored slowdown)", self.chosen_watts)
        if transition.open_window:
            if self.awaiting_limit:
                self._open_on_confirm = True  # opens once the GPUs show the limit asked
            else:
                self._open_window()

    def set_cap(self, cap_watts: int | None) -> None:
        """Obey the operator's job-wide throttle (status.control.powerLimitWattsPerGPU); None lifts it.

        While profiling, a cap below the current top, or a lifted one, profiles again over the limits now
        allowed, keeping what was measured. Once decided, the choice stays and the cap bounds it; a lifted cap
        profiles again only where the choice was limited by it (the uncapped choice is unknown).
        """
        if cap_watts == self.cap_watts:
            return
        previous = self.cap_watts
        was_capped = self._capped_below_choice()
        self.cap_watts = cap_watts
        if was_capped and not self._capped_below_choice() and self.plan is not None and self.state is not None:
            self._perform(profiler.interrupt(self.plan, self.state))  # monitoring resumes with a fresh window
        if self.policy.mode == "Auto" and self.plan is not None and self.state is not None:
            new_top = self._plan().max_watts
            if self.profiling and new_top != self.plan.max_watts:
                log.info("power cap %s W (was %s) while profiling; profiling again, keeping the measurements",
                         cap_watts, previous)
                self._start_profiling(self._kept_measurements())
            elif (
                not self.profiling
                and self.uncapped_watts is None
                and new_top > (self.decided_under_watts or self.plan.max_watts)
            ):
                log.info("power cap lifted to %s W; profiling the limits it allows again", cap_watts)
                self._start_profiling(self._kept_measurements())
        self._apply()

    def effective_limit_watts(self) -> float | None:
        """Return the limit the controller wants in force, or None when it leaves the GPU alone."""
        target = self.target_watts
        if self.cap_watts is not None:
            target = self.cap_watts if target is None else min(target, self.cap_watts)
        if target is None:
            return None
        return min(max(float(target), self.min_watts), self.max_watts)

    def _request(self, limit_watts: float | None) -> None:
        """Ask the node agent for ``limit_watts`` through the report (mode Auto with the agent)."""
        if limit_watts is None or self.fallback:
            return
        watts = round(limit_watts)
        if watts == self.requested_watts:
            return
        self.request_seq += 1
        self.requested_watts = watts
        self._requested_at = self._clock()
        self.awaiting_limit = True
        if self._window_open:  # a window measures one limit: it opens again once the new one shows
            self._window_open = False
            self._open_on_confirm = True
        log.info("asking the node agent for %d W per GPU (request %d)", watts, self.request_seq)
        if self.on_request is not None:
            self.on_request()

    def _gpu_shows_request(self) -> bool:
        if self.requested_watts is None:
            return True
        try:
            limit_mw = self.gpu.power_limit_mw()
        except GpuError as e:
            log.debug("cannot read the power limit: %s", e)
            return False
        return abs(limit_mw - self.requested_watts * 1000) <= CONFIRM_TOLERANCE_MW

    def _await_limit(self) -> None:
        """At a step's end while a request waits: every rank's GPU shows it (go on), or the time is up (give up).

        A collective: every rank is waiting at the same steps (they ask at the same steps), and the reducer
        makes them agree: the ranks not shown yet are summed, the time waited is the longest.
        """
        waited = max(0.0, self._clock() - self._requested_at)
        pending, waited = self._reducer(0.0 if self._gpu_shows_request() else 1.0, waited)
        if pending < 0.5:
            self.awaiting_limit = False
            self.confirmed_watts = self.requested_watts
            log.info("the GPUs show %s W (request %d) after %.1f s", self.requested_watts, self.request_seq, waited)
            if self._open_on_confirm:
                self._open_on_confirm = False
                self._open_window()
            return
        if waited > self.request_timeout_seconds:
            self._give_up(waited)

    def _give_up(self, waited: float) -> None:
        """The GPUs did not show the limit asked in time: stop profiling, keep the last confirmed limit."""
        asked = self.requested_watts
        self._fallback_stats = self._kept_measurements()
        self.fallback = True
        self.awaiting_limit = self._open_on_confirm = self._window_open = False
        self.state = None  # the profiler stops: no window, no candidate, no re-profile
        kept = self.confirmed_watts
        self.requested_watts = kept
        self.target_watts = None if kept is None else float(kept)
        log.warning(
            "the GPUs did not show %s W (request %d) within %.0f s (is the node agent running on this node?); "
            "Auto stops profiling and keeps %s",
            asked, self.request_seq, waited, "no limit (the default)" if kept is None else f"{kept} W",
        )

    def _apply(self) -> None:
        limit_watts = self.effective_limit_watts()
        if self.asks_agent:
            self._request(limit_watts)
            return
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
        """Put the default limit back (idempotent; safe from signal handlers and finally blocks).

        With the agent in Auto mode: withdraw the request (the report then asks nothing; the agent gives the
        GPUs their default once the job ends or the operator's answer is cleared).
        """
        if self.asks_agent:
            self.requested_watts = None
            self.awaiting_limit = False
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
        if self.fallback and self.plan is not None:
            return self._fallback_report(self.plan)
        if self.plan is None or self.state is None:
            return None
        plan, d = self.plan, self.decision
        return contract.PowerProfile(
            chosen_watts=self.chosen_watts,  # None while profiling (left out of the status)
            candidates=self._candidates(plan, self._kept_measurements()),
            uncapped_watts=self.uncapped_watts if self.chosen_watts is not None else None,
            reason=d.reason if d is not None and self.chosen_watts is not None else None,
            profile_steps=self.profile_steps_total,
            slowdown=d.slowdown if d is not None and self.chosen_watts is not None else None,
            slowdown_margin=d.slowdown_margin if d is not None and self.chosen_watts is not None else None,
            **self._request_fields(),
        ).to_status()

    def _request_fields(self) -> dict[str, Any]:
        if not self.asks_agent or self.requested_watts is None:
            return {}
        return {"requested_watts": self.requested_watts, "request_seq": self.request_seq}

    @staticmethod
    def _candidates(
        plan: profiler.ProfilePlan, stats: tuple[profiler.LimitStats, ...]
    ) -> tuple[contract.ProfileCandidate, ...]:
        return tuple(
            contract.ProfileCandidate(
                watts=s.watts,
                joules_per_step=round(s.joules, 6),
                seconds_per_step=round(s.seconds, 6),
                cost=round(profiler.limit_cost(s.measurement(), plan.eta, plan.max_power_watts), 6),
            )
            for s in sorted((s for s in stats if s.windows), key=lambda s: -s.watts)[: contract.MAX_CANDIDATES]
        )

    def _fallback_report(self, plan: profiler.ProfilePlan) -> dict[str, Any]:
        """Auto gave up on the agent: the limit kept (the last the GPUs showed), what was measured, and why."""
        return contract.PowerProfile(
            chosen_watts=self.confirmed_watts,
            candidates=self._candidates(plan, self._fallback_stats),
            reason=FALLBACK_REASON,
            profile_steps=self.profile_steps_total,
            **self._request_fields(),
        ).to_status()

    def state_dict(self) -> dict[str, Any]:
        """Return what a checkpoint keeps: the Auto choice, the uncapped one and the top it was made under.

        A resumed job does not profile again; a choice the cap limited profiles again once the cap lifts.
        """
        return {
            "chosen_watts": self.chosen_watts,
            "uncapped_watts": self.uncapped_watts,
            "decided_under_watts": self.decided_under_watts,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (call before :meth:`train_begin`)."""
        chosen = state.get("chosen_watts")
        self.chosen_watts = int(chosen) if chosen is not None else None
        uncapped = state.get("uncapped_watts", chosen)
        self.uncapped_watts = int(uncapped) if uncapped is not None else None
        under = state.get("decided_under_watts")
        self.decided_under_watts = int(under) if under is not None else None
