"""Mode Auto through the node agent (ETJ_POWER_ENFORCER=agent): the harness asks, the GPU's read-back confirms.

The pod has no privilege here: the fake node GPU refuses every limit the harness would set (as NVML does without
CAP_SYS_ADMIN), and only the fake agent channel sets it, from the request the report carries, some steps later
(one report round trip and one agent cycle). Time is a fake clock; nothing sleeps.
"""

from __future__ import annotations

from typing import Any

import pytest
from workload_support import FakeClock as Clock

import etj_contract as contract
from etj_workload import profiler
from etj_workload.config import AutoPolicy, PowerPolicy
from etj_workload.gpu import GpuPermissionError, SimulatedGpu
from etj_workload.power import CONFIRM_TOLERANCE_MW, PowerController


class NodeGpu(SimulatedGpu):
    """A node's GPU as an unprivileged pod sees it: its limit reads back, setting one is refused."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock, sleep=clock.advance, sleep_slowdown=True)
        self.refused: list[int] = []

    def set_power_limit_mw(self, limit_mw: int) -> None:
        self.refused.append(limit_mw)
        raise GpuPermissionError("Insufficient Permissions (test: the pod has no CAP_SYS_ADMIN)")

    def agent_sets(self, limit_mw: int) -> None:
        """What the node agent does (it has the privilege)."""
        super().set_power_limit_mw(limit_mw)


class AgentChannel:
    """The report -> operator -> status.control -> agent round trip, ``lag`` steps long; ``down``: nobody answers."""

    def __init__(self, controller: PowerController, gpu: NodeGpu, lag: int = 3) -> None:
        self.controller, self.gpu, self.lag = controller, gpu, lag
        self.down = False
        self.seen: tuple[int, int] | None = None
        self.steps_since = 0
        self.applied: list[int] = []

    def step(self) -> None:
        report = self.controller.profile_report() or {}
        asked = report.get(contract.PROFILE_REQUESTED_WATTS)
        if asked is None or self.down:
            return
        key = (report[contract.PROFILE_REQUEST_SEQ], asked)
        if key != self.seen:
            self.seen, self.steps_since = key, 0
        self.steps_since += 1
        if self.steps_since == self.lag:
            self.gpu.agent_sets(asked * 1000)
            self.applied.append(asked)


def policy(**kw: Any) -> PowerPolicy:
    return PowerPolicy(mode="Auto", auto=AutoPolicy(**{"eta": 0.5, **kw}))


def setup(lag: int = 3, **kw: Any) -> tuple[PowerController, NodeGpu, Clock, AgentChannel]:
    clock = Clock()
    gpu = NodeGpu(clock)
    controller = PowerController(gpu, policy(**kw), enforcer="agent", clock=clock, request_timeout_seconds=60.0)
    return controller, gpu, clock, AgentChannel(controller, gpu, lag)


def train(controller: PowerController, gpu: SimulatedGpu, clock: Clock, channel: AgentChannel, steps: int) -> None:
    for _ in range(steps):
        channel.step()
        controller.step_begin()
        clock.advance(1.0)
        controller.step_end(gpu.account_step(1.0))


def test_auto_through_the_agent_asks_sets_nothing_and_ends_on_a_limit_the_gpu_reports() -> None:
    controller, gpu, clock, channel = setup()
    requests: list[int] = []
    controller.on_request = lambda: requests.append(controller.request_seq)
    controller.train_begin()
    assert controller.asks_agent and not controller.sets_limits
    train(controller, gpu, clock, channel, 400)
    assert gpu.refused == [] and not controller.limits_unavailable  # the harness never tried to set one
    assert not controller.profiling and controller.chosen_watts is not None and not controller.fallback
    assert gpu.power_limit_mw() == controller.chosen_watts * 1000  # the GPU reports the choice
    report = controller.profile_report()
    assert report is not None
    assert report[contract.PROFILE_REQUESTED_WATTS] == controller.chosen_watts
    assert report[contract.PROFILE_REQUEST_SEQ] == controller.request_seq == len(requests) >= 3
    assert requests == list(range(1, len(requests) + 1))  # the harness was told of every new request, once
    assert report["reason"] != "fallback"
    # every candidate measured is a limit the agent had applied (nothing measured under an unconfirmed one)
    assert {c["watts"] for c in report["candidates"]} <= set(channel.applied)
    assert contract.WorkloadReport.from_status({contract.WORKLOAD_POWER_PROFILE: report}).problems == ()
    # the same choice as the in-pod NVML path on the same GPU: the wait costs steps, not measurements
    clock = Clock()
    pod_gpu = SimulatedGpu(clock=clock, sleep=clock.advance, sleep_slowdown=True)
    in_pod = PowerController(pod_gpu, policy(), enforcer="pod", clock=clock)
    in_pod.train_begin()
    for _ in range(400):
        in_pod.step_begin()
        clock.advance(1.0)
        in_pod.step_end(pod_gpu.account_step(1.0))
    assert in_pod.chosen_watts == controller.chosen_watts
    assert controller.profile_steps_total > in_pod.profile_steps_total


def test_no_window_counts_until_the_gpu_reads_back_the_limit_asked() -> None:
    controller, gpu, clock, channel = setup(lag=1, warmup_steps=0, profile_steps=2, step_watts=100)
    controller.train_begin()
    train(controller, gpu, clock, channel, 8)
    for _ in range(30):  # to a window at a confirmed limit
        if not controller.awaiting_limit and isinstance(controller.state, profiler.Measuring):
            break
        train(controller, gpu, clock, channel, 1)
    assert not controller.awaiting_limit
    channel.down = True  # the next request goes unanswered for a while
    asked_before = controller.request_seq
    for _ in range(30):
        if controller.request_seq != asked_before and controller.awaiting_limit:
            break
        train(controller, gpu, clock, channel, 1)
    assert controller.request_seq != asked_before
    frozen, steps = controller.state, controller.profile_steps_total
    assert controller.awaiting_limit and controller.requested_watts is not None
    assert abs(gpu.power_limit_mw() - controller.requested_watts * 1000) > CONFIRM_TOLERANCE_MW
    train(controller, gpu, clock, channel, 10)
    assert controller.state is frozen  # the profiler was not advanced: no window, no settle step counted
    assert controller.profile_steps_total == steps + 10  # the steps are still spent profiling
    asked = controller.requested_watts
    channel.down = False
    train(controller, gpu, clock, channel, 1)  # the agent applies it; this step's end sees it
    assert not controller.awaiting_limit and controller.confirmed_watts == asked
    assert controller.state is frozen  # that step ran partly under the old limit: it counts for nothing
    train(controller, gpu, clock, channel, 1)
    assert controller.state is not frozen


def test_a_request_the_gpus_never_show_falls_back_to_the_last_confirmed_limit() -> None:
    controller, gpu, clock, channel = setup(lag=1, warmup_steps=0, profile_steps=2, step_watts=100)
    controller.train_begin()
    train(controller, gpu, clock, channel, 8)
    confirmed = controller.confirmed_watts
    assert confirmed is not None
    channel.down = True  # the agent stops answering (uninstalled, or its node lost)
    for _ in range(200):
        train(controller, gpu, clock, channel, 1)
        if controller.fallback:
            break
    assert controller.fallback and controller.state is None and not controller.awaiting_limit
    report = controller.profile_report()
    assert report is not None and report["reason"] == "fallback"
    assert report["chosenWatts"] == confirmed == report[contract.PROFILE_REQUESTED_WATTS]
    assert gpu.power_limit_mw() == confirmed * 1000  # what runs is what the GPU last showed
    seq = controller.request_seq
    controller.set_cap(300)
    controller.workload_changed()
    train(controller, gpu, clock, channel, 5)
    assert controller.request_seq == seq and controller.fallback  # no more requests, no more profiling


def test_the_timeout_is_measured_on_the_injected_clock() -> None:
    controller, gpu, clock, channel = setup(lag=1)
    controller.train_begin()
    channel.down = True
    controller.set_cap(400)  # a new request (the top is now 400 W) that nobody answers
    assert controller.awaiting_limit
    controller.step_end(gpu.account_step(0.0))
    assert not controller.fallback  # no time has passed
    clock.advance(59.0)
    controller.step_end(gpu.account_step(0.0))
    assert not controller.fallback
    clock.advance(2.0)
    controller.step_end(gpu.account_step(0.0))
    assert controller.fallback


def test_every_rank_must_show_the_limit_before_a_window_opens() -> None:
    """The ranks agree through the window reducer: one rank still waiting keeps them all waiting."""
    clock = Clock()
    gpu = NodeGpu(clock)
    other_rank_waiting = [True]

    def reducer(pending: float, seconds: float) -> tuple[float, float]:
        return pending + (1.0 if other_rank_waiting[0] else 0.0), seconds

    controller = PowerController(gpu, policy(), enforcer="agent", clock=clock, world_size=2, reducer=reducer)
    controller.train_begin()
    assert controller.awaiting_limit and controller.requested_watts == 700
    for _ in range(3):
        controller.step_end(gpu.account_step(1.0))  # this rank's GPU shows 700 W (its default) already
    assert controller.awaiting_limit
    other_rank_waiting[0] = False
    controller.step_end(gpu.account_step(1.0))
    assert not controller.awaiting_limit and controller.confirmed_watts == 700


def test_restore_withdraws_the_request_and_sets_nothing() -> None:
    controller, gpu, clock, channel = setup(lag=1)
    controller.train_begin()
    train(controller, gpu, clock, channel, 5)
    assert (controller.profile_report() or {}).get(contract.PROFILE_REQUESTED_WATTS) is not None
    controller.restore()
    assert contract.PROFILE_REQUESTED_WATTS not in (controller.profile_report() or {})
    assert gpu.refused == []


@pytest.mark.parametrize("enforcer", ["pod", "agent"])
def test_the_report_asks_only_through_the_agent(enforcer: str) -> None:
    clock = Clock()
    gpu = SimulatedGpu(clock=clock, sleep=clock.advance, sleep_slowdown=True)
    controller = PowerController(gpu, policy(), enforcer=enforcer, clock=clock)  # type: ignore[arg-type]
    controller.train_begin()
    report = controller.profile_report() or {}
    assert (contract.PROFILE_REQUESTED_WATTS in report) is (enforcer == "agent")
    assert isinstance(controller.state, profiler.Waiting | profiler.Settling | profiler.Measuring)
