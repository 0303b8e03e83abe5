"""The harness's simulated GPU as a GPU of a simulated node: it follows the node GPU's limit (the agent's)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from etj_workload import gpu as g
from etj_workload import power_model as pm

UUID = "GPU-0b7c9a52-1f4e-5d2a-9c3b-6e8f1a2b3c4d"
OTHER = "GPU-11111111-2222-5333-8444-555555555555"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def write_node(path: Path, limits_w: dict[str, float]) -> None:
    """A node's GPU state as the node agent's simulated backend writes it (atomically: a new inode)."""
    gpus = [
        {"index": i, "uuid": uuid, "name": "Simulated H100 SXM (simulated)", "pciBusId": f"00000000:{i + 1:02X}:00.0",
         "minLimitMilliwatts": 200_000, "maxLimitMilliwatts": 700_000, "defaultLimitMilliwatts": 700_000,
         "limitMilliwatts": int(watts * 1000), "refuseSet": None}
        for i, (uuid, watts) in enumerate(limits_w.items())
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"kind": "etj-simulated-node-gpus", "simulated": True, "node": "n", "gpus": gpus}))
    os.replace(tmp, path)


@pytest.fixture
def node(tmp_path: Path) -> Path:
    path = tmp_path / "gpus.json"
    write_node(path, {OTHER: 700, UUID: 700})
    return path


def test_the_node_gpu_names_the_simulator_and_its_default_limit_leaves_the_own_limit(node: Path) -> None:
    gpu = g.SimulatedGpu(device_uuid=UUID, node_state_file=str(node))
    assert gpu.uuid() == UUID and gpu.reading().uuid == UUID
    assert gpu.reading().source == "simulated"
    assert gpu.power_limit_mw() == 700_000
    gpu.set_power_limit_mw(450_000)  # the harness's own limit, in the pod (no agent cap)
    assert gpu.power_limit_mw() == 450_000
    assert gpu.node_power_limit_mw() == 700_000


def test_the_agents_limit_binds_within_the_poll_interval_and_min_with_the_own_limit(node: Path) -> None:
    clock = FakeClock()
    gpu = g.SimulatedGpu(device_uuid=UUID, node_state_file=str(node), node_poll_seconds=0.5, clock=clock,
                         sleep=clock.sleep)
    write_node(node, {OTHER: 700, UUID: 250})  # the agent caps this GPU
    assert gpu.power_limit_mw() == 700_000  # not looked at again yet: bounded, not per call
    clock.now += 0.5
    assert gpu.power_limit_mw() == 250_000
    assert gpu.own_power_limit_mw() == 700_000
    gpu.set_power_limit_mw(220_000)  # lower than the node: the own limit wins
    assert gpu.power_limit_mw() == 220_000
    gpu.set_power_limit_mw(600_000)
    assert gpu.power_limit_mw() == 250_000
    write_node(node, {OTHER: 700, UUID: 700})  # the agent resets it
    clock.now += 0.5
    assert gpu.power_limit_mw() == 600_000


def test_the_model_runs_at_the_node_limit(node: Path) -> None:
    clock = FakeClock()
    write_node(node, {OTHER: 700, UUID: 300})
    gpu = g.SimulatedGpu(device_uuid=UUID, node_state_file=str(node), clock=clock, sleep=clock.sleep,
                         fixed_step_seconds=1.0)
    modelled = gpu.account_step(0.0)
    assert modelled == pytest.approx(pm.step_seconds(pm.H100_SXM, 300, 1.0))
    assert gpu.power_mw() == pytest.approx(pm.busy_power_watts(pm.H100_SXM, 300) * 1000, abs=1)


def test_a_missing_or_foreign_node_state_counts_as_no_node_limit(tmp_path: Path, node: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    missing = g.SimulatedGpu(device_uuid=UUID, node_state_file=str(tmp_path / "absent.json"), clock=clock)
    missing.set_power_limit_mw(400_000)
    assert missing.power_limit_mw() == 400_000 and missing.node_power_limit_mw() is None
    write_node(node, {OTHER: 250})
    foreign = g.SimulatedGpu(device_uuid=UUID, node_state_file=str(node), clock=clock)
    assert foreign.power_limit_mw() == 700_000
    assert "lists no GPU" in caplog.text
    (tmp_path / "broken.json").write_text("{")
    broken = g.SimulatedGpu(device_uuid=UUID, node_state_file=str(tmp_path / "broken.json"), clock=clock)
    assert broken.power_limit_mw() == 700_000


def test_the_mirror_file_shows_own_node_and_effective_limits(tmp_path: Path, node: Path) -> None:
    clock = FakeClock()
    mirror = tmp_path / "mirror.json"
    gpu = g.SimulatedGpu(device_uuid=UUID, node_state_file=str(node), state_file=str(mirror), clock=clock)
    write_node(node, {OTHER: 700, UUID: 250})
    clock.now += 1
    gpu.power_limit_mw()
    state = json.loads(mirror.read_text())
    assert state == {**state, "uuid": UUID, "powerLimitWatts": 250, "ownLimitWatts": 700, "nodeLimitWatts": 250}
    gpu.restore_power_limit()  # restores the own limit only: the node's is the agent's
    assert gpu.own_power_limit_mw() == 700_000 and gpu.power_limit_mw() == 250_000


def test_open_gpu_takes_the_device_plugins_uuid_and_the_node_state_from_the_env(
    node: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(g.ENV_NVIDIA_VISIBLE_DEVICES, f"{OTHER},{UUID}")
    monkeypatch.setenv(g.ENV_SIMULATED_NODE_GPUS, str(node))
    write_node(node, {OTHER: 700, UUID: 350})
    gpu = g.open_gpu("simulated", local_rank=1)
    assert isinstance(gpu, g.SimulatedGpu)
    assert gpu.uuid() == UUID and gpu.power_limit_mw() == 350_000
    monkeypatch.setenv(g.ENV_NVIDIA_VISIBLE_DEVICES, "all")  # no UUID: a GPU of its own, as before
    alone = g.open_gpu("simulated")
    assert alone.uuid() == "GPU-simulated-00000000" and alone.power_limit_mw() == 700_000
