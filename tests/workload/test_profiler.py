import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etj_workload import power_model as pm
from etj_workload import profiler as p


def test_candidates_descend_and_include_the_minimum() -> None:
    assert p.candidate_limits_watts(200, 700, 100) == (700, 600, 500, 400, 300, 200)
    assert p.candidate_limits_watts(200, 700, 150) == (700, 550, 400, 250, 200)
    with pytest.raises(ValueError):
        p.candidate_limits_watts(200, 700, 0)


def _drive(plan: p.ProfilePlan, model: pm.SimulatedPowerModel) -> tuple[p.Decided, list[int]]:
    """Run the machine as the harness does, measuring windows with the model; return the end and limits set."""
    transition = p.start(plan)
    limits = [transition.set_limit_watts]
    limit = transition.set_limit_watts
    for _ in range(10_000):
        state = transition.state
        if isinstance(state, p.Decided):
            return state, [x for x in limits if x is not None]
        window = None
        if p.needs_window(state):
            assert limit is not None
            window = p.Measurement(limit, pm.step_energy_joules(model, limit, 1.0), pm.step_seconds(model, limit, 1.0))
        transition = p.step_end(plan, state, window)
        if transition.set_limit_watts is not None:
            limit = transition.set_limit_watts
            limits.append(limit)
    raise AssertionError("profiler never decided")


def test_state_machine_walks_warmup_then_measuring() -> None:
    plan = p.ProfilePlan((700, 600), warmup_steps=2, profile_steps=3, eta=0.5, max_power_watts=700)
    t = p.start(plan)
    assert t.state == p.Warmup(0, 2) and t.set_limit_watts == 700 and not t.open_window
    t = p.step_end(plan, t.state)
    assert t.state == p.Warmup(0, 1)
    t = p.step_end(plan, t.state)
    assert isinstance(t.state, p.Measuring) and t.open_window
    t = p.step_end(plan, p.step_end(plan, t.state).state)
    assert p.needs_window(t.state)
    with pytest.raises(ValueError):
        p.step_end(plan, t.state)
    t = p.step_end(plan, t.state, p.Measurement(700, 700.0, 1.0))
    assert t.state == p.Warmup(1, 2, (p.Measurement(700, 700.0, 1.0),)) and t.set_limit_watts == 600
    assert t.close_window


@settings(max_examples=40, deadline=None)
@given(eta=st.floats(0.0, 1.0), step_watts=st.sampled_from([10, 25, 50]), fraction=st.floats(0.3, 0.9))
def test_auto_choice_is_within_one_step_of_the_analytic_optimum(eta: float, step_watts: int, fraction: float) -> None:
    model = pm.SimulatedPowerModel(compute_fraction=fraction)
    candidates = p.candidate_limits_watts(model.min_limit_watts, model.max_limit_watts, step_watts)
    plan = p.ProfilePlan(candidates, warmup_steps=1, profile_steps=2, eta=eta, max_power_watts=model.max_limit_watts)
    decided, limits = _drive(plan, model)
    optimum = pm.analytic_optimal_limit_watts(model, eta)
    assert abs(decided.chosen_watts - optimum) <= step_watts
    assert limits[-1] == decided.chosen_watts and len(decided.measurements) == len(candidates)


def test_max_slowdown_stops_early_and_bounds_the_choice() -> None:
    model = pm.H100_SXM
    candidates = p.candidate_limits_watts(200, 700, 25)
    plan = p.ProfilePlan(candidates, 0, 1, eta=1.0, max_power_watts=700, max_slowdown=1.1)
    decided, _ = _drive(plan, model)
    assert len(decided.measurements) < len(candidates)
    chosen = next(m for m in decided.measurements if m.watts == decided.chosen_watts)
    assert chosen.seconds_per_step <= 1.1 * decided.measurements[0].seconds_per_step
    assert abs(decided.chosen_watts - pm.analytic_optimal_limit_watts(model, 1.0, max_slowdown=1.1)) <= 25


def test_choose_prefers_higher_limit_on_ties() -> None:
    same = [p.Measurement(w, 100.0, 1.0) for w in (700, 600)]
    assert p.choose_limit_watts(same, 0.5, 700) == 700
