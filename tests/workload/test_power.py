from typing import Any
from unittest import mock

import pytest

import etj_contract as contract
from etj_workload import power_model as pm
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


def test_auto_on_the_simulated_gpu_picks_the_analytic_optimum() -> None:
    gpu = SimulatedGpu(fixed_step_seconds=1.0)
    policy = PowerPolicy(mode="Auto", auto=AutoPolicy(eta=0.5, warmup_steps=1, profile_steps=2, step_watts=25))
    controller = PowerController(gpu, policy)
    controller.train_begin()
    assert controller.profiling and gpu.power_limit_mw() == 700_000
    run_steps(controller, gpu, 21 * 3)
    assert not controller.profiling and controller.chosen_watts is not None
    assert abs(controller.chosen_watts - pm.analytic_optimal_limit_watts(pm.H100_SXM, 0.5)) <= 25
    assert gpu.power_limit_mw() == controller.chosen_watts * 1000
    report = controller.profile_report()
    assert report is not None and report["chosenWatts"] == controller.chosen_watts
    assert len(report["candidates"]) == 21 and {"watts", "joulesPerStep", "secondsPerStep", "cost"} <= set(
        report["candidates"][0]
    )


def test_auto_reduces_windows_across_ranks() -> None:
    calls: list[tuple[float, float]] = []

    def reducer(joules: float, seconds: float) -> tuple[float, float]:
        calls.append((joules, seconds))
        return joules * 2, seconds  # two identical ranks

    gpu = SimulatedGpu(fixed_step_seconds=1.0)
    policy = PowerPolicy(mode="Auto", auto=AutoPolicy(eta=1.0, warmup_steps=0, profile_steps=1, step_watts=250))
    controller = PowerController(gpu, policy, world_size=2, reducer=reducer)
    controller.train_begin()
    run_steps(controller, gpu, 3)
    assert len(calls) == 3 and controller.chosen_watts is not None
    assert controller.plan is not None and controller.plan.max_power_watts == 1400


def test_cap_during_profiling_restarts_under_the_cap() -> None:
    gpu = SimulatedGpu(fixed_step_seconds=1.0)
    policy = PowerPolicy(mode="Auto", auto=AutoPolicy(eta=0.0, warmup_steps=0, profile_steps=1, step_watts=100))
    controller = PowerController(gpu, policy)
    controller.train_begin()
    run_steps(controller, gpu, 2)
    controller.set_cap(450)
    assert controller.plan is not None and controller.plan.candidates_watts[0] == 450
    run_steps(controller, gpu, 10)
    assert controller.chosen_watts == 450  # eta=0: the fastest candidate under the cap


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


# ----- the node agent enforces Fixed limits and the throttle (ETJ_POWER_ENFORCER=agent) --------------------------


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


def test_with_the_agent_auto_mode_still_sets_its_candidates() -> None:
    gpu = RecordingNvmlGpu()
    policy = PowerPolicy(mode="Auto", auto=AutoPolicy(eta=0.5, warmup_steps=0, profile_steps=1, step_watts=250))
    controller = PowerController(gpu, policy, enforcer="agent")
    controller.train_begin()
    run_steps(controller, gpu, 4)
    assert controller.sets_limits and gpu.sets  # no pod-local channel to the agent yet: the pod keeps SYS_ADMIN
    controller.set_cap(300)
    assert gpu.power_limit_mw() <= 300_000


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
