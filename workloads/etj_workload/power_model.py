"""The SIMULATED GPU's power and throughput model (pure functions, no I/O; a model, not a measurement).

Physics (DVFS). A power limit below the workload's full-clock draw makes the GPU lower its SM clock ``f``
(and with it the voltage ``V``) until the busy power meets the limit. With ``x = f/f_max`` and ``v = V/V_max``:

* **step time** ``t(x) = t_full * ((1 - c) + c / x)``: a compute-bound part ``c`` (the workload's
  ``compute_fraction``) slows with the clock, the memory-bound rest does not;
* **voltage** ``v(x) = v_min`` below the clock ``x_v`` where the voltage reaches its floor, rising linearly to
  1 at full clock above it (the voltage/frequency curve): below the floor lowering the clock saves no more
  energy per operation, while the static power keeps flowing for longer;
* **energy per step** ``E(x) = P_static * t(x) + a * D * v(x)**2 * (c + m * (1 - c) * x) * t_full``: the
  static power (HBM, uncore, leakage: what does not scale with the SM clock) over the step, plus the dynamic
  energy. The compute part switches ``a * D * c * t_full`` joules at full voltage whatever the clock (the same
  operations, at ``f * V**2`` power for ``1/f`` the time), so it only shrinks as ``v**2``; the memory-bound
  part keeps the clocks running at a lower activity ``m`` for a time that does not shrink, so it scales as
  ``x * v**2``. ``D`` is the dynamic power of a fully compute-bound workload at full clock, ``a`` the
  workload's activity (1: the reference training load);
* **busy power** ``P(x) = E(x) / t(x)``: the **full-clock draw depends on the workload**,
  ``P_static + a * D * (c + m * (1 - c))``: memory-bound and lighter workloads draw less than the TDP, and
  a limit above their draw does not bind (no slowdown, no saving).

The GPU-shape constants, as fractions of the TDP, are one set for every card: ``P_static = 0.20 TDP``,
``m = 0.30``, ``v_min = 0.70``, ``x_v = 0.55``; ``D`` is set so that the reference workload (``c = 0.7``,
``a = 1``) draws exactly the TDP at full clock. They are chosen, then checked against published capping
results (docs/harness.md, "Power model of the simulated GPU", lists the sources and the model's error
against each; ``tests/workload/test_power_model.py`` holds the model to them). Treat the model's figures as
illustrations of the trade-off, never as measurements.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

__all__ = [
    "H100_SXM",
    "V100_PCIE",
    "SimulatedPowerModel",
    "analytic_optimal_limit_watts",
    "busy_power_watts",
    "clock_fraction",
    "full_clock_watts",
    "limit_cost",
    "power_at_clock_watts",
    "step_energy_joules",
    "step_seconds",
    "voltage_ratio",
]

#: The GPU-shape constants shared by every simulated card (fractions of its TDP; see the module docstring).
STATIC_FRACTION = 0.20
MEMORY_ACTIVITY = 0.30
MIN_VOLTAGE_RATIO = 0.70
VOLTAGE_FLOOR_CLOCK = 0.55
#: The compute fraction of the reference workload, which draws exactly the TDP at full clock.
REFERENCE_COMPUTE_FRACTION = 0.7


def _reference_dynamic_watts(tdp_watts: float) -> float:
    """``D``: the reference workload (c = 0.7, a = 1) draws the TDP at full clock."""
    c = REFERENCE_COMPUTE_FRACTION
    return (1.0 - STATIC_FRACTION) * tdp_watts / (c + MEMORY_ACTIVITY * (1.0 - c))


@dataclass(frozen=True)
class SimulatedPowerModel:
    """Constants of one simulated GPU running one workload (units in the names)."""

    name: str = "Simulated H100 SXM (model, not a GPU)"
    idle_watts: float = 70.0
    static_watts: float = STATIC_FRACTION * 700.0
    max_watts: float = 700.0
    """The TDP: the most the card draws (its maximum and default limit)."""
    min_limit_watts: float = 200.0
    max_limit_watts: float = 700.0
    default_limit_watts: float = 700.0
    compute_fraction: float = REFERENCE_COMPUTE_FRACTION
    activity: float = 1.0
    """The workload's dynamic power relative to the reference training load (1)."""
    dynamic_watts: float = _reference_dynamic_watts(700.0)
    memory_activity: float = MEMORY_ACTIVITY
    min_voltage_ratio: float = MIN_VOLTAGE_RATIO
    voltage_floor_clock: float = VOLTAGE_FLOOR_CLOCK
    min_clock_fraction: float = 0.15

    def __post_init__(self) -> None:
        if not 0.0 <= self.compute_fraction <= 1.0:
            raise ValueError(f"compute_fraction must be within 0..1, got {self.compute_fraction}")
        if not self.idle_watts <= self.static_watts < self.min_limit_watts <= self.max_limit_watts:
            raise ValueError("need idle_watts <= static_watts < min_limit_watts <= max_limit_watts")
        if self.activity <= 0 or self.dynamic_watts <= 0:
            raise ValueError("activity and dynamic_watts must be > 0")
        if not 0.0 < self.min_voltage_ratio <= 1.0 or not 0.0 < self.voltage_floor_clock < 1.0:
            raise ValueError("min_voltage_ratio must be within (0, 1] and voltage_floor_clock within (0, 1)")
        if not 0.0 < self.min_clock_fraction < 1.0:
            raise ValueError("min_clock_fraction must be within (0, 1)")


H100_SXM = SimulatedPowerModel()
#: A V100 PCIe-like card (250 W TDP and default limit, 100 W minimum limit): the published capping results the
#: model is checked against were measured on 250 W cards.
V100_PCIE = SimulatedPowerModel(
    name="Simulated V100 PCIe (model, not a GPU)",
    idle_watts=35.0,
    static_watts=STATIC_FRACTION * 250.0,
    max_watts=250.0,
    min_limit_watts=100.0,
    max_limit_watts=250.0,
    default_limit_watts=250.0,
    dynamic_watts=_reference_dynamic_watts(250.0),
)


def voltage_ratio(model: SimulatedPowerModel, x: float) -> float:
    """``V/V_max`` at clock fraction ``x``: the floor below ``voltage_floor_clock``, then linear up to 1."""
    floor, knee = model.min_voltage_ratio, model.voltage_floor_clock
    if x <= knee:
        return floor
    return floor + (1.0 - floor) * (min(x, 1.0) - knee) / (1.0 - knee)


def _time_factor(model: SimulatedPowerModel, x: float) -> float:
    c = model.compute_fraction
    return (1.0 - c) + c / x


def _energy_factor(model: SimulatedPowerModel, x: float) -> float:
    """Energy per step of a step that takes 1 s at full clock (J)."""
    c, v = model.compute_fraction, voltage_ratio(model, x)
    dynamic = model.activity * model.dynamic_watts * v * v * (c + model.memory_activity * (1.0 - c) * x)
    return model.static_watts * _time_factor(model, x) + dynamic


def power_at_clock_watts(model: SimulatedPowerModel, x: float) -> float:
    """The busy power at clock fraction ``x`` (W); increasing in ``x``."""
    return _energy_factor(model, x) / _time_factor(model, x)


def full_clock_watts(model: SimulatedPowerModel) -> float:
    """What the workload draws at full clock (W): the limits above it do not bind."""
    return power_at_clock_watts(model, 1.0)


@functools.lru_cache(maxsize=65536)
def clock_fraction(model: SimulatedPowerModel, limit_watts: float) -> float:
    """Return ``f/f_max`` at which the busy power meets ``limit_watts`` (1.0 when the limit does not bind).

    The limit is clamped to the card's range; at the lowest clock the draw may stay above a very low limit.
    """
    limit = min(max(limit_watts, model.min_limit_watts), model.max_limit_watts)
    if power_at_clock_watts(model, 1.0) <= limit:
        return 1.0
    low, high = model.min_clock_fraction, 1.0
    if power_at_clock_watts(model, low) >= limit:
        return low
    for _ in range(60):
        mid = (low + high) / 2
        if power_at_clock_watts(model, mid) > limit:
            high = mid
        else:
            low = mid
    return (low + high) / 2


def busy_power_watts(model: SimulatedPowerModel, limit_watts: float) -> float:
    """Return the draw of the loaded GPU under ``limit_watts`` (the limit, or less when it does not bind)."""
    x = clock_fraction(model, limit_watts)
    limit = min(max(limit_watts, model.min_limit_watts), model.max_limit_watts)
    power = power_at_clock_watts(model, x)
    return limit if x < 1.0 and abs(power - limit) < 1e-6 * limit else power


def step_seconds(model: SimulatedPowerModel, limit_watts: float, full_clock_seconds: float) -> float:
    """Return the step time under ``limit_watts`` of a step that takes ``full_clock_seconds`` at full clock."""
    return full_clock_seconds * _time_factor(model, clock_fraction(model, limit_watts))


def step_energy_joules(model: SimulatedPowerModel, limit_watts: float, full_clock_seconds: float) -> float:
    """Return the energy of one step under ``limit_watts``."""
    return busy_power_watts(model, limit_watts) * step_seconds(model, limit_watts, full_clock_seconds)


def limit_cost(model: SimulatedPowerModel, limit_watts: float, eta: float, full_clock_seconds: float = 1.0) -> float:
    """Return the Zeus cost ``eta*E + (1-eta)*P_max_limit*T`` of one step under ``limit_watts``."""
    energy = step_energy_joules(model, limit_watts, full_clock_seconds)
    seconds = step_seconds(model, limit_watts, full_clock_seconds)
    return eta * energy + (1.0 - eta) * model.max_limit_watts * seconds


def analytic_optimal_limit_watts(
    model: SimulatedPowerModel, eta: float, max_slowdown: float | None = None, resolution_watts: float = 0.5
) -> float:
    """Return the limit in [min, max] with the least cost (within the slowdown of the max limit's step time).

    A dense scan (``resolution_watts``) refined by golden-section search around the best grid point, so an
    objective that is flat over a range (limits above the workload's draw) or kinked (the voltage floor)
    is handled; ties go to the higher limit.
    """
    low, high = model.min_limit_watts, model.max_limit_watts
    base = step_seconds(model, high, 1.0)

    def feasible(w: float) -> bool:
        return max_slowdown is None or step_seconds(model, w, 1.0) <= max_slowdown * base * (1 + 1e-12)

    def cost(w: float) -> float:
        return limit_cost(model, w, eta)

    steps = math.ceil((high - low) / resolution_watts)
    grid = [high - i * (high - low) / steps for i in range(steps + 1)]
    candidates = [w for w in grid if feasible(w)] or [high]
    best = min(candidates, key=lambda w: (cost(w), -w))
    a, b = max(low, best - resolution_watts), min(high, best + resolution_watts)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(60):
        c1, c2 = b - ratio * (b - a), a + ratio * (b - a)
        if cost(c1) < cost(c2):
            b = c2
        else:
            a = c1
    refined = (a + b) / 2
    return refined if feasible(refined) and cost(refined) < cost(best) else best
