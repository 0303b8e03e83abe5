import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pynvml
import pytest

from etj_workload import gpu as g
from etj_workload import power_model as pm

FUNCTIONS = [
    "nvmlInit",
    "nvmlShutdown",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetHandleByUUID",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetPowerManagementLimitConstraints",
    "nvmlDeviceGetPowerManagementDefaultLimit",
    "nvmlDeviceGetPowerManagementLimit",
    "nvmlDeviceSetPowerManagementLimit",
]


@pytest.fixture
def nvml() -> Iterator[Any]:
    """pynvml with every function the GPU layer calls patched (autospec: signatures are checked)."""
    patches = [mock.patch.object(pynvml, name, autospec=True) for name in FUNCTIONS]
    mocks = {name: p.start() for name, p in zip(FUNCTIONS, patches, strict=True)}
    mocks["nvmlDeviceGetHandleByIndex"].return_value = "handle"
    mocks["nvmlDeviceGetName"].return_value = b"NVIDIA H100 80GB HBM3"
    mocks["nvmlDeviceGetUUID"].return_value = "GPU-1234"
    mocks["nvmlDeviceGetPowerUsage"].return_value = 612_481
    mocks["nvmlDeviceGetTotalEnergyConsumption"].return_value = 319_159_391
    mocks["nvmlDeviceGetPowerManagementLimitConstraints"].return_value = (200_000, 700_000)
    mocks["nvmlDeviceGetPowerManagementDefaultLimit"].return_value = 700_000
    mocks["nvmlDeviceGetPowerManagementLimit"].return_value = 700_000
    yield mock.Mock(**mocks)
    for p in patches:
        p.stop()


def test_nvml_readings_and_units(nvml: Any) -> None:
    gpu = g.NvmlGpu(index=0)
    reading = gpu.reading()
    assert reading == g.GpuReading(0, "GPU-1234", "NVIDIA H100 80GB HBM3", "nvml", 612_481, 319_159_391, 700_000)
    assert gpu.power_limit_constraints_mw() == (200_000, 700_000)
    nvml.nvmlDeviceGetHandleByIndex.assert_called_once_with(0)


def test_nvml_opens_by_uuid(nvml: Any) -> None:
    g.NvmlGpu(index=1, uuid="GPU-abc")
    nvml.nvmlDeviceGetHandleByUUID.assert_called_once_with("GPU-abc")


def test_nvml_set_and_restore_limit(nvml: Any) -> None:
    gpu = g.NvmlGpu()
    gpu.set_power_limit_mw(300_000)
    nvml.nvmlDeviceSetPowerManagementLimit.assert_called_once_with("handle", 300_000)
    nvml.nvmlDeviceGetPowerManagementLimit.return_value = 300_000
    gpu.restore_power_limit()
    nvml.nvmlDeviceSetPowerManagementLimit.assert_called_with("handle", 700_000)


def test_nvml_rejects_limits_outside_constraints(nvml: Any) -> None:
    with pytest.raises(g.GpuInvalidArgumentError, match="outside"):
        g.NvmlGpu().set_power_limit_mw(100_000)
    nvml.nvmlDeviceSetPowerManagementLimit.assert_not_called()


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (pynvml.NVML_ERROR_NO_PERMISSION, g.GpuPermissionError),
        (pynvml.NVML_ERROR_NOT_SUPPORTED, g.GpuNotSupportedError),
        (pynvml.NVML_ERROR_INVALID_ARGUMENT, g.GpuInvalidArgumentError),
        (pynvml.NVML_ERROR_GPU_IS_LOST, g.GpuLostError),
        (pynvml.NVML_ERROR_UNKNOWN, g.GpuUnknownError),
    ],
)
def test_nvml_errors_are_typed_and_chained(nvml: Any, code: int, error: type[g.GpuError]) -> None:
    nvml.nvmlDeviceSetPowerManagementLimit.side_effect = pynvml.NVMLError(code)
    with pytest.raises(error) as info:
        g.NvmlGpu().set_power_limit_mw(300_000)
    assert isinstance(info.value.__cause__, pynvml.NVMLError)


def test_nvml_missing_library_is_a_library_error(nvml: Any) -> None:
    nvml.nvmlInit.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(g.GpuLibraryError):
        g.NvmlGpu()


def test_open_gpu_auto_falls_back_to_simulated_and_nvml_does_not(nvml: Any) -> None:
    nvml.nvmlInit.side_effect = pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    assert g.open_gpu("auto").source == "simulated"
    with pytest.raises(g.GpuLibraryError):
        g.open_gpu("nvml")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_simulated_gpu_accounts_busy_and_idle_energy() -> None:
    clock = FakeClock()
    gpu = g.SimulatedGpu(clock=clock, sleep=clock.sleep)
    assert gpu.source == "simulated" and "not a GPU" in gpu.name()
    clock.now += 10  # idle
    assert gpu.energy_mj() == 700_000  # 70 W * 10 s
    assert gpu.power_mw() == 70_000
    clock.now += 2  # a 2 s step at 700 W
    assert gpu.account_step(2.0) == pytest.approx(2.0)
    assert gpu.energy_mj() == 700_000 + 1_400_000
    assert gpu.power_mw() == 700_000


def test_simulated_gpu_cap_slows_and_sleeps_the_slowdown() -> None:
    clock = FakeClock()
    gpu = g.SimulatedGpu(clock=clock, sleep=clock.sleep, sleep_slowdown=True, fixed_step_seconds=1.0)
    gpu.set_power_limit_mw(300_000)
    before = clock.now
    modelled = gpu.account_step(0.0)
    assert modelled == pytest.approx(pm.step_seconds(pm.H100_SXM, 300, 1.0))
    assert clock.now - before == pytest.approx(modelled - 1.0)  # the slowdown was slept
    assert gpu.energy_mj() == pytest.approx(300 * modelled * 1000, abs=1)  # an integer counter (mJ)


def test_simulated_gpu_mirrors_its_limit_to_a_state_file(tmp_path: Path) -> None:
    state = tmp_path / "gpu.json"
    gpu = g.SimulatedGpu(state_file=str(state))
    gpu.set_power_limit_mw(250_000)
    assert json.loads(state.read_text())["powerLimitWatts"] == 250
    gpu.restore_power_limit()
    assert json.loads(state.read_text())["powerLimitWatts"] == 700
    with pytest.raises(g.GpuInvalidArgumentError):
        gpu.set_power_limit_mw(900_000)


def test_limits_restored_on_exception() -> None:
    gpu = g.SimulatedGpu()
    with pytest.raises(RuntimeError), g.limits_restored(gpu):
        gpu.set_power_limit_mw(300_000)
        raise RuntimeError("boom")
    assert gpu.power_limit_mw() == 700_000
