"""The forecast (etj_operator.forecast): accuracy on simulated jobs, the speed's window, honest unknowns, the record.

The simulated job advances its step count at a known rate and draws a known power; its report is written every
5 s (plus up to 1 s), each write wakes a pass 0.05-1.5 s later, and a telemetry cycle (both GPUs' energy
counters) arrives every 15 s (plus up to 1 s) and wakes a pass too. Every pass reads the forecast back from the
status it wrote (``from_status(to_status(...))``), as a restarted operator would. Clocks are the simulation's.

Stated bound: from 20 % to 90 % of the plan, on every pass, the forecast's remaining seconds are within 5 % of
the true remaining time (from ``progressTime``) and the energy at completion within 5 % of the energy the job
draws in all; a change of speed is followed (within 2 %) by ``2 x ROLL_SECONDS`` plus 15 s after it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from etj_contract import EnergySection, ForecastSection, RateWindow, WorkloadReport
from etj_operator import forecast as fmod
from etj_operator.energy import integrate
from etj_operator.forecast import forecast
from etj_operator.telemetry.base import GpuSample

T0 = 1_800_000_000.0
BOUND = 0.05


@dataclass
class Pass:
    now: float
    section: ForecastSection
    #: The true step count at ``now``.
    true_step: float


def simulate(
    rate: Callable[[float], float],
    total_steps: int,
    watts: float,
    seed: int,
    *,
    until: float,
    report_steps: Callable[[float], int] | None = None,
    simulated: bool = False,
) -> list[Pass]:
    """Run the forecast over the job's passes up to ``until`` (seconds after T0)."""
    rng = random.Random(seed)
    cumulative = _cumulative(rate, until + 60)
    events: list[tuple[float, str, float]] = []  # (pass time, kind, the write's or cycle's time)
    t = 0.0
    while t < until:
        written = T0 + t + rng.uniform(0, 1)
        events.append((written + rng.uniform(0.05, 1.5), "report", written))
        t += 5
    t = 0.0
    while t < until:
        cycle = T0 + t + rng.uniform(0, 1)
        events.append((cycle + rng.uniform(0.05, 1.0), "telemetry", cycle))
        t += 15
    events.sort()
    energy = EnergySection()
    status: dict[str, object] = {}
    report_time: float | None = None
    passes = []
    for now, kind, at in events:
        if kind == "report" and (report_time is None or at > report_time):
            report_time = at
        if kind == "telemetry":
            samples = [
                GpuSample("ns", f"j-worker-{i}", f"GPU-{i}", at, power_watts=watts / 2,
                          energy_mj=watts / 2 * (at - T0) * 1000 + 5e6, uid=f"u{i}", simulated=simulated)
                for i in range(2)
            ]
            integrate(energy, samples, source="Direct", now_seconds=now)
        report = None
        if report_time is not None:
            step = report_steps(report_time) if report_steps else int(cumulative(report_time))
            report = WorkloadReport(step=step, steps_total=total_steps, samples_per_step=64)
        previous = ForecastSection.from_status(status.get("forecast"))
        section = forecast(previous, report, energy, now, phase="Running")
        status["forecast"] = section.to_status()
        passes.append(Pass(now, section, cumulative(now)))
    return passes


def _cumulative(rate: Callable[[float], float], until: float) -> Callable[[float], float]:
    """Steps done by time t (a table at 0.1 s, interpolated)."""
    table = [0.0]
    for i in range(int(until * 10) + 2):
        table.append(table[-1] + rate(T0 + i / 10) / 10)

    def at(t: float) -> float:
        x = (t - T0) * 10
        i = max(0, min(int(x), len(table) - 2))
        return table[i] + (table[i + 1] - table[i]) * (x - i)

    return at


@settings(max_examples=10, deadline=None)
@given(
    steps_per_second=st.floats(0.2, 20.0),
    duration=st.floats(1800, 3600),
    watts=st.floats(100, 2400),  # two GPUs, each within the accounting's physical bound
    seed=st.integers(0, 2**32 - 1),
)
def test_a_fixed_rate_job_is_forecast_within_5_percent_from_20_percent_progress(
    steps_per_second: float, duration: float, watts: float, seed: int
) -> None:
    total = int(steps_per_second * duration)
    end = T0 + total / steps_per_second
    true_kwh = watts * (end - T0) / 3.6e6
    checked = 0
    for p in simulate(lambda t: steps_per_second, total, watts, seed, until=0.9 * duration):
        fc = p.section
        if p.true_step < 0.2 * total:
            continue
        assert fc.reason == fmod.FORECASTING, fc.message
        assert fc.remaining_seconds is not None and fc.progress_seconds is not None
        true_remaining = end - fc.progress_seconds
        assert abs(fc.remaining_seconds - true_remaining) <= BOUND * true_remaining, (fc, true_remaining)
        assert fc.completion_seconds is not None
        assert abs(fc.completion_seconds - end) <= BOUND * true_remaining
        assert fc.energy_at_completion_kwh is not None
        assert abs(fc.energy_at_completion_kwh - true_kwh) <= BOUND * true_kwh, (fc, true_kwh)
        assert fc.power_watts is not None and math.isclose(fc.power_watts, watts, rel_tol=0.01)
        assert fc.mature and fc.steps_remaining == total - fc.steps_done
        assert fc.samples_remaining == 64 * fc.steps_remaining
        checked += 1
    assert checked > 50


def test_a_change_of_speed_is_followed_within_two_roll_windows() -> None:
    change = 1200.0

    def rate(t: float) -> float:
        return 10.0 if t - T0 < change else 4.0

    passes = simulate(rate, 10**6, 500.0, 7, until=change + 2 * fmod.ROLL_SECONDS + 120)
    before = [p.section.steps_per_second for p in passes if change - 60 < p.now - T0 < change]
    assert before and all(s is not None and abs(s - 10.0) <= 0.02 * 10.0 for s in before)
    soon = [p.section.steps_per_second for p in passes if change + 30 < p.now - T0 < change + 60]
    assert soon and all(s is not None and s > 4.0 * 1.02 for s in soon)  # still blending the old speed in
    followed = [p for p in passes if p.now - T0 > change + 2 * fmod.ROLL_SECONDS + 15]
    assert followed
    for p in followed:
        assert p.section.steps_per_second is not None and abs(p.section.steps_per_second - 4.0) <= 0.02 * 4.0


def test_a_step_count_that_goes_back_starts_a_new_window() -> None:
    # 5 steps/s; at 900 s the job restarts from its checkpoint at step 3000, then goes on at 5 steps/s
    def steps(t: float) -> int:
        x = t - T0
        return int(5 * x) if x < 900 else int(3000 + 5 * (x - 900))

    passes = simulate(lambda t: 5.0, 100_000, 400.0, 3, until=1100, report_steps=steps)
    back = next(p for p in passes if p.now - T0 > 900 and (p.section.steps_done or 0) < 4000)
    window = back.section.window
    assert window is not None and window.anchor_step == back.section.steps_done and window.mid_step is None
    assert back.section.reason == fmod.NOT_ENOUGH_PROGRESS and back.section.steps_per_second is None
    assert back.section.remaining_seconds is None and back.section.display()["remaining"] == "-"
    later = [p.section for p in passes if p.now - back.now > fmod.MIN_SPEED_SECONDS + 10]
    assert later and all(s.window is not None and s.window.anchor_step == window.anchor_step for s in later)
    assert all(s.steps_per_second is not None and abs(s.steps_per_second - 5.0) < 0.25 for s in later)
    # measured over less than MATURE_SECONDS since the restart: not mature, whatever the window held before
    assert not any(p.section.mature for p in passes if back.now <= p.now < back.now + fmod.MATURE_SECONDS - 5)
    assert later[-1].mature


# --- unknowns, each absent with its reason ----------------------------------------------------------------------
def measured(joules: float = 3.6e6, watts: float = 800.0, at: float = T0 + 600) -> EnergySection:
    """An account with readings every 15 s over the last 10 minutes at ``watts``."""
    points: list[list[float | None]] = []
    for i in range(41):
        t = at - 600 + 15 * i
        points.append([t, watts, None, joules - watts * (at - t)])
    return EnergySection(joules=joules, current_watts=watts, last_sample_seconds=at, history=points,
                         covered_seconds=600, source="Prometheus")


def running_for(seconds: float, steps_per_second: float = 2.0, start_step: int = 0) -> ForecastSection:
    """A forecast whose window saw the step count advance at a fixed rate for ``seconds``, ending at T0 + 600."""
    anchor = T0 + 600 - seconds
    last_step = start_step + int(seconds * steps_per_second)
    return ForecastSection(
        steps_done=last_step,
        window=RateWindow(anchor_step=start_step, anchor_seconds=anchor, last_step=last_step, last_seconds=T0 + 600),
    )


def test_without_a_plan_only_what_is_measured_is_given() -> None:
    fc = forecast(running_for(200), WorkloadReport(step=400), measured(), T0 + 601, phase="Running")
    assert fc.reason == fmod.NO_PLAN and "stepsTotal" in (fc.message or "")
    assert fc.steps_per_second == 2.0 and fc.steps_done == 400
    assert fc.steps_remaining is None and fc.remaining_seconds is None and fc.energy_at_completion_kwh is None
    assert fc.display() == {"remaining": "-", "energy": "-"}
    status = fc.to_status()
    assert "remainingSeconds" not in status and "energyAtCompletionKilowattHours" not in status


def test_too_little_progress_gives_no_speed_and_says_the_rule() -> None:
    first = forecast(ForecastSection(), WorkloadReport(step=10, steps_total=1000), measured(), T0, phase="Running")
    assert first.reason == fmod.NOT_ENOUGH_PROGRESS and first.steps_remaining == 990
    assert first.steps_per_second is None and first.remaining_seconds is None
    # a second observation 20 s later: two observations, but under MIN_SPEED_SECONDS apart
    second = forecast(first, WorkloadReport(step=50, steps_total=1000), measured(), T0 + 20, phase="Running")
    assert second.reason == fmod.NOT_ENOUGH_PROGRESS and "30 s" in (second.message or "")
    third = forecast(second, WorkloadReport(step=70, steps_total=1000), measured(), T0 + 30, phase="Running")
    assert third.reason == fmod.FORECASTING and third.steps_per_second == 2.0
    assert not third.mature  # 30 s of speed and 7 % of the plan: not enough for the foresight


def test_without_power_the_time_is_given_and_the_energy_is_not() -> None:
    fc = forecast(running_for(200), WorkloadReport(step=400, steps_total=1400), EnergySection(), T0 + 601,
                  phase="Running")
    assert fc.reason == fmod.NO_POWER
    assert fc.remaining_seconds == 500.0 and fc.completion_seconds == T0 + 600 + 500
    assert fc.power_watts is None and fc.energy_at_completion_kwh is None and fc.energy_to_completion_kwh is None
    assert fc.display() == {"remaining": "8m20s", "energy": "-"}


def test_a_full_forecast_states_its_figures() -> None:
    energy = measured(joules=0.41 * 3.6e6, watts=812.0)
    fc = forecast(running_for(300), WorkloadReport(step=600, steps_total=8766, samples_per_step=32), energy,
                  T0 + 601, phase="Running")
    assert fc.reason == fmod.FORECASTING and fc.mature
    assert fc.remaining_seconds == 4083.0 and fc.power_watts == 812.0 and fc.power_seconds == T0 + 600
    assert math.isclose(fc.energy_to_completion_kwh or 0, 812 * 4083 / 3.6e6, rel_tol=1e-6)
    assert math.isclose(fc.energy_at_completion_kwh or 0, 0.41 + 812 * 4083 / 3.6e6, rel_tol=1e-6)
    assert fc.samples_per_second == 64.0 and fc.samples_remaining == 8166 * 32
    assert fc.display() == {"remaining": "1h08m", "energy": "1.331kWh"}
    assert fc.progress_seconds == T0 + 600 and fc.to_status()["completionTime"].endswith("Z")


def test_the_power_is_the_mean_of_the_recent_readings_up_to_a_gap() -> None:
    energy = measured(watts=800.0)
    # a hold before: readings at 200 W ended 10 minutes before these (a gap): they do not count
    old = [[T0 - 1200 + 15 * i, 200.0, None, 1000.0 + 200 * 15 * i] for i in range(10)]
    energy.history = old + energy.history
    fc = forecast(running_for(300), WorkloadReport(step=600, steps_total=10_000), energy, T0 + 601,
                  phase="Running")
    assert fc.power_watts == 800.0
    # a single reading: the last cycle's power
    single = EnergySection(joules=100.0, current_watts=650.0, last_sample_seconds=T0 + 590,
                           history=[[T0 + 590, 650.0, None, 100.0]])
    fc = forecast(running_for(300), WorkloadReport(step=600, steps_total=10_000), single, T0 + 601,
                  phase="Running")
    assert fc.power_watts == 650.0 and fc.power_seconds == T0 + 590 and not fc.mature  # one reading: no mean


def test_a_finished_job_has_nothing_remaining_and_its_measured_energy_at_completion() -> None:
    for phase in ("Succeeded", "Failed"):
        fc = forecast(running_for(300), WorkloadReport(step=900, steps_total=1000), measured(joules=7.2e6),
                      T0 + 700, phase=phase)
        assert fc.reason == fmod.FINISHED and fc.remaining_seconds == 0.0 and fc.steps_remaining == 0
        assert fc.energy_to_completion_kwh == 0.0 and fc.energy_at_completion_kwh == 2.0
        assert fc.display() == {"remaining": "0s", "energy": "2kWh"}
    unmeasured = forecast(ForecastSection(), WorkloadReport(step=5), EnergySection(), T0, phase="Succeeded")
    assert unmeasured.energy_at_completion_kwh is None and unmeasured.display()["energy"] == "-"


def test_a_held_job_keeps_its_figures_but_no_time_and_measures_again_after_it() -> None:
    report = WorkloadReport(step=600, steps_total=8766)
    running = forecast(running_for(300), report, measured(), T0 + 601, phase="Running")
    for phase in ("Suspended", "Paused", "Queued"):
        held = forecast(running, report, measured(), T0 + 5000, phase=phase)
        assert held.reason == phase and "no progress expected" in (held.message or "")
        assert held.remaining_seconds is None and held.completion_seconds is None
        assert held.display()["remaining"] == "-"
        # the steps and the energy are those of the hold: what the foresight decided on
        assert held.steps_remaining == running.steps_remaining and held.mature
        assert held.energy_at_completion_kwh == running.energy_at_completion_kwh
    suspended = forecast(running, report, measured(), T0 + 5000, phase="Suspended")
    # resumed: the time held is no training time; the window waits for the step count to move
    resumed = forecast(suspended, report, measured(), T0 + 5010, phase="Running")
    assert resumed.reason == fmod.NOT_ENOUGH_PROGRESS and resumed.window == RateWindow(last_step=600)
    moved = forecast(resumed, WorkloadReport(step=620, steps_total=8766), measured(), T0 + 5030, phase="Running")
    assert moved.window is not None and moved.window.anchor_seconds == T0 + 5030 and moved.steps_per_second is None


def test_the_simulated_power_is_said() -> None:
    passes = simulate(lambda t: 2.0, 20_000, 300.0, 1, until=400, simulated=True)
    assert passes[-1].section.simulated and "(simulated)" in (passes[-1].section.message or "")
    assert passes[-1].section.to_status()["simulated"] is True


# --- the record ---------------------------------------------------------------------------------------------------
millis = st.integers(1_700_000_000_000, 1_900_000_000_000).map(lambda ms: ms / 1000)
figure = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
count = st.integers(0, 10**12)


@st.composite
def sections(draw: st.DrawFn) -> ForecastSection:
    window = draw(st.none() | st.builds(RateWindow, count, millis, st.none(), st.none(), count, millis))
    return ForecastSection(
        steps_done=draw(st.none() | count),
        steps_total=draw(st.none() | count),
        steps_remaining=draw(st.none() | count),
        samples_remaining=draw(st.none() | count),
        steps_per_second=draw(st.none() | figure),
        samples_per_second=draw(st.none() | figure),
        remaining_seconds=draw(st.none() | figure),
        completion_seconds=draw(st.none() | millis),
        power_watts=draw(st.none() | figure),
        energy_to_completion_kwh=draw(st.none() | figure),
        energy_at_completion_kwh=draw(st.none() | figure),
        progress_seconds=draw(st.none() | millis),
        power_seconds=draw(st.none() | millis),
        simulated=draw(st.booleans()),
        mature=draw(st.booleans()),
        reason=draw(st.none() | st.sampled_from(fmod.REASONS).map(str)),
        message=draw(st.none() | st.text(max_size=200)),
        window=window,
    )


@given(sections())
def test_the_record_round_trips(section: ForecastSection) -> None:
    assert ForecastSection.from_status(section.to_status()) == section
    assert ForecastSection.from_status(section.to_status()).problems == ()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from([*ForecastSection().to_status(), "stepsDone", "window", "powerWatts"]),
                       json_values))
def test_a_malformed_status_never_raises(raw: dict[str, object]) -> None:
    parsed = ForecastSection.from_status(raw)
    assert ForecastSection.from_status(parsed.to_status()).problems == ()


def test_malformed_fields_are_dropped_and_named_by_path() -> None:
    raw = {
        "stepsDone": "many",
        "stepsPerSecond": -1,
        "completionTime": "tomorrow",
        "window": {"anchorStep": 3, "lastStep": 9, "lastUnixSeconds": T0},
        "energyAtCompletionKilowattHours": 1.5,
    }
    parsed = ForecastSection.from_status(raw)
    assert [p.split(":")[0] for p in parsed.problems] == [
        "status.forecast.stepsDone",
        "status.forecast.stepsPerSecond",
        "status.forecast.completionTime",
        "status.forecast.window.anchor",
    ]
    assert parsed.energy_at_completion_kwh == 1.5 and parsed.steps_done is None
    assert parsed.window == RateWindow(last_step=9, last_seconds=T0)
    assert ForecastSection.from_status([1, 2]).problems == ("status.forecast: expected an object, found a list [1, 2]; "
                                                            "ignored",)
