from dataclasses import replace
from typing import Any
from unittest import mock

import pytest
from workload_support import FakeClock

import etj_contract as contract
from etj_workload import power_model as pm
from etj_workload import profiler
from etj_workload.config import AutoPolicy, ConfigError, PowerPolicy, parse_power_enforcer
from etj_workload.gpu import GpuPermissionError, SimulatedGpu
from etj_workload.power import PowerController


def run_steps(controller: PowerController, gpu: SimulatedGpu, steps: int) -> None:
    for _ in range(steps):
        controller.step_end(gpu.account_step(0.0))


def test_unmanaged_leaves_the_gpu_alone() -> None:
    gpu = SimulatedGpu()
    controller = PowerController(gpu, PowerPolicy())
    controller.train_begin()
    assert gpu.power_limit_mw() == 700_000 and controller.effective_limit_watts() is None


def test_fixed_limit_and_operator_cap() -> None:
    gpu = SimulatedGpu()
    controller = PowerController(gpu, PowerPolicy(mode="Fixed", limit_watts=500))
    controller.train_begin()
    assert gpu.power_limit_mw() == 500_000
    controller.set_cap(350)
    assert gpu.power_limit_mw() == 350_000
    controller.set_cap(600)  # a cap above the target changes nothing
    assert gpu.power_limit_mw() == 500_000
    controller.set_cap(None)
    controller.restore()
    assert gpu.power_limit_mw() == 700_000


def test_limits_are_clamped_to_the_device() -> None:
    gpu = SimulatedGpu()
    controller = PowerController(gpu, PowerPolicy(mode="Fixed", limit_watts=900))
    controller.train_begin()
    controller.set_cap(100)
    assert gpu.power_limit_mw() == 200_000


def clocked_gpu(**kw: Any) -> tuple[SimulatedGpu, FakeClock]:
    clock = FakeClock()
    return SimulatedGpu(clock=clock, sleep=clock.advance, sleep_slowdown=True, **kw), clock


def train(controller: PowerController, gpu: SimulatedGpu, clock: FakeClock, steps: int, *, full: float = 1.0,
          between: Any = None) -> None:
    """Steps as the harness runs them: step_begin, the step's time on the fake clock, step_end."""
    for i in range(steps):
        if between is not None:
            between(i)
        controller.step_begin()
        clock.advance(full)
        controller.step_end(gpu.account_step(full))


def auto(**kw: Any) -> PowerPolicy:
    return PowerPolicy(mode="Auto", auto=AutoPolicy(**kw))


def test_auto_on_the_simulated_gpu_picks_the_analytic_optimum() -> None:
    gpu, clock = clocked_gpu()
    controller = PowerController(gpu, auto(eta=0.5))
    controller.train_begin()
    assert controller.profiling and gpu.power_limit_mw() == 700_000
    train(controller, gpu, clock, 200)
    assert not controller.profiling and controller.chosen_watts is not None
    optimum = pm.analytic_optimal_limit_watts(pm.H100_SXM, 0.5)
    assert pm.limit_cost(pm.H100_SXM, controller.chosen_watts, 0.5) <= pm.limit_cost(pm.H100_SXM, optimum, 0.5) * 1.005
    assert gpu.power_limit_mw() == controller.chosen_watts * 1000
    assert controller.profile_steps_total < 100
    report = controller.profile_report()
    assert report is not None and report["chosenWatts"] == controller.chosen_watts
    assert report["uncappedWatts"] == controller.chosen_watts and report["reason"] in ("optimum", "flat")
    assert report["profileSteps"] == controller.profile_steps_total
    assert 3 <= len(report["candidates"]) <= 12 and {"watts", "joulesPerStep", "secondsPerStep", "cost"} <= set(
        report["candidates"][0]
    )
    assert contract.WorkloadReport.from_status({contract.WORKLOAD_POWER_PROFILE: report}).power_profile is not None


def test_auto_reduces_windows_across_ranks() -> None:
    calls: list[tuple[float, float]] = []

    def reducer(joules: float, seconds: float) -> tuple[float, float]:
        calls.append((joules, seconds))
        return joules * 2, seconds  # two identical ranks

    gpu, clock = clocked_gpu()
    controller = PowerController(gpu, auto(eta=1.0), world_size=2, reducer=reducer)
    controller.train_begin()
    train(controller, gpu, clock, 30)
    assert calls and all(j > 0 and s > 0 for j, s in calls)
    assert controller.plan is not None and controller.plan.max_power_watts == 1400


def test_a_window_counts_training_steps_only() -> None:
    """An evaluation or a checkpoint between steps is left out of the window, and an interrupt cancels it."""
    gpu, clock = clocked_gpu()
    controller = PowerController(gpu, auto(eta=1.0, warmup_steps=0, profile_steps=10))
    controller.train_begin()
    windows: list[profiler.Measurement] = []
    original = profiler.step_end

    def spy(plan: Any, state: Any, window: Any = None, seconds: Any = None) -> Any:
        if window is not None:
            windows.append(window)
        return original(plan, state, window, seconds)

    def evaluate(i: int) -> None:
        if i == 2:  # 30 s of evaluation inside the first window, between two steps
            clock.advance(30.0)
            gpu.account_step(30.0)

    with mock.patch.object(profiler, "step_end", spy):
        train(controller, gpu, clock, 5, between=evaluate)
    assert windows and windows[0].joules_per_step == pytest.approx(700.0, rel=1e-6)  # 700 W x 1 s, no eval
    assert controller.state is not None and isinstance(controller.state, profiler.Measuring)
    controller.interrupt()
    assert isinstance(controller.state, profiler.Settling)


def test_a_cap_that_comes_and_goes_leaves_the_choice_alone() -> None:
    """Issue 17: a throttle cap that came and went left Auto below it for the rest of the job."""
    gpu, clock = clocked_gpu()
    controller = PowerController(gpu, auto(eta=1.0, max_slowdown=1.05))
    controller.train_begin()
    train(controller, gpu, clock, 300)
    chosen = controller.chosen_watts
    assert chosen is not None and chosen > 600 and not controller.profiling
    controller.set_cap(450)
    assert gpu.power_limit_mw() == 450_000 and not controller.profiling  # no re-profile under the cap
    train(controller, gpu, clock, 100)
    controller.set_cap(None)
    assert gpu.power_limit_mw() == controller.chosen_watts * 1000 and abs(controller.chosen_watts - chosen) <= 25
    assert controller.state_dict()["chosen_watts"] == controller.chosen_watts  # what a checkpoint keeps


def test_a_cap_while_profiling_keeps_the_measurements_and_the_uncapped_reference() -> None:
    gpu, clock = clocked_gpu()
    controller = PowerController(gpu, auto(eta=1.0, max_slowdown=1.05))
    controller.train_begin()
    train(controller, gpu, clock, 40)  # the baseline at 700 W is measured by now
    assert controller.profiling
    controller.set_cap(600)
    assert controller.plan is not None and controller.plan.max_watts == 600 and controller.plan.known
    train(controller, gpu, clock, 300)
    report = controller.profile_report()
    assert report is not None and controller.decision is not None
    assert controller.decision.reference == "uncapped"  # maxSlowdown against the uncapped speed, kept
    # The bound's crossing (~624 W) is above the 600 W cap: the cap is the best, and without it the job
    # would pick another limit, unknown until the cap lifts.
    assert controller.chosen_watts == 600 and "uncappedWatts" not in report
    controller.set_cap(None)
    assert controller.profiling  # the cap lifted: profile the limits it allowed again
    train(controller, gpu, clock, 400)
    crossing = pm.analytic_optimal_limit_watts(pm.H100_SXM, 1.0, 1.05)
    assert controller.chosen_watts is not None and abs(controller.chosen_watts - crossing) <= 6
    assert controller.profile_report()["uncappedWatts"] == controller.chosen_watts  # type: ignore[index]


def test_a_budget_cap_from_the_start_holds_the_cap_not_a_slowdown_of_it() -> None:
    """Issue 17: under a 500 W budget maxSlowdown was measured against the capped speed (1.171x uncapped)."""
    gpu, clock = clocked_gpu()
    controller = PowerController(gpu, auto(eta=1.0, max_slowdown=1.05))
    controller.set_cap(500)
    controller.train_begin()
    train(controller, gpu, clock, 200)
    assert controller.chosen_watts == 500 and controller.decision is not None
    assert (controller.decision.reason, controller.decision.reference) == ("cap", "cap")
    assert controller.uncapped_watts is None and gpu.power_limit_mw() == 500_000


def test_a_compression_stage_profiles_again() -> None:
    gpu, clock = clocked_gpu()
    controller = PowerController(gpu, auto(eta=1.0))
    controller.train_begin()
    train(controller, gpu, clock, 200)
    first = controller.chosen_watts
    gpu.model = replace(pm.H100_SXM, compute_fraction=0.3)  # the pruned model: more memory-bound
    controller.workload_changed()
    assert controller.profiling and controller.profiles == 2
    train(controller, gpu, clock, 200)
    assert controller.chosen_watts is not None and controller.chosen_watts != first
    optimum = pm.analytic_optimal_limit_watts(gpu.model, 1.0)
    assert pm.limit_cost(gpu.model, controller.chosen_watts, 1.0) <= pm.limit_cost(gpu.model, optimum, 1.0) * 1.01


def test_a_drifting_step_time_profiles_again() -> None:
    gpu, clock = clocked_gpu()
    controller = PowerController(gpu, auto(eta=1.0))
    controller.train_begin()
    train(controller, gpu, clock, 200)
    assert not controller.profiling
    train(controller, gpu, clock, 200, full=0.7)  # the step got 30% shorter (nobody said why)
    assert controller.profiles == 2


def test_resumed_choice_skips_profiling() -> None:
    gpu = SimulatedGpu()
    controller = PowerController(gpu, PowerPolicy(mode="Auto"))
    controller.load_state_dict({"chosen_watts": 420})
    controller.train_begin()
    assert not controller.profiling and gpu.power_limit_mw() == 420_000


def test_permission_error_keeps_training_uncapped() -> None:
    gpu: Any = mock.create_autospec(SimulatedGpu, instance=True)
    gpu.power_limit_constraints_mw.return_value = (200_000, 700_000)
    gpu.default_power_limit_mw.return_value = 700_000
    gpu.set_power_limit_mw.side_effect = GpuPermissionError("needs CAP_SYS_ADMIN")
    controller = PowerController(gpu, PowerPolicy(mode="Fixed", limit_watts=300))
    controller.train_begin()
    controller.set_cap(250)
    assert controller.limits_unavailable and gpu.set_power_limit_mw.call_count == 1
    controller.restore()
    gpu.restore_power_limit.assert_not_called()  # nothing was ever applied


# ----- the node agent enforces every limit (ETJ_POWER_ENFORCER=agent) ---------------------------------------------


class RecordingNvmlGpu(SimulatedGpu):
    """A GPU that says it is NVML's (what the harness opens on a real node) and records every limit set."""

    source = "nvml"

    def __init__(self) -> None:
        super().__init__()
        self.sets: list[int] = []

    def set_power_limit_mw(self, limit_mw: int) -> None:
        self.sets.append(limit_mw)
        super().set_power_limit_mw(limit_mw)


@pytest.mark.parametrize(
    "policy",
    [PowerPolicy(mode="Fixed", limit_watts=300), PowerPolicy(mode="Unmanaged", budget_watts=1200), PowerPolicy()],
    ids=["fixed", "budget", "unmanaged"],
)
def test_with_the_agent_the_harness_sets_no_limit_and_reports_the_one_in_force(policy) -> None:
    gpu = RecordingNvmlGpu()
    controller = PowerController(gpu, policy, enforcer="agent")
    controller.train_begin()
    controller.set_cap(250)  # the operator's throttle: the agent applies it
    controller.set_cap(None)
    controller.restore()
    assert gpu.sets == [] and not controller.sets_limits and not controller.limits_unavailable
    assert controller.limit_in_force_watts() == 700.0  # what the card has (the agent's value on a real node)
    if policy.mode == "Fixed":
        assert controller.effective_limit_watts() == 300.0  # what the agent is asked for, still known


def test_with_the_agent_auto_mode_sets_nothing_either_it_asks() -> None:
    gpu = RecordingNvmlGpu()
    policy = PowerPolicy(mode="Auto", auto=AutoPolicy(eta=0.5, warmup_steps=0, profile_steps=1, step_watts=250))
    controller = PowerController(gpu, policy, enforcer="agent")
    controller.train_begin()
    run_steps(controller, gpu, 4)
    controller.set_cap(300)
    assert not controller.sets_limits and gpu.sets == []  # test_power_agent.py: the request and its read-back
    assert controller.requested_watts == 300


def test_with_the_agent_a_simulated_gpu_is_not_set_by_the_harness_either() -> None:
    gpu = SimulatedGpu()  # a simulated node's GPU gets its cap from the agent's simulated backend
    controller = PowerController(gpu, PowerPolicy(mode="Fixed", limit_watts=400), enforcer="agent")
    controller.train_begin()
    assert not controller.sets_limits and gpu.power_limit_mw() == 700_000


def test_the_enforcer_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(contract.ENV_ETJ_POWER_ENFORCER, "agent")
    gpu = RecordingNvmlGpu()
    controller = PowerController(gpu, PowerPolicy(mode="Fixed", limit_watts=300))
    controller.train_begin()
    assert controller.enforcer == "agent" and gpu.sets == []
    monkeypatch.delenv(contract.ENV_ETJ_POWER_ENFORCER)
    pod = PowerController(gpu, PowerPolicy(mode="Fixed", limit_watts=300))
    pod.train_begin()
    assert pod.enforcer == "pod" and gpu.sets == [300_000]  # unset: the harness enforces, as before


def test_the_enforcer_value_is_checked() -> None:
    assert parse_power_enforcer(None) == "pod" and parse_power_enforcer("") == "pod"
    assert parse_power_enforcer("agent") == "agent" and parse_power_enforcer("pod") == "pod"
    with pytest.raises(ConfigError, match=contract.ENV_ETJ_POWER_ENFORCER):
        parse_power_enforcer("daemon")
