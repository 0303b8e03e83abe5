"""The Auto power-limit profiler: a pure state machine over training steps.

The profiler tries candidate limits from the maximum down in ``step_watts`` steps. For each candidate
it runs ``warmup_steps`` unmeasured steps (the clock settles), then ``profile_steps`` measured steps,
then moves on; with ``max_slowdown`` it stops descending as soon as a candidate is slower than that
factor of the first (max-limit) candidate, since lower limits are only slower. Then it chooses the
candidate with the least cost ``eta*E + (1-eta)*P_max*T`` per step among those within the slowdown.

Every rank runs the same machine on the same step counter and feeds it the same job-wide measurement
(all-reduced by the caller), so every rank changes its limit at the same step and chooses the same
limit. Nothing here touches a GPU, a clock or torch: the caller performs the returned actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "Decided",
    "Measurement",
    "Measuring",
    "ProfilePlan",
    "ProfilerState",
    "Transition",
    "Warmup",
    "candidate_limits_watts",
    "choose_limit_watts",
    "limit_cost",
    "needs_window",
    "start",
    "step_end",
]


@dataclass(frozen=True)
class Measurement:
    """Job-wide figures of one candidate: energy (summed over GPUs) and time per step."""

    watts: int
    joules_per_step: float
    seconds_per_step: float


@dataclass(frozen=True)
class ProfilePlan:
    """What to profile and how to choose (all ranks hold an identical plan)."""

    candidates_watts: tuple[int, ...]
    warmup_steps: int
    profile_steps: int
    eta: float
    max_power_watts: float
    """Max limit times the number of GPUs: the time term's weight, as in Zeus."""
    max_slowdown: float | None = None


@dataclass(frozen=True)
class Warmup:
    """Running unmeasured steps at ``candidates[index]``.

    Transitions: after ``steps_left`` more steps -> :class:`Measuring` (same index; the caller opens a
    measurement window). With zero warmup steps the machine enters Measuring directly.
    """

    index: int
    steps_left: int
    done: tuple[Measurement, ...] = ()


@dataclass(frozen=True)
class Measuring:
    """Running measured steps at ``candidates[index]``.

    Transitions: after ``steps_left`` more steps the caller closes the window and passes the
    measurement; then -> :class:`Warmup` of the next candidate (set its limit), or -> :class:`Decided`
    when the candidates are exhausted or the slowdown bound was crossed.
    """

    index: int
    steps_left: int
    done: tuple[Measurement, ...] = ()


@dataclass(frozen=True)
class Decided:
    """Profiling is over; ``chosen_watts`` holds for the rest of the job. Terminal."""

    chosen_watts: int
    measurements: tuple[Measurement, ...] = field(default=())


ProfilerState = Warmup | Measuring | Decided


@dataclass(frozen=True)
class Transition:
    """The next state and what the caller must do at this step boundary."""

    state: ProfilerState
    set_limit_watts: int | None = None
    open_window: bool = False
    close_window: bool = False


def candidate_limits_watts(min_watts: float, max_watts: float, step_watts: int) -> tuple[int, ...]:
    """Return the candidate limits, max first, every ``step_watts`` down to (and including) the minimum."""
    if step_watts < 1:
        raise ValueError(f"step_watts must be >= 1, got {step_watts}")
    high, low = int(max_watts), int(min_watts + 0.999999)
    candidates = list(range(high, low - 1, -step_watts))
    if candidates[-1] != low and low <= high:
        candidates.append(low)
    return tuple(candidates)


def limit_cost(measurement: Measurement, eta: float, max_power_watts: float) -> float:
    """Return Zeus's cost of one step: ``eta*E + (1-eta)*max_power*T``."""
    return eta * measurement.joules_per_step + (1.0 - eta) * max_power_watts * measurement.seconds_per_step


def choose_limit_watts(
    measurements: Sequence[Measurement], eta: float, max_power_watts: float, max_slowdown: float | None = None
) -> int:
    """Return the least-cost limit, among those within ``max_slowdown`` of the first (max-limit) one."""
    if not measurements:
        raise ValueError("no measurements to choose from")
    feasible = list(measurements)
    if max_slowdown is not None:
        bound = max_slowdown * measurements[0].seconds_per_step
        feasible = [m for m in measurements if m.seconds_per_step <= bound] or [measurements[0]]
    return min(feasible, key=lambda m: (limit_cost(m, eta, max_power_watts), -m.watts)).watts


def start(plan: ProfilePlan) -> Transition:
    """Enter profiling: set the first candidate's limit."""
    if not plan.candidates_watts:
        raise ValueError("no candidate limits")
    first = plan.candidates_watts[0]
    if plan.warmup_steps > 0:
        return Transition(Warmup(0, plan.warmup_steps), set_limit_watts=first)
    return Transition(Measuring(0, plan.profile_steps), set_limit_watts=first, open_window=True)


def _after_candidate(plan: ProfilePlan, index: int, done: tuple[Measurement, ...]) -> Transition:
    crossed = plan.max_slowdown is not None and done[-1].seconds_per_step > plan.max_slowdown * done[0].seconds_per_step
    following = index + 1
    if crossed or following >= len(plan.candidates_watts):
        chosen = choose_limit_watts(done, plan.eta, plan.max_power_watts, plan.max_slowdown)
        return Transition(Decided(chosen, done), set_limit_watts=chosen, close_window=True)
    limit = plan.candidates_watts[following]
    if plan.warmup_steps > 0:
        return Transition(Warmup(following, plan.warmup_steps, done), set_limit_watts=limit, close_window=True)
    return Transition(
        Measuring(following, plan.profile_steps, done), set_limit_watts=limit, close_window=True, open_window=True
    )


def step_end(plan: ProfilePlan, state: ProfilerState, window: Measurement | None = None) -> Transition:
    """Advance the machine by one finished step.

    When the ending step is the last measured step of a candidate (:func:`needs_window`), the caller
    closes its measurement window first and passes the window's job-wide measurement as ``window``.
    """
    if isinstance(state, Decided):
        return Transition(state)
    if isinstance(state, Warmup):
        if state.steps_left > 1:
            return Transition(Warmup(state.index, state.steps_left - 1, state.done))
        return Transition(Measuring(state.index, plan.profile_steps, state.done), open_window=True)
    if state.steps_left > 1:
        return Transition(Measuring(state.index, state.steps_left - 1, state.done))
    if window is None:
        raise ValueError("the last measured step of a candidate needs its window's measurement")
    return _after_candidate(plan, state.index, (*state.done, window))


def needs_window(state: ProfilerState) -> bool:
    """Whether the step that is ending closes a measurement window (the caller must measure it)."""
    return isinstance(state, Measuring) and state.steps_left == 1
