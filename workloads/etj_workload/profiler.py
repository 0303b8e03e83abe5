"""The Auto power-limit profiler: a pure, noise-aware state machine over training steps.

What it does, in order (docs/harness.md, "Power control", has the spec's settings and their mapping):

1. **Wait** ``wait_steps`` unmeasured steps at the top limit (a slow start: compilation, autotuning, cold
   caches, data workers starting), and longer while the windows still speed up (:func:`_trend`).
2. **Baseline**: measure the top limit (the device's maximum, or the operator's cap) in windows of
   ``window_steps`` until its mean step time is known to ``baseline_precision`` (the half-width of its
   confidence interval at ``confidence``, relative) or ``baseline_max_steps`` are spent (with a slowdown
   bound; without one the baseline only places the search). Its power is the workload's full-clock draw:
   limits above it do not bind and are never searched.
3. **Search** ``[min_watts, top]`` on a ``resolution_watts`` grid: golden-section search on the cost
   ``eta*E + (1-eta)*P_max*T``, each comparison measured until decided at ``compare_confidence`` (against the
   noise's upper bound at that confidence) or known to be level within ``level_tolerance``; or, with
   ``max_slowdown``, bisection for the lowest limit within the
   bound, a limit ruled out only when it is over the bound by more than its noise margin. Then the **final
   fine step** at ``fine_watts``. Every limit gets ``settle_steps`` unmeasured steps after it is set.
4. **Baseline re-check** (with ``max_slowdown``): the top limit again; a baseline that moved restarts.
5. **Decide** (:func:`decide`) from every measurement, the step time made monotone in the limit: the least
   cost within the bound (the bound's crossing interpolated); a flat cost picks the fastest level limit, data
   that are not unimodal the best measured one.
6. **Monitor** the choice in windows of ``monitor_steps`` (:func:`_monitor`): drift asks for a re-profile;
   with ``max_slowdown`` the monitored windows, after baseline re-checks where there is noise (as long as the
   baseline's error would cost more than ``tune_precision``: :func:`_recheck_length`), tune the choice toward
   the bound by the point estimate of its ratio.

**Noise.** A window is one sample; the noise of a window mean is estimated from the spread of the windows of
every limit measured so far (pooled, relative: step-time noise is a property of the job, not of the limit)
and turned into confidence intervals with Student's t. Noise-free data need one window per limit; noisy data
get more, up to the caps. A window's power (its energy over its time) carries no noise: both share it.

**Settling and trends.** A window in which the GPU drew more than the limit, or less than it draws under it,
is dropped (the limit had not taken effect); so are the oldest windows of a limit while the windows show a
trend (a slow start, a limit still settling). Their steps still count as profiling steps.

Every rank runs the same machine on the same step counter and feeds it the same job-wide window (all-reduced
by the caller), so every rank changes its limit at the same step and decides the same. Nothing here touches
a GPU, a clock or torch: the caller performs the returned actions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Final, Literal

__all__ = [
    "Baseline",
    "Bisect",
    "Decided",
    "Decision",
    "Golden",
    "Knowledge",
    "LimitStats",
    "Measurement",
    "Measuring",
    "ProfilePlan",
    "ProfilerState",
    "Recheck",
    "Settling",
    "Transition",
    "Waiting",
    "candidate_limits_watts",
    "choose_limit_watts",
    "decide",
    "interrupt",
    "limit_cost",
    "needs_window",
    "noise",
    "settled",
    "start",
    "step_end",
    "t_quantile",
]


# --- measurements ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """Job-wide figures of one window at one limit: energy (summed over GPUs) and time, per step."""

    watts: int
    joules_per_step: float
    seconds_per_step: float
    steps: int = 1


@dataclass(frozen=True)
class LimitStats:
    """The windows kept at one limit (``dropped``: windows discarded as unsettled)."""

    watts: int
    windows: tuple[Measurement, ...] = ()
    dropped: int = 0

    @property
    def steps(self) -> int:
        """Measured steps kept."""
        return sum(w.steps for w in self.windows)

    @property
    def seconds(self) -> float:
        """Mean step time (s), weighted by steps."""
        return sum(w.seconds_per_step * w.steps for w in self.windows) / max(1, self.steps)

    @property
    def joules(self) -> float:
        """Mean energy per step (J), weighted by steps."""
        return sum(w.joules_per_step * w.steps for w in self.windows) / max(1, self.steps)

    @property
    def watts_drawn(self) -> float:
        """Mean power (W) over the kept windows: energy over time."""
        return self.joules / self.seconds if self.seconds > 0 else 0.0

    def measurement(self) -> Measurement:
        """The kept windows as one measurement."""
        return Measurement(self.watts, self.joules, self.seconds, self.steps)


def t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student's t quantile: ``P(|T| <= q) = confidence`` with ``dof`` degrees of freedom.

    Exact for 1 and 2 degrees of freedom, a Cornish-Fisher expansion around the normal quantile beyond
    (within 0.5% of the table from 3 degrees of freedom at 95..99.7%).
    """
    if dof < 1:
        return math.inf
    p = 0.5 + confidence / 2
    if dof == 1:
        return math.tan(math.pi * (p - 0.5))
    if dof == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = NormalDist().inv_cdf(p)
    v = float(dof)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def noise(stats: Iterable[LimitStats]) -> tuple[float, int]:
    """Pooled relative noise of one step, ``(sigma, degrees of freedom)``, from the windows of every limit.

    A window of ``n`` steps has a mean whose variance is ``sigma**2 / n`` (independent steps), so each
    window's ``n * (relative deviation from its limit's mean)**2`` estimates ``sigma**2``. Time and energy
    are pooled separately and the larger is returned.
    """
    sums = [0.0, 0.0]
    dof = 0
    for s in stats:
        if len(s.windows) < 2:
            continue
        dof += len(s.windows) - 1
        for i, mean in enumerate((s.seconds, s.joules)):
            if mean <= 0:
                continue
            values = [w.seconds_per_step if i == 0 else w.joules_per_step for w in s.windows]
            sums[i] += sum(w.steps * ((v - mean) / mean) ** 2 for w, v in zip(s.windows, values, strict=True))
    if dof == 0:
        return math.inf, 0
    return math.sqrt(max(sums) / dof), dof


# --- the plan ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProfilePlan:
    """What to profile and how to choose (all ranks hold an identical plan). Units in the names."""

    min_watts: int
    max_watts: int
    """The top of the search: the device's maximum limit, or the operator's cap below it."""
    eta: float
    max_power_watts: float
    """Max limit times the number of GPUs: the time term's weight, as in Zeus."""
    max_slowdown: float | None = None
    uncapped_watts: int | None = None
    """The device's maximum limit (the uncapped speed); None: ``max_watts``."""
    resolution_watts: int = 25
    fine_watts: int = 5
    wait_steps: int = 5
    max_wait_steps: int = 300
    """The most steps at the top limit while its step time still trends (a slow start) before profiling."""
    settle_steps: int = 2
    window_steps: int = 5
    min_steps: int = 10
    max_steps: int = 60
    baseline_max_steps: int = 80
    precision: float = 0.02
    baseline_precision: float = 0.01
    confidence: float = 0.997
    flat_tolerance: float = 0.003
    """Costs within this fraction of each other are level in noise-free data."""
    compare_confidence: float = 0.8
    """The confidence at which a golden-section comparison counts as decided."""
    level_tolerance: float = 0.02
    """Two costs whose difference is known to be below this fraction count as level (the faster side is kept)."""
    bound_max_steps: int = 20
    """The most steps a limit gets in the bisection for the slowdown bound (the tuning refines the choice)."""
    recheck_steps: int = 30
    """The least measured steps of a baseline re-check before a tuning look (with noise; 0: none)."""
    recheck_max_steps: int | None = None
    """The most measured steps of one baseline re-check (None: 4x ``recheck_steps``)."""
    tune_precision: float = 0.0125
    """The cost error, relative, that the baseline's noise may cause in a tuned choice (at
    ``compare_confidence``): a re-check measures the top limit long enough for it (:func:`_recheck_length`)."""
    drift_threshold: float = 0.10
    monitor_steps: int = 50
    known: tuple[LimitStats, ...] = ()
    """Measurements from before (kept across a cap change); the baseline of the uncapped speed among them."""
    horizon_steps: int | None = None
    """The job's expected length in steps, if known: the slowdown bound then holds for the whole job, the time
    profiling lost below the top limit included (the choice is that much tighter)."""

    def __post_init__(self) -> None:
        if self.min_watts > self.max_watts:
            raise ValueError(f"min_watts {self.min_watts} above max_watts {self.max_watts}")
        if self.window_steps < 1 or self.resolution_watts < 1 or self.fine_watts < 1:
            raise ValueError("window_steps, resolution_watts and fine_watts must be >= 1")

    @property
    def top(self) -> int:
        """The highest limit profiled."""
        return self.max_watts

    @property
    def uncapped(self) -> int:
        """The device's maximum limit."""
        return self.uncapped_watts if self.uncapped_watts is not None else self.max_watts

    @property
    def capped(self) -> bool:
        """Whether the operator's cap is below the device's maximum."""
        return self.max_watts < self.uncapped


# --- the search state --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    """Measuring the top limit."""


@dataclass(frozen=True)
class Bisect:
    """Bisection for the lowest limit within the slowdown bound: ``hi`` is within it, ``lo`` is not (or the floor).

    ``lo_open``: ``lo`` itself has not been ruled out (it is the floor, unmeasured).
    """

    lo: int
    hi: int
    lo_open: bool = True
    fine: bool = False


@dataclass(frozen=True)
class Golden:
    """Golden-section search for the least cost over ``[a, b]``, interior points ``c < d`` once placed.

    ``fine``: the final fine step's limit once the coarse search is over (``done``).
    """

    a: int
    b: int
    c: int | None = None
    d: int | None = None
    fine: int | None = None
    done: bool = False
    pending: tuple[int, ...] = ()
    """Further fine steps to measure after ``fine``."""
    half: float = 0.0
    """The fine steps' distance from the best limit in this round (halved each round)."""


@dataclass(frozen=True)
class Recheck:
    """Measuring the top limit again before deciding (``before``: the baseline's steps before the re-check)."""

    before: int


Search = Baseline | Bisect | Golden | Recheck


@dataclass(frozen=True)
class Knowledge:
    """Everything measured so far and where the search stands."""

    stats: tuple[LimitStats, ...] = ()
    search: Search = field(default_factory=Baseline)
    steps: int = 0
    """Profiling steps spent (waiting, settling, measuring, dropped windows included)."""
    top_limit: int | None = None
    """The highest limit worth searching (the baseline's draw, on the grid), once the baseline is known."""
    restarts: int = 0
    below_steps: int = 0
    """Steps run below the top limit (profiling and, once decided, at the choice)."""
    below_seconds: float = 0.0
    """Their device time (s): what the job spent beyond the reference's pace is held against the bound."""

    def get(self, watts: int) -> LimitStats | None:
        """The stats at ``watts``, if any."""
        return next((s for s in self.stats if s.watts == watts), None)

    def put(self, stats: LimitStats) -> Knowledge:
        """Replace (or add) the stats at ``stats.watts``."""
        others = tuple(s for s in self.stats if s.watts != stats.watts)
        return replace(self, stats=tuple(sorted((*others, stats), key=lambda s: -s.watts)))


@dataclass(frozen=True)
class Decision:
    """The profiler's choice and why (the status reports it)."""

    chosen_watts: int
    reason: Literal["optimum", "bound", "flat", "fallback", "cap"]
    uncapped_watts: int | None
    """The limit the job would pick without the operator's cap (None: unknown until the cap lifts)."""
    slowdown: float | None = None
    """The chosen limit's step time over the uncapped (or reference) step time, as measured."""
    slowdown_margin: float | None = None
    """The half-width of that ratio's confidence interval at the plan's confidence."""
    reference: Literal["uncapped", "cap"] = "uncapped"
    profile_steps: int = 0
    noise: float | None = None
    """The pooled relative noise of one step (None: not measurable, a single window per limit)."""


# --- the machine's states ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Waiting:
    """Unmeasured steps before anything (a slow start). -> :class:`Settling` of the first limit."""

    steps_left: int
    k: Knowledge = field(default_factory=Knowledge)


@dataclass(frozen=True)
class Settling:
    """Unmeasured steps after ``watts`` was set. -> :class:`Measuring` (the caller opens a window)."""

    watts: int
    steps_left: int
    k: Knowledge = field(default_factory=Knowledge)


@dataclass(frozen=True)
class Measuring:
    """A window open at ``watts``; after ``steps_left`` more steps the caller closes it and passes it."""

    watts: int
    steps_left: int
    k: Knowledge = field(default_factory=Knowledge)


@dataclass(frozen=True)
class Decided:
    """Profiling is over: the job runs at ``chosen_watts``, monitored in windows of ``monitor_steps``.

    ``here``: the windows monitored at the chosen limit (the drift check's and the tuning's data);
    ``strikes``: consecutive drifted windows; ``tunes``: tuning looks taken (see :func:`_monitor`);
    ``away``: measured steps left of a baseline re-check at the top limit (0: at the choice); ``settle_left``:
    unmeasured steps left after a limit change; ``recheck_from``: the baseline's windows before the re-check.
    """

    chosen_watts: int
    k: Knowledge = field(default_factory=Knowledge)
    decision: Decision | None = None
    steps_left: int = 0
    here: LimitStats | None = None
    strikes: int = 0
    tunes: int = 0
    away: int = 0
    settle_left: int = 0
    recheck_from: int = 0
    visited: tuple[LimitStats, ...] = ()
    """The monitored windows of the limits chosen before a tuning move (the slope's best data)."""

    @property
    def measurements(self) -> tuple[Measurement, ...]:
        """The kept figures of every limit measured (the status's candidates)."""
        return tuple(s.measurement() for s in self.k.stats if s.windows)

    @property
    def rechecking(self) -> bool:
        """Whether the job is away from the choice, re-checking the baseline at the top limit."""
        return self.away > 0


ProfilerState = Waiting | Settling | Measuring | Decided


@dataclass(frozen=True)
class Transition:
    """The next state and what the caller must do at this step boundary.

    ``reprofile``: the monitored step time drifted; the caller starts profiling again (a fresh plan).
    """

    state: ProfilerState
    set_limit_watts: int | None = None
    open_window: bool = False
    close_window: bool = False
    reprofile: bool = False


# --- helpers kept from the grid profiler (the GPU check and the reports use them) -----------------------------
def candidate_limits_watts(min_watts: float, max_watts: float, step_watts: int) -> tuple[int, ...]:
    """Return the limits of a full sweep, max first, every ``step_watts`` down to (and including) the minimum."""
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
    """Return the least-cost limit of a sweep, among those within ``max_slowdown`` of the first (max-limit) one."""
    if not measurements:
        raise ValueError("no measurements to choose from")
    feasible = list(measurements)
    if max_slowdown is not None:
        bound = max_slowdown * measurements[0].seconds_per_step
        feasible = [m for m in measurements if m.seconds_per_step <= bound] or [measurements[0]]
    return min(feasible, key=lambda m: (limit_cost(m, eta, max_power_watts), -m.watts)).watts


# --- statistics of the knowledge -----------------------------------------------------------------------------
def _all_stats(plan: ProfilePlan, k: Knowledge) -> tuple[LimitStats, ...]:
    return (*k.stats, *(s for s in plan.known if k.get(s.watts) is None))


def _sigma(plan: ProfilePlan, k: Knowledge) -> tuple[float, float]:
    """``(sigma of one step, t quantile)`` from the pooled windows."""
    sigma, dof = noise(_all_stats(plan, k))
    return sigma, t_quantile(plan.confidence, dof)


def _margin(plan: ProfilePlan, k: Knowledge, *steps: int) -> float:
    """Relative half-width of the confidence interval of a ratio of means over windows of ``steps`` steps."""
    sigma, q = _sigma(plan, k)
    if sigma == 0.0:
        return 0.0
    if math.isinf(sigma) or any(n <= 0 for n in steps):
        return math.inf
    return float(q * sigma * math.sqrt(sum(1.0 / n for n in steps)))


def _cost(plan: ProfilePlan, s: LimitStats) -> float:
    return limit_cost(s.measurement(), plan.eta, plan.max_power_watts)


def _smoothed_costs(plan: ProfilePlan, stats: Sequence[LimitStats]) -> dict[int, float]:
    """Each limit's cost with its step time made monotone in the limit (isotonic, weighted by steps).

    A step's energy is its power times its time, and the power over a window is measured without the
    time's noise (both share it); the time can only fall as the limit rises. So the noisy part, the time,
    is pooled with the neighbours where the noise broke that order, and the cost rebuilt from it.
    """
    points = sorted((s for s in stats if s.windows), key=lambda s: s.watts)
    blocks: list[list[float]] = []  # [sum of seconds * steps, steps, count]
    for s in points:
        blocks.append([s.seconds * s.steps, float(s.steps), 1.0])
        while len(blocks) >= 2 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            last = blocks.pop()
            blocks[-1] = [blocks[-1][0] + last[0], blocks[-1][1] + last[1], blocks[-1][2] + last[2]]
    out: dict[int, float] = {}
    i = 0
    for total, steps, count in blocks:
        seconds = total / steps
        for s in points[i : i + int(count)]:
            m = Measurement(s.watts, s.watts_drawn * seconds, seconds, s.steps)
            out[s.watts] = limit_cost(m, plan.eta, plan.max_power_watts)
        i += int(count)
    return out


def _reference(plan: ProfilePlan, k: Knowledge) -> tuple[LimitStats | None, Literal["uncapped", "cap"]]:
    """The step time that ``max_slowdown`` is relative to: the uncapped speed where it is known.

    The uncapped speed is known from a measurement at the device's maximum (now, or kept from before a cap), or
    from one at the top limit when the GPU drew clearly less than it (the cap did not bind: full speed).
    """
    uncapped = next((s for s in _all_stats(plan, k) if s.watts == plan.uncapped and s.windows), None)
    if uncapped is not None:
        return uncapped, "uncapped"
    top = k.get(plan.top)
    if top is not None and top.windows and top.watts_drawn < 0.95 * plan.top:
        return top, "uncapped"
    return top, "cap"


def _ratio(plan: ProfilePlan, k: Knowledge, s: LimitStats) -> tuple[float, float]:
    """``(step-time ratio to the reference, its margin)``; ``(1, 0)`` without a reference."""
    ref, _ = _reference(plan, k)
    if ref is None or not ref.windows or ref.seconds <= 0:
        return 1.0, 0.0
    ratio = s.seconds / ref.seconds
    if s.watts == ref.watts:
        return 1.0, 0.0
    return ratio, ratio * _margin(plan, k, s.steps, ref.steps)


# --- the grid -------------------------------------------------------------------------------------------------
def _snap(plan: ProfilePlan, watts: float, grid: int) -> int:
    """``watts`` on the ``grid`` (multiples counted from the floor), within ``[min, top]``."""
    low = plan.min_watts
    value = low + round((watts - low) / grid) * grid
    return int(min(max(value, low), plan.top))


def _search_top(plan: ProfilePlan, k: Knowledge) -> int:
    """The highest limit worth searching: the top, or the grid limit just above the baseline's draw."""
    base = k.get(plan.top)
    if base is None or not base.windows:
        return plan.top
    drawn = base.watts_drawn * 1.03  # power readings are averages: leave room for the peaks
    if drawn >= plan.top:
        return plan.top
    grid = plan.resolution_watts
    value = plan.min_watts + math.ceil((drawn - plan.min_watts) / grid) * grid
    return int(min(max(value, plan.min_watts), plan.top))


# --- when is a limit measured well enough ------------------------------------------------------------------------
def _minimum(plan: ProfilePlan, k: Knowledge, watts: int) -> int:
    """The least steps to measure at ``watts``.

    ``min_steps`` at the top limit and while the noise is unknown; one window where the noise is known to be
    small enough for one window to meet the precision.
    """
    if watts == plan.top:
        return max(plan.min_steps, plan.window_steps)
    sigma, dof = noise(_all_stats(plan, k))
    if dof >= 2 and t_quantile(plan.confidence, dof) * sigma / math.sqrt(plan.window_steps) <= plan.precision / 2:
        return plan.window_steps
    return max(plan.min_steps, plan.window_steps)


def _enough(plan: ProfilePlan, k: Knowledge, watts: int) -> bool:
    """Whether ``watts`` is measured well enough for what the search asks of it now (the baseline, a bound)."""
    s = k.get(watts)
    if s is None or s.steps < _minimum(plan, k, watts):
        return False
    cap = plan.baseline_max_steps if watts == plan.top else plan.max_steps
    search = k.search
    if isinstance(search, Baseline | Recheck) and s.dropped > 0 and len(s.windows) < 3:
        # A trend was seen (a slow start): three level windows in a row before the baseline counts, for at
        # most ``max_wait_steps`` at the top.
        return s.steps + s.dropped * plan.window_steps >= plan.max_wait_steps
    if isinstance(search, Recheck):
        return s.steps >= search.before + max(plan.min_steps, plan.window_steps)
    if s.steps >= cap:
        return True
    if isinstance(search, Baseline):
        if plan.max_slowdown is None:
            return True  # without a bound the baseline only places the search (its draw) and anchors drift
        return _margin(plan, k, s.steps) <= plan.baseline_precision
    bound = _bound(plan, k)
    if bound is not None:
        if _margin(plan, k, s.steps) <= plan.precision or s.steps >= plan.bound_max_steps:
            return True
        ratio, margin = _ratio(plan, k, s)
        return abs(ratio - bound) > margin  # the bound is decided either way
    return _margin(plan, k, s.steps) <= plan.precision


# --- the searches ------------------------------------------------------------------------------------------------
_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def _bound(plan: ProfilePlan, k: Knowledge) -> float | None:
    """The slowdown bound for the rest of the job: tighter by what profiling lost, when the horizon is known."""
    if plan.max_slowdown is None:
        return None
    ref, _ = _reference(plan, k)
    if plan.horizon_steps is None or ref is None or ref.seconds <= 0:
        return plan.max_slowdown
    remaining = plan.horizon_steps - k.steps
    if remaining <= 0:
        return plan.max_slowdown
    # The steps at the top ran at the reference's pace; those below it took what they took.
    spent = (k.steps - k.below_steps) * ref.seconds + k.below_seconds
    slack = plan.max_slowdown * ref.seconds * k.steps - spent
    if slack >= 0:
        return plan.max_slowdown  # time saved is not spent: the bound stays the bound
    return max(1.0, plan.max_slowdown + slack / (ref.seconds * remaining))


def _ratios(plan: ProfilePlan, k: Knowledge) -> list[tuple[int, float, int]]:
    """``(watts, ratio, steps)`` of every measured limit, the ratios made monotone (isotonic regression).

    The step time can only fall as the limit rises, so noisy ratios that break that order are pooled with
    their neighbours (pool-adjacent-violators, weighted by steps): each pooled ratio leans on more steps.
    """
    ref, _ = _reference(plan, k)
    points = sorted((s for s in k.stats if s.windows), key=lambda s: s.watts)
    if ref is None or ref.seconds <= 0 or not points:
        return [(s.watts, 1.0, s.steps) for s in points]
    blocks: list[list[float]] = []  # [sum of ratio * steps, steps, count]
    for s in points:
        ratio = 1.0 if s.watts == ref.watts else s.seconds / ref.seconds
        blocks.append([ratio * s.steps, float(s.steps), 1.0])
        while len(blocks) >= 2 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            last = blocks.pop()
            blocks[-1] = [blocks[-1][0] + last[0], blocks[-1][1] + last[1], blocks[-1][2] + last[2]]
    out: list[tuple[int, float, int]] = []
    i = 0
    for total, steps, count in blocks:
        for s in points[i : i + int(count)]:
            out.append((s.watts, total / steps, int(steps)))
        i += int(count)
    return out


def _feasible(plan: ProfilePlan, k: Knowledge, s: LimitStats) -> bool:
    bound = _bound(plan, k)
    if bound is None:
        return True
    ratio = next((r for w, r, _ in _ratios(plan, k) if w == s.watts), None)
    if ratio is None:
        ratio, _ = _ratio(plan, k, s)
    return ratio <= bound


def _crossing(plan: ProfilePlan, k: Knowledge) -> tuple[int, float, float] | None:
    """The lowest limit (on the fine grid) whose monotone, interpolated ratio is within the bound.

    ``(watts, ratio, margin)``. Between two measured limits the ratio is interpolated along the chord, which
    lies above the convex curve of the step time: the interpolated limit is no faster than it looks.
    """
    bound = _bound(plan, k)
    fitted = _ratios(plan, k)
    if bound is None or not fitted:
        return None
    ref, _ = _reference(plan, k)
    ref_steps = ref.steps if ref is not None else 0
    best: tuple[int, float, float] | None = None
    for (w0, r0, n0), (w1, r1, n1) in itertools.pairwise(fitted):
        if r0 <= bound:
            best = best or (w0, r0, plan_margin(plan, k, n0, ref_steps, r0))
            break
        if r1 <= bound < r0:
            span = r0 - r1
            x = w1 - (bound - r1) / span * (w1 - w0) if span > 0 else w1
            watts = min(w1, plan.min_watts + math.ceil((x - plan.min_watts) / plan.fine_watts) * plan.fine_watts)
            ratio = r1 + (r0 - r1) * (w1 - watts) / (w1 - w0) if w1 > w0 else r1
            best = (int(watts), ratio, plan_margin(plan, k, min(n0, n1), ref_steps, ratio))
            break
    if best is None and fitted[-1][1] <= bound:
        w, r, n = fitted[-1]
        best = (w, r, plan_margin(plan, k, n, ref_steps, r))
    return best


def plan_margin(plan: ProfilePlan, k: Knowledge, steps: int, ref_steps: int, ratio: float) -> float:
    """The half-width of a ratio's confidence interval (0 for the reference itself)."""
    if ref_steps == 0 or steps == 0:
        return math.inf
    if steps == ref_steps and ratio == 1.0:
        return 0.0
    return ratio * _margin(plan, k, steps, ref_steps)


def _bisect_next(plan: ProfilePlan, k: Knowledge, b: Bisect) -> tuple[Knowledge, int | None]:
    """Advance the bisection over the measured limits; return the limit to measure next, or None when done."""
    while True:
        grid = plan.fine_watts if b.fine else plan.resolution_watts
        if b.hi - b.lo <= grid:
            if b.lo_open and b.lo == plan.min_watts:
                s = k.get(b.lo)
                if s is None or not _enough(plan, replace(k, search=b), b.lo):
                    return replace(k, search=b), b.lo
                b = replace(b, hi=b.lo, lo_open=False) if _feasible(plan, k, s) else replace(b, lo_open=False)
                continue
            if not b.fine and plan.fine_watts < grid and b.hi - b.lo > plan.fine_watts:
                b = replace(b, fine=True)
                mid = _snap(plan, (b.lo + b.hi) / 2, plan.fine_watts)
                if b.lo < mid < b.hi:
                    continue
            return replace(k, search=b), None
        mid = _snap(plan, (b.lo + b.hi) / 2, grid)
        if not b.lo < mid < b.hi:
            return replace(k, search=b), None
        s = k.get(mid)
        if s is None or not _enough(plan, replace(k, search=b), mid):
            return replace(k, search=b), mid
        b = replace(b, hi=mid) if _feasible(plan, k, s) else replace(b, lo=mid, lo_open=False)
        if b.fine:
            return replace(k, search=b), None  # one fine step only


def _place(plan: ProfilePlan, a: int, b: int, keep: int | None, side: str) -> int | None:
    """A new interior point of ``(a, b)`` on the grid, distinct from ``keep`` (None: the bracket is too narrow)."""
    grid = plan.resolution_watts
    x = b - _PHI * (b - a) if side == "low" else a + _PHI * (b - a)
    w = _snap(plan, x, grid)
    if keep is not None and w == keep:
        w = w - grid if side == "low" else w + grid
    if not a < w < b or (keep is not None and (w >= keep if side == "low" else w <= keep)):
        return None
    return w


def _sigma_upper_factor(confidence: float, dof: int) -> float:
    """The one-sided upper confidence bound of a noise estimated with ``dof`` degrees of freedom, over the estimate.

    ``sqrt(dof / chi2_{1-confidence}(dof))``, the chi-square quantile by Wilson and Hilferty's approximation.
    """
    if dof < 1:
        return math.inf
    z = NormalDist().inv_cdf(confidence)
    a = 2.0 / (9.0 * dof)
    lower = dof * max(1e-6, 1.0 - a - z * math.sqrt(a)) ** 3
    return math.sqrt(dof / lower)


def _compare(plan: ProfilePlan, k: Knowledge, sc: LimitStats, sd: LimitStats) -> Literal["c", "d", "level", "open"]:
    """Which of two limits costs less: decided at ``compare_confidence``, level within ``level_tolerance``."""
    fc, fd = _cost(plan, sc), _cost(plan, sd)
    sigma, dof = noise(_all_stats(plan, k))
    if sigma == 0.0:
        if abs(fc - fd) <= plan.flat_tolerance * max(fc, fd):
            return "level"
        return "c" if fc < fd else "d"
    if math.isinf(sigma):
        return "open"
    q = t_quantile(plan.compare_confidence, dof)
    half = q * sigma * math.sqrt(fc * fc / sc.steps + fd * fd / sd.steps)
    # A verdict drops one side of the bracket for good: it must hold for a noise estimate from few windows
    # that came out low by chance too (the noise's upper bound at the same confidence).
    if abs(fc - fd) > half * _sigma_upper_factor(plan.compare_confidence, dof):
        return "c" if fc < fd else "d"
    if half <= plan.level_tolerance * max(fc, fd):
        return "level"
    return "open"


def _golden_next(
    plan: ProfilePlan, k: Knowledge, g: Golden, current: int | None
) -> tuple[Knowledge, int | None]:
    """Advance the golden-section search over the measured limits; the limit to measure next, or None."""
    while True:
        if g.done and g.fine is None:
            return replace(k, search=g), None
        if g.fine is not None:
            fine = g.fine
            s = k.get(fine)
            if s is None or (s.steps < _minimum(plan, k, fine)) or not _fine_enough(plan, k, s):
                return replace(k, search=g), fine
            if g.pending:
                g = replace(g, fine=g.pending[0], pending=g.pending[1:])
                continue
            quiet = _minimum(plan, k, fine) < max(plan.min_steps, plan.window_steps)
            if quiet and g.half / 2 >= FINE_ROUND_MIN_WATTS * plan.fine_watts:  # noise hides finer rounds
                nxt = _fine_round(plan, k, g, g.half / 2)
                if nxt.fine is not None:
                    g = nxt
                    continue
            return replace(k, search=g), None
        if g.c is None or g.d is None:
            d = _place(plan, g.a, g.b, None, "high")
            c = _place(plan, g.a, g.b, d, "low") if d is not None else None
            if c is None or d is None:
                g = _to_fine(plan, k, g)
                if g.fine is None:
                    return replace(k, search=g), None
                continue
            g = replace(g, c=c, d=d)
        assert g.c is not None and g.d is not None
        for w in (g.d, g.c):  # the higher limit first: it is the faster one to measure
            s = k.get(w)
            if s is None or s.steps < _minimum(plan, k, w):
                return replace(k, search=g), w
        sc, sd = k.get(g.c), k.get(g.d)
        assert sc is not None and sd is not None
        verdict = _compare(plan, k, sc, sd)
        if verdict == "open":
            below_cap = [s for s in (sc, sd) if s.steps < plan.max_steps]
            if below_cap:
                fewest = min(below_cap, key=lambda s: (s.steps, s.watts != current))
                return replace(k, search=g), fewest.watts
            verdict = "level"
        if verdict == "level":
            # Known to differ by less than the tolerance: the point estimates decide (no side is favoured,
            # which would bias the choice by up to the tolerance every time).
            verdict = "c" if _cost(plan, sc) < _cost(plan, sd) else "d"
        c0, d0 = sc.watts, sd.watts
        if verdict == "c":  # the minimum is below d
            c = _place(plan, g.a, d0, c0, "low")
            g = Golden(g.a, d0, c, c0) if c is not None else _to_fine(plan, k, Golden(g.a, d0))
        else:  # d is cheaper: the minimum is above c
            d = _place(plan, c0, g.b, d0, "high")
            g = Golden(c0, g.b, d0, d) if d is not None else _to_fine(plan, k, Golden(c0, g.b))
        if g.fine is None and (g.c is None or g.d is None) and g.b - g.a < 2 * plan.resolution_watts:
            return replace(k, search=g), None


def _fine_enough(plan: ProfilePlan, k: Knowledge, s: LimitStats) -> bool:
    """The fine step is measured like its best neighbour, at most."""
    others = [x for x in k.stats if x.windows and x.watts != s.watts]
    if not others:
        return True
    best = min(others, key=lambda x: _cost(plan, x))
    most = min(best.steps, plan.max_steps, 2 * max(plan.min_steps, plan.window_steps))
    return s.steps >= most or _margin(plan, k, s.steps) <= plan.precision


#: The final fine step halves its distance to the best limit each round, down to this many fine-grid steps.
FINE_ROUND_MIN_WATTS: Final = 5


def _to_fine(plan: ProfilePlan, k: Knowledge, g: Golden) -> Golden:
    """End the coarse search: the final fine step measures halfway to each neighbour of the best limit.

    The cost's minimum may be a kink (the voltage floor), where a parabola through grid points misplaces it;
    the half-way points find the better half, then again at half the distance (while that is at least
    :data:`FINE_ROUND_MIN_WATTS` fine-grid steps), on the fine grid.
    """
    if plan.fine_watts >= plan.resolution_watts:
        return Golden(g.a, g.b, None, None, None, True)
    return _fine_round(plan, k, Golden(g.a, g.b, None, None, None, True), plan.resolution_watts / 2)


def _fine_round(plan: ProfilePlan, k: Knowledge, g: Golden, half: float) -> Golden:
    measured = [s for s in k.stats if s.windows and _feasible(plan, k, s)]
    if not measured:
        return replace(g, fine=None, pending=(), half=half)
    smooth = _smoothed_costs(plan, measured)
    best = min(measured, key=lambda s: (smooth[s.watts], -s.watts)).watts
    points = []
    for x in (best + half, best - half):
        w = _snap(plan, x, plan.fine_watts)
        if w != best and k.get(w) is None and plan.min_watts <= w <= (k.top_limit or plan.top):
            points.append(w)
    if not points:
        return replace(g, fine=None, pending=(), half=half)
    return replace(g, fine=points[0], pending=tuple(points[1:]), half=half)


# --- deciding ----------------------------------------------------------------------------------------------------
def decide(plan: ProfilePlan, k: Knowledge) -> Decision:
    """Choose from every limit measured: the least cost within the bound; flat or odd data fall back safely."""
    sigma, _ = _sigma(plan, k)
    noise_value = None if math.isinf(sigma) else round(sigma, 6)
    _, reference = _reference(plan, k)
    measured = [s for s in k.stats if s.windows]
    if not measured:
        return Decision(plan.top, "fallback", None, reference=reference, profile_steps=k.steps)
    if plan.max_slowdown is not None and reference == "cap":
        # The uncapped speed is unknown (capped from the start, and the cap binds): any limit under the cap
        # is slower than the cap, so no slowdown can be vouched for. Stay at the cap; decide again when it lifts.
        return Decision(plan.top, "cap", None, 1.0, 0.0, reference, k.steps, noise_value)
    reason: Literal["optimum", "bound", "flat", "fallback", "cap"]
    feasible = [s for s in measured if _feasible(plan, k, s)]
    crossing = _crossing(plan, k) if plan.max_slowdown is not None else None
    smooth = _smoothed_costs(plan, measured)
    if not feasible:
        chosen_watts, reason = max(s.watts for s in measured), "fallback"
    else:
        best = min(feasible, key=lambda s: (smooth[s.watts], -s.watts))
        level = [s for s in feasible if smooth[s.watts] <= smooth[best.watts] * (1 + plan.flat_tolerance)]
        chosen_watts, reason = best.watts, "optimum"
        if len(feasible) >= 3 and len(level) == len(feasible):
            chosen_watts, reason = max(s.watts for s in level), "flat"
        elif not _unimodal(plan, measured, best):
            reason = "fallback"
        if plan.max_slowdown is not None and crossing is not None:
            lower_infeasible = any(not _feasible(plan, k, s) for s in measured if s.watts < best.watts)
            if lower_infeasible and crossing[0] < best.watts and _below_is_cheaper(plan, k, best):
                chosen_watts, reason = crossing[0], "bound"
            elif lower_infeasible:
                reason = "bound"
    ratio, margin = _ratio_at(plan, k, chosen_watts, crossing)
    uncapped: int | None = chosen_watts
    if plan.capped:
        # Without the cap the choice could only be higher if the best limit sits at the cap's edge.
        top = k.top_limit or _search_top(plan, k)
        at_edge = top == plan.top and chosen_watts >= plan.top - plan.resolution_watts
        if at_edge:
            uncapped = None
    return Decision(
        chosen_watts,
        reason,
        uncapped,
        round(ratio, 6),
        None if math.isinf(margin) else round(margin, 6),
        reference,
        k.steps,
        noise_value,
    )


def _below_is_cheaper(plan: ProfilePlan, k: Knowledge, best: LimitStats) -> bool:
    """Whether the cost falls below ``best`` (toward the bound): the bound, not the optimum, limits the choice."""
    lower = [s for s in k.stats if s.windows and s.watts < best.watts]
    if plan.eta >= 1.0 or not lower:
        return True
    nearest = max(lower, key=lambda s: s.watts)
    return _cost(plan, nearest) < _cost(plan, best)


def _ratio_at(
    plan: ProfilePlan, k: Knowledge, watts: int, crossing: tuple[int, float, float] | None
) -> tuple[float, float]:
    """The (monotone) ratio at ``watts`` and its margin: measured, or the crossing's interpolation."""
    if crossing is not None and crossing[0] == watts:
        return crossing[1], crossing[2]
    s = k.get(watts)
    if s is None:
        return 1.0, 0.0
    ref, _ = _reference(plan, k)
    fitted = next(((r, n) for w, r, n in _ratios(plan, k) if w == watts), None)
    if fitted is None or ref is None:
        return _ratio(plan, k, s)
    return fitted[0], plan_margin(plan, k, fitted[1], ref.steps, fitted[0])


def _unimodal(plan: ProfilePlan, measured: Sequence[LimitStats], chosen: LimitStats) -> bool:
    """Whether the costs fall toward ``chosen`` from both sides (within the level tolerance)."""
    ordered = sorted(measured, key=lambda s: s.watts)
    costs = [_cost(plan, s) for s in ordered]
    i = ordered.index(chosen)
    tol = 1 + plan.level_tolerance
    left_ok = all(costs[j] * tol >= costs[j + 1] for j in range(i))
    right_ok = all(costs[j + 1] * tol >= costs[j] for j in range(i, len(costs) - 1))
    return left_ok and right_ok


# --- the machine ---------------------------------------------------------------------------------------------------
def start(plan: ProfilePlan) -> Transition:
    """Enter profiling: set the top limit and wait (or settle) before the first window."""
    k = Knowledge()
    if plan.wait_steps > 0:
        return Transition(Waiting(plan.wait_steps, k), set_limit_watts=plan.top)
    return Transition(Measuring(plan.top, plan.window_steps, k), set_limit_watts=plan.top, open_window=True)


def _go(plan: ProfilePlan, k: Knowledge, watts: int, current: int | None) -> Transition:
    """Measure ``watts`` next: settle first when the limit changes."""
    if watts != current and plan.settle_steps > 0:
        return Transition(Settling(watts, plan.settle_steps, k), set_limit_watts=watts, close_window=True)
    return Transition(
        Measuring(watts, plan.window_steps, k),
        set_limit_watts=watts if watts != current else None,
        close_window=True,
        open_window=True,
    )


def _next(plan: ProfilePlan, k: Knowledge, current: int | None) -> Transition:
    """Decide what to measure next, or decide."""
    search = k.search
    if isinstance(search, Baseline):
        if not _enough(plan, k, plan.top):
            return _go(plan, k, plan.top, current)
        top = _search_top(plan, k)
        k = replace(k, top_limit=top)
        if plan.max_slowdown is not None:
            _, reference = _reference(plan, k)
            if reference == "cap":
                return _finish(plan, k)
            return _next(plan, replace(k, search=Bisect(plan.min_watts, top)), current)
        return _next(plan, replace(k, search=Golden(plan.min_watts, top)), current)
    if isinstance(search, Bisect):
        k, watts = _bisect_next(plan, k, search)
        if watts is not None:
            return _go(plan, k, watts, current)
        assert isinstance(k.search, Bisect)
        bisect = k.search
        hi = k.get(bisect.hi)
        if plan.eta < 1.0 and hi is not None and bisect.hi < (k.top_limit or plan.top):
            # The slowdown bound is met from ``hi`` up; the cost may still have its optimum above it.
            feasible = sorted((s for s in k.stats if s.windows and s.watts >= bisect.hi), key=lambda s: s.watts)
            costs = [_cost(plan, s) for s in feasible]
            rising = all(costs[i] <= costs[i + 1] for i in range(len(costs) - 1)) and len(costs) >= 2
            if not rising:
                return _next(plan, replace(k, search=Golden(bisect.hi, k.top_limit or plan.top)), current)
        return _recheck_or_finish(plan, k, current)
    if isinstance(search, Golden):
        k, watts = _golden_next(plan, k, search, current)
        if watts is not None:
            return _go(plan, k, watts, current)
        return _recheck_or_finish(plan, k, current)
    # Recheck
    if not _enough(plan, k, plan.top):
        return _go(plan, k, plan.top, current)
    return _finish(plan, k)


def _recheck_or_finish(plan: ProfilePlan, k: Knowledge, current: int | None) -> Transition:
    if plan.max_slowdown is None or k.restarts > 0:
        return _finish(plan, k)
    base = k.get(plan.top)
    before = base.steps if base is not None else 0
    k = replace(k, search=Recheck(before))
    return _go(plan, k, plan.top, current)


def _finish(plan: ProfilePlan, k: Knowledge) -> Transition:
    decision = decide(plan, k)
    state = Decided(decision.chosen_watts, k, decision, plan.monitor_steps)
    return Transition(state, set_limit_watts=decision.chosen_watts, close_window=True, open_window=True)


def _add_window(plan: ProfilePlan, k: Knowledge, window: Measurement, trend: bool = True) -> Knowledge:
    """Keep ``window`` at its limit; drop the oldest windows while the kept ones show a trend."""
    old = k.get(window.watts) or LimitStats(window.watts)
    if window.seconds_per_step > 0 and old.dropped < 3:
        drawn = window.joules_per_step / window.seconds_per_step
        base = k.get(plan.top)
        expected = window.watts if base is None or not base.windows else min(window.watts, base.watts_drawn)
        if drawn > window.watts * 1.03 or (window.watts != plan.top and drawn < expected * 0.97):
            # The GPU drew more than the limit, or less than it does under it: the limit has not taken effect
            # yet (it is settling). A window's power is an energy over a time that share the step's noise.
            return k.put(replace(old, dropped=old.dropped + 1))
    s = replace(old, windows=(*old.windows, window))
    while trend and len(s.windows) >= 2 and _trend(plan, k, s):
        s = replace(s, windows=s.windows[1:], dropped=s.dropped + 1)
    return k.put(s)


def _trend(plan: ProfilePlan, k: Knowledge, s: LimitStats) -> bool:
    """Whether the oldest window of ``s`` differs from the rest beyond noise (a limit or a start settling)."""
    first, rest = s.windows[0], LimitStats(s.watts, s.windows[1:])
    if rest.seconds <= 0:
        return False
    times = [w.seconds_per_step for w in s.windows]
    speeding_up = len(times) >= 3 and all(a > b for a, b in itertools.pairwise(times))
    if speeding_up and (times[0] - times[-1]) / times[-1] > 0.01:
        return True  # every window faster than the one before, by more than 1% overall: still speeding up
    diff = abs(first.seconds_per_step - rest.seconds) / rest.seconds
    others = (*(x for x in _all_stats(plan, k) if x.watts != s.watts), rest)
    sigma, dof = noise(others)
    if dof < 2:
        return diff > 0.05  # no noise estimate yet: only a clear step counts
    q = t_quantile(plan.confidence, dof)
    return bool(diff > max(0.005, q * sigma * math.sqrt(1.0 / first.steps + 1.0 / rest.steps)))


def _recheck_moved(plan: ProfilePlan, k: Knowledge, r: Recheck) -> bool:
    """Whether the re-checked baseline differs from the first one beyond noise."""
    base = k.get(plan.top)
    if base is None or r.before <= 0 or base.steps <= r.before:
        return False
    first = LimitStats(base.watts, base.windows[: _windows_within(base, r.before)])
    again = LimitStats(base.watts, base.windows[_windows_within(base, r.before) :])
    if not first.windows or not again.windows:
        return False
    diff = abs(again.seconds - first.seconds) / first.seconds
    margin = _margin(plan, k, first.steps, again.steps)
    return diff > max(margin, 0.005)


def _windows_within(s: LimitStats, steps: int) -> int:
    total = 0
    for i, w in enumerate(s.windows):
        total += w.steps
        if total >= steps:
            return i + 1
    return len(s.windows)


def step_end(
    plan: ProfilePlan, state: ProfilerState, window: Measurement | None = None, seconds: float | None = None
) -> Transition:
    """Advance the machine by one finished step (``seconds``: its device time, when the caller has it).

    When the ending step closes a window (:func:`needs_window`), the caller closes it first and passes the
    window's job-wide measurement as ``window``.
    """
    if isinstance(state, Decided):
        return _monitor(plan, state, window, seconds)
    k = replace(state.k, steps=state.k.steps + 1)
    if seconds is not None and isinstance(state, Settling | Measuring) and state.watts != plan.top:
        k = replace(k, below_steps=k.below_steps + 1, below_seconds=k.below_seconds + seconds)
    if isinstance(state, Waiting):
        if state.steps_left > 1:
            return Transition(Waiting(state.steps_left - 1, k))
        return Transition(Measuring(plan.top, plan.window_steps, k), open_window=True)
    if isinstance(state, Settling):
        if state.steps_left > 1:
            return Transition(Settling(state.watts, state.steps_left - 1, k))
        return Transition(Measuring(state.watts, plan.window_steps, k), open_window=True)
    if state.steps_left > 1:
        return Transition(Measuring(state.watts, state.steps_left - 1, k))
    if window is None:
        raise ValueError("the last step of a window needs the window's measurement")
    k = _add_window(plan, k, replace(window, watts=state.watts))
    if isinstance(k.search, Recheck) and _enough(plan, k, plan.top) and _recheck_moved(plan, k, k.search):
        # The baseline moved: what was measured against it is not comparable. Keep the re-check only.
        base = k.get(plan.top)
        assert base is not None
        kept = LimitStats(base.watts, base.windows[_windows_within(base, k.search.before) :])
        k = Knowledge((kept,), Baseline(), k.steps, None, k.restarts + 1, k.below_steps, k.below_seconds)
    return _next(plan, k, state.watts)


#: Monitored steps at a limit after which the slowdown tuning looks again (then no more).
TUNE_AFTER_STEPS: Final = (250, 1000, 3000)


def _monitor(plan: ProfilePlan, state: Decided, window: Measurement | None, seconds: float | None) -> Transition:
    """Count a monitored step; at a window's end check it for drift and tune toward the slowdown bound.

    **Drift**: a window whose step time differs from the one measured at the limit by more than
    ``drift_threshold`` (and its noise), twice in a row, asks for a re-profile. **Tuning** (with
    ``max_slowdown``): the monitored windows are free measurements of the chosen limit, so after
    :data:`TUNE_AFTER_STEPS` of them its ratio to the baseline is known far better than profiling knew it.
    With noise, the baseline is re-checked first (at the top limit for :func:`_recheck_length` steps, pooled
    with the first baseline unless it moved, which re-profiles); then the limit moves by the fine steps that
    the point estimate of the ratio and its measured slope say bring it to the bound (the bound for the rest
    of the job, when the horizon is known), at most two grid steps either way.
    """
    current = plan.top if state.away else state.chosen_watts
    k = replace(state.k, steps=state.k.steps + 1)
    if seconds is not None and current != plan.top:
        k = replace(k, below_steps=k.below_steps + 1, below_seconds=k.below_seconds + seconds)
    if state.settle_left > 0:
        nxt = replace(state, k=k, settle_left=state.settle_left - 1)
        if nxt.settle_left == 0:
            nxt = replace(nxt, steps_left=plan.window_steps if state.away else plan.monitor_steps)
            return Transition(nxt, open_window=True)
        return Transition(nxt)
    if state.steps_left > 1:
        return Transition(replace(state, k=k, steps_left=state.steps_left - 1))
    if window is None:
        raise ValueError("the last step of a monitoring window needs the window's measurement")
    if state.away:
        return _recheck_window(plan, replace(state, k=k), replace(window, watts=plan.top))
    window = replace(window, watts=state.chosen_watts)
    reference = k.get(state.chosen_watts)
    if reference is None or not reference.windows:
        reference = state.here
    if reference is None or not reference.windows:
        # Resumed with a choice but no measurement of it, or a tuned limit: the first window is the reference.
        here = LimitStats(state.chosen_watts, (window,))
        return Transition(replace(state, k=k, steps_left=plan.monitor_steps, here=here), open_window=True)
    strikes = 0
    if reference.seconds > 0:
        diff = abs(window.seconds_per_step - reference.seconds) / reference.seconds
        margin = _margin(plan, k, window.steps, reference.steps)
        if diff > plan.drift_threshold and diff > margin:
            strikes = state.strikes + 1
    if strikes >= 2:
        return Transition(replace(state, k=k, steps_left=0, strikes=strikes), close_window=True, reprofile=True)
    if strikes:
        return Transition(replace(state, k=k, steps_left=plan.monitor_steps, strikes=strikes), open_window=True)
    here = state.here or LimitStats(state.chosen_watts)
    here = replace(here, windows=(*here.windows, window))
    nxt = replace(state, k=k, steps_left=plan.monitor_steps, here=here, strikes=0)
    if _tune_due(plan, nxt) and plan.recheck_steps > 0:
        base = k.get(plan.top)
        if base is not None and base.windows and _margin(plan, k, base.steps) > plan.baseline_precision / 2:
            away = replace(
                nxt,
                away=_recheck_length(plan, nxt, base),
                settle_left=plan.settle_steps,
                steps_left=0 if plan.settle_steps else plan.window_steps,
                recheck_from=len(base.windows) if base is not None else 0,
            )
            return Transition(away, set_limit_watts=plan.top, open_window=plan.settle_steps == 0)
    return _after_tune(plan, nxt, _tune(plan, nxt))


def _cost_per_ratio(plan: ProfilePlan, here: LimitStats, ratio: float, slope: float) -> float:
    """How much the cost changes, relative, per unit of step-time ratio, moving the limit near ``here``.

    Under a binding limit the power drawn scales with the limit, so ``d ln P / dW = 1 / W``; the time's change
    is the ratio's, ``slope`` per watt. Kept within [0.5, 4] (a slope measured in noise can be far off).
    """
    watts, power = float(max(1, here.watts)), here.watts_drawn
    if power <= 0 or slope <= 0:
        return 1.0
    energy = plan.eta * power
    per_watt = energy / watts / (energy + (1.0 - plan.eta) * plan.max_power_watts) - slope / ratio
    return min(4.0, max(0.5, abs(per_watt) / slope))


def _recheck_length(plan: ProfilePlan, state: Decided, base: LimitStats) -> int:
    """Measured steps of a baseline re-check at a tuning look.

    A tuned choice is the limit whose ratio to the baseline meets the bound, so the baseline's own noise moves
    it: a relative error ``e`` in the baseline's step time costs about ``S * e`` in the cost, with ``S``
    (:func:`_cost_per_ratio`) large where the slowdown curve is shallow near the bound (a memory-bound job:
    many watts per percent of slowdown). The re-check runs until the baseline's error, at
    ``compare_confidence``, costs at most ``tune_precision``: at least ``recheck_steps`` at the first look and
    ``min_steps`` later (a check that the uncapped speed has not moved), at most ``recheck_max_steps``.
    """
    least = plan.recheck_steps if state.tunes == 0 else max(plan.min_steps, plan.window_steps)
    most = plan.recheck_max_steps if plan.recheck_max_steps is not None else 4 * plan.recheck_steps
    here, k = state.here, state.k
    sigma, dof = noise(_all_stats(plan, k))
    if here is None or not here.windows or base.seconds <= 0 or math.isinf(sigma) or dof < 1:
        return max(least, min(most, plan.recheck_steps))
    ratio = here.seconds / base.seconds
    # The shallower the slope, the longer the re-check: its lower bound (a slope from few profiled steps can
    # come out steep by chance and cut the re-check short).
    slope = _local_slope(plan, k, state.chosen_watts, here, state.visited, plan.compare_confidence)
    if slope is None:
        return least
    factor = _cost_per_ratio(plan, here, ratio, slope)
    q = t_quantile(plan.compare_confidence, dof)
    needed = math.ceil((factor * q * sigma * ratio / plan.tune_precision) ** 2) - base.steps
    steps = min(most, max(least, needed))
    return int(math.ceil(steps / plan.window_steps) * plan.window_steps)


def _tune_due(plan: ProfilePlan, state: Decided) -> bool:
    return (
        plan.max_slowdown is not None
        and state.here is not None
        and state.tunes < len(TUNE_AFTER_STEPS)
        and state.here.steps >= TUNE_AFTER_STEPS[state.tunes]
        and state.chosen_watts != plan.top
    )


def _after_tune(plan: ProfilePlan, before: Decided, tuned: Decided) -> Transition:
    if tuned.chosen_watts != before.chosen_watts or before.away:
        if plan.settle_steps > 0:
            settling = replace(tuned, settle_left=plan.settle_steps, steps_left=0)
            return Transition(settling, set_limit_watts=tuned.chosen_watts)
        return Transition(tuned, set_limit_watts=tuned.chosen_watts, open_window=True)
    return Transition(tuned, open_window=True)


def _recheck_window(plan: ProfilePlan, state: Decided, window: Measurement) -> Transition:
    """A window of the baseline re-check: pool it; at the re-check's end go back to the choice and tune.

    No trend drops windows here: the re-check is compared with the baseline before it, and dropping the old
    windows of a baseline that moved would hide the move.
    """
    k = _add_window(plan, state.k, window, trend=False)
    left = state.away - window.steps
    if left > 0:
        return Transition(replace(state, k=k, away=left, steps_left=plan.window_steps), open_window=True)
    base = k.get(plan.top)
    back = replace(state, k=k, away=0, steps_left=plan.monitor_steps)
    if base is not None and 0 < state.recheck_from < len(base.windows):
        first = LimitStats(base.watts, base.windows[: state.recheck_from])
        again = LimitStats(base.watts, base.windows[state.recheck_from :])
        diff = abs(again.seconds - first.seconds) / first.seconds if first.seconds > 0 else 0.0
        if diff > max(_margin(plan, k, first.steps, again.steps), plan.drift_threshold / 2):
            # The uncapped speed moved (the workload changed under the choice): profile again.
            return Transition(replace(back, steps_left=0), close_window=True, reprofile=True)
    return _after_tune(plan, state, _tune(plan, back))


#: The profiled limits within this many grid steps of the choice enter the slope of the ratio (a wide span: each
#: of them has few steps, and the slope over one grid step is mostly noise).
SLOPE_SPAN_STEPS: Final = 8


def _local_slope(
    plan: ProfilePlan,
    k: Knowledge,
    watts: int,
    here: LimitStats,
    visited: Sequence[LimitStats] = (),
    low_confidence: float | None = None,
) -> float | None:
    """How much the step-time ratio falls per watt around ``watts`` (> 0), from the limits measured near it.

    A least-squares line through the ratios, each weighted by its steps (the variance of a mean is the step's
    over its steps): the profiled limits within :data:`SLOPE_SPAN_STEPS` grid steps, the limits chosen before
    (``visited``: their monitored windows) and the monitored windows at ``watts`` (``here``). None when the data
    show no fall. With ``low_confidence``: the slope's lower bound at that (two-sided) confidence, at least a
    quarter of the estimate.
    """
    ref, _ = _reference(plan, k)
    if ref is None or ref.seconds <= 0 or here.seconds <= 0:
        return None
    span = SLOPE_SPAN_STEPS * plan.resolution_watts
    chosen = {s.watts for s in visited if s.windows} | {watts}
    points = [
        (float(s.watts), s.seconds / ref.seconds, float(s.steps))
        for s in k.stats
        if s.windows and s.watts not in chosen and abs(s.watts - watts) <= span and s.watts != ref.watts
    ]
    points += [
        (float(s.watts), s.seconds / ref.seconds, float(s.steps)) for s in visited if s.windows and s.watts != watts
    ]
    points.append((float(watts), here.seconds / ref.seconds, float(here.steps)))
    if len({p[0] for p in points}) < 2:
        return None
    total = sum(p[2] for p in points)
    mx = sum(p[0] * p[2] for p in points) / total
    my = sum(p[1] * p[2] for p in points) / total
    sxx = sum(p[2] * (p[0] - mx) ** 2 for p in points)
    sxy = sum(p[2] * (p[0] - mx) * (p[1] - my) for p in points)
    if sxx <= 0 or sxy >= 0:
        return None
    if low_confidence is not None:
        # The slope's lower confidence bound (a ratio of one step has the variance sigma**2 * ratio**2).
        sigma, dof = noise(_all_stats(plan, k))
        if math.isinf(sigma) or dof < 1:
            return None
        spread = t_quantile(low_confidence, dof) * sigma * my / math.sqrt(sxx)
        return max(-sxy / sxx - spread, -sxy / sxx / 4)
    return -sxy / sxx


def settled(plan: ProfilePlan, state: ProfilerState) -> bool:
    """Whether the machine only monitors from now on (decided, no tuning left): nothing changes but drift."""
    if not isinstance(state, Decided) or state.away or state.settle_left:
        return False
    return plan.max_slowdown is None or state.tunes >= len(TUNE_AFTER_STEPS) or state.chosen_watts == plan.top


def _tune(plan: ProfilePlan, state: Decided) -> Decided:
    """A fine move toward the slowdown bound from the monitored windows (see :func:`_monitor`).

    Returns the state as it was when it is not time to look, with ``tunes`` used up when tuning cannot apply.
    """
    here, k = state.here, state.k
    if not _tune_due(plan, state) or here is None:
        return state
    done = replace(state, tunes=len(TUNE_AFTER_STEPS))
    ref, reference = _reference(plan, k)
    bound = _bound(plan, k)
    if ref is None or not ref.windows or reference != "uncapped" or bound is None or state.chosen_watts == plan.top:
        return done
    ratio = here.seconds / ref.seconds
    slope = _local_slope(plan, k, state.chosen_watts, here, state.visited)
    if slope is None:
        return done
    # The point estimate decides (it is unbiased; a dead band around the bound would keep every choice that
    # profiling left off it by less than the noise, always on the same side).
    wanted = state.chosen_watts + (ratio - bound) / slope
    grid = plan.fine_watts
    target = int(min(plan.min_watts + math.ceil((wanted - plan.min_watts) / grid) * grid, plan.top))
    down = up = 2 * plan.resolution_watts
    target = min(max(target, state.chosen_watts - down, plan.min_watts), state.chosen_watts + up, plan.top)
    if abs(target - state.chosen_watts) < plan.fine_watts:
        return replace(state, tunes=state.tunes + 1)
    decision = state.decision
    if decision is not None:
        margin = ratio * _margin(plan, k, here.steps, ref.steps)
        decision = replace(
            decision,
            chosen_watts=target,
            uncapped_watts=target if decision.uncapped_watts is not None else None,
            slowdown=round(ratio + (state.chosen_watts - target) * slope, 6),
            slowdown_margin=None if math.isinf(margin) else round(margin, 6),
        )
    visited = (*(v for v in state.visited if v.watts != here.watts), here)
    return replace(state, chosen_watts=target, decision=decision, here=None, tunes=state.tunes + 1, visited=visited)


def interrupt(plan: ProfilePlan, state: ProfilerState) -> Transition:
    """Something other than training ran (evaluation, an epoch boundary): cancel the open window, settle again.

    The caller discards its open window (nothing is reduced: every rank interrupts at the same point).
    """
    if isinstance(state, Measuring):
        return Transition(Settling(state.watts, max(1, plan.settle_steps), state.k))
    if isinstance(state, Settling):
        return Transition(Settling(state.watts, max(state.steps_left, 1, plan.settle_steps), state.k))
    if isinstance(state, Decided) and state.settle_left == 0 and state.steps_left > 0:
        steps = plan.window_steps if state.away else plan.monitor_steps
        return Transition(replace(state, steps_left=steps), open_window=True)
    return Transition(state)


def needs_window(state: ProfilerState) -> bool:
    """Whether the step that is ending closes a window (the caller must measure it)."""
    return isinstance(state, Measuring | Decided) and state.steps_left == 1
