import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from workload_support import base_env

import etj_contract as contract
from etj_workload import power_model as pm
from etj_workload.callbacks import (
    CheckpointCallback,
    CompressionCallback,
    ControlCallback,
    MetricsCallback,
    PowerCallback,
    StepLimitCallback,
)
from etj_workload.config import HarnessEnv, parse_compression_plan, parse_power_policy
from etj_workload.control import ControlChannel, ControlState
from etj_workload.gpu import SimulatedGpu
from etj_workload.harness import EXIT_SIGTERM, Callback, Harness
from etj_workload.models import DigitsMlp


class MemoryApi:
    def __init__(self) -> None:
        self.control: dict[str, Any] = {}
        self.workload: dict[str, Any] = {}

    def read_control(self) -> Mapping[str, Any] | None:
        return dict(self.control)

    def patch_workload(self, workload: Mapping[str, Any]) -> None:
        self.workload.update(workload)


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_train_begin(self, harness: Harness) -> None:
        self.events.append("train_begin")

    def on_step_end(self, harness: Harness, step: int) -> None:
        self.events.append(f"step{step}")

    def on_evaluate(self, harness: Harness, accuracy: float) -> None:
        self.events.append("evaluate")

    def on_train_end(self, harness: Harness) -> None:
        self.events.append("train_end")


def make_harness(api: MemoryApi | None = None, **env_fields: Any) -> tuple[Harness, SimulatedGpu, nn.Module]:
    torch.manual_seed(0)
    model = DigitsMlp()
    gpu = SimulatedGpu(fixed_step_seconds=0.01)
    env = HarnessEnv(control_poll_steps=1, **env_fields)
    x = torch.rand(32, 64)
    y = model(x).argmax(dim=1).detach()

    def evaluate(m: nn.Module) -> float:
        return float((m(x).argmax(dim=1) == y).float().mean())

    harness = Harness(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        evaluate=evaluate,
        steps_per_epoch=10,
        samples_per_step=8,
        env=env,
        gpu=gpu,
        install_signal_handlers=False,
    )
    if api is not None:
        harness.channel = ControlChannel(api, min_patch_interval_seconds=0.0, min_read_interval_seconds=0.0)
    return harness, gpu, model


def steps(harness: Harness, n: int) -> None:
    for _ in range(n):
        harness.step_begin()
        harness.step_end(torch.tensor(1.0))


def until(harness: Harness, condition: Any, limit: int = 500) -> None:
    for _ in range(limit):
        if condition():
            return
        steps(harness, 1)
        time.sleep(0.005)
    raise AssertionError("condition not reached")


def test_control_drives_cap_stages_and_stop_in_process() -> None:
    api = MemoryApi()
    plan = parse_compression_plan(
        json.dumps(
            {
                "stages": [
                    {"name": "energy", "trigger": {"energyFraction": 0.5}, "prune": {"amount": 0.1}},
                    {"name": "commanded", "trigger": {"epoch": 99}, "prune": {"amount": 0.1}},
                ],
                "accuracyGuard": {"maxDrop": 1.0},
            }
        )
    )
    harness, gpu, _ = make_harness(
        api, power=parse_power_policy('{"mode": "Fixed", "limitWatts": 600}'), compression=plan
    )
    recorder = Recorder()
    harness.callbacks.append(recorder)
    with harness:
        harness.train_begin()
        harness.epoch_begin(0)
        assert gpu.power_limit_mw() == 600_000
        # the operator owns the energyFraction trigger: it requests the stage; the fraction alone starts nothing
        api.control.update(powerLimitWattsPerGPU=400, energyFraction=0.6, stageRequested="energy")
        until(harness, lambda: gpu.power_limit_mw() == 400_000 and "energy" in harness.compression.done)
        api.control["stageRequested"] = "commanded"
        until(harness, lambda: "commanded" in harness.compression.done)
        api.control["stopRequested"] = True
        until(harness, lambda: harness.should_stop)
        harness.train_end()
    assert harness.stop_reason == "StopRequested" and harness.exit_code == 0
    assert gpu.power_limit_mw() == 700_000
    assert api.workload["stopReason"] == "StopRequested"
    assert [s["name"] for s in api.workload["stages"]] == ["energy", "commanded"]
    assert recorder.events[0] == "train_begin" and recorder.events[-1] == "train_end" and "step1" in recorder.events


class Logging(Callback):
    """Appends (name, hook, argument) for every hook to a log shared with other callbacks."""

    def __init__(self, name: str, log: list[tuple[str, str, Any]]) -> None:
        self.name, self.log = name, log

    def on_train_begin(self, harness: Harness) -> None:
        self.log.append((self.name, "train_begin", None))

    def on_epoch_begin(self, harness: Harness, epoch: int) -> None:
        self.log.append((self.name, "epoch_begin", epoch))

    def on_step_begin(self, harness: Harness, step: int) -> None:
        self.log.append((self.name, "step_begin", step))

    def on_step_end(self, harness: Harness, step: int) -> None:
        self.log.append((self.name, "step_end", step))

    def on_evaluate(self, harness: Harness, accuracy: float) -> None:
        self.log.append((self.name, "evaluate", None))

    def on_epoch_end(self, harness: Harness, epoch: int) -> None:
        self.log.append((self.name, "epoch_end", epoch))

    def on_train_end(self, harness: Harness) -> None:
        self.log.append((self.name, "train_end", None))


def test_every_hook_calls_every_callback_in_order_subsystems_first() -> None:
    log: list[tuple[str, str, Any]] = []
    harness, _, _ = make_harness()
    harness.callbacks += [Logging("a", log), Logging("b", log)]
    assert [type(c) for c in harness.callbacks] == [
        PowerCallback,
        MetricsCallback,
        CompressionCallback,
        CheckpointCallback,
        ControlCallback,
        StepLimitCallback,
        Logging,
        Logging,
    ]
    with harness:
        harness.train_begin()
        harness.epoch_begin(0)
        steps(harness, 2)
        harness.epoch_end(0)
        harness.train_end()
    hooks = [
        ("train_begin", None),
        ("epoch_begin", 0),
        ("step_begin", 0),
        ("step_end", 1),
        ("step_begin", 1),
        ("step_end", 2),
        ("evaluate", None),  # the epoch's evaluation, before its epoch_end
        ("epoch_end", 0),
        ("train_end", None),
    ]
    assert log == [(name, hook, arg) for hook, arg in hooks for name in ("a", "b")]


def test_the_user_callbacks_see_the_subsystems_effects_and_the_limit_is_restored_after_them() -> None:
    api = MemoryApi()
    harness, gpu, _ = make_harness(api, power=parse_power_policy('{"mode": "Fixed", "limitWatts": 600}'))
    seen: list[tuple[str, int]] = []

    class Watching(Callback):
        def on_train_begin(self, harness: Harness) -> None:
            seen.append(("train_begin", gpu.power_limit_mw()))  # after the power callback applied the policy

        def on_step_end(self, harness: Harness, step: int) -> None:
            seen.append(("step_end", gpu.power_limit_mw()))  # after the control poll applied the cap

        def on_train_end(self, harness: Harness) -> None:
            seen.append(("train_end", gpu.power_limit_mw()))  # the harness restores the limit after this

    harness.callbacks.append(Watching())
    after_steps: list[tuple[str, int]] = []
    with harness:
        harness.train_begin()
        api.control.update(powerLimitWattsPerGPU=400)
        for _ in range(500):  # the channel reads in the background: some polls pass before the cap arrives
            steps(harness, 1)
            after_steps.append(("step_end", gpu.power_limit_mw()))
            if gpu.power_limit_mw() == 400_000:
                break
            time.sleep(0.005)
        harness.train_end()
        assert gpu.power_limit_mw() == 700_000
    # In the step whose poll applied the cap, the user's callback already saw it: nothing ran after it.
    assert seen == [("train_begin", 600_000), *after_steps, ("train_end", 400_000)]
    assert after_steps[-1] == ("step_end", 400_000)


def test_limit_restored_when_the_loop_raises() -> None:
    harness, gpu, _ = make_harness(power=parse_power_policy('{"mode": "Fixed", "limitWatts": 300}'))
    with pytest.raises(RuntimeError, match="loss is NaN"), harness:
        harness.train_begin()
        steps(harness, 2)
        assert gpu.power_limit_mw() == 300_000
        raise RuntimeError("loss is NaN")
    assert gpu.power_limit_mw() == 700_000


def test_auto_profiles_during_training_and_reports() -> None:
    policy = parse_power_policy(
        json.dumps({"mode": "Auto", "auto": {"eta": 0.5, "warmupSteps": 1, "profileSteps": 1, "stepWatts": 100}})
    )
    harness, gpu, _ = make_harness(power=policy)
    with harness:
        harness.train_begin()
        steps(harness, 150)
        status = harness.status()
    profile = status["powerProfile"]
    optimum = pm.analytic_optimal_limit_watts(gpu.model, 0.5)  # ~579 W (docs/harness.md)
    assert pm.limit_cost(gpu.model, profile["chosenWatts"], 0.5) <= pm.limit_cost(gpu.model, optimum, 0.5) * 1.01
    assert 3 <= len(profile["candidates"]) < 6 + 6 and profile["uncappedWatts"] == profile["chosenWatts"]
    assert gpu.power_limit_mw() == 700_000  # restored on exit


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_restores_the_limit_in_a_real_process(tmp_path: Path) -> None:
    state = tmp_path / "gpu.json"
    env = base_env(
        {
            "ETJ_SIMULATED_GPU_STATE_FILE": str(state),
            "ETJ_POWER_POLICY": json.dumps({"mode": "Fixed", "limitWatts": 300}),
            "ETJ_CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        }
    )
    cmd = [
        sys.executable,
        "-m",
        "etj_workload",
        "train",
        "--model",
        "synthetic-mlp",
        "--width",
        "64",
        "--depth",
        "2",
        "--epochs",
        "100000",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (state.exists() and json.loads(state.read_text())["powerLimitWatts"] == 300):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_SIGTERM, out[-3000:]
    assert json.loads(state.read_text())["powerLimitWatts"] == 700
    assert list((tmp_path / "ckpt").glob("ckpt-*.pt")), "no checkpoint saved on SIGTERM"


def test_the_report_states_the_step_plan_only_when_known() -> None:
    harness, _, _ = make_harness()
    with harness:
        status = harness.status()
        assert status["samplesPerStep"] == 8
        assert "stepsTotal" not in status  # unknown: left out, never 0
        assert "communication" not in status  # no DDP model: nothing timed
        harness.steps_total = 120
        assert harness.status()["stepsTotal"] == 120
        harness.samples_per_step = 0  # a framework that could not tell the batch
        assert "samplesPerStep" not in harness.status()


class RecordingChannel:
    """The control channel's interface, recording each publish and whether it was urgent (no thread)."""

    def __init__(self) -> None:
        self.published: list[tuple[dict[str, Any], bool]] = []

    def poll(self) -> ControlState:
        return ControlState()

    def publish(self, workload: Mapping[str, Any], *, urgent: bool = False) -> None:
        self.published.append((dict(workload), urgent))

    def close(self, timeout_seconds: float = 5.0) -> bool:
        return True


def test_a_request_to_the_node_agent_is_published_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(contract.ENV_ETJ_POWER_ENFORCER, "agent")
    policy = parse_power_policy(
        json.dumps({"mode": "Auto", "auto": {"eta": 0.5, "warmupSteps": 1, "profileSteps": 2, "stepWatts": 100}})
    )
    gpu = SimulatedGpu(fixed_step_seconds=0.01)
    model = DigitsMlp()
    harness = Harness(
        model,
        None,
        evaluate=lambda m: 0.0,
        steps_per_epoch=10**6,
        samples_per_step=8,
        env=HarnessEnv(control_poll_steps=10**6, power=policy),  # no poll: only the request publishes
        gpu=gpu,
        install_signal_handlers=False,
        steps_total=5000,
    )
    assert harness.power.horizon_steps == 5000  # the job's plan is the controller's horizon
    channel = RecordingChannel()
    harness.channel = channel  # type: ignore[assignment]
    with harness:
        harness.train_begin()
        assert harness.power.asks_agent and harness.power.request_seq == 1
        for _ in range(200):
            if harness.power.request_seq >= 2:
                break
            if harness.power.requested_watts is not None:  # the node agent applies what the report asks
                gpu.set_power_limit_mw(harness.power.requested_watts * 1000)
            published = len(channel.published)
            harness.step_begin()
            harness.step_end(torch.tensor(1.0))
        else:
            raise AssertionError("no second request")
        # the step that made the request published the report at once, urgent, carrying the request
        workload, urgent = channel.published[-1]
        assert len(channel.published) == published + 1 and urgent
        profile = workload[contract.WORKLOAD_POWER_PROFILE]
        assert profile[contract.PROFILE_REQUEST_SEQ] == 2
        assert profile[contract.PROFILE_REQUESTED_WATTS] == harness.power.requested_watts


def test_the_horizon_follows_the_plan_and_what_a_resumed_run_has_left() -> None:
    harness, _, _ = make_harness()
    with harness:
        assert harness.power.horizon_steps is None  # no plan, no horizon
        harness.steps_total = 300  # a framework callback sets it before train_begin
        assert harness.power.horizon_steps == 300
        harness.step = 120  # as a resumed run's position
        harness.train_begin()
        assert harness.power.horizon_steps == 180
