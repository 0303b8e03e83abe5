"""Time and energy to completion, as a pure function: :func:`forecast` (``status.forecast``).

Inputs, and whose word each one is:

* **Progress**: the workload's report (``step``, ``stepsTotal``, ``samplesPerStep``): the workload's word.
* **Speed**: the operator's own measurement. Each pass that sees the step count change records the step and the
  pass's ``now`` (never the workload's timestamps or its ``samplesPerSecond``) in a window kept in the status
  (:class:`~etj_contract.RateWindow`), so an operator restart or a failover continues it. The speed is
  ``(last.step - anchor.step) / (last.time - anchor.time)``. The anchor rolls forward: once an observation is
  :data:`ROLL_SECONDS` after the anchor it becomes ``mid``, and once another is :data:`ROLL_SECONDS` after
  ``mid``, ``mid`` becomes the anchor; the window spans one to two :data:`ROLL_SECONDS`, and a change of speed is
  followed entirely within ``2 x ROLL_SECONDS`` plus one observation. A step count that goes backwards (a restart
  from a checkpoint) starts a new window; so does a job that resumes after a hold, at its first step change.
* **Power**: the job's mean measured power: the slope of the cumulative joules of ``status.energy.history`` over
  the last :data:`POWER_WINDOW_SECONDS` of readings, back to the first gap longer than :data:`POWER_GAP_SECONDS`
  (a hold, an outage); with fewer than two points, the last cycle's ``currentWatts``.

Figures: ``stepsRemaining = stepsTotal - step``; ``remainingSeconds = stepsRemaining / stepsPerSecond`` (D/V, as
of ``progressTime``, the last step change); ``completionTime = progressTime + remainingSeconds``;
``energyToCompletion = powerWatts x (completionTime - powerTime)``; ``energyAtCompletion`` = the measured energy
plus that. ``now`` enters only as the time of a step observation, so the forecast changes only when its inputs
do (a new step count, a telemetry cycle, a phase): each of those already makes the pass write the status.

Unknown is unknown (absent, ``-`` in the display), and ``reason`` says why (:data:`REASONS`).
"""

from __future__ import annotations

import dataclasses
from typing import Final

from etj_contract import (
    JOULES_PER_KWH,
    TERMINAL,
    EnergySection,
    ForecastSection,
    Phase,
    RateWindow,
    WorkloadReport,
)

__all__ = [
    "FINISHED",
    "FORECASTING",
    "HOLD_PHASES",
    "MATURE_POWER_SECONDS",
    "MATURE_PROGRESS",
    "MATURE_SECONDS",
    "MIN_SPEED_SECONDS",
    "NOT_ENOUGH_PROGRESS",
    "NO_PLAN",
    "NO_POWER",
    "POWER_GAP_SECONDS",
    "POWER_WINDOW_SECONDS",
    "REASONS",
    "ROLL_SECONDS",
    "forecast",
]

#: A speed is given once the window holds two step observations at least this far apart.
MIN_SPEED_SECONDS: Final = 30.0
#: How far the window's anchor trails the newest observation: between one and two of these.
ROLL_SECONDS: Final = 300.0
#: Mature (the budget foresight may act on it): the speed measured over at least this long ...
MATURE_SECONDS: Final = 120.0
#: ... with at least this fraction of the plan done ...
MATURE_PROGRESS: Final = 0.02
#: ... and the power a mean over readings at least this far apart.
MATURE_POWER_SECONDS: Final = 60.0
#: The power is the mean over this much of the newest readings ...
POWER_WINDOW_SECONDS: Final = 300.0
#: ... back to the first gap between readings longer than this (at least three telemetry intervals).
POWER_GAP_SECONDS: Final = 120.0

FORECASTING: Final = "Forecasting"
NO_PLAN: Final = "NoPlan"
NOT_ENOUGH_PROGRESS: Final = "NotEnoughProgress"
NO_POWER: Final = "NoPower"
FINISHED: Final = "Finished"
#: Phases in which no progress is expected: the time figures are unknown, the rest is kept as it was.
HOLD_PHASES: Final = (Phase.SUSPENDED, Phase.PAUSED, Phase.QUEUED)
REASONS: Final = (FORECASTING, NO_PLAN, NOT_ENOUGH_PROGRESS, NO_POWER, FINISHED, *HOLD_PHASES)


def forecast(
    previous: ForecastSection,
    report: WorkloadReport | None,
    energy: EnergySection,
    now: float,
    *,
    phase: str | None,
    telemetry_interval_seconds: float = 15.0,
) -> ForecastSection:
    """The job's forecast for this pass (pure: ``now`` is the pass's time, in unix seconds).

    ``previous``: the forecast as found in the status (its window continues); ``report``: the workload's report
    as parsed this pass (None: none yet); ``energy``: the job's account after this pass's integration;
    ``phase``: the job's phase.
    """
    step = report.step if report is not None else None
    total = report.steps_total if report is not None else None
    per_step = report.samples_per_step if report is not None else None
    if step is None:
        step = previous.steps_done
    if total is None and report is None:
        total = previous.steps_total
    out = ForecastSection(
        steps_done=step,
        steps_total=total,
        simulated=energy.simulated,
    )
    if phase in TERMINAL:
        return _finished(out, energy, phase)
    held = phase in HOLD_PHASES
    window = previous.window
    if not held and previous.reason in HOLD_PHASES:
        # resumed: the time held is no training time; measure again from the first step change
        last = window.last_step if window is not None and window.last_step is not None else previous.steps_done
        window = RateWindow(last_step=last)
    if step is not None:  # held, the count does not move: the pass that held the job may still see a step
        window = _observe(window, step, now)
    out.window = window
    speed, span = _speed(window)
    if speed is not None:
        out.steps_per_second = _sig(speed)
        out.samples_per_second = None if per_step is None else _sig(speed * per_step)
    if window is not None and window.last_seconds is not None and window.last_step == step:
        out.progress_seconds = round(window.last_seconds, 3)
    watts, power_time, power_span = _power(energy, telemetry_interval_seconds)

    if total is None:
        out.reason = NO_PLAN
        out.message = "the workload reports no stepsTotal: the time and energy to completion are unknown"
        return _held(out, phase) if held else out
    if step is None:
        out.reason = NOT_ENOUGH_PROGRESS
        out.message = f"no step reported yet (the plan is {total} steps)"
        return _held(out, phase) if held else out
    remaining = max(0, total - step)
    out.steps_remaining = remaining
    out.samples_remaining = None if per_step is None else remaining * per_step
    if speed is None or out.progress_seconds is None:
        out.reason = NOT_ENOUGH_PROGRESS
        out.message = (
            f"the speed is measured once the step count has advanced over at least {MIN_SPEED_SECONDS:.0f} s "
            f"of the operator's clock ({_window_text(window)})"
        )
        return _held(out, phase) if held else out
    out.remaining_seconds = round(remaining / speed, 1)
    out.completion_seconds = round(out.progress_seconds + remaining / speed, 3)
    done = step / total if total > 0 else 1.0
    if watts is None or power_time is None:
        out.reason = NO_POWER
        out.message = (
            f"{remaining} steps to go at {speed:.4g} steps/s (measured over {span:.0f} s); no power measured "
            "yet: the energy to completion is unknown"
        )
        return _held(out, phase) if held else out
    to_go_joules = watts * max(0.0, out.completion_seconds - power_time)
    out.power_watts = round(watts, 2)
    out.power_seconds = round(power_time, 3)
    out.energy_to_completion_kwh = _kwh(to_go_joules)
    out.energy_at_completion_kwh = _kwh(energy.joules + to_go_joules)
    out.mature = span >= MATURE_SECONDS and done >= MATURE_PROGRESS and power_span >= MATURE_POWER_SECONDS
    out.reason = FORECASTING
    simulated = " (simulated)" if energy.simulated else ""
    maturity = "" if out.mature else f"; not mature yet ({_maturity_rule()})"
    out.message = (
        f"{remaining} steps to go at {speed:.4g} steps/s (measured over {span:.0f} s) and "
        f"{watts:.0f} W{simulated} (mean over {power_span:.0f} s){maturity}"
    )
    return _held(out, phase) if held else out


def _finished(out: ForecastSection, energy: EnergySection, phase: str | None) -> ForecastSection:
    """A finished job: nothing remains; the energy at completion is the energy measured."""
    out.steps_remaining = 0
    out.remaining_seconds = 0.0
    out.energy_to_completion_kwh = 0.0
    if energy.measured:
        out.energy_at_completion_kwh = _kwh(energy.joules)
    out.reason = FINISHED
    at = "" if out.steps_done is None else f" at step {out.steps_done}"
    of = "" if out.steps_total is None or out.steps_done is None else f" of {out.steps_total}"
    out.message = f"the job has {'succeeded' if phase == Phase.SUCCEEDED else 'failed'}{at}{of}: nothing remains"
    return out


def _held(out: ForecastSection, phase: str | None) -> ForecastSection:
    """A held job makes no progress: no time figures; the steps and energy figures are those of the hold."""
    out.remaining_seconds = None
    out.completion_seconds = None
    was = f" (else: {out.reason}: {out.message})" if out.reason != FORECASTING else f"; as measured: {out.message}"
    out.reason = str(phase)
    out.message = f"the job is {str(phase).lower()}: no progress expected, the time to completion is unknown{was}"
    return out


def _observe(window: RateWindow | None, step: int, now: float) -> RateWindow:
    """The window with this pass's step count in it (an observation only when the count changed)."""
    if window is None or (window.last_step is None and window.anchor_step is None):
        return RateWindow(anchor_step=step, anchor_seconds=now, last_step=step, last_seconds=now)
    if window.anchor_step is None or window.anchor_seconds is None or window.last_seconds is None:
        # waiting for the first change after a hold (or a window that lost its points)
        if step == window.last_step:
            return window
        return RateWindow(anchor_step=step, anchor_seconds=now, last_step=step, last_seconds=now)
    last_step = window.last_step if window.last_step is not None else window.anchor_step
    if step == last_step:
        return window
    if step < last_step or now <= window.last_seconds:
        # backwards (a restart from a checkpoint), or a clock behind the window's: start again
        return RateWindow(anchor_step=step, anchor_seconds=now, last_step=step, last_seconds=now)
    out = dataclasses.replace(window, last_step=step, last_seconds=now)
    if out.mid_seconds is None:
        if now - window.anchor_seconds >= ROLL_SECONDS:
            out.mid_step, out.mid_seconds = step, now
    elif now - out.mid_seconds >= ROLL_SECONDS:
        out.anchor_step, out.anchor_seconds = out.mid_step, out.mid_seconds
        out.mid_step, out.mid_seconds = step, now
    return out


def _speed(window: RateWindow | None) -> tuple[float | None, float]:
    """Steps per second over the window, and the seconds it spans (None: not enough measured)."""
    if window is None or None in (window.anchor_step, window.anchor_seconds, window.last_step, window.last_seconds):
        return None, 0.0
    assert window.anchor_step is not None and window.anchor_seconds is not None  # for mypy
    assert window.last_step is not None and window.last_seconds is not None
    span = window.last_seconds - window.anchor_seconds
    steps = window.last_step - window.anchor_step
    if span < MIN_SPEED_SECONDS or steps <= 0:
        return None, max(span, 0.0)
    return steps / span, span


def _power(energy: EnergySection, interval_seconds: float) -> tuple[float | None, float | None, float]:
    """The job's mean measured power (W), the time of the newest reading used, and the seconds it spans."""
    window = max(POWER_WINDOW_SECONDS, 5 * interval_seconds)
    gap = max(POWER_GAP_SECONDS, 3 * interval_seconds)
    points = [p for p in energy.history if p[0] is not None and p[3] is not None]
    if len(points) >= 2:
        newest = points[-1]
        first = newest
        for earlier in reversed(points[:-1]):
            assert earlier[0] is not None and first[0] is not None and newest[0] is not None
            if first[0] - earlier[0] > gap or newest[0] - earlier[0] > window:
                break
            first = earlier
        assert first[0] is not None and newest[0] is not None and first[3] is not None and newest[3] is not None
        span = newest[0] - first[0]
        if span > 0:
            return max(0.0, (newest[3] - first[3]) / span), newest[0], span
    if energy.current_watts is not None and energy.last_sample_seconds is not None:
        return energy.current_watts, energy.last_sample_seconds, 0.0
    return None, None, 0.0


def _window_text(window: RateWindow | None) -> str:
    if window is None or window.anchor_seconds is None or window.last_seconds is None:
        return "no step change seen yet"
    span = window.last_seconds - window.anchor_seconds
    return f"step {window.last_step} since step {window.anchor_step}, over {span:.0f} s"


def _maturity_rule() -> str:
    return (
        f"the budget foresight acts once the speed is measured over {MATURE_SECONDS:.0f} s, {MATURE_PROGRESS:.0%} "
        f"of the plan is done and the power is a mean over {MATURE_POWER_SECONDS:.0f} s"
    )


def _kwh(joules: float) -> float:
    return round(joules / JOULES_PER_KWH, 9)


def _sig(value: float) -> float:
    """Six significant digits (a speed needs no more; fewer digits, fewer changes to write)."""
    return float(f"{value:.6g}")

