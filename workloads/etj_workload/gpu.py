"""GPUs behind one interface: NVML for real cards, a labelled simulator for CPU machines.

Error hierarchy (every NVML failure is mapped to one of these, with the NVML error chained)::

    GpuError
    ├── GpuLibraryError        the NVML library is missing or not initialised
    ├── GpuNotFoundError       no such device index / UUID
    ├── GpuPermissionError     setting limits needs root or CAP_SYS_ADMIN
    ├── GpuNotSupportedError   the device does not support the query or setting
    ├── GpuInvalidArgumentError a value outside the device's constraints
    ├── GpuLostError           the GPU fell off the bus or needs a reset
    └── GpuUnknownError        anything else

Units are in the names: ``_mw`` milliwatts and ``_mj`` millijoules (NVML's own units), ``_watts`` and
``_joules`` where converted.
"""

from __future__ import annotations

import abc
import importlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from etj_workload import power_model
from etj_workload.power_model import SimulatedPowerModel

__all__ = [
    "Gpu",
    "GpuError",
    "GpuInvalidArgumentError",
    "GpuLibraryError",
    "GpuLostError",
    "GpuNotFoundError",
    "GpuNotSupportedError",
    "GpuPermissionError",
    "GpuReading",
    "GpuUnknownError",
    "NvmlGpu",
    "SimulatedGpu",
    "limits_restored",
    "open_gpu",
]

log = logging.getLogger(__name__)

GpuSource = Literal["nvml", "simulated"]


class GpuError(RuntimeError):
    """Base of every GPU error."""


class GpuLibraryError(GpuError):
    """NVML is not installed, not loadable, or not initialised."""


class GpuNotFoundError(GpuError):
    """The requested device does not exist."""


class GpuPermissionError(GpuError):
    """The operation needs privileges (root or CAP_SYS_ADMIN in the container)."""


class GpuNotSupportedError(GpuError):
    """The device does not support this query or setting."""


class GpuInvalidArgumentError(GpuError):
    """A value outside what the device accepts (e.g. a limit outside its constraints)."""


class GpuLostError(GpuError):
    """The GPU is lost or needs a reset."""


class GpuUnknownError(GpuError):
    """An NVML error with no more specific mapping."""


@dataclass(frozen=True)
class GpuReading:
    """One snapshot of a GPU, as the metrics endpoint and the status report it."""

    index: int
    uuid: str
    name: str
    source: GpuSource
    power_mw: int
    energy_mj: int
    power_limit_mw: int

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (for collectives and tests)."""
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "source": self.source,
            "power_mw": self.power_mw,
            "energy_mj": self.energy_mj,
            "power_limit_mw": self.power_limit_mw,
        }


class Gpu(abc.ABC):
    """One GPU that this process drives. Implementations: :class:`NvmlGpu`, :class:`SimulatedGpu`."""

    #: "nvml" or "simulated"; reported wherever the readings go.
    source: GpuSource
    index: int

    @abc.abstractmethod
    def name(self) -> str:
        """Return the model name (e.g. "NVIDIA H100 80GB HBM3")."""

    @abc.abstractmethod
    def uuid(self) -> str:
        """Return the device UUID ("GPU-...")."""

    @abc.abstractmethod
    def power_mw(self) -> int:
        """Return the current power draw. Units: mW."""

    @abc.abstractmethod
    def energy_mj(self) -> int:
        """Return the total energy counter (monotonic since driver load or process start). Units: mJ."""

    @abc.abstractmethod
    def power_limit_constraints_mw(self) -> tuple[int, int]:
        """Return the (min, max) settable power limit. Units: mW."""

    @abc.abstractmethod
    def default_power_limit_mw(self) -> int:
        """Return the default power limit. Units: mW."""

    @abc.abstractmethod
    def power_limit_mw(self) -> int:
        """Return the power limit in force. Units: mW."""

    @abc.abstractmethod
    def set_power_limit_mw(self, limit_mw: int) -> None:
        """Set the power limit. Units: mW. Raises GpuPermissionError without privileges."""

    def restore_power_limit(self) -> None:
        """Set the default power limit back (idempotent)."""
        default_mw = self.default_power_limit_mw()
        if self.power_limit_mw() != default_mw:
            self.set_power_limit_mw(default_mw)

    def account_step(self, measured_seconds: float) -> float:
        """Tell the device a training step of ``measured_seconds`` (wall time) finished.

        Return the step's device time in seconds: real hardware returns ``measured_seconds`` unchanged;
        the simulator returns its modelled time (and accounts the step's energy).
        """
        return measured_seconds

    def reading(self) -> GpuReading:
        """Return a snapshot of the device."""
        return GpuReading(
            index=self.index,
            uuid=self.uuid(),
            name=self.name(),
            source=self.source,
            power_mw=self.power_mw(),
            energy_mj=self.energy_mj(),
            power_limit_mw=self.power_limit_mw(),
        )

    def close(self) -> None:  # noqa: B027 - an optional hook, not an abstract one
        """Release the device handle (the limit is not touched; call restore_power_limit first)."""


# --- NVML ------------------------------------------------------------------------------------------


def _nvml_error_class(pynvml: Any, error: Exception) -> type[GpuError]:
    value = getattr(error, "value", None)
    table: list[tuple[str, type[GpuError]]] = [
        ("NVML_ERROR_NO_PERMISSION", GpuPermissionError),
        ("NVML_ERROR_NOT_SUPPORTED", GpuNotSupportedError),
        ("NVML_ERROR_INVALID_ARGUMENT", GpuInvalidArgumentError),
        ("NVML_ERROR_NOT_FOUND", GpuNotFoundError),
        ("NVML_ERROR_GPU_IS_LOST", GpuLostError),
        ("NVML_ERROR_RESET_REQUIRED", GpuLostError),
        ("NVML_ERROR_UNINITIALIZED", GpuLibraryError),
        ("NVML_ERROR_LIBRARY_NOT_FOUND", GpuLibraryError),
        ("NVML_ERROR_DRIVER_NOT_LOADED", GpuLibraryError),
        ("NVML_ERROR_FUNCTION_NOT_FOUND", GpuLibraryError),
    ]
    for constant, cls in table:
        if value is not None and value == getattr(pynvml, constant, object()):
            return cls
    return GpuUnknownError


class NvmlGpu(Gpu):
    """A real NVIDIA GPU driven through nvidia-ml-py (``import pynvml``).

    Setting limits needs CAP_SYS_ADMIN in the container; the operator adds it when the power mode is not
    Unmanaged. ``pynvml`` is imported lazily so that importing this module needs no NVIDIA library.
    """

    source: GpuSource = "nvml"

    def __init__(self, index: int = 0, uuid: str | None = None, pynvml_module: Any | None = None) -> None:
        if pynvml_module is None:
            try:
                pynvml_module = importlib.import_module("pynvml")
            except ImportError as e:
                raise GpuLibraryError("nvidia-ml-py (pynvml) is not installed") from e
        self._nvml: Any = pynvml_module
        self.index = index
        self._call(self._nvml.nvmlInit)
        if uuid is not None:
            self._handle = self._call(self._nvml.nvmlDeviceGetHandleByUUID, uuid)
        else:
            self._handle = self._call(self._nvml.nvmlDeviceGetHandleByIndex, index)
        self._closed = False

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except self._nvml.NVMLError as e:
            cls = _nvml_error_class(self._nvml, e)
            raise cls(f"{getattr(function, '__name__', 'nvml')} on GPU {getattr(self, 'index', '?')}: {e}") from e

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    def name(self) -> str:
        """Return the model name."""
        return self._text(self._call(self._nvml.nvmlDeviceGetName, self._handle))

    def uuid(self) -> str:
        """Return the device UUID."""
        return self._text(self._call(self._nvml.nvmlDeviceGetUUID, self._handle))

    def power_mw(self) -> int:
        """Return the power draw. Units: mW."""
        return int(self._call(self._nvml.nvmlDeviceGetPowerUsage, self._handle))

    def energy_mj(self) -> int:
        """Return the total energy counter since driver load (Volta and newer). Units: mJ."""
        return int(self._call(self._nvml.nvmlDeviceGetTotalEnergyConsumption, self._handle))

    def power_limit_constraints_mw(self) -> tuple[int, int]:
        """Return the (min, max) settable limit. Units: mW."""
        low, high = self._call(self._nvml.nvmlDeviceGetPowerManagementLimitConstraints, self._handle)
        return int(low), int(high)

    def default_power_limit_mw(self) -> int:
        """Return the default limit. Units: mW."""
        return int(self._call(self._nvml.nvmlDeviceGetPowerManagementDefaultLimit, self._handle))

    def power_limit_mw(self) -> int:
        """Return the limit in force. Units: mW."""
        return int(self._call(self._nvml.nvmlDeviceGetPowerManagementLimit, self._handle))

    def set_power_limit_mw(self, limit_mw: int) -> None:
        """Set the limit. Units: mW."""
        low, high = self.power_limit_constraints_mw()
        if not low <= limit_mw <= high:
            raise GpuInvalidArgumentError(
                f"power limit {limit_mw} mW outside GPU {self.index}'s constraints [{low}, {high}] mW"
            )
        self._call(self._nvml.nvmlDeviceSetPowerManagementLimit, self._handle, int(limit_mw))

    def close(self) -> None:
        """Shut NVML down for this handle (NVML reference-counts nvmlInit)."""
        if not self._closed:
            self._closed = True
            self._call(self._nvml.nvmlShutdown)


# --- simulated -------------------------------------------------------------------------------------


class SimulatedGpu(Gpu):
    """A GPU that does not exist: the power and throughput model of :mod:`etj_workload.power_model`.

    Labelled ``simulated`` in every reading. The energy counter integrates the modelled busy power over
    the modelled time of each step (:meth:`account_step`) and the idle power over the wall time between
    steps. With ``sleep_slowdown`` the step's modelled slowdown under the cap is slept for real, so
    throughput visibly falls under a cap (the sandbox shows the trade-off that way). With
    ``fixed_step_seconds`` the full-clock step time is that constant instead of the measured one, which
    makes runs deterministic. With ``state_file`` the limit is mirrored to a JSON file (atomically), so
    another process (tests, the sandbox) can see it.
    """

    source: GpuSource = "simulated"

    def __init__(
        self,
        index: int = 0,
        model: SimulatedPowerModel = power_model.H100_SXM,
        *,
        sleep_slowdown: bool = False,
        fixed_step_seconds: float | None = None,
        state_file: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.index = index
        self.model = model
        self.sleep_slowdown = sleep_slowdown
        self.fixed_step_seconds = fixed_step_seconds
        self._state_file = state_file
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._limit_mw = int(model.default_limit_watts * 1000)
        self._energy_mj = 0.0
        self._reported_mj = 0
        self._last_mark_seconds = clock()
        self._busy_until_seconds = -1.0
        self._write_state()

    def name(self) -> str:
        """Return the model's name (it says it is a model)."""
        return self.model.name

    def uuid(self) -> str:
        """Return a stable fake UUID naming the simulator."""
        return f"GPU-simulated-{self.index:08d}"

    def _limit_watts(self) -> float:
        return self._limit_mw / 1000.0

    def power_mw(self) -> int:
        """Return the modelled busy power shortly after a step, else the idle power. Units: mW."""
        with self._lock:
            busy = self._clock() <= self._busy_until_seconds
            watts = power_model.busy_power_watts(self.model, self._limit_watts()) if busy else self.model.idle_watts
        return int(watts * 1000)

    def energy_mj(self) -> int:
        """Return the modelled energy since this simulator started. Units: mJ."""
        with self._lock:
            idle_seconds = max(0.0, self._clock() - self._last_mark_seconds)
            value = int(self._energy_mj + self.model.idle_watts * idle_seconds * 1000)
            self._reported_mj = max(self._reported_mj, value)  # a counter never goes back
            return self._reported_mj

    def power_limit_constraints_mw(self) -> tuple[int, int]:
        """Return the model's (min, max) limit. Units: mW."""
        return int(self.model.min_limit_watts * 1000), int(self.model.max_limit_watts * 1000)

    def default_power_limit_mw(self) -> int:
        """Return the model's default limit. Units: mW."""
        return int(self.model.default_limit_watts * 1000)

    def power_limit_mw(self) -> int:
        """Return the limit in force. Units: mW."""
        return self._limit_mw

    def set_power_limit_mw(self, limit_mw: int) -> None:
        """Set the limit (validated like NVML does). Units: mW."""
        low, high = self.power_limit_constraints_mw()
        if not low <= limit_mw <= high:
            raise GpuInvalidArgumentError(
                f"power limit {limit_mw} mW outside the simulated GPU's constraints [{low}, {high}] mW"
            )
        self._limit_mw = int(limit_mw)
        self._write_state()

    def account_step(self, measured_seconds: float) -> float:
        """Account one step's modelled time and energy; sleep the slowdown if configured."""
        full_clock_seconds = self.fixed_step_seconds if self.fixed_step_seconds is not None else measured_seconds
        limit_watts = self._limit_watts()
        modelled_seconds = power_model.step_seconds(self.model, limit_watts, full_clock_seconds)
        slowdown_seconds = modelled_seconds - full_clock_seconds
        if self.sleep_slowdown and slowdown_seconds > 0:
            self._sleep(slowdown_seconds)
        with self._lock:
            now = self._clock()
            wall_seconds = max(0.0, now - self._last_mark_seconds)
            # Wall time since the last mark that was not this step is idle time.
            stepped_seconds = measured_seconds + (slowdown_seconds if self.sleep_slowdown else 0.0)
            idle_seconds = max(0.0, wall_seconds - stepped_seconds)
            busy_watts = power_model.busy_power_watts(self.model, limit_watts)
            self._energy_mj += (self.model.idle_watts * idle_seconds + busy_watts * modelled_seconds) * 1000
            self._last_mark_seconds = now
            self._busy_until_seconds = now + max(1.0, 2 * modelled_seconds)
        return modelled_seconds

    def _write_state(self) -> None:
        if not self._state_file:
            return
        state = {
            "source": self.source,
            "uuid": self.uuid(),
            "powerLimitWatts": self._limit_mw / 1000.0,
            "defaultLimitWatts": self.model.default_limit_watts,
            "pid": os.getpid(),
        }
        directory = os.path.dirname(os.path.abspath(self._state_file))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".gpu-state-")
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self._state_file)


def _visible_nvml_target(local_rank: int) -> tuple[int, str | None]:
    """Map a local rank to an NVML device (index, or UUID) through CUDA_VISIBLE_DEVICES."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible or local_rank >= len(visible):
        return local_rank, None
    entry = visible[local_rank]
    if entry.isdigit():
        return int(entry), None
    return local_rank, entry  # a UUID (or MIG id); NVML resolves UUIDs


def open_gpu(
    backend: Literal["auto", "nvml", "simulated"],
    local_rank: int = 0,
    *,
    sleep_slowdown: bool = False,
    fixed_step_seconds: float | None = None,
    state_file: str | None = None,
    model: SimulatedPowerModel = power_model.H100_SXM,
) -> Gpu:
    """Open this rank's GPU. ``auto`` tries NVML and falls back to the simulator (and logs that it did)."""
    if backend in ("nvml", "auto"):
        index, uuid = _visible_nvml_target(local_rank)
        try:
            return NvmlGpu(index=index, uuid=uuid)
        except GpuError as e:
            if backend == "nvml":
                raise
            log.info("no NVML GPU for local rank %d (%s); using the simulated GPU", local_rank, e)
    return SimulatedGpu(
        index=local_rank,
        model=model,
        sleep_slowdown=sleep_slowdown,
        fixed_step_seconds=fixed_step_seconds,
        state_file=state_file,
    )


@contextmanager
def limits_restored(gpu: Gpu) -> Iterator[Gpu]:
    """Restore the default power limit when the block exits, however it exits."""
    try:
        yield gpu
    finally:
        try:
            gpu.restore_power_limit()
        except GpuError as e:
            log.error("could not restore the default power limit of GPU %d: %s", gpu.index, e)
