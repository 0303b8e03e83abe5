"""The simulated GPU's power and throughput model (pure functions, no I/O).

Physics (DVFS): a power limit below the full-clock draw makes the GPU lower its SM clock ``f`` until
the busy power meets the limit. With ``x = f/f_max``:

* busy power ``P(x) = P_static + (P_max - P_static) * x**3`` (dynamic power ~ f*V^2 with V ~ f),
* step time ``t(x) = t_full * ((1 - c) + c / x)``: a compute-bound fraction ``c`` slows with the clock,
  the memory-bound rest does not,
* energy per step ``E = P(x) * t(x)``, U-shaped in the limit: high limits burn power for little speed,
  low limits stretch the step while the static power keeps flowing.

``P_static`` is the draw of a *busy* GPU that does not scale with the SM clock (HBM, NVLink, uncore,
leakage). With the plain ``P_idle`` of an idle GPU (70 W) in its place the energy would keep falling
down to the 200 W floor for any ``c`` (no interior optimum), which contradicts the measurements this
model is meant to mimic; so the model separates the two. Constants (H100 SXM-like): 700 W max and
default limit, 200 W min limit, 70 W idle (NVIDIA H100 SXM5 datasheet: up to 700 W TDP;
``nvidia-smi -q -d POWER`` on H100 SXM reports min/default/max limits of 200/700/700 W), 180 W busy
static power and ``c = 0.7`` (chosen, not measured). The result: the energy-optimal limit is ~250 W
and the eta=0.5 optimum ~470 W, and a cap at 60% of TDP saves ~28% energy for ~21% more time. Published
figures for comparison: V100 capped near 60% of TDP saved ~14-15% energy with marginal slowdown;
Zeus (NSDI'23) reports 15.3-75.8% energy-efficiency gains. The model is more optimistic than a real
GPU at deep caps; treat its figures as illustrations, never as measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "H100_SXM",
    "SimulatedPowerModel",
    "analytic_optimal_limit_watts",
    "busy_power_watts",
    "clock_fraction",
    "limit_cost",
    "step_energy_joules",
    "step_seconds",
]


@dataclass(frozen=True)
class SimulatedPowerModel:
    """Constants of the simulated GPU (units in the names)."""

    name: str = "Simulated H100 SXM (model, not a GPU)"
    idle_watts: float = 70.0
    static_watts: float = 180.0
    max_watts: float = 700.0
    min_limit_watts: float = 200.0
    max_limit_watts: float = 700.0
    default_limit_watts: float = 700.0
    compute_fraction: float = 0.7

    def __post_init__(self) -> None:
        if not 0.0 <= self.compute_fraction <= 1.0:
            raise ValueError(f"compute_fraction must be within 0..1, got {self.compute_fraction}")
        if not self.idle_watts <= self.static_watts < self.min_limit_watts <= self.max_limit_watts:
            raise ValueError("need idle_watts <= static_watts < min_limit_watts <= max_limit_watts")


H100_SXM = SimulatedPowerModel()


def clock_fraction(model: SimulatedPowerModel, limit_watts: float) -> float:
    """Return ``f/f_max`` at which the busy power equals ``limit_watts`` (1.0 when the cap does not bind)."""
    limit = min(max(limit_watts, model.min_limit_watts), model.max_limit_watts)
    if limit >= model.max_watts:
        return 1.0
    return float(((limit - model.static_watts) / (model.max_watts - model.static_watts)) ** (1.0 / 3.0))


def busy_power_watts(model: SimulatedPowerModel, limit_watts: float) -> float:
    """Return the draw of a fully loaded GPU under ``limit_watts``."""
    x = clock_fraction(model, limit_watts)
    return model.static_watts + (model.max_watts - model.static_watts) * x**3


def step_seconds(model: SimulatedPowerModel, limit_watts: float, full_clock_seconds: float) -> float:
    """Return the step time under ``limit_watts`` of a step that takes ``full_clock_seconds`` unconstrained."""
    x = clock_fraction(model, limit_watts)
    c = model.compute_fraction
    return full_clock_seconds * ((1.0 - c) + c / x)


def step_energy_joules(model: SimulatedPowerModel, limit_watts: float, full_clock_seconds: float) -> float:
    """Return the energy of one step under ``limit_watts``."""
    return busy_power_watts(model, limit_watts) * step_seconds(model, limit_watts, full_clock_seconds)


def limit_cost(model: SimulatedPowerModel, limit_watts: float, eta: float, full_clock_seconds: float = 1.0) -> float:
    """Return the Zeus cost ``eta*E + (1-eta)*P_max_limit*T`` of one step under ``limit_watts``."""
    energy = step_energy_joules(model, limit_watts, full_clock_seconds)
    seconds = step_seconds(model, limit_watts, full_clock_seconds)
    return eta * energy + (1.0 - eta) * model.max_limit_watts * seconds


def analytic_optimal_limit_watts(model: SimulatedPowerModel, eta: float, max_slowdown: float | None = None) -> float:
    """Return the continuous limit in [min, max] that minimises the cost (with the slowdown constraint).

    Uses a dense grid (0.01 W) refined by golden-section search; the cost is unimodal in the limit.
    """
    low, high = model.min_limit_watts, model.max_limit_watts
    if max_slowdown is not None:
        # The step time falls monotonically with the limit: find the lowest limit within the slowdown.
        base = step_seconds(model, high, 1.0)
        if step_seconds(model, low, 1.0) > max_slowdown * base:
            a, b = low, high
            for _ in range(100):
                mid = (a + b) / 2
                if step_seconds(model, mid, 1.0) > max_slowdown * base:
                    a = mid
                else:
                    b = mid
            low = b
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = low, high
    for _ in range(200):
        c1 = b - ratio * (b - a)
        c2 = a + ratio * (b - a)
        if limit_cost(model, c1, eta) <= limit_cost(model, c2, eta):
            b = c2
        else:
            a = c1
    best = (a + b) / 2
    # The ends are candidates too (the optimum may sit on a bound).
    return min((low, best, high), key=lambda w: limit_cost(model, w, eta))
