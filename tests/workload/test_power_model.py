import pytest

from etj_workload import power_model as pm

M = pm.H100_SXM


def test_constants_are_h100_sxm_like() -> None:
    assert (M.max_limit_watts, M.default_limit_watts, M.min_limit_watts, M.idle_watts) == (700, 700, 200, 70)


def test_no_cap_means_full_clock_and_max_power() -> None:
    assert pm.clock_fraction(M, 700) == 1.0
    assert pm.busy_power_watts(M, 700) == pytest.approx(700)
    assert pm.step_seconds(M, 700, 2.0) == pytest.approx(2.0)


def test_busy_power_meets_the_cap() -> None:
    for limit in (200, 300, 450, 650):
        assert pm.busy_power_watts(M, limit) == pytest.approx(limit)


def test_step_time_grows_as_the_cap_falls() -> None:
    times = [pm.step_seconds(M, w, 1.0) for w in range(700, 199, -50)]
    assert times == sorted(times)


def test_energy_per_step_is_u_shaped_with_an_interior_minimum() -> None:
    optimum = pm.analytic_optimal_limit_watts(M, eta=1.0)
    assert M.min_limit_watts < optimum < M.max_limit_watts
    e = lambda w: pm.step_energy_joules(M, w, 1.0)  # noqa: E731
    assert e(optimum) < e(M.min_limit_watts) and e(optimum) < e(M.max_limit_watts)


def test_eta_zero_prefers_speed_and_slowdown_bounds_the_choice() -> None:
    assert pm.analytic_optimal_limit_watts(M, eta=0.0) == pytest.approx(700)
    bounded = pm.analytic_optimal_limit_watts(M, eta=1.0, max_slowdown=1.1)
    assert pm.step_seconds(M, bounded, 1.0) <= 1.1 + 1e-6
    assert bounded > pm.analytic_optimal_limit_watts(M, eta=1.0)


def test_model_validates_its_constants() -> None:
    with pytest.raises(ValueError):
        pm.SimulatedPowerModel(compute_fraction=1.5)
    with pytest.raises(ValueError):
        pm.SimulatedPowerModel(static_watts=250)
