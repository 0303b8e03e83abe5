"""The GPU backends: simulated node hardware (persistent, refusals on demand) and NVML over a stand-in pynvml."""

from __future__ import annotations

import json
import types

import pytest
from agentkit import NODE

from etj_contract import agent as a
from etj_operator.nodeagent.gpus import (
    H100_LIKE,
    GpuError,
    LimitReading,
    NvmlBackend,
    SimulatedBackend,
    SimulatedConstraints,
    simulated_uuid,
)
from etj_operator.nodeagent.records import GpuDevice


def test_simulated_gpus_are_h100_like_labelled_and_stable(node_dir):
    backend = SimulatedBackend(node_dir, NODE, count=2)
    devices = backend.inventory().devices
    assert [d.uuid for d in devices] == [simulated_uuid(NODE, 0), simulated_uuid(NODE, 1)]
    assert devices[0] == GpuDevice(simulated_uuid(NODE, 0), 0, "Simulated H100 SXM (simulated)", 200_000, 700_000,
                                   700_000, "00000000:01:00.0")
    assert backend.source == "simulated"
    state = json.loads((node_dir / "gpus.json").read_text())
    assert state["simulated"] is True and state["node"] == NODE
    assert simulated_uuid(NODE, 0) != simulated_uuid("other-node", 0)
    assert SimulatedConstraints(200, 700, 700) == H100_LIKE


def test_a_limit_outlives_the_backend_as_node_hardware_does(node_dir):
    first = SimulatedBackend(node_dir, NODE, count=2)
    device = first.inventory().devices[1]
    first.set_limit(device, 300_000)
    again = SimulatedBackend(node_dir, NODE, count=8, constraints=SimulatedConstraints(100, 400, 400))
    assert len(again.inventory().devices) == 2  # an existing node keeps its own GPUs
    assert again.read_limit(device) == LimitReading(300_000, 300_000)
    assert not list(node_dir.glob(".gpus.*.tmp"))


def test_simulated_refusals_and_constraints(gpus):
    device = gpus.inventory().devices[0]
    gpus.refuse_set(device.uuid)
    with pytest.raises(GpuError) as info:
        gpus.set_limit(device, 300_000)
    assert (info.value.kind, info.value.operation, info.value.uuid) == (a.ERROR_NO_PERMISSION, "set", device.uuid)
    assert device.uuid in str(info.value) and "GPU 0" in str(info.value)
    gpus.refuse_set(device.uuid, None)
    gpus.set_limit(device, 300_000)
    with pytest.raises(GpuError) as info:
        gpus.set_limit(device, 150_000)
    assert info.value.kind == a.ERROR_INVALID_ARGUMENT
    assert gpus.read_limit(device).limit_mw == 300_000
    ghost = GpuDevice("GPU-ghost", 9, "x", 1, 2, 2)
    with pytest.raises(GpuError) as info:
        gpus.read_limit(ghost)
    assert info.value.kind == a.ERROR_GPU_NOT_FOUND
    with pytest.raises(KeyError):
        gpus.refuse_set("GPU-ghost")


def test_a_broken_state_file_is_an_error_at_start(node_dir):
    node_dir.mkdir(parents=True)
    (node_dir / "gpus.json").write_text("{not json")
    with pytest.raises(GpuError, match="cannot read"):
        SimulatedBackend(node_dir, NODE)
    (node_dir / "gpus.json").write_text(json.dumps({"kind": "something else"}))
    with pytest.raises(GpuError, match="not a simulated node"):
        SimulatedBackend(node_dir, NODE)


# --- NVML, over a stand-in module with NVML's names -------------------------------------------------------------
class FakeNvmlError(Exception):
    def __init__(self, value):
        super().__init__({1: "Uninitialized", 4: "Insufficient Permissions", 3: "Not Supported"}.get(value, "err"))
        self.value = value


def fake_pynvml(count=2, refuse=None, broken_index=None):
    state = {"limits": [700_000] * count, "calls": []}
    m = types.SimpleNamespace(
        NVMLError=FakeNvmlError,
        NVML_ERROR_UNINITIALIZED=1,
        NVML_ERROR_NOT_SUPPORTED=3,
        NVML_ERROR_NO_PERMISSION=4,
        NVML_ERROR_GPU_IS_LOST=15,
        state=state,
    )

    def index_of(handle):
        return int(handle.split(":")[1])

    def get_handle(index):
        if index == broken_index:
            raise FakeNvmlError(15)
        return f"h:{index}"

    def set_limit(handle, limit):
        state["calls"].append((handle, limit))
        if refuse is not None:
            raise FakeNvmlError(refuse)
        state["limits"][index_of(handle)] = limit

    m.nvmlInit = lambda: None
    m.nvmlShutdown = lambda: state["calls"].append("shutdown")
    m.nvmlDeviceGetCount = lambda: count
    m.nvmlDeviceGetHandleByIndex = get_handle
    m.nvmlDeviceGetHandleByUUID = lambda uuid: f"h:{int(uuid.rsplit('-', 1)[1])}"
    m.nvmlDeviceGetUUID = lambda h: f"GPU-nv-{index_of(h)}".encode()
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H200"
    m.nvmlDeviceGetPowerManagementLimitConstraints = lambda h: [200_000, 700_000]
    m.nvmlDeviceGetPowerManagementDefaultLimit = lambda h: 700_000
    m.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=f"00000000:0{index_of(h)}:00.0".encode())
    m.nvmlDeviceGetPowerManagementLimit = lambda h: state["limits"][index_of(h)]
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: min(state["limits"][index_of(h)], 650_000)
    m.nvmlDeviceSetPowerManagementLimit = set_limit
    return m


def test_nvml_inventory_read_and_set():
    module = fake_pynvml()
    backend = NvmlBackend(module)
    inventory = backend.inventory()
    assert inventory.errors == ()
    assert inventory.devices[1] == GpuDevice("GPU-nv-1", 1, "NVIDIA H200", 200_000, 700_000, 700_000,
                                             "00000000:01:00.0")
    backend.set_limit(inventory.devices[1], 300_000)
    assert module.state["calls"] == [("h:1", 300_000)]
    assert backend.read_limit(inventory.devices[1]) == LimitReading(300_000, 300_000)
    assert backend.read_limit(inventory.devices[0]) == LimitReading(700_000, 650_000)  # another limiter
    backend.close()
    backend.close()
    assert module.state["calls"][-1] == "shutdown" and module.state["calls"].count("shutdown") == 1


def test_nvml_refusal_is_a_typed_error_naming_the_gpu_and_the_nvml_error():
    backend = NvmlBackend(fake_pynvml(refuse=4))
    device = backend.inventory().devices[0]
    with pytest.raises(GpuError) as info:
        backend.set_limit(device, 300_000)
    error = info.value
    assert (error.kind, error.operation, error.uuid, error.index, error.code) == (
        a.ERROR_NO_PERMISSION, "set", "GPU-nv-0", 0, "NVML_ERROR_NO_PERMISSION")
    assert "GPU 0 (GPU-nv-0)" in str(error) and "Insufficient Permissions" in str(error)


def test_nvml_a_gpu_that_cannot_be_listed_is_an_inventory_error_not_a_failure_of_all():
    inventory = NvmlBackend(fake_pynvml(count=3, broken_index=1)).inventory()
    assert [d.index for d in inventory.devices] == [0, 2]
    assert [(e.kind, e.index) for e in inventory.errors] == [(a.ERROR_GPU_LOST, 1)]


def test_nvml_unknown_errors_and_failed_init():
    module = fake_pynvml(refuse=999)
    backend = NvmlBackend(module)
    with pytest.raises(GpuError) as info:
        backend.set_limit(backend.inventory().devices[0], 300_000)
    assert info.value.kind == a.ERROR_UNKNOWN

    def fail():
        raise FakeNvmlError(1)

    module.nvmlInit = fail
    with pytest.raises(GpuError) as info:
        NvmlBackend(module)
    assert (info.value.kind, info.value.operation) == (a.ERROR_LIBRARY, "init")
